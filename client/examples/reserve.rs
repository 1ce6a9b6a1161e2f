//! Stocks a SKU, reserves two units and confirms them.
//!
//! With a node running: `cargo run -p reserva-client --example reserve -- 127.0.0.1:7700`

use reserva_client::{Client, ClientConfig};
use reserva_protocol::engine::{Currency, Money, ReserveLine};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7700".into());
    let client = Client::connect(&addr, ClientConfig::new("any-token")).await?;
    let currency = Currency::parse("EUR").ok_or("bad currency")?;
    let price = Money {
        amount_minor: 2_999,
        currency,
    };
    client
        .upsert_sku("kettle-blue", "seller-7", "Blue kettle", price)
        .await?;
    client.set_stock("kettle-blue", "fra-1", 10).await?;
    let lines = vec![ReserveLine {
        sku: "kettle-blue".into(),
        qty: 2,
    }];
    let r = client
        .reserve("alice", lines, None, Some("alice-cart-42".into()))
        .await?;
    println!(
        "reserved {} until {} ms: {:?}",
        r.reservation_id, r.expires_at_ms, r.allocations
    );
    let deducted = client.confirm(r.reservation_id).await?;
    println!("confirmed: {deducted:?}");
    if let Some(sku) = client.get_sku("kettle-blue").await? {
        for w in &sku.warehouses {
            println!(
                "{}: on_hand {} reserved {}",
                w.warehouse, w.on_hand, w.reserved
            );
        }
    }
    Ok(())
}

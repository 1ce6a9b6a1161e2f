//! Checks out two lines with a sandbox card, then packs, ships, tracks and
//! delivers the order. Run against a node:
//! `cargo run -p reserva-client --example checkout -- 127.0.0.1:7700`.

use reserva_client::protocol::engine::{
    Address, CheckoutSource, Currency, Money, OrderAction, ReserveLine,
};
use reserva_client::{CheckoutRequest, Client, ClientConfig, PaymentInput};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7700".into());
    let client = Client::connect(&addr, ClientConfig::new("any-token")).await?;
    let eur = Currency::parse("EUR").ok_or("bad currency")?;
    for (sku, price) in [("kettle-blue", 2_999), ("mug-white", 899)] {
        client
            .upsert_sku(
                sku,
                "seller-7",
                sku,
                Money {
                    amount_minor: price,
                    currency: eur,
                },
            )
            .await?;
        client.set_stock(sku, "fra-1", 100).await?;
    }
    let placed = client
        .checkout(
            CheckoutRequest {
                user_id: "alice".into(),
                source: CheckoutSource::Lines(vec![
                    ReserveLine {
                        sku: "kettle-blue".into(),
                        qty: 1,
                    },
                    ReserveLine {
                        sku: "mug-white".into(),
                        qty: 2,
                    },
                ]),
                payment: PaymentInput::Card {
                    number: "4242424242424242".into(),
                },
                ship_to: Address {
                    name: "Alice Example".into(),
                    line1: "Hauptstrasse 1".into(),
                    line2: String::new(),
                    city: "Berlin".into(),
                    region: String::new(),
                    postal_code: "10115".into(),
                    country: "DE".into(),
                    lat_e6: Some(52_520_000),
                    lon_e6: Some(13_405_000),
                },
            },
            None,
        )
        .await?;
    let order = placed.order;
    println!(
        "order {} {} total {} {}",
        order.id,
        order.status.as_str(),
        order.total.amount_minor,
        order.total.currency.as_str()
    );
    for action in [
        OrderAction::Pack,
        OrderAction::Ship {
            carrier: "DHL".into(),
            tracking_number: "JD014600006281".into(),
        },
        OrderAction::Track {
            description: "arrived at the Berlin hub".into(),
        },
        OrderAction::Deliver,
    ] {
        let o = client.order_action(order.id, action, None).await?;
        println!("order {} is {}", o.id, o.status.as_str());
    }
    Ok(())
}

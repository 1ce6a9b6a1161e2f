//! Black-box tests of the checkout saga and the order lifecycle against a
//! real `reserva-server`: every payment path, fraud review, cancel, returns,
//! exactly-once retries, crashes at every step, and a race for scarce stock.

use std::time::Duration;

use reserva_client::{
    CheckoutRequest, CheckoutResult, Client, ClientConfig, ClientError, PaymentInput,
};
use reserva_protocol::WireError;
use reserva_protocol::engine::{
    Address, CheckoutSource, CheckoutState, Currency, EngineError, Money, Order, OrderAction,
    OrderStatus, PaymentStatus, ReserveLine, ReturnAction, key_on_shard,
};
use reserva_tests::Server;

fn eur(amount_minor: u64) -> Money {
    Money {
        amount_minor,
        currency: Currency::parse("EUR").unwrap(),
    }
}

fn address(country: &str) -> Address {
    Address {
        name: "Ada Lovelace".into(),
        line1: "1 Main Street".into(),
        line2: String::new(),
        city: "Berlin".into(),
        region: String::new(),
        postal_code: "10115".into(),
        country: country.into(),
        lat_e6: Some(52_520_000),
        lon_e6: Some(13_405_000),
    }
}

async fn client(server: &Server) -> Client {
    Client::connect(&server.addr, ClientConfig::new("any"))
        .await
        .expect("connect")
}

/// A SKU owned by shard `shard` (so tests control which lines share a shard).
fn sku_on(shard: u16, n: usize) -> String {
    key_on_shard("sku-", shard, n)
}

async fn stock(c: &Client, sku: &str, price: u64, warehouses: &[(&str, u64)]) {
    c.upsert_sku(sku, "seller-1", "A thing", eur(price))
        .await
        .unwrap();
    for (w, n) in warehouses {
        c.set_stock(sku, *w, *n).await.unwrap();
    }
}

/// (on_hand, reserved) summed over warehouses.
async fn levels(c: &Client, sku: &str) -> (u64, u64) {
    let s = c.get_sku(sku).await.unwrap().expect("sku exists");
    (
        s.warehouses.iter().map(|w| w.on_hand).sum(),
        s.warehouses.iter().map(|w| w.reserved).sum(),
    )
}

fn lines(items: &[(&str, u32)]) -> CheckoutSource {
    CheckoutSource::Lines(
        items
            .iter()
            .map(|(sku, qty)| ReserveLine {
                sku: (*sku).into(),
                qty: *qty,
            })
            .collect(),
    )
}

fn request(user: &str, source: CheckoutSource, payment: PaymentInput) -> CheckoutRequest {
    CheckoutRequest {
        user_id: user.into(),
        source,
        payment,
        ship_to: address("US"),
    }
}

fn card(number: &str) -> PaymentInput {
    PaymentInput::Card {
        number: number.into(),
    }
}

fn engine_error(r: Result<CheckoutResult, ClientError>) -> EngineError {
    match r {
        Err(ClientError::Server(WireError::Engine(e))) => e,
        other => panic!("expected an engine error, got {other:?}"),
    }
}

fn payment(order: &Order) -> &reserva_protocol::engine::Payment {
    &order.fulfilment.as_ref().expect("checkout order").payment
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_paths_end_as_an_order_or_fully_compensated() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let c = client(&server).await;
    let (a, b) = (sku_on(3, 0), sku_on(200, 0));
    stock(&c, &a, 1_000, &[("w1", 5), ("w2", 5)]).await;
    stock(&c, &b, 250, &[("w1", 3)]).await;

    // Approves: lines on two shards, captured, deducted.
    let ok = c
        .checkout(
            request(
                "alice",
                lines(&[(&a, 2), (&b, 1)]),
                card("4242424242424242"),
            ),
            None,
        )
        .await
        .expect("checkout");
    assert_eq!(ok.checkout.state, CheckoutState::Completed);
    assert_eq!(ok.order.status, OrderStatus::Confirmed);
    assert_eq!(ok.order.total, eur(2 * 1_000 + 250));
    let p = payment(&ok.order);
    assert_eq!(p.status, PaymentStatus::Captured);
    assert_eq!(p.captured_minor, 2_250);
    assert_eq!(levels(&c, &a).await, (8, 0));
    assert_eq!(levels(&c, &b).await, (2, 0));
    let f = ok.order.fulfilment.as_ref().unwrap();
    assert!(!f.shipments.is_empty());
    assert!(f.shipments.iter().all(|s| s.estimated_delivery_ms > 0));

    // Each failure releases what it held at once.
    for (number, want) in [
        ("4000000000000002", "card_declined"),
        ("4000000000009995", "insufficient_funds"),
    ] {
        let e = engine_error(
            c.checkout(
                request("bob", lines(&[(&a, 1), (&b, 1)]), card(number)),
                None,
            )
            .await,
        );
        assert!(
            matches!(&e, EngineError::PaymentDeclined { code, .. } if code == want),
            "{number}: {e:?}"
        );
        assert_eq!(levels(&c, &a).await, (8, 0));
        assert_eq!(levels(&c, &b).await, (2, 0));
    }
    let e = engine_error(
        c.checkout(
            request("bob", lines(&[(&a, 1)]), card("4000000000000119")),
            None,
        )
        .await,
    );
    assert!(matches!(e, EngineError::PaymentFailed { .. }), "{e:?}");
    assert_eq!(levels(&c, &a).await, (8, 0));

    // Not enough stock on one shard: nothing stays held on the other.
    let e = engine_error(
        c.checkout(
            request("bob", lines(&[(&a, 1), (&b, 3)]), card("4242424242424242")),
            None,
        )
        .await,
    );
    assert!(matches!(e, EngineError::InsufficientStock { .. }), "{e:?}");
    assert_eq!(levels(&c, &a).await, (8, 0));
    assert_eq!(levels(&c, &b).await, (2, 0));

    // Bad input is refused before anything is held.
    let bad = c
        .checkout(request("bob", lines(&[(&a, 1)]), card("1234")), None)
        .await;
    assert!(matches!(
        bad,
        Err(ClientError::Server(WireError::InvalidRequest { .. }))
    ));
    let mut no_city = request("bob", lines(&[(&a, 1)]), card("4242424242424242"));
    no_city.ship_to.city.clear();
    let e = engine_error(c.checkout(no_city, None).await);
    assert!(matches!(e, EngineError::InvalidInput { .. }), "{e:?}");
    let e = engine_error(
        c.checkout(
            request("bob", lines(&[(&a, 0)]), card("4242424242424242")),
            None,
        )
        .await,
    );
    assert!(matches!(e, EngineError::InvalidInput { .. }), "{e:?}");
    assert_eq!(levels(&c, &a).await, (8, 0));
}

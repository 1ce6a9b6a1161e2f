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

/// A checkout, then followed to its end: the answer comes once the order is
/// recorded (state `order_created`, the payment authorized); the deduction
/// and the capture follow it.
async fn done(
    c: &Client,
    req: CheckoutRequest,
    key: Option<String>,
) -> Result<CheckoutResult, ClientError> {
    let placed = c.checkout(req, key).await?;
    if placed.checkout.state == CheckoutState::OrderCreated {
        assert_eq!(placed.checkout.payment.status, PaymentStatus::Authorized);
    }
    Ok(ended(c, placed).await)
}

/// Waits until the checkout of `r` ended (completed or in review) and reads its order again.
async fn ended(c: &Client, r: CheckoutResult) -> CheckoutResult {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let checkout = c
            .get_checkout(r.checkout.id)
            .await
            .expect("get_checkout")
            .expect("the checkout is kept");
        if checkout.state.is_terminal() {
            let order = c
                .get_order(r.order.id)
                .await
                .expect("get_order")
                .expect("the order exists");
            return CheckoutResult { checkout, order };
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "checkout {} stuck at {}",
            checkout.id,
            checkout.state.as_str()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
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

    // Approves: lines on two shards. The answer comes once the order is
    // recorded, with the card authorized and the stock held; the deduction
    // and the capture follow.
    let placed = c
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
    assert_eq!(placed.checkout.state, CheckoutState::OrderCreated);
    assert_eq!(placed.checkout.payment.status, PaymentStatus::Authorized);
    assert_eq!(placed.checkout.holds.len(), 2);
    let ok = ended(&c, placed).await;
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
            done(
                &c,
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
        done(
            &c,
            request("bob", lines(&[(&a, 1)]), card("4000000000000119")),
            None,
        )
        .await,
    );
    assert!(matches!(e, EngineError::PaymentFailed { .. }), "{e:?}");
    assert_eq!(levels(&c, &a).await, (8, 0));

    // Not enough stock on one shard: nothing stays held on the other.
    let e = engine_error(
        done(
            &c,
            request("bob", lines(&[(&a, 1), (&b, 3)]), card("4242424242424242")),
            None,
        )
        .await,
    );
    assert!(matches!(e, EngineError::InsufficientStock { .. }), "{e:?}");
    assert_eq!(levels(&c, &a).await, (8, 0));
    assert_eq!(levels(&c, &b).await, (2, 0));

    // Bad input is refused before anything is held.
    let bad = done(&c, request("bob", lines(&[(&a, 1)]), card("1234")), None).await;
    assert!(matches!(
        bad,
        Err(ClientError::Server(WireError::InvalidRequest { .. }))
    ));
    let mut no_city = request("bob", lines(&[(&a, 1)]), card("4242424242424242"));
    no_city.ship_to.city.clear();
    let e = engine_error(done(&c, no_city, None).await);
    assert!(matches!(e, EngineError::InvalidInput { .. }), "{e:?}");
    let e = engine_error(
        done(
            &c,
            request("bob", lines(&[(&a, 0)]), card("4242424242424242")),
            None,
        )
        .await,
    );
    assert!(matches!(e, EngineError::InvalidInput { .. }), "{e:?}");
    assert_eq!(levels(&c, &a).await, (8, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_credit_and_cash_on_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let c = client(&server).await;
    let a = sku_on(10, 0);
    stock(&c, &a, 1_500, &[("w1", 10)]).await;

    // Store credit: held, then captured once; never below zero.
    let account = c.grant_credit("carol", eur(4_000), None).await.unwrap();
    assert_eq!(account.balance_minor, 4_000);
    let bad = c.grant_credit("carol", eur(0), None).await;
    assert!(matches!(
        bad,
        Err(ClientError::Server(WireError::Engine(
            EngineError::InvalidInput { .. }
        )))
    ));
    let ok = done(
        &c,
        request("carol", lines(&[(&a, 2)]), PaymentInput::StoreCredit),
        None,
    )
    .await
    .expect("credit checkout");
    assert_eq!(payment(&ok.order).status, PaymentStatus::Captured);
    let account = c.get_credit("carol").await.unwrap().unwrap();
    assert_eq!((account.balance_minor, account.held_minor), (1_000, 0));
    let e = engine_error(
        done(
            &c,
            request("carol", lines(&[(&a, 1)]), PaymentInput::StoreCredit),
            None,
        )
        .await,
    );
    assert!(
        matches!(&e, EngineError::PaymentDeclined { code, .. } if code == "insufficient_credit"),
        "{e:?}"
    );
    let account = c.get_credit("carol").await.unwrap().unwrap();
    assert_eq!((account.balance_minor, account.held_minor), (1_000, 0));
    assert_eq!(levels(&c, &a).await, (8, 0));

    // Cash on delivery: authorized at checkout, captured on delivery.
    let cod = done(
        &c,
        request("dave", lines(&[(&a, 1)]), PaymentInput::CashOnDelivery),
        None,
    )
    .await
    .expect("cod checkout");
    assert_eq!(cod.order.status, OrderStatus::Confirmed);
    assert_eq!(payment(&cod.order).status, PaymentStatus::Authorized);
    let id = cod.order.id;
    // Shipping before packing is an illegal transition.
    let early = c
        .order_action(
            id,
            OrderAction::Ship {
                carrier: "DHL".into(),
                tracking_number: "JD0001".into(),
            },
            None,
        )
        .await;
    assert!(matches!(
        early,
        Err(ClientError::Server(WireError::Engine(
            EngineError::IllegalTransition { .. }
        )))
    ));
    c.order_action(id, OrderAction::Pack, None).await.unwrap();
    c.order_action(
        id,
        OrderAction::Ship {
            carrier: "DHL".into(),
            tracking_number: "JD0001".into(),
        },
        None,
    )
    .await
    .unwrap();
    let o = c
        .order_action(
            id,
            OrderAction::Track {
                description: "arrived at hub".into(),
            },
            None,
        )
        .await
        .unwrap();
    let shipment = &o.fulfilment.as_ref().unwrap().shipments[0];
    assert_eq!(shipment.tracking_number, "JD0001");
    assert_eq!(shipment.events.len(), 1);
    let o = c
        .order_action(id, OrderAction::Deliver, None)
        .await
        .unwrap();
    assert_eq!(o.status, OrderStatus::Delivered);
    assert_eq!(payment(&o).status, PaymentStatus::Captured);
    let statuses: Vec<OrderStatus> = o.history.iter().map(|h| h.status).collect();
    assert_eq!(
        statuses,
        [
            OrderStatus::Placed,
            OrderStatus::Confirmed,
            OrderStatus::Packed,
            OrderStatus::Shipped,
            OrderStatus::Delivered
        ]
    );
    let cancel = c
        .order_action(
            id,
            OrderAction::Cancel {
                reason: "late".into(),
            },
            None,
        )
        .await;
    assert!(matches!(
        cancel,
        Err(ClientError::Server(WireError::Engine(
            EngineError::IllegalTransition { .. }
        )))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_return_and_refund_restock_and_pay_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let c = client(&server).await;
    let (a, b) = (sku_on(20, 0), sku_on(21, 0));
    stock(&c, &a, 700, &[("w1", 10)]).await;
    stock(&c, &b, 300, &[("w2", 10)]).await;

    // Cancel before shipping: restocked, card refunded.
    let o = done(
        &c,
        request("erin", lines(&[(&a, 2), (&b, 1)]), card("4242424242424242")),
        None,
    )
    .await
    .unwrap()
    .order;
    assert_eq!(levels(&c, &a).await, (8, 0));
    let o = c
        .order_action(
            o.id,
            OrderAction::Cancel {
                reason: "changed my mind".into(),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(o.status, OrderStatus::Cancelled);
    let f = o.fulfilment.as_ref().unwrap();
    assert_eq!(f.payment.refunded_minor, 1_700);
    assert!(f.effects.iter().all(|e| e.done), "{:?}", f.effects);
    assert_eq!(levels(&c, &a).await, (10, 0));
    assert_eq!(levels(&c, &b).await, (10, 0));

    // Deliver, return one unit of a: approve, receive (restock), refund.
    let o = done(
        &c,
        request("erin", lines(&[(&a, 3)]), card("4242424242424242")),
        None,
    )
    .await
    .unwrap()
    .order;
    for action in [
        OrderAction::Pack,
        OrderAction::Ship {
            carrier: "UPS".into(),
            tracking_number: "1Z999".into(),
        },
        OrderAction::Deliver,
    ] {
        c.order_action(o.id, action, None).await.unwrap();
    }
    let too_many = c
        .request_return(
            o.id,
            vec![ReserveLine {
                sku: a.clone(),
                qty: 4,
            }],
            "too many",
            None,
        )
        .await;
    assert!(matches!(
        too_many,
        Err(ClientError::Server(WireError::Engine(
            EngineError::InvalidInput { .. }
        )))
    ));
    let (ret, o2) = c
        .request_return(
            o.id,
            vec![ReserveLine {
                sku: a.clone(),
                qty: 1,
            }],
            "does not fit",
            None,
        )
        .await
        .unwrap();
    assert_eq!(o2.status, OrderStatus::ReturnRequested);
    // Refund before receiving is refused.
    let early = c.return_action(ret, ReturnAction::Refund, None).await;
    assert!(matches!(
        early,
        Err(ClientError::Server(WireError::Engine(
            EngineError::ReturnState { .. }
        )))
    ));
    c.return_action(ret, ReturnAction::Approve, None)
        .await
        .unwrap();
    assert_eq!(levels(&c, &a).await, (7, 0));
    let o3 = c
        .return_action(ret, ReturnAction::Receive, None)
        .await
        .unwrap();
    assert_eq!(o3.status, OrderStatus::Returned);
    assert_eq!(levels(&c, &a).await, (8, 0));
    let o4 = c
        .return_action(ret, ReturnAction::Refund, None)
        .await
        .unwrap();
    assert_eq!(o4.status, OrderStatus::Refunded);
    let f = o4.fulfilment.as_ref().unwrap();
    assert_eq!(f.payment.refunded_minor, 700);
    assert_eq!(f.returns[0].refund_minor, 700);
    assert_eq!(
        c.get_return_order(ret).await.unwrap().map(|o| o.id),
        Some(o.id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraud_rules_hold_for_review_or_reject() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("checkout.toml");
    std::fs::write(
        &config,
        "[fraud]\ncountry_mismatch_points = 60\nuser_velocity_max = 2\nuser_velocity_points = 90\nreview_at = 50\nreject_at = 80\n\
         [[warehouses]]\nid = \"ber\"\nlat = 52.52\nlon = 13.40\n[[warehouses]]\nid = \"mad\"\nlat = 40.42\nlon = -3.70\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--checkout-config", config.to_str().unwrap()]);
    let c = client(&server).await;
    let a = sku_on(30, 0);
    stock(&c, &a, 2_000, &[("mad", 10), ("ber", 10)]).await;

    // A Brazilian card shipping to Germany scores 60: review. The nearest
    // warehouse (Berlin) ships it.
    let mut req = request("frank", lines(&[(&a, 1)]), card("4000000760000002"));
    req.ship_to = address("DE");
    let r = done(&c, req.clone(), None).await.unwrap();
    assert_eq!(r.checkout.state, CheckoutState::InReview);
    assert_eq!(r.order.status, OrderStatus::Review);
    assert_eq!(r.order.lines[0].warehouse, "ber");
    let fraud = r.order.fulfilment.as_ref().unwrap().fraud.clone().unwrap();
    assert_eq!(fraud.score, 60);
    assert!(
        fraud.reasons[0].starts_with("country_mismatch"),
        "{:?}",
        fraud.reasons
    );
    assert_eq!(payment(&r.order).status, PaymentStatus::Authorized);
    let o = c
        .order_action(r.order.id, OrderAction::ApproveReview, None)
        .await
        .unwrap();
    assert_eq!(o.status, OrderStatus::Confirmed);
    assert_eq!(payment(&o).status, PaymentStatus::Captured);
    assert_eq!(levels(&c, &a).await, (19, 0));

    // Rejected after review: restocked and voided.
    let r = done(&c, req, None).await.unwrap();
    let o = c
        .order_action(r.order.id, OrderAction::RejectReview, None)
        .await
        .unwrap();
    assert_eq!(o.status, OrderStatus::Cancelled);
    assert_eq!(payment(&o).status, PaymentStatus::Voided);
    assert_eq!(levels(&c, &a).await, (19, 0));

    // A third checkout within the hour trips the user velocity rule: rejected.
    let e = engine_error(
        done(
            &c,
            request("frank", lines(&[(&a, 1)]), card("4242424242424242")),
            None,
        )
        .await,
    );
    assert!(
        matches!(&e, EngineError::FraudRejected { score, reasons } if *score >= 80 && reasons.iter().any(|r| r.starts_with("user_velocity"))),
        "{e:?}"
    );
    assert_eq!(levels(&c, &a).await, (19, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_from_cart_or_reservation_and_retries_place_one_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let c = client(&server).await;
    let (a, b) = (sku_on(40, 0), sku_on(41, 0));
    stock(&c, &a, 100, &[("w1", 50)]).await;
    stock(&c, &b, 100, &[("w1", 50)]).await;

    let empty = done(
        &c,
        request("gina", CheckoutSource::Cart, card("4242424242424242")),
        None,
    )
    .await;
    assert!(matches!(
        empty,
        Err(ClientError::Server(WireError::Engine(
            EngineError::InvalidInput { .. }
        )))
    ));
    c.cart_set("gina", &a, 2).await.unwrap();
    c.cart_set("gina", &b, 3).await.unwrap();
    let r = done(
        &c,
        request("gina", CheckoutSource::Cart, card("4242424242424242")),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.order.lines.iter().map(|l| l.qty).sum::<u32>(), 5);
    assert!(c.get_cart("gina").await.unwrap().is_empty());

    // From a reservation the user holds: it becomes the order's stock.
    let held = c
        .reserve(
            "gina",
            vec![ReserveLine {
                sku: a.clone(),
                qty: 4,
            }],
            None,
            None,
        )
        .await
        .unwrap();
    let r = done(
        &c,
        request(
            "gina",
            CheckoutSource::Reservation(held.reservation_id),
            card("4242424242424242"),
        ),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.order.lines[0].qty, 4);
    assert_eq!(levels(&c, &a).await, (44, 0));
    assert!(
        c.get_reservation(held.reservation_id)
            .await
            .unwrap()
            .is_none()
    );
    // Someone else's reservation cannot be checked out.
    let theirs = c
        .reserve(
            "hank",
            vec![ReserveLine {
                sku: a.clone(),
                qty: 1,
            }],
            None,
            None,
        )
        .await
        .unwrap();
    let e = engine_error(
        done(
            &c,
            request(
                "gina",
                CheckoutSource::Reservation(theirs.reservation_id),
                card("4242424242424242"),
            ),
            None,
        )
        .await,
    );
    assert!(matches!(e, EngineError::InvalidInput { .. }), "{e:?}");
    c.release(theirs.reservation_id).await.unwrap();

    // The same key, sequentially and concurrently: one order, one deduction.
    let req = request("ivan", lines(&[(&b, 1)]), card("4242424242424242"));
    let first = done(&c, req.clone(), Some("ivan-cart-1".into()))
        .await
        .unwrap();
    let again = done(&c, req.clone(), Some("ivan-cart-1".into()))
        .await
        .unwrap();
    assert_eq!(first.order.id, again.order.id);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, req) = (c.clone(), req.clone());
        tasks.push(tokio::spawn(async move {
            done(&c, req, Some("ivan-cart-2".into())).await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().expect("checkout").order.id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one order for one key: {ids:?}");
    assert_eq!(levels(&c, &b).await, (50 - 3 - 2, 0));
    let conflict = done(
        &c,
        request("ivan", lines(&[(&b, 2)]), card("4242424242424242")),
        Some("ivan-cart-1".into()),
    )
    .await;
    assert!(matches!(
        conflict,
        Err(ClientError::Server(WireError::Engine(
            EngineError::IdempotencyConflict { .. }
        )))
    ));
}

/// Waits until `sku` has nothing reserved (every saga touching it ended).
async fn settled(c: &Client, sku: &str) -> (u64, u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let l = levels(c, sku).await;
        if l.1 == 0 || tokio::time::Instant::now() > deadline {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn quick_client_config() -> ClientConfig {
    let mut cfg = ClientConfig::new("any");
    cfg.request_timeout = Duration::from_secs(2);
    cfg.retries = 0;
    cfg
}

/// How a checkout crashed at a failpoint ends after the restart.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    /// A confirmed order, the card captured, the stock deducted once.
    Order,
    /// Undone: failed `checkout_interrupted`, nothing held, no order.
    Interrupted,
    /// Before its first record was durable: either undone, or (the record
    /// was lost with the crash) the retry is a new checkout that places the order.
    OrderOrInterrupted,
    /// Declined by the card: compensated, nothing held.
    Declined,
}

async fn orders_of(c: &Client, user: &str) -> usize {
    match c
        .execute(reserva_protocol::Op::Query(
            reserva_protocol::Query::ListOrders {
                user_id: user.into(),
                after: None,
                limit: 10,
            },
        ))
        .await
        .unwrap()
    {
        reserva_protocol::Reply::Orders { orders, .. } => orders.len(),
        other => panic!("{other:?}"),
    }
}

/// Crash (abort, like `kill -9`) at each step of a checkout; after a restart
/// the checkout ends on its own as exactly one of: a confirmed order with the
/// payment captured and the stock deducted once (once the order record was
/// durable), or nothing held and nothing charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_step_resumes_to_one_of_two_ends() {
    let cases = [
        (
            "checkout.started",
            "4242424242424242",
            End::OrderOrInterrupted,
        ),
        ("checkout.held", "4242424242424242", End::OrderOrInterrupted),
        (
            "checkout.provider_authorized",
            "4242424242424242",
            End::Interrupted,
        ),
        ("checkout.order_created", "4242424242424242", End::Order),
        ("checkout.deducted", "4242424242424242", End::Order),
        ("checkout.provider_captured", "4242424242424242", End::Order),
        ("checkout.compensating", "4000000000000002", End::Declined),
    ];
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (sku_on(50, 0), sku_on(51, 0));
    for (i, (failpoint, number, end)) in cases.into_iter().enumerate() {
        let data = dir.path().join(format!("case-{i}"));
        let mut server = Server::start_with_env(&data, &[], &[("RESERVA_FAILPOINT", failpoint)]);
        let c = client(&server).await;
        stock(&c, &a, 500, &[("w1", 10)]).await;
        stock(&c, &b, 200, &[("w2", 10)]).await;
        let req = request("kim", lines(&[(&a, 2), (&b, 1)]), card(number));
        let key = format!("crash-{i}");
        let crashing = Client::connect(&server.addr, quick_client_config())
            .await
            .unwrap();
        // The answer leaves once the order record is durable, so a crash
        // after that record may follow the answer; then the end must be an
        // order. Before it, nothing may be answered.
        if let Ok(r) = crashing.checkout(req.clone(), Some(key.clone())).await {
            assert!(
                end == End::Order && r.checkout.order_id == Some(r.order.id),
                "{failpoint}: answered {r:?} before the crash"
            );
        }
        let status = server
            .wait_for_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{failpoint}: the server did not stop at the failpoint"));
        assert!(!status.success(), "{failpoint}: {status}");

        server.clear_env();
        server.restart();
        let c = client(&server).await;
        // The checkout ends on its own, without the caller.
        let (_, reserved_a) = settled(&c, &a).await;
        let (_, reserved_b) = settled(&c, &b).await;
        assert_eq!(
            (reserved_a, reserved_b),
            (0, 0),
            "{failpoint}: stock still held"
        );
        // The caller's retry with the same key gets the one outcome.
        let again = done(&c, req.clone(), Some(key.clone())).await;
        let placed = match (end, again) {
            (End::Order | End::OrderOrInterrupted, Ok(r)) => {
                assert_eq!(r.order.status, OrderStatus::Confirmed, "{failpoint}");
                assert_eq!(
                    payment(&r.order).status,
                    PaymentStatus::Captured,
                    "{failpoint}"
                );
                true
            }
            (End::Interrupted | End::OrderOrInterrupted, Err(e)) => {
                let e = engine_error(Err(e));
                assert!(
                    matches!(e, EngineError::CheckoutInterrupted { .. }),
                    "{failpoint}: {e:?}"
                );
                false
            }
            (End::Declined, Err(e)) => {
                let e = engine_error(Err(e));
                assert!(
                    matches!(e, EngineError::PaymentDeclined { .. }),
                    "{failpoint}: {e:?}"
                );
                false
            }
            (end, other) => panic!("{failpoint}: expected {end:?}, got {other:?}"),
        };
        let levels_now = (levels(&c, &a).await, levels(&c, &b).await);
        if placed {
            assert_eq!(
                levels_now,
                ((8, 0), (9, 0)),
                "{failpoint}: stock not deducted once"
            );
            assert_eq!(orders_of(&c, "kim").await, 1, "{failpoint}");
        } else {
            assert_eq!(levels_now, ((10, 0), (10, 0)), "{failpoint}: stock lost");
            assert_eq!(orders_of(&c, "kim").await, 0, "{failpoint}");
        }
        server.kill9();
    }
}

/// A hold under a recorded order is never expired, not even when the node
/// comes back after its deadline: the order record is durable, the node
/// stops before the deduction, and restarts with its clock 16 minutes later
/// (past `CHECKOUT_HOLD_TTL_MS`). The order completes, deducted once; a
/// plain reservation made before the stop did expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_under_an_order_outlives_its_deadline_across_a_long_stop() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start_with_env(
        &data,
        &[],
        &[("RESERVA_FAILPOINT", "checkout.order_created")],
    );
    let c = client(&server).await;
    let (a, b) = (sku_on(80, 0), sku_on(81, 0));
    stock(&c, &a, 500, &[("w1", 10)]).await;
    stock(&c, &b, 200, &[("w2", 10)]).await;
    let plain = c
        .execute(reserva_protocol::Op::Mutate(
            reserva_protocol::engine::Request::new(reserva_protocol::engine::Command::Reserve {
                owner: "lee".into(),
                lines: vec![reserva_protocol::engine::ReserveLine {
                    sku: a.clone(),
                    qty: 1,
                }],
                ttl_ms: Some(60_000),
                warehouse_preference: Vec::new(),
            }),
        ))
        .await
        .expect("reserve");
    assert!(matches!(
        plain,
        reserva_protocol::Reply::Outcome(reserva_protocol::engine::Outcome::Reserved { .. })
    ));
    let req = request("kim", lines(&[(&a, 2), (&b, 1)]), card("4242424242424242"));
    let crashing = Client::connect(&server.addr, quick_client_config())
        .await
        .unwrap();
    let first = crashing.checkout(req.clone(), Some("late".into())).await;
    assert!(first.is_err(), "answered {first:?} before the crash");
    server
        .wait_for_exit(Duration::from_secs(10))
        .expect("the server stops at the failpoint");

    server.clear_env();
    server.set_env("RESERVA_CLOCK_SKEW_MS", &(16 * 60 * 1_000).to_string());
    server.restart();
    let c = client(&server).await;
    let r = done(&c, req, Some("late".into()))
        .await
        .expect("the recorded order completes");
    assert_eq!(r.checkout.state, CheckoutState::Completed);
    assert_eq!(r.order.status, OrderStatus::Confirmed);
    assert_eq!(payment(&r.order).status, PaymentStatus::Captured);
    // Deducted once; the plain reservation expired (its unit is back).
    assert_eq!(settled(&c, &a).await, (8, 0));
    assert_eq!(settled(&c, &b).await, (9, 0));
    assert_eq!(orders_of(&c, "kim").await, 1);
}

/// A slow provider never holds a core and every call is bounded: a card
/// that never answers times out, is retried with the same key, and the
/// checkout fails `payment_failed` with nothing held; checkouts with a slow
/// card (1 s) in flight do not delay a checkout with a fast one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_silent_payment_providers_neither_block_nor_leak() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("checkout.toml");
    std::fs::write(&config, "[payments]\ntimeout_ms = 1500\nattempts = 2\n").unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--checkout-config", config.to_str().unwrap()]);
    let c = client(&server).await;
    let a = sku_on(90, 0);
    stock(&c, &a, 300, &[("w1", 100)]).await;

    // The card that never answers: two attempts of 1.5 s, then compensation.
    let e = engine_error(
        done(
            &c,
            request("sam", lines(&[(&a, 1)]), card("4000000000000259")),
            None,
        )
        .await,
    );
    assert!(matches!(e, EngineError::PaymentFailed { .. }), "{e:?}");
    assert_eq!(settled(&c, &a).await, (100, 0));

    // Slow cards in flight; a fast card overtakes all of them.
    let mut slow = Vec::new();
    for i in 0..8 {
        let c = c.clone();
        let a = a.clone();
        slow.push(tokio::spawn(async move {
            done(
                &c,
                request(
                    &format!("slow{i}"),
                    lines(&[(&a, 1)]),
                    card("4000000000003220"),
                ),
                None,
            )
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fast = c
        .checkout(
            request("quick", lines(&[(&a, 1)]), card("4242424242424242")),
            None,
        )
        .await
        .expect("fast checkout");
    assert_eq!(fast.checkout.state, CheckoutState::OrderCreated);
    assert!(
        slow.iter().all(|t| !t.is_finished()),
        "a slow provider call delayed a fast checkout"
    );
    for t in slow {
        let r = t.await.unwrap().expect("slow card checkout");
        assert_eq!(r.order.status, OrderStatus::Confirmed);
    }
    ended(&c, fast).await;
    assert_eq!(settled(&c, &a).await, (91, 0));
}

/// Many users race for scarce stock on two shards while a third of the
/// cards decline and some pay with store credit: at the end stock,
/// reservations, orders and payment ledgers reconcile exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scarce_stock_race_reconciles_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let c = client(&server).await;
    let (a, b) = (sku_on(60, 0), sku_on(61, 0));
    stock(&c, &a, 1_000, &[("w1", 6), ("w2", 4)]).await;
    stock(&c, &b, 500, &[("w1", 25)]).await;
    let users = 40;
    for i in (0..users).filter(|i| i % 5 == 1) {
        c.grant_credit(format!("u{i}"), eur(1_500), None)
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..users {
        let (c, a, b) = (c.clone(), a.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            let pay = match i % 5 {
                0 | 3 => card("4000000000000002"),
                1 => PaymentInput::StoreCredit,
                _ => card("4242424242424242"),
            };
            let r = done(
                &c,
                request(&format!("u{i}"), lines(&[(&a, 1), (&b, 1)]), pay),
                None,
            )
            .await;
            (i, r)
        }));
    }
    let mut placed = 0u64;
    for t in tasks {
        let (i, r) = t.await.unwrap();
        match r {
            Ok(r) => {
                placed += 1;
                assert_eq!(r.order.status, OrderStatus::Confirmed);
                assert_eq!(payment(&r.order).status, PaymentStatus::Captured);
                assert_eq!(payment(&r.order).captured_minor, 1_500);
                assert!(i % 5 != 0 && i % 5 != 3, "a declining card placed an order");
            }
            Err(ClientError::Server(WireError::Engine(
                EngineError::InsufficientStock { .. } | EngineError::PaymentDeclined { .. },
            ))) => {}
            Err(e) => panic!("u{i}: unexpected {e:?}"),
        }
    }
    assert!(placed <= 10 && placed > 0, "placed {placed}");
    assert_eq!(levels(&c, &a).await, (10 - placed, 0));
    assert_eq!(levels(&c, &b).await, (25 - placed, 0));
    // Store credit: spent once per order, never negative, nothing left held.
    let mut credit_spent = 0;
    for i in (0..users).filter(|i| i % 5 == 1) {
        let acc = c.get_credit(format!("u{i}")).await.unwrap().unwrap();
        assert_eq!(acc.held_minor, 0);
        assert!(acc.balance_minor == 0 || acc.balance_minor == 1_500);
        credit_spent += 1_500 - acc.balance_minor;
    }
    let mut captured = 0;
    for i in 0..users {
        let page = c
            .execute(reserva_protocol::Op::Query(
                reserva_protocol::Query::ListOrders {
                    user_id: format!("u{i}"),
                    after: None,
                    limit: 10,
                },
            ))
            .await
            .unwrap();
        if let reserva_protocol::Reply::Orders { orders, .. } = page {
            for o in orders.iter().filter(|o| o.status == OrderStatus::Confirmed) {
                if i % 5 == 1 {
                    captured += payment(o).captured_minor;
                }
            }
        }
    }
    assert_eq!(
        credit_spent, captured,
        "store credit ledger disagrees with orders"
    );
}

/// `kill -9` while checkouts run: after restart every acknowledged order is
/// there exactly once, every checkout ends, and stock reconciles.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_under_checkout_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let c = client(&server).await;
    let (a, b) = (sku_on(70, 0), sku_on(170, 0));
    stock(&c, &a, 100, &[("w1", 100_000)]).await;
    stock(&c, &b, 100, &[("w1", 100_000)]).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..12 {
        let (addr, a, b, stop) = (server.addr.clone(), a.clone(), b.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let c = Client::connect(&addr, quick_client_config()).await.unwrap();
            let mut log = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let number = if n % 4 == 0 {
                    "4000000000000002"
                } else {
                    "4242424242424242"
                };
                let req = request(&format!("w{w}"), lines(&[(&a, 1), (&b, 2)]), card(number));
                let key = format!("w{w}-{n}");
                let r = c.checkout(req.clone(), Some(key.clone())).await;
                let failed_transport = matches!(&r, Err(e) if e.is_retryable());
                log.push((
                    key,
                    req,
                    r.map(|r| r.order.id).map_err(|e| format!("{e:?}")),
                ));
                if failed_transport {
                    break;
                }
            }
            log
        }));
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    server.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut attempts = Vec::new();
    for t in tasks {
        attempts.extend(t.await.unwrap());
    }
    server.restart();
    let c = client(&server).await;
    let mut placed = 0u64;
    let mut acknowledged = 0;
    for (key, req, first) in attempts {
        let again = done(&c, req, Some(key.clone())).await;
        match (&first, &again) {
            (Ok(id), Ok(r)) => {
                acknowledged += 1;
                assert_eq!(*id, r.order.id, "{key}: acknowledged order changed");
            }
            (Ok(id), Err(e)) => panic!("{key}: acknowledged order {id} lost: {e:?}"),
            (Err(_), _) => {}
        }
        if let Ok(r) = again {
            let r = ended(&c, r).await;
            assert_eq!(r.order.status, OrderStatus::Confirmed);
            assert_eq!(payment(&r.order).status, PaymentStatus::Captured);
            placed += 1;
        }
    }
    assert!(
        acknowledged > 0,
        "no checkout was acknowledged before the kill"
    );
    assert_eq!(levels(&c, &a).await, (100_000 - placed, 0));
    assert_eq!(levels(&c, &b).await, (100_000 - 2 * placed, 0));
}

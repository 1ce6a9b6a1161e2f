//! Checkouts, store credit, fraud scoring and fulfilment on one shard,
//! through the public API: the saga's steps in and out of order, each payment
//! method, each fraud rule, an order's life after checkout, returns, queued
//! effects, and a property test of random commerce commands (invariants after
//! every step, replay and image round trip give the same checksum).
//!
//! `RESERVA_CI=1` runs more property cases; the default is a quick run.

use proptest::prelude::*;
use reserva_engine::ids::{CheckoutId, OrderId, ReservationId, ReturnId, key_on_shard};
use reserva_engine::limits::*;
use reserva_engine::sm::*;

const SHARD: u16 = 5;
const T0: u64 = 1_800_000_000_000;
/// The checkout lines total 2 x 1000 + 1 x 500.
const TOTAL: u64 = 2_500;

fn user(n: usize) -> String {
    key_on_shard("user-", SHARD, n)
}
fn eur(amount_minor: u64) -> Money {
    Money {
        amount_minor,
        currency: Currency::parse("EUR").unwrap(),
    }
}
fn usd(amount_minor: u64) -> Money {
    Money {
        amount_minor,
        currency: Currency::parse("USD").unwrap(),
    }
}

/// A card fingerprint whose velocity counter lives on this shard.
fn local_fingerprint(n: usize) -> u64 {
    (0u64..).filter(|f| card_shard(*f) == SHARD).nth(n).unwrap()
}

fn address(country: &str) -> Address {
    Address {
        name: "Ada Lovelace".into(),
        line1: "Main Street 1".into(),
        line2: String::new(),
        city: "Berlin".into(),
        region: String::new(),
        postal_code: "10115".into(),
        country: country.into(),
        lat_e6: None,
        lon_e6: None,
    }
}

fn card(fingerprint: u64, country: &str) -> PaymentMethod {
    PaymentMethod::Card {
        token: format!("tok_{fingerprint}"),
        last4: "4242".into(),
        country: country.into(),
        fingerprint,
    }
}

fn lines() -> Vec<ReserveLine> {
    vec![
        ReserveLine {
            sku: "sku-a".into(),
            qty: 2,
        },
        ReserveLine {
            sku: "sku-b".into(),
            qty: 1,
        },
    ]
}

/// `sku-a` is held on shard 7 (warehouse w1), `sku-b` on shard 8 (w2).
fn holds() -> Vec<Hold> {
    vec![
        Hold {
            shard: 7,
            reservation_id: ReservationId::new(7, 1).unwrap(),
            allocations: vec![Allocation {
                sku: "sku-a".into(),
                warehouse: "w1".into(),
                qty: 2,
            }],
            expires_at_ms: T0 + 900_000,
        },
        Hold {
            shard: 8,
            reservation_id: ReservationId::new(8, 1).unwrap(),
            allocations: vec![Allocation {
                sku: "sku-b".into(),
                warehouse: "w2".into(),
                qty: 1,
            }],
            expires_at_ms: T0 + 900_000,
        },
    ]
}

fn prices() -> Vec<PricedLine> {
    vec![
        PricedLine {
            sku: "sku-a".into(),
            seller_id: "seller-1".into(),
            unit_price: eur(1_000),
        },
        PricedLine {
            sku: "sku-b".into(),
            seller_id: "seller-2".into(),
            unit_price: eur(500),
        },
    ]
}

/// Rules under which nothing fires; each rule's points are a distinct power
/// of two so a score names exactly the rules that fired.
fn quiet() -> FraudRules {
    FraudRules {
        window_ms: 60 * 60 * 1_000,
        user_velocity_max: 100,
        user_velocity_points: 1,
        card_velocity_max: 100,
        card_velocity_points: 2,
        new_account_ms: 7 * 24 * 60 * 60 * 1_000,
        new_account_amount_minor: 1_000_000,
        new_account_points: 4,
        distinct_cards_max: 100,
        distinct_cards_points: 8,
        country_mismatch_points: 16,
        review_at: 1_000,
        reject_at: 2_000,
    }
}

/// Rules that review any checkout whose card is from another country than the address.
fn reviewing() -> FraudRules {
    FraudRules {
        review_at: 16,
        reject_at: 24,
        ..quiet()
    }
}

fn reserved_cmd(id: CheckoutId) -> CommerceCommand {
    CommerceCommand::CheckoutReserved {
        checkout_id: id,
        holds: holds(),
        prices: prices(),
        lines: lines(),
    }
}
fn score_cmd(id: CheckoutId, rules: FraudRules, card_uses: u32) -> CommerceCommand {
    CommerceCommand::CheckoutScore {
        checkout_id: id,
        rules,
        card_uses,
    }
}
fn authorized_cmd(id: CheckoutId, auth_ref: &str) -> CommerceCommand {
    CommerceCommand::CheckoutAuthorized {
        checkout_id: id,
        auth_ref: auth_ref.into(),
    }
}
fn create_order_cmd(id: CheckoutId) -> CommerceCommand {
    CommerceCommand::CheckoutCreateOrder {
        checkout_id: id,
        estimates: vec![
            DeliveryEstimate {
                warehouse: "w1".into(),
                distance_km: 12,
                estimated_at_ms: T0 + 86_400_000,
            },
            DeliveryEstimate {
                warehouse: "w2".into(),
                distance_km: 480,
                estimated_at_ms: T0 + 3 * 86_400_000,
            },
        ],
    }
}
fn fail_cmd(id: CheckoutId) -> CommerceCommand {
    CommerceCommand::CheckoutFail {
        checkout_id: id,
        error: EngineError::InsufficientStock {
            sku: "sku-a".into(),
            requested: 2,
            available: 0,
        },
    }
}

/// A shard and its clock; every command is applied one millisecond after the last.
struct Shop {
    s: ShardState,
    now: u64,
}

impl Shop {
    fn new() -> Self {
        Shop {
            s: ShardState::new(SHARD),
            now: T0,
        }
    }

    fn try_cmd(&mut self, c: CommerceCommand) -> Result<CommerceOutcome, EngineError> {
        self.now += 1;
        let r = self
            .s
            .apply(self.now, &Request::new(Command::Commerce(Box::new(c))));
        self.s.check_invariants().unwrap();
        match r?.outcome {
            Outcome::Commerce(o) => Ok(*o),
            other => panic!("not a commerce outcome: {other:?}"),
        }
    }

    fn ok(&mut self, c: CommerceCommand) -> CommerceOutcome {
        let shown = format!("{c:?}");
        self.try_cmd(c)
            .unwrap_or_else(|e| panic!("{shown} refused: {e:?}"))
    }

    /// Applies a command that must be refused, and checks it changed nothing.
    fn refused(&mut self, c: CommerceCommand) -> EngineError {
        let before = self.s.checksum();
        let shown = format!("{c:?}");
        let e = match self.try_cmd(c) {
            Err(e) => e,
            Ok(o) => panic!("{shown} accepted: {o:?}"),
        };
        assert_eq!(
            self.s.checksum(),
            before,
            "refused {shown} changed the state"
        );
        e
    }

    fn begin(&mut self, user_id: &str, payment: PaymentMethod) -> CheckoutId {
        self.begin_to(user_id, payment, "DE")
    }

    fn begin_to(&mut self, user_id: &str, payment: PaymentMethod, country: &str) -> CheckoutId {
        match self.ok(CommerceCommand::CheckoutBegin {
            user_id: user_id.into(),
            source: CheckoutSource::Lines(lines()),
            payment,
            ship_to: address(country),
        }) {
            CommerceOutcome::CheckoutStarted { checkout_id } => checkout_id,
            o => panic!("{o:?}"),
        }
    }

    fn checkout(&self, id: CheckoutId) -> &Checkout {
        self.s.checkout(id).expect("checkout")
    }

    /// The command that takes checkout `id` one step further on the happy path.
    fn next_step(&self, id: CheckoutId, rules: &FraudRules) -> CommerceCommand {
        let c = self.checkout(id);
        match c.state {
            CheckoutState::Started => reserved_cmd(id),
            CheckoutState::Reserved => score_cmd(id, rules.clone(), 1),
            CheckoutState::Scored => {
                let auth = match c.payment.method {
                    PaymentMethod::Card { .. } => "auth-1",
                    _ => "",
                };
                authorized_cmd(id, auth)
            }
            CheckoutState::Authorized => create_order_cmd(id),
            CheckoutState::OrderCreated => {
                CommerceCommand::CheckoutStockConfirmed { checkout_id: id }
            }
            CheckoutState::StockConfirmed => CommerceCommand::CheckoutFinish { checkout_id: id },
            CheckoutState::Compensating => CommerceCommand::CheckoutCompensated { checkout_id: id },
            s => panic!("checkout {id} is {s:?}: no next step"),
        }
    }

    /// Steps checkout `id` along the happy path until it is in `target` (or terminal).
    fn drive(&mut self, id: CheckoutId, target: CheckoutState, rules: &FraudRules) {
        while self.checkout(id).state != target && !self.checkout(id).state.is_terminal() {
            let c = self.next_step(id, rules);
            match self.ok(c) {
                CommerceOutcome::CheckoutStep { checkout } => {
                    assert_eq!(&checkout, self.checkout(id), "a step answers the checkout")
                }
                o => panic!("{o:?}"),
            }
        }
        assert_eq!(self.checkout(id).state, target);
    }

    /// A checkout by `user(0)` paid with `payment`, driven to `target`.
    fn checkout_at(
        &mut self,
        payment: PaymentMethod,
        target: CheckoutState,
        rules: &FraudRules,
    ) -> CheckoutId {
        let id = self.begin(&user(0), payment);
        self.drive(id, target, rules);
        id
    }

    fn order(&self, id: OrderId) -> Order {
        self.s.order(id).expect("order").clone()
    }

    fn order_of(&self, id: CheckoutId) -> OrderId {
        self.checkout(id).order_id.expect("checkout has an order")
    }

    fn act(&mut self, order_id: OrderId, action: OrderAction) -> Result<Order, EngineError> {
        match self.try_cmd(CommerceCommand::Order { order_id, action })? {
            CommerceOutcome::Order { order, return_id } => {
                assert_eq!(return_id, None);
                assert_eq!(order, self.order(order_id), "an action answers the order");
                Ok(order)
            }
            o => panic!("{o:?}"),
        }
    }

    fn act_ok(&mut self, order_id: OrderId, action: OrderAction) -> Order {
        let shown = format!("{action:?}");
        self.act(order_id, action)
            .unwrap_or_else(|e| panic!("{shown} refused: {e:?}"))
    }

    fn act_refused(&mut self, order_id: OrderId, action: OrderAction) -> EngineError {
        let before = self.s.checksum();
        let shown = format!("{action:?}");
        let e = match self.act(order_id, action) {
            Err(e) => e,
            Ok(o) => panic!("{shown} accepted: {:?}", o.status),
        };
        assert_eq!(
            self.s.checksum(),
            before,
            "refused {shown} changed the state"
        );
        e
    }

    fn grant(&mut self, user_id: &str, amount: Money) -> CreditAccount {
        match self.ok(CommerceCommand::CreditGrant {
            user_id: user_id.into(),
            amount,
        }) {
            CommerceOutcome::Credit { account } => account,
            o => panic!("{o:?}"),
        }
    }

    fn credit(&self, user_id: &str) -> (u64, u64) {
        let a = self.s.credit_account(user_id).expect("credit account");
        (a.balance_minor, a.held_minor)
    }

    /// A completed card checkout's order, shipped and delivered.
    fn delivered(&mut self, payment: PaymentMethod) -> OrderId {
        let id = self.checkout_at(payment, CheckoutState::Completed, &quiet());
        let o = self.order_of(id);
        self.act_ok(o, OrderAction::Pack);
        self.act_ok(
            o,
            OrderAction::Ship {
                carrier: "dhl".into(),
                tracking_number: "JD0001".into(),
            },
        );
        self.act_ok(o, OrderAction::Deliver);
        o
    }

    fn request_return(&mut self, o: OrderId, l: &[(&str, u32)]) -> Result<ReturnId, EngineError> {
        let lines = l
            .iter()
            .map(|(sku, qty)| ReserveLine {
                sku: (*sku).into(),
                qty: *qty,
            })
            .collect();
        match self.try_cmd(CommerceCommand::ReturnRequest {
            order_id: o,
            lines,
            reason: "too small".into(),
        })? {
            CommerceOutcome::Order { return_id, .. } => Ok(return_id.expect("a new return")),
            other => panic!("{other:?}"),
        }
    }

    fn ret(&mut self, return_id: ReturnId, action: ReturnAction) -> Result<Order, EngineError> {
        match self.try_cmd(CommerceCommand::Return { return_id, action })? {
            CommerceOutcome::Order {
                order,
                return_id: r,
            } => {
                assert_eq!(r, Some(return_id));
                Ok(order)
            }
            o => panic!("{o:?}"),
        }
    }

    fn card_use(&mut self, fingerprint: u64, window_ms: u64) -> Result<u32, EngineError> {
        match self.try_cmd(CommerceCommand::CardUse {
            fingerprint,
            window_ms,
        })? {
            CommerceOutcome::CardUses { count } => Ok(count),
            o => panic!("{o:?}"),
        }
    }

    fn tick_at(&mut self, now: u64) -> u32 {
        self.now = now;
        let r = self
            .s
            .apply(now, &Request::new(Command::Tick { expire: vec![] }))
            .unwrap();
        self.s.check_invariants().unwrap();
        match r.outcome {
            Outcome::Ticked { pruned, .. } => pruned,
            o => panic!("{o:?}"),
        }
    }
}

fn fulfilment(o: &Order) -> &Fulfilment {
    o.fulfilment
        .as_deref()
        .expect("a checkout order has fulfilment")
}

fn pending_effects(o: &Order) -> Vec<EffectKind> {
    fulfilment(o)
        .effects
        .iter()
        .filter(|e| !e.done)
        .map(|e| e.kind.clone())
        .collect()
}

fn restocks() -> Vec<EffectKind> {
    vec![
        EffectKind::Restock {
            sku: "sku-a".into(),
            warehouse: "w1".into(),
            qty: 2,
        },
        EffectKind::Restock {
            sku: "sku-b".into(),
            warehouse: "w2".into(),
            qty: 1,
        },
    ]
}

// ---- the saga's steps ----

/// Every step command, named.
fn every_step(id: CheckoutId) -> Vec<(&'static str, CommerceCommand)> {
    vec![
        ("reserved", reserved_cmd(id)),
        ("score", score_cmd(id, quiet(), 1)),
        ("authorized", authorized_cmd(id, "auth-1")),
        ("create_order", create_order_cmd(id)),
        (
            "stock_confirmed",
            CommerceCommand::CheckoutStockConfirmed { checkout_id: id },
        ),
        (
            "finish",
            CommerceCommand::CheckoutFinish { checkout_id: id },
        ),
        ("fail", fail_cmd(id)),
        (
            "compensated",
            CommerceCommand::CheckoutCompensated { checkout_id: id },
        ),
    ]
}

/// The steps a checkout in `state` accepts.
fn accepted_in(state: CheckoutState) -> &'static [&'static str] {
    use CheckoutState::*;
    match state {
        Started => &["reserved", "fail"],
        Reserved => &["score", "fail"],
        Scored => &["authorized", "fail"],
        Authorized => &["create_order", "fail"],
        OrderCreated => &["stock_confirmed", "fail"],
        StockConfirmed => &["finish", "fail"],
        Compensating => &["compensated"],
        Completed | InReview | Failed => &[],
    }
}

/// A card checkout in each state the saga can reach.
fn checkout_in_state(state: CheckoutState) -> (Shop, CheckoutId) {
    let mut shop = Shop::new();
    let id = match state {
        CheckoutState::Compensating | CheckoutState::Failed => {
            let id = shop.checkout_at(card(1, "DE"), CheckoutState::Scored, &quiet());
            shop.ok(fail_cmd(id));
            if state == CheckoutState::Failed {
                shop.ok(CommerceCommand::CheckoutCompensated { checkout_id: id });
            }
            id
        }
        CheckoutState::InReview => {
            let id = shop.begin(&user(0), card(1, "FR"));
            shop.drive(id, CheckoutState::InReview, &reviewing());
            id
        }
        _ => shop.checkout_at(card(1, "DE"), state, &quiet()),
    };
    assert_eq!(shop.checkout(id).state, state);
    (shop, id)
}

#[test]
fn each_step_is_accepted_only_in_its_state_and_never_twice() {
    use CheckoutState::*;
    for state in [
        Started,
        Reserved,
        Scored,
        Authorized,
        OrderCreated,
        StockConfirmed,
        Completed,
        InReview,
        Compensating,
        Failed,
    ] {
        let (shop, id) = checkout_in_state(state);
        for (name, cmd) in every_step(id) {
            let mut probe = Shop {
                s: shop.s.clone(),
                now: shop.now,
            };
            if accepted_in(state).contains(&name) {
                let next = probe.ok(cmd.clone());
                let CommerceOutcome::CheckoutStep { checkout } = next else {
                    panic!("{next:?}")
                };
                assert_ne!(checkout.state, state, "{name} in {state:?} moved nothing");
                // Recorded once, the same step is refused when sent again.
                let again = probe.refused(cmd);
                assert_eq!(
                    again,
                    EngineError::CheckoutState {
                        checkout_id: id,
                        state: checkout.state.as_str().into()
                    },
                    "{name} repeated after {state:?}"
                );
            } else {
                let e = probe.refused(cmd);
                assert_eq!(
                    e,
                    EngineError::CheckoutState {
                        checkout_id: id,
                        state: state.as_str().into()
                    },
                    "{name} in {state:?}"
                );
            }
        }
    }
}

#[test]
fn steps_of_unknown_or_foreign_checkouts_are_refused() {
    let mut shop = Shop::new();
    let unknown = CheckoutId::new(SHARD, 99).unwrap();
    for (_, cmd) in every_step(unknown) {
        assert_eq!(
            shop.refused(cmd),
            EngineError::UnknownCheckout {
                checkout_id: unknown
            }
        );
    }
    let foreign = CheckoutId::new(SHARD + 1, 1).unwrap();
    for (_, cmd) in every_step(foreign) {
        assert_eq!(
            shop.refused(cmd),
            EngineError::WrongShard { owner: SHARD + 1 }
        );
    }
}

#[test]
fn begin_validates_its_input() {
    let mut shop = Shop::new();
    let begin = |user_id: String, payment: PaymentMethod, ship_to: Address, source| {
        CommerceCommand::CheckoutBegin {
            user_id,
            source,
            payment,
            ship_to,
        }
    };
    let src = || CheckoutSource::Lines(lines());
    let foreign = key_on_shard("user-", SHARD + 1, 0);
    assert_eq!(
        shop.refused(begin(foreign, card(1, "DE"), address("DE"), src())),
        EngineError::WrongShard { owner: SHARD + 1 }
    );
    let mut no_city = address("DE");
    no_city.city = "  ".into();
    let mut half_geo = address("DE");
    half_geo.lat_e6 = Some(52_000_000);
    let bad = [
        begin(user(0), card(1, "DE"), address("de"), src()),
        begin(user(0), card(1, "DE"), no_city, src()),
        begin(user(0), card(1, "DE"), half_geo, src()),
        begin(user(0), card(1, "Germany"), address("DE"), src()),
        begin(
            user(0),
            PaymentMethod::Card {
                token: "tok".into(),
                last4: "42".into(),
                country: "DE".into(),
                fingerprint: 1,
            },
            address("DE"),
            src(),
        ),
        begin(
            user(0),
            card(1, "DE"),
            address("DE"),
            CheckoutSource::Lines(vec![]),
        ),
        begin(
            user(0),
            card(1, "DE"),
            address("DE"),
            CheckoutSource::Lines(vec![
                ReserveLine {
                    sku: "sku-a".into(),
                    qty: 1,
                },
                ReserveLine {
                    sku: "sku-a".into(),
                    qty: 1,
                },
            ]),
        ),
        begin(user(0), card(1, "DE"), address("DE"), CheckoutSource::Cart),
    ];
    for c in bad {
        let shown = format!("{c:?}");
        let e = shop.refused(c);
        assert!(
            matches!(e, EngineError::InvalidInput { .. }),
            "{shown}: {e:?}"
        );
    }
    assert_eq!(shop.s.checkouts().count(), 0);
}

#[test]
fn reserved_checks_holds_prices_and_lines() {
    let mut shop = Shop::new();
    let id = shop.begin(&user(0), card(1, "DE"));
    let mut short = holds();
    short[0].allocations[0].qty = 1;
    let mut foreign = holds();
    foreign[1].shard = 9;
    let mut other_lines = lines();
    other_lines[0].qty = 3;
    let mut mixed = prices();
    mixed[1].unit_price = usd(500);
    let bad = [
        (short, prices(), lines()),
        (foreign, prices(), lines()),
        (holds(), prices()[..1].to_vec(), lines()),
        (holds(), mixed, lines()),
        (holds(), prices(), other_lines),
        (vec![], prices(), lines()),
    ];
    for (holds, prices, lines) in bad {
        let e = shop.refused(CommerceCommand::CheckoutReserved {
            checkout_id: id,
            holds,
            prices,
            lines,
        });
        assert!(matches!(e, EngineError::InvalidInput { .. }), "{e:?}");
    }
    assert_eq!(shop.checkout(id).state, CheckoutState::Started);
    shop.ok(reserved_cmd(id));
    let c = shop.checkout(id);
    assert_eq!(c.payment.amount, eur(TOTAL));
    assert_eq!(c.holds, holds());
    assert_eq!(c.prices, prices());
}

#[test]
fn a_checkout_adopting_a_reservation_takes_its_lines_at_reserved() {
    let mut shop = Shop::new();
    let id = match shop.ok(CommerceCommand::CheckoutBegin {
        user_id: user(0),
        source: CheckoutSource::Reservation(ReservationId::new(7, 1).unwrap()),
        payment: card(1, "DE"),
        ship_to: address("DE"),
    }) {
        CommerceOutcome::CheckoutStarted { checkout_id } => checkout_id,
        o => panic!("{o:?}"),
    };
    assert!(shop.checkout(id).lines.is_empty());
    shop.drive(id, CheckoutState::Completed, &quiet());
    assert_eq!(shop.checkout(id).lines, lines());
    assert_eq!(shop.order(shop.order_of(id)).total, eur(TOTAL));
}

#[test]
fn a_cart_checkout_takes_the_cart_and_empties_it_when_done() {
    let mut shop = Shop::new();
    for l in lines() {
        shop.s
            .apply(
                T0,
                &Request::new(Command::CartSet {
                    user_id: user(0),
                    sku: l.sku,
                    qty: l.qty,
                }),
            )
            .unwrap();
    }
    let id = match shop.ok(CommerceCommand::CheckoutBegin {
        user_id: user(0),
        source: CheckoutSource::Cart,
        payment: card(1, "DE"),
        ship_to: address("DE"),
    }) {
        CommerceOutcome::CheckoutStarted { checkout_id } => checkout_id,
        o => panic!("{o:?}"),
    };
    assert_eq!(shop.checkout(id).lines, lines());
    shop.drive(id, CheckoutState::StockConfirmed, &quiet());
    assert_eq!(
        shop.s.cart(&user(0)).len(),
        2,
        "kept until the checkout ends"
    );
    shop.drive(id, CheckoutState::Completed, &quiet());
    assert!(shop.s.cart(&user(0)).is_empty());
}

#[test]
fn card_checkout_happy_path() {
    let mut shop = Shop::new();
    let id = shop.begin(&user(0), card(1, "DE"));
    let c = shop.checkout(id).clone();
    assert_eq!(c.state, CheckoutState::Started);
    assert_eq!(c.payment.status, PaymentStatus::Pending);
    assert_eq!(c.payment.amount.currency, NO_CURRENCY);

    shop.drive(id, CheckoutState::Scored, &quiet());
    let fraud = shop.checkout(id).fraud.clone().unwrap();
    assert_eq!(
        fraud,
        FraudResult {
            score: 0,
            reasons: vec![],
            decision: FraudDecision::Accept
        }
    );
    // A card authorization needs a reference.
    assert!(matches!(
        shop.refused(authorized_cmd(id, "")),
        EngineError::InvalidInput { .. }
    ));
    shop.drive(id, CheckoutState::Authorized, &quiet());
    let c = shop.checkout(id).clone();
    assert_eq!(c.payment.status, PaymentStatus::Authorized);
    assert_eq!(c.payment.auth_ref, "auth-1");

    shop.drive(id, CheckoutState::OrderCreated, &quiet());
    let o = shop.order(shop.order_of(id));
    assert_eq!(o.status, OrderStatus::Placed);
    assert_eq!(o.user_id, user(0));
    assert_eq!(o.total, eur(TOTAL));
    let order_units: Vec<(String, String, u32)> = o
        .lines
        .iter()
        .map(|l| (l.sku.clone(), l.warehouse.clone(), l.qty))
        .collect();
    assert_eq!(
        order_units,
        vec![
            ("sku-a".into(), "w1".into(), 2),
            ("sku-b".into(), "w2".into(), 1)
        ]
    );
    let f = fulfilment(&o);
    assert_eq!(f.checkout_id, id);
    assert_eq!(f.sellers, vec!["seller-1".to_string(), "seller-2".into()]);
    assert_eq!(f.shipments.len(), 2);
    assert_eq!(f.shipments[1].warehouse, "w2");
    assert_eq!(f.shipments[1].distance_km, 480);
    assert_eq!(f.shipments[1].estimated_delivery_ms, T0 + 3 * 86_400_000);
    // A running checkout owns its order.
    assert!(matches!(
        shop.act_refused(
            o.id,
            OrderAction::Cancel {
                reason: String::new()
            }
        ),
        EngineError::CheckoutState { .. }
    ));
    assert!(matches!(
        shop.act_refused(o.id, OrderAction::Pack),
        EngineError::CheckoutState { .. }
    ));

    shop.drive(id, CheckoutState::Completed, &quiet());
    let c = shop.checkout(id).clone();
    assert_eq!(c.payment.status, PaymentStatus::Captured);
    assert_eq!(c.payment.captured_minor, TOTAL);
    let o = shop.order(o.id);
    assert_eq!(o.status, OrderStatus::Confirmed);
    assert_eq!(fulfilment(&o).payment, c.payment);
    assert!(fulfilment(&o).effects.is_empty());
    assert_eq!(shop.s.orders_with_pending_effects().count(), 0);

    // A finished checkout is kept for its retention, then pruned; the order stays.
    let done_at = c.updated_at_ms;
    assert_eq!(
        shop.s.next_deadline_ms(),
        Some(done_at + CHECKOUT_RETENTION_MS)
    );
    shop.tick_at(done_at + CHECKOUT_RETENTION_MS - 1);
    assert!(shop.s.checkout(id).is_some());
    assert_eq!(shop.tick_at(done_at + CHECKOUT_RETENTION_MS), 1);
    assert!(shop.s.checkout(id).is_none());
    assert!(shop.s.order(o.id).is_some());
    assert_eq!(
        shop.refused(CommerceCommand::CheckoutFinish { checkout_id: id }),
        EngineError::UnknownCheckout { checkout_id: id }
    );
}

#[test]
fn a_failed_card_checkout_voids_and_cancels_its_order() {
    let mut shop = Shop::new();
    let id = shop.checkout_at(card(1, "DE"), CheckoutState::StockConfirmed, &quiet());
    shop.ok(CommerceCommand::CheckoutFail {
        checkout_id: id,
        error: EngineError::PaymentFailed {
            message: "provider down".into(),
        },
    });
    let c = shop.checkout(id).clone();
    assert_eq!(c.state, CheckoutState::Compensating);
    assert_eq!(c.payment.status, PaymentStatus::Failed);
    assert!(matches!(c.failure, Some(EngineError::PaymentFailed { .. })));

    let id2 = shop.checkout_at(card(1, "DE"), CheckoutState::OrderCreated, &quiet());
    shop.ok(fail_cmd(id2));
    shop.ok(CommerceCommand::CheckoutCompensated { checkout_id: id2 });
    let c2 = shop.checkout(id2).clone();
    assert_eq!(c2.state, CheckoutState::Failed);
    assert_eq!(c2.payment.status, PaymentStatus::Voided);
    let o = shop.order(c2.order_id.unwrap());
    assert_eq!(o.status, OrderStatus::Cancelled);
    assert_eq!(fulfilment(&o).payment.status, PaymentStatus::Voided);
    assert!(
        o.history
            .last()
            .unwrap()
            .note
            .starts_with("checkout failed")
    );
    // The saga gave the holds back itself: no effects on the order.
    assert!(fulfilment(&o).effects.is_empty());
}

#[test]
fn store_credit_is_held_at_authorize_and_spent_once_at_finish() {
    let mut shop = Shop::new();
    let account = shop.grant(&user(0), eur(10_000));
    assert_eq!(account.balance_minor, 10_000);
    let id = shop.checkout_at(
        PaymentMethod::StoreCredit,
        CheckoutState::Authorized,
        &quiet(),
    );
    assert_eq!(shop.credit(&user(0)), (10_000, TOTAL));
    assert_eq!(
        shop.s.credit_account(&user(0)).unwrap().available_minor(),
        10_000 - TOTAL
    );
    shop.drive(id, CheckoutState::Completed, &quiet());
    assert_eq!(shop.credit(&user(0)), (10_000 - TOTAL, 0));
    let c = shop.checkout(id).clone();
    assert_eq!(c.payment.status, PaymentStatus::Captured);
    assert_eq!(c.payment.captured_minor, TOTAL);
    // Sent again, finish changes nothing and spends nothing.
    shop.refused(CommerceCommand::CheckoutFinish { checkout_id: id });
    assert_eq!(shop.credit(&user(0)), (10_000 - TOTAL, 0));
    // Cancelling the confirmed order pays the credit back.
    let o = shop.order_of(id);
    let order = shop.act_ok(
        o,
        OrderAction::Cancel {
            reason: "changed my mind".into(),
        },
    );
    assert_eq!(shop.credit(&user(0)), (10_000, 0));
    assert_eq!(fulfilment(&order).payment.refunded_minor, TOTAL);
    assert_eq!(
        pending_effects(&order),
        restocks(),
        "no card call for credit"
    );
}

#[test]
fn insufficient_store_credit_is_a_decline_and_takes_nothing() {
    let mut shop = Shop::new();
    shop.grant(&user(0), eur(TOTAL - 1));
    let id = shop.checkout_at(PaymentMethod::StoreCredit, CheckoutState::Scored, &quiet());
    shop.ok(authorized_cmd(id, ""));
    let c = shop.checkout(id).clone();
    assert_eq!(c.state, CheckoutState::Compensating);
    assert_eq!(c.payment.status, PaymentStatus::Declined);
    assert!(
        matches!(&c.failure, Some(EngineError::PaymentDeclined { code, .. }) if code == "insufficient_credit"),
        "{:?}",
        c.failure
    );
    assert_eq!(shop.credit(&user(0)), (TOTAL - 1, 0));
    shop.ok(CommerceCommand::CheckoutCompensated { checkout_id: id });
    assert_eq!(shop.checkout(id).state, CheckoutState::Failed);
    assert_eq!(shop.credit(&user(0)), (TOTAL - 1, 0));

    // No account at all, or an account in another currency: declined too.
    let id = shop.begin(&user(1), PaymentMethod::StoreCredit);
    shop.drive(id, CheckoutState::Compensating, &quiet());
    assert!(shop.s.credit_account(&user(1)).is_none());
    shop.grant(&user(2), usd(100_000));
    let id = shop.begin(&user(2), PaymentMethod::StoreCredit);
    shop.drive(id, CheckoutState::Compensating, &quiet());
    assert!(
        matches!(&shop.checkout(id).failure, Some(EngineError::PaymentDeclined { code, .. }) if code == "currency_mismatch")
    );
    assert_eq!(shop.credit(&user(2)), (100_000, 0));
}

#[test]
fn compensation_releases_a_store_credit_hold() {
    let mut shop = Shop::new();
    shop.grant(&user(0), eur(10_000));
    let id = shop.checkout_at(
        PaymentMethod::StoreCredit,
        CheckoutState::StockConfirmed,
        &quiet(),
    );
    assert_eq!(shop.credit(&user(0)), (10_000, TOTAL));
    shop.ok(fail_cmd(id));
    assert_eq!(
        shop.credit(&user(0)),
        (10_000, TOTAL),
        "held until compensated"
    );
    shop.ok(CommerceCommand::CheckoutCompensated { checkout_id: id });
    assert_eq!(shop.credit(&user(0)), (10_000, 0));
    let c = shop.checkout(id).clone();
    assert_eq!(c.payment.status, PaymentStatus::Voided);
    assert_eq!(
        shop.order(c.order_id.unwrap()).status,
        OrderStatus::Cancelled
    );
}

#[test]
fn two_checkouts_cannot_hold_the_same_credit() {
    let mut shop = Shop::new();
    shop.grant(&user(0), eur(TOTAL + TOTAL / 2));
    let a = shop.checkout_at(
        PaymentMethod::StoreCredit,
        CheckoutState::Authorized,
        &quiet(),
    );
    let b = shop.checkout_at(
        PaymentMethod::StoreCredit,
        CheckoutState::Compensating,
        &quiet(),
    );
    assert!(matches!(
        shop.checkout(b).failure,
        Some(EngineError::PaymentDeclined { .. })
    ));
    assert_eq!(shop.credit(&user(0)), (TOTAL + TOTAL / 2, TOTAL));
    shop.drive(a, CheckoutState::Completed, &quiet());
    shop.drive(b, CheckoutState::Failed, &quiet());
    assert_eq!(shop.credit(&user(0)), (TOTAL / 2, 0));
}

#[test]
fn cash_on_delivery_is_captured_at_delivery() {
    let mut shop = Shop::new();
    let id = shop.checkout_at(
        PaymentMethod::CashOnDelivery,
        CheckoutState::Completed,
        &quiet(),
    );
    let c = shop.checkout(id).clone();
    assert_eq!(c.payment.status, PaymentStatus::Authorized);
    assert_eq!(c.payment.captured_minor, 0);
    assert_eq!(c.payment.auth_ref, "");
    let o = c.order_id.unwrap();
    assert_eq!(shop.order(o).status, OrderStatus::Confirmed);
    shop.act_ok(o, OrderAction::Pack);
    shop.act_ok(
        o,
        OrderAction::Ship {
            carrier: "ups".into(),
            tracking_number: "1Z".into(),
        },
    );
    let before = shop.order(o);
    assert_eq!(fulfilment(&before).payment.captured_minor, 0);
    let after = shop.act_ok(o, OrderAction::Deliver);
    assert_eq!(after.status, OrderStatus::Delivered);
    let p = &fulfilment(&after).payment;
    assert_eq!(p.status, PaymentStatus::Captured);
    assert_eq!(p.captured_minor, TOTAL);
    assert!(fulfilment(&after).effects.is_empty());
}

// ---- fraud ----

/// Scores a fresh checkout by `user_id` and answers its fraud result.
fn score_of(
    shop: &mut Shop,
    user_id: &str,
    payment: PaymentMethod,
    country: &str,
    rules: &FraudRules,
    card_uses: u32,
) -> (CheckoutId, FraudResult) {
    let id = shop.begin_to(user_id, payment, country);
    shop.ok(reserved_cmd(id));
    shop.ok(score_cmd(id, rules.clone(), card_uses));
    (id, shop.checkout(id).fraud.clone().unwrap())
}

fn fired(r: &FraudResult) -> Vec<&str> {
    r.reasons
        .iter()
        .map(|s| s.split(':').next().unwrap())
        .collect()
}

#[test]
fn user_velocity_fires_alone_past_its_maximum_within_the_window() {
    let mut shop = Shop::new();
    let rules = FraudRules {
        user_velocity_max: 2,
        ..quiet()
    };
    for _ in 0..2 {
        let (_, r) = score_of(&mut shop, &user(0), card(1, "DE"), "DE", &rules, 1);
        assert_eq!(r.score, 0);
    }
    let (_, r) = score_of(&mut shop, &user(0), card(1, "DE"), "DE", &rules, 1);
    assert_eq!((r.score, fired(&r)), (1, vec!["user_velocity"]));
    // Another user is not affected; past the window the old checkouts no longer count.
    let (_, r) = score_of(&mut shop, &user(1), card(1, "DE"), "DE", &rules, 1);
    assert_eq!(r.score, 0);
    shop.now += rules.window_ms;
    let (_, r) = score_of(&mut shop, &user(0), card(1, "DE"), "DE", &rules, 1);
    assert_eq!(r.score, 0, "{r:?}");
}

#[test]
fn card_velocity_fires_alone_past_its_maximum() {
    let mut shop = Shop::new();
    let rules = FraudRules {
        card_velocity_max: 3,
        ..quiet()
    };
    let (_, r) = score_of(&mut shop, &user(0), card(1, "DE"), "DE", &rules, 3);
    assert_eq!(r.score, 0);
    let (_, r) = score_of(&mut shop, &user(0), card(1, "DE"), "DE", &rules, 4);
    assert_eq!((r.score, fired(&r)), (2, vec!["card_velocity"]));
    // Only cards have a velocity.
    let (_, r) = score_of(
        &mut shop,
        &user(0),
        PaymentMethod::CashOnDelivery,
        "DE",
        &rules,
        99,
    );
    assert_eq!(r.score, 0);
}

#[test]
fn new_account_amount_fires_alone_for_new_accounts_only() {
    let mut shop = Shop::new();
    let rules = FraudRules {
        new_account_amount_minor: TOTAL - 1,
        new_account_ms: 10_000,
        ..quiet()
    };
    let (_, r) = score_of(&mut shop, &user(0), card(1, "DE"), "DE", &rules, 1);
    assert_eq!((r.score, fired(&r)), (4, vec!["new_account_amount"]));
    // At the amount itself it does not fire.
    let (_, r) = score_of(
        &mut shop,
        &user(1),
        card(1, "DE"),
        "DE",
        &FraudRules {
            new_account_amount_minor: TOTAL,
            ..rules.clone()
        },
        1,
    );
    assert_eq!(r.score, 0);
    // An account first seen (by a credit grant) long enough ago is not new.
    shop.grant(&user(2), eur(1));
    shop.now += 10_000;
    let (_, r) = score_of(&mut shop, &user(2), card(1, "DE"), "DE", &rules, 1);
    assert_eq!(r.score, 0, "{r:?}");
}

#[test]
fn distinct_cards_fires_alone_past_its_maximum() {
    let mut shop = Shop::new();
    let rules = FraudRules {
        distinct_cards_max: 2,
        ..quiet()
    };
    for fp in [1, 2, 1, 2] {
        let (_, r) = score_of(&mut shop, &user(0), card(fp, "DE"), "DE", &rules, 1);
        assert_eq!(r.score, 0, "card {fp}");
    }
    let (_, r) = score_of(&mut shop, &user(0), card(3, "DE"), "DE", &rules, 1);
    assert_eq!((r.score, fired(&r)), (8, vec!["distinct_cards"]));
    // The user's cards are remembered even when paying otherwise.
    let (_, r) = score_of(
        &mut shop,
        &user(0),
        PaymentMethod::CashOnDelivery,
        "DE",
        &rules,
        1,
    );
    assert_eq!(r.score, 8);
}

#[test]
fn country_mismatch_fires_alone_for_cards_from_another_country() {
    let mut shop = Shop::new();
    let (_, r) = score_of(&mut shop, &user(0), card(1, "FR"), "DE", &quiet(), 1);
    assert_eq!((r.score, fired(&r)), (16, vec!["country_mismatch"]));
    assert_eq!(r.decision, FraudDecision::Accept);
    let (_, r) = score_of(&mut shop, &user(0), card(1, "FR"), "FR", &quiet(), 1);
    assert_eq!(r.score, 0);
}

#[test]
fn every_rule_together_adds_up_and_reasons_are_kept_in_rule_order() {
    let mut shop = Shop::new();
    let rules = FraudRules {
        user_velocity_max: 0,
        card_velocity_max: 0,
        new_account_amount_minor: 0,
        distinct_cards_max: 0,
        ..quiet()
    };
    let (id, r) = score_of(&mut shop, &user(0), card(1, "FR"), "DE", &rules, 1);
    assert_eq!(r.score, 1 + 2 + 4 + 8 + 16);
    assert_eq!(
        fired(&r),
        vec![
            "user_velocity",
            "card_velocity",
            "country_mismatch",
            "new_account_amount",
            "distinct_cards"
        ]
    );
    // The same pure function answers the same result.
    let user_record = UserRecord {
        user_id: user(0),
        first_seen_ms: shop.checkout(id).created_at_ms,
        recent_checkouts_ms: vec![shop.checkout(id).created_at_ms],
        cards: vec![1],
    };
    let again = fraud::score(&rules, shop.now, shop.checkout(id), &user_record, 1);
    assert_eq!(again, r);
}

#[test]
fn thresholds_decide_accept_review_and_reject() {
    // Country mismatch scores 16; distinct cards 8 on top.
    for (review_at, reject_at, two_cards, want) in [
        (17, 30, false, FraudDecision::Accept),
        (16, 30, false, FraudDecision::Review),
        (10, 24, true, FraudDecision::Reject),
        (10, 25, true, FraudDecision::Review),
        (0, 0, false, FraudDecision::Reject),
    ] {
        let mut shop = Shop::new();
        let rules = FraudRules {
            review_at,
            reject_at,
            distinct_cards_max: 1,
            ..quiet()
        };
        if two_cards {
            shop.begin(&user(0), card(9, "DE"));
        }
        let (id, r) = score_of(&mut shop, &user(0), card(1, "FR"), "DE", &rules, 1);
        assert_eq!(r.decision, want, "{review_at}/{reject_at}: {r:?}");
        let c = shop.checkout(id).clone();
        if want == FraudDecision::Reject {
            assert_eq!(c.state, CheckoutState::Compensating);
            assert_eq!(
                c.failure,
                Some(EngineError::FraudRejected {
                    score: r.score,
                    reasons: r.reasons.clone()
                })
            );
            shop.ok(CommerceCommand::CheckoutCompensated { checkout_id: id });
            assert_eq!(shop.checkout(id).state, CheckoutState::Failed);
            assert!(shop.checkout(id).order_id.is_none());
        } else {
            assert_eq!(c.state, CheckoutState::Scored);
            assert!(c.failure.is_none());
        }
    }
}

#[test]
fn malformed_rules_are_refused() {
    let mut shop = Shop::new();
    let id = shop.checkout_at(card(1, "DE"), CheckoutState::Reserved, &quiet());
    for rules in [
        FraudRules {
            window_ms: 0,
            ..quiet()
        },
        FraudRules {
            window_ms: FRAUD_WINDOW_MS_MAX + 1,
            ..quiet()
        },
        FraudRules {
            review_at: 10,
            reject_at: 9,
            ..quiet()
        },
    ] {
        assert!(matches!(
            shop.refused(score_cmd(id, rules, 1)),
            EngineError::InvalidInput { .. }
        ));
    }
}

#[test]
fn a_reviewed_order_is_stored_in_review_with_its_reasons_and_approved_with_a_capture() {
    let mut shop = Shop::new();
    let id = shop.begin_to(&user(0), card(1, "FR"), "DE");
    shop.drive(id, CheckoutState::InReview, &reviewing());
    let c = shop.checkout(id).clone();
    assert_eq!(c.payment.status, PaymentStatus::Authorized);
    assert_eq!(c.payment.captured_minor, 0);
    let o = shop.order(c.order_id.unwrap());
    assert_eq!(o.status, OrderStatus::Review);
    let fraud = fulfilment(&o).fraud.clone().unwrap();
    assert_eq!(fraud.decision, FraudDecision::Review);
    assert_eq!(fired(&fraud), vec!["country_mismatch"]);
    assert_eq!(Some(fraud), c.fraud);
    // Review holds the order: nothing moves it but an admin's decision or a cancel.
    for a in [
        OrderAction::Pack,
        OrderAction::Deliver,
        OrderAction::Track {
            description: "x".into(),
        },
    ] {
        assert!(matches!(
            shop.act_refused(o.id, a),
            EngineError::IllegalTransition { .. }
        ));
    }
    let approved = shop.act_ok(o.id, OrderAction::ApproveReview);
    assert_eq!(approved.status, OrderStatus::Confirmed);
    let p = &fulfilment(&approved).payment;
    assert_eq!(
        (p.status, p.captured_minor),
        (PaymentStatus::Captured, TOTAL)
    );
    assert_eq!(
        pending_effects(&approved),
        vec![EffectKind::CardCapture {
            amount_minor: TOTAL
        }]
    );
    assert!(matches!(
        shop.act_refused(o.id, OrderAction::ApproveReview),
        EngineError::IllegalTransition { .. }
    ));
    assert!(matches!(
        shop.act_refused(o.id, OrderAction::RejectReview),
        EngineError::IllegalTransition { .. }
    ));
}

#[test]
fn a_rejected_review_restocks_and_voids() {
    let mut shop = Shop::new();
    let id = shop.begin_to(&user(0), card(1, "FR"), "DE");
    shop.drive(id, CheckoutState::InReview, &reviewing());
    let o = shop.order_of(id);
    let rejected = shop.act_ok(o, OrderAction::RejectReview);
    assert_eq!(rejected.status, OrderStatus::Cancelled);
    assert_eq!(fulfilment(&rejected).payment.status, PaymentStatus::Voided);
    let mut want = restocks();
    want.push(EffectKind::CardVoid);
    assert_eq!(pending_effects(&rejected), want);
    assert_eq!(
        shop.s.orders_with_pending_effects().collect::<Vec<_>>(),
        [o]
    );
}

#[test]
fn store_credit_in_review_stays_held_until_the_decision() {
    for approve in [true, false] {
        let mut shop = Shop::new();
        shop.grant(&user(0), eur(10_000));
        let id = shop.begin_to(&user(0), PaymentMethod::StoreCredit, "DE");
        let rules = FraudRules {
            new_account_amount_minor: 0,
            review_at: 4,
            reject_at: 5,
            ..quiet()
        };
        shop.drive(id, CheckoutState::InReview, &rules);
        assert_eq!(shop.credit(&user(0)), (10_000, TOTAL));
        let o = shop.order_of(id);
        // The checkout record may be pruned before the decision.
        let done_at = shop.checkout(id).updated_at_ms;
        shop.tick_at(done_at + CHECKOUT_RETENTION_MS);
        assert!(shop.s.checkout(id).is_none());
        if approve {
            let order = shop.act_ok(o, OrderAction::ApproveReview);
            assert_eq!(shop.credit(&user(0)), (10_000 - TOTAL, 0));
            assert_eq!(fulfilment(&order).payment.captured_minor, TOTAL);
            assert!(pending_effects(&order).is_empty());
        } else {
            let order = shop.act_ok(o, OrderAction::RejectReview);
            assert_eq!(shop.credit(&user(0)), (10_000, 0));
            assert_eq!(pending_effects(&order), restocks());
        }
    }
}

// ---- orders ----

#[test]
fn an_order_moves_through_pack_ship_track_deliver_and_nothing_else() {
    let mut shop = Shop::new();
    let id = shop.checkout_at(card(1, "DE"), CheckoutState::Completed, &quiet());
    let o = shop.order_of(id);
    let ship = || OrderAction::Ship {
        carrier: "dhl".into(),
        tracking_number: "JD0001".into(),
    };
    let track = || OrderAction::Track {
        description: "arrived at hub FRA".into(),
    };
    let cancel = || OrderAction::Cancel {
        reason: String::new(),
    };
    // Confirmed: no ship, track or deliver before packing.
    for a in [ship(), track(), OrderAction::Deliver] {
        assert!(matches!(
            shop.act_refused(o, a),
            EngineError::IllegalTransition { .. }
        ));
    }
    shop.act_ok(o, OrderAction::Pack);
    assert!(matches!(
        shop.act_refused(o, OrderAction::Pack),
        EngineError::IllegalTransition {
            from: OrderStatus::Packed,
            to: OrderStatus::Packed,
            ..
        }
    ));
    assert!(matches!(
        shop.act_refused(o, track()),
        EngineError::IllegalTransition { .. }
    ));
    let shipped = shop.act_ok(o, ship());
    assert_eq!(shipped.status, OrderStatus::Shipped);
    for s in &fulfilment(&shipped).shipments {
        assert_eq!(
            (s.carrier.as_str(), s.tracking_number.as_str()),
            ("dhl", "JD0001")
        );
    }
    let tracked = shop.act_ok(o, track());
    assert_eq!(tracked.status, OrderStatus::Shipped);
    assert_eq!(tracked.history.len(), shipped.history.len());
    assert_eq!(
        fulfilment(&tracked).shipments[0].events[0].description,
        "arrived at hub FRA"
    );
    // Shipped: too late to cancel.
    assert_eq!(
        shop.act_refused(o, cancel()),
        EngineError::IllegalTransition {
            order_id: o,
            from: OrderStatus::Shipped,
            to: OrderStatus::Cancelled
        }
    );
    let delivered = shop.act_ok(o, OrderAction::Deliver);
    assert_eq!(delivered.status, OrderStatus::Delivered);
    for a in [
        cancel(),
        OrderAction::Pack,
        ship(),
        track(),
        OrderAction::Deliver,
    ] {
        assert!(matches!(
            shop.act_refused(o, a),
            EngineError::IllegalTransition { .. }
        ));
    }
    let statuses: Vec<OrderStatus> = delivered.history.iter().map(|h| h.status).collect();
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
    // Malformed actions and unknown orders.
    assert!(matches!(
        shop.act_refused(
            o,
            OrderAction::Ship {
                carrier: String::new(),
                tracking_number: "x".into()
            }
        ),
        EngineError::InvalidInput { .. }
    ));
    let unknown = OrderId::new(SHARD, 999).unwrap();
    assert_eq!(
        shop.act_refused(unknown, OrderAction::Pack),
        EngineError::UnknownOrder { order_id: unknown }
    );
    let foreign = OrderId::new(SHARD + 1, 1).unwrap();
    assert_eq!(
        shop.act_refused(foreign, OrderAction::Pack),
        EngineError::WrongShard { owner: SHARD + 1 }
    );
}

#[test]
fn tracking_events_are_bounded() {
    let mut shop = Shop::new();
    let id = shop.checkout_at(card(1, "DE"), CheckoutState::Completed, &quiet());
    let o = shop.order_of(id);
    shop.act_ok(o, OrderAction::Pack);
    shop.act_ok(
        o,
        OrderAction::Ship {
            carrier: "dhl".into(),
            tracking_number: "1".into(),
        },
    );
    for i in 0..TRACKING_EVENTS_MAX {
        shop.act_ok(
            o,
            OrderAction::Track {
                description: format!("event {i}"),
            },
        );
    }
    assert!(matches!(
        shop.act_refused(
            o,
            OrderAction::Track {
                description: "one too many".into()
            }
        ),
        EngineError::LimitReached { .. }
    ));
}

#[test]
fn cancel_restocks_and_voids_or_refunds_per_payment_method() {
    let cancel = || OrderAction::Cancel {
        reason: "out of budget".into(),
    };
    // Card, captured: restock + refund of what was captured.
    let mut shop = Shop::new();
    let id = shop.checkout_at(card(1, "DE"), CheckoutState::Completed, &quiet());
    let o = shop.order_of(id);
    shop.act_ok(o, OrderAction::Pack);
    let order = shop.act_ok(o, cancel());
    assert_eq!(order.status, OrderStatus::Cancelled);
    assert_eq!(order.history.last().unwrap().note, "out of budget");
    let mut want = restocks();
    want.push(EffectKind::CardRefund {
        amount_minor: TOTAL,
    });
    assert_eq!(pending_effects(&order), want);
    let p = &fulfilment(&order).payment;
    assert_eq!((p.captured_minor, p.refunded_minor), (TOTAL, TOTAL));
    let seqs: Vec<u32> = fulfilment(&order).effects.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [0, 1, 2]);
    assert_eq!(fulfilment(&order).effects[2].key(o), format!("{o}:e2"));
    assert_eq!(
        shop.s.orders_with_pending_effects().collect::<Vec<_>>(),
        [o]
    );
    assert!(matches!(
        shop.act_refused(o, cancel()),
        EngineError::IllegalTransition { .. }
    ));

    // Card in review (authorized only): restock + void.
    let mut shop = Shop::new();
    let id = shop.begin_to(&user(0), card(1, "FR"), "DE");
    shop.drive(id, CheckoutState::InReview, &reviewing());
    let order = shop.act_ok(shop.order_of(id), cancel());
    let mut want = restocks();
    want.push(EffectKind::CardVoid);
    assert_eq!(pending_effects(&order), want);
    assert_eq!(fulfilment(&order).payment.status, PaymentStatus::Voided);

    // Cash on delivery: nothing was taken; restock only.
    let mut shop = Shop::new();
    let id = shop.checkout_at(
        PaymentMethod::CashOnDelivery,
        CheckoutState::Completed,
        &quiet(),
    );
    let order = shop.act_ok(shop.order_of(id), cancel());
    assert_eq!(pending_effects(&order), restocks());
    let p = &fulfilment(&order).payment;
    assert_eq!(
        (p.status, p.captured_minor, p.refunded_minor),
        (PaymentStatus::Voided, 0, 0)
    );

    // Store credit in review: the hold is released, nothing refunded.
    let mut shop = Shop::new();
    shop.grant(&user(0), eur(10_000));
    let id = shop.begin_to(&user(0), PaymentMethod::StoreCredit, "DE");
    let rules = FraudRules {
        new_account_amount_minor: 0,
        review_at: 4,
        reject_at: 5,
        ..quiet()
    };
    shop.drive(id, CheckoutState::InReview, &rules);
    let order = shop.act_ok(shop.order_of(id), cancel());
    assert_eq!(pending_effects(&order), restocks());
    assert_eq!(shop.credit(&user(0)), (10_000, 0));
    assert_eq!(fulfilment(&order).payment.status, PaymentStatus::Voided);
}

#[test]
fn effects_are_marked_done_one_by_one() {
    let mut shop = Shop::new();
    let id = shop.checkout_at(card(1, "DE"), CheckoutState::Completed, &quiet());
    let o = shop.order_of(id);
    shop.act_ok(
        o,
        OrderAction::Cancel {
            reason: String::new(),
        },
    );
    let done = |shop: &mut Shop, seq| match shop
        .try_cmd(CommerceCommand::EffectDone { order_id: o, seq })
    {
        Ok(CommerceOutcome::EffectMarked { pending }) => Ok(pending),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e),
    };
    assert_eq!(done(&mut shop, 1), Ok(2));
    // Marking again is harmless (the server may rerun an effect after a crash).
    assert_eq!(done(&mut shop, 1), Ok(2));
    assert_eq!(done(&mut shop, 2), Ok(1));
    assert_eq!(
        shop.s.orders_with_pending_effects().collect::<Vec<_>>(),
        [o]
    );
    let before = shop.s.checksum();
    assert!(matches!(
        done(&mut shop, 3),
        Err(EngineError::InvalidInput { .. })
    ));
    assert_eq!(shop.s.checksum(), before);
    assert_eq!(done(&mut shop, 0), Ok(0));
    assert_eq!(shop.s.orders_with_pending_effects().count(), 0);
    assert!(fulfilment(&shop.order(o)).effects.iter().all(|e| e.done));
    // Effects of orders without fulfilment, and of unknown orders.
    let plain = match shop
        .s
        .apply(
            shop.now,
            &Request::new(Command::CreateOrder {
                user_id: user(0),
                lines: vec![OrderLine {
                    sku: "sku-a".into(),
                    warehouse: "w1".into(),
                    qty: 1,
                    unit_price: eur(1),
                }],
                ship_to: "x".into(),
            }),
        )
        .unwrap()
        .outcome
    {
        Outcome::OrderCreated { order_id, .. } => order_id,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        shop.refused(CommerceCommand::EffectDone {
            order_id: plain,
            seq: 0
        }),
        EngineError::InvalidInput { .. }
    ));
    let unknown = OrderId::new(SHARD, 999).unwrap();
    assert_eq!(
        shop.refused(CommerceCommand::EffectDone {
            order_id: unknown,
            seq: 0
        }),
        EngineError::UnknownOrder { order_id: unknown }
    );
}

// ---- returns ----

#[test]
fn returns_are_for_delivered_orders_and_never_more_than_ordered() {
    let mut shop = Shop::new();
    let id = shop.checkout_at(card(1, "DE"), CheckoutState::Completed, &quiet());
    let o = shop.order_of(id);
    // Not before delivery.
    let before = shop.s.checksum();
    assert!(matches!(
        shop.request_return(o, &[("sku-a", 1)]),
        Err(EngineError::IllegalTransition {
            to: OrderStatus::ReturnRequested,
            ..
        })
    ));
    assert_eq!(shop.s.checksum(), before);
    let o = shop.delivered(card(1, "DE"));
    for bad in [
        vec![("sku-a", 3)],
        vec![("sku-c", 1)],
        vec![("sku-a", 0)],
        vec![("sku-a", 1), ("sku-a", 1)],
        vec![],
    ] {
        let before = shop.s.checksum();
        assert!(
            matches!(
                shop.request_return(o, &bad),
                Err(EngineError::InvalidInput { .. })
            ),
            "{bad:?}"
        );
        assert_eq!(shop.s.checksum(), before);
    }
    let r1 = shop.request_return(o, &[("sku-a", 1)]).unwrap();
    assert_eq!(shop.order(o).status, OrderStatus::ReturnRequested);
    let r2 = shop
        .request_return(o, &[("sku-a", 1), ("sku-b", 1)])
        .unwrap();
    // Everything is being returned: one more unit is too many.
    assert!(matches!(
        shop.request_return(o, &[("sku-a", 1)]),
        Err(EngineError::InvalidInput { .. })
    ));
    // A rejected return frees its units again.
    shop.ret(r1, ReturnAction::Reject).unwrap();
    assert_eq!(
        shop.order(o).status,
        OrderStatus::ReturnRequested,
        "r2 is still active"
    );
    let r3 = shop.request_return(o, &[("sku-a", 1)]).unwrap();
    assert!(r1 != r2 && r2 != r3);
    assert_eq!(shop.s.order_of_return(r3).unwrap().id, o);
    let f = fulfilment(&shop.order(o)).clone();
    assert_eq!(f.returns.len(), 3);
    assert_eq!(f.returns[0].status, ReturnStatus::Rejected);
}

#[test]
fn a_return_is_approved_received_and_refunded_with_effects() {
    let mut shop = Shop::new();
    let o = shop.delivered(card(1, "DE"));
    let r = shop.request_return(o, &[("sku-a", 2)]).unwrap();
    // Each action only from its state.
    for a in [ReturnAction::Receive, ReturnAction::Refund] {
        let before = shop.s.checksum();
        assert_eq!(
            shop.ret(r, a),
            Err(EngineError::ReturnState {
                return_id: r,
                state: "requested".into()
            })
        );
        assert_eq!(shop.s.checksum(), before);
    }
    let order = shop.ret(r, ReturnAction::Approve).unwrap();
    assert_eq!(order.status, OrderStatus::ReturnRequested);
    for a in [
        ReturnAction::Approve,
        ReturnAction::Reject,
        ReturnAction::Refund,
    ] {
        assert!(matches!(
            shop.ret(r, a),
            Err(EngineError::ReturnState { .. })
        ));
    }
    let order = shop.ret(r, ReturnAction::Receive).unwrap();
    assert_eq!(order.status, OrderStatus::Returned);
    assert_eq!(
        pending_effects(&order),
        vec![EffectKind::Restock {
            sku: "sku-a".into(),
            warehouse: "w1".into(),
            qty: 2
        }]
    );
    let order = shop.ret(r, ReturnAction::Refund).unwrap();
    assert_eq!(order.status, OrderStatus::Refunded);
    let f = fulfilment(&order);
    assert_eq!(f.returns[0].status, ReturnStatus::Refunded);
    assert_eq!(f.returns[0].refund_minor, 2_000);
    assert_eq!(f.payment.refunded_minor, 2_000);
    assert_eq!(
        pending_effects(&order)[1],
        EffectKind::CardRefund {
            amount_minor: 2_000
        }
    );
    for a in [
        ReturnAction::Approve,
        ReturnAction::Reject,
        ReturnAction::Receive,
        ReturnAction::Refund,
    ] {
        assert!(matches!(
            shop.ret(r, a),
            Err(EngineError::ReturnState { .. })
        ));
    }
    // A second return of the rest is still possible, and refunds never pass the capture.
    let r2 = shop.request_return(o, &[("sku-b", 1)]).unwrap();
    for a in [
        ReturnAction::Approve,
        ReturnAction::Receive,
        ReturnAction::Refund,
    ] {
        shop.ret(r2, a).unwrap();
    }
    let p = fulfilment(&shop.order(o)).payment.clone();
    assert_eq!((p.captured_minor, p.refunded_minor), (TOTAL, TOTAL));
    let unknown = ReturnId::new(SHARD, 999).unwrap();
    assert_eq!(
        shop.ret(unknown, ReturnAction::Approve),
        Err(EngineError::UnknownReturn { return_id: unknown })
    );
}

#[test]
fn rejecting_the_last_active_return_puts_the_order_back_to_delivered() {
    let mut shop = Shop::new();
    let o = shop.delivered(card(1, "DE"));
    let r = shop.request_return(o, &[("sku-b", 1)]).unwrap();
    let order = shop.ret(r, ReturnAction::Reject).unwrap();
    assert_eq!(order.status, OrderStatus::Delivered);
    assert!(pending_effects(&order).is_empty());
}

#[test]
fn refunds_go_back_to_store_credit_or_are_recorded_for_cash() {
    let mut shop = Shop::new();
    shop.grant(&user(0), eur(10_000));
    let o = shop.delivered(PaymentMethod::StoreCredit);
    assert_eq!(shop.credit(&user(0)), (10_000 - TOTAL, 0));
    let r = shop.request_return(o, &[("sku-b", 1)]).unwrap();
    for a in [
        ReturnAction::Approve,
        ReturnAction::Receive,
        ReturnAction::Refund,
    ] {
        shop.ret(r, a).unwrap();
    }
    assert_eq!(shop.credit(&user(0)), (10_000 - TOTAL + 500, 0));
    let order = shop.order(o);
    assert!(
        !pending_effects(&order)
            .iter()
            .any(|e| matches!(e, EffectKind::CardRefund { .. }))
    );

    let o = shop.delivered(PaymentMethod::CashOnDelivery);
    let r = shop.request_return(o, &[("sku-a", 1)]).unwrap();
    for a in [
        ReturnAction::Approve,
        ReturnAction::Receive,
        ReturnAction::Refund,
    ] {
        shop.ret(r, a).unwrap();
    }
    let order = shop.order(o);
    let f = fulfilment(&order);
    assert_eq!(
        (f.payment.captured_minor, f.payment.refunded_minor),
        (TOTAL, 1_000)
    );
    assert_eq!(f.returns[0].refund_minor, 1_000);
    assert_eq!(
        pending_effects(&order).len(),
        1,
        "one restock, no card call"
    );
}

// ---- store credit and card velocity ----

#[test]
fn credit_grants_are_validated() {
    let mut shop = Shop::new();
    let grant = |amount| CommerceCommand::CreditGrant {
        user_id: user(0),
        amount,
    };
    assert!(matches!(
        shop.refused(grant(eur(0))),
        EngineError::InvalidInput { .. }
    ));
    assert!(matches!(
        shop.refused(grant(eur(PRICE_MINOR_MAX + 1))),
        EngineError::InvalidInput { .. }
    ));
    assert!(matches!(
        shop.refused(grant(Money {
            amount_minor: 1,
            currency: Currency(*b"eur")
        })),
        EngineError::InvalidInput { .. }
    ));
    assert_eq!(
        shop.refused(CommerceCommand::CreditGrant {
            user_id: key_on_shard("user-", SHARD + 1, 0),
            amount: eur(1),
        }),
        EngineError::WrongShard { owner: SHARD + 1 }
    );
    shop.grant(&user(0), eur(100));
    assert_eq!(shop.grant(&user(0), eur(50)).balance_minor, 150);
    assert!(matches!(
        shop.refused(grant(usd(1))),
        EngineError::InvalidInput { field, .. } if field == "amount.currency"
    ));

    // Up to the balance limit and not one unit over it. (Reaching it takes
    // 2^16 grants of the largest amount, so the image is edited instead.)
    let mut image = shop.s.to_image();
    image.credit[0].balance_minor = CREDIT_BALANCE_MINOR_MAX - 10;
    shop.s = ShardState::from_image(image).unwrap();
    assert_eq!(
        shop.grant(&user(0), eur(10)).balance_minor,
        CREDIT_BALANCE_MINOR_MAX
    );
    assert!(matches!(
        shop.refused(grant(eur(1))),
        EngineError::InvalidInput { field, .. } if field == "amount.amount_minor"
    ));
}

#[test]
fn an_image_with_credit_held_over_its_balance_is_refused() {
    let mut shop = Shop::new();
    shop.grant(&user(0), eur(10_000));
    shop.checkout_at(
        PaymentMethod::StoreCredit,
        CheckoutState::Authorized,
        &quiet(),
    );
    let mut image = shop.s.to_image();
    image.credit[0].balance_minor = TOTAL - 1;
    assert!(ShardState::from_image(image).is_err());
    let mut image = shop.s.to_image();
    image.credit[0].held_minor += 1;
    assert!(ShardState::from_image(image).is_err());
}

#[test]
fn card_uses_count_within_the_window_and_are_pruned_by_tick() {
    let mut shop = Shop::new();
    let fp = local_fingerprint(0);
    let other = local_fingerprint(1);
    let window = 10_000;
    let start = shop.now;
    assert_eq!(shop.card_use(fp, window), Ok(1));
    assert_eq!(shop.card_use(fp, window), Ok(2));
    assert_eq!(shop.card_use(other, window), Ok(1));
    // The next use is at `start + 2 + window`: the use at `start + 2` is then
    // exactly `window` old and no longer counts (the bound is exclusive).
    shop.now = start + 1 + window;
    assert_eq!(shop.card_use(fp, window), Ok(1));
    assert_eq!(shop.card_use(fp, window), Ok(2));
    assert_eq!(shop.card_use(fp, FRAUD_WINDOW_MS_MAX), Ok(5));
    // Bad windows and cards of other shards.
    for w in [0, FRAUD_WINDOW_MS_MAX + 1] {
        let before = shop.s.checksum();
        assert!(matches!(
            shop.card_use(fp, w),
            Err(EngineError::InvalidInput { .. })
        ));
        assert_eq!(shop.s.checksum(), before);
    }
    let foreign = (0u64..).find(|f| card_shard(*f) != SHARD).unwrap();
    assert_eq!(
        shop.card_use(foreign, window),
        Err(EngineError::WrongShard {
            owner: card_shard(foreign)
        })
    );
    // A card is forgotten once its last use is the longest window old.
    let last_other = start + 3;
    assert_eq!(
        shop.s.next_deadline_ms(),
        Some(last_other + FRAUD_WINDOW_MS_MAX)
    );
    assert_eq!(shop.tick_at(last_other + FRAUD_WINDOW_MS_MAX - 1), 0);
    assert_eq!(shop.tick_at(last_other + FRAUD_WINDOW_MS_MAX), 1);
    let img = shop.s.to_image();
    assert_eq!(img.cards.len(), 1);
    assert_eq!(img.cards[0].fingerprint, fp);
    assert_eq!(shop.card_use(other, FRAUD_WINDOW_MS_MAX), Ok(1));
    let next = shop.now + FRAUD_WINDOW_MS_MAX;
    assert_eq!(shop.tick_at(next), 2);
    assert!(shop.s.to_image().cards.is_empty());
    assert_eq!(shop.s.next_deadline_ms(), None);
}

#[test]
fn card_uses_keep_only_the_most_recent() {
    let mut shop = Shop::new();
    let fp = local_fingerprint(0);
    for i in 0..CARD_RECENT_USES_MAX + 5 {
        let n = shop.card_use(fp, FRAUD_WINDOW_MS_MAX).unwrap();
        assert_eq!(n as usize, (i + 1).min(CARD_RECENT_USES_MAX));
    }
}

// ---- regressions ----

/// A card checkout of `skus` SKUs, each held in warehouses `w0, w1, ...`
/// with `per_warehouse[i]` units in `wi`, driven to `Completed`.
fn wide_checkout(shop: &mut Shop, skus: usize, per_warehouse: &[u32]) -> OrderId {
    let sku = |i: usize| format!("wide-{i}");
    let lines: Vec<ReserveLine> = (0..skus)
        .map(|i| ReserveLine {
            sku: sku(i),
            qty: per_warehouse.iter().sum(),
        })
        .collect();
    let id = match shop.ok(CommerceCommand::CheckoutBegin {
        user_id: user(0),
        source: CheckoutSource::Lines(lines.clone()),
        payment: card(1, "DE"),
        ship_to: address("DE"),
    }) {
        CommerceOutcome::CheckoutStarted { checkout_id } => checkout_id,
        o => panic!("{o:?}"),
    };
    let holds = (0..skus)
        .map(|i| Hold {
            shard: 7,
            reservation_id: ReservationId::new(7, i as u64 + 1).unwrap(),
            allocations: per_warehouse
                .iter()
                .enumerate()
                .map(|(w, qty)| Allocation {
                    sku: sku(i),
                    warehouse: format!("w{w}"),
                    qty: *qty,
                })
                .collect(),
            expires_at_ms: T0 + 900_000,
        })
        .collect();
    let prices = (0..skus)
        .map(|i| PricedLine {
            sku: sku(i),
            seller_id: "seller-1".into(),
            unit_price: eur(100),
        })
        .collect();
    shop.ok(CommerceCommand::CheckoutReserved {
        checkout_id: id,
        holds,
        prices,
        lines,
    });
    shop.drive(id, CheckoutState::Completed, &quiet());
    let o = shop.order_of(id);
    assert_eq!(shop.order(o).lines.len(), skus * per_warehouse.len());
    o
}

#[test]
fn an_order_with_the_most_lines_can_still_be_cancelled() {
    let mut shop = Shop::new();
    let o = wide_checkout(&mut shop, ORDER_LINES_MAX, &[1; 4]);
    let order = shop.act_ok(
        o,
        OrderAction::Cancel {
            reason: String::new(),
        },
    );
    assert_eq!(fulfilment(&order).effects.len(), ORDER_LINES_MAX * 4 + 1);
}

#[test]
fn a_return_spread_over_many_warehouses_can_still_be_refunded() {
    let mut shop = Shop::new();
    let o = wide_checkout(&mut shop, 1, &[1; 256]);
    deliver(&mut shop, o);
    let r = shop.request_return(o, &[("wide-0", 256)]).unwrap();
    for a in [
        ReturnAction::Approve,
        ReturnAction::Receive,
        ReturnAction::Refund,
    ] {
        shop.ret(r, a).unwrap();
    }
    let order = shop.order(o);
    let f = fulfilment(&order);
    assert_eq!(f.effects.len(), 257, "a restock per warehouse and a refund");
    assert!(f.effects.len() <= ORDER_EFFECTS_MAX);
    assert_eq!(f.payment.refunded_minor, 25_600);
}

fn deliver(shop: &mut Shop, o: OrderId) {
    shop.act_ok(o, OrderAction::Pack);
    shop.act_ok(
        o,
        OrderAction::Ship {
            carrier: "dhl".into(),
            tracking_number: "1".into(),
        },
    );
    shop.act_ok(o, OrderAction::Deliver);
}

/// Units restocked per warehouse by an order's effects.
fn restocked(o: &Order) -> std::collections::BTreeMap<(String, String), u64> {
    let mut m = std::collections::BTreeMap::new();
    for e in &fulfilment(o).effects {
        if let EffectKind::Restock {
            sku,
            warehouse,
            qty,
        } = &e.kind
        {
            *m.entry((sku.clone(), warehouse.clone())).or_default() += u64::from(*qty);
        }
    }
    m
}

#[test]
fn returns_restock_each_warehouse_at_most_what_it_shipped() {
    let mut shop = Shop::new();
    // 255 warehouses shipped one unit each, the last one 10 000.
    let mut per_warehouse = vec![1; 255];
    per_warehouse.push(10_000);
    let o = wide_checkout(&mut shop, 1, &per_warehouse);
    deliver(&mut shop, o);
    let mut returned = 0;
    for _ in 0..RETURNS_PER_ORDER_MAX {
        let r = shop.request_return(o, &[("wide-0", 256)]).unwrap();
        for a in [
            ReturnAction::Approve,
            ReturnAction::Receive,
            ReturnAction::Refund,
        ] {
            shop.ret(r, a).unwrap();
        }
        returned += 256;
    }
    let order = shop.order(o);
    assert!(fulfilment(&order).effects.len() <= ORDER_EFFECTS_MAX);
    let back = restocked(&order);
    for l in &order.lines {
        let got = back.get(&(l.sku.clone(), l.warehouse.clone())).copied();
        assert!(
            got.unwrap_or(0) <= u64::from(l.qty),
            "{}: {got:?}",
            l.warehouse
        );
    }
    assert_eq!(back.values().sum::<u64>(), returned);
    assert_eq!(
        back[&("wide-0".to_string(), "w255".to_string())],
        returned - 255
    );
}

#[test]
fn set_order_status_cannot_move_a_checkout_order() {
    let mut shop = Shop::new();
    let id = shop.checkout_at(card(1, "DE"), CheckoutState::OrderCreated, &quiet());
    let o = shop.order_of(id);
    let set = |status| {
        Request::new(Command::SetOrderStatus {
            order_id: o,
            status,
            note: String::new(),
        })
    };
    // While the checkout runs, and after it: only order actions (which queue
    // the restocks and payment calls) may move such an order.
    let before = shop.s.checksum();
    let r = shop.s.apply(shop.now, &set(OrderStatus::Cancelled));
    assert!(matches!(r, Err(EngineError::InvalidInput { .. })), "{r:?}");
    assert_eq!(shop.s.checksum(), before);
    shop.drive(id, CheckoutState::Completed, &quiet());
    assert_eq!(shop.order(o).status, OrderStatus::Confirmed);
    let before = shop.s.checksum();
    let r = shop.s.apply(shop.now, &set(OrderStatus::Cancelled));
    assert!(matches!(r, Err(EngineError::InvalidInput { .. })), "{r:?}");
    assert_eq!(shop.s.checksum(), before);
}

#[test]
fn set_order_status_keeps_the_history_bounded() {
    let mut s = ShardState::new(SHARD);
    let created = s
        .apply(
            T0,
            &Request::new(Command::CreateOrder {
                user_id: user(0),
                lines: vec![OrderLine {
                    sku: "sku-a".into(),
                    warehouse: "w1".into(),
                    qty: 1,
                    unit_price: eur(100),
                }],
                ship_to: "x".into(),
            }),
        )
        .unwrap();
    let Outcome::OrderCreated { order_id, .. } = created.outcome else {
        panic!("{created:?}")
    };
    use OrderStatus::*;
    let mut path = vec![Confirmed, Packed, Shipped, Delivered];
    for _ in 0..ORDER_HISTORY_MAX {
        path.extend([ReturnRequested, Delivered]);
    }
    for status in path {
        s.apply(
            T0,
            &Request::new(Command::SetOrderStatus {
                order_id,
                status,
                note: "n".repeat(TEXT_BYTES_MAX),
            }),
        )
        .unwrap();
    }
    let order = s.order(order_id).unwrap();
    assert!(order.history.len() <= ORDER_HISTORY_MAX);
    assert_eq!(order.history[0].status, Placed, "the first entry is kept");
    s.check_invariants().unwrap();
}

#[test]
fn a_cart_too_big_for_one_order_cannot_start_a_checkout() {
    let mut shop = Shop::new();
    for i in 0..=ORDER_LINES_MAX {
        shop.s
            .apply(
                T0,
                &Request::new(Command::CartSet {
                    user_id: user(0),
                    sku: format!("sku-{i:03}"),
                    qty: 1,
                }),
            )
            .unwrap();
    }
    let e = shop.refused(CommerceCommand::CheckoutBegin {
        user_id: user(0),
        source: CheckoutSource::Cart,
        payment: card(1, "DE"),
        ship_to: address("DE"),
    });
    assert!(matches!(e, EngineError::InvalidInput { .. }), "{e:?}");
    assert_eq!(shop.s.checkouts().count(), 0);
}

#[test]
fn holds_must_hold_the_lines_and_nothing_else() {
    let mut shop = Shop::new();
    let id = shop.begin(&user(0), card(1, "DE"));
    let mut priced = prices();
    priced.push(PricedLine {
        sku: "sku-c".into(),
        seller_id: "seller-3".into(),
        unit_price: eur(700),
    });
    let mut extra = holds();
    extra[0].allocations.push(Allocation {
        sku: "sku-c".into(),
        warehouse: "w1".into(),
        qty: 1,
    });
    let mut empty = holds();
    empty[1].allocations.push(Allocation {
        sku: "sku-b".into(),
        warehouse: "w3".into(),
        qty: 0,
    });
    for holds in [extra, empty] {
        let e = shop.refused(CommerceCommand::CheckoutReserved {
            checkout_id: id,
            holds,
            prices: priced.clone(),
            lines: lines(),
        });
        assert!(matches!(e, EngineError::InvalidInput { .. }), "{e:?}");
    }
}

#[test]
fn deliver_is_only_for_shipped_orders() {
    let mut shop = Shop::new();
    let o = shop.delivered(card(1, "DE"));
    shop.request_return(o, &[("sku-a", 1)]).unwrap();
    assert_eq!(
        shop.act_refused(o, OrderAction::Deliver),
        EngineError::IllegalTransition {
            order_id: o,
            from: OrderStatus::ReturnRequested,
            to: OrderStatus::Delivered
        }
    );
}

// ---- determinism ----

/// One random action of the property test. Indexes pick among what exists.
#[derive(Debug, Clone)]
enum Op {
    Grant(usize, u64, bool),
    Cart(usize, usize, u32),
    /// Set (qty > 0) or remove (qty 0) a wishlist item.
    Wish(usize, usize, u32),
    Begin {
        user: usize,
        method: usize,
        from_cart: bool,
        country: bool,
    },
    /// The next step of a checkout, with a rule set (0 quiet, 1 reviewing, 2 strict).
    Next(usize, usize, u32),
    /// Any step, usually out of order.
    Raw(usize, usize),
    Fail(usize),
    /// The natural next action of an order (pack, ship, deliver, approve or reject a review).
    Forward(usize, bool),
    Act(usize, usize),
    ReturnReq(usize, u32, u32),
    Ret(usize, usize),
    /// The natural next action of a return (approve, receive, refund).
    RetForward(usize),
    Effect(usize, u32),
    CardUse(usize, u64),
    Advance(u64),
}

const USERS: usize = 3;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..USERS, 0u64..6_000, any::<bool>()).prop_map(|(u, a, c)| Op::Grant(u, a, c)),
        1 => (0..USERS, 0usize..3, 0u32..3).prop_map(|(u, s, q)| Op::Cart(u, s, q)),
        1 => (0..USERS, 0usize..4, 0u32..3).prop_map(|(u, s, q)| Op::Wish(u, s, q)),
        4 => (0..USERS, 0usize..5, any::<bool>(), any::<bool>()).prop_map(
            |(user, method, from_cart, country)| Op::Begin { user, method, from_cart, country }
        ),
        12 => (0usize..16, 0usize..3, 0u32..4).prop_map(|(c, r, u)| Op::Next(c, r, u)),
        2 => (0usize..16, 0usize..8).prop_map(|(c, s)| Op::Raw(c, s)),
        1 => (0usize..16).prop_map(Op::Fail),
        6 => (0usize..16, any::<bool>()).prop_map(|(o, b)| Op::Forward(o, b)),
        3 => (0usize..16, 0usize..8).prop_map(|(o, a)| Op::Act(o, a)),
        2 => (0usize..16, 0u32..3, 0u32..2).prop_map(|(o, a, b)| Op::ReturnReq(o, a, b)),
        2 => (0usize..16, 0usize..4).prop_map(|(r, a)| Op::Ret(r, a)),
        3 => (0usize..16).prop_map(Op::RetForward),
        2 => (0usize..16, 0u32..6).prop_map(|(o, s)| Op::Effect(o, s)),
        1 => (0usize..3, 1u64..100_000).prop_map(|(c, w)| Op::CardUse(c, w)),
        2 => prop_oneof![0u64..5_000, Just(CHECKOUT_RETENTION_MS)].prop_map(Op::Advance),
    ]
}

struct Run {
    s: ShardState,
    now: u64,
    journal: Vec<(u64, Request)>,
    checkouts: Vec<CheckoutId>,
    /// What every wishlist must hold: user -> sku -> qty.
    wishlists: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u32>>,
}

impl Run {
    fn submit(&mut self, command: Command) -> Result<Outcome, EngineError> {
        let req = Request::new(command);
        let before = self.s.checksum();
        let r = self.s.apply(self.now, &req);
        match &r {
            Ok(_) => self.journal.push((self.now, req)),
            Err(e) => assert_eq!(
                self.s.checksum(),
                before,
                "refused {req:?} ({e:?}) changed the state"
            ),
        }
        r.map(|a| a.outcome)
    }

    fn commerce(&mut self, c: CommerceCommand) -> Result<Outcome, EngineError> {
        self.submit(Command::Commerce(Box::new(c)))
    }

    /// A checkout still on record (`running`: and not finished).
    fn checkout(&self, i: usize, running: bool) -> Option<CheckoutId> {
        let ids: Vec<CheckoutId> = self
            .checkouts
            .iter()
            .copied()
            .filter(|id| {
                self.s
                    .checkout(*id)
                    .is_some_and(|c| !running || !c.state.is_terminal())
            })
            .collect();
        (!ids.is_empty()).then(|| ids[i % ids.len()])
    }

    fn order(&self, i: usize) -> Option<OrderId> {
        self.order_in(i, &OrderStatus::ALL)
    }

    fn order_in(&self, i: usize, statuses: &[OrderStatus]) -> Option<OrderId> {
        let mut ids: Vec<OrderId> = self
            .s
            .orders()
            .filter(|o| statuses.contains(&o.status))
            .map(|o| o.id)
            .collect();
        ids.sort();
        (!ids.is_empty()).then(|| ids[i % ids.len()])
    }

    fn return_id(&self, i: usize) -> Option<ReturnId> {
        let mut ids: Vec<ReturnId> = self
            .s
            .orders()
            .filter_map(|o| o.fulfilment.as_deref())
            .flat_map(|f| f.returns.iter().map(|r| r.id))
            .collect();
        ids.sort();
        (!ids.is_empty()).then(|| ids[i % ids.len()])
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Grant(u, amount, euro) => {
                let amount = if euro { eur(amount) } else { usd(amount) };
                let r = self.commerce(CommerceCommand::CreditGrant {
                    user_id: user(u),
                    amount,
                });
                if amount.amount_minor == 0 {
                    assert!(r.is_err());
                }
            }
            Op::Wish(u, s, q) => {
                let sku = format!("sku-{}", ["a", "b", "c", "elsewhere"][s]);
                let c = if q == 0 {
                    CommerceCommand::WishlistRemove {
                        user_id: user(u),
                        sku: sku.clone(),
                    }
                } else {
                    CommerceCommand::WishlistSet {
                        user_id: user(u),
                        sku: sku.clone(),
                        qty: q,
                    }
                };
                let model = self.wishlists.entry(user(u)).or_default();
                if q == 0 {
                    model.remove(&sku);
                } else {
                    model.insert(sku, q);
                }
                let expected: Vec<CartItem> = model
                    .iter()
                    .map(|(sku, qty)| CartItem {
                        sku: sku.clone(),
                        qty: *qty,
                    })
                    .collect();
                match self.commerce(c).unwrap() {
                    Outcome::Commerce(o) => {
                        assert_eq!(*o, CommerceOutcome::Wishlist { items: expected })
                    }
                    other => panic!("not a wishlist: {other:?}"),
                }
            }
            Op::Cart(u, s, q) => {
                let c = if q == 0 {
                    Command::CartRemove {
                        user_id: user(u),
                        sku: format!("sku-{}", ["a", "b", "c"][s]),
                    }
                } else {
                    Command::CartSet {
                        user_id: user(u),
                        sku: format!("sku-{}", ["a", "b", "c"][s]),
                        qty: q,
                    }
                };
                self.submit(c).unwrap();
            }
            Op::Begin {
                user: u,
                method,
                from_cart,
                country,
            } => {
                let payment = match method {
                    0..=2 => card(method as u64 + 1, "DE"),
                    3 => PaymentMethod::StoreCredit,
                    _ => PaymentMethod::CashOnDelivery,
                };
                let source = if from_cart {
                    CheckoutSource::Cart
                } else {
                    CheckoutSource::Lines(lines())
                };
                let r = self.commerce(CommerceCommand::CheckoutBegin {
                    user_id: user(u),
                    source,
                    payment,
                    ship_to: address(if country { "DE" } else { "FR" }),
                });
                match r {
                    Ok(Outcome::Commerce(o)) => match *o {
                        CommerceOutcome::CheckoutStarted { checkout_id } => {
                            self.checkouts.push(checkout_id)
                        }
                        other => panic!("{other:?}"),
                    },
                    Ok(other) => panic!("{other:?}"),
                    Err(e) => {
                        assert!(from_cart, "{e:?}");
                        assert!(self.s.cart(&user(u)).is_empty());
                    }
                }
            }
            Op::Next(i, rules, card_uses) => {
                let Some(id) = self.checkout(i, true) else {
                    return;
                };
                let c = self.s.checkout(id).unwrap().clone();
                let rules = match rules {
                    0 => quiet(),
                    1 => reviewing(),
                    _ => FraudRules::default(),
                };
                let cmd = match c.state {
                    // A cart checkout holds what its cart had.
                    CheckoutState::Started => CommerceCommand::CheckoutReserved {
                        checkout_id: id,
                        holds: if c.lines == lines() || c.lines.is_empty() {
                            holds()
                        } else {
                            c.lines
                                .iter()
                                .map(|l| Hold {
                                    shard: 7,
                                    reservation_id: ReservationId::new(7, 1).unwrap(),
                                    allocations: vec![Allocation {
                                        sku: l.sku.clone(),
                                        warehouse: "w1".into(),
                                        qty: l.qty,
                                    }],
                                    expires_at_ms: self.now + 900_000,
                                })
                                .collect()
                        },
                        prices: vec![
                            prices()[0].clone(),
                            prices()[1].clone(),
                            PricedLine {
                                sku: "sku-c".into(),
                                seller_id: "seller-3".into(),
                                unit_price: eur(700),
                            },
                        ],
                        lines: if c.lines.is_empty() {
                            lines()
                        } else {
                            c.lines.clone()
                        },
                    },
                    CheckoutState::Reserved => score_cmd(id, rules, card_uses * 10),
                    CheckoutState::Scored => authorized_cmd(
                        id,
                        match c.payment.method {
                            PaymentMethod::Card { .. } => "auth",
                            _ => "",
                        },
                    ),
                    CheckoutState::Authorized => create_order_cmd(id),
                    CheckoutState::OrderCreated => {
                        CommerceCommand::CheckoutStockConfirmed { checkout_id: id }
                    }
                    CheckoutState::StockConfirmed => {
                        CommerceCommand::CheckoutFinish { checkout_id: id }
                    }
                    CheckoutState::Compensating => {
                        CommerceCommand::CheckoutCompensated { checkout_id: id }
                    }
                    _ => unreachable!(),
                };
                let r = self.commerce(cmd);
                assert!(r.is_ok(), "next step of {:?}: {r:?}", c.state);
            }
            Op::Raw(i, s) => {
                let Some(id) = self.checkout(i, false) else {
                    return;
                };
                let state = self.s.checkout(id).unwrap().state;
                let (name, cmd) = every_step(id).swap_remove(s);
                let r = self.commerce(cmd);
                if !accepted_in(state).contains(&name) {
                    assert!(
                        matches!(r, Err(EngineError::CheckoutState { .. })),
                        "{name} in {state:?}: {r:?}"
                    );
                }
            }
            Op::Fail(i) => {
                let Some(id) = self.checkout(i, false) else {
                    return;
                };
                let state = self.s.checkout(id).unwrap().state;
                let r = self.commerce(CommerceCommand::CheckoutFail {
                    checkout_id: id,
                    error: EngineError::PaymentDeclined {
                        code: "card_declined".into(),
                        message: "no".into(),
                    },
                });
                assert_eq!(
                    r.is_ok(),
                    !state.is_terminal() && state != CheckoutState::Compensating
                );
            }
            Op::Forward(i, approve) => {
                use OrderStatus::*;
                let Some(order_id) = self.order_in(i, &[Confirmed, Packed, Shipped, Review]) else {
                    return;
                };
                let action = match self.s.order(order_id).unwrap().status {
                    OrderStatus::Confirmed => OrderAction::Pack,
                    OrderStatus::Packed => OrderAction::Ship {
                        carrier: "dhl".into(),
                        tracking_number: "t".into(),
                    },
                    OrderStatus::Shipped if approve => OrderAction::Track {
                        description: "hub".into(),
                    },
                    OrderStatus::Shipped => OrderAction::Deliver,
                    OrderStatus::Review if approve => OrderAction::ApproveReview,
                    OrderStatus::Review => OrderAction::RejectReview,
                    _ => return,
                };
                let r = self.commerce(CommerceCommand::Order { order_id, action });
                assert!(r.is_ok(), "{r:?}");
            }
            Op::Act(i, a) => {
                let Some(order_id) = self.order(i) else {
                    return;
                };
                let action = match a {
                    0 => OrderAction::Cancel {
                        reason: String::new(),
                    },
                    1 => OrderAction::Pack,
                    2 => OrderAction::Ship {
                        carrier: "dhl".into(),
                        tracking_number: "t".into(),
                    },
                    3 => OrderAction::Track {
                        description: "hub".into(),
                    },
                    4 | 5 => OrderAction::Deliver,
                    6 => OrderAction::ApproveReview,
                    _ => OrderAction::RejectReview,
                };
                let _ = self.commerce(CommerceCommand::Order { order_id, action });
            }
            Op::ReturnReq(i, a, b) => {
                use OrderStatus::*;
                let Some(order_id) = self.order_in(i, &[Delivered, ReturnRequested, Returned])
                else {
                    return;
                };
                let mut l = Vec::new();
                if a > 0 {
                    l.push(ReserveLine {
                        sku: "sku-a".into(),
                        qty: a,
                    });
                }
                if b > 0 {
                    l.push(ReserveLine {
                        sku: "sku-b".into(),
                        qty: b,
                    });
                }
                let _ = self.commerce(CommerceCommand::ReturnRequest {
                    order_id,
                    lines: l,
                    reason: "r".into(),
                });
            }
            Op::Ret(i, a) => {
                let Some(return_id) = self.return_id(i) else {
                    return;
                };
                let action = [
                    ReturnAction::Approve,
                    ReturnAction::Reject,
                    ReturnAction::Receive,
                    ReturnAction::Refund,
                ][a];
                let _ = self.commerce(CommerceCommand::Return { return_id, action });
            }
            Op::RetForward(i) => {
                let Some(return_id) = self.return_id(i) else {
                    return;
                };
                let status = self
                    .s
                    .order_of_return(return_id)
                    .and_then(|o| o.fulfilment.as_deref())
                    .and_then(|f| f.returns.iter().find(|r| r.id == return_id))
                    .unwrap()
                    .status;
                let action = match status {
                    ReturnStatus::Requested => ReturnAction::Approve,
                    ReturnStatus::Approved => ReturnAction::Receive,
                    ReturnStatus::Received => ReturnAction::Refund,
                    ReturnStatus::Rejected | ReturnStatus::Refunded => return,
                };
                let r = self.commerce(CommerceCommand::Return { return_id, action });
                assert!(r.is_ok(), "{r:?}");
            }
            Op::Effect(i, seq) => {
                let Some(order_id) = self.order(i) else {
                    return;
                };
                let _ = self.commerce(CommerceCommand::EffectDone { order_id, seq });
            }
            Op::CardUse(c, window_ms) => {
                let fingerprint = local_fingerprint(c);
                self.commerce(CommerceCommand::CardUse {
                    fingerprint,
                    window_ms,
                })
                .unwrap();
            }
            Op::Advance(ms) => {
                self.now += ms;
                self.submit(Command::Tick { expire: vec![] }).unwrap();
            }
        }
    }

    /// What must hold after every step, beyond `check_invariants`.
    fn check(&self) {
        self.s.check_invariants().unwrap();
        for (user_id, model) in &self.wishlists {
            let held: Vec<(&str, u32)> = self
                .s
                .wishlist(user_id)
                .iter()
                .map(|i| (i.sku.as_str(), i.qty))
                .collect();
            let want: Vec<(&str, u32)> = model.iter().map(|(s, q)| (s.as_str(), *q)).collect();
            assert_eq!(held, want, "wishlist of {user_id}");
        }
        for o in self.s.orders() {
            let Some(f) = o.fulfilment.as_deref() else {
                continue;
            };
            let p = &f.payment;
            assert!(
                p.refunded_minor <= p.captured_minor && p.captured_minor <= p.amount.amount_minor,
                "order {}: {p:?}",
                o.id
            );
            let refunds: u64 = f.returns.iter().map(|r| r.refund_minor).sum();
            assert!(refunds <= p.refunded_minor, "order {}", o.id);
            for sku in ["sku-a", "sku-b"] {
                let ordered: u32 = o.lines.iter().filter(|l| l.sku == sku).map(|l| l.qty).sum();
                let returned: u32 = f
                    .returns
                    .iter()
                    .filter(|r| r.status != ReturnStatus::Rejected)
                    .flat_map(|r| &r.lines)
                    .filter(|l| l.sku == sku)
                    .map(|l| l.qty)
                    .sum();
                assert!(returned <= ordered, "order {}: {sku}", o.id);
            }
            assert!(f.effects.len() <= ORDER_EFFECTS_MAX);
            for ((sku, warehouse), qty) in restocked(o) {
                let shipped: u64 = o
                    .lines
                    .iter()
                    .filter(|l| l.sku == sku && l.warehouse == warehouse)
                    .map(|l| u64::from(l.qty))
                    .sum();
                assert!(
                    qty <= shipped,
                    "order {}: {qty} restocked at {sku}/{warehouse}",
                    o.id
                );
            }
            let seqs: Vec<u32> = f.effects.iter().map(|e| e.seq).collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]));
            let total: u64 = o
                .lines
                .iter()
                .map(|l| l.unit_price.amount_minor * u64::from(l.qty))
                .sum();
            assert_eq!(total, o.total.amount_minor, "order {} total", o.id);
        }
        let pending: Vec<OrderId> = self.s.orders_with_pending_effects().collect();
        for id in &pending {
            assert!(fulfilment(self.s.order(*id).unwrap()).has_pending_effects());
        }
        for c in self.s.checkouts() {
            if c.state == CheckoutState::Completed && c.payment.method == PaymentMethod::StoreCredit
            {
                assert_eq!(c.payment.captured_minor, c.payment.amount.amount_minor);
            }
        }
    }
}

fn cases() -> u32 {
    if std::env::var_os("RESERVA_CI").is_some() {
        1_024
    } else {
        64
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), .. ProptestConfig::default() })]

    #[test]
    fn random_commerce_keeps_invariants_and_replays_exactly(
        ops in prop::collection::vec(op(), 1..160)
    ) {
        let mut run = Run {
            s: ShardState::new(SHARD),
            now: T0,
            journal: Vec::new(),
            checkouts: Vec::new(),
            wishlists: Default::default(),
        };
        for op in ops {
            run.step(op);
            run.check();
        }
        let mut replayed = ShardState::new(SHARD);
        for (now, req) in &run.journal {
            let a = replayed.apply(*now, req).unwrap();
            prop_assert!(a.is_new);
        }
        prop_assert_eq!(replayed.checksum(), run.s.checksum());
        prop_assert_eq!(replayed.to_image(), run.s.to_image());
        let restored = ShardState::from_image(run.s.to_image()).unwrap();
        prop_assert_eq!(restored.checksum(), run.s.checksum());
        prop_assert_eq!(restored.next_deadline_ms(), run.s.next_deadline_ms());
        // The restored state goes on exactly like the original.
        let mut a = restored;
        let mut b = run.s.clone();
        let later = run.now + CHECKOUT_RETENTION_MS + FRAUD_WINDOW_MS_MAX;
        let tick = Request::new(Command::Tick { expire: vec![] });
        prop_assert_eq!(a.apply(later, &tick), b.apply(later, &tick));
        prop_assert_eq!(a.checksum(), b.checksum());
    }
}

fn wish(user_id: &str, sku: &str, qty: u32) -> CommerceCommand {
    CommerceCommand::WishlistSet {
        user_id: user_id.into(),
        sku: sku.into(),
        qty,
    }
}

fn unwish(user_id: &str, sku: &str) -> CommerceCommand {
    CommerceCommand::WishlistRemove {
        user_id: user_id.into(),
        sku: sku.into(),
    }
}

fn wishlist_of(o: CommerceOutcome) -> Vec<(String, u32)> {
    match o {
        CommerceOutcome::Wishlist { items } => items.into_iter().map(|i| (i.sku, i.qty)).collect(),
        other => panic!("not a wishlist: {other:?}"),
    }
}

#[test]
fn a_wishlist_keeps_items_sorted_and_apart_from_the_cart() {
    let mut shop = Shop::new();
    let u = user(0);
    assert!(shop.s.wishlist(&u).is_empty());
    shop.ok(wish(&u, "sku-b", 1));
    let items = wishlist_of(shop.ok(wish(&u, "sku-a", 3)));
    assert_eq!(items, vec![("sku-a".into(), 3), ("sku-b".into(), 1)]);
    // Setting again replaces the quantity.
    let items = wishlist_of(shop.ok(wish(&u, "sku-a", 7)));
    assert_eq!(items, vec![("sku-a".into(), 7), ("sku-b".into(), 1)]);
    // The cart is another list.
    assert!(shop.s.cart(&u).is_empty());
    shop.s
        .apply(
            shop.now + 1,
            &Request::new(Command::CartSet {
                user_id: u.clone(),
                sku: "sku-c".into(),
                qty: 1,
            }),
        )
        .unwrap();
    assert_eq!(shop.s.wishlist(&u).len(), 2);
    // Removing something absent is not an error; removing the last item drops the list.
    assert_eq!(wishlist_of(shop.ok(unwish(&u, "sku-z"))).len(), 2);
    shop.ok(unwish(&u, "sku-a"));
    assert_eq!(wishlist_of(shop.ok(unwish(&u, "sku-b"))), vec![]);
    assert!(shop.s.wishlist(&u).is_empty());
    assert!(shop.s.to_image().wishlists.is_empty());
    assert_eq!(wishlist_of(shop.ok(unwish(&u, "sku-b"))), vec![]);
}

#[test]
fn wishlist_input_and_size_are_checked() {
    let mut shop = Shop::new();
    let u = user(1);
    assert!(matches!(
        shop.refused(wish(&u, "sku-a", 0)),
        EngineError::InvalidInput { .. }
    ));
    assert!(matches!(
        shop.refused(wish(&u, "", 1)),
        EngineError::InvalidInput { .. }
    ));
    assert!(matches!(
        shop.refused(wish(&u, &"x".repeat(ID_BYTES_MAX + 1), 1)),
        EngineError::InvalidInput { .. }
    ));
    assert!(matches!(
        shop.refused(wish(&u, "sku-a", LINE_QTY_MAX + 1)),
        EngineError::InvalidInput { .. }
    ));
    // A user of another shard is not this shard's to keep.
    let foreign = key_on_shard("user-", SHARD + 1, 0);
    assert_eq!(
        shop.refused(wish(&foreign, "sku-a", 1)),
        EngineError::WrongShard { owner: SHARD + 1 }
    );
    assert_eq!(
        shop.refused(unwish(&foreign, "sku-a")),
        EngineError::WrongShard { owner: SHARD + 1 }
    );
    for i in 0..WISHLIST_ITEMS_MAX {
        shop.ok(wish(&u, &format!("sku-{i:04}"), 1));
    }
    assert!(matches!(
        shop.refused(wish(&u, "sku-one-more", 1)),
        EngineError::LimitReached { .. }
    ));
    // An item already listed can still change.
    shop.ok(wish(&u, "sku-0000", 2));
    assert_eq!(shop.s.wishlist(&u).len(), WISHLIST_ITEMS_MAX);
}

#[test]
fn wishlists_survive_the_image_and_change_the_checksum() {
    let mut shop = Shop::new();
    let u = user(2);
    let empty = shop.s.checksum();
    shop.ok(wish(&u, "sku-a", 1));
    assert_ne!(shop.s.checksum(), empty);
    let image = shop.s.to_image();
    assert_eq!(image.wishlists.len(), 1);
    let restored = ShardState::from_image(image).unwrap();
    assert_eq!(restored.wishlist(&u), shop.s.wishlist(&u));
    assert_eq!(restored.checksum(), shop.s.checksum());
    // An unsorted wishlist in an image is refused.
    let mut bad = shop.s.to_image();
    bad.wishlists[0].items.push(CartItem {
        sku: "sku-0".into(),
        qty: 1,
    });
    assert!(ShardState::from_image(bad).is_err());
}

mod two_round_checkout {
    use reserva_engine::ids::ReservationId;
    use reserva_engine::limits::TTL_MS_MIN;
    use reserva_engine::shard::Shard;
    use reserva_engine::sm::{
        Command, CommerceCommand, CommerceOutcome, EngineError, Money, Outcome, Request,
        ReserveLine, ShardState,
    };

    fn sku_on(shard: u16) -> String {
        (0..)
            .map(|i| format!("sku-{i}"))
            .find(|s| reserva_engine::ids::shard_of(s) == shard)
            .unwrap()
    }

    /// A plain reservation by "kim" of one unit of `sku`, at the shortest TTL.
    fn reserve_one(sku: &str) -> Request {
        Request::new(Command::Reserve {
            owner: "kim".into(),
            lines: vec![ReserveLine {
                sku: sku.into(),
                qty: 1,
            }],
            ttl_ms: Some(TTL_MS_MIN),
            warehouse_preference: vec![],
        })
    }

    fn stocked(shard: u16, sku: &str, units: u64) -> ShardState {
        let mut s = ShardState::new(shard);
        let upsert = Command::UpsertSku {
            sku: sku.into(),
            seller_id: "s1".into(),
            title: "t".into(),
            price: Money {
                amount_minor: 700,
                currency: reserva_engine::sm::Currency(*b"EUR"),
            },
        };
        s.apply(0, &Request::new(upsert)).unwrap();
        let stock = Command::SetStock {
            sku: sku.into(),
            warehouse: "w1".into(),
            on_hand: units,
        };
        s.apply(0, &Request::new(stock)).unwrap();
        s
    }

    fn commerce(c: CommerceCommand) -> Request {
        Request::new(Command::Commerce(Box::new(c)))
    }

    fn hold(
        s: &mut ShardState,
        now: u64,
        sku: &str,
        qty: u32,
    ) -> Result<CommerceOutcome, EngineError> {
        let r = s.apply(
            now,
            &commerce(CommerceCommand::CheckoutHold {
                owner: "kim".into(),
                lines: vec![ReserveLine {
                    sku: sku.into(),
                    qty,
                }],
                adopt: None,
                ttl_ms: TTL_MS_MIN,
                warehouse_preference: vec![],
            }),
        )?;
        match r.outcome {
            Outcome::Commerce(o) => Ok(*o),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_hold_answers_its_prices_and_is_deducted_past_its_deadline() {
        let sku = sku_on(7);
        let mut s = stocked(7, &sku, 5);
        let CommerceOutcome::Held {
            hold: h,
            prices,
            lines,
        } = hold(&mut s, 1_000, &sku, 2).unwrap()
        else {
            panic!("not held")
        };
        assert_eq!(prices.len(), 1);
        assert_eq!(prices[0].unit_price.amount_minor, 700);
        assert_eq!(prices[0].seller_id, "s1");
        assert_eq!(lines[0].qty, 2);
        // Not enough left for 4 more: refused, nothing changes.
        assert!(matches!(
            hold(&mut s, 1_000, &sku, 4),
            Err(EngineError::InsufficientStock { .. })
        ));
        // Past its deadline a Confirm refuses, a HoldDeduct deducts while it is live.
        let late = h.expires_at_ms + 1;
        let confirm = Request::new(Command::Confirm {
            reservation_id: h.reservation_id,
        });
        assert!(matches!(
            s.apply(late, &confirm),
            Err(EngineError::ReservationExpired { .. })
        ));
        let deduct = commerce(CommerceCommand::HoldDeduct {
            reservation_id: h.reservation_id,
        });
        let r = s.apply(late, &deduct).unwrap();
        assert!(matches!(
            r.outcome,
            Outcome::Commerce(ref o) if matches!(**o, CommerceOutcome::Deducted { ref allocations } if allocations[0].qty == 2)
        ));
        let w = s.sku(&sku).unwrap().warehouse("w1").unwrap().clone();
        assert_eq!((w.on_hand, w.reserved), (3, 0));
        // Gone now: a second deduction finds nothing.
        assert!(matches!(
            s.apply(late, &deduct),
            Err(EngineError::UnknownReservation { .. })
        ));
    }

    #[test]
    fn an_adopted_reservation_must_be_the_owners_and_is_kept_at_least_the_ttl() {
        let sku = sku_on(9);
        let mut s = stocked(9, &sku, 5);
        let reserve = reserve_one(&sku);
        let Outcome::Reserved {
            reservation_id,
            expires_at_ms,
            ..
        } = s.apply(0, &reserve).unwrap().outcome
        else {
            panic!()
        };
        let adopt = |owner: &str| {
            commerce(CommerceCommand::CheckoutHold {
                owner: owner.into(),
                lines: vec![],
                adopt: Some(reservation_id),
                ttl_ms: 60_000,
                warehouse_preference: vec![],
            })
        };
        assert!(matches!(
            s.apply(10, &adopt("eve")),
            Err(EngineError::InvalidInput { .. })
        ));
        let r = s.apply(10, &adopt("kim")).unwrap();
        let Outcome::Commerce(o) = r.outcome else {
            panic!()
        };
        let CommerceOutcome::Held {
            hold,
            lines,
            prices,
        } = *o
        else {
            panic!()
        };
        assert_eq!(hold.reservation_id, reservation_id);
        assert_eq!(hold.expires_at_ms, 60_010);
        assert!(hold.expires_at_ms > expires_at_ms);
        assert_eq!(lines[0].qty, 1);
        assert_eq!(prices.len(), 1);
        // Its new deadline is the one expiry sees.
        assert!(s.due_expirations(expires_at_ms, 10).is_empty());
        assert_eq!(s.due_expirations(60_010, 10), vec![reservation_id]);
    }

    #[test]
    fn a_tick_spares_what_the_server_pins() {
        let dir = tempfile::tempdir().unwrap();
        let sku = sku_on(11);
        let mut shard = Shard::open(dir.path(), 11, Default::default()).unwrap().0;
        for r in [
            Request::new(Command::UpsertSku {
                sku: sku.clone(),
                seller_id: "s1".into(),
                title: "t".into(),
                price: Money {
                    amount_minor: 1,
                    currency: reserva_engine::sm::Currency(*b"EUR"),
                },
            }),
            Request::new(Command::SetStock {
                sku: sku.clone(),
                warehouse: "w1".into(),
                on_hand: 5,
            }),
        ] {
            shard.commit(0, [r]).unwrap();
        }
        let mut ids: Vec<ReservationId> = Vec::new();
        for _ in 0..2 {
            let r = reserve_one(&sku);
            match shard.commit(0, [r]).unwrap().remove(0).unwrap() {
                Outcome::Reserved { reservation_id, .. } => ids.push(reservation_id),
                other => panic!("{other:?}"),
            }
        }
        let due = TTL_MS_MIN + 1;
        let tick = |spared: &[ReservationId]| {
            shard
                .tick_request_sparing(due, |id| spared.contains(&id))
                .map(|r| r.command)
        };
        assert_eq!(
            tick(&[]),
            Some(Command::Tick {
                expire: ids.clone()
            })
        );
        assert_eq!(
            tick(&ids[..1]),
            Some(Command::Tick {
                expire: vec![ids[1]]
            })
        );
        // Nothing but spared reservations due: no tick at all.
        assert_eq!(tick(&ids), None);
    }
}

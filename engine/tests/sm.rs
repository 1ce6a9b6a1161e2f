//! Behaviour of the state machine, command by command, through its public API.

use reserva_engine::ids::{OrderId, ReservationId, key_on_shard, shard_of};
use reserva_engine::limits::*;
use reserva_engine::sm::*;

const SHARD: u16 = 3;
const T0: u64 = 1_700_000_000_000;

fn sku(n: usize) -> String {
    key_on_shard("sku-", SHARD, n)
}
fn user(n: usize) -> String {
    key_on_shard("user-", SHARD, n)
}
fn eur(amount_minor: u64) -> Money {
    Money {
        amount_minor,
        currency: Currency::parse("EUR").unwrap(),
    }
}

fn apply(s: &mut ShardState, now: u64, c: Command) -> Result<Outcome, EngineError> {
    s.apply(now, &Request::new(c)).map(|a| a.outcome)
}

/// A shard with `sku(0)` stocked: w1 = 10, w2 = 5.
fn stocked() -> ShardState {
    let mut s = ShardState::new(SHARD);
    let c = Command::UpsertSku {
        sku: sku(0),
        seller_id: "seller-1".into(),
        title: "Kettle".into(),
        price: eur(2_999),
    };
    assert_eq!(
        apply(&mut s, T0, c),
        Ok(Outcome::SkuUpserted { created: true })
    );
    for (w, n) in [("w1", 10), ("w2", 5)] {
        apply(
            &mut s,
            T0,
            Command::SetStock {
                sku: sku(0),
                warehouse: w.into(),
                on_hand: n,
            },
        )
        .unwrap();
    }
    s
}

fn reserve(qty: u32, ttl_ms: Option<u64>, pref: &[&str]) -> Command {
    Command::Reserve {
        owner: user(0),
        lines: vec![ReserveLine { sku: sku(0), qty }],
        ttl_ms,
        warehouse_preference: pref.iter().map(|p| p.to_string()).collect(),
    }
}

fn reserved_id(o: &Outcome) -> ReservationId {
    match o {
        Outcome::Reserved { reservation_id, .. } => *reservation_id,
        other => panic!("expected Reserved, got {other:?}"),
    }
}

fn stock(s: &ShardState, w: &str) -> (u64, u64) {
    let ws = s.sku(&sku(0)).unwrap().warehouse(w).unwrap();
    (ws.on_hand, ws.reserved)
}

#[test]
fn reserve_routes_to_preferred_then_most_available_then_splits() {
    let mut s = stocked();
    // No preference: the warehouse with most available that can ship it all.
    let a = apply(&mut s, T0, reserve(4, None, &[])).unwrap();
    let Outcome::Reserved {
        allocations,
        expires_at_ms,
        reservation_id,
    } = &a
    else {
        panic!()
    };
    assert_eq!(
        allocations,
        &vec![Allocation {
            sku: sku(0),
            warehouse: "w1".into(),
            qty: 4
        }]
    );
    assert_eq!(*expires_at_ms, T0 + TTL_MS_DEFAULT);
    assert_eq!(reservation_id.shard(), SHARD);
    // Preference wins when it can ship the whole line.
    let b = apply(&mut s, T0, reserve(5, None, &["w2"])).unwrap();
    let Outcome::Reserved { allocations, .. } = &b else {
        panic!()
    };
    assert_eq!(allocations[0].warehouse, "w2");
    // 6 left in w1, 0 in w2: a line of 6 fits w1 even though w2 is preferred.
    assert_eq!(stock(&s, "w1"), (10, 4));
    assert_eq!(stock(&s, "w2"), (5, 5));
    let c = apply(&mut s, T0, reserve(6, None, &["w2"])).unwrap();
    let Outcome::Reserved { allocations, .. } = &c else {
        panic!()
    };
    assert_eq!(
        allocations,
        &vec![Allocation {
            sku: sku(0),
            warehouse: "w1".into(),
            qty: 6
        }]
    );
    s.check_invariants().unwrap();
}

#[test]
fn a_line_bigger_than_any_warehouse_is_split() {
    let mut s = stocked();
    let a = apply(&mut s, T0, reserve(12, None, &["w2"])).unwrap();
    let Outcome::Reserved { allocations, .. } = &a else {
        panic!()
    };
    assert_eq!(
        allocations,
        &vec![
            Allocation {
                sku: sku(0),
                warehouse: "w2".into(),
                qty: 5
            },
            Allocation {
                sku: sku(0),
                warehouse: "w1".into(),
                qty: 7
            },
        ]
    );
    s.check_invariants().unwrap();
}

#[test]
fn insufficient_stock_is_all_or_nothing_and_says_what_is_available() {
    let mut s = stocked();
    let before = s.checksum();
    let c = Command::Reserve {
        owner: user(0),
        lines: vec![
            ReserveLine {
                sku: sku(0),
                qty: 10,
            },
            ReserveLine {
                sku: sku(0),
                qty: 6,
            },
        ],
        ttl_ms: None,
        warehouse_preference: vec![],
    };
    assert_eq!(
        apply(&mut s, T0, c),
        Err(EngineError::InsufficientStock {
            sku: sku(0),
            requested: 6,
            available: 5
        })
    );
    assert_eq!(
        s.checksum(),
        before,
        "a refused reservation changed the state"
    );
}

#[test]
fn confirm_deducts_and_release_gives_back() {
    let mut s = stocked();
    let r1 = reserved_id(&apply(&mut s, T0, reserve(3, None, &["w1"])).unwrap());
    let r2 = reserved_id(&apply(&mut s, T0, reserve(2, None, &["w1"])).unwrap());
    assert_eq!(stock(&s, "w1"), (10, 5));
    let conf = apply(&mut s, T0 + 1, Command::Confirm { reservation_id: r1 }).unwrap();
    assert_eq!(
        conf,
        Outcome::Confirmed {
            allocations: vec![Allocation {
                sku: sku(0),
                warehouse: "w1".into(),
                qty: 3
            }]
        }
    );
    assert_eq!(stock(&s, "w1"), (7, 2));
    assert_eq!(
        apply(&mut s, T0 + 2, Command::Release { reservation_id: r2 }),
        Ok(Outcome::Released)
    );
    assert_eq!(stock(&s, "w1"), (7, 0));
    // Both are gone now.
    for id in [r1, r2] {
        assert_eq!(
            apply(&mut s, T0 + 3, Command::Release { reservation_id: id }),
            Err(EngineError::UnknownReservation { reservation_id: id })
        );
    }
    s.check_invariants().unwrap();
}

#[test]
fn an_expired_reservation_cannot_be_confirmed_and_tick_releases_it_once() {
    let mut s = stocked();
    let r = reserved_id(&apply(&mut s, T0, reserve(4, Some(2_000), &[])).unwrap());
    assert_eq!(s.due_expirations(T0 + 1_999, 10), vec![]);
    assert_eq!(s.due_expirations(T0 + 2_000, 10), vec![r]);
    assert_eq!(
        apply(&mut s, T0 + 2_000, Command::Confirm { reservation_id: r }),
        Err(EngineError::ReservationExpired {
            reservation_id: r,
            expired_at_ms: T0 + 2_000
        })
    );
    let t = apply(&mut s, T0 + 2_000, Command::Tick { expire: vec![r] }).unwrap();
    assert_eq!(
        t,
        Outcome::Ticked {
            expired: 1,
            pruned: 0
        }
    );
    assert_eq!(stock(&s, "w1").1, 0);
    // A second tick naming it again expires nothing.
    let t = apply(&mut s, T0 + 3_000, Command::Tick { expire: vec![r] }).unwrap();
    assert_eq!(
        t,
        Outcome::Ticked {
            expired: 0,
            pruned: 0
        }
    );
    s.check_invariants().unwrap();
}

#[test]
fn a_tick_does_not_expire_what_is_not_due() {
    let mut s = stocked();
    let r = reserved_id(&apply(&mut s, T0, reserve(4, Some(60_000), &[])).unwrap());
    let t = apply(&mut s, T0 + 1_000, Command::Tick { expire: vec![r] }).unwrap();
    assert_eq!(
        t,
        Outcome::Ticked {
            expired: 0,
            pruned: 0
        }
    );
    assert!(s.reservation(r).is_some());
}

#[test]
fn stock_cannot_go_below_reserved() {
    let mut s = stocked();
    apply(&mut s, T0, reserve(8, None, &["w1"])).unwrap();
    let e = apply(
        &mut s,
        T0,
        Command::SetStock {
            sku: sku(0),
            warehouse: "w1".into(),
            on_hand: 7,
        },
    );
    assert!(
        matches!(
            e,
            Err(EngineError::BelowReserved {
                reserved: 8,
                requested_on_hand: 7,
                ..
            })
        ),
        "{e:?}"
    );
    let e = apply(
        &mut s,
        T0,
        Command::AdjustStock {
            sku: sku(0),
            warehouse: "w1".into(),
            delta: -3,
        },
    );
    assert!(
        matches!(
            e,
            Err(EngineError::BelowReserved {
                reserved: 8,
                requested_on_hand: 7,
                ..
            })
        ),
        "{e:?}"
    );
    assert_eq!(
        apply(
            &mut s,
            T0,
            Command::AdjustStock {
                sku: sku(0),
                warehouse: "w1".into(),
                delta: -2
            }
        ),
        Ok(Outcome::Stock {
            on_hand: 8,
            reserved: 8
        })
    );
    s.check_invariants().unwrap();
}

#[test]
fn bad_input_is_a_typed_error_naming_the_field_and_limit() {
    let mut s = stocked();
    let long = "x".repeat(ID_BYTES_MAX + 1);
    let cases: Vec<(Command, &str)> = vec![
        (reserve(0, None, &[]), "lines[0].qty"),
        (reserve(LINE_QTY_MAX + 1, None, &[]), "lines[0].qty"),
        (reserve(1, Some(TTL_MS_MIN - 1), &[]), "ttl_ms"),
        (reserve(1, Some(TTL_MS_MAX + 1), &[]), "ttl_ms"),
        (
            Command::Reserve {
                owner: long.clone(),
                lines: vec![],
                ttl_ms: None,
                warehouse_preference: vec![],
            },
            "owner",
        ),
        (
            Command::Reserve {
                owner: user(0),
                lines: vec![],
                ttl_ms: None,
                warehouse_preference: vec![],
            },
            "lines",
        ),
        (
            Command::AdjustStock {
                sku: sku(0),
                warehouse: "w1".into(),
                delta: 0,
            },
            "delta",
        ),
        (
            Command::SetStock {
                sku: sku(0),
                warehouse: long.clone(),
                on_hand: 1,
            },
            "warehouse",
        ),
        (
            Command::SetStock {
                sku: sku(0),
                warehouse: "w1".into(),
                on_hand: ON_HAND_MAX + 1,
            },
            "on_hand",
        ),
        (
            Command::AdjustStock {
                sku: sku(0),
                warehouse: "w1".into(),
                delta: i64::MAX,
            },
            "delta",
        ),
        (
            Command::UpsertSku {
                sku: sku(1),
                seller_id: "s".into(),
                title: "t".into(),
                price: Money {
                    amount_minor: 1,
                    currency: Currency(*b"eur"),
                },
            },
            "price.currency",
        ),
        (
            Command::CartSet {
                user_id: user(0),
                sku: "".into(),
                qty: 1,
            },
            "sku",
        ),
    ];
    let before = s.checksum();
    for (c, field) in cases {
        match apply(&mut s, T0, c.clone()) {
            Err(EngineError::InvalidInput { field: f, reason }) => {
                assert_eq!(f, field, "{c:?}: {reason}");
                assert!(!reason.is_empty());
            }
            other => panic!("{c:?} gave {other:?}"),
        }
    }
    assert!(
        apply(
            &mut s,
            T0,
            Command::Reserve {
                owner: long,
                lines: vec![],
                ttl_ms: None,
                warehouse_preference: vec![]
            }
        )
        .unwrap_err()
        .to_string()
        .contains("ID_BYTES_MAX (64)")
    );
    assert_eq!(s.checksum(), before);
}

#[test]
fn unknown_and_foreign_ids_are_typed_errors() {
    let mut s = stocked();
    let other = key_on_shard("sku-", SHARD + 1, 0);
    assert_eq!(
        apply(
            &mut s,
            T0,
            Command::SetStock {
                sku: other.clone(),
                warehouse: "w".into(),
                on_hand: 1
            }
        ),
        Err(EngineError::WrongShard {
            owner: shard_of(&other)
        })
    );
    assert_eq!(
        apply(
            &mut s,
            T0,
            Command::SetStock {
                sku: sku(5),
                warehouse: "w".into(),
                on_hand: 1
            }
        ),
        Err(EngineError::UnknownSku { sku: sku(5) })
    );
    let foreign = ReservationId::new(SHARD + 1, 1).unwrap();
    assert_eq!(
        apply(
            &mut s,
            T0,
            Command::Confirm {
                reservation_id: foreign
            }
        ),
        Err(EngineError::WrongShard { owner: SHARD + 1 })
    );
    let missing = OrderId::new(SHARD, 99).unwrap();
    assert_eq!(
        apply(
            &mut s,
            T0,
            Command::SetOrderStatus {
                order_id: missing,
                status: OrderStatus::Packed,
                note: String::new()
            }
        ),
        Err(EngineError::UnknownOrder { order_id: missing })
    );
    assert!(matches!(
        apply(
            &mut s,
            T0,
            Command::AdjustStock {
                sku: sku(0),
                warehouse: "nowhere".into(),
                delta: -1
            }
        ),
        Err(EngineError::UnknownWarehouse { .. })
    ));
}

#[test]
fn idempotency_returns_the_stored_result_and_refuses_a_different_request() {
    let mut s = stocked();
    let first = s
        .apply(T0, &Request::keyed("k1", reserve(2, None, &[])))
        .unwrap();
    assert!(first.is_new);
    let sum = s.checksum();
    let again = s
        .apply(T0 + 5_000, &Request::keyed("k1", reserve(2, None, &[])))
        .unwrap();
    assert!(!again.is_new);
    assert_eq!(again.outcome, first.outcome);
    assert_eq!(s.checksum(), sum, "a retry changed the state");
    assert_eq!(
        s.apply(T0, &Request::keyed("k1", reserve(3, None, &[]))),
        Err(EngineError::IdempotencyConflict { key: "k1".into() })
    );
    // A failure is not remembered: the same key may succeed later.
    let big = Request::keyed("k2", reserve(100, None, &[]));
    assert!(matches!(
        s.apply(T0, &big),
        Err(EngineError::InsufficientStock { .. })
    ));
    apply(
        &mut s,
        T0,
        Command::AdjustStock {
            sku: sku(0),
            warehouse: "w1".into(),
            delta: 100,
        },
    )
    .unwrap();
    assert!(s.apply(T0, &big).unwrap().is_new);
    // After the retention window the key is free again, and a tick prunes it.
    let later = T0 + IDEMPOTENCY_RETENTION_MS;
    let t = apply(&mut s, later, Command::Tick { expire: vec![] }).unwrap();
    assert_eq!(
        t,
        Outcome::Ticked {
            expired: 0,
            pruned: 2
        }
    );
    assert!(
        s.apply(later, &Request::keyed("k1", reserve(3, None, &[])))
            .unwrap()
            .is_new
    );
    s.check_invariants().unwrap();
}

#[test]
fn order_status_machine_refuses_illegal_transitions() {
    let mut s = ShardState::new(SHARD);
    let line = OrderLine {
        sku: "any-sku".into(),
        warehouse: "w1".into(),
        qty: 2,
        unit_price: eur(1_000),
    };
    let o = apply(
        &mut s,
        T0,
        Command::CreateOrder {
            user_id: user(0),
            lines: vec![line.clone(), line],
            ship_to: "1 Main St".into(),
        },
    )
    .unwrap();
    let Outcome::OrderCreated { order_id, total } = o else {
        panic!("{o:?}")
    };
    assert_eq!(total, eur(4_000));
    assert_eq!(order_id.shard(), SHARD);
    let set = |s: &mut ShardState, to: OrderStatus| {
        apply(
            s,
            T0 + 10,
            Command::SetOrderStatus {
                order_id,
                status: to,
                note: String::new(),
            },
        )
    };
    assert!(matches!(
        set(&mut s, OrderStatus::Shipped),
        Err(EngineError::IllegalTransition { .. })
    ));
    for to in [
        OrderStatus::Confirmed,
        OrderStatus::Packed,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
    ] {
        set(&mut s, to).unwrap();
    }
    assert!(matches!(
        set(&mut s, OrderStatus::Cancelled),
        Err(EngineError::IllegalTransition { .. })
    ));
    for to in [
        OrderStatus::ReturnRequested,
        OrderStatus::Returned,
        OrderStatus::Refunded,
    ] {
        set(&mut s, to).unwrap();
    }
    let order = s.order(order_id).unwrap();
    assert_eq!(order.history.len(), 8);
    assert_eq!(order.status, OrderStatus::Refunded);
    assert_eq!(s.orders_of(&user(0)).count(), 1);
    // Refunded is terminal.
    for to in OrderStatus::ALL {
        assert!(!OrderStatus::Refunded.can_become(to));
    }
    s.check_invariants().unwrap();
}

#[test]
fn orders_refuse_mixed_currencies() {
    let mut s = ShardState::new(SHARD);
    let a = OrderLine {
        sku: "a".into(),
        warehouse: "w".into(),
        qty: 1,
        unit_price: eur(1),
    };
    let mut b = a.clone();
    b.unit_price.currency = Currency::parse("USD").unwrap();
    let e = apply(
        &mut s,
        T0,
        Command::CreateOrder {
            user_id: user(0),
            lines: vec![a, b],
            ship_to: String::new(),
        },
    );
    assert!(
        matches!(e, Err(EngineError::InvalidInput { field, .. }) if field == "lines[1].unit_price.currency")
    );
}

#[test]
fn carts_set_remove_clear_and_stay_bounded() {
    let mut s = ShardState::new(SHARD);
    let u = user(1);
    apply(
        &mut s,
        T0,
        Command::CartSet {
            user_id: u.clone(),
            sku: "b".into(),
            qty: 2,
        },
    )
    .unwrap();
    apply(
        &mut s,
        T0,
        Command::CartSet {
            user_id: u.clone(),
            sku: "a".into(),
            qty: 1,
        },
    )
    .unwrap();
    let r = apply(
        &mut s,
        T0,
        Command::CartSet {
            user_id: u.clone(),
            sku: "b".into(),
            qty: 5,
        },
    )
    .unwrap();
    assert_eq!(
        r,
        Outcome::Cart {
            items: vec![
                CartItem {
                    sku: "a".into(),
                    qty: 1
                },
                CartItem {
                    sku: "b".into(),
                    qty: 5
                }
            ]
        }
    );
    apply(
        &mut s,
        T0,
        Command::CartRemove {
            user_id: u.clone(),
            sku: "a".into(),
        },
    )
    .unwrap();
    assert_eq!(
        s.cart(&u),
        &[CartItem {
            sku: "b".into(),
            qty: 5
        }]
    );
    apply(&mut s, T0, Command::CartClear { user_id: u.clone() }).unwrap();
    assert!(s.cart(&u).is_empty());
    for i in 0..CART_ITEMS_MAX {
        apply(
            &mut s,
            T0,
            Command::CartSet {
                user_id: u.clone(),
                sku: format!("s{i}"),
                qty: 1,
            },
        )
        .unwrap();
    }
    let e = apply(
        &mut s,
        T0,
        Command::CartSet {
            user_id: u.clone(),
            sku: "one-more".into(),
            qty: 1,
        },
    );
    assert!(
        matches!(e, Err(EngineError::LimitReached { ref limit, .. }) if limit == "CART_ITEMS_MAX"),
        "{e:?}"
    );
    s.check_invariants().unwrap();
}

#[test]
fn the_clock_never_moves_back() {
    let mut s = stocked();
    let r = apply(&mut s, T0 + 10_000, reserve(1, Some(5_000), &[])).unwrap();
    let Outcome::Reserved { expires_at_ms, .. } = r else {
        panic!()
    };
    assert_eq!(expires_at_ms, T0 + 15_000);
    // A batch stamped earlier (the host clock stepped back) still uses the later time.
    let r = apply(&mut s, T0, reserve(1, Some(5_000), &[])).unwrap();
    let Outcome::Reserved { expires_at_ms, .. } = r else {
        panic!()
    };
    assert_eq!(expires_at_ms, T0 + 15_000);
    assert_eq!(s.clock_ms(), T0 + 10_000);
}

#[test]
fn image_round_trip_keeps_the_checksum() {
    let mut s = stocked();
    apply(&mut s, T0, reserve(3, None, &[])).unwrap();
    s.apply(T0, &Request::keyed("key", reserve(1, None, &[])))
        .unwrap();
    apply(
        &mut s,
        T0,
        Command::CartSet {
            user_id: user(0),
            sku: "x".into(),
            qty: 1,
        },
    )
    .unwrap();
    let back = ShardState::from_image(s.to_image()).unwrap();
    assert_eq!(back.checksum(), s.checksum());
    assert_eq!(back.to_image(), s.to_image());
}

#[test]
fn a_corrupted_image_is_refused() {
    let mut s = stocked();
    apply(&mut s, T0, reserve(3, None, &[])).unwrap();
    let mut image = s.to_image();
    image.skus[0].warehouses[0].reserved += 1;
    let e = ShardState::from_image(image).unwrap_err();
    assert!(e.contains("live reservations hold"), "{e}");
}

#[test]
fn seller_listings_follow_the_seller_index_through_changes_and_images() {
    let mut s = ShardState::new(SHARD);
    let upsert = |s: &mut ShardState, n: usize, seller: &str| {
        let c = Command::UpsertSku {
            sku: sku(n),
            seller_id: seller.into(),
            title: format!("item {n}"),
            price: eur(100),
        };
        apply(s, T0, c).unwrap();
    };
    // Sellers whose names prefix each other must not bleed into one another.
    for n in 0..12 {
        upsert(&mut s, n, ["acme", "acme-2", "ac"][n % 3]);
    }
    let listed = |s: &ShardState, seller: &str, max: Option<u64>, limit: usize| {
        let (skus, truncated) = s.seller_skus(seller, max, limit);
        let ids: Vec<String> = skus.iter().map(|k| k.sku.clone()).collect();
        (ids, truncated)
    };
    let mut acme: Vec<String> = (0..12).step_by(3).map(sku).collect();
    acme.sort();
    assert_eq!(listed(&s, "acme", None, 100), (acme.clone(), false));
    assert_eq!(listed(&s, "acme", None, 4), (acme.clone(), false));
    assert_eq!(listed(&s, "acme", None, 3), (acme[..3].to_vec(), true));
    assert_eq!(listed(&s, "nobody", None, 10), (vec![], false));

    // A SKU that changes seller moves in the listings.
    upsert(&mut s, 0, "acme-2");
    s.check_invariants().unwrap();
    let (ids, _) = listed(&s, "acme", None, 100);
    assert!(!ids.contains(&sku(0)));
    let (ids, _) = listed(&s, "acme-2", None, 100);
    assert!(ids.contains(&sku(0)));

    // Stock filters: only SKUs with at most `max` available.
    let c = Command::SetStock {
        sku: sku(3),
        warehouse: "w1".into(),
        on_hand: 50,
    };
    apply(&mut s, T0, c).unwrap();
    let (ids, _) = listed(&s, "acme", Some(10), 100);
    assert!(!ids.contains(&sku(3)) && !ids.is_empty());

    // The index is rebuilt from an image.
    let restored = ShardState::from_image(s.to_image()).unwrap();
    for seller in ["acme", "acme-2", "ac"] {
        assert_eq!(
            listed(&restored, seller, None, 100),
            listed(&s, seller, None, 100)
        );
    }
}

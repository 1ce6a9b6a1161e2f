//! Routing: which shard executes each operation, and what no shard may.

use reserva_engine::ids::key_on_shard;
use reserva_protocol::engine::{
    Command, Currency, Money, OrderId, OrderStatus, Request, ReservationId, ReserveLine, shard_of,
};
use reserva_protocol::limits::LIST_ORDERS_LIMIT_MAX;
use reserva_protocol::{Op, Query, WireError, route};

fn mutate(command: Command) -> Op {
    Op::Mutate(Request::new(command))
}

fn line(sku: &str) -> ReserveLine {
    ReserveLine {
        sku: sku.into(),
        qty: 1,
    }
}

fn reserve(lines: Vec<ReserveLine>) -> Op {
    mutate(Command::Reserve {
        owner: "user-1".into(),
        lines,
        ttl_ms: None,
        warehouse_preference: vec![],
    })
}

fn is_invalid(r: Result<u16, WireError>) -> Option<String> {
    match r {
        Err(WireError::InvalidRequest { reason }) => Some(reason),
        _ => None,
    }
}

#[test]
fn sku_commands_route_by_sku() {
    let price = Money {
        amount_minor: 100,
        currency: Currency::parse("EUR").unwrap(),
    };
    let sku = "sku-1";
    let expected = shard_of(sku);
    for command in [
        Command::UpsertSku {
            sku: sku.into(),
            seller_id: "s".into(),
            title: "t".into(),
            price,
        },
        Command::SetStock {
            sku: sku.into(),
            warehouse: "w".into(),
            on_hand: 1,
        },
        Command::AdjustStock {
            sku: sku.into(),
            warehouse: "w".into(),
            delta: -1,
        },
        Command::Restock {
            sku: sku.into(),
            warehouse: "w".into(),
            qty: 1,
        },
    ] {
        assert_eq!(route(&mutate(command)), Ok(expected));
    }
    assert_eq!(
        route(&Op::Query(Query::GetSku { sku: sku.into() })),
        Ok(expected)
    );
}

#[test]
fn user_commands_route_by_user() {
    let user = "user-42";
    let expected = shard_of(user);
    for command in [
        Command::CreateOrder {
            user_id: user.into(),
            lines: vec![],
            ship_to: String::new(),
        },
        Command::CartSet {
            user_id: user.into(),
            sku: "sku-1".into(),
            qty: 1,
        },
        Command::CartRemove {
            user_id: user.into(),
            sku: "sku-1".into(),
        },
        Command::CartClear {
            user_id: user.into(),
        },
    ] {
        assert_eq!(route(&mutate(command)), Ok(expected));
    }
    for query in [
        Query::GetCart {
            user_id: user.into(),
        },
        Query::ListOrders {
            user_id: user.into(),
            after: OrderId::new(expected, 3),
            limit: 10,
        },
    ] {
        assert_eq!(route(&Op::Query(query)), Ok(expected));
    }
}

#[test]
fn minted_ids_route_to_their_shard() {
    let rid = ReservationId::new(200, 5).unwrap();
    let oid = OrderId::new(17, 5).unwrap();
    assert_eq!(
        route(&mutate(Command::Release {
            reservation_id: rid
        })),
        Ok(200)
    );
    assert_eq!(
        route(&mutate(Command::Confirm {
            reservation_id: rid
        })),
        Ok(200)
    );
    assert_eq!(
        route(&mutate(Command::SetOrderStatus {
            order_id: oid,
            status: OrderStatus::Confirmed,
            note: String::new(),
        })),
        Ok(17)
    );
    assert_eq!(
        route(&Op::Query(Query::GetReservation { id: rid })),
        Ok(200)
    );
    assert_eq!(route(&Op::Query(Query::GetOrder { id: oid })), Ok(17));
    assert_eq!(route(&Op::Query(Query::ShardStats { shard: 255 })), Ok(255));
}

#[test]
fn reserve_routes_by_its_lines_which_must_share_a_shard() {
    let a = key_on_shard("sku-", 10, 0);
    let b = key_on_shard("sku-", 10, 1);
    let c = key_on_shard("sku-", 11, 0);
    assert_eq!(route(&reserve(vec![line(&a), line(&b)])), Ok(10));
    let reason = is_invalid(route(&reserve(vec![line(&a), line(&b), line(&c)]))).unwrap();
    assert!(
        reason.contains("10") && reason.contains("11") && reason.contains(&c),
        "{reason}"
    );
    assert!(is_invalid(route(&reserve(vec![]))).is_some());
}

#[test]
fn what_no_client_may_send_is_invalid() {
    assert!(is_invalid(route(&mutate(Command::Tick { expire: vec![] }))).is_some());
    assert!(is_invalid(route(&Op::Query(Query::ShardStats { shard: 256 }))).is_some());
    for limit in [0, LIST_ORDERS_LIMIT_MAX + 1] {
        let q = Query::ListOrders {
            user_id: "u".into(),
            after: None,
            limit,
        };
        assert!(is_invalid(route(&Op::Query(q))).is_some(), "limit {limit}");
    }
    let user = "user-42";
    let other = (shard_of(user) + 1) % 256;
    let q = Query::ListOrders {
        user_id: user.into(),
        after: OrderId::new(other, 1),
        limit: 10,
    };
    assert!(is_invalid(route(&Op::Query(q))).is_some());
}

#[test]
fn retryable_errors_are_exactly_the_transient_ones() {
    assert!(WireError::Overloaded { retry_after_ms: 1 }.is_retryable());
    assert!(
        WireError::Unavailable {
            shard: 1,
            reason: "recovering".into()
        }
        .is_retryable()
    );
    assert!(WireError::Timeout.is_retryable());
    assert!(!WireError::invalid("x").is_retryable());
    assert!(
        !WireError::WrongShard {
            shard: 1,
            owner_core: 0,
            map_version: 2
        }
        .is_retryable()
    );
}

#[test]
fn shard_maps_are_validated() {
    use reserva_protocol::{CoreEndpoint, ShardMap};
    let good = ShardMap {
        version: 3,
        owners: (0..256).map(|s| s % 2).collect(),
        cores: vec![
            CoreEndpoint {
                core: 0,
                addr: "127.0.0.1:7401".into(),
            },
            CoreEndpoint {
                core: 1,
                addr: "127.0.0.1:7402".into(),
            },
        ],
    };
    assert_eq!(good.validate(), Ok(()));
    assert_eq!(good.owner_of(255), Some(1));
    assert_eq!(good.owner_of(256), None);
    assert_eq!(
        good.endpoint(1).map(|e| e.addr.as_str()),
        Some("127.0.0.1:7402")
    );

    let mut short = good.clone();
    short.owners.pop();
    assert!(short.validate().is_err());
    let mut orphan = good.clone();
    orphan.owners[7] = 9;
    assert!(orphan.validate().unwrap_err().contains("shard 7"));
    let mut twice = good.clone();
    twice.cores[1].core = 0;
    assert!(twice.validate().is_err());
    let mut no_addr = good;
    no_addr.cores[0].addr.clear();
    assert!(no_addr.validate().is_err());
}

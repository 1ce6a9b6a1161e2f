//! Property tests: every message survives encode -> decode unchanged, and the
//! decoder never panics on random bytes or mutated valid frames.

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use reserva_protocol::engine::{
    Allocation, CartItem, Command, Currency, EngineError, Money, Order, OrderId, OrderLine,
    OrderStatus, Outcome, Request, Reservation, ReservationId, ReserveLine, Sku, StatusChange,
    WarehouseStock,
};
use reserva_protocol::limits::HEADER_BYTES;
use reserva_protocol::{
    Batch, CoreEndpoint, FrameDecoder, Hello, HelloOk, Message, Op, OpResult, Query, Reply,
    Results, ShardMap, ShardStats, WireError, message_to_vec,
};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[a-z0-9_-]{0,12}", 1 => any::<String>()]
}

fn money() -> impl Strategy<Value = Money> {
    (any::<u64>(), any::<[u8; 3]>()).prop_map(|(amount_minor, c)| Money {
        amount_minor,
        currency: Currency(c),
    })
}

fn reservation_id() -> impl Strategy<Value = ReservationId> {
    any::<u64>().prop_map(ReservationId)
}

fn order_id() -> impl Strategy<Value = OrderId> {
    any::<u64>().prop_map(OrderId)
}

fn status() -> impl Strategy<Value = OrderStatus> {
    proptest::sample::select(OrderStatus::ALL.to_vec())
}

fn allocation() -> impl Strategy<Value = Allocation> {
    (text(), text(), any::<u32>()).prop_map(|(sku, warehouse, qty)| Allocation {
        sku,
        warehouse,
        qty,
    })
}

fn order_line() -> impl Strategy<Value = OrderLine> {
    (text(), text(), any::<u32>(), money()).prop_map(|(sku, warehouse, qty, unit_price)| {
        OrderLine {
            sku,
            warehouse,
            qty,
            unit_price,
        }
    })
}

fn cart_item() -> impl Strategy<Value = CartItem> {
    (text(), any::<u32>()).prop_map(|(sku, qty)| CartItem { sku, qty })
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (text(), text(), text(), money()).prop_map(|(sku, seller_id, title, price)| {
            Command::UpsertSku {
                sku,
                seller_id,
                title,
                price,
            }
        }),
        (text(), text(), any::<u64>()).prop_map(|(sku, warehouse, on_hand)| Command::SetStock {
            sku,
            warehouse,
            on_hand
        }),
        (text(), text(), any::<i64>()).prop_map(|(sku, warehouse, delta)| {
            Command::AdjustStock {
                sku,
                warehouse,
                delta,
            }
        }),
        (
            text(),
            vec(
                (text(), any::<u32>()).prop_map(|(sku, qty)| ReserveLine { sku, qty }),
                0..4
            ),
            option::of(any::<u64>()),
            vec(text(), 0..3)
        )
            .prop_map(
                |(owner, lines, ttl_ms, warehouse_preference)| Command::Reserve {
                    owner,
                    lines,
                    ttl_ms,
                    warehouse_preference,
                }
            ),
        reservation_id().prop_map(|reservation_id| Command::Release { reservation_id }),
        reservation_id().prop_map(|reservation_id| Command::Confirm { reservation_id }),
        (text(), text(), any::<u32>()).prop_map(|(sku, warehouse, qty)| Command::Restock {
            sku,
            warehouse,
            qty
        }),
        (text(), vec(order_line(), 0..3), text()).prop_map(|(user_id, lines, ship_to)| {
            Command::CreateOrder {
                user_id,
                lines,
                ship_to,
            }
        }),
        (order_id(), status(), text()).prop_map(|(order_id, status, note)| {
            Command::SetOrderStatus {
                order_id,
                status,
                note,
            }
        }),
        (text(), text(), any::<u32>()).prop_map(|(user_id, sku, qty)| Command::CartSet {
            user_id,
            sku,
            qty
        }),
        (text(), text()).prop_map(|(user_id, sku)| Command::CartRemove { user_id, sku }),
        text().prop_map(|user_id| Command::CartClear { user_id }),
        vec(reservation_id(), 0..3).prop_map(|expire| Command::Tick { expire }),
    ]
}

fn query() -> impl Strategy<Value = Query> {
    prop_oneof![
        text().prop_map(|sku| Query::GetSku { sku }),
        reservation_id().prop_map(|id| Query::GetReservation { id }),
        order_id().prop_map(|id| Query::GetOrder { id }),
        (text(), option::of(order_id()), any::<u32>()).prop_map(|(user_id, after, limit)| {
            Query::ListOrders {
                user_id,
                after,
                limit,
            }
        }),
        text().prop_map(|user_id| Query::GetCart { user_id }),
        any::<u16>().prop_map(|shard| Query::ShardStats { shard }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (option::of(text()), command()).prop_map(|(idempotency_key, command)| Op::Mutate(
            Request {
                idempotency_key,
                command
            }
        )),
        query().prop_map(Op::Query),
    ]
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        any::<bool>().prop_map(|created| Outcome::SkuUpserted { created }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(on_hand, reserved)| Outcome::Stock { on_hand, reserved }),
        (reservation_id(), any::<u64>(), vec(allocation(), 0..3)).prop_map(
            |(reservation_id, expires_at_ms, allocations)| Outcome::Reserved {
                reservation_id,
                expires_at_ms,
                allocations,
            }
        ),
        Just(Outcome::Released),
        vec(allocation(), 0..3).prop_map(|allocations| Outcome::Confirmed { allocations }),
        (order_id(), money())
            .prop_map(|(order_id, total)| Outcome::OrderCreated { order_id, total }),
        (status(), status()).prop_map(|(from, to)| Outcome::OrderStatusChanged { from, to }),
        vec(cart_item(), 0..3).prop_map(|items| Outcome::Cart { items }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(expired, pruned)| Outcome::Ticked { expired, pruned }),
    ]
}

fn order() -> impl Strategy<Value = Order> {
    (
        order_id(),
        text(),
        vec(order_line(), 0..3),
        money(),
        text(),
        status(),
        vec(
            (status(), any::<u64>(), text()).prop_map(|(status, at_ms, note)| StatusChange {
                status,
                at_ms,
                note,
            }),
            0..3,
        ),
    )
        .prop_map(
            |(id, user_id, lines, total, ship_to, status, history)| Order {
                id,
                user_id,
                lines,
                total,
                ship_to,
                status,
                history,
                fulfilment: None,
            },
        )
}

fn sku() -> impl Strategy<Value = Sku> {
    let stock = (text(), any::<[u64; 6]>()).prop_map(|(warehouse, n)| WarehouseStock {
        warehouse,
        on_hand: n[0],
        reserved: n[1],
        added: n[2],
        removed: n[3],
        deducted: n[4],
        returned: n[5],
    });
    (text(), text(), text(), money(), vec(stock, 0..3)).prop_map(
        |(sku, seller_id, title, price, warehouses)| Sku {
            sku,
            seller_id,
            title,
            price,
            warehouses,
        },
    )
}

fn engine_error() -> impl Strategy<Value = EngineError> {
    prop_oneof![
        (text(), text()).prop_map(|(field, reason)| EngineError::InvalidInput { field, reason }),
        text().prop_map(|sku| EngineError::UnknownSku { sku }),
        reservation_id()
            .prop_map(|reservation_id| EngineError::UnknownReservation { reservation_id }),
        order_id().prop_map(|order_id| EngineError::UnknownOrder { order_id }),
        (text(), any::<u64>(), any::<u64>()).prop_map(|(sku, requested, available)| {
            EngineError::InsufficientStock {
                sku,
                requested,
                available,
            }
        }),
        (text(), text(), any::<u64>(), any::<i128>()).prop_map(
            |(sku, warehouse, reserved, requested_on_hand)| EngineError::BelowReserved {
                sku,
                warehouse,
                reserved,
                requested_on_hand,
            }
        ),
        any::<u16>().prop_map(|owner| EngineError::WrongShard { owner }),
        text().prop_map(|key| EngineError::IdempotencyConflict { key }),
        (text(), any::<u64>()).prop_map(|(limit, max)| EngineError::LimitReached { limit, max }),
    ]
}

fn wire_error() -> impl Strategy<Value = WireError> {
    prop_oneof![
        engine_error().prop_map(WireError::Engine),
        (text(), text()).prop_map(|(what, id)| WireError::NotFound { what, id }),
        (any::<u16>(), any::<u16>(), any::<u64>()).prop_map(|(shard, owner_core, map_version)| {
            WireError::WrongShard {
                shard,
                owner_core,
                map_version,
            }
        }),
        any::<u32>().prop_map(|retry_after_ms| WireError::Overloaded { retry_after_ms }),
        text().prop_map(|reason| WireError::InvalidRequest { reason }),
        text().prop_map(|reason| WireError::Unauthorized { reason }),
        any::<u32>().prop_map(|max_bytes| WireError::FrameTooLarge { max_bytes }),
        any::<u16>().prop_map(|supported| WireError::UnsupportedVersion { supported }),
        (any::<u16>(), text()).prop_map(|(shard, reason)| WireError::Unavailable { shard, reason }),
        Just(WireError::Timeout),
        any::<u32>().prop_map(|timeout_ms| WireError::DeadlineExceeded { timeout_ms }),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    let reservation = (
        reservation_id(),
        text(),
        vec(allocation(), 0..3),
        any::<[u64; 2]>(),
    )
        .prop_map(|(id, owner, allocations, t)| Reservation {
            id,
            owner,
            allocations,
            created_at_ms: t[0],
            expires_at_ms: t[1],
        });
    let stats =
        (any::<[u16; 2]>(), any::<[u64; 7]>(), any::<u32>()).prop_map(|(s, n, q)| ShardStats {
            shard: s[0],
            core: s[1],
            lsn: n[0],
            durable_lsn: n[1],
            clock_ms: n[2],
            queue_depth: q,
            skus: n[3],
            reservations: n[4],
            orders: n[5],
            idempotency_records: n[6],
        });
    prop_oneof![
        outcome().prop_map(Reply::Outcome),
        sku().prop_map(Reply::Sku),
        reservation.prop_map(Reply::Reservation),
        order().prop_map(Reply::Order),
        (vec(order(), 0..3), option::of(order_id()))
            .prop_map(|(orders, next)| Reply::Orders { orders, next }),
        vec(cart_item(), 0..4).prop_map(Reply::Cart),
        stats.prop_map(Reply::ShardStats),
    ]
}

fn op_result() -> impl Strategy<Value = OpResult> {
    prop_oneof![reply().prop_map(Ok), wire_error().prop_map(Err)]
}

fn message() -> impl Strategy<Value = Message> {
    let map = (
        any::<u64>(),
        vec(any::<u16>(), 0..300),
        vec(
            (any::<u16>(), text()).prop_map(|(core, addr)| CoreEndpoint { core, addr }),
            0..4,
        ),
    )
        .prop_map(|(version, owners, cores)| ShardMap {
            version,
            owners,
            cores,
        });
    prop_oneof![
        (any::<u16>(), text(), text()).prop_map(|(protocol_version, credential, client_name)| {
            Message::Hello(Hello {
                protocol_version,
                credential,
                client_name,
            })
        }),
        (text(), text(), map, any::<u32>(), any::<u32>()).prop_map(
            |(server_version, node_id, shard_map, frame_bytes_max, batch_ops_max)| {
                Message::HelloOk(HelloOk {
                    server_version,
                    node_id,
                    shard_map,
                    frame_bytes_max,
                    batch_ops_max,
                })
            }
        ),
        (vec(op(), 0..8), any::<u32>())
            .prop_map(|(ops, timeout_ms)| Message::Batch(Batch { ops, timeout_ms })),
        vec(op_result(), 0..8).prop_map(|results| Message::Results(Results { results })),
        wire_error().prop_map(Message::Error),
        Just(Message::Ping),
        Just(Message::Pong),
    ]
}

/// Decodes every frame in `bytes`; must never panic. Returns what it decoded.
fn decode_everything(bytes: &[u8], chunk: usize) -> Vec<Message> {
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if let Ok(m) = frame.message() {
                        out.push(m);
                    }
                }
                Ok(None) => break,
                Err(_) => return out,
            }
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Set {
        at: usize,
        byte: u8,
    },
    Truncate {
        len: usize,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    /// Rewrites the CRC after the other mutations, so validation is reached.
    FixCrc,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        (any::<usize>(), vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        Just(Mutation::FixCrc),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Flip { at, bit } => {
            let i = at % bytes.len();
            bytes[i] ^= 1 << bit;
        }
        Mutation::Set { at, byte } => {
            let i = at % bytes.len();
            bytes[i] = *byte;
        }
        Mutation::Truncate { len } => bytes.truncate(len % (bytes.len() + 1)),
        Mutation::Insert { at, bytes: new } => {
            let i = at % (bytes.len() + 1);
            bytes.splice(i..i, new.iter().copied());
        }
        Mutation::FixCrc => {
            if bytes.len() >= HEADER_BYTES {
                let crc =
                    crc32c::crc32c_append(crc32c::crc32c(&bytes[..20]), &bytes[HEADER_BYTES..]);
                bytes[20..24].copy_from_slice(&crc.to_le_bytes());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn messages_round_trip(messages in vec((any::<u64>(), message()), 1..4), chunk in 1usize..200) {
        let mut bytes = Vec::new();
        for (id, m) in &messages {
            bytes.extend(message_to_vec(*id, m).unwrap());
        }
        // Fed in arbitrary pieces, the stream yields the same messages.
        let mut decoder = FrameDecoder::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in bytes.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                got.push((frame.request_id, frame.message().unwrap()));
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, messages);
    }

    #[test]
    fn ops_and_results_round_trip(ops in vec(op(), 0..32), results in vec(op_result(), 0..32)) {
        let batch = Message::Batch(Batch { ops, timeout_ms: 0 });
        let results = Message::Results(Results { results });
        for m in [batch, results] {
            let bytes = message_to_vec(7, &m).unwrap();
            let frame = FrameDecoder::new().decode(&mut BytesMut::from(&bytes[..])).unwrap().unwrap();
            prop_assert_eq!(frame.message().unwrap(), m);
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..512), chunk in 1usize..64) {
        decode_everything(&bytes, chunk);
    }

    #[test]
    fn random_bytes_after_a_valid_header_never_panic(
        opcode in 1u8..8,
        payload in vec(any::<u8>(), 0..512),
    ) {
        // A valid header and CRC over random payload bytes: reaches rkyv validation.
        let mut bytes = Vec::new();
        let op = reserva_protocol::Opcode::from_u8(opcode).unwrap();
        reserva_protocol::encode_frame(op, 1, &payload, &mut bytes).unwrap();
        decode_everything(&bytes, bytes.len());
    }

    #[test]
    fn mutated_frames_never_panic(
        m in message(),
        mutations in vec(mutation(), 1..6),
        chunk in 1usize..128,
    ) {
        let mut bytes = message_to_vec(1, &m).unwrap();
        for mutation in &mutations {
            apply(&mut bytes, mutation);
        }
        decode_everything(&bytes, chunk);
    }
}

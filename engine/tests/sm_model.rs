//! Property tests: random command sequences against a simple model.
//!
//! Checks DESIGN.md's invariants after every step:
//! 1. no oversell (`0 <= reserved <= on_hand`),
//! 2. conservation (on_hand follows the model's ledger; reserved equals what
//!    the model's live reservations hold),
//! 4. exactly-once (a keyed retry changes nothing and answers the same),
//! 6. expiry (a due reservation is released by exactly one tick),
//! 7. determinism (replaying the applied requests, or restoring the image,
//!    gives the same checksum).

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use reserva_engine::ids::{ReservationId, key_on_shard};
use reserva_engine::sm::*;

const SHARD: u16 = 9;
const T0: u64 = 1_800_000_000_000;
const SKUS: usize = 3;
const WAREHOUSES: [&str; 3] = ["w0", "w1", "w2"];

fn sku(i: usize) -> String {
    key_on_shard("sku-", SHARD, i)
}
fn user(i: usize) -> String {
    key_on_shard("user-", SHARD, i)
}

#[derive(Debug, Clone)]
enum Op {
    SetStock(usize, usize, u64),
    Adjust(usize, usize, i64),
    Reserve {
        lines: Vec<(usize, u32)>,
        ttl_ms: Option<u64>,
        pref: Vec<usize>,
        key: Option<u8>,
    },
    Release(usize),
    Confirm(usize),
    Restock(usize, usize, u32),
    Advance(u64),
    Order(usize, u32),
    OrderStatus(usize, usize),
    Cart(usize, usize, u32),
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0..SKUS;
    let w = 0..WAREHOUSES.len();
    prop_oneof![
        2 => (s.clone(), w.clone(), 0u64..40).prop_map(|(s, w, n)| Op::SetStock(s, w, n)),
        2 => (s.clone(), w.clone(), -15i64..25).prop_map(|(s, w, d)| Op::Adjust(s, w, d)),
        6 => (
            prop::collection::vec((s.clone(), 0u32..12), 1..4),
            prop::option::of(prop_oneof![Just(1_000u64), Just(5_000), Just(60_000), Just(0)]),
            prop::collection::vec(w.clone(), 0..3),
            prop::option::of(0u8..4),
        )
            .prop_map(|(lines, ttl_ms, pref, key)| Op::Reserve { lines, ttl_ms, pref, key }),
        2 => (0usize..64).prop_map(Op::Release),
        3 => (0usize..64).prop_map(Op::Confirm),
        1 => (s, w, 1u32..5).prop_map(|(s, w, q)| Op::Restock(s, w, q)),
        3 => prop_oneof![0u64..2_000, 0u64..70_000].prop_map(Op::Advance),
        1 => (0usize..2, 1u32..4).prop_map(|(u, q)| Op::Order(u, q)),
        1 => (0usize..8, 0usize..9).prop_map(|(o, st)| Op::OrderStatus(o, st)),
        1 => (0usize..2, 0usize..5, 0u32..3).prop_map(|(u, s, q)| Op::Cart(u, s, q)),
    ]
}

/// What the model expects.
#[derive(Default)]
struct Model {
    on_hand: HashMap<(String, String), u64>,
    live: BTreeMap<ReservationId, (u64, Vec<Allocation>)>,
    minted: Vec<ReservationId>,
    orders: Vec<reserva_engine::ids::OrderId>,
    keyed: HashMap<String, (Command, Outcome)>,
    expired_by_tick: u64,
}

struct Run {
    state: ShardState,
    model: Model,
    now: u64,
    journal: Vec<(u64, Request)>,
}

impl Run {
    fn new() -> Self {
        let mut run = Run {
            state: ShardState::new(SHARD),
            model: Model::default(),
            now: T0,
            journal: Vec::new(),
        };
        for i in 0..SKUS {
            let price = Money {
                amount_minor: 100 * (i as u64 + 1),
                currency: Currency::parse("EUR").unwrap(),
            };
            let c = Command::UpsertSku {
                sku: sku(i),
                seller_id: "seller".into(),
                title: format!("t{i}"),
                price,
            };
            run.submit(Request::new(c)).unwrap();
        }
        run
    }

    /// Applies a request, checking that a refusal changed nothing.
    fn submit(&mut self, req: Request) -> Result<Applied, EngineError> {
        let before = self.state.checksum();
        let r = self.state.apply(self.now, &req);
        match &r {
            Ok(a) if a.is_new => self.journal.push((self.now, req)),
            Ok(_) => assert_eq!(
                self.state.checksum(),
                before,
                "an idempotent replay changed the state"
            ),
            Err(_) => assert_eq!(
                self.state.checksum(),
                before,
                "a refused request changed the state: {req:?}"
            ),
        }
        r
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::SetStock(s, w, n) => {
                let c = Command::SetStock {
                    sku: sku(s),
                    warehouse: WAREHOUSES[w].into(),
                    on_hand: n,
                };
                if self.submit(Request::new(c)).is_ok() {
                    self.model.on_hand.insert((sku(s), WAREHOUSES[w].into()), n);
                }
            }
            Op::Adjust(s, w, d) => {
                let c = Command::AdjustStock {
                    sku: sku(s),
                    warehouse: WAREHOUSES[w].into(),
                    delta: d,
                };
                if self.submit(Request::new(c)).is_ok() {
                    let e = self
                        .model
                        .on_hand
                        .entry((sku(s), WAREHOUSES[w].into()))
                        .or_default();
                    *e = (*e as i64 + d) as u64;
                }
            }
            Op::Restock(s, w, q) => {
                let c = Command::Restock {
                    sku: sku(s),
                    warehouse: WAREHOUSES[w].into(),
                    qty: q,
                };
                self.submit(Request::new(c)).unwrap();
                *self
                    .model
                    .on_hand
                    .entry((sku(s), WAREHOUSES[w].into()))
                    .or_default() += u64::from(q);
            }
            Op::Reserve {
                lines,
                ttl_ms,
                pref,
                key,
            } => self.reserve(lines, ttl_ms, pref, key),
            Op::Release(i) => {
                let Some(&id) = self.pick(i) else { return };
                let r = self.submit(Request::new(Command::Release { reservation_id: id }));
                assert_eq!(
                    r.is_ok(),
                    self.model.live.remove(&id).is_some(),
                    "release of {id}: {r:?}"
                );
            }
            Op::Confirm(i) => self.confirm(i),
            Op::Advance(ms) => self.advance(ms),
            Op::Order(u, q) => {
                let line = OrderLine {
                    sku: sku(0),
                    warehouse: "w0".into(),
                    qty: q,
                    unit_price: Money {
                        amount_minor: 250,
                        currency: Currency::parse("EUR").unwrap(),
                    },
                };
                let c = Command::CreateOrder {
                    user_id: user(u),
                    lines: vec![line],
                    ship_to: "addr".into(),
                };
                match self.submit(Request::new(c)).unwrap().outcome {
                    Outcome::OrderCreated { order_id, total } => {
                        assert_eq!(total.amount_minor, 250 * u64::from(q));
                        self.model.orders.push(order_id);
                    }
                    o => panic!("{o:?}"),
                }
            }
            Op::OrderStatus(o, st) => {
                let Some(&id) = self.model.orders.get(o) else {
                    return;
                };
                let from = self.state.order(id).unwrap().status;
                let to = OrderStatus::ALL[st];
                let r = self.submit(Request::new(Command::SetOrderStatus {
                    order_id: id,
                    status: to,
                    note: String::new(),
                }));
                assert_eq!(r.is_ok(), from.can_become(to), "{from:?} -> {to:?}: {r:?}");
            }
            Op::Cart(u, s, q) => {
                let c = if q == 0 {
                    Command::CartRemove {
                        user_id: user(u),
                        sku: format!("c{s}"),
                    }
                } else {
                    Command::CartSet {
                        user_id: user(u),
                        sku: format!("c{s}"),
                        qty: q,
                    }
                };
                self.submit(Request::new(c)).unwrap();
            }
        }
    }

    fn pick(&self, i: usize) -> Option<&ReservationId> {
        if self.model.minted.is_empty() {
            None
        } else {
            self.model.minted.get(i % self.model.minted.len())
        }
    }

    fn reserve(
        &mut self,
        lines: Vec<(usize, u32)>,
        ttl_ms: Option<u64>,
        pref: Vec<usize>,
        key: Option<u8>,
    ) {
        let command = Command::Reserve {
            owner: user(0),
            lines: lines
                .iter()
                .map(|&(s, qty)| ReserveLine { sku: sku(s), qty })
                .collect(),
            ttl_ms,
            warehouse_preference: pref.iter().map(|&w| WAREHOUSES[w].to_string()).collect(),
        };
        let key = key.map(|k| format!("key-{k}"));
        let previous = key.as_ref().and_then(|k| self.model.keyed.get(k)).cloned();
        let req = Request {
            idempotency_key: key.clone(),
            command: command.clone(),
        };
        let r = self.submit(req);
        if let Some((prev_cmd, prev_out)) = previous {
            // Invariant 4: a retry answers the stored result; another request conflicts.
            if prev_cmd == command {
                let a = r.unwrap();
                assert!(!a.is_new);
                assert_eq!(a.outcome, prev_out);
            } else {
                assert!(
                    matches!(r, Err(EngineError::IdempotencyConflict { .. })),
                    "{r:?}"
                );
            }
            return;
        }
        let Ok(a) = r else {
            let e = r.unwrap_err();
            let zero_qty = lines.iter().any(|&(_, q)| q == 0);
            assert!(
                matches!(e, EngineError::InsufficientStock { .. })
                    || (ttl_ms == Some(0) || zero_qty),
                "unexpected refusal {e:?}"
            );
            return;
        };
        let Outcome::Reserved {
            reservation_id,
            expires_at_ms,
            allocations,
        } = a.outcome.clone()
        else {
            panic!()
        };
        // Allocations cover the request exactly, per SKU.
        for s in 0..SKUS {
            let want: u64 = lines
                .iter()
                .filter(|l| l.0 == s)
                .map(|l| u64::from(l.1))
                .sum();
            let got: u64 = allocations
                .iter()
                .filter(|a| a.sku == sku(s))
                .map(|a| u64::from(a.qty))
                .sum();
            assert_eq!(want, got);
        }
        assert_eq!(
            expires_at_ms,
            self.now.max(self.state.clock_ms()) + ttl_ms.unwrap_or(900_000)
        );
        self.model
            .live
            .insert(reservation_id, (expires_at_ms, allocations));
        self.model.minted.push(reservation_id);
        if let Some(k) = key {
            self.model.keyed.insert(k, (command, a.outcome));
        }
    }

    fn confirm(&mut self, i: usize) {
        let Some(&id) = self.pick(i) else { return };
        let r = self.submit(Request::new(Command::Confirm { reservation_id: id }));
        match self.model.live.get(&id).cloned() {
            None => assert!(
                matches!(r, Err(EngineError::UnknownReservation { .. })),
                "{r:?}"
            ),
            Some((exp, _)) if exp <= self.now => {
                assert!(
                    matches!(r, Err(EngineError::ReservationExpired { .. })),
                    "{r:?}"
                )
            }
            Some((_, allocs)) => {
                assert_eq!(
                    r.unwrap().outcome,
                    Outcome::Confirmed {
                        allocations: allocs.clone()
                    }
                );
                for a in allocs {
                    *self.model.on_hand.get_mut(&(a.sku, a.warehouse)).unwrap() -= u64::from(a.qty);
                }
                self.model.live.remove(&id);
            }
        }
    }

    /// Time passes; the server would issue a tick for what is due.
    fn advance(&mut self, ms: u64) {
        self.now += ms;
        let due = self.state.due_expirations(self.now, 10_000);
        let model_due: Vec<ReservationId> = self
            .model
            .live
            .iter()
            .filter(|(_, (exp, _))| *exp <= self.now)
            .map(|(id, _)| *id)
            .collect();
        let mut sorted = due.clone();
        sorted.sort();
        assert_eq!(sorted, model_due, "due expirations disagree with the model");
        let r = self
            .submit(Request::new(Command::Tick {
                expire: due.clone(),
            }))
            .unwrap();
        let Outcome::Ticked { expired, .. } = r.outcome else {
            panic!()
        };
        assert_eq!(expired as usize, due.len());
        self.model.expired_by_tick += u64::from(expired);
        for id in due {
            self.model.live.remove(&id);
        }
        // Invariant 6: nothing due is left live.
        assert!(self.state.due_expirations(self.now, 1).is_empty());
    }

    fn check(&self) {
        self.state.check_invariants().unwrap();
        let mut held: HashMap<(String, String), u64> = HashMap::new();
        for (_, allocs) in self.model.live.values() {
            for a in allocs {
                *held
                    .entry((a.sku.clone(), a.warehouse.clone()))
                    .or_default() += u64::from(a.qty);
            }
        }
        for s in 0..SKUS {
            let rec = self.state.sku(&sku(s)).unwrap();
            for w in &rec.warehouses {
                let k = (sku(s), w.warehouse.clone());
                assert!(w.reserved <= w.on_hand, "oversold {k:?}");
                assert_eq!(
                    w.on_hand,
                    self.model.on_hand.get(&k).copied().unwrap_or(0),
                    "on_hand {k:?}"
                );
                assert_eq!(
                    w.reserved,
                    held.get(&k).copied().unwrap_or(0),
                    "reserved {k:?}"
                );
            }
        }
        assert_eq!(self.state.counts().1, self.model.live.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn random_sequences_keep_every_invariant(ops in prop::collection::vec(op(), 1..150)) {
        let mut run = Run::new();
        for op in ops {
            run.step(op);
            run.check();
        }
        // Invariant 7: replaying what was applied gives the same state, bit for bit.
        let mut replayed = ShardState::new(SHARD);
        for (now, req) in &run.journal {
            let a = replayed.apply(*now, req).unwrap();
            prop_assert!(a.is_new);
        }
        prop_assert_eq!(replayed.checksum(), run.state.checksum());
        prop_assert_eq!(replayed.to_image(), run.state.to_image());
        let restored = ShardState::from_image(run.state.to_image()).unwrap();
        prop_assert_eq!(restored.checksum(), run.state.checksum());
    }
}

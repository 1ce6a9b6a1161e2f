//! `reserva://HOST:PORT`: the binary protocol through the shard-aware client.
//!
//! A batch of operations is one [`Client::batch`] call: the client splits it
//! per owning core into `BATCH` frames and sends them concurrently over its
//! pipelined connections. The client's own retries are off: an `Overloaded`
//! answer is counted as shed, not hidden behind a retry.

use std::ops::Range;
use std::time::Duration;

use anyhow::Context;
use reserva_client::protocol::card::tokenize_card;
use reserva_client::protocol::engine::{
    Address, CheckoutSource, Command, CommerceCommand, CommerceOutcome, Currency, EngineError,
    Money, OrderId, Outcome, Request, ReservationId, ReserveLine,
};
use reserva_client::{Client, ClientConfig, Op, OpResult as WireResult, Query, Reply, WireError};

use super::{Binding, CartReq, CheckoutReq, Hold, OpError, OpResult, ReserveReq, StockRow};
use crate::limits::SEED_SHED_RETRIES;
use crate::workload::{
    CURRENCY, Catalog, Line, PRICE_MINOR, seller_name, sku_name, user_name, warehouse_name,
};

/// The reserva binding.
pub struct Reserva {
    client: Client,
}

impl Reserva {
    /// Connects to `addr` (`HOST:PORT`) with `connections` per core.
    pub async fn connect(addr: &str, connections: usize, credential: &str) -> anyhow::Result<Self> {
        let config = ClientConfig {
            connections_per_core: connections,
            retries: 0,
            request_timeout: Duration::from_secs(10),
            client_name: "reserva-loadgen".into(),
            ..ClientConfig::new(credential)
        };
        let client = Client::connect(addr, config)
            .await
            .with_context(|| format!("connecting to reserva at {addr}"))?;
        Ok(Reserva { client })
    }

    async fn run(&self, ops: Vec<Op>) -> Vec<Result<Reply, OpError>> {
        let n = ops.len();
        match self.client.batch(ops).await {
            Ok(results) => results.into_iter().map(map_result).collect(),
            Err(_) => vec![Err(OpError::unknown("protocol")); n],
        }
    }
}

fn reserve_lines(lines: &[Line]) -> Vec<ReserveLine> {
    lines
        .iter()
        .map(|l| ReserveLine {
            sku: sku_name(l.sku),
            qty: l.qty,
        })
        .collect()
}

fn map_result(r: WireResult) -> Result<Reply, OpError> {
    r.map_err(|e| map_error(&e))
}

/// A stable code per wire error.
pub fn map_error(e: &WireError) -> OpError {
    match e {
        WireError::Engine(engine) => OpError::refused(engine_code(engine)),
        WireError::NotFound { .. } => OpError::refused("not_found"),
        WireError::WrongShard { .. } => OpError::refused("wrong_shard"),
        WireError::Overloaded { .. } => OpError::refused(super::CODE_OVERLOADED),
        WireError::InvalidRequest { .. } => OpError::refused("invalid_request"),
        WireError::Unauthorized { .. } => OpError::refused("unauthorized"),
        WireError::FrameTooLarge { .. } => OpError::refused("frame_too_large"),
        WireError::Unavailable { .. } => OpError::unknown("unavailable"),
        WireError::Timeout => OpError::unknown("timeout"),
        _ => OpError::unknown("other"),
    }
}

fn engine_code(e: &EngineError) -> &'static str {
    match e {
        EngineError::InsufficientStock { .. } => super::CODE_INSUFFICIENT_STOCK,
        EngineError::InvalidInput { .. } => "invalid_input",
        EngineError::UnknownSku { .. } => "unknown_sku",
        EngineError::UnknownWarehouse { .. } => "unknown_warehouse",
        EngineError::UnknownReservation { .. } => "unknown_reservation",
        EngineError::UnknownOrder { .. } => "unknown_order",
        EngineError::ReservationExpired { .. } => "reservation_expired",
        EngineError::IdempotencyConflict { .. } => "idempotency_conflict",
        EngineError::WrongShard { .. } => "wrong_shard",
        EngineError::PaymentDeclined { .. } => "payment_declined",
        EngineError::PaymentFailed { .. } => "payment_failed",
        EngineError::FraudRejected { .. } => "fraud_rejected",
        EngineError::LimitReached { .. } => "limit_reached",
        EngineError::CheckoutState { .. } => "checkout_state",
        EngineError::CheckoutInterrupted { .. } => "checkout_interrupted",
        _ => "engine_other",
    }
}

/// A card number the sandbox approves, one per user (`41` + the user index
/// + a Luhn check digit; the sandbox's special numbers all start with `40`).
pub fn card_of(user: u32) -> String {
    let body = format!("41{user:013}");
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

fn ship_to(user: u32) -> Address {
    Address {
        name: user_name(user),
        line1: "1 Bench Street".into(),
        line2: String::new(),
        city: "Springfield".into(),
        region: String::new(),
        postal_code: "12345".into(),
        country: "US".into(),
        lat_e6: None,
        lon_e6: None,
    }
}

fn wrong_reply() -> OpError {
    OpError::unknown("unexpected_reply")
}

impl Binding for Reserva {
    fn kind(&self) -> &'static str {
        "reserva"
    }

    async fn seed(&self, catalog: &Catalog, skus: Range<u32>) -> anyhow::Result<()> {
        let currency = Currency::parse(CURRENCY).context("currency code")?;
        let price = Money {
            amount_minor: PRICE_MINOR,
            currency,
        };
        let mut ops = Vec::with_capacity(skus.len() * (1 + catalog.warehouses as usize));
        for i in skus.clone() {
            ops.push(Op::Mutate(Request::keyed(
                format!("seed-sku-{i}"),
                Command::UpsertSku {
                    sku: sku_name(i),
                    seller_id: seller_name(i % catalog.sellers),
                    title: format!("Item {i}"),
                    price,
                },
            )));
        }
        // SKUs first: stock needs the SKU to exist.
        self.seed_batch(ops, "UpsertSku").await?;
        let mut ops = Vec::new();
        for i in skus {
            for w in 0..catalog.warehouses {
                ops.push(Op::Mutate(Request::new(Command::SetStock {
                    sku: sku_name(i),
                    warehouse: warehouse_name(w),
                    on_hand: catalog.stock,
                })));
            }
        }
        self.seed_batch(ops, "SetStock").await
    }

    async fn reserve(&self, reqs: Vec<ReserveReq>) -> Vec<OpResult<Hold>> {
        let ops = reqs
            .iter()
            .map(|r| {
                Op::Mutate(Request::new(Command::Reserve {
                    owner: user_name(r.user),
                    lines: reserve_lines(&r.lines),
                    ttl_ms: None,
                    warehouse_preference: Vec::new(),
                }))
            })
            .collect();
        self.run(ops)
            .await
            .into_iter()
            .zip(reqs)
            .map(|(r, req)| match r? {
                Reply::Outcome(Outcome::Reserved { reservation_id, .. }) => Ok(Hold {
                    id: reservation_id.0,
                    user: req.user,
                    lines: req.lines,
                }),
                _ => Err(wrong_reply()),
            })
            .collect()
    }

    async fn confirm(&self, holds: &[Hold]) -> Vec<OpResult<()>> {
        let ops = holds
            .iter()
            .map(|h| {
                Op::Mutate(Request::new(Command::Confirm {
                    reservation_id: ReservationId(h.id),
                }))
            })
            .collect();
        self.run(ops)
            .await
            .into_iter()
            .map(|r| match r? {
                Reply::Outcome(Outcome::Confirmed { .. }) => Ok(()),
                _ => Err(wrong_reply()),
            })
            .collect()
    }

    async fn release(&self, holds: &[Hold]) -> Vec<OpResult<()>> {
        let ops = holds
            .iter()
            .map(|h| {
                Op::Mutate(Request::new(Command::Release {
                    reservation_id: ReservationId(h.id),
                }))
            })
            .collect();
        self.run(ops)
            .await
            .into_iter()
            .map(|r| match r? {
                Reply::Outcome(Outcome::Released) => Ok(()),
                _ => Err(wrong_reply()),
            })
            .collect()
    }

    async fn checkout(&self, reqs: Vec<CheckoutReq>) -> Vec<OpResult<u64>> {
        let mut ops = Vec::with_capacity(reqs.len());
        for r in &reqs {
            // One approving sandbox card per user, shipped to the card's
            // country: the fraud rules see ordinary customers.
            let payment = match tokenize_card(&card_of(r.user)) {
                Ok(p) => p,
                Err(_) => return vec![Err(OpError::refused("invalid_card")); reqs.len()],
            };
            ops.push(Op::Mutate(Request::new(Command::Commerce(Box::new(
                CommerceCommand::CheckoutBegin {
                    user_id: user_name(r.user),
                    source: CheckoutSource::Lines(reserve_lines(&r.lines)),
                    payment,
                    ship_to: ship_to(r.user),
                },
            )))));
        }
        self.run(ops)
            .await
            .into_iter()
            .map(|r| match r? {
                Reply::Outcome(Outcome::Commerce(c)) => match *c {
                    CommerceOutcome::CheckoutStep { checkout } => checkout
                        .order_id
                        .map(|o| o.0)
                        .ok_or(OpError::refused("checkout_without_order")),
                    _ => Err(wrong_reply()),
                },
                _ => Err(wrong_reply()),
            })
            .collect()
    }

    async fn stock(&self, skus: Vec<u32>) -> Vec<OpResult<u64>> {
        let ops = skus
            .iter()
            .map(|&s| Op::Query(Query::GetSku { sku: sku_name(s) }))
            .collect();
        self.run(ops)
            .await
            .into_iter()
            .map(|r| match r? {
                Reply::Sku(sku) => Ok(sku.available()),
                _ => Err(wrong_reply()),
            })
            .collect()
    }

    async fn cart_set(&self, reqs: Vec<CartReq>) -> Vec<OpResult<()>> {
        let ops = reqs
            .iter()
            .map(|c| {
                Op::Mutate(Request::new(Command::CartSet {
                    user_id: user_name(c.user),
                    sku: sku_name(c.sku),
                    qty: c.qty,
                }))
            })
            .collect();
        self.run(ops)
            .await
            .into_iter()
            .map(|r| match r? {
                Reply::Outcome(Outcome::Cart { .. }) => Ok(()),
                _ => Err(wrong_reply()),
            })
            .collect()
    }

    async fn stock_rows(&self, skus: Vec<u32>) -> anyhow::Result<Vec<Vec<StockRow>>> {
        let ops = skus
            .iter()
            .map(|&s| Op::Query(Query::GetSku { sku: sku_name(s) }))
            .collect();
        let results = self.client.batch(ops).await?;
        let mut out = Vec::with_capacity(results.len());
        for (r, s) in results.into_iter().zip(skus) {
            match r {
                Ok(Reply::Sku(sku)) => out.push(
                    sku.warehouses
                        .iter()
                        .map(|w| StockRow {
                            on_hand: w.on_hand,
                            reserved: w.reserved,
                            deducted: Some(w.deducted),
                            // The engine's ledger: on_hand = added - removed - deducted + returned.
                            added: Some((w.added + w.returned).saturating_sub(w.removed)),
                        })
                        .collect(),
                ),
                Ok(other) => anyhow::bail!("GetSku {} answered {other:?}", sku_name(s)),
                Err(e) => anyhow::bail!("GetSku {}: {e}", sku_name(s)),
            }
        }
        Ok(out)
    }

    async fn missing_orders(&self, ids: Vec<u64>) -> anyhow::Result<u64> {
        let ops = ids
            .iter()
            .map(|&id| Op::Query(Query::GetOrder { id: OrderId(id) }))
            .collect();
        let mut missing = 0;
        for r in self.client.batch(ops).await? {
            match r {
                Ok(Reply::Order(_)) => {}
                Err(WireError::NotFound { .. }) => missing += 1,
                Ok(other) => anyhow::bail!("GetOrder answered {other:?}"),
                Err(e) => anyhow::bail!("GetOrder: {e}"),
            }
        }
        Ok(missing)
    }
}

impl Reserva {
    /// Runs seeding `ops`, sending those the node shed (`Overloaded`) again
    /// after its retry-after hint, up to `SEED_SHED_RETRIES` times. Seeding
    /// may repeat: SKUs are upserted under fixed idempotency keys and stock
    /// is set to an absolute level.
    async fn seed_batch(&self, ops: Vec<Op>, what: &str) -> anyhow::Result<()> {
        let mut pending = ops;
        for attempt in 0..=SEED_SHED_RETRIES {
            let results = self.client.batch(pending.clone()).await?;
            if results.len() != pending.len() {
                anyhow::bail!(
                    "{what}: {} answers to {} operations while seeding",
                    results.len(),
                    pending.len()
                );
            }
            let mut shed = Vec::new();
            let mut wait_ms = 1u32;
            for (op, r) in pending.into_iter().zip(results) {
                match r {
                    Ok(_) => {}
                    Err(WireError::Overloaded { retry_after_ms })
                        if attempt < SEED_SHED_RETRIES =>
                    {
                        wait_ms = wait_ms.max(retry_after_ms);
                        shed.push(op);
                    }
                    Err(e) => anyhow::bail!("{what} failed while seeding: {e}"),
                }
            }
            if shed.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(u64::from(wait_ms.min(1_000)))).await;
            pending = shed;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_cards_pass_the_sandbox_and_approve() {
        for user in [0, 1, 7, 999_999, u32::MAX] {
            let card = card_of(user);
            assert_eq!(card.len(), 16, "{card}");
            let method = tokenize_card(&card).expect("valid Luhn");
            assert!(format!("{method:?}").contains("approve"), "{method:?}");
        }
    }
}

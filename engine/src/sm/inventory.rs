//! SKUs, stock, and reservations: the operations on inventory.

use std::collections::hash_map::Entry;
use std::fmt::Display;

use crate::ids::{ReservationId, shard_of};
use crate::limits::*;
use crate::sm::command::Outcome;
use crate::sm::error::{EngineError, invalid, limit_reached};
use crate::sm::state::ShardState;
use crate::sm::types::{Allocation, Money, Reservation, ReserveLine, Sku, WarehouseStock};
use crate::sm::validate::{self, Item};

impl ShardState {
    pub(crate) fn upsert_sku(
        &mut self,
        sku: &str,
        seller_id: &str,
        title: &str,
        price: Money,
    ) -> Result<Outcome, EngineError> {
        validate::key_on("sku", sku, self.shard)?;
        validate::id("seller_id", seller_id)?;
        validate::text("title", title, TITLE_BYTES_MAX, "TITLE_BYTES_MAX")?;
        check_money("price", price)?;
        if let Some(existing) = self.skus.get_mut(sku) {
            if existing.seller_id != seller_id {
                let old = std::mem::replace(&mut existing.seller_id, seller_id.to_owned());
                self.skus_by_seller.remove(&(old, sku.to_owned()));
                self.skus_by_seller
                    .insert((seller_id.to_owned(), sku.to_owned()));
            }
            existing.title = title.to_owned();
            existing.price = price;
            return Ok(Outcome::SkuUpserted { created: false });
        }
        if self.skus.len() >= SKUS_MAX {
            return Err(limit_reached("SKUS_MAX", SKUS_MAX as u64));
        }
        let record = Sku {
            sku: sku.to_owned(),
            seller_id: seller_id.to_owned(),
            title: title.to_owned(),
            price,
            warehouses: Vec::new(),
        };
        self.skus.insert(sku.to_owned(), record);
        self.skus_by_seller
            .insert((seller_id.to_owned(), sku.to_owned()));
        Ok(Outcome::SkuUpserted { created: true })
    }

    /// The SKU and the index of `warehouse` in it, creating the warehouse entry
    /// when `create` is set. Validates both ids.
    fn stock_entry(
        &mut self,
        sku: &str,
        warehouse: &str,
        create: bool,
    ) -> Result<(&mut Sku, usize), EngineError> {
        validate::key_on("sku", sku, self.shard)?;
        validate::id("warehouse", warehouse)?;
        let record = self
            .skus
            .get_mut(sku)
            .ok_or_else(|| EngineError::UnknownSku {
                sku: sku.to_owned(),
            })?;
        if let Some(i) = record
            .warehouses
            .iter()
            .position(|w| w.warehouse == warehouse)
        {
            return Ok((record, i));
        }
        if !create {
            return Err(EngineError::UnknownWarehouse {
                sku: sku.to_owned(),
                warehouse: warehouse.to_owned(),
            });
        }
        if record.warehouses.len() >= WAREHOUSES_PER_SKU_MAX {
            return Err(limit_reached(
                "WAREHOUSES_PER_SKU_MAX",
                WAREHOUSES_PER_SKU_MAX as u64,
            ));
        }
        let index = record.warehouses.len();
        record.warehouses.push(WarehouseStock {
            warehouse: warehouse.to_owned(),
            on_hand: 0,
            reserved: 0,
            added: 0,
            removed: 0,
            deducted: 0,
            returned: 0,
        });
        Ok((record, index))
    }

    pub(crate) fn set_stock(
        &mut self,
        sku: &str,
        warehouse: &str,
        on_hand: u64,
    ) -> Result<Outcome, EngineError> {
        if on_hand > ON_HAND_MAX {
            return Err(invalid(
                "on_hand",
                format!("{on_hand} exceeds ON_HAND_MAX ({ON_HAND_MAX})"),
            ));
        }
        let (record, i) = self.stock_entry(sku, warehouse, true)?;
        let w = &mut record.warehouses[i];
        if on_hand < w.reserved {
            return Err(below_reserved(
                sku,
                warehouse,
                w.reserved,
                i128::from(on_hand),
            ));
        }
        if on_hand >= w.on_hand {
            w.added += on_hand - w.on_hand;
        } else {
            w.removed += w.on_hand - on_hand;
        }
        w.on_hand = on_hand;
        Ok(Outcome::Stock {
            on_hand: w.on_hand,
            reserved: w.reserved,
        })
    }

    pub(crate) fn adjust_stock(
        &mut self,
        sku: &str,
        warehouse: &str,
        delta: i64,
    ) -> Result<Outcome, EngineError> {
        if delta == 0 {
            return Err(invalid("delta", "must not be zero"));
        }
        let (record, i) = self.stock_entry(sku, warehouse, delta > 0)?;
        let w = &mut record.warehouses[i];
        let target = i128::from(w.on_hand) + i128::from(delta);
        if target > i128::from(ON_HAND_MAX) {
            return Err(invalid(
                "delta",
                format!("on_hand would exceed ON_HAND_MAX ({ON_HAND_MAX})"),
            ));
        }
        if target < i128::from(w.reserved) {
            return Err(below_reserved(sku, warehouse, w.reserved, target));
        }
        // In range: reserved >= 0 and target <= ON_HAND_MAX.
        let target = target as u64;
        if delta > 0 {
            w.added += delta.unsigned_abs();
        } else {
            w.removed += delta.unsigned_abs();
        }
        w.on_hand = target;
        Ok(Outcome::Stock {
            on_hand: w.on_hand,
            reserved: w.reserved,
        })
    }

    pub(crate) fn restock(
        &mut self,
        sku: &str,
        warehouse: &str,
        qty: u32,
    ) -> Result<Outcome, EngineError> {
        validate::qty("qty", qty)?;
        let (record, i) = self.stock_entry(sku, warehouse, true)?;
        let w = &mut record.warehouses[i];
        let target = w.on_hand + u64::from(qty);
        if target > ON_HAND_MAX {
            return Err(invalid(
                "qty",
                format!("on_hand would exceed ON_HAND_MAX ({ON_HAND_MAX})"),
            ));
        }
        w.on_hand = target;
        w.returned += u64::from(qty);
        Ok(Outcome::Stock {
            on_hand: w.on_hand,
            reserved: w.reserved,
        })
    }

    pub(crate) fn reserve(
        &mut self,
        now: u64,
        owner: &str,
        lines: &[ReserveLine],
        ttl_ms: Option<u64>,
        preference: &[String],
    ) -> Result<Outcome, EngineError> {
        validate::id("owner", owner)?;
        validate::count(
            "lines",
            lines.len(),
            RESERVATION_LINES_MAX,
            "RESERVATION_LINES_MAX",
        )?;
        if preference.len() > WAREHOUSE_PREFERENCE_MAX {
            return Err(invalid(
                "warehouse_preference",
                format!(
                    "{} entries exceed WAREHOUSE_PREFERENCE_MAX ({WAREHOUSE_PREFERENCE_MAX})",
                    preference.len()
                ),
            ));
        }
        for (i, w) in preference.iter().enumerate() {
            validate::id(Item::element("warehouse_preference", i), w)?;
        }
        let ttl = ttl_ms.unwrap_or(TTL_MS_DEFAULT);
        if !(TTL_MS_MIN..=TTL_MS_MAX).contains(&ttl) {
            return Err(invalid(
                "ttl_ms",
                format!("{ttl} outside TTL_MS_MIN..=TTL_MS_MAX ({TTL_MS_MIN}..={TTL_MS_MAX})"),
            ));
        }
        if self.reservations.len() >= RESERVATIONS_LIVE_MAX {
            return Err(limit_reached(
                "RESERVATIONS_LIVE_MAX",
                RESERVATIONS_LIVE_MAX as u64,
            ));
        }
        let allocations = self.plan_reservation(lines, preference)?;
        let seq = ShardState::mint(&mut self.next_reservation_seq)?;
        let id =
            ReservationId::new(self.shard, seq).ok_or_else(|| invalid("shard", "out of range"))?;
        // Commit: nothing below can fail.
        for a in &allocations {
            let w = self.stock_mut(a);
            w.reserved += u64::from(a.qty);
            debug_assert!(w.reserved <= w.on_hand);
        }
        let expires_at_ms = now.saturating_add(ttl);
        self.expiries.insert((expires_at_ms, id));
        let outcome = Outcome::Reserved {
            reservation_id: id,
            expires_at_ms,
            allocations: allocations.clone(),
        };
        let reservation = Reservation {
            id,
            owner: owner.to_owned(),
            allocations,
            created_at_ms: now,
            expires_at_ms,
        };
        self.reservations.insert(id, reservation);
        Ok(outcome)
    }

    /// Chooses warehouses for every line without changing anything, and
    /// returns the allocations that would hold them.
    ///
    /// Per line: the first preferred warehouse that can ship the whole line,
    /// else the warehouse with the most available units that can, else the
    /// line is split over preferred warehouses in order and then the others by
    /// most available. Earlier lines of the same request count against later ones.
    fn plan_reservation(
        &self,
        lines: &[ReserveLine],
        preference: &[String],
    ) -> Result<Vec<Allocation>, EngineError> {
        let mut plan: Vec<Allocation> = Vec::with_capacity(lines.len());
        // Units available per warehouse of the current line's SKU; on the stack
        // because this runs for every line of every reservation.
        let mut avail_buf = [0u64; WAREHOUSES_PER_SKU_MAX];
        for (i, line) in lines.iter().enumerate() {
            let sku = self.line_sku(i, line)?;
            let avail = &mut avail_buf[..sku.warehouses.len()];
            available_after(sku, &plan, avail);
            let want = u64::from(line.qty);
            if let Some(w) = whole_line_warehouse(sku, avail, preference, want) {
                plan.push(allocation(sku, w, want));
                continue;
            }
            let total: u64 = avail.iter().sum();
            if total < want {
                return Err(EngineError::InsufficientStock {
                    sku: line.sku.clone(),
                    requested: want,
                    available: total,
                });
            }
            split_line(sku, avail, preference, want, &mut plan);
        }
        if plan.len() > RESERVATION_ALLOCATIONS_MAX {
            return Err(limit_reached(
                "RESERVATION_ALLOCATIONS_MAX",
                RESERVATION_ALLOCATIONS_MAX as u64,
            ));
        }
        Ok(plan)
    }

    /// The SKU of reservation line `i`, with the line's checks in their
    /// original order (sku id, shard, qty, then existence).
    fn line_sku(&self, i: usize, line: &ReserveLine) -> Result<&Sku, EngineError> {
        let Some(sku) = self.skus.get(line.sku.as_str()) else {
            validate::key_on(Item::field("lines", i, "sku"), &line.sku, self.shard)?;
            validate::qty(Item::field("lines", i, "qty"), line.qty)?;
            return Err(EngineError::UnknownSku {
                sku: line.sku.clone(),
            });
        };
        // A stored SKU passed `key_on` when it was created (`check_invariants`
        // checks it too), so the id and shard checks cannot fail here: skip
        // them, and the CRC32C of `shard_of` with them.
        debug_assert_eq!(shard_of(&line.sku), self.shard);
        validate::qty(Item::field("lines", i, "qty"), line.qty)?;
        Ok(sku)
    }

    pub(crate) fn release(&mut self, id: ReservationId) -> Result<Outcome, EngineError> {
        validate::minted_on(id.shard(), self.shard)?;
        let reservation = self.take_reservation(id)?;
        for a in &reservation.allocations {
            self.stock_mut(a).reserved -= u64::from(a.qty);
        }
        Ok(Outcome::Released)
    }

    pub(crate) fn confirm(&mut self, now: u64, id: ReservationId) -> Result<Outcome, EngineError> {
        Ok(Outcome::Confirmed {
            allocations: self.deduct(Some(now), id)?,
        })
    }

    /// Deducts a live reservation's units from `on_hand`. With `due_at`, a
    /// reservation whose deadline is at or before it is refused as expired;
    /// without, only a released (or ticked-out) reservation is unknown.
    pub(crate) fn deduct(
        &mut self,
        due_at: Option<u64>,
        id: ReservationId,
    ) -> Result<Vec<Allocation>, EngineError> {
        validate::minted_on(id.shard(), self.shard)?;
        let reservation = match self.reservations.entry(id) {
            Entry::Occupied(live) if due_at.is_some_and(|now| live.get().expires_at_ms <= now) => {
                return Err(EngineError::ReservationExpired {
                    reservation_id: id,
                    expired_at_ms: live.get().expires_at_ms,
                });
            }
            Entry::Occupied(live) => live.remove(),
            Entry::Vacant(_) => return Err(EngineError::UnknownReservation { reservation_id: id }),
        };
        self.unindex_expiry(&reservation);
        for a in &reservation.allocations {
            let w = self.stock_mut(a);
            let qty = u64::from(a.qty);
            w.reserved -= qty;
            w.on_hand -= qty;
            w.deducted += qty;
        }
        Ok(reservation.allocations)
    }

    pub(crate) fn tick(
        &mut self,
        now: u64,
        expire: &[ReservationId],
    ) -> Result<Outcome, EngineError> {
        if expire.len() > TICK_EXPIRIES_MAX {
            return Err(invalid(
                "expire",
                format!(
                    "{} entries exceed TICK_EXPIRIES_MAX ({TICK_EXPIRIES_MAX})",
                    expire.len()
                ),
            ));
        }
        let mut expired = 0u32;
        for &id in expire {
            let due = self
                .reservations
                .get(&id)
                .is_some_and(|r| r.expires_at_ms <= now);
            if due {
                self.release(id)?;
                expired += 1;
            }
        }
        let mut pruned = 0u32;
        while (pruned as usize) < TICK_PRUNES_MAX {
            let Some(first) = self.idempotency_expiries.first() else {
                break;
            };
            if first.0 > now {
                break;
            }
            if let Some((_, key)) = self.idempotency_expiries.pop_first() {
                self.idempotency.remove(&key);
                pruned += 1;
            }
        }
        pruned += self.prune_commerce(now);
        Ok(Outcome::Ticked { expired, pruned })
    }

    fn take_reservation(&mut self, id: ReservationId) -> Result<Reservation, EngineError> {
        let reservation = self
            .reservations
            .remove(&id)
            .ok_or(EngineError::UnknownReservation { reservation_id: id })?;
        self.unindex_expiry(&reservation);
        Ok(reservation)
    }

    /// Removes a reservation taken out of `reservations` from the expiry index.
    fn unindex_expiry(&mut self, reservation: &Reservation) {
        let id = reservation.id;
        let removed = self.expiries.remove(&(reservation.expires_at_ms, id));
        assert!(
            removed,
            "expiry index lost reservation {id} on shard {}",
            self.shard
        );
    }

    /// The stock entry an allocation of a live reservation points at.
    ///
    /// # Panics
    /// If it is missing: a live reservation's SKU and warehouse are never
    /// deleted, so this is a broken invariant, not input.
    fn stock_mut(&mut self, a: &Allocation) -> &mut WarehouseStock {
        let shard = self.shard;
        self.skus
            .get_mut(a.sku.as_str())
            .and_then(|s| s.warehouses.iter_mut().find(|w| w.warehouse == a.warehouse))
            .unwrap_or_else(|| {
                panic!(
                    "shard {shard}: allocation points at missing stock {}/{}",
                    a.sku, a.warehouse
                )
            })
    }
}

/// Fills `avail` with the units each warehouse of `sku` can still give,
/// after what earlier lines of the same request (`plan`) already hold.
fn available_after(sku: &Sku, plan: &[Allocation], avail: &mut [u64]) {
    let repeated = plan.iter().any(|a| a.sku == sku.sku);
    for (slot, w) in avail.iter_mut().zip(&sku.warehouses) {
        let taken: u64 = if repeated {
            plan.iter()
                .filter(|a| a.sku == sku.sku && a.warehouse == w.warehouse)
                .map(|a| u64::from(a.qty))
                .sum()
        } else {
            0
        };
        *slot = w.available() - taken;
    }
}

/// The first warehouse in routing order that can ship `want` units at once.
///
/// Same answer as searching [`routing_order`], without building it: if no
/// preferred warehouse can ship the line, each has less than `want`, so the
/// most available warehouse overall (first on ties) is the first of the
/// others in routing order, and it can ship the line iff anyone can.
fn whole_line_warehouse(
    sku: &Sku,
    avail: &[u64],
    preference: &[String],
    want: u64,
) -> Option<usize> {
    for p in preference {
        if let Some(i) = sku.warehouses.iter().position(|w| &w.warehouse == p)
            && avail[i] >= want
        {
            return Some(i);
        }
    }
    let mut best: Option<usize> = None;
    for (i, &a) in avail.iter().enumerate() {
        if best.is_none_or(|b| a > avail[b]) {
            best = Some(i);
        }
    }
    best.filter(|&b| avail[b] >= want)
}

/// Splits a line no single warehouse can ship over warehouses in routing
/// order. The caller checked that `avail` adds up to at least `want`.
fn split_line(
    sku: &Sku,
    avail: &[u64],
    preference: &[String],
    want: u64,
    plan: &mut Vec<Allocation>,
) {
    let mut left = want;
    for w in routing_order(sku, avail, preference) {
        let take = left.min(avail[w]);
        if take > 0 {
            plan.push(allocation(sku, w, take));
            left -= take;
        }
        if left == 0 {
            break;
        }
    }
    debug_assert_eq!(left, 0);
}

/// `qty` units of `sku` held in its warehouse number `w`.
fn allocation(sku: &Sku, w: usize, qty: u64) -> Allocation {
    Allocation {
        sku: sku.sku.clone(),
        warehouse: sku.warehouses[w].warehouse.clone(),
        // A line's units are at most LINE_QTY_MAX, so any part of them fits.
        qty: qty as u32,
    }
}

/// Warehouse indexes in routing order: preferred ones first (in the given
/// order), then the rest by most available, ties by stocking order.
fn routing_order(sku: &Sku, avail: &[u64], preference: &[String]) -> Vec<usize> {
    let mut order: Vec<usize> = Vec::with_capacity(sku.warehouses.len());
    for p in preference {
        if let Some(i) = sku.warehouses.iter().position(|w| &w.warehouse == p)
            && !order.contains(&i)
        {
            order.push(i);
        }
    }
    let mut rest: Vec<usize> = (0..sku.warehouses.len())
        .filter(|i| !order.contains(i))
        .collect();
    rest.sort_by(|&a, &b| avail[b].cmp(&avail[a]).then(a.cmp(&b)));
    order.extend(rest);
    order
}

fn below_reserved(
    sku: &str,
    warehouse: &str,
    reserved: u64,
    requested_on_hand: i128,
) -> EngineError {
    EngineError::BelowReserved {
        sku: sku.to_owned(),
        warehouse: warehouse.to_owned(),
        reserved,
        requested_on_hand,
    }
}

pub(crate) fn check_money(field: impl Display, m: Money) -> Result<(), EngineError> {
    if !m.currency.is_valid() {
        return Err(invalid(
            format!("{field}.currency"),
            "must be three upper-case ASCII letters (ISO 4217)",
        ));
    }
    if m.amount_minor > PRICE_MINOR_MAX {
        return Err(invalid(
            format!("{field}.amount_minor"),
            format!(
                "{} exceeds PRICE_MINOR_MAX ({PRICE_MINOR_MAX})",
                m.amount_minor
            ),
        ));
    }
    Ok(())
}

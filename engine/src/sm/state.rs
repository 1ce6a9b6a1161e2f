//! One logical shard's state and the dispatch of commands to it.
//!
//! `apply(now, request)` is the only way state changes. It is deterministic:
//! no clock, no randomness, no I/O, and no dependence on hash-map iteration
//! order (ordered indexes drive everything that walks over many records).
//! A refused command leaves the state exactly as it was: every operation
//! validates and plans first, then mutates.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

use crate::ids::{CheckoutId, OrderId, ReservationId, ReturnId, ShardId};
use crate::limits::{IDEMPOTENCY_RECORDS_MAX, IDEMPOTENCY_RETENTION_MS, SEQUENCE_MAX, SHARD_COUNT};
use crate::sm::command::{Command, Outcome, Request};
use crate::sm::commerce::{CardUses, Checkout, CreditAccount, UserRecord};
use crate::sm::error::{EngineError, limit_reached};
use crate::sm::types::{CartItem, Order, Reservation, Sku};
use crate::sm::validate;

pub(crate) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A remembered outcome of a keyed request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct IdempotencyRecord {
    /// The key.
    pub key: String,
    /// Fingerprint of the command the key was first used with.
    pub fingerprint: u64,
    /// What it answered.
    pub outcome: Outcome,
    /// When the record stops answering (Unix ms).
    pub expires_at_ms: u64,
}

/// The result of applying a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// What to answer.
    pub outcome: Outcome,
    /// True if the state changed and the request must be logged; false for an
    /// idempotent replay of an earlier success.
    pub is_new: bool,
}

/// The state of one logical shard.
#[derive(Debug, Clone)]
pub struct ShardState {
    pub(crate) shard: ShardId,
    /// Time of the last state change (Unix ms); `apply` never moves it back.
    pub(crate) clock_ms: u64,
    pub(crate) next_reservation_seq: u64,
    pub(crate) next_order_seq: u64,
    pub(crate) skus: Map<String, Sku>,
    /// `(seller_id, sku)` of every SKU (derived from the SKUs).
    pub(crate) skus_by_seller: BTreeSet<(String, String)>,
    pub(crate) reservations: Map<ReservationId, Reservation>,
    /// `(expires_at_ms, id)` of every live reservation.
    pub(crate) expiries: BTreeSet<(u64, ReservationId)>,
    pub(crate) orders: Map<OrderId, Order>,
    /// Orders of each user, oldest first.
    pub(crate) orders_by_user: Map<String, Vec<OrderId>>,
    /// Non-empty carts; items sorted by SKU.
    pub(crate) carts: Map<String, Vec<CartItem>>,
    /// Non-empty wishlists; items sorted by SKU.
    pub(crate) wishlists: Map<String, Vec<CartItem>>,
    pub(crate) idempotency: Map<String, IdempotencyRecord>,
    /// `(expires_at_ms, key)` of every idempotency record.
    pub(crate) idempotency_expiries: BTreeSet<(u64, String)>,
    pub(crate) next_checkout_seq: u64,
    pub(crate) next_return_seq: u64,
    /// Running checkouts and finished ones within their retention.
    pub(crate) checkouts: Map<CheckoutId, Checkout>,
    /// `(forget_at_ms, id)` of every finished checkout.
    pub(crate) checkout_expiries: BTreeSet<(u64, CheckoutId)>,
    /// Store-credit accounts by user.
    pub(crate) credit: Map<String, CreditAccount>,
    /// What the fraud rules remember per user.
    pub(crate) users: Map<String, UserRecord>,
    /// Recent uses per card fingerprint (cards whose shard this is).
    pub(crate) cards: Map<u64, CardUses>,
    /// `(last_use_ms, fingerprint)` of every tracked card.
    pub(crate) card_expiries: BTreeSet<(u64, u64)>,
    /// Which order each return belongs to (derived from the orders).
    pub(crate) returns: Map<ReturnId, OrderId>,
    /// Orders with side effects not done yet (derived from the orders).
    pub(crate) pending_effects: BTreeSet<OrderId>,
}

impl ShardState {
    /// An empty shard.
    ///
    /// # Panics
    /// If `shard >= SHARD_COUNT` (a programming error, not input).
    pub fn new(shard: ShardId) -> Self {
        assert!(shard < SHARD_COUNT, "shard {shard} out of range");
        ShardState {
            shard,
            clock_ms: 0,
            next_reservation_seq: 1,
            next_order_seq: 1,
            skus: Map::default(),
            skus_by_seller: BTreeSet::new(),
            reservations: Map::default(),
            expiries: BTreeSet::new(),
            orders: Map::default(),
            orders_by_user: Map::default(),
            carts: Map::default(),
            wishlists: Map::default(),
            idempotency: Map::default(),
            idempotency_expiries: BTreeSet::new(),
            next_checkout_seq: 1,
            next_return_seq: 1,
            checkouts: Map::default(),
            checkout_expiries: BTreeSet::new(),
            credit: Map::default(),
            users: Map::default(),
            cards: Map::default(),
            card_expiries: BTreeSet::new(),
            returns: Map::default(),
            pending_effects: BTreeSet::new(),
        }
    }

    /// Applies one request at time `now_ms` (the batch time the server stamped).
    ///
    /// A clock that moved backwards is clamped to the last applied time, so
    /// deadlines never move.
    pub fn apply(&mut self, now_ms: u64, request: &Request) -> Result<Applied, EngineError> {
        let now = now_ms.max(self.clock_ms);
        let Some(key) = &request.idempotency_key else {
            let outcome = self.execute(now, &request.command)?;
            self.clock_ms = now;
            return Ok(Applied {
                outcome,
                is_new: true,
            });
        };
        validate::id("idempotency_key", key)?;
        let fingerprint = fingerprint(&request.command);
        if let Some(record) = self.idempotency.get(key.as_str())
            && record.expires_at_ms > now
        {
            if record.fingerprint != fingerprint {
                return Err(EngineError::IdempotencyConflict { key: key.clone() });
            }
            return Ok(Applied {
                outcome: record.outcome.clone(),
                is_new: false,
            });
        }
        if self.idempotency.len() >= IDEMPOTENCY_RECORDS_MAX
            && !self.idempotency.contains_key(key.as_str())
        {
            return Err(limit_reached(
                "IDEMPOTENCY_RECORDS_MAX",
                IDEMPOTENCY_RECORDS_MAX as u64,
            ));
        }
        let outcome = self.execute(now, &request.command)?;
        self.clock_ms = now;
        self.remember(key, fingerprint, &outcome, now);
        Ok(Applied {
            outcome,
            is_new: true,
        })
    }

    fn remember(&mut self, key: &str, fingerprint: u64, outcome: &Outcome, now: u64) {
        let expires_at_ms = now.saturating_add(IDEMPOTENCY_RETENTION_MS);
        let record = IdempotencyRecord {
            key: key.to_owned(),
            fingerprint,
            outcome: outcome.clone(),
            expires_at_ms,
        };
        if let Some(old) = self.idempotency.insert(key.to_owned(), record) {
            // Only an aged-out record can be replaced (a live one answered above).
            debug_assert!(old.expires_at_ms <= now);
            self.idempotency_expiries
                .remove(&(old.expires_at_ms, old.key));
        }
        self.idempotency_expiries
            .insert((expires_at_ms, key.to_owned()));
    }

    fn execute(&mut self, now: u64, command: &Command) -> Result<Outcome, EngineError> {
        match command {
            Command::UpsertSku {
                sku,
                seller_id,
                title,
                price,
            } => self.upsert_sku(sku, seller_id, title, *price),
            Command::SetStock {
                sku,
                warehouse,
                on_hand,
            } => self.set_stock(sku, warehouse, *on_hand),
            Command::AdjustStock {
                sku,
                warehouse,
                delta,
            } => self.adjust_stock(sku, warehouse, *delta),
            Command::Reserve {
                owner,
                lines,
                ttl_ms,
                warehouse_preference,
            } => self.reserve(now, owner, lines, *ttl_ms, warehouse_preference),
            Command::Release { reservation_id } => self.release(*reservation_id),
            Command::Confirm { reservation_id } => self.confirm(now, *reservation_id),
            Command::Restock {
                sku,
                warehouse,
                qty,
            } => self.restock(sku, warehouse, *qty),
            Command::CreateOrder {
                user_id,
                lines,
                ship_to,
            } => self.create_order(now, user_id, lines, ship_to),
            Command::SetOrderStatus {
                order_id,
                status,
                note,
            } => self.set_order_status(now, *order_id, *status, note),
            Command::CartSet { user_id, sku, qty } => self.cart_set(user_id, sku, *qty),
            Command::CartRemove { user_id, sku } => self.cart_remove(user_id, sku),
            Command::CartClear { user_id } => self.cart_clear(user_id),
            Command::Tick { expire } => self.tick(now, expire),
            Command::Commerce(c) => self.commerce(now, c),
        }
    }

    /// Mints the next sequence number from `counter`.
    pub(crate) fn mint(counter: &mut u64) -> Result<u64, EngineError> {
        if *counter > SEQUENCE_MAX {
            return Err(limit_reached("SEQUENCE_MAX", SEQUENCE_MAX));
        }
        let seq = *counter;
        *counter += 1;
        Ok(seq)
    }

    // ---- queries (read-only; never logged) ----

    /// This shard's number.
    pub fn shard(&self) -> ShardId {
        self.shard
    }
    /// Time of the last applied change (Unix ms).
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }
    /// A SKU and its stock.
    pub fn sku(&self, sku: &str) -> Option<&Sku> {
        self.skus.get(sku)
    }
    /// A live reservation.
    pub fn reservation(&self, id: ReservationId) -> Option<&Reservation> {
        self.reservations.get(&id)
    }
    /// An order.
    pub fn order(&self, id: OrderId) -> Option<&Order> {
        self.orders.get(&id)
    }
    /// A user's orders, oldest first.
    pub fn orders_of(&self, user_id: &str) -> impl Iterator<Item = &Order> {
        let ids = self
            .orders_by_user
            .get(user_id)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        ids.iter().filter_map(|id| self.orders.get(id))
    }
    /// A user's cart, sorted by SKU (empty if none).
    pub fn cart(&self, user_id: &str) -> &[CartItem] {
        self.carts.get(user_id).map(Vec::as_slice).unwrap_or(&[])
    }
    /// A user's wishlist, sorted by SKU (empty if none).
    pub fn wishlist(&self, user_id: &str) -> &[CartItem] {
        self.wishlists
            .get(user_id)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
    /// Every SKU, in no particular order.
    pub fn skus(&self) -> impl Iterator<Item = &Sku> {
        self.skus.values()
    }
    /// Every live reservation, in no particular order.
    pub fn reservations(&self) -> impl Iterator<Item = &Reservation> {
        self.reservations.values()
    }
    /// Every order, in no particular order.
    pub fn orders(&self) -> impl Iterator<Item = &Order> {
        self.orders.values()
    }
    /// A checkout (running, or finished within its retention).
    pub fn checkout(&self, id: CheckoutId) -> Option<&Checkout> {
        self.checkouts.get(&id)
    }
    /// What the fraud rules remember of a user, if anything.
    pub fn user(&self, user_id: &str) -> Option<&UserRecord> {
        self.users.get(user_id)
    }
    /// Every checkout, in no particular order.
    pub fn checkouts(&self) -> impl Iterator<Item = &Checkout> {
        self.checkouts.values()
    }
    /// A user's store-credit account.
    pub fn credit_account(&self, user_id: &str) -> Option<&CreditAccount> {
        self.credit.get(user_id)
    }
    /// Every store-credit account, in no particular order.
    pub fn credit_accounts(&self) -> impl Iterator<Item = &CreditAccount> {
        self.credit.values()
    }
    /// Orders with side effects (restocks, payment calls) not done yet.
    pub fn orders_with_pending_effects(&self) -> impl Iterator<Item = OrderId> + '_ {
        self.pending_effects.iter().copied()
    }
    /// The order a return belongs to.
    pub fn order_of_return(&self, id: ReturnId) -> Option<&crate::sm::types::Order> {
        self.returns.get(&id).and_then(|o| self.orders.get(o))
    }
    /// Counts for stats: (skus, live reservations, orders, idempotency records).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        (
            self.skus.len(),
            self.reservations.len(),
            self.orders.len(),
            self.idempotency.len(),
        )
    }

    /// Up to `max` live reservations whose deadline is at or before `now_ms`,
    /// earliest first: what the next `Tick` should expire.
    pub fn due_expirations(&self, now_ms: u64, max: usize) -> Vec<ReservationId> {
        self.expiries
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .take(max)
            .map(|(_, id)| *id)
            .collect()
    }

    /// The earliest deadline (reservation expiry or idempotency retention) at
    /// which a `Tick` has work, if any.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let r = self.expiries.first().map(|(at, _)| *at);
        [r, self.next_housekeeping_deadline_ms()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The earliest deadline of a `Tick`'s work other than expiring
    /// reservations (idempotency retention, finished checkouts, card memory).
    pub fn next_housekeeping_deadline_ms(&self) -> Option<u64> {
        let i = self.idempotency_expiries.first().map(|(at, _)| *at);
        let c = self.next_commerce_deadline_ms();
        [i, c].into_iter().flatten().min()
    }
}

/// FNV-1a, 64 bit: a stable hash for fingerprints and checksums (the standard
/// library's hasher may change between releases, and these values are stored).
#[derive(Debug, Clone)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The fingerprint of a command, stored with its idempotency key.
pub fn fingerprint(command: &Command) -> u64 {
    let mut h = Fnv64::default();
    command.hash(&mut h);
    h.finish()
}

//! The canonical image of a shard's state: what a snapshot stores, what the
//! checksum covers, and the full invariant check.
//!
//! The image lists every record sorted by key, so two states that are equal
//! have byte-identical images whatever order their hash maps are in.

use std::hash::{Hash, Hasher};

use crate::ids::{OrderId, ReservationId, ShardId};
use crate::limits::{CHECKOUT_RETENTION_MS, SHARD_COUNT};
use crate::sm::commerce::{CardUses, Checkout, CreditAccount, UserRecord};
use crate::sm::state::{Fnv64, IdempotencyRecord, Map, ShardState};
use crate::sm::types::{
    CartItem, Money, Order, OrderLine, OrderStatus, Reservation, Sku, StatusChange,
};
use crate::sm::validate;

/// Version of [`StateImage`]'s layout, stored in every snapshot.
pub const IMAGE_VERSION: u32 = 3;

/// A user's cart in the image.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct CartImage {
    /// Owner.
    pub user_id: String,
    /// Items sorted by SKU.
    pub items: Vec<CartItem>,
}

/// The whole state of a shard in canonical (sorted) form.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct StateImage {
    /// [`IMAGE_VERSION`] at the time of writing.
    pub version: u32,
    /// Shard number.
    pub shard: ShardId,
    /// Time of the last applied change.
    pub clock_ms: u64,
    /// Next reservation sequence number.
    pub next_reservation_seq: u64,
    /// Next order sequence number.
    pub next_order_seq: u64,
    /// SKUs sorted by id.
    pub skus: Vec<Sku>,
    /// Live reservations sorted by id.
    pub reservations: Vec<Reservation>,
    /// Orders sorted by id.
    pub orders: Vec<Order>,
    /// Carts sorted by user.
    pub carts: Vec<CartImage>,
    /// Idempotency records sorted by key.
    pub idempotency: Vec<IdempotencyRecord>,
    /// Next checkout sequence number (image version 2).
    pub next_checkout_seq: u64,
    /// Next return sequence number (image version 2).
    pub next_return_seq: u64,
    /// Checkouts sorted by id (image version 2).
    pub checkouts: Vec<Checkout>,
    /// Store-credit accounts sorted by user (image version 2).
    pub credit: Vec<CreditAccount>,
    /// Fraud memory per user, sorted by user (image version 2).
    pub users: Vec<UserRecord>,
    /// Card uses sorted by fingerprint (image version 2).
    pub cards: Vec<CardUses>,
    /// Wishlists sorted by user (image version 3).
    pub wishlists: Vec<CartImage>,
}

/// The state image as version 2 stored it (before wishlists); read when
/// opening older snapshots.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct StateImageV2 {
    /// Always 2.
    pub version: u32,
    /// Shard number.
    pub shard: ShardId,
    /// Time of the last applied change.
    pub clock_ms: u64,
    /// Next reservation sequence number.
    pub next_reservation_seq: u64,
    /// Next order sequence number.
    pub next_order_seq: u64,
    /// SKUs sorted by id.
    pub skus: Vec<Sku>,
    /// Live reservations sorted by id.
    pub reservations: Vec<Reservation>,
    /// Orders sorted by id.
    pub orders: Vec<Order>,
    /// Carts sorted by user.
    pub carts: Vec<CartImage>,
    /// Idempotency records sorted by key.
    pub idempotency: Vec<IdempotencyRecord>,
    /// Next checkout sequence number.
    pub next_checkout_seq: u64,
    /// Next return sequence number.
    pub next_return_seq: u64,
    /// Checkouts sorted by id.
    pub checkouts: Vec<Checkout>,
    /// Store-credit accounts sorted by user.
    pub credit: Vec<CreditAccount>,
    /// Fraud memory per user, sorted by user.
    pub users: Vec<UserRecord>,
    /// Card uses sorted by fingerprint.
    pub cards: Vec<CardUses>,
}

impl From<StateImageV2> for StateImage {
    fn from(v2: StateImageV2) -> Self {
        StateImage {
            version: IMAGE_VERSION,
            shard: v2.shard,
            clock_ms: v2.clock_ms,
            next_reservation_seq: v2.next_reservation_seq,
            next_order_seq: v2.next_order_seq,
            skus: v2.skus,
            reservations: v2.reservations,
            orders: v2.orders,
            carts: v2.carts,
            idempotency: v2.idempotency,
            next_checkout_seq: v2.next_checkout_seq,
            next_return_seq: v2.next_return_seq,
            checkouts: v2.checkouts,
            credit: v2.credit,
            users: v2.users,
            cards: v2.cards,
            wishlists: Vec::new(),
        }
    }
}

/// An order as image version 1 stored it (before fulfilment records).
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct OrderV1 {
    /// Id.
    pub id: OrderId,
    /// User.
    pub user_id: String,
    /// Lines.
    pub lines: Vec<OrderLine>,
    /// Total.
    pub total: Money,
    /// Address.
    pub ship_to: String,
    /// Status.
    pub status: OrderStatus,
    /// History.
    pub history: Vec<StatusChange>,
}

/// The state image as version 1 stored it; read when opening older snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct StateImageV1 {
    /// Always 1.
    pub version: u32,
    /// Shard number.
    pub shard: ShardId,
    /// Time of the last applied change.
    pub clock_ms: u64,
    /// Next reservation sequence number.
    pub next_reservation_seq: u64,
    /// Next order sequence number.
    pub next_order_seq: u64,
    /// SKUs sorted by id.
    pub skus: Vec<Sku>,
    /// Live reservations sorted by id.
    pub reservations: Vec<Reservation>,
    /// Orders sorted by id.
    pub orders: Vec<OrderV1>,
    /// Carts sorted by user.
    pub carts: Vec<CartImage>,
    /// Idempotency records sorted by key.
    pub idempotency: Vec<IdempotencyRecord>,
}

impl From<StateImageV1> for StateImage {
    fn from(v1: StateImageV1) -> Self {
        StateImage {
            version: IMAGE_VERSION,
            shard: v1.shard,
            clock_ms: v1.clock_ms,
            next_reservation_seq: v1.next_reservation_seq,
            next_order_seq: v1.next_order_seq,
            skus: v1.skus,
            reservations: v1.reservations,
            orders: v1
                .orders
                .into_iter()
                .map(|o| Order {
                    id: o.id,
                    user_id: o.user_id,
                    lines: o.lines,
                    total: o.total,
                    ship_to: o.ship_to,
                    status: o.status,
                    history: o.history,
                    fulfilment: None,
                })
                .collect(),
            carts: v1.carts,
            idempotency: v1.idempotency,
            next_checkout_seq: 1,
            next_return_seq: 1,
            checkouts: Vec::new(),
            credit: Vec::new(),
            users: Vec::new(),
            cards: Vec::new(),
            wishlists: Vec::new(),
        }
    }
}

// Hashes the version-1 fields as the derived hash of version 1 did, and each
// later group of fields only when it differs from an empty state, so a state
// that does not use them has the same checksum in every image version.
impl Hash for StateImage {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.version.min(1).hash(h);
        self.shard.hash(h);
        self.clock_ms.hash(h);
        self.next_reservation_seq.hash(h);
        self.next_order_seq.hash(h);
        self.skus.hash(h);
        self.reservations.hash(h);
        self.orders.hash(h);
        self.carts.hash(h);
        self.idempotency.hash(h);
        let v2_empty = self.next_checkout_seq == 1
            && self.next_return_seq == 1
            && self.checkouts.is_empty()
            && self.credit.is_empty()
            && self.users.is_empty()
            && self.cards.is_empty();
        if !v2_empty {
            self.next_checkout_seq.hash(h);
            self.next_return_seq.hash(h);
            self.checkouts.hash(h);
            self.credit.hash(h);
            self.users.hash(h);
            self.cards.hash(h);
        }
        if !self.wishlists.is_empty() {
            self.wishlists.hash(h);
        }
    }
}

impl ShardState {
    /// The canonical image of this state.
    pub fn to_image(&self) -> StateImage {
        let mut skus: Vec<Sku> = self.skus.values().cloned().collect();
        skus.sort_by(|a, b| a.sku.cmp(&b.sku));
        let mut reservations: Vec<Reservation> = self.reservations.values().cloned().collect();
        reservations.sort_by_key(|r| r.id);
        let mut orders: Vec<Order> = self.orders.values().cloned().collect();
        orders.sort_by_key(|o| o.id);
        let carts = lists_image(&self.carts);
        let wishlists = lists_image(&self.wishlists);
        let mut idempotency: Vec<IdempotencyRecord> = self.idempotency.values().cloned().collect();
        idempotency.sort_by(|a, b| a.key.cmp(&b.key));
        let mut checkouts: Vec<Checkout> = self.checkouts.values().cloned().collect();
        checkouts.sort_by_key(|c| c.id);
        let mut credit: Vec<CreditAccount> = self.credit.values().cloned().collect();
        credit.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        let mut users: Vec<UserRecord> = self.users.values().cloned().collect();
        users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        let mut cards: Vec<CardUses> = self.cards.values().cloned().collect();
        cards.sort_by_key(|c| c.fingerprint);
        StateImage {
            version: IMAGE_VERSION,
            shard: self.shard,
            clock_ms: self.clock_ms,
            next_reservation_seq: self.next_reservation_seq,
            next_order_seq: self.next_order_seq,
            skus,
            reservations,
            orders,
            carts,
            idempotency,
            next_checkout_seq: self.next_checkout_seq,
            next_return_seq: self.next_return_seq,
            checkouts,
            credit,
            users,
            cards,
            wishlists,
        }
    }

    /// Rebuilds a state (and its indexes) from an image, checking every invariant.
    pub fn from_image(image: StateImage) -> Result<Self, String> {
        if image.version != IMAGE_VERSION {
            return Err(format!(
                "state image version {} is not {IMAGE_VERSION}",
                image.version
            ));
        }
        if image.shard >= SHARD_COUNT {
            return Err(format!("state image names shard {}", image.shard));
        }
        let mut state = ShardState::new(image.shard);
        state.clock_ms = image.clock_ms;
        state.next_reservation_seq = image.next_reservation_seq;
        state.next_order_seq = image.next_order_seq;
        for sku in image.skus {
            state
                .skus_by_seller
                .insert((sku.seller_id.clone(), sku.sku.clone()));
            state.skus.insert(sku.sku.clone(), sku);
        }
        for r in image.reservations {
            state.expiries.insert((r.expires_at_ms, r.id));
            state.reservations.insert(r.id, r);
        }
        state.next_checkout_seq = image.next_checkout_seq;
        state.next_return_seq = image.next_return_seq;
        for c in image.checkouts {
            if c.state.is_terminal() {
                state
                    .checkout_expiries
                    .insert((c.updated_at_ms.saturating_add(CHECKOUT_RETENTION_MS), c.id));
            }
            state.checkouts.insert(c.id, c);
        }
        for a in image.credit {
            state.credit.insert(a.user_id.clone(), a);
        }
        for u in image.users {
            state.users.insert(u.user_id.clone(), u);
        }
        for c in image.cards {
            if let Some(last) = c.uses_ms.last() {
                state.card_expiries.insert((*last, c.fingerprint));
            }
            state.cards.insert(c.fingerprint, c);
        }
        for o in image.orders {
            if let Some(f) = &o.fulfilment {
                for r in &f.returns {
                    state.returns.insert(r.id, o.id);
                }
                if f.has_pending_effects() {
                    state.pending_effects.insert(o.id);
                }
            }
            state
                .orders_by_user
                .entry(o.user_id.clone())
                .or_default()
                .push(o.id);
            state.orders.insert(o.id, o);
        }
        for c in image.carts {
            state.carts.insert(c.user_id, c.items);
        }
        for w in image.wishlists {
            state.wishlists.insert(w.user_id, w.items);
        }
        for rec in image.idempotency {
            state
                .idempotency_expiries
                .insert((rec.expires_at_ms, rec.key.clone()));
            state.idempotency.insert(rec.key.clone(), rec);
        }
        state.check_invariants()?;
        Ok(state)
    }

    /// A 64-bit checksum of the canonical state: equal states, equal checksums.
    pub fn checksum(&self) -> u64 {
        let mut h = Fnv64::default();
        self.to_image().hash(&mut h);
        h.finish()
    }

    /// Checks every invariant of the state, in full (O(size)); a description of
    /// the first violation found.
    ///
    /// 1. No oversell: `reserved <= on_hand` everywhere.
    /// 2. Conservation: `on_hand = added - removed - deducted + returned`, and
    ///    `reserved` equals the sum held by live reservations.
    /// 3. Indexes agree with the records they index; ids belong to this shard
    ///    and are below the next sequence numbers; SKU ids are valid keys of
    ///    this shard.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut held: Map<(&str, &str), u64> = Map::default();
        for r in self.reservations.values() {
            if r.id.shard() != self.shard || r.id.sequence() >= self.next_reservation_seq {
                return Err(format!(
                    "reservation {} was not minted by shard {}",
                    r.id, self.shard
                ));
            }
            if !self.expiries.contains(&(r.expires_at_ms, r.id)) {
                return Err(format!(
                    "reservation {} missing from the expiry index",
                    r.id
                ));
            }
            for a in &r.allocations {
                *held
                    .entry((a.sku.as_str(), a.warehouse.as_str()))
                    .or_default() += u64::from(a.qty);
            }
        }
        if self.expiries.len() != self.reservations.len() {
            return Err("expiry index lists reservations that do not exist".into());
        }
        // Every index entry names a stored SKU with that seller (so no SKU
        // is listed twice), and there are as many entries as SKUs.
        if self.skus_by_seller.len() != self.skus.len() {
            return Err(format!(
                "{} SKUs indexed by seller, {} stored",
                self.skus_by_seller.len(),
                self.skus.len()
            ));
        }
        for (seller, key) in &self.skus_by_seller {
            if self.skus.get(key).map(|s| &s.seller_id) != Some(seller) {
                return Err(format!("sku {key:?} indexed under seller {seller:?}"));
            }
        }
        for (key, sku) in &self.skus {
            // Reservations skip the key checks of SKUs they find stored
            // (`line_sku`), which is sound only while this holds.
            if *key != sku.sku || validate::key_on("sku", key, self.shard).is_err() {
                return Err(format!(
                    "sku {:?} is not a valid key of shard {}",
                    sku.sku, self.shard
                ));
            }
            for w in &sku.warehouses {
                check_stock(
                    sku,
                    w,
                    held.remove(&(sku.sku.as_str(), w.warehouse.as_str()))
                        .unwrap_or(0),
                )?;
            }
        }
        if let Some(((sku, wh), qty)) = held.into_iter().next() {
            return Err(format!(
                "{qty} units held at {sku}/{wh}, which has no stock record"
            ));
        }
        self.check_orders()?;
        self.check_commerce()?;
        self.check_idempotency()
    }

    fn check_orders(&self) -> Result<(), String> {
        let indexed: usize = self.orders_by_user.values().map(Vec::len).sum();
        if indexed != self.orders.len() {
            return Err(format!(
                "{indexed} orders indexed by user, {} stored",
                self.orders.len()
            ));
        }
        for o in self.orders.values() {
            if o.id.shard() != self.shard || o.id.sequence() >= self.next_order_seq {
                return Err(format!(
                    "order {} was not minted by shard {}",
                    o.id, self.shard
                ));
            }
            if o.history.last().map(|h| h.status) != Some(o.status) {
                return Err(format!("order {} status disagrees with its history", o.id));
            }
            let ids: &[OrderId] = self
                .orders_by_user
                .get(&o.user_id)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            if !ids.contains(&o.id) {
                return Err(format!("order {} missing from its user's index", o.id));
            }
        }
        for (what, lists) in [("cart", &self.carts), ("wishlist", &self.wishlists)] {
            for (user, items) in lists {
                if items.is_empty() || !items.windows(2).all(|w| w[0].sku < w[1].sku) {
                    return Err(format!("{what} of {user} is empty or not sorted"));
                }
            }
        }
        Ok(())
    }

    /// Store credit never negative nor over-held; checkouts minted here and
    /// indexed for retention when finished; returns indexed.
    fn check_commerce(&self) -> Result<(), String> {
        for a in self.credit.values() {
            let held: u64 = a.holds.iter().map(|(_, m)| *m).sum();
            if held != a.held_minor || a.held_minor > a.balance_minor {
                return Err(format!(
                    "store credit of {}: held {} (holds sum {held}) over balance {}",
                    a.user_id, a.held_minor, a.balance_minor
                ));
            }
        }
        let mut finished = 0;
        for c in self.checkouts.values() {
            if c.id.shard() != self.shard || c.id.sequence() >= self.next_checkout_seq {
                return Err(format!(
                    "checkout {} was not minted by shard {}",
                    c.id, self.shard
                ));
            }
            if c.state.is_terminal() {
                finished += 1;
            }
        }
        if finished != self.checkout_expiries.len() {
            return Err(format!(
                "{finished} finished checkouts, {} in the retention index",
                self.checkout_expiries.len()
            ));
        }
        let returns: usize = self
            .orders
            .values()
            .filter_map(|o| o.fulfilment.as_ref())
            .map(|f| f.returns.len())
            .sum();
        if returns != self.returns.len() {
            return Err(format!("{returns} returns, {} indexed", self.returns.len()));
        }
        let pending = self
            .orders
            .values()
            .filter(|o| {
                o.fulfilment
                    .as_deref()
                    .is_some_and(|f| f.has_pending_effects())
            })
            .count();
        if pending != self.pending_effects.len() {
            return Err(format!(
                "{pending} orders with pending effects, {} indexed",
                self.pending_effects.len()
            ));
        }
        Ok(())
    }

    fn check_idempotency(&self) -> Result<(), String> {
        if self.idempotency.len() != self.idempotency_expiries.len() {
            return Err("idempotency index size differs from its records".into());
        }
        for rec in self.idempotency.values() {
            if !self
                .idempotency_expiries
                .contains(&(rec.expires_at_ms, rec.key.clone()))
            {
                return Err(format!(
                    "idempotency record {:?} missing from its index",
                    rec.key
                ));
            }
        }
        Ok(())
    }

    /// Total units held by live reservations of `id` (0 if not live).
    pub fn reserved_by(&self, id: ReservationId) -> u64 {
        self.reservations
            .get(&id)
            .map_or(0, |r| r.allocations.iter().map(|a| u64::from(a.qty)).sum())
    }
}

/// Per-user item lists (carts, wishlists) sorted by user.
fn lists_image(lists: &Map<String, Vec<CartItem>>) -> Vec<CartImage> {
    let mut image: Vec<CartImage> = lists
        .iter()
        .map(|(user_id, items)| CartImage {
            user_id: user_id.clone(),
            items: items.clone(),
        })
        .collect();
    image.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    image
}

fn check_stock(sku: &Sku, w: &crate::sm::types::WarehouseStock, held: u64) -> Result<(), String> {
    let at = format!("{}/{}", sku.sku, w.warehouse);
    if w.reserved > w.on_hand {
        return Err(format!(
            "oversold at {at}: reserved {} > on_hand {}",
            w.reserved, w.on_hand
        ));
    }
    let ledger = i128::from(w.added) - i128::from(w.removed) - i128::from(w.deducted)
        + i128::from(w.returned);
    if ledger != i128::from(w.on_hand) {
        return Err(format!(
            "conservation broken at {at}: ledger {ledger} != on_hand {}",
            w.on_hand
        ));
    }
    if held != w.reserved {
        return Err(format!(
            "reserved {} at {at} but live reservations hold {held}",
            w.reserved
        ));
    }
    Ok(())
}

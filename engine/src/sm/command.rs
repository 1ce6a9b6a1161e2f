//! What a shard can be asked to change, and what it answers.
//!
//! A [`Request`] that succeeds is appended to the log as a [`LogEntry`] (the
//! request plus the batch time), so replaying the log re-applies exactly the
//! same requests at exactly the same times.

use crate::ids::{OrderId, ReservationId};
use crate::sm::commerce::{CommerceCommand, CommerceOutcome};
use crate::sm::types::{Allocation, CartItem, Money, OrderLine, OrderStatus, ReserveLine};

/// A mutation, with an optional idempotency key.
///
/// The same key with the same command within the retention window returns the
/// stored outcome without applying anything; with another command it is
/// [`EngineError::IdempotencyConflict`](crate::sm::EngineError::IdempotencyConflict).
/// Only successes are remembered: a request that failed changed nothing, so a
/// retry may succeed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Request {
    /// Idempotency key, at most `ID_BYTES_MAX` bytes, unique per shard.
    pub idempotency_key: Option<String>,
    /// What to do.
    pub command: Command,
}

impl Request {
    /// A request without an idempotency key.
    pub fn new(command: Command) -> Self {
        Request {
            idempotency_key: None,
            command,
        }
    }
    /// A request with an idempotency key.
    pub fn keyed(key: impl Into<String>, command: Command) -> Self {
        Request {
            idempotency_key: Some(key.into()),
            command,
        }
    }
}

/// Every mutation a shard applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum Command {
    /// Creates a SKU or replaces its seller, title and price (stock is kept).
    UpsertSku {
        /// SKU id.
        sku: String,
        /// Owning seller.
        seller_id: String,
        /// Title, at most `TITLE_BYTES_MAX` bytes.
        title: String,
        /// Unit price.
        price: Money,
    },
    /// Sets `on_hand` of a SKU in a warehouse; refused below `reserved`.
    SetStock {
        /// SKU id (must exist).
        sku: String,
        /// Warehouse id (created on first use).
        warehouse: String,
        /// New on-hand count.
        on_hand: u64,
    },
    /// Adds `delta` (may be negative) to `on_hand`; refused below `reserved` or zero.
    AdjustStock {
        /// SKU id (must exist).
        sku: String,
        /// Warehouse id (created on first use when `delta > 0`).
        warehouse: String,
        /// Change of on-hand units, non-zero.
        delta: i64,
    },
    /// Holds stock for every line or for none.
    Reserve {
        /// Holder (a user id).
        owner: String,
        /// Lines to hold.
        lines: Vec<ReserveLine>,
        /// Time-to-live in ms; `None` means `TTL_MS_DEFAULT`.
        ttl_ms: Option<u64>,
        /// Warehouses to prefer, in order; others are used by most available.
        warehouse_preference: Vec<String>,
    },
    /// Gives the held stock back.
    Release {
        /// Reservation to release.
        reservation_id: ReservationId,
    },
    /// Turns the held stock into a deduction from `on_hand`.
    Confirm {
        /// Reservation to confirm (must not have expired).
        reservation_id: ReservationId,
    },
    /// Puts returned units back on hand (a received return).
    Restock {
        /// SKU id (must exist).
        sku: String,
        /// Warehouse receiving the units.
        warehouse: String,
        /// Units returned.
        qty: u32,
    },
    /// Stores a new order in status `placed`.
    CreateOrder {
        /// Who placed it.
        user_id: String,
        /// Lines with captured prices (one currency).
        lines: Vec<OrderLine>,
        /// Shipping address.
        ship_to: String,
    },
    /// Moves an order to another status, if the transition is legal.
    SetOrderStatus {
        /// Order id.
        order_id: OrderId,
        /// New status.
        status: OrderStatus,
        /// Free text kept in the history.
        note: String,
    },
    /// Sets the quantity of a SKU in a user's cart (adds it if absent).
    CartSet {
        /// Cart owner.
        user_id: String,
        /// SKU id (need not live on this shard).
        sku: String,
        /// Units, `1..=LINE_QTY_MAX`.
        qty: u32,
    },
    /// Removes a SKU from a user's cart.
    CartRemove {
        /// Cart owner.
        user_id: String,
        /// SKU id.
        sku: String,
    },
    /// Empties a user's cart.
    CartClear {
        /// Cart owner.
        user_id: String,
    },
    /// Housekeeping the server issues when its clock passes deadlines:
    /// releases the listed reservations that are due and prunes idempotency
    /// records older than the retention window. Logged like any command, so
    /// expiry happens exactly once and replays identically.
    Tick {
        /// Reservations to expire (each must be live and due, else skipped).
        expire: Vec<ReservationId>,
    },
    /// Checkouts, payments, fraud, fulfilment and returns (kinds 14..=49; boxed
    /// so that the archived size of every other command stays as it was).
    Commerce(Box<CommerceCommand>),
}

impl Command {
    /// The record kind this command is logged under (stable; see `docs/log-format.md`).
    pub fn kind(&self) -> u16 {
        match self {
            Command::UpsertSku { .. } => 1,
            Command::SetStock { .. } => 2,
            Command::AdjustStock { .. } => 3,
            Command::Reserve { .. } => 4,
            Command::Release { .. } => 5,
            Command::Confirm { .. } => 6,
            Command::Restock { .. } => 7,
            Command::CreateOrder { .. } => 8,
            Command::SetOrderStatus { .. } => 9,
            Command::CartSet { .. } => 10,
            Command::CartRemove { .. } => 11,
            Command::CartClear { .. } => 12,
            Command::Tick { .. } => 13,
            Command::Commerce(c) => c.kind(),
        }
    }
}

/// What a successful command answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum Outcome {
    /// `UpsertSku`: whether the SKU was new.
    SkuUpserted {
        /// True if the SKU did not exist before.
        created: bool,
    },
    /// `SetStock`, `AdjustStock`, `Restock`: the warehouse's stock afterwards.
    Stock {
        /// On-hand units.
        on_hand: u64,
        /// Reserved units.
        reserved: u64,
    },
    /// `Reserve`.
    Reserved {
        /// The new reservation.
        reservation_id: ReservationId,
        /// Deadline (Unix ms).
        expires_at_ms: u64,
        /// Where each line is held.
        allocations: Vec<Allocation>,
    },
    /// `Release`.
    Released,
    /// `Confirm`: the units deducted.
    Confirmed {
        /// What was deducted, per warehouse.
        allocations: Vec<Allocation>,
    },
    /// `CreateOrder`.
    OrderCreated {
        /// The new order.
        order_id: OrderId,
        /// Its total.
        total: Money,
    },
    /// `SetOrderStatus`.
    OrderStatusChanged {
        /// Status before.
        from: OrderStatus,
        /// Status now.
        to: OrderStatus,
    },
    /// `CartSet`, `CartRemove`, `CartClear`: the cart afterwards.
    Cart {
        /// Items, sorted by SKU.
        items: Vec<CartItem>,
    },
    /// `Tick`.
    Ticked {
        /// Reservations released by expiry.
        expired: u32,
        /// Idempotency records pruned.
        pruned: u32,
    },
    /// `Commerce` commands.
    Commerce(Box<CommerceOutcome>),
}

/// One log record's payload: a request that succeeded and the batch time it was applied at.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct LogEntry {
    /// Shard clock when the request was applied (Unix ms).
    pub now_ms: u64,
    /// The request.
    pub request: Request,
}

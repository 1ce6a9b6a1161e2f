//! The messages frames carry: one Rust type per opcode, archived with rkyv.

use reserva_engine::ids::{CheckoutId, OrderId, ReservationId, ReturnId, ShardId};
use reserva_engine::limits::SHARD_COUNT;
use reserva_engine::sm::{
    CartItem, Checkout, CreditAccount, Money, Order, OrderStatus, Outcome, Request, Reservation,
    Sku,
};

use crate::error::WireError;
use crate::limits::{ADDR_BYTES_MAX, CORES_MAX};

/// `HELLO` (client -> server): the first frame of every connection.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Hello {
    /// The protocol version the client speaks ([`PROTOCOL_VERSION`](crate::limits::PROTOCOL_VERSION)).
    pub protocol_version: u16,
    /// The client's secret, at most `CREDENTIAL_BYTES_MAX` bytes.
    pub credential: String,
    /// A name for logs and metrics, at most `CLIENT_NAME_BYTES_MAX` bytes.
    pub client_name: String,
}

/// `HELLO_OK` (server -> client): the handshake's answer.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct HelloOk {
    /// The server's build version, for logs.
    pub server_version: String,
    /// The node's id.
    pub node_id: String,
    /// Which core owns each shard, and where each core listens.
    pub shard_map: ShardMap,
    /// Largest frame payload the server accepts, in bytes.
    pub frame_bytes_max: u32,
    /// Most operations the server accepts in one `BATCH`.
    pub batch_ops_max: u32,
}

/// Which core owns each of the [`SHARD_COUNT`] logical shards.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ShardMap {
    /// Bumped on every change; a newer map replaces an older one.
    pub version: u64,
    /// `owners[shard]` is the core owning `shard`; exactly `SHARD_COUNT` entries.
    pub owners: Vec<u16>,
    /// Every core that owns a shard, with its own listener.
    pub cores: Vec<CoreEndpoint>,
}

/// One core's listener.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct CoreEndpoint {
    /// Core number.
    pub core: u16,
    /// `"ip:port"` of the core's own listener (IPv6 in brackets). An
    /// unspecified ip (`0.0.0.0`, `[::]`) means "the address you reached the
    /// node at".
    pub addr: String,
}

impl ShardMap {
    /// The core owning `shard`, if the map names one.
    pub fn owner_of(&self, shard: ShardId) -> Option<u16> {
        self.owners.get(usize::from(shard)).copied()
    }

    /// The listener of `core`, if the map lists it.
    pub fn endpoint(&self, core: u16) -> Option<&CoreEndpoint> {
        self.cores.iter().find(|c| c.core == core)
    }

    /// Checks what a peer must be able to rely on: one owner per shard, every
    /// owner listed once among the cores, bounded sizes.
    pub fn validate(&self) -> Result<(), String> {
        if self.owners.len() != usize::from(SHARD_COUNT) {
            return Err(format!(
                "shard map has {} owners, expected {SHARD_COUNT}",
                self.owners.len()
            ));
        }
        if self.cores.is_empty() || self.cores.len() > CORES_MAX {
            return Err(format!(
                "shard map lists {} cores, expected 1..={CORES_MAX}",
                self.cores.len()
            ));
        }
        for (i, c) in self.cores.iter().enumerate() {
            if c.addr.is_empty() || c.addr.len() > ADDR_BYTES_MAX {
                return Err(format!(
                    "core {} address has {} bytes, expected 1..={ADDR_BYTES_MAX}",
                    c.core,
                    c.addr.len()
                ));
            }
            if self.cores[..i].iter().any(|o| o.core == c.core) {
                return Err(format!("core {} is listed twice", c.core));
            }
        }
        for (shard, owner) in self.owners.iter().enumerate() {
            if self.endpoint(*owner).is_none() {
                return Err(format!(
                    "shard {shard} is owned by core {owner}, which has no endpoint"
                ));
            }
        }
        Ok(())
    }
}

/// `BATCH` (client -> server): operations answered together by one `RESULTS`.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Batch {
    /// At most `batch_ops_max` operations, each routed to a shard of this core.
    pub ops: Vec<Op>,
    /// The time the sender still waits for these operations, in ms, counted
    /// from when the server reads the frame (0: no deadline). An operation
    /// not applied within it is answered `DeadlineExceeded` and never
    /// applied; one that would wait longer is refused at once.
    pub timeout_ms: u32,
}

/// `RESULTS` (server -> client): one result per operation of the `BATCH`
/// with the same request id, in the same order.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Results {
    /// `results[i]` answers `ops[i]`.
    pub results: Vec<OpResult>,
}

/// The answer to one operation.
pub type OpResult = Result<Reply, WireError>;

/// One operation of a batch.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum Op {
    /// A state-machine mutation (logged, durable once answered).
    Mutate(Request),
    /// A read of one shard's state (never logged).
    Query(Query),
}

impl Op {
    /// Whether the operation changes state.
    pub fn is_mutation(&self) -> bool {
        matches!(self, Op::Mutate(_))
    }

    /// The idempotency key of a mutation, if it has one.
    pub fn idempotency_key(&self) -> Option<&str> {
        match self {
            Op::Mutate(r) => r.idempotency_key.as_deref(),
            Op::Query(_) => None,
        }
    }

    /// Gives a mutation without a key the key `make()` returns, so that every
    /// retry of it carries the same key. Queries and keyed mutations are left
    /// as they are.
    pub fn ensure_idempotency_key(&mut self, make: impl FnOnce() -> String) {
        if let Op::Mutate(r) = self
            && r.idempotency_key.is_none()
        {
            r.idempotency_key = Some(make());
        }
    }
}

/// A read of one shard.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum Query {
    /// A SKU with its stock per warehouse. Answer: [`Reply::Sku`].
    GetSku {
        /// SKU id.
        sku: String,
    },
    /// A live reservation. Answer: [`Reply::Reservation`].
    GetReservation {
        /// Reservation id.
        id: ReservationId,
    },
    /// An order. Answer: [`Reply::Order`].
    GetOrder {
        /// Order id.
        id: OrderId,
    },
    /// A page of a user's orders, oldest first. Answer: [`Reply::Orders`].
    ListOrders {
        /// The user.
        user_id: String,
        /// Start after this order (the `next` of the previous page).
        after: Option<OrderId>,
        /// Page size, `1..=LIST_ORDERS_LIMIT_MAX`.
        limit: u32,
    },
    /// A user's cart. Answer: [`Reply::Cart`] (empty if none).
    GetCart {
        /// The user.
        user_id: String,
    },
    /// Counters of one shard. Answer: [`Reply::ShardStats`].
    ShardStats {
        /// The shard, `0..SHARD_COUNT`.
        shard: u16,
    },
    /// A checkout (running, or finished within its retention). Answer: [`Reply::Checkout`].
    GetCheckout {
        /// Checkout id.
        id: CheckoutId,
    },
    /// A user's store-credit account. Answer: [`Reply::Credit`] (`None` if none).
    GetCredit {
        /// The user.
        user_id: String,
    },
    /// The order a return belongs to. Answer: [`Reply::Order`].
    GetReturn {
        /// Return id.
        id: ReturnId,
    },
    /// One shard's SKUs of a seller (a scatter-gather leg), sorted by SKU.
    /// Answer: [`Reply::SellerSkus`].
    SellerSkus {
        /// The shard, `0..SHARD_COUNT`.
        shard: u16,
        /// The seller.
        seller_id: String,
        /// Only SKUs with at most this many units available (low stock).
        available_max: Option<u64>,
        /// Most SKUs to answer, `1..=SELLER_SKUS_LIMIT_MAX`.
        limit: u32,
    },
    /// One shard's orders that contain any of `skus`, newest first, strictly
    /// older than `before` (a scatter-gather leg). Answer: [`Reply::SellerOrders`].
    SellerOrders {
        /// The shard, `0..SHARD_COUNT`.
        shard: u16,
        /// The seller's SKUs, sorted, at most `SKU_FILTER_MAX`.
        skus: Vec<String>,
        /// Only orders in this status.
        status: Option<OrderStatus>,
        /// Only orders placed before this key (newest first paging).
        before: Option<OrderKey>,
        /// Most orders to answer, `1..=LIST_ORDERS_LIMIT_MAX`.
        limit: u32,
    },
    /// Sales of `skus` in orders placed in `[from_ms, to_ms)` on one shard
    /// (a scatter-gather leg). Answer: [`Reply::SellerAnalytics`].
    SellerAnalytics {
        /// The shard, `0..SHARD_COUNT`.
        shard: u16,
        /// The seller's SKUs, sorted, at most `SKU_FILTER_MAX`.
        skus: Vec<String>,
        /// Start of the range (Unix ms, inclusive).
        from_ms: u64,
        /// End of the range (Unix ms, exclusive).
        to_ms: u64,
    },
    /// Recent changes to a user's cart and orders, kept by the server in a
    /// bounded, non-durable ring per shard. Answer: [`Reply::UserEvents`].
    UserEvents {
        /// The user.
        user_id: String,
        /// Events after this sequence number; `None`: none, only the current position.
        after: Option<u64>,
        /// Most events to answer, `1..=USER_EVENTS_LIMIT_MAX`.
        limit: u32,
    },
    /// A user's wishlist. Answer: [`Reply::Wishlist`] (empty if none).
    GetWishlist {
        /// The user.
        user_id: String,
    },
}

/// Where an order sorts in cross-shard listings: placement time, then id.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct OrderKey {
    /// When the order was placed (Unix ms, its first history entry).
    pub at_ms: u64,
    /// The order.
    pub id: OrderId,
}

/// A SKU in a seller listing.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct SkuSummary {
    /// SKU id.
    pub sku: String,
    /// Title.
    pub title: String,
    /// Units available over all warehouses.
    pub available: u64,
    /// Units on hand over all warehouses.
    pub on_hand: u64,
}

/// Sales of one SKU in one currency.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct SkuSales {
    /// SKU id.
    pub sku: String,
    /// Units sold.
    pub units: u64,
    /// Revenue (sum of `qty * unit_price`).
    pub revenue: Money,
}

/// One shard's part of a seller's analytics.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct SalesSummary {
    /// Orders containing the seller's SKUs (cancelled ones excluded).
    pub orders: u64,
    /// Of those, orders with a return (requested, returned or refunded).
    pub returns: u64,
    /// Per SKU and currency, sorted by SKU then currency.
    pub skus: Vec<SkuSales>,
    /// The scan stopped at `SCAN_ORDERS_MAX` orders: the numbers are a lower bound.
    pub truncated: bool,
}

/// What happened to a user's cart or orders.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum UserEventKind {
    /// A cart line was set (`qty > 0`) or removed (`qty == 0`); `sku` is
    /// `None` when the whole cart was emptied.
    Cart {
        /// The SKU.
        sku: Option<String>,
        /// Units now in the cart.
        qty: u32,
    },
    /// An order was created or changed status.
    Order {
        /// The order.
        order_id: OrderId,
        /// Its status now.
        status: OrderStatus,
    },
    /// A wishlist line was set (`qty > 0`) or removed (`qty == 0`).
    Wishlist {
        /// The SKU.
        sku: String,
        /// Units now in the wishlist.
        qty: u32,
    },
}

/// One entry of the per-shard ring of recent user events.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct UserEvent {
    /// Position: the log sequence number of the change (increasing per shard,
    /// also across restarts).
    pub seq: u64,
    /// The shard clock when it happened (Unix ms).
    pub at_ms: u64,
    /// Whose.
    pub user_id: String,
    /// What.
    pub kind: UserEventKind,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum Reply {
    /// What a mutation did.
    Outcome(Outcome),
    /// `GetSku`.
    Sku(Sku),
    /// `GetReservation`.
    Reservation(Reservation),
    /// `GetOrder`.
    Order(Order),
    /// `ListOrders`.
    Orders {
        /// At most `limit` orders, oldest first.
        orders: Vec<Order>,
        /// Pass as `after` to get the next page; `None` on the last page.
        next: Option<OrderId>,
    },
    /// `GetCart`: items sorted by SKU.
    Cart(Vec<CartItem>),
    /// `ShardStats`.
    ShardStats(ShardStats),
    /// `GetCheckout`.
    Checkout(Box<Checkout>),
    /// `GetCredit`.
    Credit(Option<CreditAccount>),
    /// `SellerSkus`.
    SellerSkus {
        /// Sorted by SKU.
        skus: Vec<SkuSummary>,
        /// More matched than `limit`.
        truncated: bool,
    },
    /// `SellerOrders`.
    SellerOrders {
        /// Newest first.
        orders: Vec<Order>,
        /// `None`: every matching order older than `before` is in `orders`.
        /// `Some(k)`: the shard stopped (limit or scan budget) after examining
        /// every order down to `k` inclusive; older ones are not yet examined.
        frontier: Option<OrderKey>,
    },
    /// `SellerAnalytics`.
    SellerAnalytics(SalesSummary),
    /// `UserEvents`.
    UserEvents {
        /// Oldest first.
        events: Vec<UserEvent>,
        /// Pass as `after` next time.
        next: u64,
        /// Events after `after` may have been dropped (ring overflow or a
        /// server restart): re-read the state.
        gap: bool,
    },
    /// `GetWishlist`: items sorted by SKU.
    Wishlist(Vec<CartItem>),
}

/// Counters of one shard.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ShardStats {
    /// The shard.
    pub shard: u16,
    /// The core that owns it.
    pub core: u16,
    /// Sequence number of the last record appended to the shard's log.
    pub lsn: u64,
    /// Sequence number of the last record known durable.
    pub durable_lsn: u64,
    /// The shard's clock: time of the last applied change (Unix ms).
    pub clock_ms: u64,
    /// Requests waiting in the shard's queue.
    pub queue_depth: u32,
    /// SKUs stored.
    pub skus: u64,
    /// Live reservations.
    pub reservations: u64,
    /// Orders stored.
    pub orders: u64,
    /// Idempotency records retained.
    pub idempotency_records: u64,
}

/// `ERROR` (server -> client): a frame-level problem; the server closes the
/// connection after sending it. Its payload is a [`WireError`].
pub type ErrorMessage = WireError;

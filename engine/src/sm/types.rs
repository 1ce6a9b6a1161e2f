//! The records a shard keeps, and the values commands carry.

use crate::ids::{OrderId, ReservationId};

/// An ISO 4217 currency code: three ASCII upper-case letters.
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
pub struct Currency(pub [u8; 3]);

impl Currency {
    /// Parses `"EUR"`-style codes; `None` unless exactly three ASCII upper-case letters.
    pub fn parse(code: &str) -> Option<Self> {
        let b = code.as_bytes();
        (b.len() == 3 && b.iter().all(u8::is_ascii_uppercase)).then(|| Currency([b[0], b[1], b[2]]))
    }
    /// Whether the code is three ASCII upper-case letters.
    pub fn is_valid(&self) -> bool {
        self.0.iter().all(u8::is_ascii_uppercase)
    }
    /// The code as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

/// An amount of money in integer minor units (cents) of a currency.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Money {
    /// Minor units (for EUR: cents). Never negative.
    pub amount_minor: u64,
    /// ISO 4217 code.
    pub currency: Currency,
}

/// Stock of one SKU in one warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct WarehouseStock {
    /// Warehouse id.
    pub warehouse: String,
    /// Units physically present.
    pub on_hand: u64,
    /// Units held by live reservations; `reserved <= on_hand` always.
    pub reserved: u64,
    /// Conservation ledger: units added by `SetStock`/`AdjustStock` increases.
    pub added: u64,
    /// Conservation ledger: units removed by `SetStock`/`AdjustStock` decreases.
    pub removed: u64,
    /// Conservation ledger: units deducted by confirmed reservations.
    pub deducted: u64,
    /// Conservation ledger: units returned by `Restock`.
    pub returned: u64,
}

impl WarehouseStock {
    /// Units that can still be reserved.
    pub fn available(&self) -> u64 {
        self.on_hand - self.reserved
    }
}

/// A stock-keeping unit and its stock per warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Sku {
    /// SKU id (the shard key of inventory).
    pub sku: String,
    /// Seller who owns it.
    pub seller_id: String,
    /// Display title.
    pub title: String,
    /// Unit price.
    pub price: Money,
    /// Stock per warehouse, in the order warehouses were first stocked.
    pub warehouses: Vec<WarehouseStock>,
}

impl Sku {
    /// Units available over all warehouses.
    pub fn available(&self) -> u64 {
        self.warehouses.iter().map(WarehouseStock::available).sum()
    }
    /// The stock entry of `warehouse`, if it was ever stocked.
    pub fn warehouse(&self, warehouse: &str) -> Option<&WarehouseStock> {
        self.warehouses.iter().find(|w| w.warehouse == warehouse)
    }
}

/// One requested line of a reservation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ReserveLine {
    /// SKU to reserve.
    pub sku: String,
    /// Units, `1..=LINE_QTY_MAX`.
    pub qty: u32,
}

/// Units of a SKU held in one warehouse by a reservation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Allocation {
    /// SKU.
    pub sku: String,
    /// Warehouse the units are held in.
    pub warehouse: String,
    /// Units held.
    pub qty: u32,
}

/// A live hold on stock.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Reservation {
    /// Id minted by this shard.
    pub id: ReservationId,
    /// Who holds it (a user id).
    pub owner: String,
    /// Where the units are held.
    pub allocations: Vec<Allocation>,
    /// When it was made (shard clock, Unix ms).
    pub created_at_ms: u64,
    /// When it is released unless confirmed (shard clock, Unix ms).
    pub expires_at_ms: u64,
}

/// Status of an order. Transitions are checked by [`OrderStatus::can_become`].
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
#[rkyv(derive(Debug, PartialEq, Eq))]
pub enum OrderStatus {
    /// Created, payment not yet captured.
    Placed,
    /// Payment captured, stock deducted.
    Confirmed,
    /// Picked and packed in the warehouse.
    Packed,
    /// Handed to a carrier.
    Shipped,
    /// Delivered to the customer.
    Delivered,
    /// Cancelled before shipping.
    Cancelled,
    /// The customer asked to return it.
    ReturnRequested,
    /// The return arrived in the warehouse.
    Returned,
    /// Money was paid back.
    Refunded,
    /// Placed with stock deducted and payment authorized, held until an admin
    /// approves or rejects it after a fraud score above the review threshold.
    Review,
}

impl OrderStatus {
    /// Every status, for exhaustive tests and listings.
    pub const ALL: [OrderStatus; 10] = [
        OrderStatus::Placed,
        OrderStatus::Confirmed,
        OrderStatus::Packed,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
        OrderStatus::ReturnRequested,
        OrderStatus::Returned,
        OrderStatus::Refunded,
        OrderStatus::Review,
    ];

    /// Whether an order in `self` may move to `next`.
    ///
    /// placed -> confirmed -> packed -> shipped -> delivered -> return_requested
    /// -> returned -> refunded; placed -> review -> confirmed after a fraud
    /// review; cancel is possible until shipped; a rejected return goes back
    /// to delivered; a cancelled order may be refunded.
    pub fn can_become(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, next),
            (Placed, Confirmed)
                | (Confirmed, Packed)
                | (Packed, Shipped)
                | (Shipped, Delivered)
                | (Placed, Review)
                | (Review, Confirmed)
                | (Placed | Confirmed | Packed | Review, Cancelled)
                | (Delivered, ReturnRequested)
                | (ReturnRequested, Returned | Delivered)
                | (Returned | Cancelled, Refunded)
        )
    }

    /// Lower-case name used in APIs (`return_requested`).
    pub fn as_str(self) -> &'static str {
        use OrderStatus::*;
        match self {
            Placed => "placed",
            Confirmed => "confirmed",
            Packed => "packed",
            Shipped => "shipped",
            Delivered => "delivered",
            Cancelled => "cancelled",
            ReturnRequested => "return_requested",
            Returned => "returned",
            Refunded => "refunded",
            Review => "review",
        }
    }
}

/// One line of an order, with the price captured when it was placed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct OrderLine {
    /// SKU.
    pub sku: String,
    /// Warehouse that ships it.
    pub warehouse: String,
    /// Units.
    pub qty: u32,
    /// Unit price at checkout.
    pub unit_price: Money,
}

/// One entry of an order's status history.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct StatusChange {
    /// New status.
    pub status: OrderStatus,
    /// When (shard clock, Unix ms).
    pub at_ms: u64,
    /// Free text (carrier and tracking number, reason), at most `TEXT_BYTES_MAX` bytes.
    pub note: String,
}

/// A stored order.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Order {
    /// Id minted by the user's shard.
    pub id: OrderId,
    /// Who placed it.
    pub user_id: String,
    /// Lines with captured prices.
    pub lines: Vec<OrderLine>,
    /// Sum of `qty * unit_price` over the lines.
    pub total: Money,
    /// Shipping address, as given.
    pub ship_to: String,
    /// Current status (the last entry of `history`).
    pub status: OrderStatus,
    /// Every status the order had, oldest first.
    pub history: Vec<StatusChange>,
    /// Payment, fraud score, shipments, returns and queued side effects of an
    /// order placed by checkout; `None` for an order stored by `CreateOrder`.
    pub fulfilment: Option<Box<crate::sm::commerce::Fulfilment>>,
}

// Hashes the fields of image version 1 exactly as the derived hash did, and
// the fulfilment only when present, so the checksum of a state without
// checkouts is the same in every image version.
impl std::hash::Hash for Order {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.id.hash(h);
        self.user_id.hash(h);
        self.lines.hash(h);
        self.total.hash(h);
        self.ship_to.hash(h);
        self.status.hash(h);
        self.history.hash(h);
        if let Some(f) = &self.fulfilment {
            f.hash(h);
        }
    }
}

/// One item in a cart.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct CartItem {
    /// SKU.
    pub sku: String,
    /// Units wanted.
    pub qty: u32,
}

//! The JSON documents of the API. Request bodies reject unknown fields.

use reserva_protocol::engine::queries::placed_at_ms;
use reserva_protocol::engine::{
    Allocation, CartItem, Currency, Money, Order, OrderStatus, Reservation, Sku, WarehouseStock,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::problem::ApiError;
use crate::time::rfc3339;

/// An amount of money in integer minor units (cents) of an ISO 4217 currency.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoneyJson {
    /// Minor units (for EUR: cents).
    #[schema(minimum = 0)]
    pub amount_minor: u64,
    /// Three upper-case letters, e.g. `EUR`.
    #[schema(example = "EUR")]
    pub currency: String,
}

impl MoneyJson {
    /// The engine's money, or 400 for a malformed currency.
    pub fn to_money(&self, field: &str) -> Result<Money, ApiError> {
        let currency = Currency::parse(&self.currency).ok_or_else(|| {
            ApiError::invalid(format!("{field}.currency must be three upper-case letters"))
        })?;
        Ok(Money {
            amount_minor: self.amount_minor,
            currency,
        })
    }
}

impl From<Money> for MoneyJson {
    fn from(m: Money) -> Self {
        MoneyJson {
            amount_minor: m.amount_minor,
            currency: m.currency.as_str().to_owned(),
        }
    }
}

/// `PUT /v1/skus/{sku}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSku {
    /// The seller who owns the SKU.
    pub seller_id: String,
    /// Display title (at most 256 bytes).
    pub title: String,
    /// Unit price.
    pub price: MoneyJson,
}

/// Stock of a SKU in one warehouse.
#[derive(Debug, Serialize, ToSchema)]
pub struct WarehouseView {
    /// Warehouse id.
    pub warehouse: String,
    /// Units physically present.
    pub on_hand: u64,
    /// Units held by live reservations.
    pub reserved: u64,
    /// `on_hand - reserved`.
    pub available: u64,
}

impl From<&WarehouseStock> for WarehouseView {
    fn from(w: &WarehouseStock) -> Self {
        WarehouseView {
            warehouse: w.warehouse.clone(),
            on_hand: w.on_hand,
            reserved: w.reserved,
            available: w.available(),
        }
    }
}

/// A SKU with its stock.
#[derive(Debug, Serialize, ToSchema)]
pub struct SkuView {
    /// SKU id.
    pub sku: String,
    /// Owning seller.
    pub seller_id: String,
    /// Title.
    pub title: String,
    /// Unit price.
    pub price: MoneyJson,
    /// Units available over all warehouses.
    pub available: u64,
    /// Stock per warehouse.
    pub warehouses: Vec<WarehouseView>,
}

impl From<&Sku> for SkuView {
    fn from(s: &Sku) -> Self {
        SkuView {
            sku: s.sku.clone(),
            seller_id: s.seller_id.clone(),
            title: s.title.clone(),
            price: s.price.into(),
            available: s.available(),
            warehouses: s.warehouses.iter().map(WarehouseView::from).collect(),
        }
    }
}

/// `PUT /v1/skus/{sku}/stock/{warehouse}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStock {
    /// New on-hand count (not below what is reserved).
    #[schema(minimum = 0)]
    pub on_hand: u64,
}

/// `POST /v1/skus/{sku}/stock/{warehouse}/adjust`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustStock {
    /// Units to add (negative: remove); not zero.
    pub delta: i64,
}

/// Stock of a SKU in a warehouse after a change.
#[derive(Debug, Serialize, ToSchema)]
pub struct StockView {
    /// SKU id.
    pub sku: String,
    /// Warehouse id.
    pub warehouse: String,
    /// Units physically present.
    pub on_hand: u64,
    /// Units held by live reservations.
    pub reserved: u64,
    /// `on_hand - reserved`.
    pub available: u64,
}

/// A requested line.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineJson {
    /// SKU id.
    pub sku: String,
    /// Units, at least 1.
    #[schema(minimum = 1, maximum = 1000000)]
    pub qty: u32,
}

/// `POST /v1/reservations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateReservation {
    /// Who holds the reservation.
    pub user_id: String,
    /// Lines to hold, all or nothing (all SKUs must live on one shard).
    pub lines: Vec<LineJson>,
    /// Time to live, 1..=86400 seconds; default 900.
    #[schema(minimum = 1, maximum = 86400)]
    pub ttl_seconds: Option<u64>,
}

/// Units of a SKU held in one warehouse.
#[derive(Debug, Serialize, ToSchema)]
pub struct AllocationView {
    /// SKU id.
    pub sku: String,
    /// Units held.
    pub qty: u32,
    /// Warehouse holding them.
    pub warehouse: String,
}

impl From<&Allocation> for AllocationView {
    fn from(a: &Allocation) -> Self {
        AllocationView {
            sku: a.sku.clone(),
            qty: a.qty,
            warehouse: a.warehouse.clone(),
        }
    }
}

/// A live reservation.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReservationView {
    /// Reservation id.
    pub reservation_id: String,
    /// Holder.
    pub user_id: String,
    /// When it lapses unless confirmed (RFC 3339).
    pub expires_at: String,
    /// Held lines per warehouse.
    pub lines: Vec<AllocationView>,
}

impl From<&Reservation> for ReservationView {
    fn from(r: &Reservation) -> Self {
        ReservationView {
            reservation_id: r.id.to_string(),
            user_id: r.owner.clone(),
            expires_at: rfc3339(r.expires_at_ms),
            lines: r.allocations.iter().map(AllocationView::from).collect(),
        }
    }
}

/// One cart item.
#[derive(Debug, Serialize, ToSchema)]
pub struct CartItemView {
    /// SKU id.
    pub sku: String,
    /// Units.
    pub qty: u32,
}

/// A user's cart or wishlist (the same shape).
#[derive(Debug, Serialize, ToSchema)]
pub struct CartView {
    /// Owner.
    pub user_id: String,
    /// Items sorted by SKU.
    pub items: Vec<CartItemView>,
    /// Sum of the quantities.
    pub total_qty: u64,
}

impl CartView {
    /// The cart of `user_id`.
    pub fn new(user_id: &str, items: &[CartItem]) -> Self {
        CartView {
            user_id: user_id.to_owned(),
            items: items
                .iter()
                .map(|i| CartItemView {
                    sku: i.sku.clone(),
                    qty: i.qty,
                })
                .collect(),
            total_qty: items.iter().map(|i| u64::from(i.qty)).sum(),
        }
    }
}

/// `PUT /v1/users/{user_id}/cart/items/{sku}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetQty {
    /// Units, at least 1.
    #[schema(minimum = 1, maximum = 1000000)]
    pub qty: u32,
}

/// One order line with the price captured at checkout.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderLineView {
    /// SKU id.
    pub sku: String,
    /// Shipping warehouse.
    pub warehouse: String,
    /// Units.
    pub qty: u32,
    /// Unit price.
    pub unit_price: MoneyJson,
}

/// One status change.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryView {
    /// Status entered.
    pub status: String,
    /// When (RFC 3339).
    pub at: String,
    /// Note (carrier and tracking number, reason).
    pub note: String,
}

/// An order.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderView {
    /// Order id.
    pub order_id: String,
    /// Who placed it.
    pub user_id: String,
    /// placed, confirmed, packed, shipped, delivered, cancelled,
    /// return_requested, returned, refunded.
    pub status: String,
    /// Lines.
    pub lines: Vec<OrderLineView>,
    /// Order total.
    pub total: MoneyJson,
    /// Shipping address.
    pub ship_to: String,
    /// When it was placed (RFC 3339).
    pub placed_at: String,
    /// Every status, oldest first.
    pub history: Vec<HistoryView>,
    /// Payment (orders placed by a checkout).
    pub payment: Option<PaymentView>,
    /// Shipments with carrier, tracking number and tracking events.
    pub shipments: Vec<ShipmentView>,
    /// Returns of the order.
    pub returns: Vec<ReturnView>,
}

/// How an order is paid.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentView {
    /// card, store_credit or cod.
    pub method: String,
    /// pending, authorized, captured, voided, declined, failed.
    pub status: String,
    /// Amount.
    pub amount: MoneyJson,
    /// Refunded so far, minor units.
    pub refunded_minor: u64,
}

/// One tracking event.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrackingView {
    /// When (RFC 3339).
    pub at: String,
    /// What happened.
    pub description: String,
}

/// One shipment of an order.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShipmentView {
    /// Shipping warehouse.
    pub warehouse: String,
    /// Estimated delivery (RFC 3339).
    pub estimated_delivery: String,
    /// Carrier (empty until shipped).
    pub carrier: String,
    /// Tracking number (empty until shipped).
    pub tracking_number: String,
    /// Tracking events, oldest first.
    pub events: Vec<TrackingView>,
}

/// A return of some lines of an order.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReturnView {
    /// Return id.
    pub return_id: String,
    /// requested, approved, rejected, received, refunded.
    pub status: String,
    /// Lines returned.
    pub lines: Vec<CartItemView>,
    /// Why.
    pub reason: String,
    /// Refunded, minor units.
    pub refund_minor: u64,
}

impl From<&Order> for OrderView {
    fn from(o: &Order) -> Self {
        OrderView {
            order_id: o.id.to_string(),
            user_id: o.user_id.clone(),
            status: o.status.as_str().to_owned(),
            lines: o
                .lines
                .iter()
                .map(|l| OrderLineView {
                    sku: l.sku.clone(),
                    warehouse: l.warehouse.clone(),
                    qty: l.qty,
                    unit_price: l.unit_price.into(),
                })
                .collect(),
            total: o.total.into(),
            ship_to: o.ship_to.clone(),
            placed_at: rfc3339(placed_at_ms(o)),
            history: o
                .history
                .iter()
                .map(|h| HistoryView {
                    status: h.status.as_str().to_owned(),
                    at: rfc3339(h.at_ms),
                    note: h.note.clone(),
                })
                .collect(),
            payment: o.fulfilment.as_ref().map(|f| PaymentView {
                method: f.payment.method.as_str().to_owned(),
                status: f.payment.status.as_str().to_owned(),
                amount: f.payment.amount.into(),
                refunded_minor: f.payment.refunded_minor,
            }),
            shipments: o
                .fulfilment
                .iter()
                .flat_map(|f| f.shipments.iter())
                .map(|s| ShipmentView {
                    warehouse: s.warehouse.clone(),
                    estimated_delivery: rfc3339(s.estimated_delivery_ms),
                    carrier: s.carrier.clone(),
                    tracking_number: s.tracking_number.clone(),
                    events: s
                        .events
                        .iter()
                        .map(|e| TrackingView {
                            at: rfc3339(e.at_ms),
                            description: e.description.clone(),
                        })
                        .collect(),
                })
                .collect(),
            returns: o
                .fulfilment
                .iter()
                .flat_map(|f| f.returns.iter())
                .map(|r| ReturnView {
                    return_id: r.id.to_string(),
                    status: r.status.as_str().to_owned(),
                    lines: r
                        .lines
                        .iter()
                        .map(|l| CartItemView {
                            sku: l.sku.clone(),
                            qty: l.qty,
                        })
                        .collect(),
                    reason: r.reason.clone(),
                    refund_minor: r.refund_minor,
                })
                .collect(),
        }
    }
}

/// Where to ship.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressJson {
    /// Recipient.
    pub name: String,
    /// Street and number.
    pub line1: String,
    /// More address.
    pub line2: Option<String>,
    /// City.
    pub city: String,
    /// Region or state.
    pub region: Option<String>,
    /// Postal code.
    pub postal_code: String,
    /// ISO 3166 country code.
    pub country: String,
    /// Latitude in degrees (for warehouse routing).
    #[schema(minimum = -90, maximum = 90)]
    pub lat: Option<f64>,
    /// Longitude in degrees.
    #[schema(minimum = -180, maximum = 180)]
    pub lon: Option<f64>,
}

/// How to pay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum PaymentJson {
    /// A card (sandbox test numbers succeed, decline or fail deterministically).
    Card {
        /// Card number.
        card_number: String,
    },
    /// The user's store credit.
    StoreCredit,
    /// Cash on delivery.
    Cod,
}

/// `POST /v1/checkout`: exactly one of `lines`, `reservation_id`, `from_cart`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    /// Who checks out.
    pub user_id: String,
    /// Lines to buy.
    pub lines: Option<Vec<LineJson>>,
    /// A reservation the user holds.
    pub reservation_id: Option<String>,
    /// Buy the user's cart.
    pub from_cart: Option<bool>,
    /// How to pay.
    pub payment: PaymentJson,
    /// Where to ship.
    pub ship_to: AddressJson,
}

/// `POST /v1/orders/{order_id}/track`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Track {
    /// What happened (at most 512 bytes).
    pub description: String,
}

/// `POST /v1/orders/{order_id}/returns`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReturnBody {
    /// Lines to return.
    pub lines: Vec<LineJson>,
    /// Why (at most 512 bytes).
    pub reason: String,
}

/// A return that was requested.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReturnCreated {
    /// The new return's id.
    pub return_id: String,
    /// The order afterwards.
    pub order: OrderView,
}

/// A user's store credit.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreditView {
    /// The user.
    pub user_id: String,
    /// Balance (zero in no currency when the user never had credit).
    pub balance: Option<MoneyJson>,
    /// Of the balance, what is not held by running checkouts, minor units.
    pub available_minor: u64,
}

/// `POST /v1/users/{user_id}/credit` (admin).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantCredit {
    /// Amount to add.
    pub amount: MoneyJson,
}

/// A page of orders.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPage {
    /// The orders of this page.
    pub orders: Vec<OrderView>,
    /// Pass as `cursor` for the next page; `null` on the last page. A page
    /// may hold fewer than `limit` orders even when more follow.
    pub next_cursor: Option<String>,
    /// Some shards did not answer in time: orders may be missing.
    pub partial: bool,
}

/// `POST /v1/orders/{order_id}/ship`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ship {
    /// Carrier name.
    pub carrier: String,
    /// Tracking number.
    pub tracking_number: String,
}

/// Sales of one SKU in one currency.
#[derive(Debug, Serialize, ToSchema)]
pub struct SkuSalesView {
    /// SKU id.
    pub sku: String,
    /// Units sold.
    pub units: u64,
    /// Revenue.
    pub revenue: MoneyJson,
}

/// A seller's sales over a time range.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnalyticsView {
    /// The seller.
    pub seller_id: String,
    /// Start of the range (RFC 3339, inclusive).
    pub from: String,
    /// End of the range (RFC 3339, exclusive).
    pub to: String,
    /// Orders containing the seller's SKUs (cancelled ones excluded).
    pub orders: u64,
    /// Units of the seller's SKUs in them.
    pub units: u64,
    /// Of those orders, how many had a return requested.
    pub returns: u64,
    /// Revenue per currency.
    pub revenue: Vec<MoneyJson>,
    /// Best-selling SKUs by units.
    pub top_skus: Vec<SkuSalesView>,
    /// Some shards did not answer in time or the seller has more SKUs than
    /// one query covers: the numbers are a lower bound.
    pub partial: bool,
}

/// A SKU low on stock.
#[derive(Debug, Serialize, ToSchema)]
pub struct LowStockSku {
    /// SKU id.
    pub sku: String,
    /// Title.
    pub title: String,
    /// Units available.
    pub available: u64,
    /// Units on hand.
    pub on_hand: u64,
}

/// A seller's SKUs at or below a stock threshold.
#[derive(Debug, Serialize, ToSchema)]
pub struct LowStockView {
    /// The seller.
    pub seller_id: String,
    /// The threshold used.
    pub threshold: u64,
    /// Lowest availability first.
    pub skus: Vec<LowStockSku>,
    /// Some shards did not answer in time.
    pub partial: bool,
    /// More SKUs matched than are listed.
    pub truncated: bool,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` when every shard answers.
    pub status: String,
    /// Shards that answered.
    pub shards_ready: u32,
    /// Shards in the cluster.
    pub shards: u32,
}

/// One server-sent event's `data` (event type `cart`, `wishlist`, `order` or `resync`).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserEventView {
    /// Position (also the SSE `id`; send it back as `Last-Event-ID`).
    pub seq: u64,
    /// `cart`, `wishlist` or `order`.
    #[serde(rename = "type")]
    pub type_: String,
    /// When (RFC 3339).
    pub at: String,
    /// Cart and wishlist events: the SKU (absent when the cart was emptied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    /// Cart and wishlist events: units now in the list (0: removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qty: Option<u32>,
    /// Order events: the order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// Order events: its status now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// Parses an order status name (`return_requested`).
pub fn parse_status(s: &str) -> Result<OrderStatus, ApiError> {
    OrderStatus::ALL
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| ApiError::invalid(format!("unknown order status {s:?}")))
}

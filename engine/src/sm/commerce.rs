//! Checkouts, payments, fraud scores, shipments and returns: the records of
//! the checkout saga and of an order's life after it, and the commands that
//! change them.
//!
//! The saga itself (which shard to ask, which payment provider to call) runs
//! in the server; this module is what the user's shard records at each step,
//! so a restarted server knows exactly where every checkout stands.

use crate::ids::{CheckoutId, OrderId, ReservationId, ReturnId, ShardId};
use crate::sm::error::EngineError;
use crate::sm::types::{Allocation, CartItem, Money, Order, ReserveLine};

/// A shipping address. Optional parts are empty strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Address {
    /// Recipient.
    pub name: String,
    /// First address line.
    pub line1: String,
    /// Second address line (may be empty).
    pub line2: String,
    /// City.
    pub city: String,
    /// Region or state (may be empty).
    pub region: String,
    /// Postal code.
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code (`"DE"`).
    pub country: String,
    /// Latitude in millionths of a degree, if known.
    pub lat_e6: Option<i32>,
    /// Longitude in millionths of a degree, if known.
    pub lon_e6: Option<i32>,
}

impl Address {
    /// One line of text, as kept in `Order::ship_to`.
    pub fn one_line(&self) -> String {
        let mut parts: Vec<&str> = vec![&self.name, &self.line1];
        if !self.line2.is_empty() {
            parts.push(&self.line2);
        }
        parts.push(&self.postal_code);
        parts.push(&self.city);
        if !self.region.is_empty() {
            parts.push(&self.region);
        }
        parts.push(&self.country);
        parts.join(", ")
    }
}

/// How an order is paid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum PaymentMethod {
    /// A card, as a token of the card provider (the number itself is never stored).
    Card {
        /// Provider token that authorizes charges.
        token: String,
        /// Last four digits, for display.
        last4: String,
        /// Issuing country (ISO 3166-1 alpha-2).
        country: String,
        /// Stable fingerprint of the card number (velocity and distinct-card rules).
        fingerprint: u64,
    },
    /// The user's store-credit / gift-card balance on their shard.
    StoreCredit,
    /// Cash paid to the carrier on delivery.
    CashOnDelivery,
}

impl PaymentMethod {
    /// `card`, `store_credit` or `cod`.
    pub fn as_str(&self) -> &'static str {
        match self {
            PaymentMethod::Card { .. } => "card",
            PaymentMethod::StoreCredit => "store_credit",
            PaymentMethod::CashOnDelivery => "cod",
        }
    }
}

/// Where the money of an order stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub enum PaymentStatus {
    /// Nothing asked of the provider yet.
    Pending,
    /// Authorized (held), not captured.
    Authorized,
    /// Captured (charged).
    Captured,
    /// The authorization was voided: nothing was charged.
    Voided,
    /// The provider declined.
    Declined,
    /// The provider failed and retries ran out.
    Failed,
}

impl PaymentStatus {
    /// Lower-case name used in APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Authorized => "authorized",
            PaymentStatus::Captured => "captured",
            PaymentStatus::Voided => "voided",
            PaymentStatus::Declined => "declined",
            PaymentStatus::Failed => "failed",
        }
    }
}

/// The payment of a checkout and, later, of its order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Payment {
    /// How.
    pub method: PaymentMethod,
    /// Amount authorized (the order total).
    pub amount: Money,
    /// Where it stands.
    pub status: PaymentStatus,
    /// The provider's reference of the authorization (empty until authorized).
    pub auth_ref: String,
    /// Minor units captured.
    pub captured_minor: u64,
    /// Minor units refunded (never more than captured).
    pub refunded_minor: u64,
}

/// A fraud rule set, carried in the logged command so replay never depends on
/// the server's current configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct FraudRules {
    /// Look-back window of the velocity rules, `1..=FRAUD_WINDOW_MS_MAX`.
    pub window_ms: u64,
    /// More checkouts than this by one user in the window scores `user_velocity_points`.
    pub user_velocity_max: u32,
    /// Points for the user velocity rule.
    pub user_velocity_points: u32,
    /// More uses than this of one card (by anyone) in the window scores `card_velocity_points`.
    pub card_velocity_max: u32,
    /// Points for the card velocity rule.
    pub card_velocity_points: u32,
    /// An account first seen less than this long ago is new.
    pub new_account_ms: u64,
    /// A new account ordering more than this (minor units) scores `new_account_points`.
    pub new_account_amount_minor: u64,
    /// Points for the new-account amount rule.
    pub new_account_points: u32,
    /// More distinct cards than this on one user scores `distinct_cards_points`.
    pub distinct_cards_max: u32,
    /// Points for the distinct-cards rule.
    pub distinct_cards_points: u32,
    /// Points when the shipping country differs from the card's.
    pub country_mismatch_points: u32,
    /// A score at or above this holds the order in `review`.
    pub review_at: u32,
    /// A score at or above this rejects the checkout.
    pub reject_at: u32,
}

impl Default for FraudRules {
    fn default() -> Self {
        FraudRules {
            window_ms: 60 * 60 * 1_000,
            user_velocity_max: 10,
            user_velocity_points: 40,
            card_velocity_max: 20,
            card_velocity_points: 40,
            new_account_ms: 7 * 24 * 60 * 60 * 1_000,
            new_account_amount_minor: 100_000,
            new_account_points: 30,
            distinct_cards_max: 3,
            distinct_cards_points: 30,
            country_mismatch_points: 25,
            review_at: 50,
            reject_at: 80,
        }
    }
}

/// What the fraud rules decided.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub enum FraudDecision {
    /// Go on.
    Accept,
    /// Place the order but hold it in `review` until an admin decides.
    Review,
    /// Compensate and refuse.
    Reject,
}

/// A fraud score with the rules that fired.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct FraudResult {
    /// Sum of the points of the rules that fired.
    pub score: u32,
    /// Which rules fired, in rule order.
    pub reasons: Vec<String>,
    /// The decision the thresholds give.
    pub decision: FraudDecision,
}

/// A reservation one SKU shard holds for a checkout.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Hold {
    /// The SKU shard holding it.
    pub shard: ShardId,
    /// The reservation on that shard.
    pub reservation_id: ReservationId,
    /// What it holds where.
    pub allocations: Vec<Allocation>,
    /// Its deadline (Unix ms).
    pub expires_at_ms: u64,
}

/// A line with the price captured for the order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct PricedLine {
    /// SKU.
    pub sku: String,
    /// Its seller.
    pub seller_id: String,
    /// Unit price read from the SKU's shard.
    pub unit_price: Money,
}

/// Where a checkout starts from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum CheckoutSource {
    /// Explicit lines.
    Lines(Vec<ReserveLine>),
    /// A reservation the user already holds (on one SKU shard).
    Reservation(ReservationId),
    /// The user's cart, emptied when the checkout completes.
    Cart,
}

/// The steps of the saga, in order. `Compensating` and the two ends may
/// follow any step.
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
pub enum CheckoutState {
    /// Recorded; stock not yet held.
    Started,
    /// Every line is held on its SKU shard; prices captured.
    Reserved,
    /// Fraud rules passed (accept or review).
    Scored,
    /// Payment authorized.
    Authorized,
    /// Order created (status `placed`).
    OrderCreated,
    /// Every hold confirmed: stock deducted.
    StockConfirmed,
    /// Done: payment captured, order confirmed. Terminal.
    Completed,
    /// Done up to capture: the order waits in `review`. Terminal for the saga.
    InReview,
    /// A step failed; holds and authorization are being undone.
    Compensating,
    /// Fully compensated. Terminal.
    Failed,
}

impl CheckoutState {
    /// Whether the saga has nothing left to do.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            CheckoutState::Completed | CheckoutState::InReview | CheckoutState::Failed
        )
    }
    /// Lower-case name used in APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckoutState::Started => "started",
            CheckoutState::Reserved => "reserved",
            CheckoutState::Scored => "scored",
            CheckoutState::Authorized => "authorized",
            CheckoutState::OrderCreated => "order_created",
            CheckoutState::StockConfirmed => "stock_confirmed",
            CheckoutState::Completed => "completed",
            CheckoutState::InReview => "in_review",
            CheckoutState::Compensating => "compensating",
            CheckoutState::Failed => "failed",
        }
    }
}

/// One checkout: the saga's record on the user's shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Checkout {
    /// Id minted by the user's shard.
    pub id: CheckoutId,
    /// Who checks out.
    pub user_id: String,
    /// Where it started from.
    pub source: CheckoutSource,
    /// Lines to buy (empty while a reservation source is being adopted).
    pub lines: Vec<ReserveLine>,
    /// Where to ship.
    pub ship_to: Address,
    /// The payment.
    pub payment: Payment,
    /// Where the saga stands.
    pub state: CheckoutState,
    /// Holds on SKU shards.
    pub holds: Vec<Hold>,
    /// Prices captured per SKU.
    pub prices: Vec<PricedLine>,
    /// The fraud score, once scored.
    pub fraud: Option<FraudResult>,
    /// The order, once created.
    pub order_id: Option<OrderId>,
    /// Why it failed (set when compensation starts).
    pub failure: Option<EngineError>,
    /// Started at (Unix ms).
    pub created_at_ms: u64,
    /// Last step at (Unix ms).
    pub updated_at_ms: u64,
}

/// Estimated delivery per shipping warehouse, computed by the server from distance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct DeliveryEstimate {
    /// Warehouse.
    pub warehouse: String,
    /// Distance to the address in km (0 if unknown).
    pub distance_km: u32,
    /// Estimated delivery (Unix ms).
    pub estimated_at_ms: u64,
}

/// A tracking event of a shipment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct TrackingEvent {
    /// When (shard clock, Unix ms).
    pub at_ms: u64,
    /// What happened (`"arrived at hub FRA"`).
    pub description: String,
}

/// What ships from one warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Shipment {
    /// Warehouse shipping it.
    pub warehouse: String,
    /// Distance to the address in km (0 if unknown).
    pub distance_km: u32,
    /// Estimated delivery (Unix ms).
    pub estimated_delivery_ms: u64,
    /// Carrier, once shipped.
    pub carrier: String,
    /// Tracking number, once shipped.
    pub tracking_number: String,
    /// Tracking events, oldest first.
    pub events: Vec<TrackingEvent>,
}

/// Where a return stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub enum ReturnStatus {
    /// Asked for by the customer.
    Requested,
    /// Accepted by the seller or an admin.
    Approved,
    /// Refused.
    Rejected,
    /// The units arrived and were restocked.
    Received,
    /// Money paid back.
    Refunded,
}

impl ReturnStatus {
    /// Lower-case name used in APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            ReturnStatus::Requested => "requested",
            ReturnStatus::Approved => "approved",
            ReturnStatus::Rejected => "rejected",
            ReturnStatus::Received => "received",
            ReturnStatus::Refunded => "refunded",
        }
    }
}

/// A return of some lines of an order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ReturnRecord {
    /// Id.
    pub id: ReturnId,
    /// Units returned per SKU.
    pub lines: Vec<ReserveLine>,
    /// The customer's reason.
    pub reason: String,
    /// Where it stands.
    pub status: ReturnStatus,
    /// Amount refunded for it (minor units), once refunded.
    pub refund_minor: u64,
    /// When it was requested (Unix ms).
    pub requested_at_ms: u64,
    /// Last change (Unix ms).
    pub updated_at_ms: u64,
}

/// A side effect an order's change needs on another shard or at the payment
/// provider. Queued on the order in the same logged step as the change, run
/// by the server, and marked done by [`CommerceCommand::EffectDone`]; each
/// carries the idempotency key its call uses, so a rerun after a crash
/// changes nothing twice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum EffectKind {
    /// Put units back on hand on the SKU's shard.
    Restock {
        /// SKU.
        sku: String,
        /// Warehouse.
        warehouse: String,
        /// Units.
        qty: u32,
    },
    /// Capture the card authorization.
    CardCapture {
        /// Minor units.
        amount_minor: u64,
    },
    /// Void the card authorization.
    CardVoid,
    /// Refund to the card.
    CardRefund {
        /// Minor units.
        amount_minor: u64,
    },
}

/// A queued side effect of an order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Effect {
    /// Number within the order (its idempotency key is `"{order}:e{seq}"`).
    pub seq: u32,
    /// What to do.
    pub kind: EffectKind,
    /// Whether it was done.
    pub done: bool,
}

impl Effect {
    /// The idempotency key the effect's call uses.
    pub fn key(&self, order: OrderId) -> String {
        format!("{order}:e{}", self.seq)
    }
}

/// Everything an order carries beyond its lines and status.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Fulfilment {
    /// The checkout that placed it.
    pub checkout_id: CheckoutId,
    /// Sellers of the lines, sorted (they may read and fulfil the order).
    pub sellers: Vec<String>,
    /// Structured shipping address.
    pub address: Address,
    /// The payment.
    pub payment: Payment,
    /// The fraud score.
    pub fraud: Option<FraudResult>,
    /// One shipment per shipping warehouse.
    pub shipments: Vec<Shipment>,
    /// Returns.
    pub returns: Vec<ReturnRecord>,
    /// Side effects, oldest first.
    pub effects: Vec<Effect>,
}

impl Fulfilment {
    /// Whether some effect is not done yet.
    pub fn has_pending_effects(&self) -> bool {
        self.effects.iter().any(|e| !e.done)
    }
}

/// A user's store-credit (gift card) balance. `held` never exceeds `balance`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct CreditAccount {
    /// Owner.
    pub user_id: String,
    /// Currency of every amount.
    pub currency: crate::sm::types::Currency,
    /// Minor units owned.
    pub balance_minor: u64,
    /// Minor units held by running checkouts (authorized, not captured).
    pub held_minor: u64,
    /// The holds, per checkout.
    pub holds: Vec<(CheckoutId, u64)>,
}

impl CreditAccount {
    /// Units that can still be authorized.
    pub fn available_minor(&self) -> u64 {
        self.balance_minor - self.held_minor
    }
}

/// What the fraud rules remember of a user.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct UserRecord {
    /// User.
    pub user_id: String,
    /// First checkout or credit grant (Unix ms).
    pub first_seen_ms: u64,
    /// Start times of recent checkouts, oldest first.
    pub recent_checkouts_ms: Vec<u64>,
    /// Fingerprints of the distinct cards used, oldest first.
    pub cards: Vec<u64>,
}

/// Recent uses of one card, on the card's shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct CardUses {
    /// Card fingerprint.
    pub fingerprint: u64,
    /// Use times, oldest first.
    pub uses_ms: Vec<u64>,
}

/// An action on an order by its customer, its seller, an admin or the carrier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum OrderAction {
    /// Cancel before shipping: restock, and void or refund the payment.
    Cancel {
        /// Why.
        reason: String,
    },
    /// Picked and packed.
    Pack,
    /// Handed to a carrier.
    Ship {
        /// Carrier.
        carrier: String,
        /// Tracking number.
        tracking_number: String,
    },
    /// A tracking event.
    Track {
        /// What happened.
        description: String,
    },
    /// Delivered (captures cash on delivery).
    Deliver,
    /// An admin approves an order held for fraud review (captures the payment).
    ApproveReview,
    /// An admin rejects an order held for fraud review (restocks, voids).
    RejectReview,
}

/// An action on a return.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub enum ReturnAction {
    /// Accept the return.
    Approve,
    /// Refuse it.
    Reject,
    /// The units arrived: restock them to the warehouse that shipped them.
    Receive,
    /// Pay the returned lines back to the original payment method.
    Refund,
}

/// Commands of checkouts, payments and fulfilment (logged under kinds 14..).
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
// Carried boxed inside `Command::Commerce`, so the size of its largest
// variant costs nothing elsewhere.
#[allow(clippy::large_enum_variant)]
pub enum CommerceCommand {
    /// Records a new checkout on the user's shard. From the cart, its items become the lines.
    CheckoutBegin {
        /// Who.
        user_id: String,
        /// From what.
        source: CheckoutSource,
        /// How to pay (the amount is known once prices are captured).
        payment: PaymentMethod,
        /// Where to ship.
        ship_to: Address,
    },
    /// Every line is held: records the holds and the captured prices.
    CheckoutReserved {
        /// Checkout.
        checkout_id: CheckoutId,
        /// The holds (one per SKU shard).
        holds: Vec<Hold>,
        /// Price per SKU.
        prices: Vec<PricedLine>,
        /// Lines (needed when the checkout adopted a reservation).
        lines: Vec<ReserveLine>,
    },
    /// Scores fraud with `rules`; `card_uses` is the card's use count in the
    /// window from the card's shard. Reject starts compensation.
    CheckoutScore {
        /// Checkout.
        checkout_id: CheckoutId,
        /// Rules in force.
        rules: FraudRules,
        /// Uses of the card in the window, this one included.
        card_uses: u32,
    },
    /// Payment authorized: the card's provider reference; for store credit the
    /// hold is taken here (refused holds start compensation).
    CheckoutAuthorized {
        /// Checkout.
        checkout_id: CheckoutId,
        /// Provider reference (empty for store credit and cash on delivery).
        auth_ref: String,
    },
    /// Creates the order from the checkout (status `placed`).
    CheckoutCreateOrder {
        /// Checkout.
        checkout_id: CheckoutId,
        /// Delivery estimate per shipping warehouse.
        estimates: Vec<DeliveryEstimate>,
    },
    /// Every hold is confirmed (stock deducted).
    CheckoutStockConfirmed {
        /// Checkout.
        checkout_id: CheckoutId,
    },
    /// Payment captured (or, for review, held): completes the saga.
    CheckoutFinish {
        /// Checkout.
        checkout_id: CheckoutId,
    },
    /// A step failed: record why and start compensation.
    CheckoutFail {
        /// Checkout.
        checkout_id: CheckoutId,
        /// Why.
        error: EngineError,
    },
    /// Compensation is done: holds released or restocked, authorization
    /// voided, order (if any) cancelled.
    CheckoutCompensated {
        /// Checkout.
        checkout_id: CheckoutId,
    },
    /// Counts a use of a card on the card's shard; answers the uses in the window.
    CardUse {
        /// Card fingerprint (its shard is `shard_of(format!("card:{fingerprint:016x}"))`).
        fingerprint: u64,
        /// Window to count over, `1..=FRAUD_WINDOW_MS_MAX`.
        window_ms: u64,
    },
    /// Adds to a user's store credit (a gift card, a goodwill credit).
    CreditGrant {
        /// User.
        user_id: String,
        /// Amount (the account's currency once it exists).
        amount: Money,
    },
    /// An action on an order.
    Order {
        /// Order.
        order_id: OrderId,
        /// What.
        action: OrderAction,
    },
    /// The customer asks to return some delivered lines.
    ReturnRequest {
        /// Order.
        order_id: OrderId,
        /// Units per SKU.
        lines: Vec<ReserveLine>,
        /// Why.
        reason: String,
    },
    /// An action on a return.
    Return {
        /// Return.
        return_id: ReturnId,
        /// What.
        action: ReturnAction,
    },
    /// A queued effect of an order was carried out.
    EffectDone {
        /// Order.
        order_id: OrderId,
        /// The effect's `seq`.
        seq: u32,
    },
    /// Sets the quantity of a SKU in a user's wishlist (adds it if absent).
    WishlistSet {
        /// Wishlist owner.
        user_id: String,
        /// SKU id (need not live on this shard).
        sku: String,
        /// Units wanted, `1..=LINE_QTY_MAX`.
        qty: u32,
    },
    /// Removes a SKU from a user's wishlist.
    WishlistRemove {
        /// Wishlist owner.
        user_id: String,
        /// SKU id.
        sku: String,
    },
    /// A checkout's hold on one SKU shard: holds `lines` for `owner` (or
    /// adopts the owner's reservation `adopt`, keeping it at least `ttl_ms`),
    /// and answers the hold with the prices of its SKUs, so the checkout needs
    /// no read of its own.
    CheckoutHold {
        /// Holder (the checkout's user).
        owner: String,
        /// Lines of this shard's SKUs (empty when adopting).
        lines: Vec<ReserveLine>,
        /// A reservation of `owner` to adopt instead of holding lines.
        adopt: Option<ReservationId>,
        /// Time-to-live of the hold, `TTL_MS_MIN..=TTL_MS_MAX`.
        ttl_ms: u64,
        /// Warehouses nearest the shipping address first.
        warehouse_preference: Vec<String>,
    },
    /// The checkout's one record after its holds: records the holds and
    /// prices, scores fraud, takes the payment's authorization (or the
    /// store-credit hold) and creates the order, in one step. A rejecting
    /// score or a refused credit hold starts compensation instead.
    CheckoutPlace {
        /// Checkout (in `started`).
        checkout_id: CheckoutId,
        /// What the holds answered and the payment authorized.
        place: Box<Placement>,
    },
    /// Deducts a checkout's hold (hold -> confirmed). Unlike `Confirm` it
    /// deducts a hold that is still live past its deadline: a hold under an
    /// order is never given up by time alone.
    HoldDeduct {
        /// The hold's reservation.
        reservation_id: ReservationId,
    },
    /// Every hold of an order-created checkout is deducted and the payment
    /// captured (or, for review, held): completes the saga.
    CheckoutSettle {
        /// Checkout (in `order_created` or `stock_confirmed`).
        checkout_id: CheckoutId,
    },
}

/// The inputs of [`CommerceCommand::CheckoutPlace`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Placement {
    /// The holds (one per SKU shard).
    pub holds: Vec<Hold>,
    /// Price per SKU, as the holds answered them.
    pub prices: Vec<PricedLine>,
    /// Lines (needed when the checkout adopted a reservation).
    pub lines: Vec<ReserveLine>,
    /// Fraud rules in force.
    pub rules: FraudRules,
    /// Uses of the card in the window, this one included.
    pub card_uses: u32,
    /// The provider's authorization reference (empty for store credit and cash).
    pub auth_ref: String,
    /// Delivery estimate per shipping warehouse.
    pub estimates: Vec<DeliveryEstimate>,
}

impl CommerceCommand {
    /// The record kind this command is logged under (stable; see `docs/log-format.md`).
    pub fn kind(&self) -> u16 {
        match self {
            CommerceCommand::CheckoutBegin { .. } => 14,
            CommerceCommand::CheckoutReserved { .. } => 15,
            CommerceCommand::CheckoutScore { .. } => 16,
            CommerceCommand::CheckoutAuthorized { .. } => 17,
            CommerceCommand::CheckoutCreateOrder { .. } => 18,
            CommerceCommand::CheckoutStockConfirmed { .. } => 19,
            CommerceCommand::CheckoutFinish { .. } => 20,
            CommerceCommand::CheckoutFail { .. } => 21,
            CommerceCommand::CheckoutCompensated { .. } => 22,
            CommerceCommand::CardUse { .. } => 23,
            CommerceCommand::CreditGrant { .. } => 24,
            CommerceCommand::Order { .. } => 25,
            CommerceCommand::ReturnRequest { .. } => 26,
            CommerceCommand::Return { .. } => 27,
            CommerceCommand::EffectDone { .. } => 28,
            CommerceCommand::WishlistSet { .. } => 29,
            CommerceCommand::WishlistRemove { .. } => 30,
            CommerceCommand::CheckoutHold { .. } => 31,
            CommerceCommand::CheckoutPlace { .. } => 32,
            CommerceCommand::HoldDeduct { .. } => 33,
            CommerceCommand::CheckoutSettle { .. } => 34,
        }
    }
}

/// What a successful commerce command answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
// Carried boxed inside `Outcome::Commerce`.
#[allow(clippy::large_enum_variant)]
pub enum CommerceOutcome {
    /// `CheckoutBegin`: the new checkout. The server runs the saga and answers
    /// the client when it ends.
    CheckoutStarted {
        /// Checkout.
        checkout_id: CheckoutId,
    },
    /// A saga step: the checkout afterwards.
    CheckoutStep {
        /// The checkout.
        checkout: Checkout,
    },
    /// `CardUse`: uses in the window, this one included.
    CardUses {
        /// Count.
        count: u32,
    },
    /// `CreditGrant`: the account afterwards.
    Credit {
        /// The account.
        account: CreditAccount,
    },
    /// `EffectDone`: effects of the order still to do.
    EffectMarked {
        /// Effects not done yet.
        pending: u32,
    },
    /// `Order`, `ReturnRequest`, `Return`: the order afterwards.
    Order {
        /// The order.
        order: Order,
        /// The return the command created or changed, if any.
        return_id: Option<ReturnId>,
    },
    /// `WishlistSet`, `WishlistRemove`: the wishlist afterwards.
    Wishlist {
        /// Items, sorted by SKU.
        items: Vec<CartItem>,
    },
    /// `CheckoutHold`: the hold, the prices of its SKUs and its lines.
    Held {
        /// The hold.
        hold: Hold,
        /// Price and seller per SKU held.
        prices: Vec<PricedLine>,
        /// Units held per SKU.
        lines: Vec<ReserveLine>,
    },
    /// `HoldDeduct`: the units deducted.
    Deducted {
        /// What was deducted, per warehouse.
        allocations: Vec<Allocation>,
    },
}

/// The shard a card's velocity counter lives on.
pub fn card_shard(fingerprint: u64) -> ShardId {
    crate::ids::shard_of(&format!("card:{fingerprint:016x}"))
}

//! Why the state machine refused a command. Every variant leaves the state unchanged.

use std::fmt;

use crate::ids::{CheckoutId, OrderId, ReservationId, ReturnId};
use crate::sm::types::OrderStatus;

/// A typed refusal of a command or query. Refusals change nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[non_exhaustive]
pub enum EngineError {
    /// The input is malformed: which field, and why.
    InvalidInput {
        /// Field name (`lines[2].qty`).
        field: String,
        /// What is wrong, naming the limit where one applies.
        reason: String,
    },
    /// No SKU with this id on this shard.
    UnknownSku {
        /// The SKU asked for.
        sku: String,
    },
    /// The SKU has never been stocked in this warehouse.
    UnknownWarehouse {
        /// SKU.
        sku: String,
        /// Warehouse asked for.
        warehouse: String,
    },
    /// No live reservation with this id (never existed, released, confirmed or expired).
    UnknownReservation {
        /// The id asked for.
        reservation_id: ReservationId,
    },
    /// No order with this id.
    UnknownOrder {
        /// The id asked for.
        order_id: OrderId,
    },
    /// Not enough stock for a line.
    InsufficientStock {
        /// SKU short of stock.
        sku: String,
        /// Units asked for.
        requested: u64,
        /// Units available over all warehouses.
        available: u64,
    },
    /// A stock change would put `on_hand` below what is reserved.
    BelowReserved {
        /// SKU.
        sku: String,
        /// Warehouse.
        warehouse: String,
        /// Units reserved there.
        reserved: u64,
        /// The on-hand count that was refused.
        requested_on_hand: i128,
    },
    /// The reservation's deadline has passed; it can no longer be confirmed.
    ReservationExpired {
        /// Reservation.
        reservation_id: ReservationId,
        /// Its deadline (Unix ms).
        expired_at_ms: u64,
    },
    /// The id belongs to another shard.
    WrongShard {
        /// The shard that owns the id or key.
        owner: u16,
    },
    /// The order cannot move from its status to the requested one.
    IllegalTransition {
        /// Order.
        order_id: OrderId,
        /// Current status.
        from: OrderStatus,
        /// Refused status.
        to: OrderStatus,
    },
    /// The idempotency key was used with a different request.
    IdempotencyConflict {
        /// The key.
        key: String,
    },
    /// A per-shard capacity limit is reached.
    LimitReached {
        /// Which limit (its name in `limits`).
        limit: String,
        /// Its value.
        max: u64,
    },
    /// No checkout with this id (never existed, or finished longer ago than its retention).
    UnknownCheckout {
        /// The id asked for.
        checkout_id: CheckoutId,
    },
    /// The checkout is not at the step the command belongs to.
    CheckoutState {
        /// Checkout.
        checkout_id: CheckoutId,
        /// Its state.
        state: String,
    },
    /// The payment was declined (by the card provider, or not enough store credit).
    PaymentDeclined {
        /// Stable reason (`card_declined`, `insufficient_funds`, `insufficient_credit`, ...).
        code: String,
        /// Text for people.
        message: String,
    },
    /// The payment provider kept failing; retries ran out and the checkout was compensated.
    PaymentFailed {
        /// Text for people.
        message: String,
    },
    /// The fraud rules rejected the checkout.
    FraudRejected {
        /// Score.
        score: u32,
        /// Rules that fired.
        reasons: Vec<String>,
    },
    /// No return with this id.
    UnknownReturn {
        /// The id asked for.
        return_id: ReturnId,
    },
    /// The return is not in the state the action needs.
    ReturnState {
        /// Return.
        return_id: ReturnId,
        /// Its state.
        state: String,
    },
    /// The node stopped before the checkout's order record was durable; its
    /// holds were released and its authorization voided. A new checkout
    /// (another idempotency key) may be tried.
    CheckoutInterrupted {
        /// Checkout.
        checkout_id: CheckoutId,
    },
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use EngineError::*;
        match self {
            InvalidInput { field, reason } => write!(f, "invalid {field}: {reason}"),
            UnknownSku { sku } => write!(f, "unknown sku {sku:?}"),
            UnknownWarehouse { sku, warehouse } => {
                write!(
                    f,
                    "sku {sku:?} has no stock record in warehouse {warehouse:?}"
                )
            }
            UnknownReservation { reservation_id } => {
                write!(f, "no live reservation {reservation_id}")
            }
            UnknownOrder { order_id } => write!(f, "unknown order {order_id}"),
            InsufficientStock {
                sku,
                requested,
                available,
            } => {
                write!(
                    f,
                    "insufficient stock for {sku:?}: requested {requested}, available {available}"
                )
            }
            BelowReserved {
                sku,
                warehouse,
                reserved,
                requested_on_hand,
            } => write!(
                f,
                "on_hand {requested_on_hand} for {sku:?} in {warehouse:?} would be below the {reserved} units reserved"
            ),
            ReservationExpired {
                reservation_id,
                expired_at_ms,
            } => {
                write!(
                    f,
                    "reservation {reservation_id} expired at {expired_at_ms} ms"
                )
            }
            WrongShard { owner } => write!(f, "id belongs to shard {owner}"),
            IllegalTransition { order_id, from, to } => write!(
                f,
                "order {order_id} cannot go from {} to {}",
                from.as_str(),
                to.as_str()
            ),
            IdempotencyConflict { key } => {
                write!(
                    f,
                    "idempotency key {key:?} was used with a different request"
                )
            }
            LimitReached { limit, max } => write!(f, "limit {limit} ({max}) reached"),
            UnknownCheckout { checkout_id } => write!(f, "unknown checkout {checkout_id}"),
            CheckoutState { checkout_id, state } => {
                write!(
                    f,
                    "checkout {checkout_id} is {state}; the step does not apply"
                )
            }
            PaymentDeclined { code, message } => write!(f, "payment declined ({code}): {message}"),
            PaymentFailed { message } => write!(f, "payment provider failed: {message}"),
            FraudRejected { score, reasons } => {
                write!(
                    f,
                    "rejected by fraud rules (score {score}): {}",
                    reasons.join("; ")
                )
            }
            UnknownReturn { return_id } => write!(f, "unknown return {return_id}"),
            ReturnState { return_id, state } => {
                write!(
                    f,
                    "return {return_id} is {state}; the action does not apply"
                )
            }
            CheckoutInterrupted { checkout_id } => write!(
                f,
                "checkout {checkout_id} was interrupted before its order was placed; nothing is held or charged"
            ),
        }
    }
}

impl std::error::Error for EngineError {}

/// Shorthand for an `InvalidInput` refusal.
pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> EngineError {
    EngineError::InvalidInput {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Shorthand for a `LimitReached` refusal.
pub(crate) fn limit_reached(limit: &str, max: u64) -> EngineError {
    EngineError::LimitReached {
        limit: limit.to_owned(),
        max,
    }
}

//! reserva's binary wire protocol, shared by the server and every client.
//!
//! Layers, bottom up: [`frame`] cuts a byte stream into checksummed frames
//! ([`FrameDecoder`]) and writes them ([`encode_message`]); [`message`] holds
//! the rkyv message type of each opcode; [`WireError`] is the typed error a
//! server answers; [`route`] says which shard executes an operation.
//! `docs/protocol.md` describes the same bytes for implementers in other
//! languages.
//!
//! This crate depends on no async runtime and does no I/O.

pub mod card;
pub mod error;
pub mod frame;
pub mod limits;
pub mod message;
pub mod route;

pub use error::WireError;
pub use frame::{
    Frame, FrameDecoder, FrameError, Message, Opcode, Payload, encode_frame, encode_message,
    encode_results, message_to_vec,
};
pub use message::{
    Batch, CoreEndpoint, Hello, HelloOk, Op, OpResult, OrderKey, Query, Reply, Results,
    SalesSummary, ShardMap, ShardStats, SkuSales, SkuSummary, UserEvent, UserEventKind,
};
pub use route::route;

/// The engine types the messages carry, re-exported so that a client needs
/// only this crate.
pub mod engine {
    pub use reserva_engine::ids::{
        CheckoutId, OrderId, ReservationId, ReturnId, ShardId, key_on_shard, shard_of,
    };
    pub use reserva_engine::limits;
    pub use reserva_engine::limits::SHARD_COUNT;
    pub use reserva_engine::sm::queries;
    pub use reserva_engine::sm::{
        Address, CardUses, Checkout, CheckoutSource, CheckoutState, CommerceCommand,
        CommerceOutcome, CreditAccount, DeliveryEstimate, Effect, EffectKind, FraudDecision,
        FraudResult, FraudRules, Fulfilment, Hold, OrderAction, Payment, PaymentMethod,
        PaymentStatus, PricedLine, ReturnAction, ReturnRecord, ReturnStatus, Shipment,
        TrackingEvent,
    };
    pub use reserva_engine::sm::{
        Allocation, CartItem, Command, Currency, EngineError, Money, Order, OrderLine, OrderStatus,
        Outcome, Request, Reservation, ReserveLine, Sku, StatusChange, WarehouseStock,
    };
}

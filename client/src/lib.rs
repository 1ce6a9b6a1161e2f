//! A shard-aware, pipelining tokio client of reserva's binary protocol.
//!
//! [`Client::connect`] says `HELLO` to a node, learns its shard map and opens
//! a small pool of connections to each core's own listener; every operation
//! then goes straight to the core owning its shard. Each connection has a
//! writer task and a reader task and many requests in flight, matched to
//! answers by request id. Every queue is bounded: callers wait when a
//! connection has `IN_FLIGHT_PER_CONNECTION_MAX` requests in flight.
//!
//! The wire format is in [`reserva_protocol`] and `docs/protocol.md`.

pub mod auth;
mod client;
mod commerce;
mod conn;
mod error;
pub mod limits;
mod ops;

pub use client::{Client, ClientConfig, new_idempotency_key};
pub use commerce::{CheckoutRequest, CheckoutResult, PaymentInput};
pub use error::{ClientError, HandshakeError};
pub use ops::{OrderCreated, Reserved, StockLevel};
/// The protocol crate: messages, errors, routing, and the engine types they carry.
pub use reserva_protocol as protocol;
pub use reserva_protocol::{Op, OpResult, Query, Reply, ShardMap, WireError};

/// The admin API client and the `reserva` CLI's views (feature `cli`).
#[cfg(feature = "cli")]
pub mod admin;

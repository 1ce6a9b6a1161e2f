//! reserva's engine: one logical shard's deterministic state machine ([`sm`]),
//! its memory-mapped append log ([`log`]), and the two joined into a durable
//! shard ([`shard`]).
//!
//! The state machine never touches a file, a socket or a clock; only `log`
//! touches files; nothing in this crate opens a socket or reads a clock.

pub mod ids;
pub mod limits;
pub mod log;
pub mod shard;
pub mod sm;
pub mod verify;

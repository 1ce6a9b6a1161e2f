//! reserva's engine: one logical shard's deterministic state machine ([`sm`]),
//! its memory-mapped append log ([`log`]), the two joined into a durable
//! shard ([`shard`]), and the per-core commit journal ([`journal`]) that
//! makes a commit round durable with one barrier.
//!
//! The state machine never touches a file, a socket or a clock; only `log`
//! and `journal` touch files; nothing in this crate opens a socket or reads
//! a clock.

pub mod ids;
pub mod journal;
pub mod limits;
pub mod log;
pub mod shard;
pub mod sm;
pub mod verify;

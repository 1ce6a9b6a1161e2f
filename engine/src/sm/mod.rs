//! The deterministic state machine of one logical shard.
//!
//! Pure: no file, socket, clock or randomness is touched here. The server
//! stamps each batch with a time and passes it in; the log stores the requests
//! that succeeded with that time, and replaying them reproduces the state bit
//! for bit (see [`ShardState::checksum`]).

mod command;
mod error;
mod image;
mod inventory;
mod orders;
pub mod queries;
mod state;
mod types;
mod validate;

pub use command::{Command, LogEntry, Outcome, Request};
pub use error::EngineError;
pub use image::{CartImage, IMAGE_VERSION, StateImage};
pub use state::{Applied, Fnv64, IdempotencyRecord, ShardState, fingerprint};
pub use types::*;

//! The deterministic state machine of one logical shard.
//!
//! Pure: no file, socket, clock or randomness is touched here. The server
//! stamps each batch with a time and passes it in; the log stores the requests
//! that succeeded with that time, and replaying them reproduces the state bit
//! for bit (see [`ShardState::checksum`]).

mod checkout;
mod command;
pub mod commerce;
mod error;
pub mod fraud;
mod fulfilment;
mod image;
mod inventory;
mod orders;
pub mod queries;
mod state;
mod types;
mod validate;

pub use checkout::NO_CURRENCY;
pub use command::{Command, LogEntry, Outcome, Request};
pub use commerce::*;
pub use error::EngineError;
pub use image::{CartImage, IMAGE_VERSION, OrderV1, StateImage, StateImageV1, StateImageV2};
pub use state::{Applied, Fnv64, IdempotencyRecord, ShardState, fingerprint};
pub use types::*;

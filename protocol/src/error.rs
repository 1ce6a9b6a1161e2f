//! The typed error a server answers, per operation (in `RESULTS`) or for a
//! whole connection (in an `ERROR` frame, right before it closes).

use std::fmt;

use reserva_engine::sm::EngineError;

/// Why the server refused an operation or a connection.
///
/// Every variant is part of the wire format (`docs/protocol.md`); new variants
/// are only added at the end, under a new protocol version.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[non_exhaustive]
pub enum WireError {
    /// The shard's state machine refused the mutation (insufficient stock,
    /// unknown SKU or reservation, idempotency conflict, ...). Nothing changed.
    Engine(EngineError),
    /// A query named something that does not exist.
    NotFound {
        /// What kind of thing: `"sku"`, `"reservation"`, `"order"`.
        what: String,
        /// The id asked for, in its text form.
        id: String,
    },
    /// The connection's core does not own the operation's shard: refresh the
    /// shard map (a new `HELLO`) and send it to `owner_core`.
    WrongShard {
        /// The shard the operation routes to.
        shard: u16,
        /// The core that owns it now.
        owner_core: u16,
        /// The version of the shard map that says so.
        map_version: u64,
    },
    /// The shard's queue is full; nothing was applied. Retry after the hint.
    Overloaded {
        /// How long to wait before retrying, in ms.
        retry_after_ms: u32,
    },
    /// The operation is malformed or not allowed from a client (for example
    /// `Tick`, or a reservation whose lines live on two shards).
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// The credential was refused, or the connection has not said `HELLO` yet.
    Unauthorized {
        /// Why.
        reason: String,
    },
    /// A frame (or the reply to an operation) exceeds the frame size limit.
    FrameTooLarge {
        /// The limit, in payload bytes.
        max_bytes: u32,
    },
    /// The peer speaks a protocol version the server does not.
    UnsupportedVersion {
        /// The version the server speaks.
        supported: u16,
    },
    /// The shard cannot serve right now (poisoned after a failed sync,
    /// recovering, or shutting down). Whether a mutation was applied is
    /// unknown only if `reason` says so; retry with the same idempotency key.
    Unavailable {
        /// The shard.
        shard: u16,
        /// Why.
        reason: String,
    },
    /// The server gave up waiting for the shard; the operation may or may not
    /// have been applied. Retry with the same idempotency key.
    Timeout,
    /// The batch's deadline (`Batch::timeout_ms`) passed before the operation
    /// was applied, or would pass before it could be. Nothing was applied.
    DeadlineExceeded {
        /// The time the batch allowed, in ms.
        timeout_ms: u32,
    },
}

impl WireError {
    /// Whether sending the same operation again (with the same idempotency
    /// key) may succeed: `Overloaded`, `Unavailable` and `Timeout`.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            WireError::Overloaded { .. } | WireError::Unavailable { .. } | WireError::Timeout
        )
    }

    /// Shorthand for [`WireError::InvalidRequest`].
    pub fn invalid(reason: impl Into<String>) -> Self {
        WireError::InvalidRequest {
            reason: reason.into(),
        }
    }
}

impl From<EngineError> for WireError {
    fn from(e: EngineError) -> Self {
        WireError::Engine(e)
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Engine(e) => write!(f, "refused: {e}"),
            WireError::NotFound { what, id } => write!(f, "{what} {id} not found"),
            WireError::WrongShard {
                shard,
                owner_core,
                map_version,
            } => write!(
                f,
                "shard {shard} is owned by core {owner_core} (shard map version {map_version})"
            ),
            WireError::Overloaded { retry_after_ms } => {
                write!(f, "overloaded, retry after {retry_after_ms} ms")
            }
            WireError::InvalidRequest { reason } => write!(f, "invalid request: {reason}"),
            WireError::Unauthorized { reason } => write!(f, "unauthorized: {reason}"),
            WireError::FrameTooLarge { max_bytes } => {
                write!(f, "frame exceeds the limit of {max_bytes} payload bytes")
            }
            WireError::UnsupportedVersion { supported } => {
                write!(
                    f,
                    "unsupported protocol version, the server speaks version {supported}"
                )
            }
            WireError::Unavailable { shard, reason } => {
                write!(f, "shard {shard} unavailable: {reason}")
            }
            WireError::Timeout => write!(f, "timed out waiting for the shard"),
            WireError::DeadlineExceeded { timeout_ms } => write!(
                f,
                "deadline of {timeout_ms} ms passed before the operation was applied; nothing was applied"
            ),
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WireError::Engine(e) => Some(e),
            _ => None,
        }
    }
}

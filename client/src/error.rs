//! What can go wrong between a caller and the server.

use std::fmt;
use std::sync::Arc;

use reserva_protocol::{FrameError, WireError};

/// Why a client call failed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error (after retries, if it was retryable).
    Server(WireError),
    /// A socket error: connecting, reading or writing.
    Io(Arc<std::io::Error>),
    /// The server sent bytes that are not a valid frame or message.
    Protocol(FrameError),
    /// The server sent a valid message that does not fit the request (wrong
    /// message kind, wrong number of results, wrong reply to an operation).
    UnexpectedReply {
        /// What was wrong.
        reason: String,
    },
    /// No answer within the request timeout; a mutation may or may not have
    /// been applied (retry it with the same idempotency key).
    Timeout,
    /// The connection closed before the answer arrived.
    Closed,
    /// The handshake with the server failed.
    Handshake(HandshakeError),
}

/// Why a handshake failed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The server refused the connection (`ERROR` instead of `HELLO_OK`):
    /// unauthorized, unsupported version, ...
    Refused(WireError),
    /// The server's answer was not `HELLO_OK` or `ERROR`.
    UnexpectedMessage {
        /// The opcode received.
        opcode: String,
    },
    /// The `HELLO_OK` is unusable (an invalid shard map, impossible limits).
    InvalidHello {
        /// Why.
        reason: String,
    },
    /// No answer within the connect timeout.
    TimedOut,
}

impl ClientError {
    /// Whether the same call may succeed if made again (with the same
    /// idempotency keys): timeouts, lost connections, and retryable server errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Server(e) => e.is_retryable(),
            ClientError::Io(_) | ClientError::Timeout | ClientError::Closed => true,
            ClientError::Handshake(HandshakeError::Refused(e)) => e.is_retryable(),
            ClientError::Handshake(HandshakeError::TimedOut) => true,
            _ => false,
        }
    }

    /// Whether the error concerns the connection rather than the operation:
    /// the operation may not have reached the server, and the connection is
    /// replaced before the next attempt.
    pub(crate) fn is_transport(&self) -> bool {
        matches!(
            self,
            ClientError::Io(_)
                | ClientError::Timeout
                | ClientError::Closed
                | ClientError::Handshake(HandshakeError::TimedOut)
        ) || matches!(self, ClientError::Handshake(HandshakeError::Refused(e)) if e.is_retryable())
    }

    pub(crate) fn unexpected(reason: impl Into<String>) -> Self {
        ClientError::UnexpectedReply {
            reason: reason.into(),
        }
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(Arc::new(e))
    }
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        ClientError::Protocol(e)
    }
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        ClientError::Server(e)
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Server(e) => write!(f, "server error: {e}"),
            ClientError::Io(e) => write!(f, "i/o error: {e}"),
            ClientError::Protocol(e) => write!(f, "protocol error: {e}"),
            ClientError::UnexpectedReply { reason } => write!(f, "unexpected reply: {reason}"),
            ClientError::Timeout => write!(f, "request timed out"),
            ClientError::Closed => write!(f, "connection closed"),
            ClientError::Handshake(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Server(e) => Some(e),
            ClientError::Io(e) => Some(e.as_ref()),
            ClientError::Protocol(e) => Some(e),
            ClientError::Handshake(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Refused(e) => write!(f, "refused: {e}"),
            HandshakeError::UnexpectedMessage { opcode } => {
                write!(f, "expected HELLO_OK, got {opcode}")
            }
            HandshakeError::InvalidHello { reason } => write!(f, "unusable HELLO_OK: {reason}"),
            HandshakeError::TimedOut => write!(f, "no answer to HELLO in time"),
        }
    }
}

impl std::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HandshakeError::Refused(e) => Some(e),
            _ => None,
        }
    }
}

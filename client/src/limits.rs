//! Every bound the client keeps, in one place.

/// Requests in flight on one connection; past it, callers wait for a slot.
pub const IN_FLIGHT_PER_CONNECTION_MAX: usize = 1024;
/// Encoded frames queued for one connection's writer task.
pub const WRITE_QUEUE_FRAMES_MAX: usize = 256;
/// Bytes the writer gathers from its queue into one socket write.
pub const WRITE_COALESCE_BYTES_MAX: usize = 256 * 1024;
/// Initial capacity of a connection's read buffer.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Smallest `frame_bytes_max` a server may advertise for this client to use it.
pub const FRAME_BYTES_MIN: usize = 64 * 1024;
/// Connections to one core.
pub const CONNECTIONS_PER_CORE_MAX: usize = 64;
/// Longest wait between two attempts of a call (a server's `retry_after_ms` is capped to it).
pub const RETRY_BACKOFF_MS_MAX: u64 = 5_000;
/// Most attempts of one call after the first.
pub const RETRIES_MAX: u32 = 32;

const _: () = assert!(WRITE_QUEUE_FRAMES_MAX <= IN_FLIGHT_PER_CONNECTION_MAX);
const _: () = assert!(READ_BUFFER_BYTES <= WRITE_COALESCE_BYTES_MAX);
const _: () = assert!(RETRIES_MAX < 64);
const _: () = assert!(FRAME_BYTES_MIN <= reserva_protocol::limits::FRAME_BYTES_MAX);

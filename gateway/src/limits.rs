//! Every bound the gateway enforces, in one place. Units come last in names.

use std::time::Duration;

/// Largest request body, in bytes; larger bodies get 413 `payload_too_large`.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Longest id in a path, query or body (SKU, warehouse, user, seller), in bytes.
pub const ID_BYTES_MAX: usize = reserva_protocol::engine::limits::ID_BYTES_MAX;
/// Longest `Idempotency-Key` header value, in bytes (the gateway prefixes it
/// with the caller's scope; the result must fit the engine's id limit).
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 40;
/// Shard queries of one scatter-gather in flight at once.
pub const SCATTER_CONCURRENCY_MAX: usize = 32;
/// How long a scatter-gather waits for all shards; later answers are left
/// out and the answer says `partial`.
pub const SCATTER_DEADLINE: Duration = Duration::from_secs(2);
/// Page size of listings when `limit` is not given.
pub const PAGE_LIMIT_DEFAULT: u32 = 20;
/// Largest page size of listings.
pub const PAGE_LIMIT_MAX: u32 = reserva_protocol::limits::LIST_ORDERS_LIMIT_MAX;
/// Most SKUs a low-stock answer lists.
pub const LOW_STOCK_RESULTS_MAX: usize = 1_000;
/// SKUs listed under `top_skus` in seller analytics.
pub const TOP_SKUS: usize = 10;
/// Open server-sent-event streams per gateway; past it, 503 `overloaded`.
pub const SSE_STREAMS_MAX: usize = 1_024;
/// How often an event stream polls its user's shard.
pub const SSE_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Rate-limit buckets kept (keys plus client IPs); past it, idle full
/// buckets are dropped, and if none is idle new clients share one overflow bucket.
pub const RATE_BUCKETS_MAX: usize = 100_000;
/// Requests the gateway works on at once (from routing to the head of the
/// answer; an event stream counts only until its head is sent, and `GET
/// /metrics` is not counted). Past it a request is answered 503
/// `overloaded` with `Retry-After: 1` at once, without queueing: waiting
/// here would only add latency in front of shards that are already busy.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 4_096;
/// Open HTTP connections per gateway. Past it a new connection is accepted,
/// answered a complete 503 `overloaded` (`Retry-After: 1`, `Connection:
/// close`) and closed, so clients see an answer rather than a connect
/// timeout, and the gateway keeps its file descriptors and memory bounded.
pub const CONNECTIONS_MAX: usize = 10_000;
/// An HTTP connection with nothing read or written for this long is
/// closed, freeing its place under `CONNECTIONS_MAX` (so idle keep-alive
/// connections cannot hold every place). Longer than any request takes
/// and than the event streams' 15 s keep-alive comments.
pub const CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Refused connections being answered at once (each lingers until its client
/// reads the 503 and closes, at most [`CONNECTION_REFUSAL_LINGER`]); past
/// it a refused connection gets one non-blocking write of the 503 and is
/// closed at once.
pub const CONNECTION_REFUSALS_MAX: usize = 256;
/// How long a refused connection is kept open for its client to read the 503.
pub const CONNECTION_REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Bytes read and dropped from a refused connection before it is closed
/// (closing with unread input would reset it and could lose the 503).
pub const CONNECTION_REFUSAL_DRAIN_BYTES_MAX: usize = 64 * 1024;
/// `Retry-After` seconds sent with 503 when the gateway or the shards are
/// overloaded or unreachable (the node's own hint wins when longer).
pub const OVERLOADED_RETRY_AFTER_S: u64 = 1;
/// `Retry-After` seconds sent with 503 `payment_unavailable` (the card
/// provider kept failing).
pub const PAYMENT_UNAVAILABLE_RETRY_AFTER_S: u64 = 5;
/// Routes counted separately in metrics (route templates, bounded by the router).
pub const METRIC_SERIES_MAX: usize = 1_024;

const _: () = assert!(IDEMPOTENCY_KEY_BYTES_MAX + 20 <= ID_BYTES_MAX);
const _: () = assert!(PAGE_LIMIT_DEFAULT <= PAGE_LIMIT_MAX);
const _: () =
    assert!((LOW_STOCK_RESULTS_MAX as u32) <= reserva_protocol::limits::SELLER_SKUS_LIMIT_MAX);

//! Every bound the server enforces, in one place.

use std::time::Duration;

/// Requests waiting in one shard's queue; past it, `Overloaded`.
pub const SHARD_QUEUE_DEPTH_MAX: usize = 4_096;
/// Requests one group commit takes from a shard's queue.
pub const COMMIT_BATCH_MAX: usize = 1_024;
/// Operations forwarded to one core and not yet queued there; past it, `Overloaded`.
pub const FORWARD_QUEUE_MAX: usize = 8_192;
/// `BATCH` frames one connection may have in flight; past it, the server stops reading that connection.
pub const IN_FLIGHT_BATCHES_PER_CONNECTION_MAX: usize = 64;
/// Encoded frames waiting to be written to one connection.
pub const WRITE_QUEUE_FRAMES_MAX: usize = 64;
/// Open client connections per core; past it, new connections are closed at once.
pub const CONNECTIONS_PER_CORE_MAX: usize = 4_096;
/// Hint returned with `Overloaded` when a queue or inbox bound is hit.
pub const RETRY_AFTER_MS: u32 = 5;
/// Default admission budget (`--admission-budget-ms`): a client's request
/// that a core expects to hold longer than this is refused at once as
/// `Overloaded`. A storefront call often makes two requests in series
/// (reserve, then confirm), each of which may wait up to the budget plus a
/// round, and its own p99 objective is tens of ms: 6 ms kept a served pair
/// at a p99 of 40-42 ms with twice the node's capacity offered (7 ms:
/// 45-47 ms, 8 ms: 47-51 ms, 20 ms: 60-100 ms), at the cost of shedding
/// 2.4% at capacity itself (8 ms: 0.3%); a smaller budget sheds more of
/// what a loaded node could still serve and makes its rounds, and so its
/// barriers, less full (docs/BENCHMARKS.md, docs/operations.md "Overload").
pub const ADMISSION_BUDGET_DEFAULT: Duration = Duration::from_millis(6);
pub const ADMISSION_BUDGET_MAX: Duration = Duration::from_secs(60);
/// Requests one core holds (queued on its shards, or applied and waiting
/// for their barrier) past which every client request is refused,
/// whatever the wait estimate says. With `CONNECTIONS_PER_CORE_MAX`
/// connections of `IN_FLIGHT_BATCHES_PER_CONNECTION_MAX` batches each, this
/// is what bounds a core's admitted work; a node holds at most
/// `cores x ADMITTED_OPS_PER_CORE_MAX` client requests (plus the checkout
/// steps of at most `SAGAS_PER_CORE_MAX` checkouts per core).
pub const ADMITTED_OPS_PER_CORE_MAX: usize = 16_384;
/// Below this many held requests a core admits without consulting its
/// estimate (a few requests never wait long).
pub const ADMISSION_FLOOR_OPS: usize = 32;
/// Each core measures its answer rate over windows of at least this long.
pub const ADMISSION_RATE_WINDOW: Duration = Duration::from_millis(25);
/// Admission's budget is at least twice the shortest round (journal write
/// and barrier) a core saw over the last one to two of these windows.
pub const ROUND_FLOOR_WINDOW: Duration = Duration::from_secs(1);
/// Longest retry-after hint a core gives with `Overloaded`.
pub const RETRY_AFTER_MAX_MS: u32 = 1_000;
/// How often each core looks for expired reservations.
pub const TICK_INTERVAL: Duration = Duration::from_millis(100);
/// A connection that has not completed `HELLO` within this time is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often cores check for a shutdown request.
pub const SHUTDOWN_POLL: Duration = Duration::from_millis(50);
/// Threads per core that run durability barriers in parallel (one per shard
/// being synced); more than this many shards touched in one round wait their turn.
pub const SYNC_THREADS_PER_CORE: usize = 32;
/// I/O memory each executor locks (glommio needs locked memory; see docs/operations.md).
pub const IO_MEMORY_BYTES_DEFAULT: usize = 1 << 20;
/// SKUs whose request counts each shard tracks for the hot-SKU list.
pub const HOT_SKUS_TRACKED: usize = 32;
/// Hot SKUs reported per shard.
pub const HOT_SKUS_REPORTED: usize = 5;
/// Admin messages waiting in one core's control inbox; past it, the admin call waits.
pub const CONTROL_QUEUE_MAX: usize = 64;
/// How long an admin call waits for a core's answer.
pub const ADMIN_CORE_TIMEOUT: Duration = Duration::from_secs(60);
/// Moves one `rebalance` proposes or applies at most.
pub const REBALANCE_MOVES_MAX: usize = 16;
/// `rebalance` stops once the busiest and idlest cores differ by less than
/// this fraction of the mean load per core.
pub const REBALANCE_TOLERANCE: f64 = 0.10;
/// Samples of per-shard operation counts the admin API keeps for ops/s
/// (one per `RATE_SAMPLE_INTERVAL`).
pub const RATE_SAMPLES: usize = 11;
/// How often the admin API samples per-shard operation counts.
pub const RATE_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// How long admin calls may run on after the node stopped.
pub const ADMIN_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Concurrent admin API requests (connections beyond are served in turn).
pub const ADMIN_CONCURRENCY_MAX: usize = 16;

const _: () = assert!(HOT_SKUS_REPORTED <= HOT_SKUS_TRACKED);
const _: () = assert!(RATE_SAMPLES >= 2);
/// Recent user events (cart and order changes) kept per shard for live
/// updates; older ones are dropped and readers told of the gap.
pub const USER_EVENTS_PER_SHARD_MAX: usize = 512;
/// Orders one `SellerOrders` or `SellerAnalytics` query examines on a shard
/// before it answers what it has (the gateway asks again from there).
pub const SCAN_ORDERS_MAX: usize = 50_000;

const _: () = assert!(COMMIT_BATCH_MAX <= SHARD_QUEUE_DEPTH_MAX);
const _: () = assert!(ADMISSION_FLOOR_OPS < ADMITTED_OPS_PER_CORE_MAX);
const _: () = assert!(reserva_protocol::limits::BATCH_OPS_MAX <= SHARD_QUEUE_DEPTH_MAX);
const _: () =
    assert!(reserva_protocol::limits::USER_EVENTS_LIMIT_MAX as usize <= USER_EVENTS_PER_SHARD_MAX);

/// Payment idempotency keys the sandbox card provider remembers.
pub const PAYMENT_KEYS_REMEMBERED_MAX: usize = 1 << 20;
/// Checkouts one core drives at once; past it, new checkouts are answered `Overloaded`.
pub const SAGAS_PER_CORE_MAX: usize = 65_536;
/// Callers waiting for one checkout's end (retries of the same key); past it, `Overloaded`.
pub const SAGA_WAITERS_MAX: usize = 16;
/// Orders whose side effects one core carries out at once; more wait for the next sweep.
pub const EFFECT_RUNNERS_PER_CORE_MAX: usize = 65_536;
/// Attempts of one saga call (a shard request or a provider call) before the
/// step is given up: a failing payment compensates, other steps retry later.
pub const SAGA_CALL_ATTEMPTS: u32 = 5;
/// Saga steps failing in a row before a checkout's callers are answered
/// `Unavailable` (the driver keeps retrying; a retry of the key attaches to it).
pub const SAGA_STEP_FAILURES_MAX: u32 = 20;
/// Payment provider calls one core has outstanding at once; further calls
/// wait for a slot (they are bounded in turn by `SAGAS_PER_CORE_MAX`), so a
/// slow provider slows checkouts but never holds a core or grows a queue
/// without bound.
pub const PROVIDER_CALLS_PER_CORE_MAX: usize = 1_024;
/// Default time a payment provider call may take before it counts as failed
/// and is retried with the same idempotency key (`payments.timeout_ms`).
pub const PROVIDER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3);
/// Time-to-live of a checkout's holds. A hold under an order is never
/// expired (the node spares it until it is deducted); a hold whose checkout
/// never reached its order record (the node stopped between the two rounds
/// and the checkout's first record was lost with it) is released by expiry
/// after this long at most.
pub const CHECKOUT_HOLD_TTL_MS: u64 = 15 * 60 * 1_000;
/// First wait between attempts; doubles up to `SAGA_BACKOFF_MAX`.
pub const SAGA_BACKOFF_FIRST: Duration = Duration::from_millis(10);
/// Longest wait between attempts.
pub const SAGA_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often each core retries order side effects that failed (provider or shard down).
pub const EFFECT_SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Warehouses with a location in the checkout configuration.
pub const WAREHOUSE_LOCATIONS_MAX: usize = 1_024;

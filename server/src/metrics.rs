//! The node's counters, gauges and histograms, and their Prometheus text.
//!
//! One process-wide [`Metrics`] of fixed size (no allocation after start-up,
//! nothing keyed by client input): per operation type, per error type, per
//! shard and per core. The cores update it with relaxed atomic adds (a
//! shard's counters are written only by its owning core, so the cache lines
//! stay with that core); readers on other threads (the admin API, `/metrics`,
//! and whoever embeds [`render`]) see values at most one publication old.
//!
//! Gauges that mirror a shard's state (queue depth, log bytes, LSNs, live
//! reservations) are published by the owning core every
//! `GAUGE_PUBLISH_INTERVAL` and on every admin request that reads them.
//! Per-shard latency percentiles use two alternating windows
//! (`LATENCY_WINDOW`), so they describe the last one to two windows.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use reserva_engine::ids::ShardId;
use reserva_engine::limits::SHARD_COUNT;
use reserva_engine::sm::{EngineError, Outcome};
use reserva_protocol::{Op, OpResult, Query, Reply, WireError};

/// Operation types, the `op` label of `reserva_ops_total`. Mutations are
/// indexed by their log record kind (1..=30, `docs/log-format.md`); queries
/// follow from `OP_QUERY_BASE`.
pub const OP_LABELS: [&str; 47] = [
    "other",
    "upsert_sku",
    "set_stock",
    "adjust_stock",
    "reserve",
    "release",
    "confirm",
    "restock",
    "create_order",
    "set_order_status",
    "cart_set",
    "cart_remove",
    "cart_clear",
    "tick",
    "checkout_begin",
    "checkout_reserved",
    "checkout_score",
    "checkout_authorized",
    "checkout_create_order",
    "checkout_stock_confirmed",
    "checkout_finish",
    "checkout_fail",
    "checkout_compensated",
    "card_use",
    "credit_grant",
    "order",
    "return_request",
    "return",
    "effect_done",
    "wishlist_set",
    "wishlist_remove",
    "checkout_hold",
    "checkout_place",
    "hold_deduct",
    "checkout_settle",
    "get_sku",
    "get_reservation",
    "get_order",
    "list_orders",
    "get_cart",
    "shard_stats",
    "get_checkout",
    "get_credit",
    "get_return",
    "get_wishlist",
    "other_query",
    "other_mutation",
];
const OP_QUERY_BASE: usize = 35;
const OP_OTHER_QUERY: usize = 45;
const OP_OTHER_MUTATION: usize = 46;
const _: () = assert!(OP_OTHER_MUTATION == OP_LABELS.len() - 1);

/// Error types, the `error` label of `reserva_errors_total`.
pub const ERROR_LABELS: [&str; 31] = [
    "other",
    "invalid_input",
    "unknown_sku",
    "unknown_warehouse",
    "unknown_reservation",
    "unknown_order",
    "insufficient_stock",
    "below_reserved",
    "reservation_expired",
    "engine_wrong_shard",
    "illegal_transition",
    "idempotency_conflict",
    "limit_reached",
    "not_found",
    "wrong_shard",
    "overloaded",
    "invalid_request",
    "unauthorized",
    "frame_too_large",
    "unsupported_version",
    "unavailable",
    "timeout",
    "engine_other",
    "unknown_checkout",
    "checkout_state",
    "payment_declined",
    "payment_failed",
    "fraud_rejected",
    "unknown_return",
    "return_state",
    "checkout_interrupted",
];

/// Upper bounds of the Prometheus latency buckets, in microseconds.
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];
/// Upper bounds of the batch-size buckets, in requests per shard per group commit.
pub const BATCH_BUCKETS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024];
/// Width of one per-shard latency window; percentiles cover the last one or two.
pub const LATENCY_WINDOW: Duration = Duration::from_secs(10);
/// How often each core publishes its shards' gauges.
pub const GAUGE_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// Per-shard latency buckets: four per power of two (at most 19% wide), up to 2^26 µs (67 s).
const FINE_BUCKETS: usize = 104;
/// Most cores a node runs (`--cores` is at most `SHARD_COUNT`).
const CORES_MAX: usize = SHARD_COUNT as usize;

/// Why a request was shed (answered `Overloaded` without being queued).
#[derive(Debug, Clone, Copy)]
pub enum Shed {
    /// The shard's queue was full.
    ShardQueue,
    /// The owning core's forward inbox was full.
    ForwardQueue,
    /// The owning core expected the request to wait past the admission
    /// budget or its deadline.
    ExpectedWait,
    /// The request's deadline had passed before it was applied
    /// (`DeadlineExceeded`, not counted as shed).
    Deadline,
}

/// A cumulative histogram with fixed bucket bounds (Prometheus style).
struct Histogram<const N: usize> {
    /// `counts[i]` = samples <= `bounds[i]`, not cumulative; `counts[N]` = above all.
    counts: [AtomicU64; 17],
    sum: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new() -> Self {
        const { assert!(N < 17) };
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }

    fn record(&self, bounds: &[u64; N], value: u64) {
        let i = bounds.partition_point(|b| *b < value);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
    }
}

/// Fine-grained latency buckets of one shard, one window.
struct FineHistogram {
    counts: [AtomicU64; FINE_BUCKETS],
}

impl FineHistogram {
    fn new() -> Self {
        FineHistogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The bucket of a latency in µs: exact below 4, then four per power of two.
fn fine_bucket(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let msb = 63 - us.leading_zeros() as usize;
    let sub = ((us >> (msb - 2)) & 3) as usize;
    ((msb - 1) * 4 + sub).min(FINE_BUCKETS - 1)
}

/// The largest value in a fine bucket.
fn fine_upper(i: usize) -> u64 {
    if i < 4 {
        return i as u64;
    }
    let msb = i / 4 + 1;
    let sub = (i % 4) as u64;
    ((4 + sub) << (msb - 2)) + (1u64 << (msb - 2)) - 1
}

/// Everything known about one shard.
struct ShardMetrics {
    owner: AtomicU32,
    ops: AtomicU64,
    errors: AtomicU64,
    queue_depth: AtomicU64,
    log_bytes: AtomicU64,
    lsn: AtomicU64,
    durable_lsn: AtomicU64,
    last_snapshot_lsn: AtomicU64,
    records_since_snapshot: AtomicU64,
    reservations_live: AtomicU64,
    skus: AtomicU64,
    orders: AtomicU64,
    poisoned: AtomicBool,
    /// `[window][kind]`: kind 0 = apply, 1 = commit.
    latency: [[FineHistogram; 2]; 2],
}

/// One core's histograms.
struct CoreMetrics {
    batch_size: Histogram<11>,
    apply_us: Histogram<16>,
    commit_us: Histogram<16>,
    journal: JournalCounters,
    /// Admission: requests held, answer rate (per s), expected wait (µs).
    held: AtomicU64,
    rate: AtomicU64,
    wait_us: AtomicU64,
}

/// One core's commit journal counters.
#[derive(Default)]
struct JournalCounters {
    frames: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    barriers: AtomicU64,
    full: AtomicU64,
    checkpoints: AtomicU64,
}

/// A core's journal counters as the admin API reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalTotals {
    /// Frames written.
    pub frames: u64,
    /// Records in them.
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Barriers completed.
    pub barriers: u64,
    /// Times a frame waited because every segment awaited a checkpoint.
    pub full: u64,
    /// Segments freed by the checkpointer.
    pub checkpoints: u64,
}

/// The process-wide metrics. See the module docs.
pub struct Metrics {
    started: Instant,
    cores: AtomicUsize,
    recovery_ms: AtomicU64,
    map_version: AtomicU64,
    ops: [AtomicU64; OP_LABELS.len()],
    errors: [AtomicU64; ERROR_LABELS.len()],
    shed_shard_queue: AtomicU64,
    shed_forward_queue: AtomicU64,
    shed_admission: AtomicU64,
    deadline_exceeded: AtomicU64,
    reservations_expired: AtomicU64,
    shard_moves: AtomicU64,
    snapshots: AtomicU64,
    window: AtomicUsize,
    shards: Vec<ShardMetrics>,
    per_core: Vec<CoreMetrics>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics (created on first use).
pub fn global() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics {
        started: Instant::now(),
        cores: AtomicUsize::new(0),
        recovery_ms: AtomicU64::new(0),
        map_version: AtomicU64::new(0),
        ops: std::array::from_fn(|_| AtomicU64::new(0)),
        errors: std::array::from_fn(|_| AtomicU64::new(0)),
        shed_shard_queue: AtomicU64::new(0),
        shed_forward_queue: AtomicU64::new(0),
        shed_admission: AtomicU64::new(0),
        deadline_exceeded: AtomicU64::new(0),
        reservations_expired: AtomicU64::new(0),
        shard_moves: AtomicU64::new(0),
        snapshots: AtomicU64::new(0),
        window: AtomicUsize::new(0),
        shards: (0..SHARD_COUNT)
            .map(|_| ShardMetrics {
                owner: AtomicU32::new(0),
                ops: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                queue_depth: AtomicU64::new(0),
                log_bytes: AtomicU64::new(0),
                lsn: AtomicU64::new(0),
                durable_lsn: AtomicU64::new(0),
                last_snapshot_lsn: AtomicU64::new(0),
                records_since_snapshot: AtomicU64::new(0),
                reservations_live: AtomicU64::new(0),
                skus: AtomicU64::new(0),
                orders: AtomicU64::new(0),
                poisoned: AtomicBool::new(false),
                latency: std::array::from_fn(|_| std::array::from_fn(|_| FineHistogram::new())),
            })
            .collect(),
        per_core: (0..CORES_MAX)
            .map(|_| CoreMetrics {
                batch_size: Histogram::new(),
                apply_us: Histogram::new(),
                commit_us: Histogram::new(),
                journal: JournalCounters::default(),
                held: AtomicU64::new(0),
                rate: AtomicU64::new(0),
                wait_us: AtomicU64::new(0),
            })
            .collect(),
    })
}

/// The op label index of an operation.
pub fn op_label(op: &Op) -> usize {
    match op {
        Op::Mutate(r) => {
            let kind = usize::from(r.command.kind());
            if kind < OP_QUERY_BASE {
                kind
            } else {
                OP_OTHER_MUTATION
            }
        }
        Op::Query(q) => match q {
            Query::GetSku { .. } => OP_QUERY_BASE,
            Query::GetReservation { .. } => OP_QUERY_BASE + 1,
            Query::GetOrder { .. } => OP_QUERY_BASE + 2,
            Query::ListOrders { .. } => OP_QUERY_BASE + 3,
            Query::GetCart { .. } => OP_QUERY_BASE + 4,
            Query::ShardStats { .. } => OP_QUERY_BASE + 5,
            Query::GetCheckout { .. } => OP_QUERY_BASE + 6,
            Query::GetCredit { .. } => OP_QUERY_BASE + 7,
            Query::GetReturn { .. } => OP_QUERY_BASE + 8,
            Query::GetWishlist { .. } => OP_QUERY_BASE + 9,
            #[allow(unreachable_patterns, reason = "queries added later count as other")]
            _ => OP_OTHER_QUERY,
        },
    }
}

/// The error label index of a refusal.
pub fn error_label(e: &WireError) -> usize {
    match e {
        WireError::Engine(e) => match e {
            EngineError::InvalidInput { .. } => 1,
            EngineError::UnknownSku { .. } => 2,
            EngineError::UnknownWarehouse { .. } => 3,
            EngineError::UnknownReservation { .. } => 4,
            EngineError::UnknownOrder { .. } => 5,
            EngineError::InsufficientStock { .. } => 6,
            EngineError::BelowReserved { .. } => 7,
            EngineError::ReservationExpired { .. } => 8,
            EngineError::WrongShard { .. } => 9,
            EngineError::IllegalTransition { .. } => 10,
            EngineError::IdempotencyConflict { .. } => 11,
            EngineError::LimitReached { .. } => 12,
            EngineError::UnknownCheckout { .. } => 23,
            EngineError::CheckoutState { .. } => 24,
            EngineError::PaymentDeclined { .. } => 25,
            EngineError::PaymentFailed { .. } => 26,
            EngineError::FraudRejected { .. } => 27,
            EngineError::UnknownReturn { .. } => 28,
            EngineError::ReturnState { .. } => 29,
            EngineError::CheckoutInterrupted { .. } => 30,
            _ => 22,
        },
        WireError::NotFound { .. } => 13,
        WireError::WrongShard { .. } => 14,
        WireError::Overloaded { .. } => 15,
        WireError::InvalidRequest { .. } => 16,
        WireError::Unauthorized { .. } => 17,
        WireError::FrameTooLarge { .. } => 18,
        WireError::UnsupportedVersion { .. } => 19,
        WireError::Unavailable { .. } => 20,
        WireError::Timeout => 21,
        _ => 0,
    }
}

impl Metrics {
    /// Records the node's shape once it is up.
    pub fn started(&self, cores: u16, recovery: Duration, map_version: u64) {
        self.cores.store(usize::from(cores), Relaxed);
        self.recovery_ms.store(recovery.as_millis() as u64, Relaxed);
        self.map_version.store(map_version, Relaxed);
    }

    /// Time since the process started using metrics (start-up).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Start-up recovery time.
    pub fn recovery_ms(&self) -> u64 {
        self.recovery_ms.load(Relaxed)
    }

    /// One executed operation on `shard` and its result.
    pub fn record_op(&self, shard: ShardId, label: usize, result: &OpResult) {
        self.ops[label.min(OP_LABELS.len() - 1)].fetch_add(1, Relaxed);
        let Some(s) = self.shards.get(usize::from(shard)) else {
            return;
        };
        s.ops.fetch_add(1, Relaxed);
        match result {
            Err(e) => {
                s.errors.fetch_add(1, Relaxed);
                self.errors[error_label(e)].fetch_add(1, Relaxed);
            }
            Ok(Reply::Outcome(Outcome::Ticked { expired, .. })) => {
                self.reservations_expired
                    .fetch_add(u64::from(*expired), Relaxed);
            }
            Ok(_) => {}
        }
    }

    /// A request answered `Overloaded` without being queued.
    pub fn shed(&self, why: Shed) {
        self.shed_n(why, 1);
    }

    /// `n` requests were refused for the same reason (a whole batch).
    pub fn shed_n(&self, why: Shed, n: u64) {
        let counter = match why {
            Shed::ShardQueue => &self.shed_shard_queue,
            Shed::ForwardQueue => &self.shed_forward_queue,
            Shed::ExpectedWait => &self.shed_admission,
            Shed::Deadline => &self.deadline_exceeded,
        };
        counter.fetch_add(n, Relaxed);
    }

    /// One shard's batch of a group commit: its size and apply+append time.
    pub fn record_apply(&self, core: u16, shard: ShardId, requests: usize, took: Duration) {
        let us = took.as_micros() as u64;
        if let Some(c) = self.per_core.get(usize::from(core)) {
            c.batch_size.record(&BATCH_BUCKETS, requests as u64);
            c.apply_us.record(&LATENCY_BUCKETS_US, us);
        }
        self.record_fine(shard, 0, us);
    }

    /// A journal frame was written (`barrier`: and made durable).
    pub fn journal_write(&self, core: u16, bytes: u64, records: u64, barrier: bool) {
        if let Some(c) = self.per_core.get(usize::from(core)) {
            let j = &c.journal;
            j.frames.fetch_add(1, Relaxed);
            j.records.fetch_add(records, Relaxed);
            j.bytes.fetch_add(bytes, Relaxed);
            if barrier {
                j.barriers.fetch_add(1, Relaxed);
            }
        }
    }

    /// A frame found no free journal segment and waits for a checkpoint.
    pub fn journal_full(&self, core: u16) {
        if let Some(c) = self.per_core.get(usize::from(core)) {
            c.journal.full.fetch_add(1, Relaxed);
        }
    }

    /// A core's admission state: requests held, the answer rate it measured
    /// (0 before the first window) and the wait it expects for a new request.
    pub fn publish_admission(&self, core: u16, held: usize, rate: Option<f64>, wait: Duration) {
        if let Some(c) = self.per_core.get(usize::from(core)) {
            c.held.store(held as u64, Relaxed);
            c.rate.store(rate.map_or(0, |r| r as u64), Relaxed);
            c.wait_us.store(wait.as_micros() as u64, Relaxed);
        }
    }

    /// The checkpointer freed a journal segment.
    pub fn checkpoint_done(&self, core: u16) {
        if let Some(c) = self.per_core.get(usize::from(core)) {
            c.journal.checkpoints.fetch_add(1, Relaxed);
        }
    }

    /// The journal counters of `core`.
    pub fn journal_totals(&self, core: u16) -> JournalTotals {
        let Some(c) = self.per_core.get(usize::from(core)) else {
            return JournalTotals::default();
        };
        let j = &c.journal;
        JournalTotals {
            frames: j.frames.load(Relaxed),
            records: j.records.load(Relaxed),
            bytes: j.bytes.load(Relaxed),
            barriers: j.barriers.load(Relaxed),
            full: j.full.load(Relaxed),
            checkpoints: j.checkpoints.load(Relaxed),
        }
    }

    /// One shard's group commit, from its start to its answers' release.
    pub fn record_commit(&self, core: u16, shard: ShardId, took: Duration) {
        let us = took.as_micros() as u64;
        if let Some(c) = self.per_core.get(usize::from(core)) {
            c.commit_us.record(&LATENCY_BUCKETS_US, us);
        }
        self.record_fine(shard, 1, us);
    }

    fn record_fine(&self, shard: ShardId, kind: usize, us: u64) {
        let w = self.window.load(Relaxed) & 1;
        if let Some(s) = self.shards.get(usize::from(shard)) {
            s.latency[w][kind].counts[fine_bucket(us)].fetch_add(1, Relaxed);
        }
    }

    /// Starts a new latency window: clears the older one and makes it current.
    pub fn flip_window(&self) {
        let next = (self.window.load(Relaxed) + 1) & 1;
        for s in &self.shards {
            for h in &s.latency[next] {
                for c in &h.counts {
                    c.store(0, Relaxed);
                }
            }
        }
        self.window.store(next, Relaxed);
    }

    /// The window generation (changes on every flip).
    pub fn window(&self) -> usize {
        self.window.load(Relaxed)
    }

    /// The 99th percentile of a shard's apply (`kind` 0) or commit (1)
    /// latency over the current windows, in µs (0: no samples).
    pub fn p99_us(&self, shard: ShardId, kind: usize) -> u64 {
        let Some(s) = self.shards.get(usize::from(shard)) else {
            return 0;
        };
        let counts: Vec<u64> = (0..FINE_BUCKETS)
            .map(|i| {
                s.latency[0][kind].counts[i].load(Relaxed)
                    + s.latency[1][kind].counts[i].load(Relaxed)
            })
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = total - total / 100;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return fine_upper(i);
            }
        }
        fine_upper(FINE_BUCKETS - 1)
    }

    /// Publishes one shard's state gauges (called by its owning core).
    pub fn publish_shard(&self, core: u16, shard: ShardId, g: &ShardGauges) {
        let Some(s) = self.shards.get(usize::from(shard)) else {
            return;
        };
        s.owner.store(u32::from(core), Relaxed);
        s.queue_depth.store(g.queue_depth, Relaxed);
        s.log_bytes.store(g.log_bytes, Relaxed);
        s.lsn.store(g.lsn, Relaxed);
        s.durable_lsn.store(g.durable_lsn, Relaxed);
        s.last_snapshot_lsn.store(g.last_snapshot_lsn, Relaxed);
        s.records_since_snapshot
            .store(g.records_since_snapshot, Relaxed);
        s.reservations_live.store(g.reservations_live, Relaxed);
        s.skus.store(g.skus, Relaxed);
        s.orders.store(g.orders, Relaxed);
        s.poisoned.store(g.poisoned, Relaxed);
    }

    /// A shard moved; the map now has `version`.
    pub fn shard_moved(&self, shard: ShardId, to: u16, version: u64) {
        self.shard_moves.fetch_add(1, Relaxed);
        self.map_version.store(version, Relaxed);
        if let Some(s) = self.shards.get(usize::from(shard)) {
            s.owner.store(u32::from(to), Relaxed);
        }
    }

    /// A snapshot was written on request.
    pub fn snapshot_taken(&self) {
        self.snapshots.fetch_add(1, Relaxed);
    }

    /// One shard's counters and gauges as last published.
    pub fn shard(&self, shard: ShardId) -> ShardSample {
        let Some(s) = self.shards.get(usize::from(shard)) else {
            return ShardSample::default();
        };
        ShardSample {
            core: s.owner.load(Relaxed) as u16,
            ops: s.ops.load(Relaxed),
            errors: s.errors.load(Relaxed),
            gauges: ShardGauges {
                queue_depth: s.queue_depth.load(Relaxed),
                log_bytes: s.log_bytes.load(Relaxed),
                lsn: s.lsn.load(Relaxed),
                durable_lsn: s.durable_lsn.load(Relaxed),
                last_snapshot_lsn: s.last_snapshot_lsn.load(Relaxed),
                records_since_snapshot: s.records_since_snapshot.load(Relaxed),
                reservations_live: s.reservations_live.load(Relaxed),
                skus: s.skus.load(Relaxed),
                orders: s.orders.load(Relaxed),
                poisoned: s.poisoned.load(Relaxed),
            },
        }
    }

    /// Node-wide totals.
    pub fn totals(&self) -> Totals {
        let shards: Vec<ShardSample> = (0..SHARD_COUNT).map(|s| self.shard(s)).collect();
        Totals {
            ops: shards.iter().map(|s| s.ops).sum(),
            errors: shards.iter().map(|s| s.errors).sum(),
            shed: self.shed_shard_queue.load(Relaxed)
                + self.shed_forward_queue.load(Relaxed)
                + self.shed_admission.load(Relaxed),
            log_bytes: shards.iter().map(|s| s.gauges.log_bytes).sum(),
            reservations_live: shards.iter().map(|s| s.gauges.reservations_live).sum(),
            reservations_expired: self.reservations_expired.load(Relaxed),
            skus: shards.iter().map(|s| s.gauges.skus).sum(),
            orders: shards.iter().map(|s| s.gauges.orders).sum(),
            poisoned_shards: shards.iter().filter(|s| s.gauges.poisoned).count() as u32,
            shard_moves: self.shard_moves.load(Relaxed),
        }
    }
}

/// A shard's state as its core publishes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardGauges {
    pub queue_depth: u64,
    pub log_bytes: u64,
    pub lsn: u64,
    pub durable_lsn: u64,
    pub last_snapshot_lsn: u64,
    pub records_since_snapshot: u64,
    pub reservations_live: u64,
    pub skus: u64,
    pub orders: u64,
    pub poisoned: bool,
}

/// A shard's counters and last published gauges.
#[derive(Debug, Clone, Default)]
pub struct ShardSample {
    pub core: u16,
    pub ops: u64,
    pub errors: u64,
    pub gauges: ShardGauges,
}

/// Node-wide sums.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub ops: u64,
    pub errors: u64,
    pub shed: u64,
    pub log_bytes: u64,
    pub reservations_live: u64,
    pub reservations_expired: u64,
    pub skus: u64,
    pub orders: u64,
    pub poisoned_shards: u32,
    pub shard_moves: u64,
}

/// The node's metrics in the Prometheus text exposition format (0.0.4).
/// A gateway running in the same process can append this to its own
/// `/metrics`. Before a node has started it holds only the build info.
pub fn render() -> String {
    let m = global();
    let mut out = String::with_capacity(64 * 1024);
    let cores = m.cores.load(Relaxed).min(CORES_MAX);
    header(
        &mut out,
        "reserva_build_info",
        "gauge",
        "Build of the running node.",
    );
    let _ = writeln!(
        out,
        "reserva_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    if cores == 0 {
        return out;
    }
    gauge(
        &mut out,
        "reserva_uptime_seconds",
        "Seconds since start.",
        m.uptime().as_secs_f64(),
    );
    gauge(
        &mut out,
        "reserva_recovery_seconds",
        "Time start-up took to recover every shard.",
        m.recovery_ms() as f64 / 1000.0,
    );
    gauge(
        &mut out,
        "reserva_cores",
        "Executors (cores) of the node.",
        cores as f64,
    );
    gauge(
        &mut out,
        "reserva_shard_map_version",
        "Version of the shard map (bumped by every shard move).",
        m.map_version.load(Relaxed) as f64,
    );
    header(
        &mut out,
        "reserva_ops_total",
        "counter",
        "Operations executed on their shard, by type.",
    );
    for (i, name) in OP_LABELS.iter().enumerate() {
        let v = m.ops[i].load(Relaxed);
        if v > 0 || i > 0 {
            let _ = writeln!(out, "reserva_ops_total{{op=\"{name}\"}} {v}");
        }
    }
    header(
        &mut out,
        "reserva_errors_total",
        "counter",
        "Operations refused, by error type.",
    );
    for (i, name) in ERROR_LABELS.iter().enumerate() {
        let _ = writeln!(
            out,
            "reserva_errors_total{{error=\"{name}\"}} {}",
            m.errors[i].load(Relaxed)
        );
    }
    header(
        &mut out,
        "reserva_shed_total",
        "counter",
        "Requests answered Overloaded instead of being queued: by the queue that was full, or admission (the core expected a wait past the budget or the request's deadline).",
    );
    let _ = writeln!(
        out,
        "reserva_shed_total{{queue=\"shard\"}} {}",
        m.shed_shard_queue.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "reserva_shed_total{{queue=\"forward\"}} {}",
        m.shed_forward_queue.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "reserva_shed_total{{queue=\"admission\"}} {}",
        m.shed_admission.load(Relaxed)
    );
    counter(
        &mut out,
        "reserva_deadline_exceeded_total",
        "Requests answered DeadlineExceeded: their deadline passed before they were applied (never applied).",
        m.deadline_exceeded.load(Relaxed),
    );
    let t = m.totals();
    counter(
        &mut out,
        "reserva_reservations_expired_total",
        "Reservations released by expiry.",
        t.reservations_expired,
    );
    gauge(
        &mut out,
        "reserva_reservations_live",
        "Live reservations on the node.",
        t.reservations_live as f64,
    );
    counter(
        &mut out,
        "reserva_shard_moves_total",
        "Shard moves between cores.",
        t.shard_moves,
    );
    counter(
        &mut out,
        "reserva_snapshots_requested_total",
        "Snapshots written on an admin request.",
        m.snapshots.load(Relaxed),
    );
    gauge(
        &mut out,
        "reserva_shards_poisoned",
        "Shards refusing work after a log failure.",
        f64::from(t.poisoned_shards),
    );
    shard_series(&mut out, m);
    core_histograms(&mut out, m, cores);
    journal_counters(&mut out, m, cores);
    admission_gauges(&mut out, m, cores);
    out
}

/// A per-shard series: name, type, help, and how to read it from a sample.
type ShardSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardSample) -> u64,
);

fn shard_series(out: &mut String, m: &Metrics) {
    let samples: Vec<ShardSample> = (0..SHARD_COUNT).map(|s| m.shard(s)).collect();
    let series: [ShardSeries; 6] = [
        (
            "reserva_shard_ops_total",
            "counter",
            "Operations executed on the shard.",
            |s| s.ops,
        ),
        (
            "reserva_shard_errors_total",
            "counter",
            "Operations the shard refused.",
            |s| s.errors,
        ),
        (
            "reserva_shard_queue_depth",
            "gauge",
            "Requests waiting in the shard's queue.",
            |s| s.gauges.queue_depth,
        ),
        (
            "reserva_shard_log_bytes",
            "gauge",
            "Disk bytes of the shard's segments and snapshots.",
            |s| s.gauges.log_bytes,
        ),
        (
            "reserva_shard_lsn",
            "gauge",
            "Last LSN appended to the shard's log.",
            |s| s.gauges.lsn,
        ),
        (
            "reserva_shard_reservations_live",
            "gauge",
            "Live reservations on the shard.",
            |s| s.gauges.reservations_live,
        ),
    ];
    for (name, kind, help, get) in series {
        header(out, name, kind, help);
        for (shard, s) in samples.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{shard=\"{shard}\",core=\"{}\"}} {}",
                s.core,
                get(s)
            );
        }
    }
}

fn admission_gauges(out: &mut String, m: &Metrics, cores: usize) {
    type Field = fn(&CoreMetrics) -> f64;
    let rows: [(&str, &str, Field); 3] = [
        (
            "reserva_core_admission_held",
            "Client and node requests the core holds (queued, or applied and unanswered), as of its last tick.",
            |c| c.held.load(Relaxed) as f64,
        ),
        (
            "reserva_core_admission_rate",
            "Requests per second the core answers when busy, as admission measures it (0 before its first window).",
            |c| c.rate.load(Relaxed) as f64,
        ),
        (
            "reserva_core_admission_wait_seconds",
            "The wait admission expects for a new request on the core (held / rate), as of its last tick.",
            |c| c.wait_us.load(Relaxed) as f64 / 1e6,
        ),
    ];
    for (name, help, field) in rows {
        header(out, name, "gauge", help);
        for (core, c) in m.per_core.iter().take(cores).enumerate() {
            let _ = writeln!(out, "{name}{{core=\"{core}\"}} {}", field(c));
        }
    }
}

fn journal_counters(out: &mut String, m: &Metrics, cores: usize) {
    type Field = fn(&JournalCounters) -> &AtomicU64;
    let rows: [(&str, &str, Field); 6] = [
        (
            "reserva_journal_frames_total",
            "Commit journal frames written (one per commit round).",
            |j| &j.frames,
        ),
        (
            "reserva_journal_records_total",
            "Records written to the commit journal.",
            |j| &j.records,
        ),
        (
            "reserva_journal_bytes_total",
            "Bytes written to the commit journal.",
            |j| &j.bytes,
        ),
        (
            "reserva_journal_barriers_total",
            "Commit journal durability barriers (fdatasync) completed.",
            |j| &j.barriers,
        ),
        (
            "reserva_journal_full_total",
            "Times a round waited because every journal segment awaited a checkpoint.",
            |j| &j.full,
        ),
        (
            "reserva_journal_checkpoints_total",
            "Journal segments freed by the checkpointer (every shard in them durable in its own log).",
            |j| &j.checkpoints,
        ),
    ];
    for (name, help, field) in rows {
        header(out, name, "counter", help);
        for (core, c) in m.per_core.iter().take(cores).enumerate() {
            let _ = writeln!(
                out,
                "{name}{{core=\"{core}\"}} {}",
                field(&c.journal).load(Relaxed)
            );
        }
    }
}

fn core_histograms(out: &mut String, m: &Metrics, cores: usize) {
    header(
        out,
        "reserva_batch_size",
        "histogram",
        "Requests per shard per group commit.",
    );
    for (core, c) in m.per_core.iter().take(cores).enumerate() {
        histogram(
            out,
            "reserva_batch_size",
            core,
            &c.batch_size,
            &BATCH_BUCKETS,
            1.0,
        );
    }
    header(
        out,
        "reserva_apply_latency_seconds",
        "histogram",
        "Applying and appending one shard's batch of a group commit.",
    );
    for (core, c) in m.per_core.iter().take(cores).enumerate() {
        histogram(
            out,
            "reserva_apply_latency_seconds",
            core,
            &c.apply_us,
            &LATENCY_BUCKETS_US,
            1e-6,
        );
    }
    header(
        out,
        "reserva_commit_latency_seconds",
        "histogram",
        "One shard's group commit from its start to its answers' release (apply, append, durability barrier).",
    );
    for (core, c) in m.per_core.iter().take(cores).enumerate() {
        histogram(
            out,
            "reserva_commit_latency_seconds",
            core,
            &c.commit_us,
            &LATENCY_BUCKETS_US,
            1e-6,
        );
    }
}

fn histogram<const N: usize>(
    out: &mut String,
    name: &str,
    core: usize,
    h: &Histogram<N>,
    bounds: &[u64; N],
    scale: f64,
) {
    let mut cumulative = 0;
    for (i, b) in bounds.iter().enumerate() {
        cumulative += h.counts[i].load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{core=\"{core}\",le=\"{}\"}} {cumulative}",
            *b as f64 * scale
        );
    }
    cumulative += h.counts[N].load(Relaxed);
    let _ = writeln!(
        out,
        "{name}_bucket{{core=\"{core}\",le=\"+Inf\"}} {cumulative}"
    );
    let _ = writeln!(
        out,
        "{name}_sum{{core=\"{core}\"}} {}",
        h.sum.load(Relaxed) as f64 * scale
    );
    let _ = writeln!(out, "{name}_count{{core=\"{core}\"}} {cumulative}");
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {v}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fine_buckets_are_contiguous_and_bound_their_values() {
        let mut last = 0;
        for us in 0..100_000u64 {
            let b = fine_bucket(us);
            assert!(b == last || b == last + 1, "{us}: {b} after {last}");
            assert!(fine_upper(b) >= us, "{us} above its bucket's bound");
            if b > 0 {
                assert!(fine_upper(b - 1) < us);
            }
            last = b;
        }
        assert_eq!(fine_bucket(u64::MAX), FINE_BUCKETS - 1);
    }

    /// Every metric the sample dashboard queries exists.
    #[test]
    fn the_sample_dashboard_uses_only_metrics_that_exist() {
        let m = global();
        m.started(2, Duration::from_millis(5), 1);
        let text = render();
        let dashboard = include_str!("../../docs/grafana-dashboard.json");
        let mut checked = 0;
        for (i, _) in dashboard.match_indices("reserva_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let base = name
                .strip_suffix("_bucket")
                .unwrap_or(&name)
                .trim_end_matches('_');
            if base == "reserva_node" || base.is_empty() {
                continue;
            }
            assert!(
                text.contains(&format!("# TYPE {base} ")),
                "{base} is not exported"
            );
            checked += 1;
        }
        assert!(checked > 10);
    }

    #[test]
    fn render_is_prometheus_text() {
        let m = global();
        m.started(2, Duration::from_millis(5), 1);
        m.record_commit(0, 3, Duration::from_micros(700));
        m.shed(Shed::ShardQueue);
        let text = render();
        assert!(text.contains("# TYPE reserva_commit_latency_seconds histogram"));
        assert!(text.contains("reserva_commit_latency_seconds_bucket{core=\"0\",le=\"+Inf\"} 1"));
        assert!(text.contains("reserva_shed_total{queue=\"shard\"} 1"));
        assert!(m.p99_us(3, 1) >= 700);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}

//! Every bound the load generator keeps, in one place.

use std::time::Duration;

/// SKUs a catalogue may have.
pub const SKUS_MAX: usize = 1 << 24;
/// Warehouses per SKU (reserva allows 64).
pub const WAREHOUSES_MAX: usize = 64;
/// Lines of one reserve or checkout unit.
pub const LINES_PER_UNIT_MAX: usize = 3;
/// Units in flight (sent, not yet answered) in open loop. Past it, new units
/// are not sent and count as `loadgen_backlog` errors: the target is not
/// keeping up and the run's memory stays bounded.
pub const IN_FLIGHT_UNITS_MAX: u64 = 1 << 20;
/// Units handed to one batch task (one step per target call).
pub const UNITS_PER_BATCH_MAX: usize = 4_096;
/// How often the open-loop scheduler wakes to send the units that are due.
pub const TICK: Duration = Duration::from_millis(1);
/// Largest latency the histograms hold (longer ones are clamped to it).
pub const LATENCY_US_MAX: u64 = 120_000_000;
/// Closed-loop workers.
pub const CONCURRENCY_MAX: usize = 65_536;
/// Connections a binding opens.
pub const CONNECTIONS_MAX: usize = 4_096;
/// Acknowledged order ids kept for `--verify`; past it the rest are counted
/// but not checked one by one.
pub const ORDERS_TRACKED_MAX: usize = 20_000_000;
/// Operations per seeding request (one batch, pipeline or statement).
pub const SEED_CHUNK_SKUS: usize = 1_000;
/// Seeding requests in flight at once.
pub const SEED_IN_FLIGHT: usize = 64;
/// Times a seeding operation the target shed (`overloaded`) is sent again,
/// each after a wait of at most 1 s (reserva's retry-after hint; over HTTP,
/// doubling from 5 ms).
pub const SEED_SHED_RETRIES: u32 = 100;
/// Operations per verification request.
pub const VERIFY_CHUNK: usize = 1_000;
/// How long `run --verify` waits for the target's first and last SKU before
/// saying the catalogue does not match (no retries: a mismatch is not transient).
pub const CATALOGUE_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Steps of a `--rate max` search (doubling, then bisecting).
pub const RATE_SEARCH_STEPS_MAX: usize = 24;
/// Seconds of per-second history kept for the report and the plot.
pub const SECONDS_MAX: usize = 24 * 60 * 60;
/// Width of the buckets finer than a second (offered, goodput, shed and the
/// p99 of successes) that the spike phases, the recovery time and the plot
/// are computed from.
pub const BUCKET_MS: u64 = 100;
/// Buckets in the window whose p99 of successes decides recovery after a
/// spike (1 s): a single slow answer among a bucket's few does not count as
/// being over the SLO, a second of them does.
pub const RECOVERY_WINDOW_BUCKETS: usize = 10;
/// Buckets kept at most (a run also keeps no more than its duration needs).
pub const BUCKETS_MAX: usize = SECONDS_MAX * (1_000 / BUCKET_MS as usize);

const _: () = assert!(UNITS_PER_BATCH_MAX as u64 <= IN_FLIGHT_UNITS_MAX);
const _: () = assert!(LINES_PER_UNIT_MAX >= 1);
const _: () = assert!(WAREHOUSES_MAX <= 64);
const _: () = assert!(BUCKET_MS > 0 && 1_000 % BUCKET_MS == 0);
/// CPU numbers `--cpus` accepts (below this, the kernel's `CPU_SETSIZE`).
pub const CPUS_MAX: usize = 1024;

//! Engine benchmarks: state-machine apply rate, log append + barrier rate,
//! and recovery (replay) rate.
//!
//! Run: `cargo bench -p reserva-engine --bench engine`. The log benchmarks
//! write to a temporary directory on the same file system as the target
//! directory (`RESERVA_BENCH_DIR` overrides it); a tmpfs would make the
//! barrier free and the numbers meaningless.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use reserva_engine::ids::{ReservationId, key_on_shard, shard_of};
use reserva_engine::log::{Log, LogConfig};
use reserva_engine::shard::{ChangeStream, Shard, ShardConfig};
use reserva_engine::sm::*;

const SHARD: u16 = 1;
const T0: u64 = 1_800_000_000_000;
const SKUS: usize = 1_000;

fn bench_dir() -> PathBuf {
    std::env::var_os("RESERVA_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp"))
}

/// The first `SKUS` keys `sku-{n}` on `SHARD`, in one pass (calling
/// `key_on_shard` per index rescans from 0 each time: quadratic, seconds of setup).
fn skus() -> Vec<String> {
    (0u64..)
        .map(|n| format!("sku-{n}"))
        .filter(|k| shard_of(k) == SHARD)
        .take(SKUS)
        .collect()
}

fn stocked_state(skus: &[String]) -> ShardState {
    let mut s = ShardState::new(SHARD);
    let price = Money {
        amount_minor: 1_999,
        currency: Currency::parse("EUR").unwrap(),
    };
    for sku in skus {
        let up = Command::UpsertSku {
            sku: sku.clone(),
            seller_id: "seller".into(),
            title: "item".into(),
            price,
        };
        s.apply(T0, &Request::new(up)).unwrap();
        for w in ["fra-1", "ber-2"] {
            let set = Command::SetStock {
                sku: sku.clone(),
                warehouse: w.into(),
                on_hand: 1 << 40,
            };
            s.apply(T0, &Request::new(set)).unwrap();
        }
    }
    s
}

fn reserve(owner: &str, sku: &str) -> Request {
    Request::new(Command::Reserve {
        owner: owner.to_owned(),
        lines: vec![ReserveLine {
            sku: sku.to_owned(),
            qty: 1,
        }],
        ttl_ms: None,
        warehouse_preference: Vec::new(),
    })
}

/// One reserve plus one confirm per element.
fn apply_rate(c: &mut Criterion) {
    let skus = skus();
    let mut state = stocked_state(&skus);
    let owner = key_on_shard("user-", SHARD, 0);
    let reqs: Vec<Request> = skus.iter().map(|s| reserve(&owner, s)).collect();
    let mut g = c.benchmark_group("state_machine");
    g.throughput(Throughput::Elements(reqs.len() as u64));
    g.bench_function("reserve_then_confirm_x1000", |b| {
        b.iter(|| {
            for r in &reqs {
                let a = state.apply(T0, r).unwrap();
                let Outcome::Reserved { reservation_id, .. } = a.outcome else {
                    unreachable!()
                };
                let id: ReservationId = reservation_id;
                black_box(
                    state
                        .apply(T0, &Request::new(Command::Confirm { reservation_id: id }))
                        .unwrap(),
                );
            }
        })
    });
    g.finish();
}

/// Append `n` records of a typical size, then one barrier. The next segment
/// is prepared on another thread, as a server's background preparer does, so
/// rollovers cost a rename.
fn log_append(c: &mut Criterion) {
    let root = bench_dir();
    std::fs::create_dir_all(&root).unwrap();
    let dir = tempfile::tempdir_in(&root).unwrap();
    let (mut log, _) = Log::open(dir.path(), SHARD, LogConfig::default()).unwrap();
    let entry = LogEntry {
        now_ms: T0,
        request: reserve("user-123456", "sku-0042-blue-xl"),
    };
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(&entry).unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mut g = c.benchmark_group("log_append_sync");
    g.measurement_time(Duration::from_secs(5));
    for n in [1usize, 16, 256] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("batch_{n}"), |b| {
            b.iter(|| {
                log.append_batch((0..n).map(|_| (4u16, payload.as_slice())))
                    .unwrap();
                black_box(log.sync().unwrap());
                if let Ok(result) = done_rx.try_recv() {
                    log.install_prepared(result);
                }
                if let Some(job) = log.prepare_job() {
                    let done = done_tx.clone();
                    std::thread::spawn(move || done.send(job.run()));
                }
            })
        });
    }
    g.finish();
}

/// Recovery: open a shard whose log holds 100k reserve/confirm records.
fn replay_rate(c: &mut Criterion) {
    const RECORDS: u64 = 100_000;
    let root = bench_dir();
    std::fs::create_dir_all(&root).unwrap();
    let dir = tempfile::tempdir_in(&root).unwrap();
    let skus = skus();
    let owner = key_on_shard("user-", SHARD, 0);
    let cfg = ShardConfig {
        snapshot_every_records: 0,
        ..ShardConfig::default()
    };
    {
        let (mut shard, _) = Shard::open(dir.path(), SHARD, cfg.clone()).unwrap();
        let price = Money {
            amount_minor: 1_999,
            currency: Currency::parse("EUR").unwrap(),
        };
        let setup: Vec<Request> = skus
            .iter()
            .flat_map(|s| {
                [
                    Request::new(Command::UpsertSku {
                        sku: s.clone(),
                        seller_id: "x".into(),
                        title: "t".into(),
                        price,
                    }),
                    Request::new(Command::SetStock {
                        sku: s.clone(),
                        warehouse: "fra-1".into(),
                        on_hand: 1 << 40,
                    }),
                ]
            })
            .collect();
        shard.commit(T0, setup).unwrap();
        let mut written = shard.last_lsn();
        while written < RECORDS {
            let batch: Vec<Request> = skus.iter().take(256).map(|s| reserve(&owner, s)).collect();
            let results = shard.apply_batch(T0, batch).unwrap();
            let confirms: Vec<Request> = results
                .into_iter()
                .map(|r| match r.unwrap() {
                    Outcome::Reserved { reservation_id, .. } => {
                        Request::new(Command::Confirm { reservation_id })
                    }
                    o => panic!("{o:?}"),
                })
                .collect();
            shard.commit(T0, confirms).unwrap();
            written = shard.last_lsn();
        }
    }
    let mut g = c.benchmark_group("recovery");
    g.sample_size(10);
    g.throughput(Throughput::Elements(RECORDS));
    g.bench_function("replay_100k_records", |b| {
        b.iter_batched(
            || (),
            |_| {
                let (shard, report) = Shard::open(dir.path(), SHARD, cfg.clone()).unwrap();
                assert!(report.records_replayed >= RECORDS);
                black_box(shard.last_lsn())
            },
            BatchSize::PerIteration,
        )
    });
    // The CPU side of replay alone: read, decode and apply every record, without
    // `Log::open` (recovery scan, preparing the next segment, fsyncs).
    g.bench_function("decode_apply_100k_records", |b| {
        b.iter(|| {
            let mut stream = ChangeStream::open(dir.path(), SHARD, 1).unwrap();
            let mut state = ShardState::new(SHARD);
            let mut n = 0u64;
            while let Some((_, e)) = stream.next_change().unwrap() {
                assert!(state.apply(e.now_ms, &e.request).unwrap().is_new);
                n += 1;
            }
            assert!(n >= RECORDS);
            black_box(state.clock_ms())
        })
    });
    g.finish();
}

criterion_group!(benches, apply_rate, log_append, replay_rate);
criterion_main!(benches);

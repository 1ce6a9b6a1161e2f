//! The hot paths the load generator exercises on the client side: encoding
//! a `BATCH` frame, decoding a `RESULTS` frame, and the client's routing and
//! per-core grouping of a batch.
//!
//! `cargo bench -p reserva-benches --bench protocol`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use reserva_protocol::engine::{
    Allocation, Command, Outcome, Request, ReservationId, ReserveLine, shard_of,
};
use reserva_protocol::{
    Batch, FrameDecoder, Message, Op, Reply, Results, encode_message, encode_results, route,
};

const OPS: usize = 1024;

fn reserves(n: usize) -> Vec<Op> {
    (0..n)
        .map(|i| {
            Op::Mutate(Request::keyed(
                format!("rc-{i:032x}"),
                Command::Reserve {
                    owner: format!("user-{}", i * 7919 % 1_000_000),
                    lines: vec![ReserveLine {
                        sku: format!("sku-{}", i * 31 % 100_000),
                        qty: 1,
                    }],
                    ttl_ms: None,
                    warehouse_preference: Vec::new(),
                },
            ))
        })
        .collect()
}

fn reserved_results(n: usize) -> Results {
    Results {
        results: (0..n)
            .map(|i| {
                Ok(Reply::Outcome(Outcome::Reserved {
                    reservation_id: ReservationId::new((i % 256) as u16, i as u64)
                        .unwrap_or(ReservationId(0)),
                    expires_at_ms: 1_800_000_000_000,
                    allocations: vec![Allocation {
                        sku: format!("sku-{i}"),
                        warehouse: "wh-0".into(),
                        qty: 1,
                    }],
                }))
            })
            .collect(),
    }
}

fn encode_batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("protocol");
    g.throughput(Throughput::Elements(OPS as u64));
    let message = Message::Batch(Batch {
        ops: reserves(OPS),
        timeout_ms: 0,
    });
    g.bench_function("encode_batch_1024_reserves", |b| {
        let mut out = BytesMut::with_capacity(1 << 20);
        b.iter(|| {
            out.clear();
            encode_message(1, black_box(&message), &mut out).expect("fits a frame");
            black_box(out.len())
        })
    });

    let mut frame = BytesMut::new();
    encode_message(1, &message, &mut frame).expect("fits a frame");
    g.bench_function("decode_batch_1024_reserves", |b| {
        b.iter_batched(
            || frame.clone(),
            |mut buf| {
                let mut d = FrameDecoder::new();
                let f = d.decode(&mut buf).expect("valid").expect("complete");
                black_box(f.message().expect("valid message"))
            },
            BatchSize::SmallInput,
        )
    });

    g.bench_function("encode_results_1024_reserved", |b| {
        let mut out = BytesMut::with_capacity(1 << 20);
        b.iter_batched(
            || reserved_results(OPS),
            |mut results| {
                out.clear();
                encode_results(1, &mut results, 1 << 20, &mut out).expect("fits");
                black_box(out.len())
            },
            BatchSize::SmallInput,
        )
    });

    let mut results_frame = BytesMut::new();
    encode_results(1, &mut reserved_results(OPS), 1 << 20, &mut results_frame).expect("fits");
    g.bench_function("decode_results_1024_reserved", |b| {
        b.iter_batched(
            || results_frame.clone(),
            |mut buf| {
                let mut d = FrameDecoder::new();
                let f = d.decode(&mut buf).expect("valid").expect("complete");
                black_box(f.message().expect("valid message"))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// What `Client::batch` does before any I/O: route every op, group by the
/// owning core, and encode one frame per group.
fn client_batching(c: &mut Criterion) {
    let mut g = c.benchmark_group("client_batching");
    g.throughput(Throughput::Elements(OPS as u64));
    let ops = reserves(OPS);
    let cores = 2u16;
    g.bench_function("route_group_encode_1024_ops_2_cores", |b| {
        let mut out = BytesMut::with_capacity(1 << 20);
        b.iter(|| {
            let mut groups: Vec<Vec<Op>> = vec![Vec::new(); cores as usize];
            for op in &ops {
                let shard = route(op).expect("routable");
                groups[(shard % cores) as usize].push(op.clone());
            }
            out.clear();
            for group in groups {
                encode_message(
                    1,
                    &Message::Batch(Batch {
                        ops: group,
                        timeout_ms: 0,
                    }),
                    &mut out,
                )
                .expect("fits a frame");
            }
            black_box(out.len())
        })
    });
    g.bench_function("shard_of_1024_skus", |b| {
        let skus: Vec<String> = (0..OPS).map(|i| format!("sku-{i}")).collect();
        b.iter(|| skus.iter().map(|s| u32::from(shard_of(s))).sum::<u32>())
    });
    g.finish();
}

criterion_group!(benches, encode_batch, client_batching);
criterion_main!(benches);

//! Reserve + confirm over loopback with pipelining and batching, against a
//! running node: the throughput and latency of the binary protocol path.
//!
//! `max` mode: `--concurrency` tasks each send a batch of `--batch` reserves,
//! then a batch of the matching confirms, as fast as answers come back
//! (closed loop: throughput, not latency).
//! `rate` mode: batches are started on a fixed schedule to reach `--rate`
//! operations per second whatever the answers do (open loop), and latency is
//! measured from each batch's intended start, so a stall is not hidden.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use reserva_client::{Client, ClientConfig};
use reserva_protocol::engine::{Command, Currency, Money, Outcome, Request, ReserveLine};
use reserva_protocol::{Op, Reply};
use tokio::sync::Mutex;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Max,
    Rate,
}

/// Reserve + confirm benchmark of a running reserva node.
#[derive(Debug, Parser)]
struct Args {
    /// Node address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    addr: String,
    /// Closed loop (`max`) or open loop at `--rate` (`rate`).
    #[arg(long, value_enum, default_value = "max")]
    mode: Mode,
    /// Operations per second in `rate` mode (reserves + confirms).
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Concurrent batch loops in `max` mode.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Reserves per batch (each followed by a batch of as many confirms).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// SKUs to spread the load over.
    #[arg(long, default_value_t = 10_000)]
    skus: usize,
    /// Connections per core.
    #[arg(long, default_value_t = 2)]
    connections: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let config = ClientConfig {
        connections_per_core: args.connections,
        ..ClientConfig::new("bench")
    };
    let client = Client::connect(&args.addr, config).await?;
    seed(&client, args.skus).await?;
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
    let mut tasks = Vec::new();
    match args.mode {
        Mode::Max => {
            for t in 0..args.concurrency {
                let (c, ops, errors, hist) =
                    (client.clone(), ops.clone(), errors.clone(), hist.clone());
                let (batch, skus) = (args.batch, args.skus);
                tasks.push(tokio::spawn(async move {
                    let mut i = t * 7919;
                    while Instant::now() < deadline {
                        let t0 = Instant::now();
                        let n = reserve_confirm(&c, batch, skus, &mut i, &errors).await;
                        ops.fetch_add(n, Ordering::Relaxed);
                        let _ = hist.lock().await.record(t0.elapsed().as_micros() as u64);
                    }
                }));
            }
        }
        Mode::Rate => {
            let every = Duration::from_secs_f64((2 * args.batch) as f64 / args.rate as f64);
            let mut next = Instant::now();
            let mut i = 0usize;
            while next < deadline {
                tokio::time::sleep_until(next.into()).await;
                let (c, ops, errors, hist) =
                    (client.clone(), ops.clone(), errors.clone(), hist.clone());
                let (batch, skus, intended) = (args.batch, args.skus, next);
                let mut start = i;
                i += batch;
                tasks.push(tokio::spawn(async move {
                    let n = reserve_confirm(&c, batch, skus, &mut start, &errors).await;
                    ops.fetch_add(n, Ordering::Relaxed);
                    let _ = hist
                        .lock()
                        .await
                        .record(intended.elapsed().as_micros() as u64);
                }));
                next += every;
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let h = hist.lock().await;
    let done = ops.load(Ordering::Relaxed);
    println!(
        "mode={:?} ops={done} seconds={secs:.1} ops_per_s={:.0} errors={} batch_latency_us p50={} p90={} p99={} p999={} max={}",
        args.mode,
        done as f64 / secs,
        errors.load(Ordering::Relaxed),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
    Ok(())
}

fn sku(i: usize) -> String {
    format!("bench-sku-{i}")
}

async fn seed(client: &Client, skus: usize) -> Result<(), Box<dyn std::error::Error>> {
    let price = Money {
        amount_minor: 1_999,
        currency: Currency::parse("EUR").ok_or("currency")?,
    };
    let mut ops = Vec::new();
    for i in 0..skus {
        ops.push(Op::Mutate(Request::new(Command::UpsertSku {
            sku: sku(i),
            seller_id: "bench".into(),
            title: "bench item".into(),
            price,
        })));
        ops.push(Op::Mutate(Request::new(Command::SetStock {
            sku: sku(i),
            warehouse: "w1".into(),
            on_hand: 1 << 40,
        })));
    }
    for chunk in ops.chunks(512) {
        for r in client.batch(chunk.to_vec()).await? {
            r?;
        }
    }
    Ok(())
}

/// One batch of reserves, then one of the matching confirms; returns the operations answered.
async fn reserve_confirm(
    c: &Client,
    batch: usize,
    skus: usize,
    i: &mut usize,
    errors: &AtomicU64,
) -> u64 {
    let reserves: Vec<Op> = (0..batch)
        .map(|k| {
            Op::Mutate(Request::new(Command::Reserve {
                owner: "bench-user".into(),
                lines: vec![ReserveLine {
                    sku: sku((*i + k) % skus),
                    qty: 1,
                }],
                ttl_ms: None,
                warehouse_preference: Vec::new(),
            }))
        })
        .collect();
    *i += batch;
    let Ok(results) = c.batch(reserves).await else {
        errors.fetch_add(batch as u64, Ordering::Relaxed);
        return 0;
    };
    let mut confirms = Vec::with_capacity(batch);
    for r in results {
        match r {
            Ok(Reply::Outcome(Outcome::Reserved { reservation_id, .. })) => {
                confirms.push(Op::Mutate(Request::new(Command::Confirm {
                    reservation_id,
                })))
            }
            _ => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let n = confirms.len() as u64;
    match c.batch(confirms).await {
        Ok(results) => {
            let failed = results.iter().filter(|r| r.is_err()).count() as u64;
            errors.fetch_add(failed, Ordering::Relaxed);
            batch as u64 + n - failed
        }
        Err(_) => {
            errors.fetch_add(n, Ordering::Relaxed);
            batch as u64
        }
    }
}

//! A lean reference client for the Redis peer: the same two Lua scripts as
//! `reserva-loadgen`'s Redis binding (RESERVE and SETTLE, taken from
//! `loadgen/src/target/redis.rs` at compile time, loaded with SCRIPT LOAD and
//! called with EVALSHA), in a closed loop, with nothing else around them: one
//! OS thread per connection, blocking sockets, a hand-written RESP parser.
//!
//! Each worker owns one connection and loops: send `--batch` reserves
//! (pipelined), read every reply, send a confirm for each hold, read every
//! reply. A unit is one reserve + its confirm, both acknowledged; that is
//! what `reserva-loadgen run --scenario reserve --concurrency W --batch B`
//! counts as one ok. Keys are drawn the same way (1-3 distinct SKUs, one unit
//! each, uniform over `--skus`); the catalogue must have been seeded by
//! `reserva-loadgen seed --target redis://HOST:PORT --skus N --warehouses W`.
//!
//! Build and run (std only, no Cargo):
//!
//! ```text
//! rustc -O --edition 2024 benches/peers/lean_redis.rs -o /tmp/lean-redis
//! /tmp/lean-redis --port 6390 --workers 64 --duration 15
//! ```
//!
//! `benches/peers/redis-binding.sh` does both and runs it against
//! `reserva-loadgen` side by side on one Redis.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SOURCE: &str = include_str!("../../loadgen/src/target/redis.rs");
/// The binding's reservation time-to-live (`TTL_MS` there).
const TTL_MS: u64 = 15 * 60 * 1000;
/// The binding's unit price (`PRICE_MINOR` in `loadgen/src/workload.rs`).
const PRICE_MINOR: u64 = 1_999;

/// The text of `const NAME: &str = r#"..."#;` in the binding's source.
fn script(name: &str) -> String {
    let start = format!("const {name}: &str = r#\"");
    let from = SOURCE
        .find(&start)
        .unwrap_or_else(|| panic!("no {name} script in loadgen/src/target/redis.rs"))
        + start.len();
    let len = SOURCE[from..].find("\"#;").expect("unterminated script");
    SOURCE[from..from + len].to_owned()
}

struct Opts {
    host: String,
    port: u16,
    workers: usize,
    batch: usize,
    duration: Duration,
    skus: u32,
    warehouses: u32,
    users: u32,
}

fn usage() -> ! {
    eprintln!(
        "usage: lean-redis [--host H] [--port P] [--workers W] [--batch B] [--duration S] \
         [--skus N] [--warehouses N] [--users N]"
    );
    std::process::exit(2)
}

fn opts() -> Opts {
    let mut o = Opts {
        host: "127.0.0.1".into(),
        port: 6379,
        workers: 64,
        batch: 1,
        duration: Duration::from_secs(15),
        skus: 100_000,
        warehouses: 4,
        users: 1_000_000,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_else(|| usage());
        match args[i].as_str() {
            "--host" => o.host = v,
            "--port" => o.port = v.parse().unwrap_or_else(|_| usage()),
            "--workers" => o.workers = v.parse().unwrap_or_else(|_| usage()),
            "--batch" => o.batch = v.parse().unwrap_or_else(|_| usage()),
            "--duration" => {
                let s = v.trim_end_matches('s');
                o.duration = Duration::from_secs_f64(s.parse().unwrap_or_else(|_| usage()));
            }
            "--skus" => o.skus = v.parse().unwrap_or_else(|_| usage()),
            "--warehouses" => o.warehouses = v.parse().unwrap_or_else(|_| usage()),
            "--users" => o.users = v.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
        i += 2;
    }
    if o.workers == 0 || o.batch == 0 || o.skus == 0 {
        usage();
    }
    o
}

/// One RESP reply, reduced to what the scripts answer (payloads for `Debug`).
#[derive(Debug)]
#[allow(dead_code)]
enum Reply {
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Status(String),
    Error(String),
    Array(usize),
}

fn read_reply(r: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> std::io::Result<Reply> {
    line.clear();
    r.read_until(b'\n', line)?;
    if line.len() < 3 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let body = std::str::from_utf8(&line[1..line.len() - 2]).unwrap_or("");
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad reply");
    Ok(match line[0] {
        b':' => Reply::Int(body.parse().map_err(|_| bad())?),
        b'+' => Reply::Status(body.to_owned()),
        b'-' => Reply::Error(body.to_owned()),
        b'*' => Reply::Array(body.parse::<i64>().map_err(|_| bad())?.max(0) as usize),
        b'$' => {
            let n: i64 = body.parse().map_err(|_| bad())?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Reply::Bulk(Some(buf))
            }
        }
        _ => return Err(bad()),
    })
}

/// Appends one command as a RESP array of bulk strings.
fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// splitmix64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n)) as u32
    }
}

#[derive(Default)]
struct WorkerStats {
    ok: u64,
    errors: u64,
    latencies_us: Vec<u32>,
}

fn connect(o: &Opts) -> std::io::Result<(TcpStream, BufReader<TcpStream>)> {
    let s = TcpStream::connect((o.host.as_str(), o.port))?;
    s.set_nodelay(true)?;
    let r = BufReader::with_capacity(64 * 1024, s.try_clone()?);
    Ok((s, r))
}

#[allow(clippy::too_many_arguments)]
fn worker(
    o: &Opts,
    w: usize,
    reserve_sha: &str,
    settle_sha: &str,
    start: &AtomicBool,
    stop: &AtomicBool,
    ready: &AtomicU64,
) -> std::io::Result<WorkerStats> {
    let (mut s, mut r) = connect(o)?;
    let mut rng = Rng(0x5EED ^ (w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut st = WorkerStats::default();
    let (mut out, mut line) = (Vec::with_capacity(4096), Vec::with_capacity(256));
    let (nwh, ttl, price) = (
        o.warehouses.to_string(),
        TTL_MS.to_string(),
        PRICE_MINOR.to_string(),
    );
    ready.fetch_add(1, Ordering::SeqCst);
    while !start.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut ids: Vec<Option<i64>> = Vec::with_capacity(o.batch);
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        out.clear();
        for _ in 0..o.batch {
            let want = 1 + rng.below(3) as usize;
            let mut skus: Vec<u32> = Vec::with_capacity(want);
            for _ in 0..want * 3 {
                if skus.len() >= want {
                    break;
                }
                let k = rng.below(o.skus);
                if !skus.contains(&k) {
                    skus.push(k);
                }
            }
            let user = format!("user-{}", rng.below(o.users));
            let keys: Vec<String> = skus.iter().map(|k| format!("stk:sku-{k}")).collect();
            let n = keys.len().to_string();
            let mut args: Vec<&[u8]> = vec![b"EVALSHA", reserve_sha.as_bytes(), n.as_bytes()];
            args.extend(keys.iter().map(|k| k.as_bytes()));
            args.extend([nwh.as_bytes(), ttl.as_bytes(), user.as_bytes()]);
            args.extend(std::iter::repeat_n(b"1".as_slice(), keys.len()));
            command(&mut out, &args);
        }
        s.write_all(&out)?;
        ids.clear();
        for _ in 0..o.batch {
            match read_reply(&mut r, &mut line)? {
                Reply::Int(id) => ids.push(Some(id)),
                _ => {
                    st.errors += 1;
                    ids.push(None);
                }
            }
        }
        out.clear();
        let mut pending = 0;
        for id in ids.iter().flatten() {
            let id = id.to_string();
            command(
                &mut out,
                &[
                    b"EVALSHA",
                    settle_sha.as_bytes(),
                    b"0",
                    id.as_bytes(),
                    b"confirm",
                    price.as_bytes(),
                ],
            );
            pending += 1;
        }
        if pending > 0 {
            s.write_all(&out)?;
        }
        for _ in 0..pending {
            match read_reply(&mut r, &mut line)? {
                Reply::Int(_) => {
                    st.ok += 1;
                    st.latencies_us
                        .push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                }
                _ => st.errors += 1,
            }
        }
    }
    Ok(st)
}

fn load_script(o: &Opts, text: &str) -> std::io::Result<String> {
    let (mut s, mut r) = connect(o)?;
    let mut out = Vec::new();
    command(&mut out, &[b"SCRIPT", b"LOAD", text.as_bytes()]);
    s.write_all(&out)?;
    let mut line = Vec::new();
    match read_reply(&mut r, &mut line)? {
        Reply::Bulk(Some(sha)) => Ok(String::from_utf8_lossy(&sha).into_owned()),
        other => Err(std::io::Error::other(format!("SCRIPT LOAD: {other:?}"))),
    }
}

/// User + system CPU seconds of this process (from /proc/self/stat).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(") ").map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[i]) / 1000.0
}

fn main() {
    let o = Arc::new(opts());
    let reserve_sha = Arc::new(load_script(&o, &script("RESERVE")).expect("SCRIPT LOAD RESERVE"));
    let settle_sha = Arc::new(load_script(&o, &script("SETTLE")).expect("SCRIPT LOAD SETTLE"));
    let start = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..o.workers)
        .map(|w| {
            let (o, rs, ss) = (o.clone(), reserve_sha.clone(), settle_sha.clone());
            let (start, stop, ready) = (start.clone(), stop.clone(), ready.clone());
            std::thread::spawn(move || worker(&o, w, &rs, &ss, &start, &stop, &ready))
        })
        .collect();
    while ready.load(Ordering::SeqCst) < o.workers as u64 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    start.store(true, Ordering::Release);
    std::thread::sleep(o.duration);
    stop.store(true, Ordering::Relaxed);
    let mut all = WorkerStats::default();
    for h in handles {
        match h.join().expect("worker panicked") {
            Ok(st) => {
                all.ok += st.ok;
                all.errors += st.errors;
                all.latencies_us.extend(st.latencies_us);
            }
            Err(e) => {
                eprintln!("lean-redis: worker failed: {e}");
                all.errors += 1;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds() - cpu0) / secs * 100.0;
    all.latencies_us.sort_unstable();
    let l = &all.latencies_us;
    println!(
        "lean-redis: {} workers x {} in flight, {:.1} s: {:.0} reserve+confirm/s ok ({} ok, {} errors), \
         p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, client CPU {:.0}% of one core",
        o.workers,
        o.batch,
        secs,
        all.ok as f64 / secs,
        all.ok,
        all.errors,
        pct(l, 0.50),
        pct(l, 0.99),
        pct(l, 0.999),
        cpu
    );
}

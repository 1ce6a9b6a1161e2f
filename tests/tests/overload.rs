//! Black-box tests of admission by expected wait and of batch deadlines: a
//! real `reserva-server` offered three times what it can do refuses the
//! excess at once as `Overloaded`, keeps what it admits fast and keeps every
//! write it acknowledged across `kill -9`; an operation whose batch deadline
//! passed before its turn is answered `DeadlineExceeded` and never applied.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reserva_client::{Client, ClientConfig};
use reserva_protocol::engine::{
    Command, Currency, Money, Outcome, Request, ReservationId, ReserveLine, shard_of,
};
use reserva_protocol::limits::PROTOCOL_VERSION;
use reserva_protocol::{
    Batch, FrameDecoder, Hello, Message, Op, OpResult, Query, Reply, WireError, message_to_vec,
};
use reserva_tests::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

/// The tests of this file take turns: the first measures what a server does
/// with the machine's CPUs, which the other would otherwise share.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn eur(amount_minor: u64) -> Money {
    Money {
        amount_minor,
        currency: Currency::parse("EUR").unwrap(),
    }
}

fn upsert(sku: &str) -> Op {
    Op::Mutate(Request::new(Command::UpsertSku {
        sku: sku.into(),
        seller_id: "seller-1".into(),
        title: "A thing".into(),
        price: eur(1_000),
    }))
}

/// SKUs the load spreads over.
const SKUS: usize = 64;
/// Units of each SKU in its one warehouse: the load never runs out.
const STOCK: u64 = 1_000_000_000;
/// Reserves per call: one `BATCH` frame (a single core owns every shard),
/// which the server weighs as one. Batching keeps this process's own cost
/// per reserve (encoding, decoding, tasks, syscalls) well below the
/// server's, so that at three times capacity the server, not the load
/// generator, is what runs out.
const CALL_OPS: usize = 32;

fn sku_name(i: usize) -> String {
    format!("ovl-sku-{i}")
}

/// How one reserve ended.
#[derive(Debug, Clone)]
enum Ended {
    /// Acknowledged: the reservation, its SKU (index) and units.
    Ok(ReservationId, usize, u32),
    /// Refused as `Overloaded`, with the server's hint.
    Overloaded(u32),
    /// Anything else.
    Other(String),
}

/// One reserve: how long the call that carried it took, and how it ended.
#[derive(Debug, Clone)]
struct Call {
    latency: Duration,
    ended: Ended,
}

/// Sends reserves `n..n + CALL_OPS` (one unit or a few of one SKU each) as
/// one call, timed from when it is handed to the client; one record per
/// reserve.
async fn reserve_call(c: &Client, names: &[String], n: usize) -> Vec<Call> {
    let lines: Vec<(usize, u32)> = (n..n + CALL_OPS)
        .map(|k| (k % SKUS, 1 + (k % 3) as u32))
        .collect();
    let ops = lines
        .iter()
        .enumerate()
        .map(|(i, &(sku, qty))| {
            Op::Mutate(Request::new(Command::Reserve {
                owner: format!("ovl-user-{}", (n + i) % 1_000),
                lines: vec![ReserveLine {
                    sku: names[sku].clone(),
                    qty,
                }],
                ttl_ms: None,
                warehouse_preference: Vec::new(),
            }))
        })
        .collect();
    let sent = Instant::now();
    let res = c.batch(ops).await;
    let latency = sent.elapsed();
    let results = match res {
        Ok(results) => results,
        Err(e) => {
            let ended = Ended::Other(e.to_string());
            return vec![Call { latency, ended }; CALL_OPS];
        }
    };
    lines
        .iter()
        .zip(results)
        .map(|(&(sku, qty), r)| {
            let ended = match r {
                Ok(Reply::Outcome(Outcome::Reserved {
                    reservation_id,
                    allocations,
                    ..
                })) if allocations.iter().map(|a| a.qty).sum::<u32>() == qty
                    && allocations.iter().all(|a| a.sku == names[sku]) =>
                {
                    Ended::Ok(reservation_id, sku, qty)
                }
                Err(WireError::Overloaded { retry_after_ms }) => Ended::Overloaded(retry_after_ms),
                other => Ended::Other(format!("reserve {qty} of {}: {other:?}", names[sku])),
            };
            Call { latency, ended }
        })
        .collect()
}

/// The `q` quantile of `sorted`.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `ops` through `c` as one batch, sending again those refused as
/// `Overloaded` (after the hint) until each has another answer; results in
/// the order of `ops`.
async fn batch_until_admitted(c: &Client, ops: Vec<Op>) -> Vec<OpResult> {
    let mut results: Vec<Option<OpResult>> = vec![None; ops.len()];
    let mut todo: Vec<usize> = (0..ops.len()).collect();
    for _ in 0..100 {
        let answers = c
            .batch(todo.iter().map(|&i| ops[i].clone()).collect())
            .await
            .unwrap();
        let mut again = Vec::new();
        let mut wait = 0;
        for (&i, r) in todo.iter().zip(answers) {
            match r {
                Err(WireError::Overloaded { retry_after_ms }) => {
                    wait = wait.max(retry_after_ms);
                    again.push(i);
                }
                r => results[i] = Some(r),
            }
        }
        if again.is_empty() {
            break;
        }
        todo = again;
        tokio::time::sleep(Duration::from_millis(u64::from(wait))).await;
    }
    results
        .into_iter()
        .map(|r| r.expect("still refused as Overloaded after 100 attempts"))
        .collect()
}

/// A single core (capacity is then one core's), every commit made durable
/// before it is answered. Capacity is measured with a closed loop; then
/// three times that is offered open loop: every call its own task, on a
/// schedule that does not wait for answers. The server must refuse the
/// excess at once with a hint in 1..=1000 ms, answer what it admits within
/// a bound that queueing everything (seconds) would break, keep serving
/// about as much as it can, and have every acknowledged reservation after
/// `kill -9`.
///
/// The test's runtime has one worker thread: the load generator can use at
/// most one of a 2-CPU machine's CPUs, and the server's core thread has the
/// other (with two workers the generator at three times capacity takes CPU
/// from the core and the goodput measured is the generator's, not the
/// server's).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn three_times_capacity_is_shed_fast_and_every_acknowledged_write_survives_kill_9() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--fsync", "always", "--cores", "1"]);
    let names: Arc<Vec<String>> = Arc::new((0..SKUS).map(sku_name).collect());
    let shards: BTreeSet<u16> = names.iter().map(|n| shard_of(n)).collect();
    assert!(shards.len() >= 16, "the SKUs span {} shards", shards.len());
    let setup = Client::connect(&server.addr, ClientConfig::new("any"))
        .await
        .unwrap();
    let ops = names.iter().map(|n| upsert(n)).collect();
    for r in batch_until_admitted(&setup, ops).await {
        r.unwrap();
    }
    let ops = names
        .iter()
        .map(|n| {
            Op::Mutate(Request::new(Command::SetStock {
                sku: n.clone(),
                warehouse: "w1".into(),
                on_hand: STOCK,
            }))
        })
        .collect();
    for r in batch_until_admitted(&setup, ops).await {
        r.unwrap();
    }
    drop(setup);

    // No retries: every refusal is seen as the server answered it. A few
    // connections, each of which the server reads up to 64 batches ahead
    // on: enough for it to see all it is offered.
    let c = Client::connect(
        &server.addr,
        ClientConfig {
            retries: 0,
            connections_per_core: 4,
            ..ClientConfig::new("any")
        },
    )
    .await
    .unwrap();
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));

    // Capacity: 32 callers, each sending its next call as soon as the last
    // was answered (after the hint, if some of it was refused).
    let measure = Duration::from_millis(1_500);
    let start = Instant::now();
    let callers: Vec<_> = (0..32)
        .map(|_| {
            let (c, calls, next, names) = (c.clone(), calls.clone(), next.clone(), names.clone());
            tokio::spawn(async move {
                let mut ok = 0u64;
                while start.elapsed() < measure {
                    let n = next.fetch_add(CALL_OPS, Ordering::Relaxed);
                    let call = reserve_call(&c, &names, n).await;
                    let hint = call
                        .iter()
                        .filter_map(|c| match c.ended {
                            Ended::Overloaded(ms) => Some(ms),
                            _ => None,
                        })
                        .max();
                    ok += call
                        .iter()
                        .filter(|c| matches!(c.ended, Ended::Ok(..)))
                        .count() as u64;
                    calls.lock().unwrap().extend(call);
                    if let Some(ms) = hint {
                        tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for caller in callers {
        ok += caller.await.unwrap();
    }
    let capacity = ok as f64 / start.elapsed().as_secs_f64();
    let closed_loop = calls.lock().unwrap().len();
    eprintln!("capacity: {capacity:.0} reserves/s ({closed_loop} sent in the closed loop)");
    assert!(
        capacity >= 1_000.0,
        "the server hardly answers: {capacity:.0}/s"
    );

    // Three times capacity, open loop, for 3 s: each millisecond, the calls
    // due by then are spawned; past IN_FLIGHT_MAX calls unanswered, the
    // calls due are dropped (counted) instead.
    const IN_FLIGHT_MAX: usize = 20_000;
    let calls_per_s = 3.0 * capacity / CALL_OPS as f64;
    let overload = Duration::from_secs(3);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (mut sent, mut dropped) = (0u64, 0u64);
    let mut tasks = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let start = Instant::now();
    loop {
        tick.tick().await;
        let elapsed = start.elapsed();
        if elapsed >= overload {
            break;
        }
        let due = (calls_per_s * elapsed.as_secs_f64()) as u64;
        while sent + dropped < due {
            if in_flight.load(Ordering::Relaxed) >= IN_FLIGHT_MAX {
                dropped += 1;
                continue;
            }
            sent += 1;
            in_flight.fetch_add(1, Ordering::Relaxed);
            let n = next.fetch_add(CALL_OPS, Ordering::Relaxed);
            let (c, calls, in_flight, names) =
                (c.clone(), calls.clone(), in_flight.clone(), names.clone());
            tasks.push(tokio::spawn(async move {
                let call = reserve_call(&c, &names, n).await;
                calls.lock().unwrap().extend(call);
                in_flight.fetch_sub(1, Ordering::Relaxed);
            }));
        }
    }
    let offered_for = start.elapsed();
    for t in tasks {
        t.await.unwrap();
    }
    drop(c);
    let calls = std::mem::take(&mut *calls.lock().unwrap());

    let mut other: Vec<&str> = Vec::new();
    for call in &calls {
        match &call.ended {
            Ended::Overloaded(ms) => assert!(
                (1..=1_000).contains(ms),
                "retry_after_ms {ms} outside 1..=1000"
            ),
            Ended::Other(e) => other.push(e),
            Ended::Ok(..) => {}
        }
    }
    let mut admitted: Vec<Duration> = Vec::new();
    let mut shed: Vec<Duration> = Vec::new();
    for call in &calls[closed_loop..] {
        match call.ended {
            Ended::Ok(..) => admitted.push(call.latency),
            Ended::Overloaded(_) => shed.push(call.latency),
            Ended::Other(_) => {}
        }
    }
    admitted.sort();
    shed.sort();
    let goodput = admitted.len() as f64 / offered_for.as_secs_f64();
    let p99 = quantile(&admitted, 0.99);
    let max = admitted.last().copied().unwrap_or_default();
    eprintln!(
        "overload: {:.0} reserves/s offered for {offered_for:.2?} ({sent} calls of {CALL_OPS}, \
         {dropped} dropped); ok {} ({goodput:.0}/s, {:.0}% of capacity), shed {}, other {}; \
         admitted p50 {:.1?} p99 {p99:.1?} max {max:.1?}; shed p50 {:.1?} p99 {:.1?}",
        calls_per_s * CALL_OPS as f64,
        admitted.len(),
        100.0 * goodput / capacity,
        shed.len(),
        other.len(),
        quantile(&admitted, 0.5),
        quantile(&shed, 0.5),
        quantile(&shed, 0.99),
    );
    assert!(
        other.is_empty(),
        "{} reserves neither acknowledged nor refused as Overloaded, e.g. {:?}",
        other.len(),
        &other[..other.len().min(5)]
    );
    assert!(!shed.is_empty(), "nothing was shed at three times capacity");
    // An admitted call waits at most the admission budget (a few ms) in the
    // core, then for its round's barrier, and for this process to send it
    // and read its answer while busy with the rest of the load: tens of ms.
    // A server that queued what it is offered here instead answers in
    // seconds (the backlog grows by twice the capacity each second, within
    // the server and in front of it; measured: p50 2.5 s, p99 4.3 s). The
    // bounds sit between the two with room for this shared machine's
    // stalls (a journal checkpoint or a descheduled core thread delays
    // every answer, refusals included, by up to several hundred ms).
    let p50 = quantile(&admitted, 0.5);
    assert!(
        p50 < Duration::from_millis(100),
        "admitted p50 {p50:?} at three times capacity"
    );
    assert!(
        p99 < Duration::from_secs(1),
        "admitted p99 {p99:?} at three times capacity"
    );
    assert!(
        max < Duration::from_secs(3),
        "an admitted call took {max:?} at three times capacity"
    );
    // Shedding costs the core some of its time (reading, refusing), and the
    // machine is shared, so goodput under three times the load is below
    // capacity (54-81% measured); a collapse (refusing nearly everything,
    // or drowning in refusals) would be far below this bound.
    assert!(
        goodput >= 0.3 * capacity,
        "goodput collapsed: {goodput:.0} reserves/s served against a capacity of {capacity:.0}/s"
    );

    // kill -9, restart, and every acknowledged reservation is there.
    server.kill9();
    server.restart();
    let c = Client::connect(&server.addr, ClientConfig::new("any"))
        .await
        .unwrap();
    let acked: Vec<(ReservationId, usize, u32)> = calls
        .iter()
        .filter_map(|call| match call.ended {
            Ended::Ok(id, sku, qty) => Some((id, sku, qty)),
            _ => None,
        })
        .collect();
    let mut units = [0u64; SKUS];
    for &(_, sku, qty) in &acked {
        units[sku] += u64::from(qty);
    }
    for chunk in acked.chunks(1_024) {
        let ops = chunk
            .iter()
            .map(|&(id, _, _)| Op::Query(Query::GetReservation { id }))
            .collect();
        let found = batch_until_admitted(&c, ops).await;
        for (&(id, sku, qty), r) in chunk.iter().zip(found) {
            match r {
                Ok(Reply::Reservation(r)) => {
                    let held: Vec<(&str, u32)> = r
                        .allocations
                        .iter()
                        .map(|a| (a.sku.as_str(), a.qty))
                        .collect();
                    assert_eq!(held, [(names[sku].as_str(), qty)], "reservation {id}");
                }
                other => panic!("acknowledged reservation {id} lost after kill -9: {other:?}"),
            }
        }
    }
    // Every reserve was answered, acknowledged or refused as Overloaded
    // (nothing applied), and the TTL (15 min) has not run out: the units
    // reserved are exactly those acknowledged.
    let ops = names
        .iter()
        .map(|n| Op::Query(Query::GetSku { sku: n.clone() }))
        .collect();
    for (i, r) in batch_until_admitted(&c, ops).await.into_iter().enumerate() {
        let Ok(Reply::Sku(sku)) = r else {
            panic!("GetSku {} answered {r:?}", names[i]);
        };
        let reserved: u64 = sku.warehouses.iter().map(|w| w.reserved).sum();
        let on_hand: u64 = sku.warehouses.iter().map(|w| w.on_hand).sum();
        assert_eq!(on_hand, STOCK, "{}", names[i]);
        assert!(
            reserved >= units[i],
            "{}: {reserved} units reserved, {} acknowledged: acknowledged reservations lost",
            names[i],
            units[i]
        );
        assert_eq!(
            reserved, units[i],
            "{}: more units reserved than acknowledged: a reserve refused as Overloaded was applied",
            names[i]
        );
    }
    eprintln!(
        "after kill -9: all {} acknowledged reservations found",
        acked.len()
    );
}

/// Reads the next frame from a raw connection.
async fn next_frame(
    rd: &mut OwnedReadHalf,
    decoder: &mut FrameDecoder,
    buf: &mut bytes::BytesMut,
) -> reserva_protocol::Frame {
    loop {
        if let Some(f) = decoder.decode(buf).unwrap() {
            return f;
        }
        let n = tokio::time::timeout(Duration::from_secs(15), rd.read_buf(buf))
            .await
            .expect("no frame from the server within 15 s")
            .unwrap();
        assert!(n > 0, "the server closed the connection");
    }
}

/// The results of the `RESULTS` frame `frame`.
fn results_of(frame: &reserva_protocol::Frame) -> Vec<OpResult> {
    match frame.message().unwrap() {
        Message::Results(r) => r.results,
        other => panic!("expected RESULTS, got {other:?}"),
    }
}

/// 32 batches of 1,024 upserts of new SKUs, each allowed 1 ms from when the
/// server reads it, written back to back on one connection: each upsert is
/// answered Ok, `DeadlineExceeded` or `Overloaded`, and afterwards exactly
/// the SKUs answered Ok exist. A batch without a deadline is applied in
/// full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_request_is_never_applied() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let s = TcpStream::connect(&server.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (mut rd, mut wr) = s.into_split();
    let hello = Hello {
        protocol_version: u16::from(PROTOCOL_VERSION),
        credential: "x".into(),
        client_name: "overload-test".into(),
    };
    wr.write_all(&message_to_vec(1, &Message::Hello(hello)).unwrap())
        .await
        .unwrap();
    let mut decoder = FrameDecoder::new();
    let mut buf = bytes::BytesMut::new();
    let hello_ok = next_frame(&mut rd, &mut decoder, &mut buf).await;
    assert!(matches!(hello_ok.message().unwrap(), Message::HelloOk(_)));

    const BATCHES: u64 = 32;
    const OPS: usize = 1_024;
    let name = |b: u64, i: usize| format!("dl-{b}-{i}");
    let mut bytes = Vec::new();
    for b in 0..BATCHES {
        let ops = (0..OPS).map(|i| upsert(&name(b, i))).collect();
        let batch = Message::Batch(Batch { ops, timeout_ms: 1 });
        bytes.extend(message_to_vec(100 + b, &batch).unwrap());
    }
    // Written by another task while this one reads the answers, so that
    // neither side's socket buffers can stall the other.
    let writer = tokio::spawn(async move {
        wr.write_all(&bytes).await.unwrap();
        wr
    });
    let mut answers: BTreeMap<u64, Vec<OpResult>> = BTreeMap::new();
    while answers.len() < BATCHES as usize {
        let frame = next_frame(&mut rd, &mut decoder, &mut buf).await;
        let results = results_of(&frame);
        assert_eq!(results.len(), OPS, "request {}", frame.request_id);
        let b = frame.request_id.wrapping_sub(100);
        assert!(
            b < BATCHES,
            "answer to unknown request {}",
            frame.request_id
        );
        assert!(
            answers.insert(b, results).is_none(),
            "batch {b} answered twice"
        );
    }
    let mut wr = writer.await.unwrap();
    let (mut applied, mut expired, mut shed) = (0, 0, 0);
    for (b, results) in &answers {
        for (i, r) in results.iter().enumerate() {
            match r {
                Ok(Reply::Outcome(Outcome::SkuUpserted { created: true })) => applied += 1,
                Err(WireError::DeadlineExceeded { timeout_ms: 1 }) => expired += 1,
                Err(WireError::Overloaded { retry_after_ms }) => {
                    assert!(
                        (1..=1_000).contains(retry_after_ms),
                        "retry_after_ms {retry_after_ms} outside 1..=1000"
                    );
                    shed += 1;
                }
                other => panic!("upsert of {} answered {other:?}", name(*b, i)),
            }
        }
    }
    eprintln!("1 ms deadline: applied {applied}, deadline exceeded {expired}, overloaded {shed}");
    assert!(
        expired > 0,
        "no upsert missed its 1 ms deadline: the test shows nothing"
    );

    // Exactly the upserts answered Ok were applied (the queries queue
    // behind anything of the batches still queued on their shards).
    let c = Client::connect(&server.addr, ClientConfig::new("any"))
        .await
        .unwrap();
    for (b, results) in &answers {
        let ops = (0..OPS)
            .map(|i| Op::Query(Query::GetSku { sku: name(*b, i) }))
            .collect();
        let found = batch_until_admitted(&c, ops).await;
        for (i, (answer, found)) in results.iter().zip(found).enumerate() {
            let exists = match found {
                Ok(Reply::Sku(_)) => true,
                Err(WireError::NotFound { .. }) => false,
                other => panic!("GetSku {} answered {other:?}", name(*b, i)),
            };
            assert_eq!(
                exists,
                answer.is_ok(),
                "{} was answered {answer:?} but exists={exists}",
                name(*b, i)
            );
        }
    }

    // Without a deadline (0), a batch on the same idle node is applied in full.
    let ops = (0..OPS).map(|i| upsert(&format!("nodl-{i}"))).collect();
    let batch = Message::Batch(Batch { ops, timeout_ms: 0 });
    wr.write_all(&message_to_vec(200, &batch).unwrap())
        .await
        .unwrap();
    let frame = next_frame(&mut rd, &mut decoder, &mut buf).await;
    assert_eq!(frame.request_id, 200);
    let results = results_of(&frame);
    assert_eq!(results.len(), OPS);
    for (i, r) in results.iter().enumerate() {
        assert!(
            matches!(
                r,
                Ok(Reply::Outcome(Outcome::SkuUpserted { created: true }))
            ),
            "nodl-{i} without a deadline answered {r:?}"
        );
    }
    let ops = (0..OPS)
        .map(|i| {
            Op::Query(Query::GetSku {
                sku: format!("nodl-{i}"),
            })
        })
        .collect();
    for (i, r) in batch_until_admitted(&c, ops).await.into_iter().enumerate() {
        assert!(matches!(r, Ok(Reply::Sku(_))), "nodl-{i}: {r:?}");
    }
}

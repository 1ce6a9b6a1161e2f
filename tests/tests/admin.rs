//! Black-box tests of the admin API through the `reserva` CLI against real
//! `reserva-server` processes: every command (with the per-core journal
//! figures), credentials, `/metrics`, a shard move under concurrent load that
//! loses and duplicates nothing (across a clean restart, and across a
//! `kill -9` while the writers run), and `verify` finding damage in copied
//! data directories.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reserva_client::{Client, ClientConfig, ClientError};
use reserva_engine::ids::key_on_shard;
use reserva_protocol::engine::{Currency, Money, ReservationId, ReserveLine};
use reserva_tests::{Server, cli_binary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: Output) -> serde_json::Value {
    let out = ok(o);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn eur(amount_minor: u64) -> Money {
    Money {
        amount_minor,
        currency: Currency::parse("EUR").unwrap(),
    }
}

async fn client(server: &Server) -> Client {
    let mut config = ClientConfig::new("any-token");
    config.retries = 10;
    Client::connect(&server.addr, config).await.unwrap()
}

async fn http_get(addr: &str, path: &str, token: Option<&str>) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nhost: reserva\r\n{auth}connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_answers_against_a_real_node() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let c = client(&server).await;
    let hot = key_on_shard("hot-", 9, 0);
    c.upsert_sku(hot.as_str(), "s", "Hot item", eur(100))
        .await
        .unwrap();
    c.set_stock(hot.as_str(), "w1", 1000).await.unwrap();
    for i in 0..20 {
        let line = vec![ReserveLine {
            sku: hot.clone(),
            qty: 1,
        }];
        c.reserve(format!("u{i}"), line, None, None).await.unwrap();
    }

    let status = json(server.cli(&["--output", "json", "status"]));
    assert_eq!(status["cores"].as_array().unwrap().len(), 2);
    assert_eq!(status["shard_map_version"], 1);
    assert_eq!(status["fsync"], "always");
    assert!(status["totals"]["ops"].as_u64().unwrap() >= 22, "{status}");
    assert_eq!(status["totals"]["reservations_live"], 20);
    let table = ok(server.cli(&["status"]));
    assert!(table.contains("shard map   version 1"), "{table}");
    // The commit journal per core: every figure present; under --fsync
    // always the writes above took barriers, each making records durable.
    for core in status["cores"].as_array().unwrap() {
        let j = &core["journal"];
        for field in [
            "frames",
            "records",
            "bytes",
            "barriers",
            "records_per_barrier",
            "barriers_per_sec",
            "bytes_per_sec",
            "full",
            "checkpoints",
        ] {
            assert!(j[field].is_number(), "journal.{field} missing: {core}");
        }
        assert_eq!(j["core"], core["core"], "{core}");
        let (records, barriers) = (
            j["records"].as_u64().unwrap(),
            j["barriers"].as_u64().unwrap(),
        );
        assert!(records >= barriers, "{core}");
        assert!(j["frames"].as_u64().unwrap() >= barriers, "{core}");
    }
    // Shard 9 is on core 1: 22 writes there.
    let j1 = &status["cores"][1]["journal"];
    assert!(j1["barriers"].as_u64().unwrap() > 0, "{status}");
    assert!(j1["records"].as_u64().unwrap() >= 22, "{status}");
    assert!(j1["bytes"].as_u64().unwrap() > 0, "{status}");
    assert!(
        j1["records_per_barrier"].as_f64().unwrap() >= 1.0,
        "{status}"
    );
    if status["uptime_ms"].as_u64().unwrap() < 9_000 {
        // The writes are still inside the rate window.
        assert!(j1["barriers_per_sec"].as_f64().unwrap() > 0.0, "{status}");
    }
    assert!(table.contains("records/barrier"), "{table}");
    assert!(table.contains("barriers/s"), "{table}");

    let shards = json(server.cli(&["--output", "json", "shards"]));
    let rows = shards["shards"].as_array().unwrap();
    assert_eq!(rows.len(), 256);
    let nine = &rows[9];
    assert_eq!(nine["core"], 1);
    assert_eq!(nine["reservations_live"], 20);
    assert_eq!(nine["hot_skus"][0]["sku"], hot.as_str());
    assert!(nine["lsn"].as_u64().unwrap() >= 22);
    assert!(nine["p99_commit_us"].as_u64().unwrap() > 0, "{nine}");
    let journals = shards["journals"].as_array().unwrap();
    assert_eq!(journals.len(), 2, "{shards}");
    assert!(journals[1]["bytes"].as_u64().unwrap() > 0, "{shards}");
    assert!(journals[1]["barriers_per_sec"].is_number(), "{shards}");
    let sorted = ok(server.cli(&["shards", "--sort", "hot", "--limit", "3"]));
    let mut lines = sorted.lines();
    let journal_line = lines.next().unwrap();
    assert!(
        journal_line.starts_with("journal  core 0: ") && journal_line.contains("barriers/s"),
        "{sorted}"
    );
    let first_row = lines.nth(1).unwrap();
    assert!(first_row.trim_start().starts_with("9 "), "{sorted}");
    assert_eq!(sorted.lines().count(), 5, "{sorted}");
    for key in ["ops", "queue", "log"] {
        ok(server.cli(&["shards", "--sort", key]));
    }

    let snap = json(server.cli(&["--output", "json", "snapshot", "9"]));
    assert!(snap["results"][0]["lsn"].as_u64().unwrap() >= 22, "{snap}");
    ok(server.cli(&["snapshot", "--all"]));
    let compact = json(server.cli(&["--output", "json", "compact", "9"]));
    assert_eq!(compact["results"][0]["error"], "", "{compact}");
    ok(server.cli(&["compact"]));
    let top = ok(server.cli(&["top", "--iterations", "1", "--limit", "5"]));
    assert!(top.contains("reserva top"), "{top}");
    let plan = ok(server.cli(&["rebalance", "--dry-run"]));
    assert!(plan.contains("ops/s before"), "{plan}");

    // Bad input: a clear message and a non-zero exit.
    for bad in [
        &["shard", "move", "999", "--core", "0"][..],
        &["shard", "move", "9", "--core", "7"],
        &["shard", "move", "9", "--core", "1"],
        &["snapshot", "300"],
    ] {
        let o = server.cli(bad);
        assert!(!o.status.success(), "{bad:?} succeeded: {}", text(&o));
        assert!(!o.stderr.is_empty(), "{bad:?}: no message");
    }
    // Every command has help.
    for cmd in [
        "status",
        "shards",
        "shard",
        "rebalance",
        "snapshot",
        "compact",
        "verify",
        "top",
    ] {
        ok(server.cli(&[cmd, "--help"]));
    }

    let metrics = http_get(&server.admin, "/metrics", None).await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for name in [
        "reserva_ops_total{op=\"reserve\"} 20",
        "reserva_shard_queue_depth{shard=\"9\",core=\"1\"}",
        "reserva_commit_latency_seconds_bucket",
        "reserva_batch_size_bucket",
        "reserva_shard_log_bytes",
        "reserva_reservations_live 20",
        "reserva_shed_total{queue=\"shard\"}",
        "reserva_errors_total{error=\"insufficient_stock\"}",
        "reserva_journal_barriers_total{core=\"1\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_auth_file_the_admin_api_needs_an_admin_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        "[[keys]]\ntoken = \"admin-secret-1\"\nrole = \"admin\"\n\n[[keys]]\ntoken = \"alice-secret-1\"\nrole = \"customer\"\nuser_id = \"alice\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--auth-file", keys.to_str().unwrap()]);
    let o = server.cli(&["status"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Unauthenticated"),
        "{}",
        text(&o)
    );
    let o = server.cli(&["--token", "alice-secret-1", "status"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("PermissionDenied"),
        "{}",
        text(&o)
    );
    ok(server.cli(&["--token", "admin-secret-1", "status"]));
    let denied = http_get(&server.admin, "/metrics", None).await;
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
    let allowed = http_get(&server.admin, "/metrics", Some("admin-secret-1")).await;
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
}

#[test]
fn admin_off_and_a_public_admin_address_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--admin", "off"]);
    assert_eq!(server.admin, "off");
    drop(server);
    let o = Command::new(reserva_tests::server_binary())
        .arg("--data")
        .arg(dir.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "0.0.0.0:0",
            "--cores",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("admin"),
        "{}",
        text(&o)
    );
}

/// What the writers were told, per SKU: acknowledged reservation ids.
type Acked = Arc<Mutex<Vec<(String, ReservationId)>>>;

/// Checks acknowledged reservations against the node: no id handed out
/// twice, every `every`-th one present, and per SKU the reserved units equal
/// the acknowledged reservations while on-hand stock is unchanged (stock is
/// conserved: nothing lost, nothing applied twice).
async fn check_acked(c: &Client, acked: &[(String, ReservationId)], skus: &[String], every: usize) {
    let ids: std::collections::BTreeSet<_> = acked.iter().map(|(_, id)| *id).collect();
    assert_eq!(
        ids.len(),
        acked.len(),
        "a reservation id was handed out twice"
    );
    for sku in skus {
        let n = acked.iter().filter(|(s, _)| s == sku).count() as u64;
        let s = c.get_sku(sku.as_str()).await.unwrap().unwrap();
        assert_eq!(
            s.warehouses[0].reserved, n,
            "{sku}: reserved differs from acknowledged ops"
        );
        assert_eq!(s.warehouses[0].on_hand, 100_000);
    }
    for (_, id) in acked.iter().step_by(every) {
        assert!(c.get_reservation(*id).await.unwrap().is_some(), "{id} lost");
    }
}

async fn writer(c: Client, skus: Vec<String>, w: usize, n: usize, acked: Acked) {
    for i in 0..n {
        let sku = skus[(w + i) % skus.len()].clone();
        let key = format!("w{w}-op{i}");
        // Retried with the same key until it is answered: a retry never
        // reserves twice, so at the end every op is applied exactly once.
        let mut attempts = 0;
        let r = loop {
            let line = vec![ReserveLine {
                sku: sku.clone(),
                qty: 1,
            }];
            match c
                .reserve(format!("user-{w}"), line, None, Some(key.clone()))
                .await
            {
                Ok(r) => break r,
                Err(ClientError::Server(e)) if !e.is_retryable() => panic!("op {key}: {e}"),
                Err(e) => {
                    attempts += 1;
                    assert!(attempts < 200, "op {key} never answered: {e}");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        acked.lock().unwrap().push((sku, r.reservation_id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_moves_under_load_and_loses_or_duplicates_nothing() {
    const SHARD: u16 = 10; // core 0 of 2
    const WRITERS: usize = 4;
    const OPS: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let setup = client(&server).await;
    let skus: Vec<String> = (0..4).map(|i| key_on_shard("move-", SHARD, i)).collect();
    for sku in &skus {
        setup
            .upsert_sku(sku.as_str(), "s", "t", eur(1))
            .await
            .unwrap();
        setup.set_stock(sku.as_str(), "w1", 100_000).await.unwrap();
    }
    let acked: Acked = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let c = client(&server).await;
        tasks.push(tokio::spawn(writer(c, skus.clone(), w, OPS, acked.clone())));
    }
    // Move the shard away and back while the writers run.
    let admin = server.admin.clone();
    let mover = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| {
            Command::new(cli_binary())
                .arg("--admin")
                .arg(&admin)
                .args(args)
                .output()
                .unwrap()
        };
        std::thread::sleep(Duration::from_millis(100));
        let first = ok(run(&["shard", "move", "10", "--core", "1"]));
        std::thread::sleep(Duration::from_millis(150));
        let second = json(run(&[
            "--output", "json", "shard", "move", "10", "--core", "0",
        ]));
        (first, second)
    });
    let (first, second) = mover.await.unwrap();
    assert!(first.contains("moved from core 0 to core 1"), "{first}");
    assert_eq!(second["map_version"], 3, "{second}");
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), WRITERS * OPS);
    check_acked(&client(&server).await, &acked, &skus, 37).await;
    let status = json(server.cli(&["--output", "json", "status"]));
    assert_eq!(status["shard_map_version"], 3);
    assert_eq!(status["totals"]["shard_moves"], 2);
    assert_eq!(status["totals"]["poisoned_shards"], 0);

    // Durable and consistent across a restart, and the directory verifies clean.
    assert!(server.terminate().success());
    let report = ok(Command::new(cli_binary())
        .args(["verify", "--data"])
        .arg(dir.path())
        .output()
        .unwrap());
    assert!(report.contains("OK: 256 shards"), "{report}");
    server.restart();
    check_acked(&client(&server).await, &acked, &skus, 37).await;
}

/// A reservation a writer sent but was not answered (the node was killed):
/// SKU, user and idempotency key, to send again after the restart.
type Unanswered = (String, String, String);

/// Reserves one unit at a time until the node is killed; returns the
/// request in flight at the kill, if any.
async fn writer_until_killed(
    c: Client,
    skus: Vec<String>,
    w: usize,
    acked: Acked,
    killed: Arc<AtomicBool>,
) -> Option<Unanswered> {
    // A bound, far beyond what runs before the kill.
    const OPS_MAX: usize = 20_000;
    for i in 0..OPS_MAX {
        if killed.load(Ordering::SeqCst) {
            return None;
        }
        let sku = skus[(w + i) % skus.len()].clone();
        let user = format!("user-{w}");
        let key = format!("k9-w{w}-op{i}");
        let mut attempts = 0;
        loop {
            let line = vec![ReserveLine {
                sku: sku.clone(),
                qty: 1,
            }];
            match c.reserve(user.clone(), line, None, Some(key.clone())).await {
                Ok(r) => {
                    acked.lock().unwrap().push((sku, r.reservation_id));
                    break;
                }
                Err(ClientError::Server(e)) if !e.is_retryable() => panic!("op {key}: {e}"),
                Err(e) => {
                    if killed.load(Ordering::SeqCst) {
                        return Some((sku, user, key));
                    }
                    attempts += 1;
                    assert!(attempts < 200, "op {key} never answered: {e}");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    None
}

/// Waits until the writers have `n` acknowledged reservations.
async fn wait_for_acks(acked: &Acked, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "the writers stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn verify_json(data: &Path) -> serde_json::Value {
    json(
        Command::new(cli_binary())
            .args(["--output", "json", "verify", "--data"])
            .arg(data)
            .output()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_moved_under_load_survives_kill_9_and_the_directory_verifies_clean() {
    const SHARD: u16 = 12; // core 0 of 2
    const WRITERS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--fsync", "always"]);
    let setup = client(&server).await;
    let skus: Vec<String> = (0..4).map(|i| key_on_shard("k9-", SHARD, i)).collect();
    for sku in &skus {
        setup
            .upsert_sku(sku.as_str(), "s", "t", eur(1))
            .await
            .unwrap();
        setup.set_stock(sku.as_str(), "w1", 100_000).await.unwrap();
    }
    drop(setup);
    let acked: Acked = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let c = client(&server).await;
        tasks.push(tokio::spawn(writer_until_killed(
            c,
            skus.clone(),
            w,
            acked.clone(),
            killed.clone(),
        )));
    }
    // Move the shard to core 1 while the writers run.
    wait_for_acks(&acked, 50).await;
    let admin = server.admin.clone();
    let moved = tokio::task::spawn_blocking(move || {
        json(
            Command::new(cli_binary())
                .arg("--admin")
                .arg(&admin)
                .args(["--output", "json", "shard", "move", "12", "--core", "1"])
                .output()
                .unwrap(),
        )
    })
    .await
    .unwrap();
    assert_eq!(moved["from_core"], 0, "{moved}");
    assert_eq!(moved["to_core"], 1, "{moved}");
    // Writes land on the new core (in its journal); then kill -9 mid-stream.
    let at_move = acked.lock().unwrap().len();
    wait_for_acks(&acked, at_move + 100).await;
    killed.store(true, Ordering::SeqCst);
    server.kill9();
    let mut unanswered = Vec::new();
    for t in tasks {
        unanswered.extend(t.await.unwrap());
    }
    let mut acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= at_move + 100);

    // The killed node's directory (stopped now) verifies clean, both cores'
    // journals included; a torn last round would be a warning only.
    let report = verify_json(dir.path());
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["journals"].as_array().unwrap().len(), 2, "{report}");

    // Restart on the same data: every acknowledged write is there once.
    server.restart();
    let c = client(&server).await;
    // The requests in flight at the kill, sent again with their keys: each
    // is applied once whether or not it had been made durable.
    for (sku, user, key) in unanswered {
        let line = vec![ReserveLine {
            sku: sku.clone(),
            qty: 1,
        }];
        let r = c.reserve(user, line, None, Some(key)).await.unwrap();
        acked.push((sku, r.reservation_id));
    }
    check_acked(&c, &acked, &skus, 1).await;
    let shards = json(server.cli(&["--output", "json", "shards"]));
    assert_eq!(shards["shards"][usize::from(SHARD)]["core"], 1, "{shards}");
    let status = json(server.cli(&["--output", "json", "status"]));
    assert_eq!(status["totals"]["poisoned_shards"], 0);
    drop(c);

    // Stopped cleanly, the directory verifies clean with nothing left for
    // the next start to take from the journals.
    assert!(server.terminate().success());
    let report = verify_json(dir.path());
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["journal_pending"], 0, "{report}");
    let text = ok(verify(dir.path()));
    assert!(text.contains("OK: 256 shards"), "{text}");
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

fn shard_files(data: &Path, shard: u16, prefix: &str) -> Vec<std::path::PathBuf> {
    let dir = data.join("shards").join(format!("{shard:03}"));
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .collect();
    v.sort();
    v
}

fn verify(data: &Path) -> Output {
    Command::new(cli_binary())
        .args(["verify", "--data"])
        .arg(data)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_flipped_bit_a_truncated_segment_and_a_missing_snapshot() {
    const SHARD: u16 = 3;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let mut server = Server::start(&data, &["--segment-kib", "64", "--snapshot-every", "500"]);
    let c = client(&server).await;
    let skus: Vec<String> = (0..20).map(|i| key_on_shard("v-", SHARD, i)).collect();
    for sku in &skus {
        c.upsert_sku(sku.as_str(), "s", "a title", eur(5))
            .await
            .unwrap();
    }
    for round in 0..100u64 {
        let ops = skus
            .iter()
            .map(|sku| {
                reserva_protocol::Op::Mutate(reserva_protocol::engine::Request::new(
                    reserva_protocol::engine::Command::SetStock {
                        sku: sku.clone(),
                        warehouse: "w1".into(),
                        on_hand: round,
                    },
                ))
            })
            .collect();
        for r in c.batch(ops).await.unwrap() {
            r.unwrap();
        }
    }
    drop(c);
    assert!(server.terminate().success());
    let segments = shard_files(&data, SHARD, "seg-0");
    assert!(segments.len() >= 2, "{segments:?}");
    assert!(
        !segments[0].ends_with("seg-00000000000000000001.log"),
        "segments were not pruned"
    );
    assert!(!shard_files(&data, SHARD, "snap-").is_empty());
    let report = ok(verify(&data));
    assert!(report.contains("OK: 256 shards"), "{report}");

    // A flipped bit in a record of the oldest segment.
    let flipped = root.path().join("flipped");
    copy_dir(&data, &flipped);
    let seg = shard_files(&flipped, SHARD, "seg-0")[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[64 + 40] ^= 0x04;
    std::fs::write(&seg, &bytes).unwrap();
    let o = verify(&flipped);
    assert!(!o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let expected = format!(
        "FAULT corrupt shard {SHARD} file {} offset 64",
        seg.display()
    );
    assert!(out.contains(&expected), "{out}");
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        bytes,
        "verify modified the segment"
    );

    // A truncated segment.
    let truncated = root.path().join("truncated");
    copy_dir(&data, &truncated);
    let seg = shard_files(&truncated, SHARD, "seg-0")[0].clone();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(10_000)
        .unwrap();
    let o = verify(&truncated);
    assert!(!o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let expected = format!(
        "FAULT truncated shard {SHARD} file {} offset 10000",
        seg.display()
    );
    assert!(out.contains(&expected), "{out}");

    // Missing snapshots: the pruned log no longer starts at LSN 1.
    let missing = root.path().join("missing");
    copy_dir(&data, &missing);
    for snap in shard_files(&missing, SHARD, "snap-") {
        std::fs::remove_file(snap).unwrap();
    }
    let o = verify(&missing);
    assert!(!o.status.success(), "{}", text(&o));
    let out = json(
        Command::new(cli_binary())
            .args(["--output", "json", "verify", "--data"])
            .arg(&missing)
            .output()
            .map(|mut o| {
                // `json` wants success; the report itself carries the faults.
                o.status = std::process::ExitStatus::default();
                o
            })
            .unwrap(),
    );
    assert_eq!(out["ok"], false);
    let gap = out["faults"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "gap")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(gap["shard"], SHARD);

    // The original still recovers and serves.
    server.restart();
    let c = client(&server).await;
    let s = c.get_sku(skus[0].as_str()).await.unwrap().unwrap();
    assert_eq!(s.warehouses[0].on_hand, 99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_aware_client_follows_a_moved_shard() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let c = client(&server).await;
    let sku = key_on_shard("follow-", 10, 0);
    c.upsert_sku(sku.as_str(), "s", "t", eur(1)).await.unwrap();
    assert_eq!(c.shard_map().version, 1);
    assert_eq!(c.shard_map().owner_of(10), Some(0));
    let moved = json(server.cli(&["--output", "json", "shard", "move", "10", "--core", "1"]));
    assert_eq!(moved["from_core"], 0);
    assert_eq!(moved["to_core"], 1);
    // The client still sends to core 0's own port, is told WrongShard,
    // refreshes its map and resends to core 1.
    c.set_stock(sku.as_str(), "w1", 7).await.unwrap();
    assert_eq!(c.shard_map().version, 2);
    assert_eq!(c.shard_map().owner_of(10), Some(1));
    assert_eq!(
        c.get_sku(sku.as_str()).await.unwrap().unwrap().warehouses[0].on_hand,
        7
    );
    let shards = json(server.cli(&["--output", "json", "shards"]));
    assert_eq!(shards["shards"][10]["core"], 1);
    // Snapshots and compaction run on the new owner.
    let snap = json(server.cli(&["--output", "json", "snapshot", "10"]));
    assert_eq!(snap["results"][0]["error"], "", "{snap}");

    // The move survives a kill -9: the node starts with the stored placement.
    drop(c);
    server.kill9();
    server.restart();
    let shards = json(server.cli(&["--output", "json", "shards"]));
    assert_eq!(shards["shards"][10]["core"], 1, "{shards}");
    assert_eq!(shards["shards"][11]["core"], 1);
    assert_eq!(shards["shards"][12]["core"], 0);
    let status = json(server.cli(&["--output", "json", "status"]));
    assert_eq!(status["shard_map_version"], 2);
    let c = client(&server).await;
    assert_eq!(c.shard_map().owner_of(10), Some(1));
    assert_eq!(
        c.get_sku(sku.as_str()).await.unwrap().unwrap().warehouses[0].on_hand,
        7
    );

    // Started with another core count, the stored owners do not apply.
    drop(c);
    assert!(server.terminate().success());
    let data = dir.path().to_path_buf();
    let four = Server::start(&data, &["--cores", "4"]);
    let shards = json(four.cli(&["--output", "json", "shards"]));
    assert_eq!(shards["shards"][10]["core"], 2, "{shards}");
}

/// `reserva shards --output json | head`: a reader that closes the pipe ends
/// the CLI quietly (exit 0, no panic), as Unix tools do.
#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut child = Command::new(cli_binary())
        .arg("--admin")
        .arg(&server.admin)
        .args(["shards", "--output", "json"])
        .env_remove("RESERVA_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the CLI has its answer to print.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

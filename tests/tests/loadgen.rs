//! Black-box tests of `reserva-loadgen` against a real `reserva-server`:
//! a clean run reconciles, and `--verify` catches stock that moved behind
//! the load generator's back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use reserva_client::{Client, ClientConfig};
use reserva_protocol::engine::ReserveLine;
use reserva_tests::Server;

/// The `reserva-loadgen` binary next to this test executable (built if missing).
fn loadgen_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let bin = profile_dir.join("reserva-loadgen");
    if !bin.exists() {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "reserva-loadgen", "--bin", "reserva-loadgen"]);
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().expect("run cargo build").success(),
            "building reserva-loadgen failed"
        );
    }
    bin
}

const CATALOG: [&str; 6] = ["--skus", "500", "--warehouses", "2", "--stock", "100000"];

fn loadgen(args: &[&str]) -> Output {
    Command::new(loadgen_binary())
        .args(args)
        .output()
        .expect("run reserva-loadgen")
}

/// `run --target TARGET --scenario SCENARIO --rate RATE --duration DURATION --quiet`.
fn run_args<'a>(
    target: &'a str,
    scenario: &'a str,
    rate: &'a str,
    duration: &'a str,
) -> Vec<&'a str> {
    vec![
        "run",
        "--target",
        target,
        "--scenario",
        scenario,
        "--rate",
        rate,
        "--duration",
        duration,
        "--quiet",
    ]
}

fn seed(target: &str) {
    let mut args = vec!["seed", "--target", target];
    args.extend(CATALOG);
    let out = loadgen(&args);
    assert!(
        out.status.success(),
        "seed failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_clean_reserve_run_reconciles_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let target = format!("reserva://{}", server.addr);
    seed(&target);
    let json = dir.path().join("report.json");
    let json_arg = json.to_str().unwrap();
    let mut args = [
        run_args(&target, "reserve", "500", "2s"),
        vec!["--verify", "--json", json_arg],
    ]
    .concat();
    args.extend(CATALOG);
    let out = loadgen(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run failed: {stderr}");
    assert!(stderr.contains("verify: OK"), "{stderr}");
    let report = std::fs::read_to_string(&json).unwrap();
    for field in [
        "\"scenario\": \"reserve\"",
        "\"target_rate_per_s\"",
        "\"achieved_ops_per_s\"",
        "\"latency_us\"",
        "\"p999\"",
        "\"shed\"",
        "\"ok\": true",
    ] {
        assert!(report.contains(field), "{field} missing from {report}");
    }
}

#[test]
fn verify_fails_loudly_when_stock_moves_behind_the_load_generator() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let target = format!("reserva://{}", server.addr);
    seed(&target);
    let mut args = run_args(&target, "reserve", "200", "4s");
    args.push("--verify");
    args.extend(CATALOG);
    let child = Command::new(loadgen_binary())
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn reserva-loadgen");
    // After the load generator's first reading of the stock, deduct units it
    // never asked for: its reconciliation must call them out.
    std::thread::sleep(Duration::from_millis(1_500));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = Client::connect(&server.addr, ClientConfig::new("any"))
            .await
            .unwrap();
        let lines = vec![ReserveLine {
            sku: "sku-7".into(),
            qty: 3,
        }];
        let r = c.reserve("intruder", lines, None, None).await.unwrap();
        c.confirm(r.reservation_id).await.unwrap();
    });
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("verify: FAILED"), "{stderr}");
    assert!(stderr.contains("PHANTOM sku-7"), "{stderr}");
}

#[test]
fn the_http_target_drives_the_rest_gateway_and_reconciles() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--http-rate-limits", "anonymous=1000000,admin=1000000"],
    );
    let target = format!("http://{}", server.http.as_ref().expect("gateway address"));
    seed(&target);
    for scenario in ["mixed", "reserve"] {
        let mut args = [run_args(&target, scenario, "50", "2s"), vec!["--verify"]].concat();
        args.extend(CATALOG);
        let out = loadgen(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{scenario} over HTTP failed: {stderr}"
        );
        assert!(stderr.contains("verify: OK"), "{scenario}: {stderr}");
    }
}

/// `run --verify` with a bigger `--skus` than was seeded fails at once and
/// says what to pass; `--rate` takes orders per minute.
#[test]
fn a_run_against_a_smaller_catalogue_fails_fast_and_rates_take_per_minute() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let target = format!("reserva://{}", server.addr);
    seed(&target);
    let started = std::time::Instant::now();
    let args = run_args(&target, "reserve", "100000/min", "1s");
    let out = loadgen(&[args, vec!["--verify", "--skus", "100000"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("does not hold sku-99999") && stderr.contains("--skus"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    let mut args = run_args(&target, "reserve", "30000/min", "1s");
    args.extend(CATALOG);
    let out = loadgen(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| 500 |"), "{stdout}");
}

/// A `spike` run reports each phase (offered, goodput, shed, errors, the
/// admitted latency) and the recovery time in its JSON and its text, and
/// `--plot` draws the offered load against goodput and shed.
#[test]
fn a_spike_run_reports_its_phases_and_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let target = format!("reserva://{}", server.addr);
    seed(&target);
    let json = dir.path().join("spike.json");
    let svg = dir.path().join("spike.svg");
    let mut args = [
        run_args(&target, "spike", "20", "4s"),
        vec![
            "--spike-factor",
            "5",
            "--slo",
            "60000",
            "--json",
            json.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
        ],
    ]
    .concat();
    args.extend(CATALOG);
    let out = loadgen(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "spike run failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for row in [
        "| baseline | 0.0-1.0 |",
        "| ramp |",
        "| peak |",
        "| after |",
    ] {
        assert!(stdout.contains(row), "{row} missing from {stdout}");
    }
    assert!(stdout.contains("recovery: "), "{stdout}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let spike = &report["spike"];
    let phases = spike["phases"].as_array().expect("spike.phases");
    let names: Vec<&str> = phases.iter().filter_map(|p| p["phase"].as_str()).collect();
    assert_eq!(
        &names[..4],
        ["baseline", "ramp", "peak", "after"],
        "{spike}"
    );
    let mut offered = 0;
    for p in phases {
        for field in ["offered_per_s", "goodput_per_s", "shed", "errors"] {
            assert!(p[field].is_number(), "{field} missing from {p}");
        }
        assert!(p["admitted_latency_us"]["p99"].is_u64(), "{p}");
        offered += p["offered"].as_u64().unwrap();
    }
    assert_eq!(Some(offered), report["scheduled"].as_u64(), "{report}");
    let peak = &phases[2];
    assert!(
        peak["offered_per_s"].as_f64().unwrap()
            > 2.0 * phases[0]["offered_per_s"].as_f64().unwrap(),
        "{spike}"
    );
    assert!(peak["ok"].as_u64().unwrap() > 0, "{spike}");
    // A 60 s objective is met again within the after phase (2.4 s to 4 s).
    let recovery = spike["recovery_ms"].as_u64();
    assert!(recovery.is_some_and(|ms| ms <= 1_600), "{spike}");

    let plot = std::fs::read_to_string(&svg).unwrap();
    for title in ["offered vs goodput vs shed", "p99 of admitted units"] {
        assert!(plot.contains(title), "{title} missing from the plot");
    }
}

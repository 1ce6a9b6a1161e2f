//! `reserva-loadgen` refuses bad flags and unreachable targets with a clear
//! message and a non-zero exit.
//!
//! (Declaring this test also makes `cargo test` build the loadgen binary with
//! the workspace's test features, so the black-box tests in `tests/` find it
//! built once.)

use std::process::{Command, Output};

fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reserva-loadgen"))
        .args(args)
        .output()
        .expect("run reserva-loadgen")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_flags_and_targets_are_refused_with_a_reason() {
    let o = loadgen(&[
        "run",
        "--target",
        "reserva://127.0.0.1:1",
        "--scenario",
        "nope",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--scenario"), "{}", stderr(&o));

    let o = loadgen(&["run", "--target", "bogus://x", "--scenario", "reserve"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown target scheme"),
        "{}",
        stderr(&o)
    );

    // Port 1 on loopback refuses connections.
    let args = [
        "run",
        "--target",
        "reserva://127.0.0.1:1",
        "--scenario",
        "reserve",
    ];
    let o = loadgen(&[&args[..], &["--duration", "1s", "--rate", "10"]].concat());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("127.0.0.1:1"), "{}", stderr(&o));

    // CPUs that cannot exist, or are not numbers.
    for cpus in ["5000", "0,x", ""] {
        let o = loadgen(&[&args[..], &["--cpus", cpus]].concat());
        assert_eq!(o.status.code(), Some(2), "--cpus {cpus:?}");
        assert!(stderr(&o).contains("--cpus"), "{}", stderr(&o));
    }
}

#[test]
fn cpus_pin_the_generator_before_it_starts() {
    // Pinned to CPU 0 (present on every machine), the generator starts and
    // fails only on the unreachable target, not on the pinning.
    let o = loadgen(&[
        "run",
        "--target",
        "reserva://127.0.0.1:1",
        "--scenario",
        "reserve",
        "--cpus",
        "0",
        "--duration",
        "1s",
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("127.0.0.1:1") && !err.contains("cannot run on CPUs"),
        "{err}"
    );
}

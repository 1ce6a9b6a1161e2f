//! The `reserva-server` command line refuses bad flags and bad files with a
//! clear message and a non-zero exit, before it touches any data.
//!
//! (Declaring this test also makes `cargo test` build the server binary with
//! the workspace's test features, so the black-box tests in `tests/` find it
//! built once.)

use std::process::{Command, Output};

fn server(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reserva-server"))
        .args(args)
        .output()
        .expect("run reserva-server")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_names_the_flags() {
    let o = server(&["--help"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--data",
        "--listen",
        "--fsync",
        "--http",
        "--admin",
        "--auth-file",
    ] {
        assert!(out.contains(flag), "--help does not mention {flag}:\n{out}");
    }
}

#[test]
fn bad_flags_and_files_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let quiet = ["--admin", "off", "--http", "off", "--listen", "127.0.0.1:0"];

    let o = server(&["--bogus"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--bogus"), "{}", stderr(&o));

    let o = server(&["--data", data, "--listen", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--listen"), "{}", stderr(&o));

    let bad_toml = dir.path().join("checkout.toml");
    std::fs::write(&bad_toml, "nonsense = [").unwrap();
    let mut args = vec![
        "--data",
        data,
        "--checkout-config",
        bad_toml.to_str().unwrap(),
    ];
    args.extend(quiet);
    let o = server(&args);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("checkout config"), "{}", stderr(&o));

    let mut args = vec!["--data", data, "--auth-file", "/nonexistent/keys.toml"];
    args.extend(quiet);
    let o = server(&args);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("auth file"), "{}", stderr(&o));

    // Nothing was created for a start that never happened.
    assert!(!std::path::Path::new(data).join("shard-000").exists());
}

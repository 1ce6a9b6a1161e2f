//! Helpers for black-box tests: start a real `reserva-server` process on a
//! temporary data directory and a free port, stop it, kill it, restart it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to recover and print its ready line.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `reserva-server` binary next to this test executable (built if missing).
pub fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/reserva-server
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let bin = profile_dir.join("reserva-server");
    if !bin.exists() {
        let release = profile_dir.ends_with("release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "reserva-server", "--bin", "reserva-server"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building reserva-server failed");
    }
    bin
}

/// The `reserva` admin CLI next to this test executable (built if missing).
pub fn cli_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let bin = profile_dir.join("reserva");
    if !bin.exists() {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "reserva-client", "--bin", "reserva"]);
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building reserva failed");
    }
    bin
}

/// A running server process.
pub struct Server {
    child: Option<Child>,
    /// The node's main address (`--listen`, port resolved).
    pub addr: String,
    /// The admin API's address (`--admin`, port resolved), or `"off"`.
    pub admin: String,
    /// The embedded REST gateway's address (`http=` of the ready line), if on.
    pub http: Option<String>,
    /// Its data directory.
    pub data: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Server {
    /// Starts a server on `data` with `127.0.0.1:0` (and the REST gateway on
    /// `127.0.0.1:0` unless `extra` names `--http`) and `extra` arguments;
    /// waits until it is ready.
    pub fn start(data: &Path, extra: &[&str]) -> Server {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut s = Server {
            child: None,
            addr: String::new(),
            admin: String::new(),
            http: None,
            data: data.to_path_buf(),
            args,
            env: Vec::new(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(server_binary());
        cmd.arg("--data")
            .arg(&self.data)
            .args(["--listen", "127.0.0.1:0", "--log", "warn"]);
        if !self.args.iter().any(|a| a == "--cores") {
            cmd.args(["--cores", "2"]);
        }
        if !self.args.iter().any(|a| a == "--segment-kib") {
            cmd.args(["--segment-kib", "256"]);
        }
        // The smallest commit journal (two 8 MiB segments per core): quick to
        // create at every start, and small enough that tests under load
        // exercise rollover, checkpoints and segment reuse.
        if !self.args.iter().any(|a| a == "--journal-segment-kib") {
            cmd.args(["--journal-segment-kib", "8192"]);
        }
        if !self.args.iter().any(|a| a == "--journal-segments") {
            cmd.args(["--journal-segments", "2"]);
        }
        if !self.args.iter().any(|a| a == "--admin") {
            cmd.args(["--admin", "127.0.0.1:0"]);
        }
        if !self.args.iter().any(|a| a == "--http") {
            cmd.args(["--http", "127.0.0.1:0"]);
        }
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn reserva-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("reserva-server ready listen=") {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let admin = rest
                        .split_whitespace()
                        .find_map(|f| f.strip_prefix("admin="))
                        .unwrap_or("off")
                        .to_string();

                    let http = rest
                        .split_whitespace()
                        .find_map(|f| f.strip_prefix("http="))
                        .map(str::to_owned);
                    let _ = tx.send((addr, admin, http));
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok((addr, admin, http)) = rx.recv_timeout(Duration::from_millis(100)) {
                self.addr = addr;
                self.admin = admin;
                self.http = http;
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("reserva-server exited during start-up: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "reserva-server not ready within {START_TIMEOUT:?}"
            );
        }
        self.child = Some(child);
    }

    /// Starts a server like [`Server::start`] with environment variables set
    /// (for example a failpoint); [`Server::restart`] keeps them until
    /// [`Server::clear_env`].
    pub fn start_with_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut s = Server {
            child: None,
            addr: String::new(),
            http: None,
            data: data.to_path_buf(),
            admin: String::new(),
            args: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        s.spawn();
        s
    }

    /// Forgets the environment variables given at start for later restarts.
    pub fn clear_env(&mut self) {
        self.env.clear();
    }

    /// Sets an environment variable for later restarts.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Waits up to `timeout` for the process to exit on its own; its status if it did.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Runs the `reserva` CLI against this server's admin address with `args`.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(cli_binary())
            .arg("--admin")
            .arg(&self.admin)
            .args(args)
            .env_remove("RESERVA_TOKEN")
            .output()
            .expect("run reserva")
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("server running");
        let pid = c.id() as i32;
        send_sigterm(pid);
        c.wait().expect("wait for reserva-server")
    }

    /// Starts the server again on the same data directory (new ports).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server before restarting it");
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn send_sigterm(pid: i32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid} failed");
}

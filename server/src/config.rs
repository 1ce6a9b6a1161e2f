//! Server configuration: what the command line and the auth file say.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::AuthTable;

/// When appended records are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// Every group commit ends with a durability barrier before any answer.
    Always,
    /// Barriers run on a timer; answers may be lost on power failure (not on
    /// a process crash: the page cache keeps the mapped writes).
    Interval(Duration),
    /// No barriers; the kernel writes back when it likes.
    Never,
}

impl std::str::FromStr for FsyncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncMode::Always),
            "never" => Ok(FsyncMode::Never),
            _ => {
                let ms = s
                    .strip_prefix("interval:")
                    .and_then(|ms| ms.parse::<u64>().ok())
                    .filter(|ms| (1..=60_000).contains(ms))
                    .ok_or_else(|| {
                        format!("invalid --fsync {s:?}: expected always, never or interval:MS with MS in 1..=60000")
                    })?;
                Ok(FsyncMode::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Data directory (one sub-directory per shard under `shards/`).
    pub data_dir: PathBuf,
    /// Address every core accepts connections on (SO_REUSEPORT).
    pub listen: SocketAddr,
    /// Number of executors (cores).
    pub cores: u16,
    /// Durability mode.
    pub fsync: FsyncMode,
    /// API keys; `None` = open access on loopback only.
    pub auth: Option<AuthTable>,
    /// Log segment size per shard.
    pub segment_bytes: u64,
    /// Each core's commit journal: segment size and count.
    pub journal: reserva_engine::journal::JournalConfig,
    /// Snapshot after this many records per shard.
    pub snapshot_every_records: u64,
    /// Locked I/O memory per executor.
    pub io_memory_bytes: usize,
    /// Pin executor i to CPU i (modulo the CPUs present).
    pub pin: bool,
    /// A client request a core expects to hold longer than this is refused
    /// as `Overloaded` (`Duration::MAX`: no budget).
    pub admission_budget: Duration,
    /// Fraud rules, payment provider behaviour and warehouse locations.
    pub checkout: crate::checkout_config::CheckoutConfig,
    /// Address of the admin API (gRPC) and `/metrics`; `None` = off.
    pub admin: Option<SocketAddr>,
}

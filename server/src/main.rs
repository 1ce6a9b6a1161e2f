//! `reserva-server`: runs a reserva node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use reserva_server::auth::AuthTable;
use reserva_server::checkout_config::CheckoutConfig;
use reserva_server::config::{FsyncMode, ServerConfig};
use reserva_server::limits::IO_MEMORY_BYTES_DEFAULT;

/// reserva: sharded order and inventory reservation server.
#[derive(Debug, Parser)]
#[command(name = "reserva-server", version)]
struct Args {
    /// Data directory (created if missing).
    #[arg(long, default_value = "./reserva-data")]
    data: PathBuf,
    /// Address for the binary protocol. Without --auth-file it must be a loopback address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Executors (one per core); default: every CPU.
    #[arg(long)]
    cores: Option<u16>,
    /// Durability: always | interval:MS | never.
    #[arg(long, default_value = "always")]
    fsync: FsyncMode,
    /// API keys (TOML, [[keys]] with token, role, user_id, seller_id, tier).
    #[arg(long)]
    auth_file: Option<PathBuf>,
    /// Log segment size per shard, in KiB (preallocated: a node holds one or
    /// two segments per shard, 256 shards).
    #[arg(long, default_value_t = 2048)]
    segment_kib: u64,
    /// Snapshot a shard after this many log records (0 = never).
    #[arg(long, default_value_t = 1_000_000)]
    snapshot_every: u64,
    /// Locked I/O memory per executor, in KiB.
    #[arg(long, default_value_t = (IO_MEMORY_BYTES_DEFAULT / 1024) as u64)]
    io_memory_kib: u64,
    /// Do not pin executors to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Checkout configuration (TOML: [fraud] rules, [payments] sandbox
    /// latency and attempts, [[warehouses]] id/lat/lon); see docs/checkout.md.
    #[arg(long)]
    checkout_config: Option<PathBuf>,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, default_value = "info")]
    log: String,
    /// Log line format on stderr: text, or json (one JSON object per event).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Address of the admin API (gRPC) and /metrics, or "off". Without
    /// --auth-file it must be a loopback address.
    #[arg(long, default_value = "127.0.0.1:7701", value_parser = parse_admin)]
    admin: AdminAddr,
}

/// `--admin`: an address, or off.
#[derive(Debug, Clone, Copy)]
struct AdminAddr(Option<SocketAddr>);

fn parse_admin(s: &str) -> Result<AdminAddr, String> {
    if s == "off" {
        return Ok(AdminAddr(None));
    }
    s.parse()
        .map(|a| AdminAddr(Some(a)))
        .map_err(|e| format!("invalid --admin {s:?}: {e} (expected IP:PORT or off)"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reserva-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let auth = match &args.auth_file {
        Some(path) => Some(AuthTable::load(path).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let checkout = match &args.checkout_config {
        Some(path) => CheckoutConfig::load(path).map_err(anyhow::Error::msg)?,
        None => CheckoutConfig::default(),
    };
    let cores = args
        .cores
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()) as u16);
    let config = ServerConfig {
        data_dir: args.data,
        listen: args.listen,
        cores,
        fsync: args.fsync,
        auth,
        segment_bytes: args.segment_kib.saturating_mul(1024),
        snapshot_every_records: args.snapshot_every,
        io_memory_bytes: (args.io_memory_kib as usize).saturating_mul(1024),
        pin: !args.no_pin,
        checkout,
        admin: args.admin.0,
    };
    reserva_server::node::run(config)
}

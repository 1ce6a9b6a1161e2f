//! `reserva-server`: runs a reserva node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use reserva_gateway::RateLimits;
use reserva_server::auth::AuthTable;
use reserva_server::checkout_config::CheckoutConfig;
use reserva_server::config::{FsyncMode, ServerConfig};
use reserva_server::http::HttpOptions;
use reserva_server::limits::{
    ADMISSION_BUDGET_DEFAULT, ADMISSION_BUDGET_MAX, IO_MEMORY_BYTES_DEFAULT,
};

/// reserva: sharded order and inventory reservation server.
#[derive(Debug, Parser)]
#[command(
    name = "reserva-server",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    node: Args,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Runs a standalone REST gateway in front of a node (several may run
    /// in front of one cluster).
    Gateway(GatewayArgs),
}

/// A standalone gateway.
#[derive(Debug, clap::Args)]
struct GatewayArgs {
    /// Address to serve HTTP on. Without --auth-file it must be a loopback address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// The node's protocol address (its --listen).
    #[arg(long, default_value = "127.0.0.1:7700")]
    server: String,
    /// API keys (the node's auth file).
    #[arg(long)]
    auth_file: Option<PathBuf>,
    /// Credential to connect to the node with; default: an admin key of --auth-file.
    #[arg(long)]
    server_token: Option<String>,
    /// Requests per minute per tier, e.g. anonymous=100,customer=1000,prime=5000,seller=10000,admin=100000.
    #[arg(long, default_value = "")]
    rate_limits: String,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Log filter.
    #[arg(long, default_value = "info")]
    log: String,
}

/// A node.
#[derive(Debug, clap::Args)]
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
    /// Commit journal segment size per core, in KiB (each core preallocates
    /// --journal-segments of them; see docs/operations.md).
    #[arg(long, default_value_t = reserva_engine::journal::limits::SEGMENT_BYTES_DEFAULT / 1024)]
    journal_segment_kib: u64,
    /// Commit journal segments per core (a ring; a segment is reused once
    /// every shard with records in it has checkpointed its own log).
    #[arg(long, default_value_t = reserva_engine::journal::limits::SEGMENTS_DEFAULT)]
    journal_segments: usize,
    /// Snapshot a shard after this many log records (0 = never).
    #[arg(long, default_value_t = 1_000_000)]
    snapshot_every: u64,
    /// Locked I/O memory per executor, in KiB.
    #[arg(long, default_value_t = (IO_MEMORY_BYTES_DEFAULT / 1024) as u64)]
    io_memory_kib: u64,
    /// Do not pin executors to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Admission budget in ms: a client request a core expects to hold
    /// longer than this is refused at once as Overloaded with a retry-after
    /// hint (0: no budget; requests are still held to their own deadlines
    /// and the queue bounds). See docs/operations.md, "Overload".
    #[arg(long, default_value_t = ADMISSION_BUDGET_DEFAULT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(0..=ADMISSION_BUDGET_MAX.as_millis() as u64))]
    admission_budget_ms: u64,
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
    /// REST gateway address served by this node, or `off`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: String,
    /// Gateway requests per minute per tier, e.g. anonymous=100,customer=1000,prime=5000,seller=10000,admin=100000.
    #[arg(long, default_value = "")]
    http_rate_limits: String,
    /// Gateway worker threads (a tokio runtime beside the executors).
    #[arg(long, default_value_t = 2)]
    http_threads: usize,
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
    let cli = Cli::parse();
    let (log, json) = match &cli.command {
        Some(Sub::Gateway(g)) => (g.log.clone(), false),
        None => (cli.node.log.clone(), cli.node.log_format == "json"),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&log).unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
    let result = match cli.command {
        Some(Sub::Gateway(g)) => run_gateway(g),
        None => run(cli.node),
    };
    match result {
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
    // A node that will refuse its --listen address says so first.
    let refused = auth.is_none() && !args.listen.ip().is_loopback();
    let http = match args.http.as_str() {
        "off" => None,
        _ if refused => None,
        addr => {
            let addr: SocketAddr = addr
                .parse()
                .map_err(|e| anyhow::anyhow!("invalid --http {addr:?} (ADDR:PORT or off): {e}"))?;
            let rate_limits: RateLimits = args
                .http_rate_limits
                .parse()
                .map_err(|e: String| anyhow::anyhow!("--http-rate-limits: {e}"))?;
            let listener = reserva_server::http::bind(addr, auth.as_ref())?;
            let opts = HttpOptions {
                addr,
                rate_limits,
                threads: args.http_threads,
            };
            Some(reserva_server::http::embedded(
                listener,
                auth.clone(),
                opts,
            )?)
        }
    };
    let config = ServerConfig {
        data_dir: args.data,
        listen: args.listen,
        cores,
        fsync: args.fsync,
        auth,
        segment_bytes: args.segment_kib.saturating_mul(1024),
        journal: reserva_engine::journal::JournalConfig {
            segment_bytes: args.journal_segment_kib.saturating_mul(1024),
            segments: args.journal_segments,
        },
        snapshot_every_records: args.snapshot_every,
        io_memory_bytes: (args.io_memory_kib as usize).saturating_mul(1024),
        pin: !args.no_pin,
        admission_budget: match args.admission_budget_ms {
            0 => Duration::MAX,
            ms => Duration::from_millis(ms),
        },
        checkout,
        admin: args.admin.0,
    };
    reserva_server::node::run_with(config, http)
}

fn run_gateway(g: GatewayArgs) -> anyhow::Result<()> {
    let auth = match &g.auth_file {
        Some(path) => Some(AuthTable::load(path).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let rate_limits: RateLimits = g
        .rate_limits
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--rate-limits: {e}"))?;
    let opts = HttpOptions {
        addr: g.http,
        rate_limits,
        threads: g.threads,
    };
    reserva_server::http::standalone(g.server, auth, g.server_token, opts)
}

//! `reserva`: the SREs' command line for a reserva node. Talks to the
//! node's admin API (gRPC, `--admin`); `verify` works offline on a data
//! directory. Exits non-zero when a command fails or finds a fault.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use reserva_client::admin::view::{self, SortBy};
use reserva_client::admin::{AdminClient, AdminError};

/// Operate a reserva node: status, shard statistics, shard moves and
/// rebalancing, snapshots, compaction, offline verification.
#[derive(Debug, Parser)]
#[command(name = "reserva", version)]
struct Cli {
    /// The node's admin address (`reserva-server --admin`).
    #[arg(
        long,
        global = true,
        env = "RESERVA_ADMIN",
        default_value = "127.0.0.1:7701"
    )]
    admin: String,
    /// An admin key of the node's auth file (needed when it runs with --auth-file).
    #[arg(long, global = true, env = "RESERVA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Node, uptime, version, cores, shards per core, recovery time,
    /// durability mode, totals, and per core the commit journal (frames,
    /// records, bytes, barriers, records per barrier, barriers/s, full, checkpoints).
    Status,
    /// Every core's journal bytes and barriers/s, then one row per shard:
    /// owner core, ops/s, queue depth, p99 apply and commit latency, log
    /// bytes, LSN, last snapshot, live reservations, hot SKUs.
    Shards {
        /// Sort by (largest first); default: by shard number.
        #[arg(long, value_enum)]
        sort: Option<SortKey>,
        /// Show at most this many rows.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Operations on one shard.
    Shard {
        #[command(subcommand)]
        command: ShardCmd,
    },
    /// Propose and apply shard moves that even out the cores' measured ops/s.
    Rebalance {
        /// Only print the moves.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write a snapshot of the given shards now (bounds recovery time).
    Snapshot {
        /// Shard numbers (0..256).
        shards: Vec<u32>,
        /// Every shard.
        #[arg(long, conflicts_with = "shards")]
        all: bool,
    },
    /// Snapshot, then delete older snapshots and the segments they cover.
    Compact {
        /// Shard numbers (default: every shard).
        shards: Vec<u32>,
    },
    /// Check a data directory offline and read-only: every record checksum,
    /// LSN order, snapshot/log agreement, the commit journals (corruption,
    /// gaps, agreement with the shard logs, records the next start appends)
    /// and replay invariants.
    Verify {
        /// The data directory (`reserva-server --data`), best a stopped node's or a copy.
        #[arg(long)]
        data: PathBuf,
    },
    /// A live view of the busiest shards, refreshed until interrupted.
    Top {
        /// Refresh interval in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Rows shown.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Stop after this many refreshes (0: run until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        iterations: u64,
    },
}

#[derive(Debug, Subcommand)]
enum ShardCmd {
    /// Move a shard to another core while traffic flows.
    Move {
        /// The shard (0..256).
        shard: u32,
        /// The core to move it to.
        #[arg(long)]
        core: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SortKey {
    Ops,
    Queue,
    Log,
    Hot,
}

/// Writes to stdout. A closed pipe (`reserva shards --output json | head`)
/// ends the process quietly, as Unix tools do; any other write error is
/// reported once.
fn emit(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("reserva: cannot write the output: {e}");
        std::process::exit(1);
    }
}

macro_rules! out {
    ($($t:tt)*) => { emit(format_args!($($t)*)) };
}

macro_rules! outln {
    ($($t:tt)*) => { emit(format_args!("{}\n", format_args!($($t)*))) };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Verify { data } = &cli.command {
        return verify(data, cli.output);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("reserva: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("reserva: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), AdminError> {
    match serde_json::to_string_pretty(v) {
        Ok(s) => {
            outln!("{s}");
            Ok(())
        }
        Err(e) => Err(AdminError::Call(tonic::Status::internal(e.to_string()))),
    }
}

/// Runs an admin command; `Ok(false)` when it ran but reported a failure.
async fn run(cli: Cli) -> Result<bool, AdminError> {
    let mut admin = AdminClient::connect(&cli.admin, cli.token.clone()).await?;
    let json = cli.output == Output::Json;
    match cli.command {
        Cmd::Status => {
            let s = admin.status().await?;
            if json {
                print_json(&s)?
            } else {
                out!("{}", view::status(&s))
            }
        }
        Cmd::Shards { sort, limit } => {
            let mut reply = admin.shards().await?;
            let by = match sort {
                None => SortBy::Shard,
                Some(SortKey::Ops) => SortBy::Ops,
                Some(SortKey::Queue) => SortBy::Queue,
                Some(SortKey::Log) => SortBy::Log,
                Some(SortKey::Hot) => SortBy::Hot,
            };
            view::sort(&mut reply.shards, by);
            reply.shards.truncate(limit.unwrap_or(usize::MAX));
            if json {
                print_json(&reply)?
            } else {
                out!("{}", view::journal_line(&reply.journals));
                out!("{}", view::shards(&reply.shards))
            }
        }
        Cmd::Shard {
            command: ShardCmd::Move { shard, core },
        } => {
            let m = admin.move_shard(shard, core).await?;
            if json {
                print_json(&m)?
            } else {
                out!("{}", view::moved(&m))
            }
        }
        Cmd::Rebalance { dry_run } => {
            let r = admin.rebalance(dry_run).await?;
            if json {
                print_json(&r)?
            } else {
                out!("{}", view::rebalance(&r, dry_run))
            }
        }
        Cmd::Snapshot { shards, all } => {
            let r = admin.snapshot(shards, all).await?;
            if json {
                print_json(&r)?
            } else {
                out!("{}", view::shard_results(&r.results))
            }
            return Ok(r.results.iter().all(|x| x.error.is_empty()));
        }
        Cmd::Compact { shards } => {
            let r = admin.compact(shards).await?;
            if json {
                print_json(&r)?
            } else {
                out!("{}", view::shard_results(&r.results))
            }
            return Ok(r.results.iter().all(|x| x.error.is_empty()));
        }
        Cmd::Top {
            interval_ms,
            limit,
            iterations,
        } => top(&mut admin, interval_ms, limit, iterations, json).await?,
        Cmd::Verify { .. } => unreachable!("handled before connecting"),
    }
    Ok(true)
}

/// Clears the screen and prints the busiest shards, every `interval_ms`.
async fn top(
    admin: &mut AdminClient,
    interval_ms: u64,
    limit: usize,
    iterations: u64,
    json: bool,
) -> Result<(), AdminError> {
    let mut n = 0u64;
    loop {
        let status = admin.status().await?;
        let mut reply = admin.shards().await?;
        view::sort(&mut reply.shards, SortBy::Ops);
        reply.shards.truncate(limit);
        if json {
            print_json(&reply)?;
        } else {
            let t = status.totals.unwrap_or_default();
            let per_core: Vec<String> = status
                .cores
                .iter()
                .map(|c| {
                    format!(
                        "core {}: {:.0} ops/s q {} {:.0} barriers/s",
                        c.core,
                        c.ops_per_sec,
                        c.queue_depth,
                        c.journal.map_or(0.0, |j| j.barriers_per_sec)
                    )
                })
                .collect();
            out!("\x1b[2J\x1b[H");
            outln!(
                "reserva top - {} - map v{} - {} ops, {} errors, {} shed - window {} ms",
                status.node_id,
                status.shard_map_version,
                t.ops,
                t.errors,
                t.shed,
                reply.window_ms
            );
            outln!("{}\n", per_core.join(" | "));
            out!("{}", view::shards(&reply.shards));
        }
        n += 1;
        if iterations != 0 && n >= iterations {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(interval_ms.max(100))).await;
    }
}

fn verify(data: &std::path::Path, output: Output) -> ExitCode {
    let report = reserva_engine::verify::verify_data_dir(data);
    match output {
        Output::Json => match serde_json::to_string_pretty(&view::verify_json(&report)) {
            Ok(s) => outln!("{s}"),
            Err(e) => {
                eprintln!("reserva: {e}");
                return ExitCode::FAILURE;
            }
        },
        Output::Table => out!("{}", view::verify(&report)),
    }
    if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

//! A node: start one executor per core, recover the shards, listen, serve,
//! and stop cleanly on SIGTERM / SIGINT.
//!
//! Connections: every core accepts on the node's `--listen` address
//! (SO_REUSEPORT, so the kernel spreads connections over cores) and on a port
//! of its own, published in the shard map. A shard-aware client talks to the
//! owning core's port directly; anything that lands on another core is
//! forwarded over a bounded inbox.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};
use reserva_engine::journal::Journal;
use reserva_engine::limits::SHARD_COUNT;
use reserva_engine::shard::Shard;
use reserva_protocol::{CoreEndpoint, ShardMap};
use socket2::{Domain, Socket, Type};

use crate::config::{FsyncMode, ServerConfig};
use crate::core::{Control, Core, Forwarded, SharedMap, shutdown_requested};
use crate::layout::{journal_root, shard_config, shard_dir};
use crate::limits::{
    CONNECTIONS_PER_CORE_MAX, CONTROL_QUEUE_MAX, EFFECT_SWEEP_INTERVAL, FORWARD_QUEUE_MAX,
    SHUTDOWN_POLL, SYNC_THREADS_PER_CORE, TICK_INTERVAL,
};
use crate::metrics::{self, GAUGE_PUBLISH_INTERVAL};

/// Merges every core's commit journal (of any earlier core count and shard
/// placement) into the shards' own logs before any core opens a shard.
fn recover_journals(config: &ServerConfig) -> anyhow::Result<()> {
    config
        .journal
        .validate()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let data = config.data_dir.clone();
    let report = reserva_engine::journal::recover(
        &journal_root(&data),
        &|s| shard_dir(&data, s),
        &shard_config(config).log,
    )
    .map_err(|e| anyhow::anyhow!("cannot recover the commit journal: {e}"))?;
    if report.journals > 0 {
        tracing::info!(
            journals = report.journals,
            frames = report.frames,
            records = report.entries,
            appended = report.applied,
            shards = report.shards.len(),
            torn_tails = report.torn.len(),
            "commit journals recovered into the shard logs"
        );
    }
    Ok(())
}

/// Binds `addr` with SO_REUSEPORT (and without listening) to hold the port,
/// resolving port 0; the executors then bind the same address.
fn reserve_port(addr: SocketAddr) -> anyhow::Result<(Socket, SocketAddr)> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot bind {addr}"))?;
    let bound = socket
        .local_addr()?
        .as_socket()
        .context("bound address is not an IP socket address")?;
    Ok((socket, bound))
}

/// Called once every shard is recovered, with the node's listen address,
/// before the ready line is printed; returns text appended to the ready line
/// (` name=value` fields), or an error that stops the node.
pub type ReadyHook = Box<dyn FnOnce(SocketAddr) -> Result<String, String> + Send>;

/// Runs a node until it is told to stop. Returns once everything is durable.
pub fn run(config: ServerConfig) -> anyhow::Result<()> {
    run_with(config, None)
}

/// [`run`], calling `on_ready` once the node is ready.
pub fn run_with(config: ServerConfig, on_ready: Option<ReadyHook>) -> anyhow::Result<()> {
    if config.auth.is_none() && !config.listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {} without --auth-file: without API keys reserva serves loopback only \
             (use --listen 127.0.0.1:PORT, or give --auth-file FILE)",
            config.listen
        );
    }
    if let Some(admin) = config.admin
        && config.auth.is_none()
        && !admin.ip().is_loopback()
    {
        bail!(
            "refusing to serve the admin API on {admin} without --auth-file: without API keys it is served on loopback only \
             (use --admin 127.0.0.1:PORT, or give --auth-file FILE with an admin key)"
        );
    }
    if config.cores == 0 || config.cores > SHARD_COUNT {
        bail!("--cores must be in 1..={SHARD_COUNT}");
    }
    std::fs::create_dir_all(config.data_dir.join("shards"))
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    if config.auth.is_none() {
        tracing::warn!("no --auth-file: every client has full access; listening on loopback only");
    }
    let (main_socket, listen) = reserve_port(config.listen)?;
    let mut core_sockets = Vec::new();
    let mut cores = Vec::new();
    for core in 0..config.cores {
        let (s, addr) = reserve_port(SocketAddr::new(listen.ip(), 0))?;
        core_sockets.push(s);
        cores.push(CoreEndpoint {
            core,
            addr: addr.to_string(),
        });
    }
    // Shard moves of earlier runs hold (placement.rs).
    let placement = crate::placement::load(&config.data_dir, config.cores);
    let map: SharedMap = Arc::new(arc_swap::ArcSwap::from_pointee(ShardMap {
        version: placement.version,
        owners: placement.owners,
        cores,
    }));
    // Bound before the cores start, so a taken port fails start-up at once.
    let admin_listener = match config.admin {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot bind the admin address {addr}"))?,
        ),
        None => None,
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, shutdown.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, shutdown.clone())?;

    let config = Arc::new(ServerConfig { listen, ..config });
    let started = Instant::now();
    recover_journals(&config)?;
    let (inbox_tx, inbox_rx): (Vec<_>, Vec<_>) = (0..config.cores)
        .map(|_| flume::bounded::<Forwarded>(FORWARD_QUEUE_MAX))
        .unzip();
    let (control_tx, control_rx): (Vec<_>, Vec<_>) = (0..config.cores)
        .map(|_| flume::bounded::<Control>(CONTROL_QUEUE_MAX))
        .unzip();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<u16, String>>();
    let pins = Arc::new(crate::core::pins::Pins::new(usize::from(config.cores)));
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut handles = Vec::new();
    for ((core, inbox), control) in (0..config.cores).zip(inbox_rx).zip(control_rx) {
        let placement = if config.pin {
            Placement::Fixed(usize::from(core) % ncpu)
        } else {
            Placement::Unbound
        };
        let ctx = CoreContext {
            core,
            map: map.clone(),
            pins: pins.clone(),
            config: config.clone(),
            peers: inbox_tx.clone(),
            inbox,
            control,
            control_peers: control_tx.clone(),
            shutdown: shutdown.clone(),
            ready: ready_tx.clone(),
        };
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("core-{core}"))
            .io_memory(config.io_memory_bytes)
            .blocking_thread_pool_placement(PoolPlacement::Unbound(SYNC_THREADS_PER_CORE))
            .spawn(move || run_core(ctx))
            .map_err(|e| anyhow::anyhow!(executor_help(&e.to_string())))?;
        handles.push(handle);
    }
    drop(ready_tx);
    drop(inbox_tx);
    for _ in 0..config.cores {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
                join_all(handles);
                bail!(e);
            }
            Err(_) => {
                // An executor died before reporting: usually io_uring or locked memory.
                let errors = join_all(handles);
                bail!(executor_help(&errors.join("; ")));
            }
        }
    }
    drop(core_sockets);
    drop(main_socket);
    if shutdown_requested(&shutdown) {
        let failed = join_all(handles);
        if !failed.is_empty() {
            bail!("stopped during start-up: {}", failed.join("; "));
        }
        return Ok(());
    }
    let recovery = started.elapsed();
    metrics::global().started(config.cores, recovery, 1);
    let admin = match admin_listener {
        Some(listener) => Some(crate::admin::start(
            listener,
            crate::admin::AdminContext {
                map: map.clone(),
                control: control_tx.clone(),
                config: config.clone(),
            },
        )?),
        None => None,
    };
    drop(control_tx);
    let admin_addr = admin
        .as_ref()
        .map_or_else(|| "off".to_string(), |a| a.addr.to_string());
    let extra = match on_ready.map(|hook| hook(listen)) {
        None => String::new(),
        Some(Ok(fields)) => fields,
        Some(Err(e)) => {
            shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
            join_all(handles);
            bail!(e);
        }
    };
    let current = map.load();
    let addrs: Vec<&str> = current.cores.iter().map(|c| c.addr.as_str()).collect();
    tracing::info!(%listen, admin = %admin_addr, cores = config.cores, recovery_ms = recovery.as_millis() as u64, "ready");
    // Machine-readable start-up line (tests and scripts wait for it).
    println!(
        "reserva-server ready listen={listen} cores={} core_addrs={} fsync={:?} admin={admin_addr}{extra}",
        config.cores,
        addrs.join(","),
        config.fsync
    );
    drop(current);
    let failed = join_all(handles);
    if let Some(admin) = admin {
        admin.stop();
    }
    if !failed.is_empty() {
        bail!("{} executor(s) failed: {}", failed.len(), failed.join("; "));
    }
    tracing::info!("stopped; all shards durable");
    Ok(())
}

/// Waits for every executor; the errors of those that failed.
fn join_all(handles: Vec<glommio::ExecutorJoinHandle<Result<(), String>>>) -> Vec<String> {
    let mut failed = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(e),
            Err(e) => failed.push(e.to_string()),
        }
    }
    failed
}

fn executor_help(error: &str) -> String {
    format!(
        "cannot start an executor: {error}. reserva needs io_uring and locked memory: allow io_uring \
         (sysctl kernel.io_uring_disabled=0; containers may need a seccomp profile that permits it) and raise \
         the locked-memory limit (`ulimit -l` at least 512 KiB; raise it if start-up still fails; LimitMEMLOCK= in systemd), \
         or lower --io-memory-kib"
    )
}

struct CoreContext {
    core: u16,
    map: SharedMap,
    pins: Arc<crate::core::pins::Pins>,
    config: Arc<ServerConfig>,
    peers: Vec<flume::Sender<Forwarded>>,
    inbox: flume::Receiver<Forwarded>,
    control: flume::Receiver<Control>,
    control_peers: Vec<flume::Sender<Control>>,
    shutdown: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<Result<u16, String>>,
}

async fn run_core(ctx: CoreContext) -> Result<(), String> {
    let core_id = ctx.core;
    let shards = match open_shards(&ctx) {
        Ok(s) => s,
        Err(e) => {
            let _ = ctx.ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    let listeners = match bind(&ctx) {
        Ok(l) => l,
        Err(e) => {
            let _ = ctx.ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    let journal = match open_journal(&ctx) {
        Ok(j) => j,
        Err(e) => {
            let _ = ctx.ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    let core = Core::new(
        core_id,
        shards,
        ctx.map,
        ctx.config.clone(),
        ctx.peers,
        journal,
        ctx.pins.clone(),
    );
    crate::saga::install(&core, ctx.config.checkout.clone());
    let committer = glommio::spawn_local(core.clone().run_committer());
    glommio::spawn_local(core.clone().run_checkpointer()).detach();
    glommio::spawn_local(core.clone().run_inbox(ctx.inbox)).detach();
    glommio::spawn_local(core.clone().run_control(ctx.control, ctx.control_peers)).detach();
    let connections = Rc::new(std::cell::Cell::new(0usize));
    // The first listener is the node's shared address, the second the core's own.
    for (i, listener) in listeners.into_iter().enumerate() {
        let own_port = i == 1;
        glommio::spawn_local(accept_loop(
            core.clone(),
            listener,
            connections.clone(),
            own_port,
        ))
        .detach();
    }
    crate::saga::resume(&core);
    core.pins.core_ready();
    glommio::spawn_local(crate::saga::sweep(core.clone(), EFFECT_SWEEP_INTERVAL)).detach();
    core.publish_gauges();
    let _ = ctx.ready.send(Ok(core_id));
    let mut last_sync = Instant::now();
    let mut last_tick = Instant::now();
    let mut last_gauges = Instant::now();
    while !shutdown_requested(&ctx.shutdown) {
        let poll = match ctx.config.fsync {
            FsyncMode::Interval(every) => every.min(SHUTDOWN_POLL),
            _ => SHUTDOWN_POLL,
        };
        glommio::timer::sleep(poll.min(TICK_INTERVAL)).await;
        if last_tick.elapsed() >= TICK_INTERVAL {
            core.queue_ticks();
            last_tick = Instant::now();
        }
        if last_gauges.elapsed() >= GAUGE_PUBLISH_INTERVAL {
            core.publish_gauges();
            last_gauges = Instant::now();
        }
        if let FsyncMode::Interval(every) = ctx.config.fsync
            && last_sync.elapsed() >= every
        {
            core.sync_journal().await;
            last_sync = Instant::now();
        }
    }
    tracing::info!(
        core = core_id,
        "stopping: answering queued requests and making them durable"
    );
    core.stop();
    committer.await;
    core.sync_dirty().await;
    let poisoned = core.poisoned_shards();
    if !poisoned.is_empty() {
        return Err(format!(
            "core {core_id}: shards {poisoned:?} are poisoned; their last answers may not be durable"
        ));
    }
    // Give answer tasks a moment to write what was committed.
    glommio::timer::sleep(Duration::from_millis(50)).await;
    Ok(())
}

/// The core's commit journal, fresh (what an earlier run left was recovered
/// by `recover_journals`); none under `--fsync never`.
fn open_journal(ctx: &CoreContext) -> Result<Option<Journal>, String> {
    if ctx.config.fsync == FsyncMode::Never {
        return Ok(None);
    }
    let dir = reserva_engine::journal::core_dir(&journal_root(&ctx.config.data_dir), ctx.core);
    Journal::create(&dir, ctx.core, ctx.config.journal.clone())
        .map(Some)
        .map_err(|e| {
            format!(
                "core {}: cannot create the commit journal in {}: {e}",
                ctx.core,
                dir.display()
            )
        })
}

fn open_shards(ctx: &CoreContext) -> Result<Vec<Shard>, String> {
    let started = Instant::now();
    let mut shards = Vec::new();
    let mut replayed = 0u64;
    let cfg = shard_config(&ctx.config);
    let map = ctx.map.load();
    for shard in (0..SHARD_COUNT).filter(|s| map.owner_of(*s) == Some(ctx.core)) {
        let dir = shard_dir(&ctx.config.data_dir, shard);
        let (s, report) = Shard::open(&dir, shard, cfg.clone()).map_err(|e| {
            format!(
                "core {}: cannot recover shard {shard} in {}: {e}",
                ctx.core,
                dir.display()
            )
        })?;
        if let Some(cut) = &report.tail_cut {
            tracing::warn!(shard, segment = %cut.segment.display(), offset = cut.offset, reason = %cut.reason, "cut a torn log tail");
        }
        replayed += report.records_replayed;
        shards.push(s);
    }
    tracing::info!(
        core = ctx.core,
        shards = shards.len(),
        records_replayed = replayed,
        ms = started.elapsed().as_millis() as u64,
        "shards recovered"
    );
    Ok(shards)
}

fn bind(ctx: &CoreContext) -> Result<Vec<TcpListener>, String> {
    let own = ctx
        .map
        .load()
        .endpoint(ctx.core)
        .ok_or_else(|| format!("core {} missing from the shard map", ctx.core))?
        .addr
        .clone();
    let mut out = Vec::new();
    for addr in [ctx.config.listen.to_string(), own] {
        let l = TcpListener::bind(addr.as_str())
            .map_err(|e| format!("core {}: cannot listen on {addr}: {e}", ctx.core))?;
        out.push(l);
    }
    Ok(out)
}

async fn accept_loop(
    core: Rc<Core>,
    listener: TcpListener,
    connections: Rc<std::cell::Cell<usize>>,
    own_port: bool,
) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(core = core.id, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if core.is_stopping() {
            return;
        }
        if connections.get() >= CONNECTIONS_PER_CORE_MAX {
            tracing::warn!(
                core = core.id,
                "CONNECTIONS_PER_CORE_MAX reached; closing a new connection"
            );
            drop(stream);
            continue;
        }
        connections.set(connections.get() + 1);
        let (c, n) = (core.clone(), connections.clone());
        glommio::spawn_local(async move {
            crate::conn::serve(c, stream, own_port).await;
            n.set(n.get() - 1);
        })
        .detach();
    }
}

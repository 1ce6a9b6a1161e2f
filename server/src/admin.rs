//! The admin API: gRPC (`admin-proto/proto/admin.proto`) and Prometheus
//! `/metrics` on one listener (`--admin`), served by tonic on a small tokio
//! runtime in a thread of its own, beside the glommio executors.
//!
//! It never touches a shard: it reads the process-wide [`metrics`], the
//! shared shard map, and asks cores through their bounded control inboxes
//! ([`Control`]); the cores do the work on their own threads. One shard move
//! runs at a time. A sampler task keeps recent per-shard operation counts
//! and per-core journal counters (for ops/s, barriers/s and journal bytes/s)
//! and turns the latency windows over.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_channel::oneshot;
use reserva_admin_proto::admin::admin_server::{Admin, AdminServer};
use reserva_admin_proto::admin::{
    CompactReply, CompactRequest, CoreStatus, HotSku, JournalStats, MoveShardReply,
    MoveShardRequest, PlannedMove, RebalanceReply, RebalanceRequest, ShardInfo, ShardResult,
    ShardsReply, ShardsRequest, SnapshotReply, SnapshotRequest, StatusReply, StatusRequest, Totals,
};
use reserva_engine::ids::ShardId;
use reserva_engine::limits::SHARD_COUNT;
use tonic::{Request, Response, Status};

use crate::auth::{AuthTable, Role};
use crate::config::{FsyncMode, ServerConfig};
use crate::core::{Control, HotSkus, ShardOutcome, SharedMap};
use crate::limits::{
    ADMIN_CONCURRENCY_MAX, ADMIN_CORE_TIMEOUT, ADMIN_SHUTDOWN_GRACE, RATE_SAMPLE_INTERVAL,
    RATE_SAMPLES, REBALANCE_MOVES_MAX, REBALANCE_TOLERANCE,
};
use crate::metrics::{self, JournalTotals, LATENCY_WINDOW};

/// What the admin API needs from the node.
pub struct AdminContext {
    pub map: SharedMap,
    /// Every core's control inbox (index = core).
    pub control: Vec<flume::Sender<Control>>,
    pub config: Arc<ServerConfig>,
}

/// The running admin server.
pub struct AdminHandle {
    /// The bound address (port 0 resolved).
    pub addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl AdminHandle {
    /// Stops serving and waits for the thread.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        if self.thread.join().is_err() {
            tracing::error!("admin thread panicked");
        }
    }
}

/// Serves the admin API on `listener` from a new thread.
pub fn start(listener: std::net::TcpListener, ctx: AdminContext) -> anyhow::Result<AdminHandle> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || runtime.block_on(serve(listener, ctx, stopped)))?;
    Ok(AdminHandle { addr, stop, thread })
}

async fn serve(
    listener: std::net::TcpListener,
    ctx: AdminContext,
    stopped: tokio::sync::watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin API cannot listen");
            return;
        }
    };
    let auth = ctx.config.auth.clone().map(Arc::new);
    let state = Arc::new(State {
        rates: Mutex::new(VecDeque::from([Sample::now(ctx.config.cores)])),
        moving: tokio::sync::Mutex::new(()),
        ctx,
    });
    tokio::spawn(sampler(state.clone()));
    let grpc_auth = auth.clone();
    let service = AdminServer::with_interceptor(Service { state }, move |req: Request<()>| {
        let header = req
            .metadata()
            .get(reserva_admin_proto::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        check_admin(grpc_auth.as_deref(), header)?;
        Ok(req)
    });
    let router = tonic::service::Routes::new(service)
        .prepare()
        .into_axum_router()
        .route(
            "/metrics",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let auth = auth.clone();
                async move { metrics_page(auth.as_deref(), &headers) }
            }),
        );
    let mut graceful = stopped.clone();
    let serving = tonic::transport::Server::builder()
        .accept_http1(true)
        .concurrency_limit_per_connection(ADMIN_CONCURRENCY_MAX)
        .add_routes(tonic::service::Routes::from(router))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async move {
                let _ = graceful.wait_for(|stop| *stop).await;
            },
        );
    // Calls still running (a `top` left open) get ADMIN_SHUTDOWN_GRACE to
    // finish; then the runtime is dropped and they are cut.
    let mut hard = stopped;
    let deadline = async move {
        let _ = hard.wait_for(|stop| *stop).await;
        tokio::time::sleep(ADMIN_SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        result = serving => {
            if let Err(e) = result {
                tracing::error!(error = %e, "admin API stopped");
            }
        }
        () = deadline => tracing::warn!("admin API: calls still open at shutdown were cut"),
    }
}

/// `GET /metrics`: the Prometheus text, behind the admin credential when
/// the node has an auth file.
fn metrics_page(
    auth: Option<&AuthTable>,
    headers: &axum::http::HeaderMap,
) -> (
    axum::http::StatusCode,
    [(&'static str, &'static str); 1],
    String,
) {
    let header = headers
        .get(reserva_admin_proto::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match check_admin(auth, header) {
        Ok(()) => (
            axum::http::StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            metrics::render(),
        ),
        Err(status) => (
            if status.code() == tonic::Code::PermissionDenied {
                axum::http::StatusCode::FORBIDDEN
            } else {
                axum::http::StatusCode::UNAUTHORIZED
            },
            [("content-type", "text/plain; charset=utf-8")],
            format!("{}\n", status.message()),
        ),
    }
}

/// Without an auth file anyone who reaches the (loopback) address is
/// admitted; with one, `Bearer TOKEN` must name an admin key.
fn check_admin(auth: Option<&AuthTable>, header: Option<&str>) -> Result<(), Status> {
    let Some(table) = auth else {
        return Ok(());
    };
    let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return Err(Status::unauthenticated(
            "the admin API needs `authorization: Bearer TOKEN` with an admin key of the auth file",
        ));
    };
    match table.lookup(token.trim()) {
        None => Err(Status::unauthenticated("unknown token")),
        Some(p) if p.role != Role::Admin => Err(Status::permission_denied(
            "the admin API needs a key with role admin",
        )),
        Some(_) => Ok(()),
    }
}

/// Per-shard operation counts and per-core journal counters at one moment.
struct Sample {
    at: Instant,
    ops: Vec<u64>,
    /// Index = core.
    journals: Vec<JournalTotals>,
}

impl Sample {
    fn now(cores: u16) -> Self {
        let m = metrics::global();
        Sample {
            at: Instant::now(),
            ops: (0..SHARD_COUNT).map(|s| m.shard(s).ops).collect(),
            journals: (0..cores).map(|c| m.journal_totals(c)).collect(),
        }
    }
}

/// Rates over the sampling window, up to now.
struct Rates {
    /// Ops/s per shard.
    ops: Vec<f64>,
    /// Per core: the journal counters now, barriers/s and bytes/s.
    journals: Vec<(JournalTotals, f64, f64)>,
    /// The window's width.
    window_ms: u64,
}

/// `(now - then) / secs`, 0 for an empty window.
fn per_sec(now: u64, then: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        now.saturating_sub(then) as f64 / secs
    } else {
        0.0
    }
}

/// One core's journal figures for the admin API.
fn journal_stats(
    core: u16,
    t: JournalTotals,
    barriers_per_sec: f64,
    bytes_per_sec: f64,
) -> JournalStats {
    JournalStats {
        core: u32::from(core),
        frames: t.frames,
        records: t.records,
        bytes: t.bytes,
        barriers: t.barriers,
        records_per_barrier: if t.barriers == 0 {
            0.0
        } else {
            t.records as f64 / t.barriers as f64
        },
        barriers_per_sec,
        bytes_per_sec,
        full: t.full,
        checkpoints: t.checkpoints,
    }
}

struct State {
    ctx: AdminContext,
    /// The last `RATE_SAMPLES` samples, oldest first.
    rates: Mutex<VecDeque<Sample>>,
    /// Held for the whole of a shard move or rebalance: one at a time.
    moving: tokio::sync::Mutex<()>,
}

/// Samples operation counts and turns the latency windows over.
async fn sampler(state: Arc<State>) {
    let mut tick = tokio::time::interval(RATE_SAMPLE_INTERVAL);
    let mut last_flip = Instant::now();
    loop {
        tick.tick().await;
        {
            let mut rates = state.rates.lock().unwrap_or_else(|p| p.into_inner());
            rates.push_back(Sample::now(state.cores()));
            while rates.len() > RATE_SAMPLES {
                rates.pop_front();
            }
        }
        if last_flip.elapsed() >= LATENCY_WINDOW {
            metrics::global().flip_window();
            last_flip = Instant::now();
        }
    }
}

impl State {
    /// Ops/s per shard and journal rates per core over the sampling window
    /// (up to now), and its width in ms.
    fn rates(&self) -> Rates {
        let now = Sample::now(self.cores());
        let rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let (secs, oldest) = match rates.front() {
            Some(o) => (now.at.duration_since(o.at).as_secs_f64(), o),
            None => (0.0, &now),
        };
        let ops = now
            .ops
            .iter()
            .zip(&oldest.ops)
            .map(|(n, o)| per_sec(*n, *o, secs))
            .collect();
        let journals = now
            .journals
            .iter()
            .enumerate()
            .map(|(core, n)| {
                let o = oldest.journals.get(core).copied().unwrap_or_default();
                (
                    *n,
                    per_sec(n.barriers, o.barriers, secs),
                    per_sec(n.bytes, o.bytes, secs),
                )
            })
            .collect();
        Rates {
            ops,
            journals,
            window_ms: (secs * 1000.0) as u64,
        }
    }

    /// Every core's journal figures (index = core).
    fn journals(rates: &Rates) -> Vec<JournalStats> {
        rates
            .journals
            .iter()
            .enumerate()
            .map(|(core, (t, barriers, bytes))| journal_stats(core as u16, *t, *barriers, *bytes))
            .collect()
    }

    fn cores(&self) -> u16 {
        self.ctx.config.cores
    }

    /// Sends a control message to `core` and waits for its answer.
    async fn ask<T>(
        &self,
        core: u16,
        make: impl FnOnce(oneshot::Sender<T>) -> Control,
    ) -> Result<T, Status> {
        let Some(inbox) = self.ctx.control.get(usize::from(core)) else {
            return Err(Status::invalid_argument(format!(
                "core {core} does not exist"
            )));
        };
        let (tx, rx) = oneshot::channel();
        let exchange = async {
            inbox
                .send_async(make(tx))
                .await
                .map_err(|_| Status::unavailable(format!("core {core} is stopping")))?;
            rx.await
                .map_err(|_| Status::unavailable(format!("core {core} stopped before answering")))
        };
        tokio::time::timeout(ADMIN_CORE_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "core {core} did not answer within {ADMIN_CORE_TIMEOUT:?}"
                ))
            })?
    }

    /// Fresh gauges from every core, and the hot SKUs of every shard.
    async fn collect(&self) -> Result<BTreeMap<ShardId, HotSkus>, Status> {
        let mut hot = BTreeMap::new();
        for core in 0..self.cores() {
            let got = self.ask(core, |reply| Control::Collect { reply }).await?;
            hot.extend(got);
        }
        Ok(hot)
    }

    /// Moves one shard; the reply, or why not.
    async fn move_shard(&self, shard: u32, to: u32) -> Result<MoveShardReply, Status> {
        let shard = shard_arg(shard)?;
        let to = u16::try_from(to)
            .ok()
            .filter(|c| *c < self.cores())
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "core {to} does not exist (the node has cores 0..{})",
                    self.cores()
                ))
            })?;
        let from = self
            .ctx
            .map
            .load()
            .owner_of(shard)
            .ok_or_else(|| Status::internal(format!("shard {shard} has no owner")))?;
        if from == to {
            return Err(Status::failed_precondition(format!(
                "shard {shard} is already on core {to}"
            )));
        }
        let done = self
            .ask(from, |reply| Control::MoveOut { shard, to, reply })
            .await?
            .map_err(Status::failed_precondition)?;
        Ok(MoveShardReply {
            shard: u32::from(shard),
            from_core: u32::from(done.from),
            to_core: u32::from(done.to),
            map_version: done.map_version,
            handed_over: done.handed_over,
            paused_us: done.paused_us,
        })
    }

    /// Snapshots (or compacts) `shards` on their owning cores.
    async fn snapshot(
        &self,
        shards: Vec<ShardId>,
        compact: bool,
    ) -> Result<Vec<ShardResult>, Status> {
        let map = self.ctx.map.load_full();
        let mut by_core: BTreeMap<u16, Vec<ShardId>> = BTreeMap::new();
        for s in shards {
            by_core
                .entry(map.owner_of(s).unwrap_or(0))
                .or_default()
                .push(s);
        }
        let mut out: Vec<ShardOutcome> = Vec::new();
        for (core, shards) in by_core {
            let got = self
                .ask(core, |reply| Control::Snapshot {
                    shards,
                    compact,
                    reply,
                })
                .await?;
            out.extend(got);
        }
        out.sort_by_key(|o| o.shard);
        Ok(out
            .into_iter()
            .map(|o| ShardResult {
                shard: u32::from(o.shard),
                lsn: o.lsn,
                log_bytes_before: o.log_bytes_before,
                log_bytes_after: o.log_bytes_after,
                error: o.error.unwrap_or_default(),
            })
            .collect())
    }
}

fn shard_arg(shard: u32) -> Result<ShardId, Status> {
    u16::try_from(shard)
        .ok()
        .filter(|s| *s < SHARD_COUNT)
        .ok_or_else(|| {
            Status::invalid_argument(format!("shard {shard} does not exist (0..{SHARD_COUNT})"))
        })
}

fn shard_list(shards: &[u32]) -> Result<Vec<ShardId>, Status> {
    let mut v = shards
        .iter()
        .map(|s| shard_arg(*s))
        .collect::<Result<Vec<_>, _>>()?;
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

fn fsync_name(mode: FsyncMode) -> String {
    match mode {
        FsyncMode::Always => "always".into(),
        FsyncMode::Interval(d) => format!("interval:{}", d.as_millis()),
        FsyncMode::Never => "never".into(),
    }
}

/// A move `rebalance` proposes.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub shard: ShardId,
    pub from: u16,
    pub to: u16,
    pub ops_per_sec: f64,
}

/// Greedy rebalancing by measured load: while the busiest and the idlest
/// core differ by more than `REBALANCE_TOLERANCE` of the mean, move the
/// busiest core's shard whose load is closest to half the difference (a
/// shard carrying the whole difference or more would only swap the roles).
/// Returns the moves and the per-core loads after them.
pub fn plan_rebalance(rates: &[f64], owners: &[u16], cores: u16) -> (Vec<Planned>, Vec<f64>) {
    let mut owners = owners.to_vec();
    let mut load = vec![0.0; usize::from(cores)];
    for (shard, owner) in owners.iter().enumerate() {
        if let Some(l) = load.get_mut(usize::from(*owner)) {
            *l += rates.get(shard).copied().unwrap_or(0.0);
        }
    }
    let mut moves = Vec::new();
    if cores < 2 {
        return (moves, load);
    }
    let mean = load.iter().sum::<f64>() / f64::from(cores);
    while moves.len() < REBALANCE_MOVES_MAX {
        let (hi, lo) = busiest_and_idlest(&load);
        let gap = load[hi] - load[lo];
        if gap <= (mean * REBALANCE_TOLERANCE).max(1.0) {
            break;
        }
        let candidate = owners
            .iter()
            .enumerate()
            .filter(|(_, o)| usize::from(**o) == hi)
            .map(|(s, _)| (s, rates.get(s).copied().unwrap_or(0.0)))
            .filter(|(_, r)| *r > 0.0 && *r < gap)
            .min_by(|a, b| (a.1 - gap / 2.0).abs().total_cmp(&(b.1 - gap / 2.0).abs()));
        let Some((shard, rate)) = candidate else {
            break;
        };
        owners[shard] = lo as u16;
        load[hi] -= rate;
        load[lo] += rate;
        moves.push(Planned {
            shard: shard as ShardId,
            from: hi as u16,
            to: lo as u16,
            ops_per_sec: rate,
        });
    }
    (moves, load)
}

fn busiest_and_idlest(load: &[f64]) -> (usize, usize) {
    let mut hi = 0;
    let mut lo = 0;
    for (i, l) in load.iter().enumerate() {
        if *l > load[hi] {
            hi = i;
        }
        if *l < load[lo] {
            lo = i;
        }
    }
    (hi, lo)
}

struct Service {
    state: Arc<State>,
}

#[tonic::async_trait]
impl Admin for Service {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let st = &self.state;
        st.collect().await?;
        let m = metrics::global();
        let map = st.ctx.map.load_full();
        let rates = st.rates();
        let journals = State::journals(&rates);
        let mut cores: Vec<CoreStatus> =
            map.cores
                .iter()
                .map(|c| CoreStatus {
                    core: u32::from(c.core),
                    addr: c.addr.clone(),
                    shards: 0,
                    ops_per_sec: 0.0,
                    queue_depth: 0,
                    journal: Some(journals.get(usize::from(c.core)).copied().unwrap_or_else(
                        || journal_stats(c.core, JournalTotals::default(), 0.0, 0.0),
                    )),
                })
                .collect();
        for (shard, owner) in map.owners.iter().enumerate() {
            if let Some(c) = cores.get_mut(usize::from(*owner)) {
                c.shards += 1;
                c.ops_per_sec += rates.ops.get(shard).copied().unwrap_or(0.0);
                c.queue_depth += m.shard(shard as ShardId).gauges.queue_depth;
            }
        }
        let t = m.totals();
        let cfg = &st.ctx.config;
        Ok(Response::new(StatusReply {
            node_id: "node-0".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_ms: m.uptime().as_millis() as u64,
            recovery_ms: m.recovery_ms(),
            fsync: fsync_name(cfg.fsync),
            listen: cfg.listen.to_string(),
            data_dir: cfg.data_dir.display().to_string(),
            shard_map_version: map.version,
            cores,
            totals: Some(Totals {
                ops: t.ops,
                errors: t.errors,
                shed: t.shed,
                log_bytes: t.log_bytes,
                reservations_live: t.reservations_live,
                reservations_expired: t.reservations_expired,
                skus: t.skus,
                orders: t.orders,
                poisoned_shards: t.poisoned_shards,
                shard_moves: t.shard_moves,
            }),
            window_ms: rates.window_ms,
        }))
    }

    async fn shards(&self, _: Request<ShardsRequest>) -> Result<Response<ShardsReply>, Status> {
        let st = &self.state;
        let mut hot = st.collect().await?;
        let m = metrics::global();
        let map = st.ctx.map.load_full();
        let rates = st.rates();
        let shards = (0..SHARD_COUNT)
            .map(|s| {
                let sample = m.shard(s);
                let g = sample.gauges;
                ShardInfo {
                    shard: u32::from(s),
                    core: u32::from(map.owner_of(s).unwrap_or(sample.core)),
                    ops_per_sec: rates.ops.get(usize::from(s)).copied().unwrap_or(0.0),
                    queue_depth: g.queue_depth.min(u64::from(u32::MAX)) as u32,
                    p99_apply_us: m.p99_us(s, 0),
                    p99_commit_us: m.p99_us(s, 1),
                    log_bytes: g.log_bytes,
                    lsn: g.lsn,
                    durable_lsn: g.durable_lsn,
                    last_snapshot_lsn: g.last_snapshot_lsn,
                    records_since_snapshot: g.records_since_snapshot,
                    reservations_live: g.reservations_live,
                    skus: g.skus,
                    orders: g.orders,
                    ops_total: sample.ops,
                    errors_total: sample.errors,
                    poisoned: g.poisoned,
                    hot_skus: hot
                        .remove(&s)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(sku, hits)| HotSku { sku, hits })
                        .collect(),
                }
            })
            .collect();
        Ok(Response::new(ShardsReply {
            shards,
            window_ms: rates.window_ms,
            journals: State::journals(&rates),
        }))
    }

    async fn move_shard(
        &self,
        req: Request<MoveShardRequest>,
    ) -> Result<Response<MoveShardReply>, Status> {
        let r = req.into_inner();
        let _one_at_a_time = self.state.moving.lock().await;
        self.state
            .move_shard(r.shard, r.core)
            .await
            .map(Response::new)
    }

    async fn rebalance(
        &self,
        req: Request<RebalanceRequest>,
    ) -> Result<Response<RebalanceReply>, Status> {
        let st = &self.state;
        let _one_at_a_time = st.moving.lock().await;
        let map = st.ctx.map.load_full();
        let rates = st.rates().ops;
        let (moves, after) = plan_rebalance(&rates, &map.owners, st.cores());
        let mut before = vec![0.0; usize::from(st.cores())];
        for (shard, owner) in map.owners.iter().enumerate() {
            if let Some(l) = before.get_mut(usize::from(*owner)) {
                *l += rates[shard];
            }
        }
        let mut version = map.version;
        let dry_run = req.into_inner().dry_run;
        if !dry_run {
            for (i, mv) in moves.iter().enumerate() {
                match st.move_shard(u32::from(mv.shard), u32::from(mv.to)).await {
                    Ok(done) => version = done.map_version,
                    Err(e) => {
                        return Err(Status::aborted(format!(
                            "rebalance stopped after {i} of {} moves: moving shard {} to core {} failed: {}",
                            moves.len(),
                            mv.shard,
                            mv.to,
                            e.message()
                        )));
                    }
                }
            }
        }
        Ok(Response::new(RebalanceReply {
            moves: moves
                .iter()
                .map(|p| PlannedMove {
                    shard: u32::from(p.shard),
                    from_core: u32::from(p.from),
                    to_core: u32::from(p.to),
                    ops_per_sec: p.ops_per_sec,
                })
                .collect(),
            applied: !dry_run && !moves.is_empty(),
            load_before: before,
            load_after: after,
            map_version: version,
        }))
    }

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotReply>, Status> {
        let r = req.into_inner();
        let shards = if r.all {
            if !r.shards.is_empty() {
                return Err(Status::invalid_argument("give shards or all, not both"));
            }
            (0..SHARD_COUNT).collect()
        } else {
            if r.shards.is_empty() {
                return Err(Status::invalid_argument("name at least one shard, or all"));
            }
            shard_list(&r.shards)?
        };
        let results = self.state.snapshot(shards, false).await?;
        Ok(Response::new(SnapshotReply { results }))
    }

    async fn compact(
        &self,
        req: Request<CompactRequest>,
    ) -> Result<Response<CompactReply>, Status> {
        let r = req.into_inner();
        let shards = if r.shards.is_empty() {
            (0..SHARD_COUNT).collect()
        } else {
            shard_list(&r.shards)?
        };
        let results = self.state.snapshot(shards, true).await?;
        Ok(Response::new(CompactReply { results }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebalance_moves_load_from_the_hot_core_and_stops_when_even() {
        // Two cores; core 0 carries one very hot shard and some warm ones.
        let mut rates = vec![0.0; 256];
        let owners: Vec<u16> = (0..256).map(|s| (s % 2) as u16).collect();
        rates[0] = 1000.0;
        rates[2] = 400.0;
        rates[4] = 300.0;
        rates[1] = 100.0;
        let (moves, after) = plan_rebalance(&rates, &owners, 2);
        assert_eq!((moves[0].from, moves[0].to), (0, 1), "{moves:?}");
        // 1700 vs 100 before; the best reachable split is 800 vs 1000.
        assert_eq!(after.iter().sum::<f64>(), 1800.0);
        assert!(
            (after[0] - after[1]).abs() <= 200.0,
            "{after:?} after {moves:?}"
        );
        assert!(moves.len() <= REBALANCE_MOVES_MAX);
        // Already even: nothing to do.
        let (none, _) = plan_rebalance(&vec![10.0; 256], &owners, 2);
        assert!(none.is_empty());
        // One core: nothing to do.
        let (none, _) = plan_rebalance(&rates, &vec![0; 256], 1);
        assert!(none.is_empty());
    }

    #[test]
    fn admin_credentials_are_checked() {
        let table = AuthTable::parse(
            "[[keys]]\ntoken = \"admin-token-1\"\nrole = \"admin\"\n[[keys]]\ntoken = \"seller-token-1\"\nrole = \"seller\"\nseller_id = \"s\"\n",
        )
        .unwrap();
        assert!(check_admin(None, None).is_ok());
        assert!(check_admin(Some(&table), Some("Bearer admin-token-1")).is_ok());
        assert_eq!(
            check_admin(Some(&table), None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            check_admin(Some(&table), Some("Bearer nope-nope-nope"))
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            check_admin(Some(&table), Some("Bearer seller-token-1"))
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
    }
}

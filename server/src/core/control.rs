//! Admin work on a core: gauges and hot SKUs for the admin API, snapshots and
//! compaction on demand, and live shard moves between cores.
//!
//! The admin API (another thread) sends [`Control`] messages to a core's
//! bounded control inbox. Reads ([`Control::Collect`]) and the receiving half
//! of a move ([`Control::Adopt`]) are handled as they arrive; work that needs
//! a shard at a batch boundary (snapshot, compact, the sending half of a
//! move) is queued for the committer, which runs it between two group
//! commits, when no batch of the shard is applied but unanswered.
//!
//! A move of shard S from core A to core B:
//! 1. A (between rounds) takes S out of its slots, makes its log durable,
//!    snapshots it (so B opens it without a long replay) and closes it,
//!    which releases the directory's lock. Requests for S that reach A from
//!    now on wait in a bounded hand-over buffer.
//! 2. A sends `Adopt` with S's unapplied queue to B; B reopens S from its
//!    directory (recovery checks every record again) and queues the
//!    handed-over requests first.
//! 3. On B's answer A forwards the buffer to B's inbox and publishes the
//!    shard map with B as owner and the version bumped. Afterwards a
//!    shard-aware client still talking to A's own port is answered
//!    `WrongShard` (it refreshes its map and resends with the same
//!    idempotency key); anything forwarded to A by another core is passed on.
//!
//! If B cannot open S, it hands the queue back and A reopens S itself.
//!
//! No request is lost or answered twice: every request for S is in exactly
//! one place at a time (A's queue, the `Adopt` message, A's buffer, B's
//! inbox or B's queue), and applied requests were answered before step 1.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::Instant;

use futures_channel::oneshot;
use reserva_engine::ids::ShardId;
use reserva_engine::shard::Shard;
use reserva_engine::sm::Command;
use reserva_protocol::{Op, Query, WireError};

use super::{Core, Forwarded, Pending, Slot};
use crate::events::EventRing;
use crate::layout::{shard_config, shard_dir};
use crate::limits::{HOT_SKUS_REPORTED, HOT_SKUS_TRACKED, RETRY_AFTER_MS, SHARD_QUEUE_DEPTH_MAX};
use crate::metrics::{self, ShardGauges, Shed};

/// The most requested SKUs of one shard, hottest first, with their hits.
pub type HotSkus = Vec<(String, u64)>;

/// A snapshot or compaction result for one shard.
#[derive(Debug, Clone)]
pub struct ShardOutcome {
    pub shard: ShardId,
    /// LSN the snapshot covers (0: the shard holds no record yet).
    pub lsn: u64,
    pub log_bytes_before: u64,
    pub log_bytes_after: u64,
    pub error: Option<String>,
}

/// What a finished move reports.
#[derive(Debug, Clone)]
pub struct MoveDone {
    pub from: u16,
    pub to: u16,
    pub map_version: u64,
    /// Requests handed to the new owner unapplied.
    pub handed_over: u64,
    /// How long the shard accepted no new work, in µs.
    pub paused_us: u64,
}

/// Why the new owner refused a shard, and the requests it hands back.
type Refused = (String, VecDeque<Pending>, TopK);

/// A message to one core from the admin API (or, for `Adopt`, another core).
pub enum Control {
    /// Publish every owned shard's gauges; answer their hot SKUs.
    Collect {
        reply: oneshot::Sender<Vec<(ShardId, HotSkus)>>,
    },
    /// Snapshot (or, with `compact`, snapshot and prune) the listed shards this core owns.
    Snapshot {
        shards: Vec<ShardId>,
        compact: bool,
        reply: oneshot::Sender<Vec<ShardOutcome>>,
    },
    /// Move `shard` (owned by this core) to core `to`.
    MoveOut {
        shard: ShardId,
        to: u16,
        reply: oneshot::Sender<Result<MoveDone, String>>,
    },
    /// Take over `shard` from another core, with its unapplied requests.
    Adopt {
        shard: ShardId,
        queue: VecDeque<Pending>,
        hot: TopK,
        reply: oneshot::Sender<Result<(), Refused>>,
    },
}

/// A core's admin state.
#[derive(Default)]
pub(super) struct CoreAdmin {
    /// Jobs for the committer, run between group commits.
    jobs: RefCell<VecDeque<Control>>,
    /// Shards this core is handing over: requests that arrived meanwhile.
    moving_out: RefCell<BTreeMap<ShardId, VecDeque<Pending>>>,
    /// Every core's control inbox (index = core).
    peers: RefCell<Vec<flume::Sender<Control>>>,
}

impl CoreAdmin {
    /// Whether admin jobs wait for the committer.
    pub(super) fn has_jobs(&self) -> bool {
        !self.jobs.borrow().is_empty()
    }
}

/// Counts requests per SKU in a fixed number of slots ("space saving"): the
/// heaviest hitters stay, a newcomer takes the place of the lightest. Counts
/// halve at every latency window, so the list follows what is hot now.
#[derive(Debug, Default)]
pub struct TopK {
    entries: Vec<(String, u64)>,
    window: usize,
}

impl TopK {
    /// Counts the SKUs `op` names.
    pub(super) fn observe(&mut self, op: &Op) {
        match op {
            Op::Mutate(r) => match &r.command {
                Command::UpsertSku { sku, .. }
                | Command::SetStock { sku, .. }
                | Command::AdjustStock { sku, .. }
                | Command::Restock { sku, .. } => self.hit(sku),
                Command::Reserve { lines, .. } => {
                    for l in lines {
                        self.hit(&l.sku);
                    }
                }
                _ => {}
            },
            Op::Query(Query::GetSku { sku }) => self.hit(sku),
            Op::Query(_) => {}
        }
    }

    fn hit(&mut self, sku: &str) {
        let window = metrics::global().window();
        if window != self.window {
            self.window = window;
            for e in &mut self.entries {
                e.1 /= 2;
            }
            self.entries.retain(|e| e.1 > 0);
        }
        if let Some(e) = self.entries.iter_mut().find(|e| e.0 == sku) {
            e.1 += 1;
            return;
        }
        if self.entries.len() < HOT_SKUS_TRACKED {
            self.entries.push((sku.to_owned(), 1));
            return;
        }
        if let Some(lightest) = self.entries.iter_mut().min_by_key(|e| e.1) {
            *lightest = (sku.to_owned(), lightest.1 + 1);
        }
    }

    /// The hottest SKUs, hottest first.
    fn top(&self) -> HotSkus {
        let mut v = self.entries.clone();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(HOT_SKUS_REPORTED);
        v
    }
}

impl Core {
    /// Receives control messages until the node stops.
    pub async fn run_control(
        self: Rc<Self>,
        inbox: flume::Receiver<Control>,
        peers: Vec<flume::Sender<Control>>,
    ) {
        *self.admin.peers.borrow_mut() = peers;
        while let Ok(msg) = inbox.recv_async().await {
            match msg {
                Control::Collect { reply } => {
                    self.publish_gauges();
                    let hot = self
                        .slots
                        .borrow()
                        .iter()
                        .map(|(id, s)| (*id, s.hot.top()))
                        .collect();
                    let _ = reply.send(hot);
                }
                Control::Adopt {
                    shard,
                    queue,
                    hot,
                    reply,
                } => {
                    let _ = reply.send(self.adopt(shard, queue, hot));
                }
                job => {
                    self.admin.jobs.borrow_mut().push_back(job);
                    let _ = self.doorbell_tx.try_send(());
                }
            }
        }
    }

    /// Publishes the gauges of every shard this core owns.
    pub fn publish_gauges(&self) {
        let m = metrics::global();
        for (id, slot) in self.slots.borrow().iter() {
            m.publish_shard(self.id, *id, &gauges(slot));
        }
    }

    /// Runs the queued admin jobs (called by the committer between rounds).
    ///
    /// The committer calls this only when no batch is applied but
    /// unanswered, so a shard handed over has all of its records in its log.
    pub(super) fn run_admin_jobs(self: &Rc<Self>) {
        loop {
            let job = self.admin.jobs.borrow_mut().pop_front();
            match job {
                None => return,
                Some(Control::Snapshot {
                    shards,
                    compact,
                    reply,
                }) => {
                    let out = shards
                        .iter()
                        .map(|s| self.snapshot_one(*s, compact))
                        .collect();
                    let _ = reply.send(out);
                }
                Some(Control::MoveOut { shard, to, reply }) => self.move_out(shard, to, reply),
                Some(Control::Collect { reply }) => drop(reply),
                Some(Control::Adopt {
                    shard,
                    queue,
                    hot,
                    reply,
                }) => {
                    let _ = reply.send(self.adopt(shard, queue, hot));
                }
            }
        }
    }

    /// A request for a shard this core has no slot for: buffered if the
    /// shard is being handed over, passed on if another core owns it now,
    /// else `WrongShard`. Returns whether it was queued somewhere.
    pub(super) fn not_here(&self, shard: ShardId, pending: Pending) -> bool {
        if let Some(buffer) = self.admin.moving_out.borrow_mut().get_mut(&shard) {
            if buffer.len() >= SHARD_QUEUE_DEPTH_MAX {
                metrics::global().shed(Shed::ShardQueue);
                pending.answer(Err(WireError::Overloaded {
                    retry_after_ms: RETRY_AFTER_MS,
                }));
                return false;
            }
            buffer.push_back(pending);
            return true;
        }
        let map = self.map.load();
        match map.owner_of(shard) {
            Some(owner) if owner != self.id && !self.stopping.get() => {
                self.forward(owner, shard, pending);
                true
            }
            owner => {
                pending.answer(Err(WireError::WrongShard {
                    shard,
                    owner_core: owner.unwrap_or(self.id),
                    map_version: map.version,
                }));
                false
            }
        }
    }

    /// Sends `pending` to core `to`'s inbox (`Overloaded` if it is full).
    fn forward(&self, to: u16, shard: ShardId, pending: Pending) {
        let Some(peer) = self.peers.get(usize::from(to)) else {
            pending.answer(Err(WireError::Unavailable {
                shard,
                reason: format!("core {to} does not exist"),
            }));
            return;
        };
        if let Err(e) = peer.try_send(Forwarded { shard, pending }) {
            let full = matches!(e, flume::TrySendError::Full(_));
            let f = e.into_inner();
            let err = if full {
                metrics::global().shed(Shed::ForwardQueue);
                WireError::Overloaded {
                    retry_after_ms: RETRY_AFTER_MS,
                }
            } else {
                WireError::Unavailable {
                    shard,
                    reason: "owning core is stopping".into(),
                }
            };
            f.pending.answer(Err(err));
        }
    }

    /// Snapshot (and with `compact`, prune to it) one owned shard.
    fn snapshot_one(&self, shard: ShardId, compact: bool) -> ShardOutcome {
        let mut out = ShardOutcome {
            shard,
            lsn: 0,
            log_bytes_before: 0,
            log_bytes_after: 0,
            error: None,
        };
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(&shard) else {
            out.error = Some(format!("shard {shard} is not on core {}", self.id));
            return out;
        };
        out.log_bytes_before = slot.shard.log().disk_bytes();
        let result = if compact {
            slot.shard.compact()
        } else {
            slot.shard.snapshot_now()
        };
        match result {
            Ok(lsn) => {
                out.lsn = lsn;
                metrics::global().snapshot_taken();
                tracing::info!(shard, lsn, compact, "snapshot written on request");
            }
            Err(e) => {
                tracing::warn!(shard, error = %e, "requested snapshot failed");
                out.error = Some(e.to_string());
            }
        }
        out.log_bytes_after = slot.shard.log().disk_bytes();
        metrics::global().publish_shard(self.id, shard, &gauges(slot));
        out
    }

    /// Step 1 of a move (see the module docs): called between rounds.
    fn move_out(
        self: &Rc<Self>,
        shard: ShardId,
        to: u16,
        reply: oneshot::Sender<Result<MoveDone, String>>,
    ) {
        let peer = self.admin.peers.borrow().get(usize::from(to)).cloned();
        let Some(peer) = peer else {
            let _ = reply.send(Err(format!("core {to} does not exist")));
            return;
        };
        if to == self.id {
            let _ = reply.send(Err(format!("shard {shard} is already on core {to}")));
            return;
        }
        let Some(mut slot) = self.slots.borrow_mut().remove(&shard) else {
            let _ = reply.send(Err(format!("shard {shard} is not on core {}", self.id)));
            return;
        };
        let paused = Instant::now();
        self.ready.borrow_mut().retain(|s| *s != shard);
        if let Err(e) = slot.shard.snapshot_now() {
            self.restore(shard, slot);
            let _ = reply.send(Err(format!("shard {shard} cannot be handed over: {e}")));
            return;
        }
        let Slot {
            shard: closing,
            queue,
            hot,
            ..
        } = slot;
        // Closing the log releases the directory's lock for the new owner.
        drop(closing);
        let handed_over = queue.len() as u64;
        self.admin
            .moving_out
            .borrow_mut()
            .insert(shard, VecDeque::new());
        let (tx, rx) = oneshot::channel();
        let adopt = Control::Adopt {
            shard,
            queue,
            hot,
            reply: tx,
        };
        if let Err(e) = peer.try_send(adopt) {
            let Control::Adopt { queue, hot, .. } = e.into_inner() else {
                return;
            };
            let why = format!("core {to} does not take admin messages now");
            let _ = reply.send(Err(self.take_back(shard, queue, hot, why)));
            return;
        }
        let core = self.clone();
        glommio::spawn_local(async move {
            let result = match rx.await {
                Ok(Ok(())) => Ok(core.finish_move(shard, to, handed_over, paused)),
                Ok(Err((why, queue, hot))) => Err(core.take_back(shard, queue, hot, why)),
                Err(_) => Err(core.take_back(
                    shard,
                    VecDeque::new(),
                    TopK::default(),
                    format!("core {to} stopped during the move"),
                )),
            };
            let _ = reply.send(result);
        })
        .detach();
    }

    /// Step 3: forward what arrived meanwhile, then publish the new map.
    fn finish_move(&self, shard: ShardId, to: u16, handed: u64, paused: Instant) -> MoveDone {
        let buffered = self
            .admin
            .moving_out
            .borrow_mut()
            .remove(&shard)
            .unwrap_or_default();
        let n = buffered.len() as u64;
        for pending in buffered {
            self.forward(to, shard, pending);
        }
        let old = self.map.rcu(|m| {
            let mut next = (**m).clone();
            if let Some(owner) = next.owners.get_mut(usize::from(shard)) {
                *owner = to;
            }
            next.version += 1;
            next
        });
        let version = old.version + 1;
        metrics::global().shard_moved(shard, to, version);
        // A small file, written once per move (an admin action), so on
        // this thread: the move is done either way, only its survival of a
        // restart depends on it.
        if let Err(e) = crate::placement::save(&self.config.data_dir, &self.map, self.config.cores)
        {
            tracing::error!(shard, error = %e, "cannot store the shard placement; after a restart the shard returns to its previous core");
        }
        let paused_us = paused.elapsed().as_micros() as u64;
        tracing::info!(
            shard,
            from = self.id,
            to,
            map_version = version,
            paused_us,
            "shard moved"
        );
        MoveDone {
            from: self.id,
            to,
            map_version: version,
            handed_over: handed + n,
            paused_us,
        }
    }

    /// The new owner refused: reopen the shard here with every request.
    fn take_back(
        &self,
        shard: ShardId,
        mut queue: VecDeque<Pending>,
        hot: TopK,
        why: String,
    ) -> String {
        let buffered = self
            .admin
            .moving_out
            .borrow_mut()
            .remove(&shard)
            .unwrap_or_default();
        queue.extend(buffered);
        match self.adopt(shard, queue, hot) {
            Ok(()) => format!(
                "move of shard {shard} failed ({why}); it stays on core {}",
                self.id
            ),
            Err((again, queue, _)) => {
                for p in queue {
                    p.answer(Err(WireError::Unavailable {
                        shard,
                        reason: "shard could not be reopened after a failed move; restart the node"
                            .into(),
                    }));
                }
                tracing::error!(shard, first = %why, reopen = %again, "shard lost its owner; restart the node");
                format!(
                    "move of shard {shard} failed ({why}) and reopening it on core {} failed too ({again}); restart the node",
                    self.id
                )
            }
        }
    }

    /// Step 2: open `shard` here and queue its handed-over requests first.
    fn adopt(&self, shard: ShardId, queue: VecDeque<Pending>, hot: TopK) -> Result<(), Refused> {
        if self.stopping.get() {
            return Err(("the core is stopping".into(), queue, hot));
        }
        if self.slots.borrow().contains_key(&shard) {
            return Err((
                format!("shard {shard} is already open on core {}", self.id),
                queue,
                hot,
            ));
        }
        let dir = shard_dir(&self.config.data_dir, shard);
        let shard_state = match Shard::open(&dir, shard, shard_config(&self.config)) {
            Ok((s, _)) => s,
            Err(e) => return Err((format!("cannot open shard {shard}: {e}"), queue, hot)),
        };
        let tick_queued = queue
            .iter()
            .any(|p| matches!(&p.op, Op::Mutate(r) if matches!(r.command, Command::Tick { .. })));
        let events = EventRing::new(shard_state.last_lsn());
        let slot = Slot {
            shard: shard_state,
            events,
            in_ready: !queue.is_empty(),
            queue,
            tick_queued,
            hot,
        };
        self.restore(shard, slot);
        Ok(())
    }

    /// Puts a slot (back) into this core's slots and wakes the committer.
    fn restore(&self, shard: ShardId, mut slot: Slot) {
        slot.in_ready = !slot.queue.is_empty();
        if slot.in_ready {
            self.ready.borrow_mut().push_back(shard);
        }
        metrics::global().publish_shard(self.id, shard, &gauges(&slot));
        self.slots.borrow_mut().insert(shard, slot);
        let _ = self.doorbell_tx.try_send(());
    }
}

/// A shard's gauges as the metrics publish them.
fn gauges(slot: &Slot) -> ShardGauges {
    let (skus, reservations, orders, _) = slot.shard.state().counts();
    ShardGauges {
        queue_depth: slot.queue.len() as u64,
        log_bytes: slot.shard.log().disk_bytes(),
        lsn: slot.shard.last_lsn(),
        durable_lsn: slot.shard.durable_lsn(),
        last_snapshot_lsn: slot.shard.log().last_snapshot_lsn(),
        records_since_snapshot: slot.shard.records_since_snapshot(),
        reservations_live: reservations as u64,
        skus: skus as u64,
        orders: orders as u64,
        poisoned: slot.shard.is_poisoned(),
    }
}

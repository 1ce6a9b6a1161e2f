//! One executor ("core"): the shards it owns, their queues, and group commit.
//!
//! Everything here runs on the core's own thread. Other cores reach a shard
//! only through [`Forwarded`] messages on the core's bounded inbox; a shard is
//! never touched by two threads.
//!
//! Group commit (`commit`): the committer applies the queued requests of
//! every shard with work, writes their records as one journal frame with one
//! barrier per round, and only then sends the answers; the checkpointer
//! (`checkpoint`) makes the shards' own logs durable off the answer path. A
//! burst makes rounds bigger, not answers slower.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_channel::oneshot;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use reserva_engine::ids::ShardId;
use reserva_engine::journal::Journal;
use reserva_engine::shard::Shard;
use reserva_engine::sm::ShardState;
use reserva_protocol::{Op, OpResult, WireError};

use crate::config::ServerConfig;
use crate::events::EventRing;
use crate::limits::{RETRY_AFTER_MS, SHARD_QUEUE_DEPTH_MAX};
use crate::metrics::{self, Shed};

pub mod admission;
mod checkpoint;
mod commit;
mod control;
pub mod pins;
use commit::CommitState;
pub use control::{Control, HotSkus, MoveDone, ShardOutcome};
use control::{CoreAdmin, TopK};

pub use crate::placement::SharedMap;

/// What the layer above the rounds decides about requests and answers; the
/// core calls it without knowing what the work is (the checkout saga
/// implements it, `saga::Sagas`).
pub trait AnswerHook: std::any::Any {
    /// Whether `op` may be applied now; `false` answers `Overloaded` (a bound
    /// on the long-running work the op would start).
    fn admits(&self, op: &Op) -> bool;
    /// Sends `result` to `reply`, or keeps the waiter until the work the
    /// result started is done.
    fn deliver(&self, core: &Rc<Core>, reply: Option<oneshot::Sender<OpResult>>, result: OpResult);
    /// Called as soon as a request was applied and its record staged (before
    /// its barrier), with the shard's state afterwards. Returns whether it
    /// started work that submits requests at once: the committer then lets
    /// that work run before it starts the round's barrier, so the requests
    /// join the same round.
    fn applied(&self, core: &Rc<Core>, state: &ShardState, result: &OpResult) -> bool {
        let _ = (core, state, result);
        false
    }
}

/// A request waiting for its shard, with where to send the answer.
#[derive(Debug)]
pub struct Pending {
    /// The operation.
    pub op: Op,
    /// Whose data the sender may touch, checked on the owning shard.
    pub scope: Scope,
    /// Where the answer goes (dropped for internal requests).
    pub reply: Option<oneshot::Sender<OpResult>>,
    /// Who asked: a client's request passes admission and carries its
    /// deadline; work the node started does neither.
    pub origin: Origin,
}

/// Who asked for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client: admitted by expected wait, dropped once its deadline passed.
    Client {
        /// When the client stops waiting, and the time it allowed (ms).
        deadline: Option<(Instant, u32)>,
        /// The core that admitted the request's whole batch: on that core
        /// the request is not weighed again (a batch is admitted or refused
        /// as one), elsewhere (forwarded) it is.
        admitted_by: Option<u16>,
    },
    /// The node itself (checkout steps, expiry ticks): admitted when the
    /// client request that started it was, never refused for load.
    Node,
}

impl Origin {
    /// The deadline of a request whose batch allowed `timeout_ms` (0: none)
    /// from `received`.
    pub fn client(received: Instant, timeout_ms: u32) -> Origin {
        let deadline = (timeout_ms > 0).then(|| {
            (
                received + Duration::from_millis(u64::from(timeout_ms)),
                timeout_ms,
            )
        });
        Origin::Client {
            deadline,
            admitted_by: None,
        }
    }

    /// The time left before the deadline at `now`, if there is one.
    pub fn left(&self, now: Instant) -> Option<Duration> {
        match *self {
            Origin::Client {
                deadline: Some((at, _)),
                ..
            } => Some(at.saturating_duration_since(now)),
            _ => None,
        }
    }

    /// `DeadlineExceeded` if the request's deadline has passed at `now`.
    pub fn expired(&self, now: Instant) -> Option<WireError> {
        match *self {
            Origin::Client {
                deadline: Some((at, timeout_ms)),
                ..
            } if now >= at => Some(WireError::DeadlineExceeded { timeout_ms }),
            _ => None,
        }
    }
}

impl Pending {
    fn answer(self, result: OpResult) {
        if let Some(tx) = self.reply {
            // The connection may be gone; its answer is then simply dropped.
            let _ = tx.send(result);
        }
    }
}

pub use crate::ops::Scope;

/// A request forwarded from the core that received it to the core that owns its shard.
#[derive(Debug)]
pub struct Forwarded {
    /// Target shard (owned by the receiving core).
    pub shard: ShardId,
    /// The request.
    pub pending: Pending,
}

struct Slot {
    shard: Shard,
    events: EventRing,
    queue: VecDeque<Pending>,
    in_ready: bool,
    tick_queued: bool,
    /// The shard's most requested SKUs (moves with the shard).
    hot: TopK,
}

/// The shards of one core and everything that drives them.
pub struct Core {
    /// This core's number.
    pub id: u16,
    /// Who owns what, and where each core listens.
    pub map: SharedMap,
    /// Node configuration.
    pub config: Arc<ServerConfig>,
    /// Inboxes of every core (index = core), for forwarding.
    pub peers: Vec<flume::Sender<Forwarded>>,
    slots: RefCell<BTreeMap<ShardId, Slot>>,
    ready: RefCell<VecDeque<ShardId>>,
    doorbell_tx: LocalSender<()>,
    doorbell_rx: LocalReceiver<()>,
    /// The commit journal (`None` under `--fsync never`).
    journal: RefCell<Option<Journal>>,
    /// Batches applied but not yet answered.
    commit: RefCell<CommitState>,
    checkpoint_tx: LocalSender<()>,
    checkpoint_rx: LocalReceiver<()>,
    stopping: Cell<bool>,
    /// The layer above the rounds (the checkout saga): admission of work it
    /// runs, and answers that wait for it.
    hook: std::cell::OnceCell<Rc<dyn AnswerHook>>,
    me: Weak<Core>,
    /// Admin work: jobs for the committer, shards being moved away.
    admin: CoreAdmin,
    /// Reservations the node spares from expiry (shared by every core).
    pub pins: Arc<pins::Pins>,
    /// The hook started work during the round being applied: the committer
    /// lets it submit before the round's barrier starts.
    followups: Cell<bool>,
    /// What the core holds and how fast it answers: admission by expected wait.
    admission: RefCell<admission::Admission>,
}

/// Environment variable with milliseconds added to the server's clock: a
/// test hook (a restart "after a long stop" in crash tests). Never set it
/// in production.
pub const CLOCK_SKEW_ENV: &str = "RESERVA_CLOCK_SKEW_MS";

static CLOCK_SKEW_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Wall-clock time in Unix ms: the only clock reading of the server, stamped on each batch.
pub fn now_ms() -> u64 {
    let skew = *CLOCK_SKEW_MS.get_or_init(|| {
        std::env::var(CLOCK_SKEW_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    });
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        .saturating_add(skew)
}

impl Core {
    /// A core owning `shards`.
    pub fn new(
        id: u16,
        shards: Vec<Shard>,
        map: SharedMap,
        config: Arc<ServerConfig>,
        peers: Vec<flume::Sender<Forwarded>>,
        journal: Option<Journal>,
        pins: Arc<pins::Pins>,
    ) -> Rc<Self> {
        let slots = shards
            .into_iter()
            .map(|s| {
                (
                    s.id(),
                    Slot {
                        events: EventRing::new(s.last_lsn()),
                        shard: s,
                        queue: VecDeque::new(),
                        in_ready: false,
                        tick_queued: false,
                        hot: TopK::default(),
                    },
                )
            })
            .collect();
        let (doorbell_tx, doorbell_rx) = local_channel::new_bounded(1);
        let (checkpoint_tx, checkpoint_rx) = local_channel::new_bounded(1);
        Rc::new_cyclic(|me| Core {
            id,
            map,
            config,
            peers,
            slots: RefCell::new(slots),
            ready: RefCell::new(VecDeque::new()),
            doorbell_tx,
            doorbell_rx,
            journal: RefCell::new(journal),
            commit: RefCell::new(CommitState::default()),
            checkpoint_tx,
            checkpoint_rx,
            stopping: Cell::new(false),
            hook: std::cell::OnceCell::new(),
            me: me.clone(),
            admin: CoreAdmin::default(),
            pins,
            followups: Cell::new(false),
            admission: RefCell::new(admission::Admission::new(Instant::now())),
        })
    }

    /// Calls `f` with shard `id` if this core owns it now.
    pub fn with_shard<R>(&self, id: ShardId, f: impl FnOnce(&Shard) -> R) -> Option<R> {
        self.slots.borrow().get(&id).map(|slot| f(&slot.shard))
    }

    /// Calls `f` with every shard this core owns (for work the layer above
    /// resumes at start-up).
    pub fn for_each_shard(&self, mut f: impl FnMut(&Shard)) {
        for slot in self.slots.borrow().values() {
            f(&slot.shard);
        }
    }

    /// Installs the layer that decides which answers wait for longer work
    /// (once, at start-up; a second call is ignored).
    pub fn set_hook(&self, hook: Rc<dyn AnswerHook>) {
        if self.hook.set(hook).is_err() {
            tracing::warn!(core = self.id, "an answer hook was already installed");
        }
    }

    /// The installed answer hook, if any.
    pub fn hook(&self) -> Option<&Rc<dyn AnswerHook>> {
        self.hook.get()
    }

    /// Sends `pending` to the core owning `shard` (this one or another).
    pub fn submit(&self, shard: ShardId, pending: Pending) {
        let owner = self.map.load().owner_of(shard).unwrap_or(self.id);
        if owner == self.id {
            self.enqueue(shard, pending);
            return;
        }
        let Some(peer) = self.peers.get(usize::from(owner)) else {
            pending.answer(Err(WireError::Unavailable {
                shard,
                reason: format!("core {owner} does not exist"),
            }));
            return;
        };
        if let Err(e) = peer.try_send(Forwarded { shard, pending }) {
            let (f, reason) = match e {
                flume::TrySendError::Full(f) => {
                    metrics::global().shed(Shed::ForwardQueue);
                    (f, None)
                }
                flume::TrySendError::Disconnected(f) => (f, Some("owning core is stopping")),
            };
            let err = match reason {
                None => WireError::Overloaded {
                    retry_after_ms: RETRY_AFTER_MS,
                },
                Some(r) => WireError::Unavailable {
                    shard,
                    reason: r.into(),
                },
            };
            f.pending.answer(Err(err));
        }
    }

    /// Queues `pending` on a shard of this core, or answers `Overloaded` when
    /// its queue is full. Returns whether it was queued.
    pub fn enqueue(&self, shard: ShardId, pending: Pending) -> bool {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(&shard) else {
            drop(slots);
            // Moved away, or being moved: see `control`.
            return self.not_here(shard, pending);
        };
        if self.stopping.get() {
            pending.answer(Err(WireError::Unavailable {
                shard,
                reason: "server is shutting down".into(),
            }));
            return false;
        }
        if slot.queue.len() >= SHARD_QUEUE_DEPTH_MAX {
            metrics::global().shed(Shed::ShardQueue);
            pending.answer(Err(WireError::Overloaded {
                retry_after_ms: RETRY_AFTER_MS,
            }));
            return false;
        }
        if let Some((e, why)) = self.refusal(&pending.origin) {
            metrics::global().shed(why);
            pending.answer(Err(e));
            return false;
        }
        self.admission.borrow_mut().queued();
        slot.queue.push_back(pending);
        if !slot.in_ready {
            slot.in_ready = true;
            self.ready.borrow_mut().push_back(shard);
        }
        drop(slots);
        // A full doorbell already means "work waiting".
        let _ = self.doorbell_tx.try_send(());
        true
    }

    /// Receives forwarded requests from other cores until the node stops.
    pub async fn run_inbox(self: Rc<Self>, inbox: flume::Receiver<Forwarded>) {
        while let Ok(f) = inbox.recv_async().await {
            self.enqueue(f.shard, f.pending);
        }
    }

    /// Sends one answer, through the answer hook if one is installed (it may
    /// keep the waiter until the work the answer started is done).
    fn deliver(&self, reply: Option<oneshot::Sender<OpResult>>, r: OpResult) {
        if let (Some(hook), Some(me)) = (self.hook(), self.me.upgrade()) {
            hook.deliver(&me, reply, r);
        } else if let Some(tx) = reply {
            // The connection may be gone; its answer is then dropped.
            let _ = tx.send(r);
        }
    }

    /// Queues the housekeeping `Tick` of every shard that has something due.
    /// Pinned reservations (holds under an order) are spared; nothing is
    /// queued before every core has pinned what it resumes.
    pub fn queue_ticks(&self) {
        self.recount_held();
        if !self.pins.expiry_open() {
            return;
        }
        let now = now_ms();
        let due: Vec<(ShardId, reserva_engine::sm::Request)> = self.pins.with(|pinned| {
            let mut slots = self.slots.borrow_mut();
            slots
                .iter_mut()
                .filter(|(_, s)| !s.tick_queued && !s.shard.is_poisoned())
                .filter_map(|(id, s)| {
                    let req = s.shard.tick_request_sparing(now, pinned)?;
                    s.tick_queued = true;
                    Some((*id, req))
                })
                .collect()
        });
        for (id, req) in due {
            let queued = self.enqueue(
                id,
                Pending {
                    op: Op::Mutate(req),
                    scope: Scope::Full,
                    reply: None,
                    origin: Origin::Node,
                },
            );
            // A tick shed by a full queue must be asked for again on the next
            // timer, or the shard would never expire anything again.
            if !queued && let Some(slot) = self.slots.borrow_mut().get_mut(&id) {
                slot.tick_queued = false;
            }
        }
    }

    /// Why this core refuses a request (or a whole batch) of `origin` now,
    /// if it does: its deadline passed (`DeadlineExceeded`), or admission
    /// expects it to wait too long (`Overloaded`). Work the node started is
    /// never refused; a request of a batch this core admitted meets only
    /// the hard bound.
    pub fn refusal(&self, origin: &Origin) -> Option<(WireError, Shed)> {
        let Origin::Client {
            deadline,
            admitted_by,
        } = *origin
        else {
            return None;
        };
        // The clock is read only for a request with a deadline.
        let now = deadline.map(|_| Instant::now());
        if let Some(e) = now.and_then(|now| origin.expired(now)) {
            return Some((e, Shed::Deadline));
        }
        let budget = self.config.admission_budget;
        let admission = self.admission.borrow();
        let decision = if admitted_by == Some(self.id) {
            admission.decide_admitted(budget)
        } else {
            admission.decide(budget, now.and_then(|now| origin.left(now)))
        };
        match decision {
            admission::Decision::Admit => None,
            admission::Decision::Shed { retry_after_ms } => {
                Some((WireError::Overloaded { retry_after_ms }, Shed::ExpectedWait))
            }
        }
    }

    /// Sets the admission's count of held requests from the queues and
    /// batches themselves (run on every tick, and after shard moves).
    pub(crate) fn recount_held(&self) {
        let queued: usize = self.slots.borrow().values().map(|s| s.queue.len()).sum();
        let applied = self.commit.borrow().unanswered();
        let mut a = self.admission.borrow_mut();
        a.recount(queued + applied);
        metrics::global().publish_admission(self.id, a.held(), a.rate(), a.expected_wait());
    }

    /// Stops accepting work. The committer answers what is queued and then
    /// returns; the caller awaits it and calls [`Core::sync_dirty`].
    pub fn stop(&self) {
        self.stopping.set(true);
        let _ = self.doorbell_tx.try_send(());
        self.ring_checkpointer();
    }

    /// Shards of this core that a log failure poisoned.
    pub fn poisoned_shards(&self) -> Vec<ShardId> {
        self.slots
            .borrow()
            .iter()
            .filter(|(_, s)| s.shard.is_poisoned())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether the node is stopping.
    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }
}

/// Where an answer goes, and the answer.
type Answer = (Option<oneshot::Sender<OpResult>>, OpResult);

/// After a failed append or barrier nothing of the batch is known durable:
/// every success (and every read that may have seen it) becomes `Unavailable`.
fn fail_mutations(done: &mut [Answer], shard: ShardId, reason: &str) {
    for (_, r) in done.iter_mut() {
        if r.is_ok() {
            *r = Err(WireError::Unavailable {
                shard,
                reason: format!("log failure, outcome unknown until restart: {reason}"),
            });
        }
    }
}

/// Whether `shutdown` was requested.
pub fn shutdown_requested(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Relaxed)
}

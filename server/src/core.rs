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
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use futures_channel::oneshot;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use reserva_engine::ids::{CheckoutId, OrderId, ShardId};
use reserva_engine::journal::Journal;
use reserva_engine::shard::Shard;
use reserva_engine::sm::{Command, CommerceCommand, CommerceOutcome, Order, Outcome, ShardState};
use reserva_protocol::limits::LIST_ORDERS_LIMIT_MAX;
use reserva_protocol::{Op, OpResult, Query, Reply, ShardMap, ShardStats, WireError};

use crate::config::ServerConfig;
use crate::events::EventRing;
use crate::limits::{RETRY_AFTER_MS, SCAN_ORDERS_MAX, SHARD_QUEUE_DEPTH_MAX};
use crate::metrics::{self, Shed};
use crate::saga::{self, Sagas};

mod checkpoint;
mod commit;
mod control;
use commit::CommitState;
pub use control::{Control, HotSkus, MoveDone, ShardOutcome};
use control::{CoreAdmin, TopK};

/// The shard map every core reads on each request; a shard move swaps in a
/// new version (lock-free for readers).
pub type SharedMap = Arc<ArcSwap<ShardMap>>;

/// A request waiting for its shard, with where to send the answer.
#[derive(Debug)]
pub struct Pending {
    /// The operation.
    pub op: Op,
    /// Whose data the sender may touch, checked on the owning shard.
    pub scope: Scope,
    /// Where the answer goes (dropped for internal requests).
    pub reply: Option<oneshot::Sender<OpResult>>,
}

impl Pending {
    fn answer(self, result: OpResult) {
        if let Some(tx) = self.reply {
            // The connection may be gone; its answer is then simply dropped.
            let _ = tx.send(result);
        }
    }
}

/// What a request's sender may touch beyond what its role allows everywhere
/// (see `auth::authorize`); checked against the records on the owning shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Anything (admin, or a node without an auth file).
    Full,
    /// A seller: stock changes only on their own SKUs.
    Seller(String),
    /// A customer: only their own reservations and orders.
    Customer(String),
}

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
    /// Checkout drivers and order effect runners of this core.
    pub sagas: Sagas,
    me: Weak<Core>,
    /// Admin work: jobs for the committer, shards being moved away.
    admin: CoreAdmin,
}

/// Wall-clock time in Unix ms: the only clock reading of the server, stamped on each batch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
        let sagas = Sagas::new(config.checkout.clone());
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
            sagas,
            me: me.clone(),
            admin: CoreAdmin::default(),
        })
    }

    /// Checkouts that have not ended and orders with side effects not done,
    /// on this core's shards.
    pub fn unfinished_work(&self) -> (Vec<CheckoutId>, Vec<OrderId>) {
        let slots = self.slots.borrow();
        let mut checkouts = Vec::new();
        let mut orders = Vec::new();
        for slot in slots.values() {
            let state = slot.shard.state();
            checkouts.extend(
                state
                    .checkouts()
                    .filter(|c| !c.state.is_terminal())
                    .map(|c| c.id),
            );
            orders.extend(state.orders_with_pending_effects());
        }
        (checkouts, orders)
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

    /// Sends one answer: a started checkout answers when its saga ends, an
    /// order action once its side effects are done; everything else at once.
    fn deliver(&self, reply: Option<oneshot::Sender<OpResult>>, r: OpResult) {
        if let (Some(me), Ok(Reply::Outcome(Outcome::Commerce(o)))) = (self.me.upgrade(), &r) {
            match &**o {
                CommerceOutcome::CheckoutStarted { checkout_id } => {
                    saga::attach_checkout(&me, *checkout_id, reply);
                    return;
                }
                CommerceOutcome::Order { order, return_id }
                    if order
                        .fulfilment
                        .as_ref()
                        .is_some_and(|f| f.has_pending_effects()) =>
                {
                    saga::attach_effects(&me, order.id, *return_id, reply);
                    return;
                }
                _ => {}
            }
        }
        if let Some(tx) = reply {
            // The connection may be gone; its answer is then dropped.
            let _ = tx.send(r);
        }
    }

    /// Queues the housekeeping `Tick` of every shard that has something due.
    pub fn queue_ticks(&self) {
        let now = now_ms();
        let due: Vec<(ShardId, reserva_engine::sm::Request)> = {
            let mut slots = self.slots.borrow_mut();
            slots
                .iter_mut()
                .filter(|(_, s)| !s.tick_queued && !s.shard.is_poisoned())
                .filter_map(|(id, s)| {
                    let req = s.shard.tick_request(now)?;
                    s.tick_queued = true;
                    Some((*id, req))
                })
                .collect()
        };
        for (id, req) in due {
            let queued = self.enqueue(
                id,
                Pending {
                    op: Op::Mutate(req),
                    scope: Scope::Full,
                    reply: None,
                },
            );
            // A tick shed by a full queue must be asked for again on the next
            // timer, or the shard would never expire anything again.
            if !queued && let Some(slot) = self.slots.borrow_mut().get_mut(&id) {
                slot.tick_queued = false;
            }
        }
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

fn is_checkout_begin(op: &Op) -> bool {
    matches!(op, Op::Mutate(r) if matches!(&r.command, Command::Commerce(c) if matches!(**c, CommerceCommand::CheckoutBegin { .. })))
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

/// The command of a mutation that may change a user's cart, wishlist or orders (what
/// the live-update ring records), cloned before it is applied.
fn watched_command(op: &Op) -> Option<Command> {
    match op {
        Op::Mutate(r) => match &r.command {
            Command::CartSet { .. }
            | Command::CartRemove { .. }
            | Command::CartClear { .. }
            | Command::CreateOrder { .. }
            | Command::SetOrderStatus { .. } => Some(r.command.clone()),
            Command::Commerce(c) => match c.as_ref() {
                CommerceCommand::Order { .. }
                | CommerceCommand::ReturnRequest { .. }
                | CommerceCommand::Return { .. }
                | CommerceCommand::CheckoutCreateOrder { .. }
                | CommerceCommand::CheckoutFinish { .. }
                | CommerceCommand::WishlistSet { .. }
                | CommerceCommand::WishlistRemove { .. } => Some(r.command.clone()),
                _ => None,
            },
            _ => None,
        },
        Op::Query(_) => None,
    }
}

/// Runs one operation on a shard at its place in the batch.
fn execute(core: u16, slot: &mut Slot, op: Op, scope: &Scope, now: u64) -> OpResult {
    let id = slot.shard.id();
    if slot.shard.is_poisoned() {
        return Err(WireError::Unavailable {
            shard: id,
            reason: "shard poisoned by a log failure; restart the node".into(),
        });
    }
    owns(slot.shard.state(), &op, scope)?;
    match op {
        Op::Query(q) => query(core, slot, q),
        Op::Mutate(req) => slot
            .shard
            .apply(now, req)
            .map(Reply::Outcome)
            .map_err(WireError::Engine),
    }
}

/// Whether `scope` may run `op`, given the records on the owning shard.
/// Unknown ids pass, so that they get their usual not-found answer.
fn owns(state: &ShardState, op: &Op, scope: &Scope) -> Result<(), WireError> {
    let deny = |reason: &str| {
        Err(WireError::Unauthorized {
            reason: reason.into(),
        })
    };
    match scope {
        Scope::Full => Ok(()),
        Scope::Seller(seller) => match op {
            Op::Mutate(r) => match &r.command {
                Command::Commerce(c) => match &**c {
                    CommerceCommand::Order { order_id, .. } => {
                        seller_sells(state.order(*order_id), seller)
                    }
                    CommerceCommand::Return { return_id, .. } => {
                        seller_sells(state.order_of_return(*return_id), seller)
                    }
                    _ => Ok(()),
                },
                command => seller_owns(state, command, seller),
            },
            Op::Query(Query::GetSku { .. } | Query::ShardStats { .. }) => Ok(()),
            Op::Query(Query::SellerSkus { seller_id, .. }) if seller_id == seller => Ok(()),
            Op::Query(Query::GetOrder { id }) => seller_sells(state.order(*id), seller),
            Op::Query(Query::GetReturn { id }) => seller_sells(state.order_of_return(*id), seller),
            Op::Query(_) => deny("a seller may not read users' carts, checkouts or reservations"),
        },
        Scope::Customer(me) => {
            let reservation = match op {
                Op::Mutate(r) => match &r.command {
                    Command::Release { reservation_id } | Command::Confirm { reservation_id } => {
                        Some(*reservation_id)
                    }
                    _ => None,
                },
                Op::Query(Query::GetReservation { id }) => Some(*id),
                Op::Query(_) => None,
            };
            if let Some(r) = reservation.and_then(|id| state.reservation(id))
                && r.owner != *me
            {
                return deny("the reservation belongs to another user");
            }
            let order = match op {
                Op::Query(Query::GetOrder { id }) => state.order(*id),
                Op::Query(Query::GetReturn { id }) => state.order_of_return(*id),
                Op::Mutate(r) => match &r.command {
                    Command::Commerce(c) => match &**c {
                        CommerceCommand::Order { order_id, .. }
                        | CommerceCommand::ReturnRequest { order_id, .. } => state.order(*order_id),
                        _ => None,
                    },
                    _ => None,
                },
                Op::Query(_) => None,
            };
            if order.is_some_and(|o| o.user_id != *me) {
                return deny("the order belongs to another user");
            }
            if let Op::Query(Query::GetCheckout { id }) = op
                && state.checkout(*id).is_some_and(|c| c.user_id != *me)
            {
                return deny("the checkout belongs to another user");
            }
            Ok(())
        }
    }
}

/// A seller may read and fulfil only orders that contain their SKUs.
fn seller_sells(order: Option<&Order>, seller: &str) -> Result<(), WireError> {
    match order {
        Some(o)
            if !o
                .fulfilment
                .as_ref()
                .is_some_and(|f| f.sellers.iter().any(|s| s == seller)) =>
        {
            Err(WireError::Unauthorized {
                reason: "the order contains no SKU of this seller".into(),
            })
        }
        _ => Ok(()),
    }
}

/// A seller may only change stock of SKUs that are theirs.
fn seller_owns(state: &ShardState, command: &Command, seller: &str) -> Result<(), WireError> {
    let sku = match command {
        Command::UpsertSku { sku, .. }
        | Command::SetStock { sku, .. }
        | Command::AdjustStock { sku, .. }
        | Command::Restock { sku, .. } => sku,
        _ => return Ok(()),
    };
    match state.sku(sku) {
        Some(s) if s.seller_id != seller => Err(WireError::Unauthorized {
            reason: format!("sku {sku:?} belongs to another seller"),
        }),
        _ => Ok(()),
    }
}

fn query(core: u16, slot: &Slot, q: Query) -> OpResult {
    let state = slot.shard.state();
    let not_found = |what: &str, id: String| WireError::NotFound {
        what: what.into(),
        id,
    };
    match q {
        Query::GetSku { sku } => state
            .sku(&sku)
            .cloned()
            .map(Reply::Sku)
            .ok_or_else(|| not_found("sku", sku)),
        Query::GetReservation { id } => state
            .reservation(id)
            .cloned()
            .map(Reply::Reservation)
            .ok_or_else(|| not_found("reservation", id.to_string())),
        Query::GetOrder { id } => state
            .order(id)
            .cloned()
            .map(Reply::Order)
            .ok_or_else(|| not_found("order", id.to_string())),
        Query::ListOrders {
            user_id,
            after,
            limit,
        } => {
            if limit == 0 || limit > LIST_ORDERS_LIMIT_MAX {
                return Err(WireError::invalid(format!(
                    "limit must be in 1..={LIST_ORDERS_LIMIT_MAX}"
                )));
            }
            let mut iter = state
                .orders_of(&user_id)
                .skip_while(|o| after.is_some_and(|a| o.id <= a))
                .peekable();
            let orders: Vec<_> = iter.by_ref().take(limit as usize).cloned().collect();
            let next = if iter.peek().is_some() {
                orders.last().map(|o| o.id)
            } else {
                None
            };
            Ok(Reply::Orders { orders, next })
        }
        Query::GetCart { user_id } => Ok(Reply::Cart(state.cart(&user_id).to_vec())),
        Query::GetWishlist { user_id } => Ok(Reply::Wishlist(state.wishlist(&user_id).to_vec())),
        Query::GetCheckout { id } => state
            .checkout(id)
            .map(|c| Reply::Checkout(Box::new(c.clone())))
            .ok_or_else(|| not_found("checkout", id.to_string())),
        Query::GetCredit { user_id } => Ok(Reply::Credit(state.credit_account(&user_id).cloned())),
        Query::GetReturn { id } => state
            .order_of_return(id)
            .cloned()
            .map(Reply::Order)
            .ok_or_else(|| not_found("return", id.to_string())),
        Query::ShardStats { shard } => {
            let (skus, reservations, orders, idem) = state.counts();
            Ok(Reply::ShardStats(ShardStats {
                shard,
                core,
                lsn: slot.shard.last_lsn(),
                durable_lsn: slot.shard.durable_lsn(),
                clock_ms: state.clock_ms(),
                queue_depth: slot.queue.len() as u32,
                skus: skus as u64,
                reservations: reservations as u64,
                orders: orders as u64,
                idempotency_records: idem as u64,
            }))
        }
        Query::SellerSkus { .. }
        | Query::SellerOrders { .. }
        | Query::SellerAnalytics { .. }
        | Query::UserEvents { .. } => crate::listings::answer(slot_view(slot), q),
    }
}

/// Whether `shutdown` was requested.
pub fn shutdown_requested(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Relaxed)
}

fn slot_view(slot: &Slot) -> crate::listings::ShardView<'_> {
    crate::listings::ShardView {
        state: slot.shard.state(),
        events: &slot.events,
        scan_orders_max: SCAN_ORDERS_MAX,
    }
}

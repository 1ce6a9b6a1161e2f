//! The checkout coordinator and the runner of orders' side effects.
//!
//! A checkout is coordinated by the core that owns the user's shard, and the
//! client's answer waits for two durability rounds in series:
//!
//! 1. **Holds.** As soon as `CheckoutBegin` is applied (before its barrier),
//!    the coordinator sends a `CheckoutHold` to every SKU shard of the lines
//!    and a `CardUse` to the card's shard, all at once. They join the round
//!    of the `CheckoutBegin` where they share its core, or run on their own
//!    cores in parallel. Each hold answers the prices of its SKUs.
//! 2. **The order.** With the holds, the card's use count and the payment
//!    provider's authorization in hand, one `CheckoutPlace` record on the
//!    user's shard carries the holds, the fraud score, the authorization and
//!    the order. It shares the journal of the `CheckoutBegin`, which is
//!    therefore durable with it or before it.
//!
//! The caller is answered once that record is durable. What follows is
//! guaranteed and needs no caller: every hold is deducted (`HoldDeduct`),
//! the card captured, and `CheckoutSettle` recorded; failures are retried
//! until done, and a restarted node resumes them. A hold under an order is
//! pinned ([`crate::core::pins`]) so no expiry takes it before its
//! deduction, not even after the node was down past its deadline.
//!
//! A checkout whose order record was never written when the node stopped
//! is not resumed but undone: its holds are found again with their keys and
//! released, its authorization cancelled, and it fails with
//! `CheckoutInterrupted`. A hold whose checkout record itself was lost is
//! released by expiry after `CHECKOUT_HOLD_TTL_MS`.
//!
//! Every external call carries an idempotency key derived from the checkout
//! (`{checkout}.{created}:r:{shard}`, `...:auth`, ...): the creation time in
//! the key keeps a checkout id minted again after a lost record from meeting
//! the answers of the first. Each step's answer carries what the next step
//! needs; the coordinator reads nothing between steps. Provider calls never
//! hold a core: they are awaited like any request, bounded per core
//! (`PROVIDER_CALLS_PER_CORE_MAX`) and by a timeout (`payments.timeout_ms`)
//! after which they are retried with the same key.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use futures_channel::oneshot;
use glommio::sync::Semaphore;
use reserva_engine::ids::{CheckoutId, OrderId, ReturnId, ShardId, shard_of};
use reserva_engine::sm::{
    Address, Checkout, CheckoutSource, CheckoutState, Command, CommerceCommand, CommerceOutcome,
    DeliveryEstimate, EffectKind, EngineError, FraudDecision, Hold, Money, Order, Outcome,
    PaymentMethod, PaymentStatus, Placement, PricedLine, Request, ReserveLine, ShardState,
    card_shard,
};
use reserva_protocol::{Op, OpResult, Query, Reply, WireError};

use crate::checkout_config::{CheckoutConfig, delivery_days, distance_km};
use crate::core::{AnswerHook, Core, Pending, Scope, now_ms};
use crate::limits::{
    CHECKOUT_HOLD_TTL_MS, EFFECT_RUNNERS_PER_CORE_MAX, PROVIDER_CALLS_PER_CORE_MAX,
    SAGA_BACKOFF_FIRST, SAGA_BACKOFF_MAX, SAGA_CALL_ATTEMPTS, SAGA_STEP_FAILURES_MAX,
    SAGA_WAITERS_MAX, SAGAS_PER_CORE_MAX,
};
use crate::payments::{CardProvider, PaymentError, SandboxCards};

/// Environment variable naming a failpoint at which the process aborts, as
/// a `kill -9` would stop it (crash tests). Names: `checkout.<state>` when a
/// driver first sees a checkout in that recorded state (`checkout.started`,
/// `checkout.order_created`, `checkout.compensating`, ...), `checkout.held`
/// once every hold answered, `checkout.deducted` once every hold of an order
/// is deducted, and `checkout.provider_authorized`,
/// `checkout.provider_captured`, `checkout.provider_voided` right after the
/// provider answered and before the step is recorded.
pub const FAILPOINT_ENV: &str = "RESERVA_FAILPOINT";

type Waiter = oneshot::Sender<OpResult>;
/// A caller of an order action, and the return its answer names.
type EffectWaiter = (Waiter, Option<ReturnId>);

/// A checkout being coordinated: its callers, and their answer once given.
#[derive(Default)]
struct Running {
    waiters: Vec<Waiter>,
    answer: Option<OpResult>,
}

/// Running checkout coordinators and effect runners of one core.
pub struct Sagas {
    config: CheckoutConfig,
    cards: SandboxCards,
    checkouts: RefCell<HashMap<CheckoutId, Running>>,
    effects: RefCell<HashMap<OrderId, Vec<EffectWaiter>>>,
    provider_slots: Semaphore,
    failpoint: Option<String>,
}

impl Sagas {
    /// Coordinators configured by `config`.
    pub fn new(config: CheckoutConfig) -> Self {
        Sagas {
            cards: SandboxCards::new(config.payment_latency),
            config,
            checkouts: RefCell::new(HashMap::new()),
            effects: RefCell::new(HashMap::new()),
            provider_slots: Semaphore::new(PROVIDER_CALLS_PER_CORE_MAX as u64),
            failpoint: std::env::var(FAILPOINT_ENV).ok().filter(|s| !s.is_empty()),
        }
    }

    /// Whether a new checkout may start on this core.
    pub fn admits_checkout(&self) -> bool {
        self.checkouts.borrow().len() < SAGAS_PER_CORE_MAX
    }

    /// Checkouts being coordinated right now.
    pub fn running(&self) -> usize {
        self.checkouts.borrow().len()
    }

    fn failpoint(&self, name: &str) {
        if self.failpoint.as_deref() == Some(name) {
            tracing::error!(failpoint = name, "failpoint reached; aborting the process");
            std::process::abort();
        }
    }
}

impl AnswerHook for Sagas {
    fn admits(&self, op: &Op) -> bool {
        !is_checkout_begin(op) || self.admits_checkout()
    }

    /// A started checkout answers once its order is recorded (or it failed),
    /// an order action once its side effects are done; everything else at once.
    fn deliver(&self, core: &Rc<Core>, reply: Option<Waiter>, result: OpResult) {
        if let Ok(Reply::Outcome(Outcome::Commerce(o))) = &result {
            match &**o {
                CommerceOutcome::CheckoutStarted { checkout_id } => {
                    attach_checkout(core, *checkout_id, reply);
                    return;
                }
                CommerceOutcome::Order { order, return_id }
                    if order
                        .fulfilment
                        .as_ref()
                        .is_some_and(|f| f.has_pending_effects()) =>
                {
                    attach_effects(core, order.id, *return_id, reply);
                    return;
                }
                _ => {}
            }
        }
        if let Some(tx) = reply {
            // The connection may be gone; its answer is then dropped.
            let _ = tx.send(result);
        }
    }

    /// A checkout just begun starts its holds before its own barrier.
    fn applied(&self, core: &Rc<Core>, state: &ShardState, result: &OpResult) -> bool {
        let Ok(Reply::Outcome(Outcome::Commerce(o))) = result else {
            return false;
        };
        let CommerceOutcome::CheckoutStarted { checkout_id } = &**o else {
            return false;
        };
        match state.checkout(*checkout_id) {
            Some(c) if c.state == CheckoutState::Started => start_checkout(core, c.clone()),
            _ => false,
        }
    }
}

fn is_checkout_begin(op: &Op) -> bool {
    matches!(op, Op::Mutate(r) if matches!(&r.command, Command::Commerce(c) if matches!(**c, CommerceCommand::CheckoutBegin { .. })))
}

/// Installs the checkout coordinators of `core` as its answer hook.
pub fn install(core: &Core, config: CheckoutConfig) {
    core.set_hook(Rc::new(Sagas::new(config)));
}

/// The checkout coordinators of `core` (installed at start-up by [`install`]).
fn sagas(core: &Core) -> &Sagas {
    let hook: &dyn std::any::Any = &**core
        .hook()
        .expect("the checkout coordinators are installed before any request is served");
    hook.downcast_ref::<Sagas>()
        .expect("the answer hook of a core is the checkout coordinators")
}

/// Checkouts that have not ended and orders with side effects not done, on
/// the shards `core` owns.
fn unfinished_work(core: &Core) -> (Vec<Checkout>, Vec<OrderId>) {
    let mut checkouts = Vec::new();
    let mut orders = Vec::new();
    core.for_each_shard(|shard| {
        let state = shard.state();
        checkouts.extend(
            state
                .checkouts()
                .filter(|c| !c.state.is_terminal())
                .cloned(),
        );
        orders.extend(state.orders_with_pending_effects());
    });
    (checkouts, orders)
}

/// Starts coordinating checkout `c`, just begun. Returns whether it started.
fn start_checkout(core: &Rc<Core>, c: Checkout) -> bool {
    let id = c.id;
    {
        let mut running = sagas(core).checkouts.borrow_mut();
        if running.contains_key(&id) {
            return false;
        }
        running.insert(id, Running::default());
    }
    spawn_driver(core, id, Some(c));
    true
}

fn spawn_driver(core: &Rc<Core>, id: CheckoutId, first: Option<Checkout>) {
    let core = core.clone();
    glommio::spawn_local(async move {
        // The executor runs a new task at once, and this may be called from
        // inside a round: submit only once the round has let go of its shards.
        futures_lite::future::yield_now().await;
        let result = drive(&core, id, first).await;
        answer(&core, id, result);
        sagas(&core).checkouts.borrow_mut().remove(&id);
    })
    .detach();
}

/// Gives checkout `id`'s callers their answer (the first answer counts).
fn answer(core: &Core, id: CheckoutId, result: OpResult) {
    let mut running = sagas(core).checkouts.borrow_mut();
    let Some(r) = running.get_mut(&id) else {
        return;
    };
    if r.answer.is_some() {
        return;
    }
    for tx in r.waiters.drain(..) {
        let _ = tx.send(result.clone());
    }
    r.answer = Some(result);
}

/// Makes `reply` wait for checkout `id`'s answer, starting its coordinator if none runs.
pub fn attach_checkout(core: &Rc<Core>, id: CheckoutId, reply: Option<Waiter>) {
    let mut running = sagas(core).checkouts.borrow_mut();
    if let Some(r) = running.get_mut(&id) {
        if let Some(tx) = reply {
            if let Some(a) = &r.answer {
                let _ = tx.send(a.clone());
            } else if r.waiters.len() >= SAGA_WAITERS_MAX {
                let _ = tx.send(Err(WireError::Overloaded {
                    retry_after_ms: 100,
                }));
            } else {
                r.waiters.push(tx);
            }
        }
        return;
    }
    running.insert(
        id,
        Running {
            waiters: reply.into_iter().collect(),
            answer: None,
        },
    );
    drop(running);
    spawn_driver(core, id, None);
}

/// Makes `reply` wait until the side effects of order `id` are done,
/// starting its runner if none runs.
pub fn attach_effects(
    core: &Rc<Core>,
    id: OrderId,
    return_id: Option<ReturnId>,
    reply: Option<Waiter>,
) {
    let mut running = sagas(core).effects.borrow_mut();
    if let Some(waiters) = running.get_mut(&id) {
        if let Some(tx) = reply {
            if waiters.len() >= SAGA_WAITERS_MAX {
                let _ = tx.send(Err(WireError::Overloaded {
                    retry_after_ms: 100,
                }));
            } else {
                waiters.push((tx, return_id));
            }
        }
        return;
    }
    if running.len() >= EFFECT_RUNNERS_PER_CORE_MAX {
        // The sweep picks the order up later; answer with what is recorded.
        drop(running);
        if let Some(tx) = reply {
            let _ = tx.send(Err(WireError::Overloaded {
                retry_after_ms: 1000,
            }));
        }
        return;
    }
    running.insert(id, reply.map(|tx| (tx, return_id)).into_iter().collect());
    drop(running);
    let core = core.clone();
    glommio::spawn_local(async move {
        let result = run_effects(&core, id).await;
        let waiters = sagas(&core)
            .effects
            .borrow_mut()
            .remove(&id)
            .unwrap_or_default();
        for (tx, return_id) in waiters {
            let answer = result.clone().map(|order| {
                Reply::Outcome(Outcome::Commerce(Box::new(CommerceOutcome::Order {
                    order,
                    return_id,
                })))
            });
            let _ = tx.send(answer);
        }
    })
    .detach();
}

/// Resumes every checkout that has not ended and every order with side
/// effects not done, on the shards this core owns. The holds of recorded
/// orders are pinned before this returns (the node opens expiry only once
/// every core resumed).
pub fn resume(core: &Rc<Core>) {
    let (checkouts, orders) = unfinished_work(core);
    if !checkouts.is_empty() || !orders.is_empty() {
        tracing::info!(
            core = core.id,
            checkouts = checkouts.len(),
            orders = orders.len(),
            "resuming unfinished checkouts and order side effects"
        );
    }
    for c in &checkouts {
        if matches!(
            c.state,
            CheckoutState::OrderCreated | CheckoutState::StockConfirmed
        ) {
            core.pins.pin(c.holds.iter().map(|h| h.reservation_id));
        }
    }
    for c in checkouts {
        attach_checkout(core, c.id, None);
    }
    for id in orders {
        attach_effects(core, id, None, None);
    }
}

/// Sends `op` to `shard` (on this core or another) at once; the answer comes on the receiver.
fn send(core: &Core, shard: ShardId, op: Op) -> oneshot::Receiver<OpResult> {
    let (tx, rx) = oneshot::channel();
    core.submit(
        shard,
        Pending {
            op,
            scope: Scope::Full,
            reply: Some(tx),
            origin: crate::core::Origin::Node,
        },
    );
    rx
}

async fn received(shard: ShardId, rx: oneshot::Receiver<OpResult>) -> OpResult {
    rx.await.unwrap_or_else(|_| {
        Err(WireError::Unavailable {
            shard,
            reason: "request dropped".into(),
        })
    })
}

/// Sends `op` to `shard` and waits for the answer.
async fn call(core: &Core, shard: ShardId, op: Op) -> OpResult {
    received(shard, send(core, shard, op)).await
}

fn keyed(key: String, command: Command) -> Op {
    Op::Mutate(Request::keyed(key, command))
}

fn commerce(key: Option<String>, c: CommerceCommand) -> Op {
    Op::Mutate(Request {
        idempotency_key: key,
        command: Command::Commerce(Box::new(c)),
    })
}

/// Like [`call`], retrying errors that say "later" (overloaded, unavailable,
/// timeout) with backoff. Engine refusals and other final errors come back.
async fn call_retrying(core: &Core, shard: ShardId, op: &Op) -> OpResult {
    retry_later(core, shard, op, call(core, shard, op.clone()).await).await
}

/// Retries `op` after its first answer `first` said "later".
async fn retry_later(core: &Core, shard: ShardId, op: &Op, first: OpResult) -> OpResult {
    let mut r = first;
    let mut wait = SAGA_BACKOFF_FIRST;
    let mut attempt = 1;
    loop {
        match &r {
            Err(e) if e.is_retryable() && attempt < SAGA_CALL_ATTEMPTS && !core.is_stopping() => {
                attempt += 1;
                glommio::timer::sleep(wait).await;
                wait = (wait * 2).min(SAGA_BACKOFF_MAX);
                r = call(core, shard, op.clone()).await;
            }
            _ => return r,
        }
    }
}

/// Sends every `(shard, op)` at once, then collects the answers in order
/// (each retried on its own if it said "later").
async fn call_all(core: &Core, ops: Vec<(ShardId, Op)>) -> Vec<OpResult> {
    let sent: Vec<_> = ops
        .into_iter()
        .map(|(shard, op)| {
            let rx = send(core, shard, op.clone());
            (shard, op, rx)
        })
        .collect();
    let mut out = Vec::with_capacity(sent.len());
    for (shard, op, rx) in sent {
        let first = received(shard, rx).await;
        out.push(retry_later(core, shard, &op, first).await);
    }
    out
}

/// The idempotency keys of one checkout's calls.
struct Keys(String);

impl Keys {
    fn of(c: &Checkout) -> Self {
        Keys(format!("{}.{:x}", c.id, c.created_at_ms))
    }
    fn key(&self, what: impl std::fmt::Display) -> String {
        format!("{}:{what}", self.0)
    }
}

/// The answer for a checkout's callers once it ended.
fn final_answer(c: Checkout) -> OpResult {
    match c.state {
        CheckoutState::Failed => Err(WireError::Engine(c.failure.unwrap_or(
            EngineError::CheckoutState {
                checkout_id: c.id,
                state: "failed".into(),
            },
        ))),
        _ => step_answer(c),
    }
}

fn step_answer(c: Checkout) -> OpResult {
    Ok(Reply::Outcome(Outcome::Commerce(Box::new(
        CommerceOutcome::CheckoutStep { checkout: c },
    ))))
}

fn fail(c: &Checkout, error: EngineError) -> CommerceCommand {
    CommerceCommand::CheckoutFail {
        checkout_id: c.id,
        error,
    }
}

async fn read_checkout(core: &Core, id: CheckoutId) -> Result<Checkout, WireError> {
    match call_retrying(core, id.shard(), &Op::Query(Query::GetCheckout { id })).await? {
        Reply::Checkout(c) => Ok(*c),
        other => Err(WireError::invalid(format!(
            "GetCheckout answered {other:?}"
        ))),
    }
}

/// The checkout a recorded step answered.
fn stepped(r: Reply) -> Result<Checkout, WireError> {
    match r {
        Reply::Outcome(Outcome::Commerce(o)) => match *o {
            CommerceOutcome::CheckoutStep { checkout } => Ok(checkout),
            other => Err(WireError::invalid(format!(
                "a checkout step answered {other:?}"
            ))),
        },
        other => Err(WireError::invalid(format!(
            "a checkout step answered {other:?}"
        ))),
    }
}

/// Records `step` on the checkout's shard; answers the checkout afterwards.
async fn record(core: &Core, c: &Checkout, step: CommerceCommand) -> Result<Checkout, WireError> {
    match call_retrying(core, c.id.shard(), &commerce(None, step)).await {
        Ok(r) => stepped(r),
        // Recorded already (an earlier attempt went through): read where it is.
        Err(WireError::Engine(EngineError::CheckoutState { .. })) => {
            read_checkout(core, c.id).await
        }
        Err(e) => Err(e),
    }
}

async fn drive(core: &Rc<Core>, id: CheckoutId, first: Option<Checkout>) -> OpResult {
    let mut placing = first.is_some();
    let mut c = match first {
        Some(c) => c,
        None => read_checkout(core, id).await?,
    };
    let mut failures = 0;
    let mut wait = SAGA_BACKOFF_FIRST;
    loop {
        if c.state.is_terminal() {
            core.pins.unpin(c.holds.iter().map(|h| h.reservation_id));
            return final_answer(c);
        }
        sagas(core).failpoint(&format!("checkout.{}", c.state.as_str()));
        let next = match c.state {
            CheckoutState::Started if placing => {
                placing = false;
                place(core, &c).await
            }
            CheckoutState::Started => match abandon(core, &c).await {
                Ok(step) => record(core, &c, step).await,
                Err(e) => Err(e),
            },
            // Left between the steps of an earlier version's saga: undone.
            CheckoutState::Reserved | CheckoutState::Scored | CheckoutState::Authorized => {
                let error = EngineError::CheckoutInterrupted { checkout_id: c.id };
                record(core, &c, fail(&c, error)).await
            }
            CheckoutState::OrderCreated | CheckoutState::StockConfirmed => {
                answer(core, id, step_answer(c.clone()));
                match settle(core, &c).await {
                    Ok(step) => record(core, &c, step).await,
                    Err(e) => Err(e),
                }
            }
            CheckoutState::Compensating => match compensate(core, &c).await {
                Ok(step) => record(core, &c, step).await,
                Err(e) => Err(e),
            },
            CheckoutState::Completed | CheckoutState::InReview | CheckoutState::Failed => {
                return final_answer(c);
            }
        };
        match next {
            Ok(next) => {
                c = next;
                failures = 0;
                wait = SAGA_BACKOFF_FIRST;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(checkout = %id, state = c.state.as_str(), error = %e, "checkout step failed; retrying");
                if failures == SAGA_STEP_FAILURES_MAX || core.is_stopping() {
                    answer(
                        core,
                        id,
                        Err(WireError::Unavailable {
                            shard: id.shard(),
                            reason: format!(
                                "checkout {id} is waiting at {} ({e}); retry the same key for its outcome",
                                c.state.as_str()
                            ),
                        }),
                    );
                }
                if core.is_stopping() {
                    return Err(e);
                }
                glommio::timer::sleep(wait).await;
                wait = (wait * 2).min(SAGA_BACKOFF_MAX);
                if let Ok(now) = read_checkout(core, id).await {
                    c = now;
                }
            }
        }
    }
}

/// The warehouses configured with a location, nearest `to` first (all of
/// them in configuration order when `to` has no location).
fn nearest_warehouses(config: &CheckoutConfig, to: &Address) -> Vec<String> {
    let mut ranked: Vec<(u64, usize, &str)> = config
        .warehouses
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let km = distance_to(config, to, &w.id).map_or(u64::MAX, |d| d as u64);
            (km, i, w.id.as_str())
        })
        .collect();
    ranked.sort();
    ranked
        .into_iter()
        .take(reserva_engine::limits::WAREHOUSE_PREFERENCE_MAX)
        .map(|(_, _, id)| id.to_owned())
        .collect()
}

fn distance_to(config: &CheckoutConfig, to: &Address, warehouse: &str) -> Option<f64> {
    let (lat, lon) = (to.lat_e6?, to.lon_e6?);
    let w = config.warehouse(warehouse)?;
    Some(distance_km(
        f64::from(lat) / 1e6,
        f64::from(lon) / 1e6,
        w.lat,
        w.lon,
    ))
}

/// The round-1 hold request of every SKU shard of `c`.
fn hold_requests(config: &CheckoutConfig, c: &Checkout, keys: &Keys) -> Vec<(ShardId, Op)> {
    let hold = |shard: ShardId, lines: Vec<ReserveLine>, adopt, preference: Vec<String>| {
        (
            shard,
            commerce(
                Some(keys.key(format_args!("r:{shard}"))),
                CommerceCommand::CheckoutHold {
                    owner: c.user_id.clone(),
                    lines,
                    adopt,
                    ttl_ms: CHECKOUT_HOLD_TTL_MS,
                    warehouse_preference: preference,
                },
            ),
        )
    };
    if let CheckoutSource::Reservation(rid) = &c.source {
        return vec![hold(rid.shard(), Vec::new(), Some(*rid), Vec::new())];
    }
    let preference = nearest_warehouses(config, &c.ship_to);
    let mut groups: BTreeMap<ShardId, Vec<ReserveLine>> = BTreeMap::new();
    for line in &c.lines {
        groups
            .entry(shard_of(&line.sku))
            .or_default()
            .push(line.clone());
    }
    groups
        .into_iter()
        .map(|(shard, lines)| hold(shard, lines, None, preference.clone()))
        .collect()
}

/// What the holds of round 1 answered.
#[derive(Default)]
struct Held {
    holds: Vec<Hold>,
    prices: Vec<PricedLine>,
    lines: Vec<ReserveLine>,
    /// The first engine refusal (no stock, unknown SKU, ...), if any.
    refused: Option<EngineError>,
    /// The first other failure (a shard unavailable), if any.
    failed: Option<WireError>,
}

impl Held {
    fn from_answers(answers: Vec<OpResult>) -> Self {
        let mut held = Held::default();
        for a in answers {
            match a {
                Ok(Reply::Outcome(Outcome::Commerce(o))) => match *o {
                    CommerceOutcome::Held {
                        hold,
                        prices,
                        lines,
                    } => {
                        held.holds.push(hold);
                        held.prices.extend(prices);
                        held.lines.extend(lines);
                    }
                    other => {
                        held.failed.get_or_insert(WireError::invalid(format!(
                            "CheckoutHold answered {other:?}"
                        )));
                    }
                },
                Ok(other) => {
                    held.failed.get_or_insert(WireError::invalid(format!(
                        "CheckoutHold answered {other:?}"
                    )));
                }
                Err(WireError::Engine(e)) => {
                    held.refused.get_or_insert(e);
                }
                Err(e) => {
                    held.failed.get_or_insert(e);
                }
            }
        }
        held
    }

    fn ids(&self) -> impl Iterator<Item = reserva_engine::ids::ReservationId> + '_ {
        self.holds.iter().map(|h| h.reservation_id)
    }

    /// The order's total: one currency for every line, or the refusal.
    fn total(&self) -> Result<Money, EngineError> {
        let mut total: u64 = 0;
        let mut currency = None;
        for line in &self.lines {
            let Some(p) = self.prices.iter().find(|p| p.sku == line.sku) else {
                continue;
            };
            if *currency.get_or_insert(p.unit_price.currency) != p.unit_price.currency {
                return Err(EngineError::InvalidInput {
                    field: "prices".into(),
                    reason: "all lines of a checkout must share one currency".into(),
                });
            }
            total = total.saturating_add(p.unit_price.amount_minor * u64::from(line.qty));
        }
        Ok(Money {
            amount_minor: total,
            currency: currency.unwrap_or(reserva_engine::sm::NO_CURRENCY),
        })
    }
}

/// The two rounds of a checkout just begun: the holds (with the card's use
/// count) in parallel, the authorization, then the one record of the order.
async fn place(core: &Rc<Core>, c: &Checkout) -> Result<Checkout, WireError> {
    let s = sagas(core);
    let keys = Keys::of(c);
    let rules = s.config.fraud.clone();
    let mut ops = hold_requests(&s.config, c, &keys);
    let holds_sent = ops.len();
    if let PaymentMethod::Card { fingerprint, .. } = &c.payment.method {
        ops.push((
            card_shard(*fingerprint),
            commerce(
                Some(keys.key("card")),
                CommerceCommand::CardUse {
                    fingerprint: *fingerprint,
                    window_ms: rules.window_ms,
                },
            ),
        ));
    }
    let mut answers = call_all(core, ops).await;
    let card_answer = answers.split_off(holds_sent);
    let held = Held::from_answers(answers);
    core.pins.pin(held.ids());
    s.failpoint("checkout.held");
    let card_uses = match card_answer.into_iter().next() {
        None => Ok(0),
        Some(Ok(Reply::Outcome(Outcome::Commerce(o)))) => match *o {
            CommerceOutcome::CardUses { count } => Ok(count),
            other => Err(WireError::invalid(format!("CardUse answered {other:?}"))),
        },
        Some(Ok(other)) => Err(WireError::invalid(format!("CardUse answered {other:?}"))),
        Some(Err(e)) => Err(e),
    };
    if let Some(error) = held.refused.clone() {
        return give_up(core, c, &keys, &held, false, error).await;
    }
    if let Some(e) = held.failed.clone() {
        release_all(core, &keys, &held.holds).await?;
        return Err(e);
    }
    let card_uses = match card_uses {
        Ok(n) => n,
        Err(e) => {
            release_all(core, &keys, &held.holds).await?;
            return Err(e);
        }
    };
    let amount = match held.total() {
        Ok(a) => a,
        Err(error) => return give_up(core, c, &keys, &held, false, error).await,
    };
    // Scored here first, so that a checkout the rules reject never touches
    // the card; the record scores again and decides.
    let mut probe = c.clone();
    probe.payment.amount = amount;
    let rejected = core
        .with_shard(c.id.shard(), |shard| {
            shard.state().user(&c.user_id).map(|user| {
                reserva_engine::sm::fraud::score(&rules, now_ms(), &probe, user, card_uses).decision
                    == FraudDecision::Reject
            })
        })
        .flatten()
        .unwrap_or(false);
    let mut authorized = false;
    let auth_ref = match &c.payment.method {
        PaymentMethod::Card { token, .. } if !rejected => {
            let key = keys.key("auth");
            match provider(core, || s.cards.authorize(&key, token, amount)).await {
                Ok(r) => {
                    authorized = true;
                    r
                }
                Err(PaymentError::Declined { code }) => {
                    let error = EngineError::PaymentDeclined {
                        message: format!("the card ending {} was declined", last4(c)),
                        code,
                    };
                    return give_up(core, c, &keys, &held, false, error).await;
                }
                Err(PaymentError::Provider { message }) => {
                    let error = EngineError::PaymentFailed {
                        message: format!(
                            "{message} (after {} attempts)",
                            s.config.payment_attempts
                        ),
                    };
                    return give_up(core, c, &keys, &held, true, error).await;
                }
            }
        }
        _ => String::new(),
    };
    s.failpoint("checkout.provider_authorized");
    let place = CommerceCommand::CheckoutPlace {
        checkout_id: c.id,
        place: Box::new(Placement {
            estimates: estimates(&s.config, c, &held.holds),
            holds: held.holds.clone(),
            prices: held.prices.clone(),
            // The checkout's own lines (in its order), unless it adopted a
            // reservation: then the lines are what that reservation holds.
            lines: if c.lines.is_empty() {
                held.lines.clone()
            } else {
                c.lines.clone()
            },
            rules,
            card_uses,
            auth_ref,
        }),
    };
    match record(core, c, place).await {
        Ok(next) => Ok(next),
        Err(WireError::Engine(error)) => give_up(core, c, &keys, &held, authorized, error).await,
        Err(e) => Err(e),
    }
}

/// Undoes round 1 (and an authorization) of a checkout that will not be
/// placed, then records its failure.
async fn give_up(
    core: &Core,
    c: &Checkout,
    keys: &Keys,
    held: &Held,
    authorized: bool,
    error: EngineError,
) -> Result<Checkout, WireError> {
    if authorized && let PaymentMethod::Card { .. } = c.payment.method {
        cancel_authorization(core, keys).await?;
    }
    release_all(core, keys, &held.holds).await?;
    record(core, c, fail(c, error)).await
}

async fn cancel_authorization(core: &Core, keys: &Keys) -> Result<(), WireError> {
    let (key, auth_key) = (keys.key("void"), keys.key("auth"));
    provider(core, || sagas(core).cards.cancel(&key, &auth_key))
        .await
        .map_err(|e| WireError::Unavailable {
            shard: 0,
            reason: format!("cancelling an authorization failed: {e:?}"),
        })?;
    sagas(core).failpoint("checkout.provider_voided");
    Ok(())
}

async fn release_all(core: &Core, keys: &Keys, holds: &[Hold]) -> Result<(), WireError> {
    for h in holds {
        release_or_restock(core, keys, h).await?;
    }
    core.pins.unpin(holds.iter().map(|h| h.reservation_id));
    Ok(())
}

/// A checkout that was begun but whose coordinator stopped before its order
/// record: the holds it made (asked for again with the same keys: a hold
/// never made is made now) are released and its authorization cancelled.
async fn abandon(core: &Core, c: &Checkout) -> Result<CommerceCommand, WireError> {
    let keys = Keys::of(c);
    let answers = call_all(core, hold_requests(&sagas(core).config, c, &keys)).await;
    let held = Held::from_answers(answers);
    if let Some(e) = held.failed {
        return Err(e);
    }
    if let PaymentMethod::Card { .. } = c.payment.method {
        cancel_authorization(core, &keys).await?;
    }
    release_all(core, &keys, &held.holds).await?;
    tracing::info!(checkout = %c.id, "checkout interrupted before its order record; undone");
    Ok(fail(
        c,
        EngineError::CheckoutInterrupted { checkout_id: c.id },
    ))
}

/// A provider call: bounded per core, with a timeout, retried with the same
/// key while the provider fails.
async fn provider<T, F, Fut>(core: &Core, mut f: F) -> Result<T, PaymentError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PaymentError>>,
{
    let s = sagas(core);
    let attempts = s.config.payment_attempts;
    let timeout = s.config.payment_timeout;
    let mut wait = SAGA_BACKOFF_FIRST;
    let mut attempt = 1;
    loop {
        let permit =
            s.provider_slots
                .acquire_permit(1)
                .await
                .map_err(|e| PaymentError::Provider {
                    message: format!("provider slots closed: {e}"),
                })?;
        let r = futures_lite::future::or(f(), async {
            glommio::timer::sleep(timeout).await;
            Err(PaymentError::Provider {
                message: format!("timeout: no answer within {} ms", timeout.as_millis()),
            })
        })
        .await;
        drop(permit);
        match r {
            Err(PaymentError::Provider { message })
                if attempt < attempts && !core.is_stopping() =>
            {
                tracing::debug!(attempt, %message, "payment provider failed; retrying");
                attempt += 1;
                glommio::timer::sleep(wait).await;
                wait = (wait * 2).min(SAGA_BACKOFF_MAX);
            }
            r => return r,
        }
    }
}

fn last4(c: &Checkout) -> &str {
    match &c.payment.method {
        PaymentMethod::Card { last4, .. } => last4,
        _ => "",
    }
}

/// A delivery estimate per shipping warehouse of `holds`.
fn estimates(config: &CheckoutConfig, c: &Checkout, holds: &[Hold]) -> Vec<DeliveryEstimate> {
    let now = now_ms();
    let mut estimates: Vec<DeliveryEstimate> = Vec::new();
    for a in holds.iter().flat_map(|h| &h.allocations) {
        if estimates.iter().any(|e| e.warehouse == a.warehouse) {
            continue;
        }
        let km = distance_to(config, &c.ship_to, &a.warehouse);
        estimates.push(DeliveryEstimate {
            warehouse: a.warehouse.clone(),
            distance_km: km.map_or(0, |d| d as u32),
            estimated_at_ms: now + delivery_days(km) * 86_400_000,
        });
    }
    estimates
}

/// After the answer: deduct every hold (in parallel), capture the card (not
/// for review, not for cash on delivery; store credit is captured by the
/// recorded step), then settle.
async fn settle(core: &Core, c: &Checkout) -> Result<CommerceCommand, WireError> {
    let keys = Keys::of(c);
    core.pins.pin(c.holds.iter().map(|h| h.reservation_id));
    let ops = c
        .holds
        .iter()
        .map(|h| {
            (
                h.shard,
                commerce(
                    Some(keys.key(format_args!("c:{}", h.shard))),
                    CommerceCommand::HoldDeduct {
                        reservation_id: h.reservation_id,
                    },
                ),
            )
        })
        .collect();
    for r in call_all(core, ops).await {
        match r {
            Ok(_) => {}
            Err(WireError::Engine(error)) => {
                // A pinned hold is never expired; only a bug or a hand on
                // the data gets here. The order is cancelled by compensation.
                tracing::error!(checkout = %c.id, %error, "a hold under an order could not be deducted");
                return Ok(fail(c, error));
            }
            Err(e) => return Err(e),
        }
    }
    core.pins.unpin(c.holds.iter().map(|h| h.reservation_id));
    sagas(core).failpoint("checkout.deducted");
    let review = c
        .fraud
        .as_ref()
        .is_some_and(|f| f.decision == FraudDecision::Review);
    if !review && matches!(c.payment.method, PaymentMethod::Card { .. }) {
        let key = keys.key("capture");
        provider(core, || {
            sagas(core)
                .cards
                .capture(&key, &c.payment.auth_ref, c.payment.amount.amount_minor)
        })
        .await
        .map_err(|e| WireError::Unavailable {
            shard: c.id.shard(),
            reason: format!("capture failed: {e:?}"),
        })?;
        sagas(core).failpoint("checkout.provider_captured");
    }
    Ok(CommerceCommand::CheckoutSettle { checkout_id: c.id })
}

/// Compensation: void the card, give back every hold (release it, or
/// restock what a deduction took), then record the end.
async fn compensate(core: &Core, c: &Checkout) -> Result<CommerceCommand, WireError> {
    let keys = Keys::of(c);
    let card_touched = matches!(c.payment.method, PaymentMethod::Card { .. })
        && matches!(c.payment.status, PaymentStatus::Authorized);
    if card_touched {
        let key = keys.key("void");
        provider(core, || sagas(core).cards.void(&key, &c.payment.auth_ref))
            .await
            .map_err(|e| WireError::Unavailable {
                shard: c.id.shard(),
                reason: format!("void failed: {e:?}"),
            })?;
        sagas(core).failpoint("checkout.provider_voided");
    }
    release_all(core, &keys, &c.holds).await?;
    Ok(CommerceCommand::CheckoutCompensated { checkout_id: c.id })
}

/// Gives a hold back: releases it if live; if this checkout's deduction
/// already took it (the keyed deduction's stored answer says so), restocks
/// what it deducted; if it expired, nothing is left to do.
async fn release_or_restock(core: &Core, keys: &Keys, h: &Hold) -> Result<(), WireError> {
    let release = keyed(
        keys.key(format_args!("rel:{}", h.shard)),
        Command::Release {
            reservation_id: h.reservation_id,
        },
    );
    match call_retrying(core, h.shard, &release).await {
        Ok(_) => return Ok(()),
        Err(WireError::Engine(EngineError::UnknownReservation { .. })) => {}
        Err(e) => return Err(e),
    }
    // Not live: deducted by this checkout, or expired. The keyed deduction's
    // stored answer tells which (it cannot deduct anything: the hold is gone).
    let deduct = commerce(
        Some(keys.key(format_args!("c:{}", h.shard))),
        CommerceCommand::HoldDeduct {
            reservation_id: h.reservation_id,
        },
    );
    let allocations = match call_retrying(core, h.shard, &deduct).await {
        Ok(Reply::Outcome(Outcome::Commerce(o))) => match *o {
            CommerceOutcome::Deducted { allocations } => allocations,
            _ => return Ok(()),
        },
        Ok(_) | Err(WireError::Engine(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    for (i, a) in allocations.iter().enumerate() {
        let op = keyed(
            keys.key(format_args!("rs:{}:{i}", h.shard)),
            Command::Restock {
                sku: a.sku.clone(),
                warehouse: a.warehouse.clone(),
                qty: a.qty,
            },
        );
        match call_retrying(core, h.shard, &op).await {
            Ok(_) => {}
            Err(WireError::Engine(e)) => {
                tracing::error!(checkout = %keys.0, sku = %a.sku, error = %e, "restock during compensation refused");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Carries out the pending side effects of an order; answers the order afterwards.
async fn run_effects(core: &Rc<Core>, id: OrderId) -> Result<Order, WireError> {
    let shard = id.shard();
    let order = match call_retrying(core, shard, &Op::Query(Query::GetOrder { id })).await? {
        Reply::Order(o) => o,
        other => return Err(WireError::invalid(format!("GetOrder answered {other:?}"))),
    };
    let Some(f) = order.fulfilment.as_deref() else {
        return Ok(order);
    };
    let auth_ref = f.payment.auth_ref.clone();
    for effect in f.effects.iter().filter(|e| !e.done) {
        let key = effect.key(id);
        let done = match &effect.kind {
            EffectKind::Restock {
                sku,
                warehouse,
                qty,
            } => {
                let op = keyed(
                    key,
                    Command::Restock {
                        sku: sku.clone(),
                        warehouse: warehouse.clone(),
                        qty: *qty,
                    },
                );
                match call_retrying(core, shard_of(sku), &op).await {
                    Ok(_) => true,
                    Err(WireError::Engine(e)) => {
                        tracing::error!(order = %id, %sku, error = %e, "restock refused; effect dropped");
                        true
                    }
                    Err(e) => {
                        tracing::warn!(order = %id, error = %e, "restock failed; retried by the sweep");
                        false
                    }
                }
            }
            EffectKind::CardCapture { amount_minor } => provider_done(
                id,
                provider(core, || {
                    sagas(core).cards.capture(&key, &auth_ref, *amount_minor)
                })
                .await,
            ),
            EffectKind::CardVoid => provider_done(
                id,
                provider(core, || sagas(core).cards.void(&key, &auth_ref)).await,
            ),
            EffectKind::CardRefund { amount_minor } => provider_done(
                id,
                provider(core, || {
                    sagas(core).cards.refund(&key, &auth_ref, *amount_minor)
                })
                .await,
            ),
        };
        if !done {
            break;
        }
        call_retrying(
            core,
            shard,
            &commerce(
                None,
                CommerceCommand::EffectDone {
                    order_id: id,
                    seq: effect.seq,
                },
            ),
        )
        .await?;
    }
    match call_retrying(core, shard, &Op::Query(Query::GetOrder { id })).await? {
        Reply::Order(o) => Ok(o),
        other => Err(WireError::invalid(format!("GetOrder answered {other:?}"))),
    }
}

fn provider_done(order: OrderId, r: Result<(), PaymentError>) -> bool {
    match r {
        Ok(()) => true,
        Err(PaymentError::Declined { code }) => {
            tracing::error!(%order, %code, "payment provider refused an order effect; effect dropped");
            true
        }
        Err(PaymentError::Provider { message }) => {
            tracing::warn!(%order, %message, "payment provider failed; retried by the sweep");
            false
        }
    }
}

/// Periodically retries order effects that failed (the provider or a shard was down).
pub async fn sweep(core: Rc<Core>, every: Duration) {
    while !core.is_stopping() {
        glommio::timer::sleep(every).await;
        let (_, orders) = unfinished_work(&core);
        for id in orders {
            attach_effects(&core, id, None, None);
        }
    }
}

//! The checkout saga driver and the runner of orders' side effects.
//!
//! A checkout is driven by the core that owns the user's shard. The driver
//! reads the checkout's recorded state, does the next step's external work
//! (requests to SKU shards, the card's shard, the payment provider), then
//! records the step on the user's shard, and repeats until the checkout is
//! completed, in review, or fully compensated. Every external call carries an
//! idempotency key derived from the checkout (`{checkout}:r:{shard}`,
//! `{checkout}:auth`, ...), so a driver resumed after a crash repeats calls
//! without repeating their effects. Recorded steps are refused when sent
//! twice, so a step is recorded once.
//!
//! Callers of a checkout (the first request and any retry with the same
//! idempotency key) wait for its end. A restarted node resumes every
//! checkout that had not ended, and every order whose side effects
//! (restock, capture, void, refund) were queued but not done.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use futures_channel::oneshot;
use reserva_engine::ids::{CheckoutId, OrderId, ReturnId, ShardId, shard_of};
use reserva_engine::limits::TTL_MS_DEFAULT;
use reserva_engine::sm::{
    Address, Checkout, CheckoutSource, CheckoutState, Command, CommerceCommand, CommerceOutcome,
    DeliveryEstimate, EffectKind, EngineError, FraudDecision, Hold, Order, Outcome, PaymentMethod,
    PaymentStatus, PricedLine, Request, ReserveLine, Sku, card_shard,
};
use reserva_protocol::{Op, OpResult, Query, Reply, WireError};

use crate::checkout_config::{CheckoutConfig, delivery_days, distance_km};
use crate::core::{AnswerHook, Core, Pending, Scope, now_ms};
use crate::limits::{
    EFFECT_RUNNERS_PER_CORE_MAX, SAGA_BACKOFF_FIRST, SAGA_BACKOFF_MAX, SAGA_CALL_ATTEMPTS,
    SAGA_STEP_FAILURES_MAX, SAGA_WAITERS_MAX, SAGAS_PER_CORE_MAX,
};
use crate::payments::{CardProvider, PaymentError, SandboxCards};

/// Environment variable naming a failpoint at which the process aborts, as
/// a `kill -9` would stop it (crash tests). Names: `checkout.<state>` when a
/// driver first sees a checkout in that recorded state (`checkout.started`,
/// `checkout.reserved`, ..., `checkout.compensating`), and
/// `checkout.provider_authorized`, `checkout.provider_captured`,
/// `checkout.provider_voided` right after the provider answered and before
/// the step is recorded.
pub const FAILPOINT_ENV: &str = "RESERVA_FAILPOINT";

type Waiter = oneshot::Sender<OpResult>;
/// A caller of an order action, and the return its answer names.
type EffectWaiter = (Waiter, Option<ReturnId>);

/// Running checkout drivers and effect runners of one core.
pub struct Sagas {
    config: CheckoutConfig,
    cards: SandboxCards,
    checkouts: RefCell<HashMap<CheckoutId, Vec<Waiter>>>,
    effects: RefCell<HashMap<OrderId, Vec<EffectWaiter>>>,
    failpoint: Option<String>,
}

impl Sagas {
    /// Drivers configured by `config`.
    pub fn new(config: CheckoutConfig) -> Self {
        Sagas {
            cards: SandboxCards::new(config.payment_latency),
            config,
            checkouts: RefCell::new(HashMap::new()),
            effects: RefCell::new(HashMap::new()),
            failpoint: std::env::var(FAILPOINT_ENV).ok().filter(|s| !s.is_empty()),
        }
    }

    /// Whether a new checkout may start on this core.
    pub fn admits_checkout(&self) -> bool {
        self.checkouts.borrow().len() < SAGAS_PER_CORE_MAX
    }

    /// Checkouts being driven right now.
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

    /// A started checkout answers when its saga ends, an order action once
    /// its side effects are done; everything else at once.
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
}

fn is_checkout_begin(op: &Op) -> bool {
    matches!(op, Op::Mutate(r) if matches!(&r.command, Command::Commerce(c) if matches!(**c, CommerceCommand::CheckoutBegin { .. })))
}

/// Installs the checkout drivers of `core` as its answer hook.
pub fn install(core: &Core, config: CheckoutConfig) {
    core.set_hook(Rc::new(Sagas::new(config)));
}

/// The checkout drivers of `core` (installed at start-up by [`install`]).
fn sagas(core: &Core) -> &Sagas {
    let hook: &dyn std::any::Any = &**core
        .hook()
        .expect("the checkout drivers are installed before any request is served");
    hook.downcast_ref::<Sagas>()
        .expect("the answer hook of a core is the checkout drivers")
}

/// Checkouts that have not ended and orders with side effects not done, on
/// the shards `core` owns.
fn unfinished_work(core: &Core) -> (Vec<CheckoutId>, Vec<OrderId>) {
    let mut checkouts = Vec::new();
    let mut orders = Vec::new();
    core.for_each_shard(|shard| {
        let state = shard.state();
        checkouts.extend(
            state
                .checkouts()
                .filter(|c| !c.state.is_terminal())
                .map(|c| c.id),
        );
        orders.extend(state.orders_with_pending_effects());
    });
    (checkouts, orders)
}

/// Makes `reply` wait for the end of checkout `id`, starting its driver if none runs.
pub fn attach_checkout(core: &Rc<Core>, id: CheckoutId, reply: Option<Waiter>) {
    let mut running = sagas(core).checkouts.borrow_mut();
    if let Some(waiters) = running.get_mut(&id) {
        if let Some(tx) = reply {
            if waiters.len() >= SAGA_WAITERS_MAX {
                let _ = tx.send(Err(WireError::Overloaded {
                    retry_after_ms: 100,
                }));
            } else {
                waiters.push(tx);
            }
        }
        return;
    }
    running.insert(id, reply.into_iter().collect());
    drop(running);
    let core = core.clone();
    glommio::spawn_local(async move {
        let result = drive(&core, id).await;
        let waiters = sagas(&core)
            .checkouts
            .borrow_mut()
            .remove(&id)
            .unwrap_or_default();
        for tx in waiters {
            let _ = tx.send(result.clone());
        }
    })
    .detach();
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
/// effects not done, on the shards this core owns.
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
    for id in checkouts {
        attach_checkout(core, id, None);
    }
    for id in orders {
        attach_effects(core, id, None, None);
    }
}

/// Sends `op` to `shard` (on this core or another) and waits for the answer.
async fn call(core: &Core, shard: ShardId, op: Op) -> OpResult {
    let (tx, rx) = oneshot::channel();
    core.submit(
        shard,
        Pending {
            op,
            scope: Scope::Full,
            reply: Some(tx),
        },
    );
    rx.await.unwrap_or_else(|_| {
        Err(WireError::Unavailable {
            shard,
            reason: "request dropped".into(),
        })
    })
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
    let mut wait = SAGA_BACKOFF_FIRST;
    let mut attempt = 0;
    loop {
        let r = call(core, shard, op.clone()).await;
        match &r {
            Err(e)
                if e.is_retryable() && attempt + 1 < SAGA_CALL_ATTEMPTS && !core.is_stopping() =>
            {
                attempt += 1;
                glommio::timer::sleep(wait).await;
                wait = (wait * 2).min(SAGA_BACKOFF_MAX);
            }
            _ => return r,
        }
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
        _ => Ok(Reply::Outcome(Outcome::Commerce(Box::new(
            CommerceOutcome::CheckoutStep { checkout: c },
        )))),
    }
}

async fn drive(core: &Rc<Core>, id: CheckoutId) -> OpResult {
    let shard = id.shard();
    let mut failures = 0;
    let mut wait = SAGA_BACKOFF_FIRST;
    loop {
        let c = match call_retrying(core, shard, &Op::Query(Query::GetCheckout { id })).await {
            Ok(Reply::Checkout(c)) => *c,
            Ok(other) => {
                return Err(WireError::invalid(format!(
                    "GetCheckout answered {other:?}"
                )));
            }
            Err(e) => return Err(e),
        };
        if c.state.is_terminal() {
            return final_answer(c);
        }
        sagas(core).failpoint(&format!("checkout.{}", c.state.as_str()));
        let step = match c.state {
            CheckoutState::Started => reserve(core, &c).await,
            CheckoutState::Reserved => score(core, &c).await,
            CheckoutState::Scored => authorize(core, &c).await,
            CheckoutState::Authorized => Ok(create_order(&sagas(core).config, &c)),
            CheckoutState::OrderCreated => confirm(core, &c).await,
            CheckoutState::StockConfirmed => capture(core, &c).await,
            CheckoutState::Compensating => compensate(core, &c).await,
            CheckoutState::Completed | CheckoutState::InReview | CheckoutState::Failed => {
                return final_answer(c);
            }
        };
        let recorded = match step {
            Ok(step) => call_retrying(core, shard, &commerce(None, step)).await,
            Err(e) => Err(e),
        };
        match recorded {
            Ok(_) | Err(WireError::Engine(EngineError::CheckoutState { .. })) => {
                failures = 0;
                wait = SAGA_BACKOFF_FIRST;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(checkout = %id, state = c.state.as_str(), error = %e, "checkout step failed; retrying");
                if failures >= SAGA_STEP_FAILURES_MAX || core.is_stopping() {
                    return Err(WireError::Unavailable {
                        shard,
                        reason: format!(
                            "checkout {id} is paused at {} ({e}); it resumes on retry or restart",
                            c.state.as_str()
                        ),
                    });
                }
                glommio::timer::sleep(wait).await;
                wait = (wait * 2).min(SAGA_BACKOFF_MAX);
            }
        }
    }
}

/// Step 1: capture prices, hold every line on its SKU's shard (warehouses
/// by routing), or adopt the user's reservation.
async fn reserve(core: &Core, c: &Checkout) -> Result<CommerceCommand, WireError> {
    let fail = |error: EngineError| {
        Ok(CommerceCommand::CheckoutFail {
            checkout_id: c.id,
            error,
        })
    };
    let (lines, adopted) = match &c.source {
        CheckoutSource::Reservation(rid) => {
            let r = match call_retrying(
                core,
                rid.shard(),
                &Op::Query(Query::GetReservation { id: *rid }),
            )
            .await
            {
                Ok(Reply::Reservation(r)) => r,
                Ok(other) => {
                    return Err(WireError::invalid(format!(
                        "GetReservation answered {other:?}"
                    )));
                }
                Err(WireError::NotFound { .. }) => {
                    return fail(EngineError::UnknownReservation {
                        reservation_id: *rid,
                    });
                }
                Err(e) => return Err(e),
            };
            if r.owner != c.user_id {
                return fail(EngineError::InvalidInput {
                    field: "reservation_id".into(),
                    reason: "the reservation belongs to another user".into(),
                });
            }
            let mut lines: Vec<ReserveLine> = Vec::new();
            for a in &r.allocations {
                match lines.iter_mut().find(|l| l.sku == a.sku) {
                    Some(l) => l.qty += a.qty,
                    None => lines.push(ReserveLine {
                        sku: a.sku.clone(),
                        qty: a.qty,
                    }),
                }
            }
            let hold = Hold {
                shard: rid.shard(),
                reservation_id: *rid,
                allocations: r.allocations.clone(),
                expires_at_ms: r.expires_at_ms,
            };
            (lines, Some(hold))
        }
        _ => (c.lines.clone(), None),
    };
    // Prices (and stock, for routing) from each SKU's shard.
    let mut skus: Vec<Sku> = Vec::with_capacity(lines.len());
    for line in &lines {
        match call_retrying(
            core,
            shard_of(&line.sku),
            &Op::Query(Query::GetSku {
                sku: line.sku.clone(),
            }),
        )
        .await
        {
            Ok(Reply::Sku(s)) => skus.push(s),
            Ok(other) => return Err(WireError::invalid(format!("GetSku answered {other:?}"))),
            Err(WireError::NotFound { .. }) => {
                return fail(EngineError::UnknownSku {
                    sku: line.sku.clone(),
                });
            }
            Err(e) => return Err(e),
        }
    }
    let prices: Vec<PricedLine> = skus
        .iter()
        .map(|s| PricedLine {
            sku: s.sku.clone(),
            seller_id: s.seller_id.clone(),
            unit_price: s.price,
        })
        .collect();
    if let Some(hold) = adopted {
        return Ok(CommerceCommand::CheckoutReserved {
            checkout_id: c.id,
            holds: vec![hold],
            prices,
            lines,
        });
    }
    let preference = warehouse_preference(&sagas(core).config, &c.ship_to, &skus, &lines);
    let mut groups: BTreeMap<ShardId, Vec<ReserveLine>> = BTreeMap::new();
    for line in &lines {
        groups
            .entry(shard_of(&line.sku))
            .or_default()
            .push(line.clone());
    }
    let mut holds = Vec::with_capacity(groups.len());
    let mut failure = None;
    for (shard, group) in groups {
        let op = keyed(
            format!("{}:r:{shard}", c.id),
            Command::Reserve {
                owner: c.user_id.clone(),
                lines: group,
                ttl_ms: Some(TTL_MS_DEFAULT),
                warehouse_preference: preference.clone(),
            },
        );
        match call_retrying(core, shard, &op).await {
            Ok(Reply::Outcome(Outcome::Reserved {
                reservation_id,
                expires_at_ms,
                allocations,
            })) => holds.push(Hold {
                shard,
                reservation_id,
                allocations,
                expires_at_ms,
            }),
            Ok(other) => return Err(WireError::invalid(format!("Reserve answered {other:?}"))),
            Err(WireError::Engine(e)) => {
                failure = Some(e);
                break;
            }
            Err(e) => return Err(e),
        }
    }
    let Some(error) = failure else {
        return Ok(CommerceCommand::CheckoutReserved {
            checkout_id: c.id,
            holds,
            prices,
            lines,
        });
    };
    // All or nothing: give back what was held before recording the failure.
    for h in &holds {
        release_or_restock(core, c.id, h).await?;
    }
    fail(error)
}

/// Warehouses in the order every shard should try them: those that can ship
/// the most lines whole first (fewer split shipments), then the nearest to
/// the address (when both locations are known).
fn warehouse_preference(
    config: &CheckoutConfig,
    to: &Address,
    skus: &[Sku],
    lines: &[ReserveLine],
) -> Vec<String> {
    let mut candidates: Vec<(usize, u64, String)> = Vec::new();
    for sku in skus {
        for w in &sku.warehouses {
            if candidates.iter().any(|(_, _, id)| *id == w.warehouse) {
                continue;
            }
            let whole = lines
                .iter()
                .filter(|l| {
                    skus.iter()
                        .find(|s| s.sku == l.sku)
                        .and_then(|s| s.warehouse(&w.warehouse))
                        .is_some_and(|ws| ws.available() >= u64::from(l.qty))
                })
                .count();
            let km = distance_to(config, to, &w.warehouse).map_or(u64::MAX, |d| d as u64);
            candidates.push((whole, km, w.warehouse.clone()));
        }
    }
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    candidates
        .into_iter()
        .filter(|(whole, _, _)| *whole > 0)
        .take(reserva_engine::limits::WAREHOUSE_PREFERENCE_MAX)
        .map(|(_, _, id)| id)
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

/// Step 2: count the card's use on its shard, then score on the user's shard.
async fn score(core: &Core, c: &Checkout) -> Result<CommerceCommand, WireError> {
    let rules = sagas(core).config.fraud.clone();
    let card_uses = match &c.payment.method {
        PaymentMethod::Card { fingerprint, .. } => {
            let op = commerce(
                Some(format!("{}:card", c.id)),
                CommerceCommand::CardUse {
                    fingerprint: *fingerprint,
                    window_ms: rules.window_ms,
                },
            );
            match call_retrying(core, card_shard(*fingerprint), &op).await? {
                Reply::Outcome(Outcome::Commerce(o)) => match *o {
                    CommerceOutcome::CardUses { count } => count,
                    other => return Err(WireError::invalid(format!("CardUse answered {other:?}"))),
                },
                other => return Err(WireError::invalid(format!("CardUse answered {other:?}"))),
            }
        }
        _ => 0,
    };
    Ok(CommerceCommand::CheckoutScore {
        checkout_id: c.id,
        rules,
        card_uses,
    })
}

/// Retries a provider call while it fails with a provider error.
async fn with_attempts<T, F, Fut>(core: &Core, attempts: u32, mut f: F) -> Result<T, PaymentError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PaymentError>>,
{
    let mut wait = SAGA_BACKOFF_FIRST;
    let mut attempt = 1;
    loop {
        match f().await {
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

/// Step 3: authorize the payment (store credit is held by the recorded step itself).
async fn authorize(core: &Core, c: &Checkout) -> Result<CommerceCommand, WireError> {
    let auth_ref = match &c.payment.method {
        PaymentMethod::Card { token, .. } => {
            let key = format!("{}:auth", c.id);
            let attempts = sagas(core).config.payment_attempts;
            match with_attempts(core, attempts, || {
                sagas(core).cards.authorize(&key, token, c.payment.amount)
            })
            .await
            {
                Ok(r) => r,
                Err(PaymentError::Declined { code }) => {
                    return Ok(CommerceCommand::CheckoutFail {
                        checkout_id: c.id,
                        error: EngineError::PaymentDeclined {
                            message: format!("the card ending {} was declined", last4(c)),
                            code,
                        },
                    });
                }
                Err(PaymentError::Provider { message }) => {
                    return Ok(CommerceCommand::CheckoutFail {
                        checkout_id: c.id,
                        error: EngineError::PaymentFailed {
                            message: format!("{message} (after {attempts} attempts)"),
                        },
                    });
                }
            }
        }
        PaymentMethod::StoreCredit | PaymentMethod::CashOnDelivery => String::new(),
    };
    sagas(core).failpoint("checkout.provider_authorized");
    Ok(CommerceCommand::CheckoutAuthorized {
        checkout_id: c.id,
        auth_ref,
    })
}

fn last4(c: &Checkout) -> &str {
    match &c.payment.method {
        PaymentMethod::Card { last4, .. } => last4,
        _ => "",
    }
}

/// Step 4: the order, with a delivery estimate per shipping warehouse.
fn create_order(config: &CheckoutConfig, c: &Checkout) -> CommerceCommand {
    let now = now_ms();
    let mut estimates: Vec<DeliveryEstimate> = Vec::new();
    for a in c.holds.iter().flat_map(|h| &h.allocations) {
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
    CommerceCommand::CheckoutCreateOrder {
        checkout_id: c.id,
        estimates,
    }
}

/// Step 5: confirm every hold (deducts the stock).
async fn confirm(core: &Core, c: &Checkout) -> Result<CommerceCommand, WireError> {
    for h in &c.holds {
        let op = keyed(
            format!("{}:c:{}", c.id, h.shard),
            Command::Confirm {
                reservation_id: h.reservation_id,
            },
        );
        match call_retrying(core, h.shard, &op).await {
            Ok(_) => {}
            Err(WireError::Engine(error)) => {
                return Ok(CommerceCommand::CheckoutFail {
                    checkout_id: c.id,
                    error,
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(CommerceCommand::CheckoutStockConfirmed { checkout_id: c.id })
}

/// Step 6: capture the card (not for review, not for cash on delivery; store
/// credit is captured by the recorded step).
async fn capture(core: &Core, c: &Checkout) -> Result<CommerceCommand, WireError> {
    let review = c
        .fraud
        .as_ref()
        .is_some_and(|f| f.decision == FraudDecision::Review);
    if !review && matches!(c.payment.method, PaymentMethod::Card { .. }) {
        let key = format!("{}:capture", c.id);
        let attempts = sagas(core).config.payment_attempts;
        with_attempts(core, attempts, || {
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
    Ok(CommerceCommand::CheckoutFinish { checkout_id: c.id })
}

/// Compensation: void the card, give back every hold (release it, or
/// restock what a confirm deducted), then record the end.
async fn compensate(core: &Core, c: &Checkout) -> Result<CommerceCommand, WireError> {
    let card_touched = matches!(c.payment.method, PaymentMethod::Card { .. })
        && matches!(c.payment.status, PaymentStatus::Authorized);
    if card_touched {
        let key = format!("{}:void", c.id);
        let attempts = sagas(core).config.payment_attempts;
        with_attempts(core, attempts, || {
            sagas(core).cards.void(&key, &c.payment.auth_ref)
        })
        .await
        .map_err(|e| WireError::Unavailable {
            shard: c.id.shard(),
            reason: format!("void failed: {e:?}"),
        })?;
        sagas(core).failpoint("checkout.provider_voided");
    }
    for h in &c.holds {
        release_or_restock(core, c.id, h).await?;
    }
    Ok(CommerceCommand::CheckoutCompensated { checkout_id: c.id })
}

/// Gives a hold back: releases it if live; if our confirm already deducted
/// it (the keyed confirm's stored answer says so), restocks what it deducted;
/// if it expired, nothing is left to do.
async fn release_or_restock(core: &Core, id: CheckoutId, h: &Hold) -> Result<(), WireError> {
    let release = keyed(
        format!("{id}:rel:{}", h.shard),
        Command::Release {
            reservation_id: h.reservation_id,
        },
    );
    match call_retrying(core, h.shard, &release).await {
        Ok(_) => return Ok(()),
        Err(WireError::Engine(EngineError::UnknownReservation { .. })) => {}
        Err(e) => return Err(e),
    }
    // Not live: confirmed by this checkout, or expired. The keyed confirm's
    // stored answer tells which (it cannot confirm anything: the reservation is gone).
    let confirm = keyed(
        format!("{id}:c:{}", h.shard),
        Command::Confirm {
            reservation_id: h.reservation_id,
        },
    );
    let allocations = match call_retrying(core, h.shard, &confirm).await {
        Ok(Reply::Outcome(Outcome::Confirmed { allocations })) => allocations,
        Ok(_) | Err(WireError::Engine(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    for (i, a) in allocations.iter().enumerate() {
        let op = keyed(
            format!("{id}:rs:{}:{i}", h.shard),
            Command::Restock {
                sku: a.sku.clone(),
                warehouse: a.warehouse.clone(),
                qty: a.qty,
            },
        );
        match call_retrying(core, h.shard, &op).await {
            Ok(_) => {}
            Err(WireError::Engine(e)) => {
                tracing::error!(checkout = %id, sku = %a.sku, error = %e, "restock during compensation refused");
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
    let attempts = sagas(core).config.payment_attempts;
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
                with_attempts(core, attempts, || {
                    sagas(core).cards.capture(&key, &auth_ref, *amount_minor)
                })
                .await,
            ),
            EffectKind::CardVoid => provider_done(
                id,
                with_attempts(core, attempts, || sagas(core).cards.void(&key, &auth_ref)).await,
            ),
            EffectKind::CardRefund { amount_minor } => provider_done(
                id,
                with_attempts(core, attempts, || {
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

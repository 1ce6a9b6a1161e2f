//! What one operation does on its shard: the ownership checks by the
//! records on the shard, the mutation (through `Shard::apply`) and the
//! queries. The core's round loop calls [`execute`] for each request at its
//! place in a round, without knowing what the request means.

use reserva_engine::shard::Shard;
use reserva_engine::sm::{Command, CommerceCommand, Order, ShardState};
use reserva_protocol::limits::LIST_ORDERS_LIMIT_MAX;
use reserva_protocol::{Op, OpResult, Query, Reply, ShardStats, WireError};

use crate::events::EventRing;
use crate::limits::SCAN_ORDERS_MAX;

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

/// One shard as an operation sees it.
pub struct ShardCtx<'a> {
    /// The core that owns it.
    pub core: u16,
    /// The shard.
    pub shard: &'a mut Shard,
    /// Its ring of recent user events.
    pub events: &'a EventRing,
    /// Requests waiting in its queue.
    pub queue_depth: usize,
}

/// The command of a mutation that may change a user's cart, wishlist or orders (what
/// the live-update ring records), cloned before it is applied.
pub fn watched_command(op: &Op) -> Option<Command> {
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
pub fn execute(ctx: ShardCtx<'_>, op: Op, scope: &Scope, now: u64) -> OpResult {
    let id = ctx.shard.id();
    if ctx.shard.is_poisoned() {
        return Err(WireError::Unavailable {
            shard: id,
            reason: "shard poisoned by a log failure; restart the node".into(),
        });
    }
    owns(ctx.shard.state(), &op, scope)?;
    match op {
        Op::Query(q) => query(&ctx, q),
        Op::Mutate(req) => ctx
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

fn query(ctx: &ShardCtx<'_>, q: Query) -> OpResult {
    let state = ctx.shard.state();
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
                core: ctx.core,
                lsn: ctx.shard.last_lsn(),
                durable_lsn: ctx.shard.durable_lsn(),
                clock_ms: state.clock_ms(),
                queue_depth: ctx.queue_depth as u32,
                skus: skus as u64,
                reservations: reservations as u64,
                orders: orders as u64,
                idempotency_records: idem as u64,
            }))
        }
        Query::SellerSkus { .. }
        | Query::SellerOrders { .. }
        | Query::SellerAnalytics { .. }
        | Query::UserEvents { .. } => crate::listings::answer(shard_view(ctx), q),
    }
}

fn shard_view<'a>(ctx: &'a ShardCtx<'_>) -> crate::listings::ShardView<'a> {
    crate::listings::ShardView {
        state: ctx.shard.state(),
        events: ctx.events,
        scan_orders_max: SCAN_ORDERS_MAX,
    }
}

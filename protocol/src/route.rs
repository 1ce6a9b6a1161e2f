//! Which shard an operation belongs to: the one rule client and server share.
//!
//! Inventory (SKU commands, reservations) is sharded by SKU; orders and carts
//! by user id. Minted ids (reservations, orders) carry their shard.

use reserva_engine::ids::{ShardId, shard_of};
use reserva_engine::limits::SHARD_COUNT;
use reserva_engine::sm::{Command, CommerceCommand, ReserveLine};

use crate::error::WireError;
use crate::limits::LIST_ORDERS_LIMIT_MAX;
use crate::message::{Op, Query};

/// The shard that must execute `op`.
///
/// Refuses with [`WireError::InvalidRequest`] what no shard can execute for a
/// client: `Tick` (server-internal), a reservation without lines or with lines
/// on two shards, a `ListOrders` whose `after` belongs to another shard or
/// whose `limit` is outside `1..=LIST_ORDERS_LIMIT_MAX`, a `ShardStats` of a
/// shard that does not exist.
pub fn route(op: &Op) -> Result<ShardId, WireError> {
    match op {
        Op::Mutate(request) => route_command(&request.command),
        Op::Query(query) => route_query(query),
    }
}

fn route_command(command: &Command) -> Result<ShardId, WireError> {
    match command {
        Command::UpsertSku { sku, .. }
        | Command::SetStock { sku, .. }
        | Command::AdjustStock { sku, .. }
        | Command::Restock { sku, .. } => Ok(shard_of(sku)),
        Command::Reserve { lines, .. } => route_lines(lines),
        Command::Release { reservation_id } | Command::Confirm { reservation_id } => {
            Ok(reservation_id.shard())
        }
        Command::CreateOrder { user_id, .. }
        | Command::CartSet { user_id, .. }
        | Command::CartRemove { user_id, .. }
        | Command::CartClear { user_id } => Ok(shard_of(user_id)),
        Command::SetOrderStatus { order_id, .. } => Ok(order_id.shard()),
        Command::Tick { .. } => Err(WireError::invalid(
            "Tick is issued by the server only; clients may not send it",
        )),
        Command::Commerce(c) => route_commerce(c),
    }
}

fn route_commerce(command: &CommerceCommand) -> Result<ShardId, WireError> {
    use CommerceCommand as C;
    match command {
        C::CheckoutBegin { user_id, .. }
        | C::CreditGrant { user_id, .. }
        | C::WishlistSet { user_id, .. }
        | C::WishlistRemove { user_id, .. } => Ok(shard_of(user_id)),
        C::Order { order_id, .. } | C::ReturnRequest { order_id, .. } => Ok(order_id.shard()),
        C::Return { return_id, .. } => Ok(return_id.shard()),
        C::CheckoutReserved { .. }
        | C::CheckoutScore { .. }
        | C::CheckoutAuthorized { .. }
        | C::CheckoutCreateOrder { .. }
        | C::CheckoutStockConfirmed { .. }
        | C::CheckoutFinish { .. }
        | C::CheckoutFail { .. }
        | C::CheckoutCompensated { .. }
        | C::CardUse { .. }
        | C::EffectDone { .. }
        | C::CheckoutHold { .. }
        | C::CheckoutPlace { .. }
        | C::HoldDeduct { .. }
        | C::CheckoutSettle { .. } => Err(WireError::invalid(
            "checkout saga steps are issued by the server only; clients may not send them",
        )),
    }
}

/// All lines of a reservation must live on one shard: the shard that holds
/// the stock also mints the reservation id.
fn route_lines(lines: &[ReserveLine]) -> Result<ShardId, WireError> {
    let Some(first) = lines.first() else {
        return Err(WireError::invalid("Reserve needs at least one line"));
    };
    let shard = shard_of(&first.sku);
    for line in &lines[1..] {
        let other = shard_of(&line.sku);
        if other != shard {
            return Err(WireError::invalid(format!(
                "Reserve lines span shards {shard} (sku {:?}) and {other} (sku {:?}); \
                 reserve each shard's lines separately",
                first.sku, line.sku
            )));
        }
    }
    Ok(shard)
}

fn route_query(query: &Query) -> Result<ShardId, WireError> {
    match query {
        Query::GetSku { sku } => Ok(shard_of(sku)),
        Query::GetReservation { id } => Ok(id.shard()),
        Query::GetOrder { id } => Ok(id.shard()),
        Query::ListOrders {
            user_id,
            after,
            limit,
        } => {
            let shard = shard_of(user_id);
            if *limit == 0 || *limit > LIST_ORDERS_LIMIT_MAX {
                return Err(WireError::invalid(format!(
                    "ListOrders limit {limit} is outside 1..={LIST_ORDERS_LIMIT_MAX}"
                )));
            }
            if let Some(after) = after
                && after.shard() != shard
            {
                return Err(WireError::invalid(format!(
                    "ListOrders after {after} belongs to shard {}, user {user_id:?} to shard {shard}",
                    after.shard()
                )));
            }
            Ok(shard)
        }
        Query::GetCart { user_id }
        | Query::GetCredit { user_id }
        | Query::GetWishlist { user_id } => Ok(shard_of(user_id)),
        Query::GetCheckout { id } => Ok(id.shard()),
        Query::GetReturn { id } => Ok(id.shard()),
        Query::ShardStats { shard }
        | Query::SellerSkus { shard, .. }
        | Query::SellerOrders { shard, .. }
        | Query::SellerAnalytics { shard, .. } => {
            if *shard >= SHARD_COUNT {
                return Err(WireError::invalid(format!(
                    "shard {shard} does not exist (0..{SHARD_COUNT})"
                )));
            }
            Ok(*shard)
        }
        Query::UserEvents { user_id, .. } => Ok(shard_of(user_id)),
    }
}

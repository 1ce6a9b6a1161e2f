//! Orders, carts and wishlists: the records kept on a user's shard.

use crate::ids::{OrderId, ShardId};
use crate::limits::*;
use crate::sm::checkout::push_status;
use crate::sm::command::Outcome;
use crate::sm::commerce::CommerceOutcome;
use crate::sm::error::{EngineError, invalid, limit_reached};
use crate::sm::inventory::check_money;
use crate::sm::state::{Map, ShardState};
use crate::sm::types::{CartItem, Money, Order, OrderLine, OrderStatus, StatusChange};
use crate::sm::validate::{self, Item};

impl ShardState {
    pub(crate) fn create_order(
        &mut self,
        now: u64,
        user_id: &str,
        lines: &[OrderLine],
        ship_to: &str,
    ) -> Result<Outcome, EngineError> {
        validate::key_on("user_id", user_id, self.shard)?;
        validate::count("lines", lines.len(), ORDER_LINES_MAX, "ORDER_LINES_MAX")?;
        validate::text("ship_to", ship_to, TEXT_BYTES_MAX, "TEXT_BYTES_MAX")?;
        let total = order_total(lines)?;
        if self.orders.len() >= ORDERS_MAX {
            return Err(limit_reached("ORDERS_MAX", ORDERS_MAX as u64));
        }
        let seq = ShardState::mint(&mut self.next_order_seq)?;
        let id = mint_order_id(self.shard, seq)?;
        let order = Order {
            id,
            user_id: user_id.to_owned(),
            lines: lines.to_vec(),
            total,
            ship_to: ship_to.to_owned(),
            status: OrderStatus::Placed,
            history: vec![StatusChange {
                status: OrderStatus::Placed,
                at_ms: now,
                note: String::new(),
            }],
            fulfilment: None,
        };
        self.orders.insert(id, order);
        self.orders_by_user
            .entry(user_id.to_owned())
            .or_default()
            .push(id);
        Ok(Outcome::OrderCreated {
            order_id: id,
            total,
        })
    }

    pub(crate) fn set_order_status(
        &mut self,
        now: u64,
        id: OrderId,
        status: OrderStatus,
        note: &str,
    ) -> Result<Outcome, EngineError> {
        validate::minted_on(id.shard(), self.shard)?;
        validate::text("note", note, TEXT_BYTES_MAX, "TEXT_BYTES_MAX")?;
        let order = self
            .orders
            .get_mut(&id)
            .ok_or(EngineError::UnknownOrder { order_id: id })?;
        // An order placed by checkout moves only by order actions, which
        // queue its restocks and payment calls and respect a running saga.
        if order.fulfilment.is_some() {
            return Err(invalid(
                "order_id",
                "the order was placed by checkout; change it with order actions",
            ));
        }
        let from = order.status;
        if !from.can_become(status) {
            return Err(EngineError::IllegalTransition {
                order_id: id,
                from,
                to: status,
            });
        }
        // Bounded: delivered <-> return_requested may repeat without end.
        push_status(order, status, now, note);
        Ok(Outcome::OrderStatusChanged { from, to: status })
    }

    pub(crate) fn cart_set(
        &mut self,
        user_id: &str,
        sku: &str,
        qty: u32,
    ) -> Result<Outcome, EngineError> {
        validate::key_on("user_id", user_id, self.shard)?;
        let items = list_set(&mut self.carts, CART_LIMITS, user_id, sku, qty)?;
        Ok(Outcome::Cart { items })
    }

    pub(crate) fn cart_remove(&mut self, user_id: &str, sku: &str) -> Result<Outcome, EngineError> {
        validate::key_on("user_id", user_id, self.shard)?;
        let items = list_remove(&mut self.carts, user_id, sku)?;
        Ok(Outcome::Cart { items })
    }

    pub(crate) fn cart_clear(&mut self, user_id: &str) -> Result<Outcome, EngineError> {
        validate::key_on("user_id", user_id, self.shard)?;
        self.carts.remove(user_id);
        Ok(Outcome::Cart { items: Vec::new() })
    }

    pub(crate) fn wishlist_set(
        &mut self,
        user_id: &str,
        sku: &str,
        qty: u32,
    ) -> Result<CommerceOutcome, EngineError> {
        validate::key_on("user_id", user_id, self.shard)?;
        let items = list_set(&mut self.wishlists, WISHLIST_LIMITS, user_id, sku, qty)?;
        Ok(CommerceOutcome::Wishlist { items })
    }

    pub(crate) fn wishlist_remove(
        &mut self,
        user_id: &str,
        sku: &str,
    ) -> Result<CommerceOutcome, EngineError> {
        validate::key_on("user_id", user_id, self.shard)?;
        let items = list_remove(&mut self.wishlists, user_id, sku)?;
        Ok(CommerceOutcome::Wishlist { items })
    }
}

/// The bounds of one kind of per-user item list (carts, wishlists).
#[derive(Clone, Copy)]
struct ListLimits {
    users: (&'static str, usize),
    items: (&'static str, usize),
}

const CART_LIMITS: ListLimits = ListLimits {
    users: ("CARTS_MAX", CARTS_MAX),
    items: ("CART_ITEMS_MAX", CART_ITEMS_MAX),
};

const WISHLIST_LIMITS: ListLimits = ListLimits {
    users: ("WISHLISTS_MAX", WISHLISTS_MAX),
    items: ("WISHLIST_ITEMS_MAX", WISHLIST_ITEMS_MAX),
};

/// Sets `sku` to `qty` in the user's list (adding it if absent); the list afterwards.
fn list_set(
    lists: &mut Map<String, Vec<CartItem>>,
    limits: ListLimits,
    user_id: &str,
    sku: &str,
    qty: u32,
) -> Result<Vec<CartItem>, EngineError> {
    validate::id("sku", sku)?;
    validate::qty("qty", qty)?;
    let (users_name, users_max) = limits.users;
    if !lists.contains_key(user_id) && lists.len() >= users_max {
        return Err(limit_reached(users_name, users_max as u64));
    }
    let (items_name, items_max) = limits.items;
    let items = lists.entry(user_id.to_owned()).or_default();
    match items.binary_search_by(|i| i.sku.as_str().cmp(sku)) {
        Ok(i) => items[i].qty = qty,
        Err(i) => {
            if items.len() >= items_max {
                // Not empty (the maximum is at least 1), so nothing to undo.
                return Err(limit_reached(items_name, items_max as u64));
            }
            items.insert(
                i,
                CartItem {
                    sku: sku.to_owned(),
                    qty,
                },
            );
        }
    }
    Ok(items.clone())
}

/// Removes `sku` from the user's list (a no-op if absent); the list afterwards.
fn list_remove(
    lists: &mut Map<String, Vec<CartItem>>,
    user_id: &str,
    sku: &str,
) -> Result<Vec<CartItem>, EngineError> {
    validate::id("sku", sku)?;
    let Some(items) = lists.get_mut(user_id) else {
        return Ok(Vec::new());
    };
    if let Ok(i) = items.binary_search_by(|i| i.sku.as_str().cmp(sku)) {
        items.remove(i);
    }
    let left = items.clone();
    if left.is_empty() {
        lists.remove(user_id);
    }
    Ok(left)
}

fn mint_order_id(shard: ShardId, seq: u64) -> Result<OrderId, EngineError> {
    OrderId::new(shard, seq).ok_or(limit_reached("SEQUENCE_MAX", SEQUENCE_MAX))
}

/// Validates the lines and sums them; all lines must share one currency.
fn order_total(lines: &[OrderLine]) -> Result<Money, EngineError> {
    let currency = lines[0].unit_price.currency;
    let mut total: u64 = 0;
    for (i, line) in lines.iter().enumerate() {
        validate::id(Item::field("lines", i, "sku"), &line.sku)?;
        validate::id(Item::field("lines", i, "warehouse"), &line.warehouse)?;
        validate::qty(Item::field("lines", i, "qty"), line.qty)?;
        check_money(Item::field("lines", i, "unit_price"), line.unit_price)?;
        if line.unit_price.currency != currency {
            return Err(invalid(
                format!("{}.currency", Item::field("lines", i, "unit_price")),
                "all lines of an order must share one currency",
            ));
        }
        // Cannot overflow: bounded by PRICE_MINOR_MAX * LINE_QTY_MAX * ORDER_LINES_MAX (see limits).
        total += line.unit_price.amount_minor * u64::from(line.qty);
    }
    Ok(Money {
        amount_minor: total,
        currency,
    })
}

//! Orders and carts: the records kept on a user's shard.

use crate::ids::{OrderId, ShardId};
use crate::limits::*;
use crate::sm::command::Outcome;
use crate::sm::error::{EngineError, invalid, limit_reached};
use crate::sm::inventory::check_money;
use crate::sm::state::ShardState;
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
        let from = order.status;
        if !from.can_become(status) {
            return Err(EngineError::IllegalTransition {
                order_id: id,
                from,
                to: status,
            });
        }
        order.status = status;
        order.history.push(StatusChange {
            status,
            at_ms: now,
            note: note.to_owned(),
        });
        Ok(Outcome::OrderStatusChanged { from, to: status })
    }

    pub(crate) fn cart_set(
        &mut self,
        user_id: &str,
        sku: &str,
        qty: u32,
    ) -> Result<Outcome, EngineError> {
        validate::key_on("user_id", user_id, self.shard)?;
        validate::id("sku", sku)?;
        validate::qty("qty", qty)?;
        if !self.carts.contains_key(user_id) && self.carts.len() >= CARTS_MAX {
            return Err(limit_reached("CARTS_MAX", CARTS_MAX as u64));
        }
        let items = self.carts.entry(user_id.to_owned()).or_default();
        match items.binary_search_by(|i| i.sku.as_str().cmp(sku)) {
            Ok(i) => items[i].qty = qty,
            Err(i) => {
                if items.len() >= CART_ITEMS_MAX {
                    return Err(limit_reached("CART_ITEMS_MAX", CART_ITEMS_MAX as u64));
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
        Ok(Outcome::Cart {
            items: self.cart(user_id).to_vec(),
        })
    }

    pub(crate) fn cart_remove(&mut self, user_id: &str, sku: &str) -> Result<Outcome, EngineError> {
        validate::key_on("user_id", user_id, self.shard)?;
        validate::id("sku", sku)?;
        if let Some(items) = self.carts.get_mut(user_id) {
            if let Ok(i) = items.binary_search_by(|i| i.sku.as_str().cmp(sku)) {
                items.remove(i);
            }
            if items.is_empty() {
                self.carts.remove(user_id);
            }
        }
        Ok(Outcome::Cart {
            items: self.cart(user_id).to_vec(),
        })
    }

    pub(crate) fn cart_clear(&mut self, user_id: &str) -> Result<Outcome, EngineError> {
        validate::key_on("user_id", user_id, self.shard)?;
        self.carts.remove(user_id);
        Ok(Outcome::Cart { items: Vec::new() })
    }
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

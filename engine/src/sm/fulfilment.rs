//! An order's life after checkout: review, packing, shipping, tracking,
//! delivery, cancellation, returns and refunds. Changes that need another
//! shard (restocking) or the payment provider (capture, void, refund) are
//! queued as [`Effect`]s on the order in the same step, and the server
//! carries them out.

use crate::ids::{OrderId, ReturnId};
use crate::limits::*;
use crate::sm::checkout::{check_lines, push_status};
use crate::sm::commerce::*;
use crate::sm::error::{EngineError, invalid, limit_reached};
use crate::sm::state::ShardState;
use crate::sm::types::{Money, Order, OrderStatus, ReserveLine};
use crate::sm::validate;

impl ShardState {
    fn order_for_change(&mut self, id: OrderId) -> Result<&mut Order, EngineError> {
        validate::minted_on(id.shard(), self.shard)?;
        self.orders
            .get_mut(&id)
            .ok_or(EngineError::UnknownOrder { order_id: id })
    }

    pub(crate) fn order_action(
        &mut self,
        now: u64,
        id: OrderId,
        action: &OrderAction,
    ) -> Result<CommerceOutcome, EngineError> {
        match action {
            OrderAction::Cancel { reason }
            | OrderAction::Track {
                description: reason,
            } => {
                validate::text("reason", reason, TEXT_BYTES_MAX, "TEXT_BYTES_MAX")?;
            }
            OrderAction::Ship {
                carrier,
                tracking_number,
            } => {
                validate::id("carrier", carrier)?;
                validate::id("tracking_number", tracking_number)?;
            }
            _ => {}
        }
        // A checkout still running owns its order until it ends.
        if let Some(checkout) = self
            .orders
            .get(&id)
            .and_then(|o| o.fulfilment.as_ref())
            .and_then(|f| self.checkouts.get(&f.checkout_id))
            && !checkout.state.is_terminal()
        {
            return Err(EngineError::CheckoutState {
                checkout_id: checkout.id,
                state: checkout.state.as_str().to_owned(),
            });
        }
        let order = self.order_for_change(id)?;
        let from = order.status;
        let to = match action {
            OrderAction::Cancel { .. } | OrderAction::RejectReview => OrderStatus::Cancelled,
            OrderAction::Pack => OrderStatus::Packed,
            OrderAction::Ship { .. } => OrderStatus::Shipped,
            OrderAction::Track { .. } => OrderStatus::Shipped,
            OrderAction::Deliver => OrderStatus::Delivered,
            OrderAction::ApproveReview => OrderStatus::Confirmed,
        };
        let legal = match action {
            OrderAction::Track { .. } => from == OrderStatus::Shipped,
            // `can_become` also allows return_requested -> delivered (a
            // rejected return), which only `Return { Reject }` may do.
            OrderAction::Deliver => from == OrderStatus::Shipped,
            OrderAction::ApproveReview | OrderAction::RejectReview => from == OrderStatus::Review,
            _ => from.can_become(to),
        };
        if !legal {
            return Err(EngineError::IllegalTransition {
                order_id: id,
                from,
                to,
            });
        }
        let effects_needed = match action {
            OrderAction::Cancel { .. } | OrderAction::RejectReview => order.lines.len() + 1,
            OrderAction::ApproveReview => 1,
            _ => 0,
        };
        if let Some(f) = &order.fulfilment {
            if f.effects.len() + effects_needed > ORDER_EFFECTS_MAX {
                return Err(limit_reached("ORDER_EFFECTS_MAX", ORDER_EFFECTS_MAX as u64));
            }
            if let OrderAction::Track { .. } = action
                && f.shipments
                    .iter()
                    .any(|s| s.events.len() >= TRACKING_EVENTS_MAX)
            {
                return Err(limit_reached(
                    "TRACKING_EVENTS_MAX",
                    TRACKING_EVENTS_MAX as u64,
                ));
            }
        }
        // Commit: nothing below can fail.
        let user_id = order.user_id.clone();
        let mut credit_refund: Option<Money> = None;
        let mut credit_settle: Option<(crate::ids::CheckoutId, bool)> = None;
        match action {
            OrderAction::Cancel { reason } => {
                let note = if reason.is_empty() {
                    "cancelled".to_owned()
                } else {
                    reason.clone()
                };
                // Every status that can be cancelled comes after the stock was deducted.
                queue_restock_all(order);
                if let Some(f) = order.fulfilment.as_deref_mut() {
                    match (&f.payment.method, f.payment.status) {
                        (PaymentMethod::Card { .. }, PaymentStatus::Captured) => {
                            let refund = f.payment.captured_minor - f.payment.refunded_minor;
                            f.payment.refunded_minor += refund;
                            queue(
                                f,
                                EffectKind::CardRefund {
                                    amount_minor: refund,
                                },
                            );
                        }
                        (PaymentMethod::Card { .. }, PaymentStatus::Authorized) => {
                            f.payment.status = PaymentStatus::Voided;
                            queue(f, EffectKind::CardVoid);
                        }
                        (PaymentMethod::StoreCredit, PaymentStatus::Captured) => {
                            let refund = f.payment.captured_minor - f.payment.refunded_minor;
                            f.payment.refunded_minor += refund;
                            credit_refund = Some(Money {
                                amount_minor: refund,
                                currency: f.payment.amount.currency,
                            });
                        }
                        (PaymentMethod::StoreCredit, PaymentStatus::Authorized) => {
                            f.payment.status = PaymentStatus::Voided;
                            credit_settle = Some((f.checkout_id, false));
                        }
                        (PaymentMethod::CashOnDelivery, PaymentStatus::Authorized) => {
                            f.payment.status = PaymentStatus::Voided;
                        }
                        _ => {}
                    }
                }
                push_status(order, OrderStatus::Cancelled, now, &note);
            }
            OrderAction::RejectReview => {
                queue_restock_all(order);
                if let Some(f) = order.fulfilment.as_deref_mut()
                    && f.payment.status == PaymentStatus::Authorized
                {
                    f.payment.status = PaymentStatus::Voided;
                    match f.payment.method {
                        PaymentMethod::Card { .. } => queue(f, EffectKind::CardVoid),
                        PaymentMethod::StoreCredit => {
                            credit_settle = Some((f.checkout_id, false));
                        }
                        PaymentMethod::CashOnDelivery => {}
                    }
                }
                push_status(
                    order,
                    OrderStatus::Cancelled,
                    now,
                    "rejected after fraud review",
                );
            }
            OrderAction::ApproveReview => {
                if let Some(f) = order.fulfilment.as_deref_mut()
                    && f.payment.status == PaymentStatus::Authorized
                {
                    match f.payment.method {
                        PaymentMethod::Card { .. } => {
                            f.payment.status = PaymentStatus::Captured;
                            f.payment.captured_minor = f.payment.amount.amount_minor;
                            queue(
                                f,
                                EffectKind::CardCapture {
                                    amount_minor: f.payment.amount.amount_minor,
                                },
                            );
                        }
                        PaymentMethod::StoreCredit => {
                            f.payment.status = PaymentStatus::Captured;
                            f.payment.captured_minor = f.payment.amount.amount_minor;
                            credit_settle = Some((f.checkout_id, true));
                        }
                        PaymentMethod::CashOnDelivery => {}
                    }
                }
                push_status(
                    order,
                    OrderStatus::Confirmed,
                    now,
                    "approved after fraud review",
                );
            }
            OrderAction::Pack => push_status(order, OrderStatus::Packed, now, ""),
            OrderAction::Ship {
                carrier,
                tracking_number,
            } => {
                if let Some(f) = order.fulfilment.as_deref_mut() {
                    for s in &mut f.shipments {
                        s.carrier = carrier.clone();
                        s.tracking_number = tracking_number.clone();
                    }
                }
                push_status(
                    order,
                    OrderStatus::Shipped,
                    now,
                    &format!("{carrier} {tracking_number}"),
                );
            }
            OrderAction::Track { description } => {
                if let Some(f) = order.fulfilment.as_deref_mut() {
                    for s in &mut f.shipments {
                        s.events.push(TrackingEvent {
                            at_ms: now,
                            description: description.clone(),
                        });
                    }
                }
            }
            OrderAction::Deliver => {
                if let Some(f) = order.fulfilment.as_deref_mut()
                    && f.payment.method == PaymentMethod::CashOnDelivery
                    && f.payment.status == PaymentStatus::Authorized
                {
                    f.payment.status = PaymentStatus::Captured;
                    f.payment.captured_minor = f.payment.amount.amount_minor;
                }
                push_status(order, OrderStatus::Delivered, now, "");
            }
        }
        let order = order.clone();
        self.index_effects(&order);
        if let Some(amount) = credit_refund {
            self.credit_refund(&user_id, amount);
        }
        if let Some((checkout, capture)) = credit_settle {
            self.credit_settle(&user_id, checkout, capture);
        }
        Ok(CommerceOutcome::Order {
            order,
            return_id: None,
        })
    }

    pub(crate) fn return_request(
        &mut self,
        now: u64,
        id: OrderId,
        lines: &[ReserveLine],
        reason: &str,
    ) -> Result<CommerceOutcome, EngineError> {
        check_lines("lines", lines)?;
        validate::text("reason", reason, TEXT_BYTES_MAX, "TEXT_BYTES_MAX")?;
        let shard = self.shard;
        let order = self.order_for_change(id)?;
        if !matches!(
            order.status,
            OrderStatus::Delivered
                | OrderStatus::ReturnRequested
                | OrderStatus::Returned
                | OrderStatus::Refunded
        ) {
            return Err(EngineError::IllegalTransition {
                order_id: id,
                from: order.status,
                to: OrderStatus::ReturnRequested,
            });
        }
        let Some(f) = order.fulfilment.as_deref() else {
            return Err(invalid(
                "order_id",
                "only orders placed by checkout can be returned",
            ));
        };
        if f.returns.len() >= RETURNS_PER_ORDER_MAX {
            return Err(limit_reached(
                "RETURNS_PER_ORDER_MAX",
                RETURNS_PER_ORDER_MAX as u64,
            ));
        }
        for (i, line) in lines.iter().enumerate() {
            let ordered: u64 = order
                .lines
                .iter()
                .filter(|l| l.sku == line.sku)
                .map(|l| u64::from(l.qty))
                .sum();
            let returned: u64 = f
                .returns
                .iter()
                .filter(|r| r.status != ReturnStatus::Rejected)
                .flat_map(|r| &r.lines)
                .filter(|l| l.sku == line.sku)
                .map(|l| u64::from(l.qty))
                .sum();
            if u64::from(line.qty) + returned > ordered {
                return Err(invalid(
                    format!("lines[{i}].qty"),
                    format!(
                        "{} units of {:?} ordered, {returned} already being returned",
                        ordered, line.sku
                    ),
                ));
            }
        }
        let seq = ShardState::mint(&mut self.next_return_seq)?;
        let return_id =
            ReturnId::new(shard, seq).ok_or_else(|| limit_reached("SEQUENCE_MAX", SEQUENCE_MAX))?;
        let order = self
            .orders
            .get_mut(&id)
            .ok_or(EngineError::UnknownOrder { order_id: id })?;
        if let Some(f) = order.fulfilment.as_deref_mut() {
            f.returns.push(ReturnRecord {
                id: return_id,
                lines: lines.to_vec(),
                reason: reason.to_owned(),
                status: ReturnStatus::Requested,
                refund_minor: 0,
                requested_at_ms: now,
                updated_at_ms: now,
            });
        }
        if order.status == OrderStatus::Delivered {
            push_status(order, OrderStatus::ReturnRequested, now, reason);
        }
        let order = order.clone();
        self.returns.insert(return_id, id);
        Ok(CommerceOutcome::Order {
            order,
            return_id: Some(return_id),
        })
    }

    pub(crate) fn return_action(
        &mut self,
        now: u64,
        return_id: ReturnId,
        action: ReturnAction,
    ) -> Result<CommerceOutcome, EngineError> {
        validate::minted_on(return_id.shard(), self.shard)?;
        let order_id = *self
            .returns
            .get(&return_id)
            .ok_or(EngineError::UnknownReturn { return_id })?;
        let order = self.order_for_change(order_id)?;
        let unknown = EngineError::UnknownReturn { return_id };
        let f = order.fulfilment.as_deref().ok_or(unknown.clone())?;
        let r = f
            .returns
            .iter()
            .find(|r| r.id == return_id)
            .ok_or(unknown)?;
        let (from, to) = match action {
            ReturnAction::Approve => (ReturnStatus::Requested, ReturnStatus::Approved),
            ReturnAction::Reject => (ReturnStatus::Requested, ReturnStatus::Rejected),
            ReturnAction::Receive => (ReturnStatus::Approved, ReturnStatus::Received),
            ReturnAction::Refund => (ReturnStatus::Received, ReturnStatus::Refunded),
        };
        if r.status != from {
            return Err(EngineError::ReturnState {
                return_id,
                state: r.status.as_str().to_owned(),
            });
        }
        // Exactly the effects the action queues: a return line of a SKU
        // shipped from several warehouses restocks each of them.
        let restocks = match action {
            ReturnAction::Receive => plan_restocks(&r.lines, &order.lines, &f.effects),
            _ => Vec::new(),
        };
        let queued = restocks.len() + usize::from(action == ReturnAction::Refund);
        if f.effects.len() + queued > ORDER_EFFECTS_MAX {
            return Err(limit_reached("ORDER_EFFECTS_MAX", ORDER_EFFECTS_MAX as u64));
        }
        // Commit: nothing below can fail.
        let lines = r.lines.clone();
        let user_id = order.user_id.clone();
        let order_lines = order.lines.clone();
        let mut credit_refund = None;
        let f = order
            .fulfilment
            .as_deref_mut()
            .unwrap_or_else(|| unreachable!("checked above"));
        let Some(r) = f.returns.iter_mut().find(|r| r.id == return_id) else {
            unreachable!("checked above")
        };
        r.status = to;
        r.updated_at_ms = now;
        let mut order_status = None;
        match action {
            ReturnAction::Approve => {}
            ReturnAction::Reject => {
                let active = f
                    .returns
                    .iter()
                    .any(|r| matches!(r.status, ReturnStatus::Requested | ReturnStatus::Approved));
                if !active && order.status == OrderStatus::ReturnRequested {
                    order_status = Some((OrderStatus::Delivered, "return rejected"));
                }
            }
            ReturnAction::Receive => {
                for kind in restocks {
                    queue(f, kind);
                }
                if order.status == OrderStatus::ReturnRequested {
                    order_status = Some((OrderStatus::Returned, "return received"));
                }
            }
            ReturnAction::Refund => {
                let amount: u64 = lines
                    .iter()
                    .map(|line| {
                        let price = order_lines
                            .iter()
                            .find(|l| l.sku == line.sku)
                            .map_or(0, |l| l.unit_price.amount_minor);
                        price * u64::from(line.qty)
                    })
                    .sum();
                let amount = amount.min(f.payment.captured_minor - f.payment.refunded_minor);
                f.payment.refunded_minor += amount;
                if let Some(r) = f.returns.iter_mut().find(|r| r.id == return_id) {
                    r.refund_minor = amount;
                }
                match f.payment.method {
                    PaymentMethod::Card { .. } => queue(
                        f,
                        EffectKind::CardRefund {
                            amount_minor: amount,
                        },
                    ),
                    PaymentMethod::StoreCredit => {
                        credit_refund = Some(Money {
                            amount_minor: amount,
                            currency: f.payment.amount.currency,
                        });
                    }
                    // Cash goes back by the carrier or at a store; the amount is recorded.
                    PaymentMethod::CashOnDelivery => {}
                }
                if order.status == OrderStatus::Returned {
                    order_status = Some((OrderStatus::Refunded, "refunded"));
                }
            }
        }
        if let Some((status, note)) = order_status {
            push_status(order, status, now, note);
        }
        let order = order.clone();
        self.index_effects(&order);
        if let Some(amount) = credit_refund {
            self.credit_refund(&user_id, amount);
        }
        Ok(CommerceOutcome::Order {
            order,
            return_id: Some(return_id),
        })
    }

    pub(crate) fn effect_done(
        &mut self,
        id: OrderId,
        seq: u32,
    ) -> Result<CommerceOutcome, EngineError> {
        let order = self.order_for_change(id)?;
        let effect = order
            .fulfilment
            .as_deref_mut()
            .and_then(|f| f.effects.iter_mut().find(|e| e.seq == seq))
            .ok_or_else(|| invalid("seq", format!("order {id} has no effect {seq}")))?;
        effect.done = true;
        let pending = order
            .fulfilment
            .as_deref()
            .map_or(0, |f| f.effects.iter().filter(|e| !e.done).count() as u32);
        if pending == 0 {
            self.pending_effects.remove(&id);
        }
        Ok(CommerceOutcome::EffectMarked { pending })
    }
}

impl ShardState {
    fn index_effects(&mut self, order: &Order) {
        if order
            .fulfilment
            .as_deref()
            .is_some_and(Fulfilment::has_pending_effects)
        {
            self.pending_effects.insert(order.id);
        }
    }
}

fn queue(f: &mut Fulfilment, kind: EffectKind) {
    let seq = f.effects.last().map_or(0, |e| e.seq + 1);
    f.effects.push(Effect {
        seq,
        kind,
        done: false,
    });
}

/// The restocks receiving a return of `lines` needs: each unit goes back to
/// a warehouse that shipped it, in order-line order, skipping units earlier
/// returns already restocked there (`effects`). Returns never take more units
/// of a SKU than were ordered, so every unit finds a warehouse.
fn plan_restocks(
    lines: &[ReserveLine],
    order_lines: &[crate::sm::types::OrderLine],
    effects: &[Effect],
) -> Vec<EffectKind> {
    let restocked = |sku: &str, warehouse: &str, planned: &[EffectKind]| -> u64 {
        effects
            .iter()
            .map(|e| &e.kind)
            .chain(planned)
            .map(|k| match k {
                EffectKind::Restock {
                    sku: s,
                    warehouse: w,
                    qty,
                } if s == sku && w == warehouse => u64::from(*qty),
                _ => 0,
            })
            .sum()
    };
    let mut planned = Vec::new();
    for line in lines {
        let mut left = line.qty;
        for ol in order_lines.iter().filter(|l| l.sku == line.sku) {
            if left == 0 {
                break;
            }
            let shipped: u64 = order_lines
                .iter()
                .filter(|l| l.sku == ol.sku && l.warehouse == ol.warehouse)
                .map(|l| u64::from(l.qty))
                .sum();
            let open = shipped.saturating_sub(restocked(&ol.sku, &ol.warehouse, &planned));
            // `open` fits in u32 wherever it is smaller than `left`.
            let qty = u64::from(left).min(open) as u32;
            if qty == 0 {
                continue;
            }
            left -= qty;
            planned.push(EffectKind::Restock {
                sku: ol.sku.clone(),
                warehouse: ol.warehouse.clone(),
                qty,
            });
        }
    }
    planned
}

/// Queues a restock of every line of `order` (its stock was deducted).
fn queue_restock_all(order: &mut Order) {
    let lines = order.lines.clone();
    if let Some(f) = order.fulfilment.as_deref_mut() {
        for l in lines {
            queue(
                f,
                EffectKind::Restock {
                    sku: l.sku,
                    warehouse: l.warehouse,
                    qty: l.qty,
                },
            );
        }
    }
}

//! Answers to the per-shard legs of cross-shard listings (a seller's SKUs,
//! orders and sales) and to live-update reads. Each is bounded: result sizes
//! by the query's limit, order walks by `SCAN_ORDERS_MAX`.

use std::collections::BTreeMap;

use reserva_engine::ids::OrderId;
use reserva_engine::sm::queries::{contains_any, placed_at_ms, was_cancelled, was_returned};
use reserva_engine::sm::{Currency, Money, ShardState};
use reserva_protocol::limits::{
    LIST_ORDERS_LIMIT_MAX, SELLER_SKUS_LIMIT_MAX, SKU_FILTER_MAX, USER_EVENTS_LIMIT_MAX,
};
use reserva_protocol::{
    OpResult, OrderKey, Query, Reply, SalesSummary, SkuSales, SkuSummary, WireError,
};

use crate::events::EventRing;

/// What a listing reads on one shard.
pub struct ShardView<'a> {
    /// The shard's state.
    pub state: &'a ShardState,
    /// Its live-update ring.
    pub events: &'a EventRing,
    /// Orders one walk may examine.
    pub scan_orders_max: usize,
}

fn check_limit(limit: u32, max: u32) -> Result<usize, WireError> {
    if limit == 0 || limit > max {
        return Err(WireError::invalid(format!("limit must be in 1..={max}")));
    }
    Ok(limit as usize)
}

fn check_skus(skus: &[String]) -> Result<(), WireError> {
    if skus.len() > SKU_FILTER_MAX {
        return Err(WireError::invalid(format!(
            "{} skus exceed SKU_FILTER_MAX ({SKU_FILTER_MAX})",
            skus.len()
        )));
    }
    if !skus.windows(2).all(|w| w[0] < w[1]) {
        return Err(WireError::invalid("skus must be sorted and distinct"));
    }
    Ok(())
}

/// Answers a listing query on one shard. Other queries are invalid here.
pub fn answer(view: ShardView<'_>, q: Query) -> OpResult {
    match q {
        Query::SellerSkus {
            seller_id,
            available_max,
            limit,
            ..
        } => {
            let limit = check_limit(limit, SELLER_SKUS_LIMIT_MAX)?;
            let (found, truncated) = view.state.seller_skus(&seller_id, available_max, limit);
            let skus = found
                .into_iter()
                .map(|s| SkuSummary {
                    sku: s.sku.clone(),
                    title: s.title.clone(),
                    available: s.available(),
                    on_hand: s.warehouses.iter().map(|w| w.on_hand).sum(),
                })
                .collect();
            Ok(Reply::SellerSkus { skus, truncated })
        }
        Query::SellerOrders {
            skus,
            status,
            before,
            limit,
            ..
        } => {
            let limit = check_limit(limit, LIST_ORDERS_LIMIT_MAX)?;
            check_skus(&skus)?;
            seller_orders(&view, &skus, status, before, limit)
        }
        Query::SellerAnalytics {
            skus,
            from_ms,
            to_ms,
            ..
        } => {
            check_skus(&skus)?;
            if from_ms >= to_ms {
                return Err(WireError::invalid("from_ms must be before to_ms"));
            }
            Ok(Reply::SellerAnalytics(sales(&view, &skus, from_ms, to_ms)))
        }
        Query::UserEvents {
            user_id,
            after,
            limit,
        } => {
            let limit = check_limit(limit, USER_EVENTS_LIMIT_MAX)?;
            let (events, next, gap) = view.events.read(&user_id, after, limit);
            Ok(Reply::UserEvents { events, next, gap })
        }
        other => Err(WireError::invalid(format!(
            "not a listing query: {other:?}"
        ))),
    }
}

fn seller_orders(
    view: &ShardView<'_>,
    skus: &[String],
    status: Option<reserva_engine::sm::OrderStatus>,
    before: Option<OrderKey>,
    limit: usize,
) -> OpResult {
    let state = view.state;
    let start = match before {
        Some(k) => state.last_seq_before(k.at_ms, k.id),
        None => state.last_order_seq(),
    };
    let mut orders = Vec::new();
    let mut examined = 0usize;
    let mut last: Option<OrderKey> = None;
    for o in state.orders_down_from(start, view.scan_orders_max) {
        examined += 1;
        last = Some(OrderKey {
            at_ms: placed_at_ms(o),
            id: o.id,
        });
        if status.is_none_or(|s| o.status == s) && contains_any(o, skus) {
            orders.push(o.clone());
            if orders.len() == limit {
                break;
            }
        }
    }
    // Done when the walk reached sequence 1 without stopping early.
    let reached_end = last.is_none_or(|k| k.id.sequence() <= 1);
    let stopped_early = orders.len() == limit || examined == view.scan_orders_max;
    let frontier = if reached_end {
        None
    } else if stopped_early {
        last
    } else {
        None
    };
    Ok(Reply::SellerOrders { orders, frontier })
}

fn sales(view: &ShardView<'_>, skus: &[String], from_ms: u64, to_ms: u64) -> SalesSummary {
    let state = view.state;
    let start = state.last_seq_before(to_ms, OrderId(0));
    let mut summary = SalesSummary::default();
    let mut per_sku: BTreeMap<(String, Currency), (u64, u64)> = BTreeMap::new();
    let mut examined = 0usize;
    let mut reached_from = false;
    for o in state.orders_down_from(start, view.scan_orders_max) {
        examined += 1;
        if placed_at_ms(o) < from_ms {
            reached_from = true;
            break;
        }
        if was_cancelled(o) || !contains_any(o, skus) {
            continue;
        }
        summary.orders += 1;
        if was_returned(o) {
            summary.returns += 1;
        }
        for l in o
            .lines
            .iter()
            .filter(|l| skus.binary_search(&l.sku).is_ok())
        {
            let e = per_sku
                .entry((l.sku.clone(), l.unit_price.currency))
                .or_default();
            e.0 += u64::from(l.qty);
            e.1 =
                e.1.saturating_add(l.unit_price.amount_minor * u64::from(l.qty));
        }
    }
    summary.truncated =
        !reached_from && examined == view.scan_orders_max && start > examined as u64;
    summary.skus = per_sku
        .into_iter()
        .map(|((sku, currency), (units, amount_minor))| SkuSales {
            sku,
            units,
            revenue: Money {
                amount_minor,
                currency,
            },
        })
        .collect();
    summary
}

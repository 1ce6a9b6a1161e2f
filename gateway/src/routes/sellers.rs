//! A seller's cross-shard views: orders containing their SKUs, sales
//! analytics and low stock. Each is a scatter-gather over every shard.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use reserva_protocol::engine::{Currency, Money, Order, OrderId};
use reserva_protocol::limits::{SELLER_SKUS_LIMIT_MAX, SKU_FILTER_MAX};
use reserva_protocol::{OrderKey, Query, Reply, SkuSummary};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::App;
use crate::caller::Caller;
use crate::extract::{PathParams, QueryParams, check_id};
use crate::limits::{LOW_STOCK_RESULTS_MAX, TOP_SKUS};
use crate::model::{
    AnalyticsView, LowStockSku, LowStockView, MoneyJson, OrderPage, OrderView, SkuSalesView,
    parse_status,
};
use crate::problem::{ApiError, ApiResult, Problem};
use crate::routes::orders::{decode_cursor, encode_cursor, page_limit};
use crate::scatter::scatter;
use crate::time::rfc3339;

/// Every SKU of `seller` (up to `SKU_FILTER_MAX`), sorted, and whether the
/// list is incomplete (a shard missing or too many SKUs).
async fn seller_skus(
    app: &App,
    seller: &str,
    available_max: Option<u64>,
) -> ApiResult<(Vec<SkuSummary>, bool)> {
    let g = scatter(app, |shard| Query::SellerSkus {
        shard,
        seller_id: seller.to_owned(),
        available_max,
        limit: SELLER_SKUS_LIMIT_MAX,
    })
    .await?;
    let mut incomplete = g.missing > 0;
    let mut skus = Vec::new();
    for (_, reply) in g.answers {
        if let Reply::SellerSkus { skus: s, truncated } = reply {
            incomplete |= truncated;
            skus.extend(s);
        }
    }
    skus.sort_by(|a, b| a.sku.cmp(&b.sku));
    Ok((skus, incomplete))
}

/// The sorted SKU ids of `seller` for an order filter, and whether the
/// filter is incomplete.
async fn sku_filter(app: &App, seller: &str) -> ApiResult<(Vec<String>, bool)> {
    let (skus, mut incomplete) = seller_skus(app, seller, None).await?;
    let mut ids: Vec<String> = skus.into_iter().map(|s| s.sku).collect();
    if ids.len() > SKU_FILTER_MAX {
        ids.truncate(SKU_FILTER_MAX);
        incomplete = true;
    }
    Ok((ids, incomplete))
}

/// Query of `GET /v1/sellers/{seller_id}/orders`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct SellerOrdersQuery {
    /// Only orders in this status (placed, confirmed, packed, shipped,
    /// delivered, cancelled, return_requested, returned, refunded).
    pub status: Option<String>,
    /// Page size, 1..=100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn order_key(o: &Order) -> OrderKey {
    OrderKey {
        at_ms: reserva_protocol::engine::queries::placed_at_ms(o),
        id: o.id,
    }
}

fn parse_seller_cursor(c: &str) -> ApiResult<OrderKey> {
    let mut buf = String::new();
    let text = decode_cursor(c, "s1:", &mut buf)?;
    let bad = || ApiError::invalid("malformed cursor");
    let (at, id) = text.split_once(':').ok_or_else(bad)?;
    Ok(OrderKey {
        at_ms: at.parse().map_err(|_| bad())?,
        id: id.parse::<OrderId>().map_err(|_| bad())?,
    })
}

/// Orders that contain the seller's SKUs, newest first, from every shard.
#[utoipa::path(get, path = "/v1/sellers/{seller_id}/orders", tag = "sellers",
    params(("seller_id" = String, Path, description = "Seller id"), SellerOrdersQuery),
    responses(
        (status = 200, body = OrderPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn orders(
    State(app): State<App>,
    caller: Caller,
    PathParams(seller_id): PathParams<String>,
    QueryParams(q): QueryParams<SellerOrdersQuery>,
) -> ApiResult<Json<OrderPage>> {
    check_id("seller_id", &seller_id)?;
    caller.require_seller(&seller_id)?;
    let limit = page_limit(q.limit)?;
    let status = q.status.as_deref().map(parse_status).transpose()?;
    let before = q.cursor.as_deref().map(parse_seller_cursor).transpose()?;
    let (skus, mut partial) = sku_filter(&app, &seller_id).await?;
    if skus.is_empty() {
        return Ok(Json(OrderPage {
            orders: Vec::new(),
            next_cursor: None,
            partial,
        }));
    }
    let g = scatter(&app, |shard| Query::SellerOrders {
        shard,
        skus: skus.clone(),
        status,
        before,
        limit,
    })
    .await?;
    partial |= g.missing > 0;
    // Every shard has examined all orders at or above `bound`: those can be
    // listed; below it, some shard has not looked yet.
    let mut bound: Option<OrderKey> = None;
    let mut found: Vec<Order> = Vec::new();
    for (_, reply) in g.answers {
        if let Reply::SellerOrders { orders, frontier } = reply {
            found.extend(orders);
            if let Some(f) = frontier {
                bound = Some(bound.map_or(f, |b| b.max(f)));
            }
        }
    }
    found.sort_by_key(|o| std::cmp::Reverse(order_key(o)));
    found.retain(|o| bound.is_none_or(|b| order_key(o) >= b));
    let next = if found.len() > limit as usize {
        found.truncate(limit as usize);
        found.last().map(order_key)
    } else {
        bound
    };
    Ok(Json(OrderPage {
        orders: found.iter().map(OrderView::from).collect(),
        next_cursor: next.map(|k| encode_cursor(&format!("s1:{}:{}", k.at_ms, k.id))),
        partial,
    }))
}

/// Query of `GET /v1/sellers/{seller_id}/analytics`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct AnalyticsQuery {
    /// Start (Unix ms, inclusive); default `to` minus 30 days.
    #[param(minimum = 0)]
    pub from: Option<u64>,
    /// End (Unix ms, exclusive); default now.
    #[param(minimum = 0)]
    pub to: Option<u64>,
}

const THIRTY_DAYS_MS: u64 = 30 * 24 * 3600 * 1000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Units, revenue, orders, returns and top SKUs of a seller over a time range.
#[utoipa::path(get, path = "/v1/sellers/{seller_id}/analytics", tag = "sellers",
    params(("seller_id" = String, Path, description = "Seller id"), AnalyticsQuery),
    responses(
        (status = 200, body = AnalyticsView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn analytics(
    State(app): State<App>,
    caller: Caller,
    PathParams(seller_id): PathParams<String>,
    QueryParams(q): QueryParams<AnalyticsQuery>,
) -> ApiResult<Json<AnalyticsView>> {
    check_id("seller_id", &seller_id)?;
    caller.require_seller(&seller_id)?;
    let to = q.to.unwrap_or_else(|| now_ms().saturating_add(1));
    let from = q.from.unwrap_or_else(|| to.saturating_sub(THIRTY_DAYS_MS));
    if from >= to {
        return Err(ApiError::invalid("from must be before to"));
    }
    let (skus, mut partial) = sku_filter(&app, &seller_id).await?;
    let mut view = AnalyticsView {
        seller_id: seller_id.clone(),
        from: rfc3339(from),
        to: rfc3339(to),
        orders: 0,
        units: 0,
        returns: 0,
        revenue: Vec::new(),
        top_skus: Vec::new(),
        partial,
    };
    if skus.is_empty() {
        return Ok(Json(view));
    }
    let g = scatter(&app, |shard| Query::SellerAnalytics {
        shard,
        skus: skus.clone(),
        from_ms: from,
        to_ms: to,
    })
    .await?;
    partial |= g.missing > 0;
    let mut per_sku: BTreeMap<(String, Currency), (u64, u64)> = BTreeMap::new();
    for (_, reply) in g.answers {
        if let Reply::SellerAnalytics(s) = reply {
            view.orders += s.orders;
            view.returns += s.returns;
            partial |= s.truncated;
            for line in s.skus {
                let e = per_sku
                    .entry((line.sku, line.revenue.currency))
                    .or_default();
                e.0 += line.units;
                e.1 = e.1.saturating_add(line.revenue.amount_minor);
            }
        }
    }
    let mut revenue: BTreeMap<Currency, u64> = BTreeMap::new();
    let mut top: Vec<SkuSalesView> = Vec::new();
    for ((sku, currency), (units, amount)) in per_sku {
        view.units += units;
        *revenue.entry(currency).or_default() += amount;
        top.push(SkuSalesView {
            sku,
            units,
            revenue: Money {
                amount_minor: amount,
                currency,
            }
            .into(),
        });
    }
    top.sort_by(|a, b| b.units.cmp(&a.units).then_with(|| a.sku.cmp(&b.sku)));
    top.truncate(TOP_SKUS);
    view.top_skus = top;
    view.revenue = revenue
        .into_iter()
        .map(|(currency, amount_minor)| {
            MoneyJson::from(Money {
                amount_minor,
                currency,
            })
        })
        .collect();
    view.partial = partial;
    Ok(Json(view))
}

/// Query of `GET /v1/sellers/{seller_id}/low-stock`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct LowStockQuery {
    /// List SKUs with at most this many units available (default 5).
    #[param(minimum = 0)]
    pub threshold: Option<u64>,
}

/// The seller's SKUs with at most `threshold` units available, lowest first.
#[utoipa::path(get, path = "/v1/sellers/{seller_id}/low-stock", tag = "sellers",
    params(("seller_id" = String, Path, description = "Seller id"), LowStockQuery),
    responses(
        (status = 200, body = LowStockView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn low_stock(
    State(app): State<App>,
    caller: Caller,
    PathParams(seller_id): PathParams<String>,
    QueryParams(q): QueryParams<LowStockQuery>,
) -> ApiResult<Json<LowStockView>> {
    check_id("seller_id", &seller_id)?;
    caller.require_seller(&seller_id)?;
    let threshold = q.threshold.unwrap_or(5);
    let g = scatter(&app, |shard| Query::SellerSkus {
        shard,
        seller_id: seller_id.clone(),
        available_max: Some(threshold),
        limit: LOW_STOCK_RESULTS_MAX as u32,
    })
    .await?;
    let partial = g.missing > 0;
    let mut truncated = false;
    let mut skus: Vec<SkuSummary> = Vec::new();
    for (_, reply) in g.answers {
        if let Reply::SellerSkus {
            skus: s,
            truncated: t,
        } = reply
        {
            truncated |= t;
            skus.extend(s);
        }
    }
    skus.sort_by(|a, b| {
        a.available
            .cmp(&b.available)
            .then_with(|| a.sku.cmp(&b.sku))
    });
    if skus.len() > LOW_STOCK_RESULTS_MAX {
        skus.truncate(LOW_STOCK_RESULTS_MAX);
        truncated = true;
    }
    Ok(Json(LowStockView {
        seller_id,
        threshold,
        skus: skus
            .into_iter()
            .map(|s| LowStockSku {
                sku: s.sku,
                title: s.title,
                available: s.available,
                on_hand: s.on_hand,
            })
            .collect(),
        partial,
        truncated,
    }))
}

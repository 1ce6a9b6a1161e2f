//! Orders: reads, a user's listing, and lifecycle actions.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use reserva_protocol::engine::{Order, OrderAction, OrderId};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::App;
use crate::caller::Caller;
use crate::extract::{IdempotencyKey, JsonBody, PathParams, QueryParams, check_id};
use crate::limits::{PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};
use crate::model::{OrderPage, OrderView, Ship, Track};
use crate::problem::{ApiError, ApiResult, Problem};

/// Paging of a listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// Page size, 1..=100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Checks a page size.
pub(crate) fn page_limit(limit: Option<u32>) -> ApiResult<u32> {
    let limit = limit.unwrap_or(PAGE_LIMIT_DEFAULT);
    if limit == 0 || limit > PAGE_LIMIT_MAX {
        return Err(ApiError::invalid(format!(
            "limit must be in 1..={PAGE_LIMIT_MAX}"
        )));
    }
    Ok(limit)
}

/// An opaque cursor: the hex of a small text.
pub(crate) fn encode_cursor(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The text of a cursor made by [`encode_cursor`] with `prefix`.
pub(crate) fn decode_cursor<'a>(
    cursor: &str,
    prefix: &str,
    buf: &'a mut String,
) -> ApiResult<&'a str> {
    let bad = || ApiError::invalid("malformed cursor");
    if cursor.len() > 256 || !cursor.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes: Result<Vec<u8>, _> = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(cursor.get(i..i + 2).unwrap_or("zz"), 16))
        .collect();
    *buf = String::from_utf8(bytes.map_err(|_| bad())?).map_err(|_| bad())?;
    buf.strip_prefix(prefix).ok_or_else(bad)
}

fn parse_order_id(id: &str) -> ApiResult<OrderId> {
    check_id("order_id", id)?;
    id.parse()
        .map_err(|_| ApiError::not_found(format!("order {id:?} not found")))
}

/// Whether any line of `order` is a SKU of `seller`.
async fn seller_owns_any(app: &App, seller: &str, order: &Order) -> ApiResult<bool> {
    let skus: BTreeSet<&str> = order.lines.iter().map(|l| l.sku.as_str()).collect();
    for sku in skus {
        if let Some(s) = app.client().get_sku(sku).await?
            && s.seller_id == seller
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The order if the caller may see it (admin, its customer, a seller of one
/// of its SKUs); 404 otherwise, whether or not it exists.
pub(crate) async fn visible_order(app: &App, caller: &Caller, id: &str) -> ApiResult<Order> {
    caller.require_key()?;
    let oid = parse_order_id(id)?;
    let not_found = || ApiError::not_found(format!("order {id:?} not found"));
    let order = app.client().get_order(oid).await?.ok_or_else(not_found)?;
    if caller.is_admin() || caller.customer() == Some(order.user_id.as_str()) {
        return Ok(order);
    }
    if let Some(seller) = caller.seller()
        && seller_owns_any(app, seller, &order).await?
    {
        return Ok(order);
    }
    Err(not_found())
}

/// An order with its status history (another user's is 404).
#[utoipa::path(get, path = "/v1/orders/{order_id}", tag = "orders",
    params(("order_id" = String, Path, description = "Order id (ord_<shard>_<seq>)")),
    responses(
        (status = 200, body = OrderView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn get_order(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<OrderView>> {
    let order = visible_order(&app, &caller, &id).await?;
    Ok(Json(OrderView::from(&order)))
}

/// A user's orders, oldest first, a page at a time.
#[utoipa::path(get, path = "/v1/users/{user_id}/orders", tag = "orders",
    params(("user_id" = String, Path, description = "User id"), PageQuery),
    responses(
        (status = 200, body = OrderPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn list_user_orders(
    State(app): State<App>,
    caller: Caller,
    PathParams(user_id): PathParams<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Json<OrderPage>> {
    check_id("user_id", &user_id)?;
    caller.require_user(&user_id)?;
    let limit = page_limit(q.limit)?;
    let after = match &q.cursor {
        None => None,
        Some(c) => {
            let mut buf = String::new();
            let text = decode_cursor(c, "u1:", &mut buf)?;
            let id: OrderId = text
                .parse()
                .map_err(|_| ApiError::invalid("malformed cursor"))?;
            if id.shard() != reserva_protocol::engine::shard_of(&user_id) {
                return Err(ApiError::invalid(
                    "the cursor belongs to another user's listing",
                ));
            }
            Some(id)
        }
    };
    let (orders, next) = app
        .client()
        .list_orders(user_id.as_str(), after, limit)
        .await?;
    Ok(Json(OrderPage {
        orders: orders.iter().map(OrderView::from).collect(),
        next_cursor: next.map(|id| encode_cursor(&format!("u1:{id}"))),
        partial: false,
    }))
}

/// Acts on an order. Admin: everything; a seller of one of its SKUs:
/// everything but review decisions; its customer: cancel.
async fn act(
    app: &App,
    caller: &Caller,
    idem: &IdempotencyKey,
    id: &str,
    action: OrderAction,
) -> ApiResult<Json<OrderView>> {
    let order = visible_order(app, caller, id).await?;
    let review = matches!(
        action,
        OrderAction::ApproveReview | OrderAction::RejectReview
    );
    let allowed = caller.is_admin()
        || (caller.seller().is_some() && !review)
        || (matches!(action, OrderAction::Cancel { .. })
            && caller.customer() == Some(order.user_id.as_str()));
    if !allowed {
        return Err(ApiError::forbidden("this key may not do this to the order"));
    }
    let order = app
        .client()
        .order_action(order.id, action, idem.wire(caller))
        .await?;
    Ok(Json(OrderView::from(&order)))
}

macro_rules! action {
    ($name:ident, $path:literal, $action:expr, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "orders",
            params(("order_id" = String, Path, description = "Order id"),
                ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key apply once")),
            responses(
                (status = 200, body = OrderView),
                (status = 400, body = Problem, content_type = "application/problem+json"),
                (status = 401, body = Problem, content_type = "application/problem+json"),
                (status = 403, body = Problem, content_type = "application/problem+json"),
                (status = 404, body = Problem, content_type = "application/problem+json"),
                (status = 409, description = "Illegal status transition", body = Problem, content_type = "application/problem+json")),
            security(("bearer" = [])))]
        pub(crate) async fn $name(
            State(app): State<App>,
            caller: Caller,
            idem: IdempotencyKey,
            PathParams(id): PathParams<String>,
        ) -> ApiResult<Json<OrderView>> {
            act(&app, &caller, &idem, &id, $action).await
        }
    };
}

action!(
    cancel,
    "/v1/orders/{order_id}/cancel",
    OrderAction::Cancel {
        reason: "cancelled through the REST API".into()
    },
    "Cancels an order before it ships: restocks, voids or refunds (its customer, a seller of its SKUs, or an admin)."
);
action!(
    pack,
    "/v1/orders/{order_id}/pack",
    OrderAction::Pack,
    "Marks an order picked and packed (a seller of its SKUs or an admin)."
);
action!(
    deliver,
    "/v1/orders/{order_id}/deliver",
    OrderAction::Deliver,
    "Marks an order delivered; captures cash on delivery (a seller of its SKUs or an admin)."
);
action!(
    approve_review,
    "/v1/orders/{order_id}/approve-review",
    OrderAction::ApproveReview,
    "Releases an order held for fraud review and captures its payment (admin)."
);
action!(
    reject_review,
    "/v1/orders/{order_id}/reject-review",
    OrderAction::RejectReview,
    "Rejects an order held for fraud review: restocks and voids (admin)."
);

/// Hands an order to a carrier with a tracking number.
#[utoipa::path(post, path = "/v1/orders/{order_id}/ship", tag = "orders", request_body = Ship,
    params(("order_id" = String, Path, description = "Order id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key apply once")),
    responses(
        (status = 200, body = OrderView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Illegal status transition", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn ship(
    State(app): State<App>,
    caller: Caller,
    idem: IdempotencyKey,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<Ship>,
) -> ApiResult<Json<OrderView>> {
    check_id("carrier", &body.carrier)?;
    check_id("tracking_number", &body.tracking_number)?;
    let action = OrderAction::Ship {
        carrier: body.carrier,
        tracking_number: body.tracking_number,
    };
    act(&app, &caller, &idem, &id, action).await
}

/// Adds a tracking event to a shipped order.
#[utoipa::path(post, path = "/v1/orders/{order_id}/track", tag = "orders", request_body = Track,
    params(("order_id" = String, Path, description = "Order id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key apply once")),
    responses(
        (status = 200, body = OrderView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn track(
    State(app): State<App>,
    caller: Caller,
    idem: IdempotencyKey,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<Track>,
) -> ApiResult<Json<OrderView>> {
    let action = OrderAction::Track {
        description: body.description,
    };
    act(&app, &caller, &idem, &id, action).await
}

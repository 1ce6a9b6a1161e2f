//! SKUs and stock.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use reserva_client::Client;
use reserva_protocol::engine::{Command, Outcome, Request, Sku};

use crate::App;
use crate::caller::Caller;
use crate::extract::{IdempotencyKey, JsonBody, PathParams, check_id};
use crate::model::{AdjustStock, PutSku, SetStock, SkuView, StockView};
use crate::problem::{ApiError, ApiResult, Problem};

async fn load_sku(client: &Client, sku: &str) -> ApiResult<Option<Sku>> {
    Ok(client.get_sku(sku).await?)
}

/// Admin, or the seller who owns `sku` (when it exists).
async fn check_owner(app: &App, caller: &Caller, sku: &str) -> ApiResult<()> {
    caller.require_key()?;
    if caller.is_admin() {
        return Ok(());
    }
    let Some(seller) = caller.seller() else {
        return Err(ApiError::forbidden(
            "only the SKU's seller or an admin may change it",
        ));
    };
    match load_sku(app.client(), sku).await? {
        Some(s) if s.seller_id != seller => Err(ApiError::forbidden(format!(
            "sku {sku:?} belongs to another seller"
        ))),
        _ => Ok(()),
    }
}

/// A SKU with its stock per warehouse (anonymous callers allowed).
#[utoipa::path(get, path = "/v1/skus/{sku}", tag = "inventory",
    params(("sku" = String, Path, description = "SKU id (1..=64 bytes)")),
    responses(
        (status = 200, body = SkuView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_sku(
    State(app): State<App>,
    PathParams(sku): PathParams<String>,
) -> ApiResult<Json<SkuView>> {
    check_id("sku", &sku)?;
    let s = load_sku(app.client(), &sku)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("sku {sku:?} not found")))?;
    Ok(Json(SkuView::from(&s)))
}

/// Creates a SKU or replaces its seller, title and price (stock is kept).
#[utoipa::path(put, path = "/v1/skus/{sku}", tag = "inventory", request_body = PutSku,
    params(("sku" = String, Path, description = "SKU id (1..=64 bytes)"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key apply once")),
    responses(
        (status = 200, description = "Updated", body = SkuView),
        (status = 201, description = "Created", body = SkuView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn put_sku(
    State(app): State<App>,
    caller: Caller,
    idem: IdempotencyKey,
    PathParams(sku): PathParams<String>,
    JsonBody(body): JsonBody<PutSku>,
) -> ApiResult<(StatusCode, Json<SkuView>)> {
    check_id("sku", &sku)?;
    check_id("seller_id", &body.seller_id)?;
    let price = body.price.to_money("price")?;
    check_owner(&app, &caller, &sku).await?;
    if !caller.is_admin() && caller.seller() != Some(body.seller_id.as_str()) {
        return Err(ApiError::forbidden(
            "a seller may only create SKUs for themselves",
        ));
    }
    let command = Command::UpsertSku {
        sku: sku.clone(),
        seller_id: body.seller_id,
        title: body.title,
        price,
    };
    let outcome = app
        .client()
        .apply(Request {
            idempotency_key: idem.wire(&caller),
            command,
        })
        .await?;
    let created = matches!(outcome, Outcome::SkuUpserted { created: true });
    let s = load_sku(app.client(), &sku)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("sku {sku:?} not found")))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(SkuView::from(&s))))
}

fn stock_view(sku: String, warehouse: String, outcome: Outcome) -> ApiResult<Json<StockView>> {
    match outcome {
        Outcome::Stock { on_hand, reserved } => Ok(Json(StockView {
            sku,
            warehouse,
            on_hand,
            reserved,
            available: on_hand.saturating_sub(reserved),
        })),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// Sets the on-hand count of a SKU in a warehouse (refused below what is reserved).
#[utoipa::path(put, path = "/v1/skus/{sku}/stock/{warehouse}", tag = "inventory", request_body = SetStock,
    params(("sku" = String, Path, description = "SKU id"), ("warehouse" = String, Path, description = "Warehouse id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key apply once")),
    responses(
        (status = 200, body = StockView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn set_stock(
    State(app): State<App>,
    caller: Caller,
    idem: IdempotencyKey,
    PathParams((sku, warehouse)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<SetStock>,
) -> ApiResult<Json<StockView>> {
    check_id("sku", &sku)?;
    check_id("warehouse", &warehouse)?;
    check_owner(&app, &caller, &sku).await?;
    let command = Command::SetStock {
        sku: sku.clone(),
        warehouse: warehouse.clone(),
        on_hand: body.on_hand,
    };
    let outcome = app
        .client()
        .apply(Request {
            idempotency_key: idem.wire(&caller),
            command,
        })
        .await?;
    stock_view(sku, warehouse, outcome)
}

/// Adds `delta` units (negative: removes) to a warehouse's on-hand count.
#[utoipa::path(post, path = "/v1/skus/{sku}/stock/{warehouse}/adjust", tag = "inventory", request_body = AdjustStock,
    params(("sku" = String, Path, description = "SKU id"), ("warehouse" = String, Path, description = "Warehouse id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key apply once")),
    responses(
        (status = 200, body = StockView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn adjust_stock(
    State(app): State<App>,
    caller: Caller,
    idem: IdempotencyKey,
    PathParams((sku, warehouse)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<AdjustStock>,
) -> ApiResult<Json<StockView>> {
    check_id("sku", &sku)?;
    check_id("warehouse", &warehouse)?;
    check_owner(&app, &caller, &sku).await?;
    let command = Command::AdjustStock {
        sku: sku.clone(),
        warehouse: warehouse.clone(),
        delta: body.delta,
    };
    let outcome = app
        .client()
        .apply(Request {
            idempotency_key: idem.wire(&caller),
            command,
        })
        .await?;
    stock_view(sku, warehouse, outcome)
}

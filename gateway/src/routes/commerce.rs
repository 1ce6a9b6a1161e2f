//! Checkout, returns and store credit.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use reserva_client::{CheckoutRequest, PaymentInput};
use reserva_protocol::engine::{Address, CheckoutSource, ReturnAction, ReturnId};

use crate::App;
use crate::caller::Caller;
use crate::extract::{IdempotencyKey, JsonBody, PathParams, check_id};
use crate::model::{
    AddressJson, CheckoutBody, CreditView, GrantCredit, MoneyJson, OrderView, PaymentJson,
    ReturnBody, ReturnCreated,
};
use crate::problem::{ApiError, ApiResult, Problem};
use crate::routes::orders::visible_order;
use crate::routes::reservations::lines;

fn degrees_e6(field: &str, v: Option<f64>, max: f64) -> ApiResult<Option<i32>> {
    match v {
        None => Ok(None),
        Some(d) if d.is_finite() && d.abs() <= max => Ok(Some((d * 1e6).round() as i32)),
        Some(_) => Err(ApiError::invalid(format!(
            "{field} must be within ±{max} degrees"
        ))),
    }
}

fn address(a: AddressJson) -> ApiResult<Address> {
    Ok(Address {
        lat_e6: degrees_e6("ship_to.lat", a.lat, 90.0)?,
        lon_e6: degrees_e6("ship_to.lon", a.lon, 180.0)?,
        name: a.name,
        line1: a.line1,
        line2: a.line2.unwrap_or_default(),
        city: a.city,
        region: a.region.unwrap_or_default(),
        postal_code: a.postal_code,
        country: a.country,
    })
}

/// Checks out: holds stock, scores fraud, takes payment, places the order.
/// Exactly once per `Idempotency-Key`.
#[utoipa::path(post, path = "/v1/checkout", tag = "orders", request_body = CheckoutBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key check out once")),
    responses(
        (status = 201, description = "The order as recorded (status placed, turning confirmed once stock is deducted and payment captured; or review when held for fraud review)", body = OrderView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 402, description = "payment_declined (decline_code says why)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "payment_unavailable (the card provider kept failing; nothing charged, no stock held), or overloaded (the gateway or the node is shedding load, or the deadline passed before the node applied the request; Retry-After says when to retry)", body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "insufficient_stock, idempotency_conflict", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn checkout(
    State(app): State<App>,
    caller: Caller,
    idem: IdempotencyKey,
    JsonBody(body): JsonBody<CheckoutBody>,
) -> ApiResult<(StatusCode, Json<OrderView>)> {
    check_id("user_id", &body.user_id)?;
    caller.require_user(&body.user_id)?;
    let source = match (&body.lines, &body.reservation_id, body.from_cart) {
        (Some(l), None, None | Some(false)) => CheckoutSource::Lines(lines(l)?),
        (None, Some(r), None | Some(false)) => {
            check_id("reservation_id", r)?;
            CheckoutSource::Reservation(
                r.parse()
                    .map_err(|_| ApiError::not_found(format!("reservation {r:?} not found")))?,
            )
        }
        (None, None, Some(true)) => CheckoutSource::Cart,
        _ => {
            return Err(ApiError::invalid(
                "give exactly one of lines, reservation_id or from_cart: true",
            ));
        }
    };
    let payment = match body.payment {
        PaymentJson::Card { card_number } => PaymentInput::Card {
            number: card_number,
        },
        PaymentJson::StoreCredit => PaymentInput::StoreCredit,
        PaymentJson::Cod => PaymentInput::CashOnDelivery,
    };
    let request = CheckoutRequest {
        user_id: body.user_id,
        source,
        payment,
        ship_to: address(body.ship_to)?,
    };
    // Without a key a retry of this HTTP call is a new checkout; the client
    // still keys its own retries.
    let result = app.client().checkout(request, idem.wire(&caller)).await?;
    Ok((StatusCode::CREATED, Json(OrderView::from(&result.order))))
}

/// Asks to return delivered lines of an order (its customer or an admin).
#[utoipa::path(post, path = "/v1/orders/{order_id}/returns", tag = "returns", request_body = ReturnBody,
    params(("order_id" = String, Path, description = "Order id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key apply once")),
    responses(
        (status = 201, body = ReturnCreated),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn request_return(
    State(app): State<App>,
    caller: Caller,
    idem: IdempotencyKey,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<ReturnBody>,
) -> ApiResult<(StatusCode, Json<ReturnCreated>)> {
    let order = visible_order(&app, &caller, &id).await?;
    if !caller.is_admin() && caller.customer() != Some(order.user_id.as_str()) {
        return Err(ApiError::forbidden(
            "only the order's customer or an admin may ask for a return",
        ));
    }
    let lines = lines(&body.lines)?;
    let (return_id, order) = app
        .client()
        .request_return(order.id, lines, body.reason, idem.wire(&caller))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ReturnCreated {
            return_id: return_id.to_string(),
            order: OrderView::from(&order),
        }),
    ))
}

async fn return_action(
    app: &App,
    caller: &Caller,
    idem: &IdempotencyKey,
    id: &str,
    action: ReturnAction,
) -> ApiResult<Json<OrderView>> {
    caller.require_key()?;
    check_id("return_id", id)?;
    let not_found = || ApiError::not_found(format!("return {id:?} not found"));
    let rid: ReturnId = id.parse().map_err(|_| not_found())?;
    let order = app
        .client()
        .get_return_order(rid)
        .await?
        .ok_or_else(not_found)?;
    // Visibility as for the order; then only sellers and admins act.
    visible_order(app, caller, &order.id.to_string())
        .await
        .map_err(|_| not_found())?;
    if !caller.is_admin() && caller.seller().is_none() {
        return Err(ApiError::forbidden(
            "only a seller of the order or an admin may act on returns",
        ));
    }
    let order = app
        .client()
        .return_action(rid, action, idem.wire(caller))
        .await?;
    Ok(Json(OrderView::from(&order)))
}

macro_rules! return_route {
    ($name:ident, $path:literal, $action:expr, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "returns",
            params(("return_id" = String, Path, description = "Return id"),
                ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key apply once")),
            responses(
                (status = 200, description = "The order afterwards", body = OrderView),
                (status = 400, body = Problem, content_type = "application/problem+json"),
                (status = 401, body = Problem, content_type = "application/problem+json"),
                (status = 403, body = Problem, content_type = "application/problem+json"),
                (status = 404, body = Problem, content_type = "application/problem+json"),
                (status = 409, body = Problem, content_type = "application/problem+json")),
            security(("bearer" = [])))]
        pub(crate) async fn $name(
            State(app): State<App>,
            caller: Caller,
            idem: IdempotencyKey,
            PathParams(id): PathParams<String>,
        ) -> ApiResult<Json<OrderView>> {
            return_action(&app, &caller, &idem, &id, $action).await
        }
    };
}

return_route!(
    approve_return,
    "/v1/returns/{return_id}/approve",
    ReturnAction::Approve,
    "Approves a requested return (a seller of the order or an admin)."
);
return_route!(
    reject_return,
    "/v1/returns/{return_id}/reject",
    ReturnAction::Reject,
    "Rejects a requested return."
);
return_route!(
    receive_return,
    "/v1/returns/{return_id}/receive",
    ReturnAction::Receive,
    "Records the returned units as received (restocks them)."
);
return_route!(
    refund_return,
    "/v1/returns/{return_id}/refund",
    ReturnAction::Refund,
    "Refunds a received return."
);

fn credit_view(
    user_id: &str,
    account: Option<reserva_protocol::engine::CreditAccount>,
) -> CreditView {
    match account {
        None => CreditView {
            user_id: user_id.to_owned(),
            balance: None,
            available_minor: 0,
        },
        Some(a) => CreditView {
            user_id: user_id.to_owned(),
            available_minor: a.available_minor(),
            balance: Some(MoneyJson {
                amount_minor: a.balance_minor,
                currency: a.currency.as_str().to_owned(),
            }),
        },
    }
}

/// A user's store credit.
#[utoipa::path(get, path = "/v1/users/{user_id}/credit", tag = "credit",
    params(("user_id" = String, Path, description = "User id")),
    responses(
        (status = 200, body = CreditView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn get_credit(
    State(app): State<App>,
    caller: Caller,
    PathParams(user_id): PathParams<String>,
) -> ApiResult<Json<CreditView>> {
    check_id("user_id", &user_id)?;
    caller.require_user(&user_id)?;
    let account = app.client().get_credit(user_id.as_str()).await?;
    Ok(Json(credit_view(&user_id, account)))
}

/// Adds store credit to a user's account (admin).
#[utoipa::path(post, path = "/v1/users/{user_id}/credit", tag = "credit", request_body = GrantCredit,
    params(("user_id" = String, Path, description = "User id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key grant once")),
    responses(
        (status = 200, body = CreditView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn grant_credit(
    State(app): State<App>,
    caller: Caller,
    idem: IdempotencyKey,
    PathParams(user_id): PathParams<String>,
    JsonBody(body): JsonBody<GrantCredit>,
) -> ApiResult<Json<CreditView>> {
    check_id("user_id", &user_id)?;
    caller.require_admin()?;
    let amount = body.amount.to_money("amount")?;
    let account = app
        .client()
        .grant_credit(user_id.as_str(), amount, idem.wire(&caller))
        .await?;
    Ok(Json(credit_view(&user_id, Some(account))))
}

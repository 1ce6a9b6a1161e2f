//! Reservations: holds on stock that lapse unless confirmed by a checkout.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use reserva_protocol::engine::limits::{RESERVATION_LINES_MAX, TTL_MS_MAX, TTL_MS_MIN};
use reserva_protocol::engine::{
    Command, Outcome, Request, Reservation, ReservationId, ReserveLine,
};

use crate::App;
use crate::caller::Caller;
use crate::extract::{IdempotencyKey, JsonBody, PathParams, check_id};
use crate::model::{AllocationView, CreateReservation, LineJson, ReservationView};
use crate::problem::{ApiError, ApiResult, Problem};
use crate::time::rfc3339;

/// Checks requested lines and turns them into the engine's.
pub(crate) fn lines(lines: &[LineJson]) -> ApiResult<Vec<ReserveLine>> {
    if lines.is_empty() || lines.len() > RESERVATION_LINES_MAX {
        return Err(ApiError::invalid(format!(
            "lines must have 1..={RESERVATION_LINES_MAX} entries"
        )));
    }
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            check_id(&format!("lines[{i}].sku"), &l.sku)?;
            if l.qty == 0 {
                return Err(ApiError::invalid(format!(
                    "lines[{i}].qty must be at least 1"
                )));
            }
            Ok(ReserveLine {
                sku: l.sku.clone(),
                qty: l.qty,
            })
        })
        .collect()
}

/// Parses a reservation id; one that cannot exist is not found.
fn parse_id(id: &str) -> ApiResult<ReservationId> {
    check_id("reservation_id", id)?;
    id.parse()
        .map_err(|_| ApiError::not_found(format!("reservation {id:?} not found")))
}

/// The reservation if the caller may see it; 404 otherwise (whether or not it exists).
async fn visible(app: &App, caller: &Caller, id: &str) -> ApiResult<Reservation> {
    caller.require_key()?;
    let rid = parse_id(id)?;
    let not_found = || ApiError::not_found(format!("reservation {id:?} not found"));
    let r = app
        .client()
        .get_reservation(rid)
        .await?
        .ok_or_else(not_found)?;
    if caller.is_admin() || caller.customer() == Some(r.owner.as_str()) {
        Ok(r)
    } else {
        Err(not_found())
    }
}

/// Holds stock for every line or none (all SKUs must live on one shard).
#[utoipa::path(post, path = "/v1/reservations", tag = "reservations", request_body = CreateReservation,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key reserve once")),
    responses(
        (status = 201, body = ReservationView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown SKU", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "insufficient_stock or idempotency_conflict", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn create(
    State(app): State<App>,
    caller: Caller,
    idem: IdempotencyKey,
    JsonBody(body): JsonBody<CreateReservation>,
) -> ApiResult<(StatusCode, Json<ReservationView>)> {
    check_id("user_id", &body.user_id)?;
    caller.require_user(&body.user_id)?;
    let lines = lines(&body.lines)?;
    let ttl_ms = match body.ttl_seconds {
        None => None,
        Some(s) => {
            let ms = s.saturating_mul(1000);
            if !(TTL_MS_MIN..=TTL_MS_MAX).contains(&ms) {
                return Err(ApiError::invalid(format!(
                    "ttl_seconds must be in {}..={}",
                    TTL_MS_MIN / 1000,
                    TTL_MS_MAX / 1000
                )));
            }
            Some(ms)
        }
    };
    let command = Command::Reserve {
        owner: body.user_id.clone(),
        lines,
        ttl_ms,
        warehouse_preference: Vec::new(),
    };
    let outcome = app
        .client()
        .apply(Request {
            idempotency_key: idem.wire(&caller),
            command,
        })
        .await?;
    match outcome {
        Outcome::Reserved {
            reservation_id,
            expires_at_ms,
            allocations,
        } => Ok((
            StatusCode::CREATED,
            Json(ReservationView {
                reservation_id: reservation_id.to_string(),
                user_id: body.user_id,
                expires_at: rfc3339(expires_at_ms),
                lines: allocations.iter().map(AllocationView::from).collect(),
            }),
        )),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// A live reservation (another user's is 404).
#[utoipa::path(get, path = "/v1/reservations/{reservation_id}", tag = "reservations",
    params(("reservation_id" = String, Path, description = "Reservation id (res_<shard>_<seq>)")),
    responses(
        (status = 200, body = ReservationView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn get(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<ReservationView>> {
    let r = visible(&app, &caller, &id).await?;
    Ok(Json(ReservationView::from(&r)))
}

/// Releases a reservation: its stock becomes available again.
#[utoipa::path(delete, path = "/v1/reservations/{reservation_id}", tag = "reservations",
    params(("reservation_id" = String, Path, description = "Reservation id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key apply once")),
    responses(
        (status = 204, description = "Released"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn release(
    State(app): State<App>,
    caller: Caller,
    idem: IdempotencyKey,
    PathParams(id): PathParams<String>,
) -> ApiResult<StatusCode> {
    let r = visible(&app, &caller, &id).await?;
    app.client()
        .apply(Request {
            idempotency_key: idem.wire(&caller),
            command: Command::Release {
                reservation_id: r.id,
            },
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

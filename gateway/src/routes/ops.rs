//! Operations: health, metrics, the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use reserva_protocol::Query;
use reserva_protocol::engine::SHARD_COUNT;

use crate::App;
use crate::model::Health;
use crate::problem::ApiResult;
use crate::scatter::scatter;

/// 200 once every shard answers, 503 otherwise.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub(crate) async fn healthz(State(app): State<App>) -> ApiResult<(StatusCode, Json<Health>)> {
    let g = scatter(&app, |shard| Query::ShardStats { shard }).await?;
    let ready = g.answers.len() as u32;
    let ok = ready == u32::from(SHARD_COUNT);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((
        status,
        Json(Health {
            status: if ok { "ok" } else { "degraded" }.into(),
            shards_ready: ready,
            shards: u32::from(SHARD_COUNT),
        }),
    ))
}

/// The gateway's metrics (and the embedding server's), Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain")))]
pub(crate) async fn metrics(State(app): State<App>) -> Response {
    let mut text = app.metrics().render();
    if let Some(hook) = &app.config().metrics_hook {
        text.push_str(&hook());
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub(crate) async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
        .into_response()
}

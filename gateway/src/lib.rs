//! reserva's REST gateway: JSON over HTTP in front of the shard server.
//!
//! Stateless (any number may run in front of one cluster): every request is
//! translated into shard operations through [`reserva_client`]. Queries that
//! cross shards (a seller's orders, analytics, low stock) fan out to all 256
//! shards with bounded concurrency and a deadline ([`scatter`]). Errors are
//! RFC 9457 problem documents with stable codes ([`problem`]); callers are
//! identified by API keys from the node's auth file ([`caller`]) and limited
//! by token buckets ([`rate`]); live updates are server-sent events fed by
//! the shards' user-event rings. Past its bounds on requests in flight and
//! open connections it sheds load with fast 503 answers ([`shed`]). The
//! OpenAPI 3.1 document is generated from the handlers ([`openapi`]).
//! `docs/rest-api.md` describes the API.

pub mod caller;
pub mod config;
pub mod extract;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod problem;
pub mod rate;
mod routes;
pub mod scatter;
pub mod shed;
pub mod time;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use reserva_client::Client;
use tokio::sync::Semaphore;

pub use config::{GatewayConfig, MetricsHook, RateLimits};

use crate::caller::Caller;
use crate::limits::{BODY_BYTES_MAX, SSE_STREAMS_MAX};
use crate::metrics::Metrics;
use crate::problem::{ApiError, Code};
use crate::rate::{Decision, RateLimiter};
use crate::shed::{BoundedListener, PeerAddr};

/// The shared state of one gateway: the shard client and everything
/// bounded that requests share.
#[derive(Clone)]
pub struct App {
    inner: Arc<Shared>,
}

struct Shared {
    client: Client,
    config: GatewayConfig,
    rate: RateLimiter,
    metrics: Arc<Metrics>,
    sse: Arc<Semaphore>,
    /// Requests in flight (`GatewayConfig::requests_in_flight_max`).
    in_flight: Arc<Semaphore>,
}

impl App {
    /// A gateway talking to the shards through `client`.
    pub fn new(client: Client, config: GatewayConfig) -> Self {
        App {
            inner: Arc::new(Shared {
                client,
                in_flight: shed::permits(config.requests_in_flight_max),
                config,
                rate: RateLimiter::default(),
                metrics: Arc::default(),
                sse: Arc::new(Semaphore::new(SSE_STREAMS_MAX)),
            }),
        }
    }
    /// The shard client.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }
    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }
    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
    pub(crate) fn sse_permits(&self) -> Arc<Semaphore> {
        self.inner.sse.clone()
    }

    /// The caller named by the `Authorization` header.
    fn identify(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let Some(auth) = &self.inner.config.auth else {
            return Ok(Caller::Open);
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(Caller::Anonymous);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer TOKEN"))?;
        auth.lookup(token)
            .cloned()
            .map(Caller::Key)
            .ok_or_else(|| ApiError::unauthorized("unknown API key"))
    }
}

/// The gateway's routes, with the in-flight bound, authentication, rate
/// limits, the body limit and metrics. [`serve`] serves it (the client
/// address, [`PeerAddr`], is needed for per-IP limits).
pub fn router(app: App) -> Router {
    routes::routes()
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), front))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(app)
}

/// Serves `app`'s [`router`] on `listener`, at most
/// `GatewayConfig::connections_max` connections at once (see
/// [`BoundedListener`]), until the future is dropped or fails.
pub async fn serve(listener: tokio::net::TcpListener, app: App) -> std::io::Result<()> {
    let listener = BoundedListener::new(
        listener,
        app.config().connections_max,
        app.config().connection_idle_timeout,
        app.inner.metrics.clone(),
    );
    axum::serve(
        listener,
        router(app).into_make_service_with_connect_info::<PeerAddr>(),
    )
    .await
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        Code::InvalidRequest,
        "method not allowed on this route",
    )
}

/// Sheds the request if too many are in flight, identifies the caller,
/// applies its rate limit, runs the handler, adds the `RateLimit-*` headers
/// and counts the request.
async fn front(State(app): State<App>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    // `/metrics` never reaches the shards and is how an operator watches
    // the overload, so it is not shed. The permit is held until the head
    // of the answer is ready.
    let _in_flight = if route == "/metrics" {
        None
    } else {
        match shed::admit(&app.inner.in_flight, &app.inner.metrics) {
            Ok(admitted) => Some(admitted),
            Err(e) => {
                let resp = e.into_response();
                app.inner.metrics.record(
                    &route,
                    &method,
                    resp.status().as_u16(),
                    started.elapsed(),
                );
                return resp;
            }
        }
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<PeerAddr>>()
        .map(|c| c.0.0.ip().to_string())
        .unwrap_or_default();
    let mut decision = None;
    let resp = match app.identify(req.headers()) {
        Err(e) => e.into_response(),
        Ok(caller) => {
            let limited = route.starts_with("/v1/");
            let d = limited.then(|| {
                let key = match &caller {
                    Caller::Key(p) => format!("key:{}", fnv_hex(&p.token)),
                    _ => format!("ip:{peer}"),
                };
                app.inner.rate.check(
                    &key,
                    caller.rate(&app.inner.config.rate_limits),
                    Instant::now(),
                )
            });
            decision = d;
            match d {
                Some(d) if !d.allowed => {
                    app.inner
                        .metrics
                        .rate_limited
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    ApiError {
                        retry_after_s: Some(d.retry_after_s),
                        ..ApiError::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            Code::RateLimited,
                            format!("rate limit of {} requests per minute exceeded", d.limit),
                        )
                    }
                    .into_response()
                }
                _ => {
                    req.extensions_mut().insert(caller);
                    next.run(req).await
                }
            }
        }
    };
    let mut resp = resp;
    if let Some(d) = decision {
        rate_headers(resp.headers_mut(), &d);
    }
    app.inner
        .metrics
        .record(&route, &method, resp.status().as_u16(), started.elapsed());
    resp
}

fn rate_headers(h: &mut HeaderMap, d: &Decision) {
    let mut put = |name: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(name, v);
        }
    };
    put("ratelimit-limit", d.limit.to_string());
    put("ratelimit-remaining", d.remaining.to_string());
    put("ratelimit-reset", d.reset_s.to_string());
    put("ratelimit-policy", format!("{};w=60", d.limit));
}

fn fnv_hex(s: &str) -> String {
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{h:016x}")
}

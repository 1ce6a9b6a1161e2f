//! Live updates: a server-sent-event stream of a user's cart and order changes.
//!
//! The stream polls the user's shard (`Query::UserEvents`) every
//! `SSE_POLL_INTERVAL` from the last position it delivered, so any gateway
//! can serve it and a reconnect with `Last-Event-ID` resumes where it left
//! off. When the shard reports a gap (its bounded ring overflowed, or it
//! restarted) the stream sends a `resync` event: re-read the cart and orders.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use reserva_protocol::limits::USER_EVENTS_LIMIT_MAX;
use reserva_protocol::{UserEvent, UserEventKind};
use tokio::sync::OwnedSemaphorePermit;

use crate::App;
use crate::caller::Caller;
use crate::extract::{PathParams, check_id};
use crate::limits::{OVERLOADED_RETRY_AFTER_S, SSE_POLL_INTERVAL};
use crate::model::UserEventView;
use crate::problem::{ApiError, ApiResult, Problem};
use crate::time::rfc3339;

struct StreamState {
    app: App,
    user_id: String,
    after: u64,
    queued: VecDeque<Event>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for StreamState {
    fn drop(&mut self) {
        self.app
            .metrics()
            .sse_streams
            .fetch_sub(1, Ordering::Relaxed);
    }
}

fn to_event(e: &UserEvent) -> Event {
    let mut view = UserEventView {
        seq: e.seq,
        type_: String::new(),
        at: rfc3339(e.at_ms),
        sku: None,
        qty: None,
        order_id: None,
        status: None,
    };
    match &e.kind {
        UserEventKind::Cart { sku, qty } => {
            view.type_ = "cart".into();
            view.sku = sku.clone();
            view.qty = Some(*qty);
        }
        UserEventKind::Wishlist { sku, qty } => {
            view.type_ = "wishlist".into();
            view.sku = Some(sku.clone());
            view.qty = Some(*qty);
        }
        UserEventKind::Order { order_id, status } => {
            view.type_ = "order".into();
            view.order_id = Some(order_id.to_string());
            view.status = Some(status.as_str().to_owned());
        }
    }
    let data = serde_json::to_string(&view).unwrap_or_default();
    Event::default()
        .id(e.seq.to_string())
        .event(view.type_.as_str())
        .data(data)
}

impl StreamState {
    /// Polls the shard once; queues what it answered.
    async fn poll(&mut self) {
        let answer = self
            .app
            .client()
            .user_events(
                self.user_id.as_str(),
                Some(self.after),
                USER_EVENTS_LIMIT_MAX,
            )
            .await;
        match answer {
            Ok((events, next, gap)) => {
                if gap {
                    self.queued.push_back(
                        Event::default()
                            .id(next.to_string())
                            .event("resync")
                            .data("{}"),
                    );
                }
                self.queued.extend(events.iter().map(to_event));
                self.after = next;
            }
            Err(e) => {
                tracing::debug!(user = %self.user_id, error = %e, "event poll failed; retrying")
            }
        }
    }
}

/// Server-sent events of a user's cart and order changes (`cart`, `order`,
/// `resync`); resume with `Last-Event-ID`.
#[utoipa::path(get, path = "/v1/users/{user_id}/events", tag = "carts",
    params(("user_id" = String, Path, description = "User id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses(
        (status = 200, description = "An event stream; each event's data is a UserEventView",
            body = UserEventView, content_type = "text/event-stream"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "overloaded: too many open event streams, or the gateway or the node is shedding load (Retry-After says when to retry)", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn user_events(
    State(app): State<App>,
    caller: Caller,
    headers: HeaderMap,
    PathParams(user_id): PathParams<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    check_id("user_id", &user_id)?;
    caller.require_user(&user_id)?;
    let permit = app.sse_permits().try_acquire_owned().map_err(|_| {
        ApiError::overloaded("too many open event streams", OVERLOADED_RETRY_AFTER_S)
    })?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    // The position is fixed before the answer starts: a change made after
    // the client sees the response headers is always delivered.
    let (_, now, _) = app.client().user_events(user_id.as_str(), None, 1).await?;
    app.metrics().sse_streams.fetch_add(1, Ordering::Relaxed);
    let mut state = StreamState {
        app,
        user_id,
        after: resume.unwrap_or(now),
        queued: VecDeque::new(),
        _permit: permit,
    };
    if resume.is_some() {
        state.poll().await;
    }
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(e) = st.queued.pop_front() {
                return Some((Ok(e), st));
            }
            tokio::time::sleep(SSE_POLL_INTERVAL).await;
            st.poll().await;
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

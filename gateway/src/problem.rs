//! RFC 9457 problem details: every error the gateway answers.
//!
//! Each carries a stable `code` (documented in `docs/rest-api.md`); clients
//! branch on `code`, never on `title` or `detail`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use reserva_client::ClientError;
use reserva_protocol::WireError;
use reserva_protocol::engine::EngineError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::limits::{OVERLOADED_RETRY_AFTER_S, PAYMENT_UNAVAILABLE_RETRY_AFTER_S};

/// The stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Malformed JSON, unknown fields, wrong types, values out of range, bad ids.
    InvalidRequest,
    /// No such resource (or not visible to the caller).
    NotFound,
    /// Not enough stock to reserve or check out.
    InsufficientStock,
    /// The payment was declined (by the card's issuer, for want of store
    /// credit, or by fraud scoring); `decline_code` says which.
    PaymentDeclined,
    /// The payment provider kept failing; nothing was charged and no stock is held.
    PaymentUnavailable,
    /// The idempotency key was used with another request.
    IdempotencyConflict,
    /// No or an unknown API key.
    Unauthorized,
    /// The key's role may not do this.
    Forbidden,
    /// Too many requests for the caller's tier.
    RateLimited,
    /// The gateway or the shards are overloaded or unreachable; retry later.
    Overloaded,
    /// The resource's state does not allow this (illegal status transition,
    /// stock below what is reserved, expired reservation, a full cart).
    Conflict,
    /// The body exceeds the size limit.
    PayloadTooLarge,
    /// A bug or an unexpected answer from the shards.
    Internal,
}

impl Code {
    /// The code's text.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidRequest => "invalid_request",
            Code::NotFound => "not_found",
            Code::InsufficientStock => "insufficient_stock",
            Code::PaymentDeclined => "payment_declined",
            Code::PaymentUnavailable => "payment_unavailable",
            Code::IdempotencyConflict => "idempotency_conflict",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::RateLimited => "rate_limited",
            Code::Overloaded => "overloaded",
            Code::Conflict => "conflict",
            Code::PayloadTooLarge => "payload_too_large",
            Code::Internal => "internal",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Code::InvalidRequest => "The request is invalid",
            Code::NotFound => "Not found",
            Code::InsufficientStock => "Insufficient stock",
            Code::PaymentDeclined => "Payment declined",
            Code::PaymentUnavailable => "Payment provider unavailable, retry later",
            Code::IdempotencyConflict => "Idempotency key reused with another request",
            Code::Unauthorized => "Missing or unknown API key",
            Code::Forbidden => "Not allowed for this API key",
            Code::RateLimited => "Too many requests",
            Code::Overloaded => "Service overloaded, retry later",
            Code::Conflict => "Conflicts with the current state",
            Code::PayloadTooLarge => "Request body too large",
            Code::Internal => "Internal error",
        }
    }
}

/// An RFC 9457 problem document (`application/problem+json`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:reserva:problem:<code>`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Short, human-readable summary of the problem type.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What exactly went wrong.
    pub detail: String,
    /// Stable machine-readable code: invalid_request, not_found,
    /// insufficient_stock, payment_declined, payment_unavailable,
    /// idempotency_conflict, unauthorized, forbidden, rate_limited,
    /// overloaded, conflict, payload_too_large, internal.
    pub code: String,
    /// With `payment_declined`: why, as a stable code (`card_declined`,
    /// `insufficient_funds`, `insufficient_credit`, `risk_rejected`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
}

/// An error answer: status, code, detail and an optional `Retry-After`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: Code,
    /// Detail text.
    pub detail: String,
    /// Seconds for `Retry-After`.
    pub retry_after_s: Option<u64>,
    /// `decline_code` of a `payment_declined` problem.
    pub decline_code: Option<String>,
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error with `status`, `code` and `detail`.
    pub fn new(status: StatusCode, code: Code, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            retry_after_s: None,
            decline_code: None,
        }
    }
    /// 400 `invalid_request`.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Code::InvalidRequest, detail)
    }
    /// 404 `not_found`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, Code::NotFound, detail)
    }
    /// 403 `forbidden`.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, Code::Forbidden, detail)
    }
    /// 401 `unauthorized`.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, Code::Unauthorized, detail)
    }
    /// 409 `conflict`.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, Code::Conflict, detail)
    }
    /// 503 `overloaded` with `Retry-After`.
    pub fn overloaded(detail: impl Into<String>, retry_after_s: u64) -> Self {
        ApiError {
            retry_after_s: Some(retry_after_s.max(1)),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, Code::Overloaded, detail)
        }
    }
    /// 500 `internal`.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, Code::Internal, detail)
    }

    /// The problem document.
    pub fn problem(&self) -> Problem {
        Problem {
            type_: format!("urn:reserva:problem:{}", self.code.as_str()),
            title: self.code.title().to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.as_str().to_owned(),
            decline_code: self.decline_code.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        // The rest of an oversized body was never read, so the connection
        // cannot carry another request: say so, or a client reusing it
        // from its pool sees the next request fail.
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(s) = self.retry_after_s
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            headers.insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<WireError> for ApiError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Engine(e) => engine_error(e),
            WireError::NotFound { what, id } => {
                ApiError::not_found(format!("{what} {id} not found"))
            }
            // The node expects the request to wait longer than it admits
            // work for: nothing was applied. `Retry-After` is its hint in
            // whole seconds, rounded up (at least 1).
            WireError::Overloaded { retry_after_ms } => ApiError::overloaded(
                format!("the node is overloaded; retry after {retry_after_ms} ms"),
                u64::from(retry_after_ms).div_ceil(1000),
            ),
            // The request's deadline passed before the node applied it:
            // the node is too busy to answer in time. Nothing was applied,
            // so it is overload to back off from, like `Overloaded`.
            WireError::DeadlineExceeded { timeout_ms } => ApiError::overloaded(
                format!(
                    "the node could not apply the request within its deadline of \
                     {timeout_ms} ms; nothing was applied: retry later"
                ),
                OVERLOADED_RETRY_AFTER_S,
            ),
            WireError::InvalidRequest { reason } => ApiError::invalid(reason),
            WireError::Unauthorized { reason } => ApiError::forbidden(reason),
            WireError::FrameTooLarge { max_bytes } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::PayloadTooLarge,
                format!("the request or its answer exceeds {max_bytes} bytes"),
            ),
            e @ (WireError::Unavailable { .. }
            | WireError::Timeout
            | WireError::WrongShard { .. }) => {
                ApiError::overloaded(e.to_string(), OVERLOADED_RETRY_AFTER_S)
            }
            other => ApiError::overloaded(other.to_string(), OVERLOADED_RETRY_AFTER_S),
        }
    }
}

/// Capacity limits of a whole shard: the service is full, not the request wrong.
const SHARD_CAPACITY_LIMITS: [&str; 6] = [
    "IDEMPOTENCY_RECORDS_MAX",
    "RESERVATIONS_LIVE_MAX",
    "SKUS_MAX",
    "ORDERS_MAX",
    "CARTS_MAX",
    "SEQUENCE_MAX",
];

fn engine_error(e: EngineError) -> ApiError {
    let detail = e.to_string();
    match e {
        EngineError::InvalidInput { .. } | EngineError::WrongShard { .. } => {
            ApiError::invalid(detail)
        }
        EngineError::UnknownSku { .. }
        | EngineError::UnknownWarehouse { .. }
        | EngineError::UnknownReservation { .. }
        | EngineError::UnknownOrder { .. } => ApiError::not_found(detail),
        EngineError::InsufficientStock { .. } => {
            ApiError::new(StatusCode::CONFLICT, Code::InsufficientStock, detail)
        }
        EngineError::UnknownCheckout { .. } | EngineError::UnknownReturn { .. } => {
            ApiError::not_found(detail)
        }
        EngineError::PaymentDeclined { code, message } => ApiError {
            decline_code: Some(code),
            ..ApiError::new(StatusCode::PAYMENT_REQUIRED, Code::PaymentDeclined, message)
        },
        // The score and the rules that fired stay on the server (the
        // checkout record and the logs): telling them to the caller would
        // teach a fraudster which rule to dodge.
        EngineError::FraudRejected { .. } => ApiError {
            decline_code: Some("risk_rejected".into()),
            ..ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                Code::PaymentDeclined,
                "the payment was declined",
            )
        },
        EngineError::PaymentFailed { .. } => ApiError {
            retry_after_s: Some(PAYMENT_UNAVAILABLE_RETRY_AFTER_S),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::PaymentUnavailable,
                format!(
                    "{detail}; nothing was charged and no stock is held: \
                     retry later with a new Idempotency-Key"
                ),
            )
        },
        EngineError::CheckoutInterrupted { .. } => ApiError {
            retry_after_s: Some(PAYMENT_UNAVAILABLE_RETRY_AFTER_S),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::PaymentUnavailable,
                format!("{detail}: retry with a new Idempotency-Key"),
            )
        },
        EngineError::IdempotencyConflict { .. } => {
            ApiError::new(StatusCode::CONFLICT, Code::IdempotencyConflict, detail)
        }
        EngineError::LimitReached { ref limit, .. }
            if SHARD_CAPACITY_LIMITS.contains(&limit.as_str()) =>
        {
            ApiError::overloaded(detail, OVERLOADED_RETRY_AFTER_S)
        }
        _ => ApiError::conflict(detail),
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Server(w) => w.into(),
            ClientError::Protocol(_) | ClientError::UnexpectedReply { .. } => {
                tracing::error!(error = %e, "unexpected answer from the shards");
                ApiError::internal("unexpected answer from the shards")
            }
            other => ApiError::overloaded(
                format!("shards unreachable: {other}"),
                OVERLOADED_RETRY_AFTER_S,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_failures_are_told_apart_and_fraud_rules_stay_private() {
        let declined = engine_error(EngineError::PaymentDeclined {
            code: "insufficient_funds".into(),
            message: "the card has insufficient funds".into(),
        });
        assert_eq!(declined.status, StatusCode::PAYMENT_REQUIRED);
        let p = declined.problem();
        assert_eq!(p.code, "payment_declined");
        assert_eq!(p.decline_code.as_deref(), Some("insufficient_funds"));

        let fraud = engine_error(EngineError::FraudRejected {
            score: 95,
            reasons: vec!["card_velocity".into(), "country_mismatch".into()],
        });
        assert_eq!(fraud.status, StatusCode::PAYMENT_REQUIRED);
        let body = serde_json::to_string(&fraud.problem()).unwrap();
        assert!(
            body.contains("\"decline_code\":\"risk_rejected\""),
            "{body}"
        );
        for secret in ["95", "card_velocity", "country_mismatch", "score"] {
            assert!(!body.contains(secret), "{secret} leaked: {body}");
        }

        let failed = engine_error(EngineError::PaymentFailed {
            message: "provider timed out".into(),
        });
        assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(failed.code, Code::PaymentUnavailable);
        assert_eq!(
            failed.retry_after_s,
            Some(PAYMENT_UNAVAILABLE_RETRY_AFTER_S)
        );
        assert!(failed.problem().decline_code.is_none());

        // Other problems carry no decline code at all.
        let body = serde_json::to_string(&ApiError::invalid("x").problem()).unwrap();
        assert!(!body.contains("decline_code"), "{body}");
    }

    fn header(e: &ApiError) -> Option<String> {
        let resp = e.clone().into_response();
        resp.headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    #[test]
    fn node_overload_is_503_overloaded_with_its_retry_hint() {
        for (ms, secs) in [(0, "1"), (1, "1"), (1_000, "1"), (1_001, "2"), (2_500, "3")] {
            let e = ApiError::from(WireError::Overloaded { retry_after_ms: ms });
            assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE, "{ms} ms");
            assert_eq!(e.problem().code, "overloaded", "{ms} ms");
            assert_eq!(header(&e).as_deref(), Some(secs), "{ms} ms");
            assert!(e.detail.contains(&format!("{ms} ms")), "{}", e.detail);
            assert!(!e.detail.contains("queue"), "{}", e.detail);
        }
        // Through the client's error type too, as the handlers see it.
        let e = ApiError::from(ClientError::Server(WireError::Overloaded {
            retry_after_ms: 1_500,
        }));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&e).as_deref(), Some("2"));
    }

    #[test]
    fn a_passed_deadline_is_503_overloaded_with_retry_after() {
        let e = ApiError::from(WireError::DeadlineExceeded { timeout_ms: 4_200 });
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        let p = e.problem();
        assert_eq!(p.code, "overloaded");
        assert_eq!(p.type_, "urn:reserva:problem:overloaded");
        assert!(p.detail.contains("4200 ms"), "{}", p.detail);
        assert!(p.detail.contains("nothing was applied"), "{}", p.detail);
        assert_eq!(
            header(&e).as_deref(),
            Some(OVERLOADED_RETRY_AFTER_S.to_string().as_str())
        );
    }
}

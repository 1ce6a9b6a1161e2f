//! Extractors whose rejections are problem documents, and input checks.

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::caller::Caller;
use crate::limits::{ID_BYTES_MAX, IDEMPOTENCY_KEY_BYTES_MAX};
use crate::problem::{ApiError, Code};

/// A JSON body: unknown fields, wrong types, malformed JSON are 400
/// `invalid_request`; a body over `BODY_BYTES_MAX` is 413 `payload_too_large`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => {
                let status = rejection.status();
                let detail = rejection.body_text();
                Err(match status {
                    StatusCode::PAYLOAD_TOO_LARGE => {
                        ApiError::new(status, Code::PayloadTooLarge, detail)
                    }
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
                        status,
                        Code::InvalidRequest,
                        "expected Content-Type: application/json",
                    ),
                    _ => ApiError::invalid(detail),
                })
            }
        }
    }
}

/// Path parameters; undecodable ones are 400 `invalid_request`.
#[derive(Debug)]
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| PathParams(v))
            .map_err(|e| ApiError::invalid(e.body_text()))
    }
}

/// Query parameters; unknown or malformed ones are 400 `invalid_request`.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| QueryParams(v))
            .map_err(|e| ApiError::invalid(e.body_text()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Ok(parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller::Anonymous))
    }
}

/// The optional `Idempotency-Key` header: 1..=`IDEMPOTENCY_KEY_BYTES_MAX`
/// visible ASCII characters.
#[derive(Debug, Clone, Default)]
pub struct IdempotencyKey(pub Option<String>);

impl IdempotencyKey {
    /// The key sent to the shards: the caller's scope and the header's key, so
    /// that two callers' keys never meet.
    pub fn wire(&self, caller: &Caller) -> Option<String> {
        self.0
            .as_ref()
            .map(|k| format!("gw:{}:{k}", caller.scope()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Some(v) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        let bad = || {
            ApiError::invalid(format!(
                "Idempotency-Key must be 1..={IDEMPOTENCY_KEY_BYTES_MAX} visible ASCII characters"
            ))
        };
        let s = v.to_str().map_err(|_| bad())?;
        if s.is_empty()
            || s.len() > IDEMPOTENCY_KEY_BYTES_MAX
            || !s.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(bad());
        }
        Ok(IdempotencyKey(Some(s.to_owned())))
    }
}

/// An id (SKU, warehouse, user, seller): 1..=`ID_BYTES_MAX` bytes, no control characters.
pub fn check_id(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > ID_BYTES_MAX {
        return Err(ApiError::invalid(format!(
            "{field} must have 1..={ID_BYTES_MAX} bytes, got {}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

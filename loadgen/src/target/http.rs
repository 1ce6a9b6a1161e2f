//! `http://HOST:PORT`: the REST gateway (`/v1`, JSON, problem details).
//!
//! Reserve is `POST /v1/reservations`; confirming a reservation is a
//! checkout of it (`POST /v1/checkout` with `reservation_id`, the gateway
//! has no bare confirm); release is `DELETE /v1/reservations/{id}`; stock is
//! `GET /v1/skus/{sku}`. Requests of a batch run concurrently, at most
//! `--connections` at once (HTTP/1.1 keep-alive, one request per connection
//! at a time).

use std::ops::Range;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use reserva_client::protocol::engine::{OrderId, ReservationId};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::{Binding, CartReq, CheckoutReq, Hold, OpError, OpResult, ReserveReq, StockRow};
use crate::limits::SEED_SHED_RETRIES;
use crate::workload::{
    CURRENCY, Catalog, Line, PRICE_MINOR, seller_name, sku_name, user_name, warehouse_name,
};

/// The REST gateway binding.
pub struct Http {
    base: String,
    client: reqwest::Client,
    token: Option<String>,
    permits: Semaphore,
}

impl Http {
    /// A client of the gateway at `base` (`http://HOST:PORT`).
    pub fn new(base: &str, connections: usize, token: Option<String>) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        Ok(Http {
            base: base.trim_end_matches('/').to_owned(),
            client,
            token,
            permits: Semaphore::new(connections.max(1)),
        })
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> OpResult<Value> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| OpError::unknown("closed"))?;
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                OpError::unknown("timeout")
            } else {
                OpError::unknown("connection")
            }
        })?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        Err(problem_code(status, &body))
    }

    fn checkout_body(&self, user: u32, source: Value) -> Value {
        let mut body = json!({
            "user_id": user_name(user),
            "payment": {"method": "card", "card_number": super::reserva::card_of(user)},
            "ship_to": {
                "name": user_name(user), "line1": "1 Bench Street", "city": "Springfield",
                "postal_code": "12345", "country": "US"
            }
        });
        if let (Some(obj), Value::Object(src)) = (body.as_object_mut(), source) {
            obj.extend(src);
        }
        body
    }
}

impl Http {
    /// A seeding `PUT`, sent again while the gateway sheds it (`overloaded`),
    /// up to `SEED_SHED_RETRIES` times with a wait doubling from 5 ms to 1 s
    /// (a `PUT` may repeat).
    async fn seed_put(&self, path: &str, body: Value) -> OpResult<()> {
        let mut wait = Duration::from_millis(5);
        let mut attempt = 0;
        loop {
            match self.call(Method::PUT, path, Some(body.clone())).await {
                Err(e) if e.is_shed() && attempt < SEED_SHED_RETRIES => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                    attempt += 1;
                }
                r => return r.map(|_| ()),
            }
        }
    }
}

/// The stable `code` of a problem document, or one from the status.
fn problem_code(status: StatusCode, body: &Value) -> OpError {
    let code = body.get("code").and_then(Value::as_str).unwrap_or("");
    let known: &'static str = match code {
        "insufficient_stock" => super::CODE_INSUFFICIENT_STOCK,
        "overloaded" => super::CODE_OVERLOADED,
        "rate_limited" => "rate_limited",
        "not_found" => "not_found",
        "payment_declined" => "payment_declined",
        "idempotency_conflict" => "idempotency_conflict",
        "unauthorized" => "unauthorized",
        "forbidden" => "forbidden",
        "conflict" => "conflict",
        "invalid_request" => "invalid_request",
        "payload_too_large" => "payload_too_large",
        _ => match status.as_u16() {
            503 => super::CODE_OVERLOADED,
            429 => "rate_limited",
            404 => "not_found",
            s if s >= 500 => "http_5xx",
            _ => "http_4xx",
        },
    };
    if status.is_server_error() && known != super::CODE_OVERLOADED {
        OpError::unknown(known)
    } else {
        OpError::refused(known)
    }
}

fn id_from<T: FromStr>(v: &Value, field: &str) -> Option<T> {
    v.get(field).and_then(Value::as_str)?.parse().ok()
}

fn lines_json(lines: &[Line]) -> Value {
    Value::Array(
        lines
            .iter()
            .map(|l| json!({"sku": sku_name(l.sku), "qty": l.qty}))
            .collect(),
    )
}

impl Binding for Http {
    fn kind(&self) -> &'static str {
        "http"
    }

    async fn seed(&self, catalog: &Catalog, skus: Range<u32>) -> anyhow::Result<()> {
        let results = join_all(skus.map(|i| async move {
            let body = json!({
                "seller_id": seller_name(i % catalog.sellers),
                "title": format!("Item {i}"),
                "price": {"amount_minor": PRICE_MINOR, "currency": CURRENCY},
            });
            self.seed_put(&format!("/v1/skus/{}", sku_name(i)), body)
                .await?;
            for w in 0..catalog.warehouses {
                let path = format!("/v1/skus/{}/stock/{}", sku_name(i), warehouse_name(w));
                self.seed_put(&path, json!({"on_hand": catalog.stock}))
                    .await?;
            }
            Ok::<(), OpError>(())
        }))
        .await;
        for r in results {
            r.map_err(|e| anyhow::anyhow!("seeding over HTTP failed: {}", e.code))?;
        }
        Ok(())
    }

    async fn reserve(&self, reqs: Vec<ReserveReq>) -> Vec<OpResult<Hold>> {
        join_all(reqs.into_iter().map(|r| async move {
            let body = json!({
                "user_id": user_name(r.user),
                "lines": lines_json(&r.lines),
                "ttl_seconds": 900,
            });
            let v = self
                .call(Method::POST, "/v1/reservations", Some(body))
                .await?;
            let id: ReservationId =
                id_from(&v, "reservation_id").ok_or(OpError::unknown("unexpected_reply"))?;
            Ok(Hold {
                id: id.0,
                user: r.user,
                lines: r.lines,
            })
        }))
        .await
    }

    async fn confirm(&self, holds: &[Hold]) -> Vec<OpResult<()>> {
        join_all(holds.iter().map(|h| async move {
            let source = json!({"reservation_id": ReservationId(h.id).to_string()});
            let body = self.checkout_body(h.user, source);
            self.call(Method::POST, "/v1/checkout", Some(body))
                .await
                .map(|_| ())
        }))
        .await
    }

    async fn release(&self, holds: &[Hold]) -> Vec<OpResult<()>> {
        join_all(holds.iter().map(|h| async move {
            let path = format!("/v1/reservations/{}", ReservationId(h.id));
            self.call(Method::DELETE, &path, None).await.map(|_| ())
        }))
        .await
    }

    async fn checkout(&self, reqs: Vec<CheckoutReq>) -> Vec<OpResult<u64>> {
        join_all(reqs.into_iter().map(|r| async move {
            let body = self.checkout_body(r.user, json!({"lines": lines_json(&r.lines)}));
            let v = self.call(Method::POST, "/v1/checkout", Some(body)).await?;
            let id: OrderId =
                id_from(&v, "order_id").ok_or(OpError::unknown("unexpected_reply"))?;
            Ok(id.0)
        }))
        .await
    }

    async fn stock(&self, skus: Vec<u32>) -> Vec<OpResult<u64>> {
        join_all(skus.into_iter().map(|s| async move {
            let v = self
                .call(Method::GET, &format!("/v1/skus/{}", sku_name(s)), None)
                .await?;
            v.get("available")
                .and_then(Value::as_u64)
                .ok_or(OpError::unknown("unexpected_reply"))
        }))
        .await
    }

    async fn cart_set(&self, reqs: Vec<CartReq>) -> Vec<OpResult<()>> {
        join_all(reqs.into_iter().map(|c| async move {
            let path = format!(
                "/v1/users/{}/cart/items/{}",
                user_name(c.user),
                sku_name(c.sku)
            );
            self.call(Method::PUT, &path, Some(json!({"qty": c.qty})))
                .await
                .map(|_| ())
        }))
        .await
    }

    async fn stock_rows(&self, skus: Vec<u32>) -> anyhow::Result<Vec<Vec<StockRow>>> {
        let rows = join_all(skus.iter().map(|&s| async move {
            let v = self
                .call(Method::GET, &format!("/v1/skus/{}", sku_name(s)), None)
                .await
                .map_err(|e| anyhow::anyhow!("GET {}: {}", sku_name(s), e.code))?;
            let whs = v
                .get("warehouses")
                .and_then(Value::as_array)
                .ok_or_else(|| anyhow::anyhow!("GET {}: no warehouses", sku_name(s)))?;
            Ok::<_, anyhow::Error>(
                whs.iter()
                    .map(|w| StockRow {
                        on_hand: w.get("on_hand").and_then(Value::as_u64).unwrap_or(0),
                        reserved: w.get("reserved").and_then(Value::as_u64).unwrap_or(0),
                        deducted: None,
                        added: None,
                    })
                    .collect(),
            )
        }))
        .await;
        rows.into_iter().collect()
    }

    async fn missing_orders(&self, ids: Vec<u64>) -> anyhow::Result<u64> {
        let found = join_all(ids.iter().map(|&id| async move {
            self.call(Method::GET, &format!("/v1/orders/{}", OrderId(id)), None)
                .await
        }))
        .await;
        let mut missing = 0;
        for r in found {
            match r {
                Ok(_) => {}
                Err(e) if e.code == "not_found" => missing += 1,
                Err(e) => anyhow::bail!("GET order: {}", e.code),
            }
        }
        Ok(missing)
    }
}

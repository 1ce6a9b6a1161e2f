//! What the gateway is started with.

use std::fmt;
use std::sync::Arc;

use reserva_client::auth::AuthTable;

use crate::limits::{CONNECTION_IDLE_TIMEOUT, CONNECTIONS_MAX, REQUESTS_IN_FLIGHT_MAX};

/// A hook that returns more Prometheus text to append to `/metrics` (the
/// embedding server's own metrics).
pub type MetricsHook = Arc<dyn Fn() -> String + Send + Sync>;

/// Requests per minute of each rate-limit tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Requests without a key, per client IP.
    pub anonymous: u32,
    /// Customer keys without a tier (tier `standard`).
    pub customer: u32,
    /// Keys with tier `prime`.
    pub prime: u32,
    /// Seller keys.
    pub seller: u32,
    /// Admin keys, and every request when no auth file is used.
    pub admin: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            anonymous: 100,
            customer: 1_000,
            prime: 5_000,
            seller: 10_000,
            admin: 100_000,
        }
    }
}

impl RateLimits {
    /// Applies `tier=per_minute` pairs separated by commas
    /// (`anonymous=100,customer=1000`); tiers not named keep their value.
    pub fn apply(&mut self, spec: &str) -> Result<(), String> {
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (tier, n) = part
                .split_once('=')
                .ok_or_else(|| format!("rate limit {part:?}: expected TIER=PER_MINUTE"))?;
            let n: u32 = n.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                format!("rate limit {part:?}: PER_MINUTE must be a positive integer")
            })?;
            match tier {
                "anonymous" => self.anonymous = n,
                "customer" | "standard" => self.customer = n,
                "prime" => self.prime = n,
                "seller" => self.seller = n,
                "admin" => self.admin = n,
                other => {
                    return Err(format!(
                        "unknown rate-limit tier {other:?} (anonymous, customer, prime, seller, admin)"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for RateLimits {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut r = RateLimits::default();
        r.apply(s)?;
        Ok(r)
    }
}

/// Everything a gateway needs besides its connection to the shards.
#[derive(Clone)]
pub struct GatewayConfig {
    /// API keys; `None`: every request has full access (serve loopback only).
    pub auth: Option<Arc<AuthTable>>,
    /// Rate limits per tier.
    pub rate_limits: RateLimits,
    /// Extra Prometheus text appended to `/metrics`.
    pub metrics_hook: Option<MetricsHook>,
    /// Requests in flight before new ones are shed with 503 `overloaded`
    /// (default [`REQUESTS_IN_FLIGHT_MAX`]; at least 1).
    pub requests_in_flight_max: usize,
    /// Open connections before new ones are refused with 503 `overloaded`
    /// (default [`CONNECTIONS_MAX`]; at least 1).
    pub connections_max: usize,
    /// A connection idle this long is closed (default
    /// [`CONNECTION_IDLE_TIMEOUT`]).
    pub connection_idle_timeout: std::time::Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            auth: None,
            rate_limits: RateLimits::default(),
            metrics_hook: None,
            requests_in_flight_max: REQUESTS_IN_FLIGHT_MAX,
            connections_max: CONNECTIONS_MAX,
            connection_idle_timeout: CONNECTION_IDLE_TIMEOUT,
        }
    }
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("auth_keys", &self.auth.as_ref().map(|a| a.len()))
            .field("rate_limits", &self.rate_limits)
            .field("metrics_hook", &self.metrics_hook.is_some())
            .field("requests_in_flight_max", &self.requests_in_flight_max)
            .field("connections_max", &self.connections_max)
            .field("connection_idle_timeout", &self.connection_idle_timeout)
            .finish()
    }
}

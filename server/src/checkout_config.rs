//! The checkout configuration: fraud rules, the card provider's behaviour
//! and warehouse locations, from an optional TOML file (`--checkout-config`).
//!
//! ```toml
//! [fraud]
//! window_seconds = 3600          # look-back of the velocity rules
//! user_velocity_max = 10         # checkouts per user in the window
//! card_velocity_max = 20         # uses per card (by anyone) in the window
//! new_account_days = 7
//! new_account_amount_minor = 100000
//! distinct_cards_max = 3
//! review_at = 50                 # score that holds an order for review
//! reject_at = 80                 # score that rejects the checkout
//! # points per rule: user_velocity_points, card_velocity_points,
//! # new_account_points, distinct_cards_points, country_mismatch_points
//!
//! [payments]
//! latency_ms = 0                 # sandbox card provider latency per call
//! attempts = 5                   # provider attempts before a checkout compensates
//! timeout_ms = 3000              # a provider call slower than this is retried (same key)
//!
//! [[warehouses]]
//! id = "fra-1"
//! lat = 50.11
//! lon = 8.68
//! ```

use std::path::Path;
use std::time::Duration;

use reserva_engine::limits::FRAUD_WINDOW_MS_MAX;
use reserva_engine::sm::FraudRules;
use serde::Deserialize;

use crate::limits::{PROVIDER_TIMEOUT_DEFAULT, SAGA_CALL_ATTEMPTS, WAREHOUSE_LOCATIONS_MAX};

/// A warehouse and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct WarehouseLocation {
    /// Warehouse id, as stock is recorded under.
    pub id: String,
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
}

/// Everything the checkout saga is configured with.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckoutConfig {
    /// Fraud rules (carried into each logged scoring step).
    pub fraud: FraudRules,
    /// Sandbox card provider latency per call.
    pub payment_latency: Duration,
    /// Provider attempts before a checkout compensates.
    pub payment_attempts: u32,
    /// Longest a provider call may take before it is retried with the same key.
    pub payment_timeout: Duration,
    /// Warehouse locations for routing and delivery estimates.
    pub warehouses: Vec<WarehouseLocation>,
}

impl Default for CheckoutConfig {
    fn default() -> Self {
        CheckoutConfig {
            fraud: FraudRules::default(),
            payment_latency: Duration::ZERO,
            payment_attempts: SAGA_CALL_ATTEMPTS,
            payment_timeout: PROVIDER_TIMEOUT_DEFAULT,
            warehouses: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    fraud: FraudFile,
    #[serde(default)]
    payments: PaymentsFile,
    #[serde(default)]
    warehouses: Vec<WarehouseFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FraudFile {
    window_seconds: Option<u64>,
    user_velocity_max: Option<u32>,
    user_velocity_points: Option<u32>,
    card_velocity_max: Option<u32>,
    card_velocity_points: Option<u32>,
    new_account_days: Option<u64>,
    new_account_amount_minor: Option<u64>,
    new_account_points: Option<u32>,
    distinct_cards_max: Option<u32>,
    distinct_cards_points: Option<u32>,
    country_mismatch_points: Option<u32>,
    review_at: Option<u32>,
    reject_at: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentsFile {
    latency_ms: Option<u64>,
    attempts: Option<u32>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WarehouseFile {
    id: String,
    lat: f64,
    lon: f64,
}

impl CheckoutConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read checkout config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("checkout config {}: {e}", path.display()))
    }

    /// Parses and checks a configuration.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let d = FraudRules::default();
        let f = file.fraud;
        let fraud = FraudRules {
            window_ms: f
                .window_seconds
                .map_or(d.window_ms, |s| s.saturating_mul(1000)),
            user_velocity_max: f.user_velocity_max.unwrap_or(d.user_velocity_max),
            user_velocity_points: f.user_velocity_points.unwrap_or(d.user_velocity_points),
            card_velocity_max: f.card_velocity_max.unwrap_or(d.card_velocity_max),
            card_velocity_points: f.card_velocity_points.unwrap_or(d.card_velocity_points),
            new_account_ms: f
                .new_account_days
                .map_or(d.new_account_ms, |days| days.saturating_mul(86_400_000)),
            new_account_amount_minor: f
                .new_account_amount_minor
                .unwrap_or(d.new_account_amount_minor),
            new_account_points: f.new_account_points.unwrap_or(d.new_account_points),
            distinct_cards_max: f.distinct_cards_max.unwrap_or(d.distinct_cards_max),
            distinct_cards_points: f.distinct_cards_points.unwrap_or(d.distinct_cards_points),
            country_mismatch_points: f
                .country_mismatch_points
                .unwrap_or(d.country_mismatch_points),
            review_at: f.review_at.unwrap_or(d.review_at),
            reject_at: f.reject_at.unwrap_or(d.reject_at),
        };
        if !(1..=FRAUD_WINDOW_MS_MAX).contains(&fraud.window_ms) {
            return Err(format!(
                "fraud.window_seconds must be in 1..={}",
                FRAUD_WINDOW_MS_MAX / 1000
            ));
        }
        if fraud.review_at > fraud.reject_at {
            return Err("fraud.review_at must not exceed fraud.reject_at".into());
        }
        let latency_ms = file.payments.latency_ms.unwrap_or(0);
        if latency_ms > 60_000 {
            return Err("payments.latency_ms must be at most 60000".into());
        }
        let attempts = file.payments.attempts.unwrap_or(SAGA_CALL_ATTEMPTS);
        if !(1..=100).contains(&attempts) {
            return Err("payments.attempts must be in 1..=100".into());
        }
        let timeout_ms = file
            .payments
            .timeout_ms
            .unwrap_or(PROVIDER_TIMEOUT_DEFAULT.as_millis() as u64);
        if !(10..=60_000).contains(&timeout_ms) {
            return Err("payments.timeout_ms must be in 10..=60000".into());
        }
        if file.warehouses.len() > WAREHOUSE_LOCATIONS_MAX {
            return Err(format!(
                "at most {WAREHOUSE_LOCATIONS_MAX} warehouses (WAREHOUSE_LOCATIONS_MAX)"
            ));
        }
        let mut warehouses = Vec::with_capacity(file.warehouses.len());
        for (i, w) in file.warehouses.into_iter().enumerate() {
            if w.id.is_empty() || w.id.len() > reserva_engine::limits::ID_BYTES_MAX {
                return Err(format!("warehouses[{i}].id must have 1..=64 bytes"));
            }
            if !(-90.0..=90.0).contains(&w.lat) || !(-180.0..=180.0).contains(&w.lon) {
                return Err(format!("warehouses[{i}]: lat/lon out of range"));
            }
            if warehouses.iter().any(|x: &WarehouseLocation| x.id == w.id) {
                return Err(format!("warehouses[{i}].id {:?} appears twice", w.id));
            }
            warehouses.push(WarehouseLocation {
                id: w.id,
                lat: w.lat,
                lon: w.lon,
            });
        }
        Ok(CheckoutConfig {
            fraud,
            payment_latency: Duration::from_millis(latency_ms),
            payment_attempts: attempts,
            payment_timeout: Duration::from_millis(timeout_ms),
            warehouses,
        })
    }

    /// The location of a warehouse, if configured.
    pub fn warehouse(&self, id: &str) -> Option<&WarehouseLocation> {
        self.warehouses.iter().find(|w| w.id == id)
    }
}

/// Great-circle distance in km.
pub fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const R: f64 = 6371.0;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * R * a.sqrt().atan2((1.0 - a).sqrt())
}

/// Days from dispatch to delivery for a distance: one day to pack and hand
/// over, then a day per 800 km started; 5 days when the distance is unknown.
pub fn delivery_days(distance_km: Option<f64>) -> u64 {
    match distance_km {
        Some(km) => 1 + (km / 800.0).ceil().max(1.0) as u64,
        None => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_defaults_and_overrides() {
        let c = CheckoutConfig::parse("").unwrap();
        assert_eq!(c, CheckoutConfig::default());
        let c = CheckoutConfig::parse(
            "[fraud]\nreview_at = 10\nreject_at = 20\n[payments]\nlatency_ms = 5\n[[warehouses]]\nid = \"a\"\nlat = 1.0\nlon = 2.0\n",
        )
        .unwrap();
        assert_eq!(c.fraud.review_at, 10);
        assert_eq!(c.payment_latency, Duration::from_millis(5));
        assert_eq!(c.warehouse("a").map(|w| w.lon), Some(2.0));
    }

    #[test]
    fn refuses_bad_files() {
        for bad in [
            "[fraud]\nreview_at = 90\nreject_at = 80\n",
            "[fraud]\nwindow_seconds = 0\n",
            "[fraud]\nunknown = 1\n",
            "[[warehouses]]\nid = \"a\"\nlat = 91.0\nlon = 0.0\n",
            "[[warehouses]]\nid = \"a\"\nlat = 1.0\nlon = 0.0\n[[warehouses]]\nid = \"a\"\nlat = 1.0\nlon = 0.0\n",
            "[payments]\nattempts = 0\n",
        ] {
            assert!(CheckoutConfig::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn distances_and_estimates() {
        // Frankfurt to Berlin is about 420 km.
        let d = distance_km(50.11, 8.68, 52.52, 13.40);
        assert!((400.0..450.0).contains(&d), "{d}");
        assert_eq!(delivery_days(Some(d)), 2);
        assert_eq!(delivery_days(Some(2000.0)), 4);
        assert_eq!(delivery_days(None), 5);
    }
}

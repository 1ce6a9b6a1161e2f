//! The seeded catalogue and the units of work a scenario draws from it.
//!
//! Every target is seeded with the same names (`sku-N`, `wh-N`, `seller-N`,
//! users `user-N`) and every scenario draws the same keys, whatever the target:
//! a comparison between targets compares the same work.

use std::fmt;

use anyhow::{Context, bail};
use clap::ValueEnum;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};
use reserva_client::protocol::engine::{SHARD_COUNT, shard_of};

use crate::limits::{LINES_PER_UNIT_MAX, SKUS_MAX, WAREHOUSES_MAX};

/// Unit price of every seeded SKU, in minor units of [`CURRENCY`].
pub const PRICE_MINOR: u64 = 1_999;
/// Currency of every seeded SKU.
pub const CURRENCY: &str = "EUR";

/// What a run does, unit by unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Reserve 1-3 lines (one shard's SKUs), then confirm: one unit.
    Reserve,
    /// The full checkout (on peers: reserve + an order record).
    Checkout,
    /// Stock reads.
    Browse,
    /// A storefront mix: mostly reads, some cart changes, a few checkouts.
    Mixed,
    /// Every unit reserves one unit of one SKU and confirms it.
    Hotsku,
    /// `reserve` at a baseline rate, a ramp to `--spike-factor` times it, a hold, a fall back.
    Spike,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Scenario::Reserve => "reserve",
            Scenario::Checkout => "checkout",
            Scenario::Browse => "browse",
            Scenario::Mixed => "mixed",
            Scenario::Hotsku => "hotsku",
            Scenario::Spike => "spike",
        };
        f.write_str(s)
    }
}

/// The seeded catalogue: SKU and warehouse names, and which SKUs share a shard.
pub struct Catalog {
    /// SKUs `sku-0 .. sku-(skus-1)`.
    pub skus: u32,
    /// Warehouses `wh-0 ..` stocked for every SKU.
    pub warehouses: u32,
    /// Users `user-0 ..` that place work.
    pub users: u32,
    /// Sellers the SKUs are spread over.
    pub sellers: u32,
    /// Units stocked per SKU and warehouse.
    pub stock: u64,
    /// The shard of each SKU (reserva's routing rule).
    shard: Vec<u16>,
    /// SKU indices per shard: multi-line reservations draw their lines from one.
    by_shard: Vec<Vec<u32>>,
}

impl Catalog {
    /// Builds the catalogue description (no I/O).
    pub fn new(
        skus: u32,
        warehouses: u32,
        users: u32,
        sellers: u32,
        stock: u64,
    ) -> anyhow::Result<Self> {
        if skus == 0 || skus as usize > SKUS_MAX {
            bail!("--skus must be 1..={SKUS_MAX}, got {skus}");
        }
        if warehouses == 0 || warehouses as usize > WAREHOUSES_MAX {
            bail!("--warehouses must be 1..={WAREHOUSES_MAX}, got {warehouses}");
        }
        if users == 0 || sellers == 0 {
            bail!("--users and --sellers must be at least 1");
        }
        let shard: Vec<u16> = (0..skus).map(|i| shard_of(&sku_name(i))).collect();
        let mut by_shard = vec![Vec::new(); usize::from(SHARD_COUNT)];
        for (i, s) in shard.iter().enumerate() {
            if let Some(list) = by_shard.get_mut(usize::from(*s)) {
                list.push(i as u32);
            }
        }
        Ok(Catalog {
            skus,
            warehouses,
            users,
            sellers,
            stock,
            shard,
            by_shard,
        })
    }

    /// The SKUs on the same shard as `sku` (including it).
    pub fn shard_mates(&self, sku: u32) -> &[u32] {
        let s = self.shard.get(sku as usize).copied().unwrap_or(0);
        self.by_shard
            .get(usize::from(s))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// Name of SKU `i`.
pub fn sku_name(i: u32) -> String {
    format!("sku-{i}")
}

/// Name of warehouse `i`.
pub fn warehouse_name(i: u32) -> String {
    format!("wh-{i}")
}

/// Name of user `i`.
pub fn user_name(i: u32) -> String {
    format!("user-{i}")
}

/// Name of seller `i`.
pub fn seller_name(i: u32) -> String {
    format!("seller-{i}")
}

/// How keys are drawn.
#[derive(Debug, Clone, Copy)]
pub enum KeyDist {
    /// Every SKU equally likely.
    Uniform,
    /// Zipfian (`--zipf 0.99`): SKU 0 the hottest.
    Zipf(Zipf<f64>),
}

impl KeyDist {
    /// Zipfian over the catalogue's SKUs with exponent `s`.
    pub fn zipf(catalog: &Catalog, s: f64) -> anyhow::Result<Self> {
        Ok(KeyDist::Zipf(
            Zipf::new(f64::from(catalog.skus), s)
                .with_context(|| format!("--zipf {s} is not a valid exponent"))?,
        ))
    }
}

/// One line of work: `qty` units of SKU index `sku`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// SKU index into the catalogue.
    pub sku: u32,
    /// Units.
    pub qty: u32,
}

/// One unit of work of a scenario.
#[derive(Debug, Clone)]
pub enum Unit {
    /// Reserve the lines for `user`, then confirm.
    Reserve { user: u32, lines: Vec<Line> },
    /// Reserve the lines for `user`, then release them (an abandoned cart).
    ReserveRelease { user: u32, lines: Vec<Line> },
    /// Check the lines out for `user`.
    Checkout { user: u32, lines: Vec<Line> },
    /// Read a SKU's available stock.
    Browse { sku: u32 },
    /// Put a SKU into a user's cart.
    CartSet { user: u32, sku: u32, qty: u32 },
}

/// Draws units for one scenario; one per task (it holds its own RNG).
pub struct Generator<'a> {
    catalog: &'a Catalog,
    scenario: Scenario,
    zipf: Option<Zipf<f64>>,
    rng: SmallRng,
}

impl<'a> Generator<'a> {
    /// A generator with its own RNG seeded from `seed`.
    pub fn new(catalog: &'a Catalog, scenario: Scenario, dist: KeyDist, seed: u64) -> Self {
        let zipf = match dist {
            KeyDist::Uniform => None,
            KeyDist::Zipf(z) => Some(z),
        };
        Generator {
            catalog,
            scenario,
            zipf,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    fn sku(&mut self) -> u32 {
        match &self.zipf {
            // Zipf yields 1..=n as a float.
            Some(z) => (z.sample(&mut self.rng) as u32)
                .saturating_sub(1)
                .min(self.catalog.skus - 1),
            None => self.rng.random_range(0..self.catalog.skus),
        }
    }

    fn user(&mut self) -> u32 {
        self.rng.random_range(0..self.catalog.users)
    }

    /// 1-3 distinct lines of one unit each, all on the first SKU's shard.
    fn lines(&mut self) -> Vec<Line> {
        let first = self.sku();
        let want = self.rng.random_range(1..=LINES_PER_UNIT_MAX);
        let mut lines = vec![Line { sku: first, qty: 1 }];
        let mates = self.catalog.shard_mates(first);
        // A few tries to find distinct shard mates; fewer lines when the shard is small.
        for _ in 0..(want * 3) {
            if lines.len() >= want || mates.len() <= lines.len() {
                break;
            }
            let pick = mates[self.rng.random_range(0..mates.len())];
            if !lines.iter().any(|l| l.sku == pick) {
                lines.push(Line { sku: pick, qty: 1 });
            }
        }
        lines
    }

    /// The next unit of the scenario.
    pub fn next_unit(&mut self) -> Unit {
        match self.scenario {
            Scenario::Reserve | Scenario::Spike => Unit::Reserve {
                user: self.user(),
                lines: self.lines(),
            },
            Scenario::Hotsku => Unit::Reserve {
                user: self.user(),
                lines: vec![Line { sku: 0, qty: 1 }],
            },
            Scenario::Checkout => Unit::Checkout {
                user: self.user(),
                lines: self.lines(),
            },
            Scenario::Browse => Unit::Browse { sku: self.sku() },
            Scenario::Mixed => {
                // A storefront: 90% stock reads, 6% cart changes, 2% holds
                // that are given back (abandoned carts), 2% checkouts.
                let roll = self.rng.random_range(0..100u32);
                if roll < 90 {
                    Unit::Browse { sku: self.sku() }
                } else if roll < 96 {
                    Unit::CartSet {
                        user: self.user(),
                        sku: self.sku(),
                        qty: self.rng.random_range(1..=3),
                    }
                } else if roll < 98 {
                    Unit::ReserveRelease {
                        user: self.user(),
                        lines: self.lines(),
                    }
                } else {
                    Unit::Checkout {
                        user: self.user(),
                        lines: self.lines(),
                    }
                }
            }
        }
    }
}

//! The targets, behind one trait (YCSB-style bindings): the scenarios are
//! written once against [`Binding`], and each target implements the same
//! operations in its own terms.
//!
//! Every operation takes a batch (one per scheduler tick and step) and
//! answers one result per item, in order. A binding sends a batch the way
//! its target goes fastest: reserva as per-core `BATCH` frames, Redis
//! pipelined on multiplexed connections, PostgreSQL over a connection pool,
//! HTTP as concurrent requests.

use std::future::Future;

use crate::workload::{Catalog, Line};

pub mod http;
pub mod postgres;
pub mod redis;
pub mod reserva;

/// Why one operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpError {
    /// A stable, short code (`insufficient_stock`, `overloaded`, `timeout`, ...).
    pub code: &'static str,
    /// Whether the operation may have been applied all the same (a timeout or
    /// a lost connection): `--verify` allows for it either way.
    pub unknown_outcome: bool,
}

impl OpError {
    /// A refusal: nothing was applied.
    pub const fn refused(code: &'static str) -> Self {
        OpError {
            code,
            unknown_outcome: false,
        }
    }
    /// A failure whose effect is unknown.
    pub const fn unknown(code: &'static str) -> Self {
        OpError {
            code,
            unknown_outcome: true,
        }
    }
    /// Whether the target shed the operation for overload (counted apart).
    pub fn is_shed(&self) -> bool {
        self.code == CODE_OVERLOADED
    }
}

/// Code of an operation the target shed for overload.
pub const CODE_OVERLOADED: &str = "overloaded";
/// Code of an operation refused for lack of stock.
pub const CODE_INSUFFICIENT_STOCK: &str = "insufficient_stock";

/// The result of one operation.
pub type OpResult<T> = Result<T, OpError>;

/// A reserve request.
#[derive(Debug, Clone)]
pub struct ReserveReq {
    /// User index.
    pub user: u32,
    /// Lines (all on one reserva shard).
    pub lines: Vec<Line>,
}

/// A held reservation: the target's id and what it holds.
#[derive(Debug, Clone)]
pub struct Hold {
    /// The target's reservation id.
    pub id: u64,
    /// User index.
    pub user: u32,
    /// The lines held.
    pub lines: Vec<Line>,
}

/// A checkout request.
#[derive(Debug, Clone)]
pub struct CheckoutReq {
    /// User index.
    pub user: u32,
    /// Lines to buy.
    pub lines: Vec<Line>,
}

/// A cart change.
#[derive(Debug, Clone, Copy)]
pub struct CartReq {
    /// User index.
    pub user: u32,
    /// SKU index.
    pub sku: u32,
    /// Units.
    pub qty: u32,
}

/// Stock of one SKU in one warehouse, as the target reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StockRow {
    /// Units present.
    pub on_hand: u64,
    /// Units held by live reservations.
    pub reserved: u64,
    /// Units deducted by confirmed reservations and orders, if the target keeps it.
    pub deducted: Option<u64>,
    /// Units ever put on hand (for conservation: `on_hand == added - deducted`,
    /// plus what a target's own ledger adds), if the target keeps it.
    pub added: Option<u64>,
}

/// What one target can do. Futures are `Send` so batches run on any worker thread.
pub trait Binding: Send + Sync + 'static {
    /// A short name for reports (`reserva`, `redis`, `postgres`, `http`).
    fn kind(&self) -> &'static str;

    /// Whether [`Binding::checkout`] is available on this target.
    fn supports_checkout(&self) -> bool {
        true
    }

    /// Creates SKUs `range` of the catalogue with their stock (idempotent).
    fn seed(
        &self,
        catalog: &Catalog,
        skus: std::ops::Range<u32>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Holds stock for every line of each request, or for none of them.
    fn reserve(&self, reqs: Vec<ReserveReq>) -> impl Future<Output = Vec<OpResult<Hold>>> + Send;

    /// Turns holds into deductions.
    fn confirm(&self, holds: &[Hold]) -> impl Future<Output = Vec<OpResult<()>>> + Send;

    /// Gives holds back.
    fn release(&self, holds: &[Hold]) -> impl Future<Output = Vec<OpResult<()>>> + Send;

    /// Full checkouts; each answers the new order's id.
    fn checkout(&self, reqs: Vec<CheckoutReq>) -> impl Future<Output = Vec<OpResult<u64>>> + Send;

    /// Units available of each SKU (all warehouses).
    fn stock(&self, skus: Vec<u32>) -> impl Future<Output = Vec<OpResult<u64>>> + Send;

    /// Sets cart lines.
    fn cart_set(&self, reqs: Vec<CartReq>) -> impl Future<Output = Vec<OpResult<()>>> + Send;

    /// Stock rows of each SKU (for `--verify`); a SKU that does not exist is an error.
    fn stock_rows(
        &self,
        skus: Vec<u32>,
    ) -> impl Future<Output = anyhow::Result<Vec<Vec<StockRow>>>> + Send;

    /// How many of these order ids the target does not know (for `--verify`).
    fn missing_orders(&self, ids: Vec<u64>) -> impl Future<Output = anyhow::Result<u64>> + Send;
}

/// Parses `scheme://rest` into the scheme and the rest.
pub fn split_url(url: &str) -> anyhow::Result<(&str, &str)> {
    url.split_once("://").ok_or_else(|| {
        anyhow::anyhow!(
            "target {url:?} has no scheme: use reserva://HOST:PORT, http://HOST:PORT, \
             redis://HOST:PORT or postgres://USER@HOST:PORT/DB"
        )
    })
}

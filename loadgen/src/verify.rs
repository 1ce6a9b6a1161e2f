//! `--verify`: what the run was told (the ledger) against what the target
//! holds afterwards.
//!
//! Before the run the stock rows of every SKU are read; during it every
//! acknowledged reserve, confirm, release and checkout is added to a
//! per-SKU ledger (operations whose outcome is unknown, such as timeouts,
//! are kept apart); after it the rows are read again. It fails when:
//! - a row holds more than it has (`reserved > on_hand`) or breaks
//!   conservation (`on_hand + deducted != added`): an oversell;
//! - a SKU's deductions grew by less than the acknowledged confirmations
//!   and checkouts (a lost acknowledged order) or by more than those plus
//!   the unknown ones (a phantom);
//! - a SKU's reserved units moved by other than the acknowledged live holds,
//!   give or take the unknown operations;
//! - an acknowledged order id is not found.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use futures_util::StreamExt;
use futures_util::stream;
use serde::Serialize;

use crate::limits::{CATALOGUE_CHECK_TIMEOUT, ORDERS_TRACKED_MAX, VERIFY_CHUNK};
use crate::target::{Binding, StockRow};
use crate::workload::{Catalog, Line, sku_name};

/// What the run was told, per SKU.
pub struct Ledger {
    deducted: Vec<AtomicI64>,
    held: Vec<AtomicI64>,
    unknown: Vec<AtomicI64>,
    orders: Mutex<Vec<u64>>,
    orders_untracked: AtomicU64,
}

impl Ledger {
    /// An empty ledger for `skus` SKUs.
    pub fn new(skus: u32) -> Self {
        let zeros = || (0..skus).map(|_| AtomicI64::new(0)).collect();
        Ledger {
            deducted: zeros(),
            held: zeros(),
            unknown: zeros(),
            orders: Mutex::new(Vec::new()),
            orders_untracked: AtomicU64::new(0),
        }
    }

    fn add(v: &[AtomicI64], lines: &[Line], sign: i64) {
        for l in lines {
            if let Some(c) = v.get(l.sku as usize) {
                c.fetch_add(sign * i64::from(l.qty), Ordering::Relaxed);
            }
        }
    }

    /// An acknowledged reservation.
    pub fn held(&self, lines: &[Line]) {
        Self::add(&self.held, lines, 1);
    }
    /// An acknowledged confirmation of a hold.
    pub fn confirmed(&self, lines: &[Line]) {
        Self::add(&self.held, lines, -1);
        Self::add(&self.deducted, lines, 1);
    }
    /// An acknowledged release of a hold.
    pub fn released(&self, lines: &[Line]) {
        Self::add(&self.held, lines, -1);
    }
    /// An acknowledged checkout (stock deducted, order created).
    pub fn checked_out(&self, lines: &[Line], order: u64) {
        Self::add(&self.deducted, lines, 1);
        let mut orders = self.orders.lock().unwrap_or_else(|p| p.into_inner());
        if orders.len() < ORDERS_TRACKED_MAX {
            orders.push(order);
        } else {
            self.orders_untracked.fetch_add(1, Ordering::Relaxed);
        }
    }
    /// An operation on these lines whose outcome is unknown.
    pub fn unknown(&self, lines: &[Line]) {
        Self::add(&self.unknown, lines, 1);
    }
}

/// The stock rows of every SKU of the catalogue (summed per SKU).
#[derive(Debug, Clone, Default)]
pub struct SkuTotals {
    on_hand: u64,
    reserved: u64,
    deducted: Option<u64>,
}

/// The outcome of `--verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Whether everything reconciled.
    pub ok: bool,
    /// SKUs checked.
    pub skus_checked: u64,
    /// Acknowledged orders looked up.
    pub orders_checked: u64,
    /// Acknowledged orders not looked up (past `ORDERS_TRACKED_MAX`).
    pub orders_not_checked: u64,
    /// Units deducted by acknowledged operations.
    pub units_deducted_acked: i64,
    /// Units in operations whose outcome is unknown.
    pub units_unknown: i64,
    /// Rows with `reserved > on_hand` or broken conservation.
    pub oversold_rows: u64,
    /// SKUs whose deductions fell short of the acknowledged ones.
    pub lost_skus: u64,
    /// SKUs with more deductions than acknowledged plus unknown.
    pub phantom_skus: u64,
    /// SKUs whose reserved units do not match the live holds.
    pub reserved_mismatch_skus: u64,
    /// Acknowledged orders the target does not know.
    pub missing_orders: u64,
    /// The first problems, in words.
    pub problems: Vec<String>,
}

const PROBLEMS_SHOWN_MAX: usize = 20;
/// Retries of one verification read.
const VERIFY_ATTEMPTS: u32 = 5;

/// SKU indices and their stock rows.
type Chunk = (Vec<u32>, Vec<Vec<StockRow>>);

/// Fails fast, with what to do, when the target does not hold the catalogue
/// the run expects (say it was seeded with fewer SKUs than `--skus`): its
/// first and last SKU must answer at once, without retries.
pub async fn check_catalogue<B: Binding>(binding: &B, catalog: &Catalog) -> anyhow::Result<()> {
    let last = catalog.skus.saturating_sub(1);
    for sku in [0, last] {
        let answer =
            tokio::time::timeout(CATALOGUE_CHECK_TIMEOUT, binding.stock_rows(vec![sku])).await;
        let problem = match answer {
            Ok(Ok(rows)) if rows.first().is_some_and(|w| !w.is_empty()) => continue,
            Ok(Ok(_)) => "it has no stock rows".to_string(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => format!("no answer within {CATALOGUE_CHECK_TIMEOUT:?}"),
        };
        anyhow::bail!(
            "the target does not hold {} ({problem}): this run expects --skus {} --warehouses {}; \
             give `run` the --skus and --warehouses that `seed` was given",
            sku_name(sku),
            catalog.skus,
            catalog.warehouses
        );
    }
    Ok(())
}

/// Reads every SKU's rows, checking row invariants on the way.
pub async fn snapshot<B: Binding>(
    binding: &B,
    catalog: &Catalog,
    problems: &mut Vec<String>,
    oversold: &mut u64,
) -> anyhow::Result<Vec<SkuTotals>> {
    let chunks: Vec<Vec<u32>> = (0..catalog.skus)
        .collect::<Vec<_>>()
        .chunks(VERIFY_CHUNK)
        .map(<[u32]>::to_vec)
        .collect();
    let results: Vec<anyhow::Result<Chunk>> = stream::iter(chunks)
        .map(|c| async move {
            // A target still digesting a backlog may time out: retry a few times.
            let mut attempt = 0;
            loop {
                match binding.stock_rows(c.clone()).await {
                    Ok(rows) => return Ok((c, rows)),
                    Err(e) if attempt >= VERIFY_ATTEMPTS => return Err(e),
                    Err(_) => {
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_secs(1 << attempt)).await;
                    }
                }
            }
        })
        .buffered(8)
        .collect()
        .await;
    let mut out = vec![SkuTotals::default(); catalog.skus as usize];
    for r in results {
        let (skus, rows) = r?;
        for (sku, whs) in skus.into_iter().zip(rows) {
            let mut t = SkuTotals {
                deducted: Some(0),
                ..SkuTotals::default()
            };
            for w in &whs {
                let conserved = match (w.added, w.deducted) {
                    (Some(a), Some(d)) => w.on_hand + d == a,
                    _ => true,
                };
                if w.reserved > w.on_hand || !conserved {
                    *oversold += 1;
                    if problems.len() < PROBLEMS_SHOWN_MAX {
                        problems.push(format!(
                            "OVERSELL {}: on_hand {} reserved {} deducted {:?} added {:?}",
                            sku_name(sku),
                            w.on_hand,
                            w.reserved,
                            w.deducted,
                            w.added
                        ));
                    }
                }
                t.on_hand += w.on_hand;
                t.reserved += w.reserved;
                t.deducted = match (t.deducted, w.deducted) {
                    (Some(a), Some(b)) => Some(a + b),
                    _ => None,
                };
            }
            if let Some(slot) = out.get_mut(sku as usize) {
                *slot = t;
            }
        }
    }
    Ok(out)
}

/// Reconciles `before` and the target now against the ledger.
pub async fn reconcile<B: Binding>(
    binding: &B,
    catalog: &Catalog,
    before: &[SkuTotals],
    ledger: &Ledger,
) -> anyhow::Result<VerifyReport> {
    let mut problems = Vec::new();
    let mut oversold_rows = 0;
    let after = snapshot(binding, catalog, &mut problems, &mut oversold_rows).await?;
    let (mut lost, mut phantom, mut res_mismatch) = (0u64, 0u64, 0u64);
    let (mut acked_total, mut unknown_total) = (0i64, 0i64);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let acked = ledger.deducted[i].load(Ordering::Relaxed);
        let held = ledger.held[i].load(Ordering::Relaxed);
        let unknown = ledger.unknown[i].load(Ordering::Relaxed);
        acked_total += acked;
        unknown_total += unknown;
        // Deductions: from the ledger column if the target keeps one, else from on_hand.
        let d_ded = match (a.deducted, b.deducted) {
            (Some(x), Some(y)) => x as i64 - y as i64,
            _ => b.on_hand as i64 - a.on_hand as i64,
        };
        let d_res = a.reserved as i64 - b.reserved as i64;
        let name = sku_name(i as u32);
        if d_ded < acked {
            lost += 1;
            if problems.len() < PROBLEMS_SHOWN_MAX {
                problems.push(format!(
                    "LOST {name}: {acked} units deducted by acknowledged operations, the target deducted {d_ded}"
                ));
            }
        } else if d_ded > acked + unknown {
            phantom += 1;
            if problems.len() < PROBLEMS_SHOWN_MAX {
                problems.push(format!(
                    "PHANTOM {name}: the target deducted {d_ded} units, acknowledged {acked} + unknown {unknown}"
                ));
            }
        }
        if (d_res - held).abs() > unknown {
            res_mismatch += 1;
            if problems.len() < PROBLEMS_SHOWN_MAX {
                problems.push(format!(
                    "RESERVED {name}: reserved moved by {d_res}, live acknowledged holds {held} (unknown {unknown})"
                ));
            }
        }
    }
    let orders = std::mem::take(&mut *ledger.orders.lock().unwrap_or_else(|p| p.into_inner()));
    let orders_checked = orders.len() as u64;
    let chunks: Vec<Vec<u64>> = orders.chunks(VERIFY_CHUNK).map(<[u64]>::to_vec).collect();
    let missing: Vec<anyhow::Result<u64>> = stream::iter(chunks)
        .map(|c| async move {
            let mut attempt = 0;
            loop {
                match binding.missing_orders(c.clone()).await {
                    Err(_) if attempt < VERIFY_ATTEMPTS => {
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_secs(1 << attempt)).await;
                    }
                    r => return r,
                }
            }
        })
        .buffered(8)
        .collect()
        .await;
    let mut missing_orders = 0;
    for m in missing {
        missing_orders += m?;
    }
    if missing_orders > 0 {
        problems.push(format!(
            "LOST ORDERS: {missing_orders} acknowledged orders are not found"
        ));
    }
    let ok =
        oversold_rows == 0 && lost == 0 && phantom == 0 && res_mismatch == 0 && missing_orders == 0;
    Ok(VerifyReport {
        ok,
        skus_checked: catalog.skus.into(),
        orders_checked,
        orders_not_checked: ledger.orders_untracked.load(Ordering::Relaxed),
        units_deducted_acked: acked_total,
        units_unknown: unknown_total,
        oversold_rows,
        lost_skus: lost,
        phantom_skus: phantom,
        reserved_mismatch_skus: res_mismatch,
        missing_orders,
        problems,
    })
}

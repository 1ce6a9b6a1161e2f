//! Reservations the node must not expire yet, and the start-up gate of expiry.
//!
//! A hold under an order waits for its deduction; until then the node's
//! housekeeping spares it from expiry, whatever its deadline says (the node
//! may have been down past it, or the deduction may still be queued). The
//! set is the node's, not a core's: a spared hold may live on any core's
//! shard, and shards move between cores.
//!
//! At start-up no core expires anything until every core has pinned the
//! holds of the orders it resumes, so a restart after a long stop never
//! expires a hold whose order is already recorded.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use reserva_engine::ids::ReservationId;

/// The node's pinned reservations (bounded by the checkouts in flight:
/// `SAGAS_PER_CORE_MAX` per core, each with at most `CHECKOUT_HOLDS_MAX`
/// holds, plus those resumed at start-up).
#[derive(Debug)]
pub struct Pins {
    held: Mutex<HashSet<ReservationId>>,
    cores: usize,
    ready: AtomicUsize,
}

impl Pins {
    /// Pins for a node of `cores` cores; expiry starts once each reported ready.
    pub fn new(cores: usize) -> Self {
        Pins {
            held: Mutex::new(HashSet::new()),
            cores,
            ready: AtomicUsize::new(0),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<ReservationId>> {
        // A panic while holding the lock cannot leave the set half-changed.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spares `ids` from expiry until unpinned.
    pub fn pin(&self, ids: impl IntoIterator<Item = ReservationId>) {
        self.held().extend(ids);
    }

    /// Ends the sparing of `ids` (deducted or released).
    pub fn unpin(&self, ids: impl IntoIterator<Item = ReservationId>) {
        let mut held = self.held();
        for id in ids {
            held.remove(&id);
        }
    }

    /// Runs `f` with a test of whether a reservation is pinned.
    pub fn with<R>(&self, f: impl FnOnce(&dyn Fn(ReservationId) -> bool) -> R) -> R {
        let held = self.held();
        f(&|id| held.contains(&id))
    }

    /// Reservations pinned now.
    pub fn len(&self) -> usize {
        self.held().len()
    }

    /// Whether nothing is pinned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One core has pinned what it resumes.
    pub fn core_ready(&self) {
        self.ready.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether every core has pinned what it resumes (expiry may run).
    pub fn expiry_open(&self) -> bool {
        self.ready.load(Ordering::Acquire) >= self.cores
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_reservations_are_spared_until_unpinned_and_expiry_waits_for_every_core() {
        let pins = Pins::new(2);
        let a = ReservationId::new(3, 1).unwrap();
        let b = ReservationId::new(3, 2).unwrap();
        pins.pin([a, b]);
        assert!(pins.with(|p| p(a) && p(b)));
        pins.unpin([a]);
        assert!(pins.with(|p| !p(a) && p(b)));
        assert_eq!(pins.len(), 1);
        assert!(!pins.expiry_open());
        pins.core_ready();
        assert!(!pins.expiry_open());
        pins.core_ready();
        assert!(pins.expiry_open());
    }
}

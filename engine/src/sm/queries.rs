//! Read helpers for cross-shard listings (a seller's SKUs and orders, sales
//! over a time range). Read-only, never logged; every walk is bounded.
//!
//! Orders are walked by sequence number: a shard mints order ids in
//! increasing order and its clock never moves back, so on one shard the
//! sequence order is also the placement-time order. Orders are never deleted,
//! so sequence numbers `1..next_order_seq` are all present.

use crate::ids::OrderId;
use crate::sm::state::ShardState;
use crate::sm::types::{Order, OrderStatus, Sku};

/// When an order was placed: the time of its first history entry.
pub fn placed_at_ms(order: &Order) -> u64 {
    order.history.first().map_or(0, |h| h.at_ms)
}

/// Whether a return was ever requested for the order.
pub fn was_returned(order: &Order) -> bool {
    order
        .history
        .iter()
        .any(|h| h.status == OrderStatus::ReturnRequested)
}

/// Whether the order was cancelled (it may have been refunded since).
pub fn was_cancelled(order: &Order) -> bool {
    order
        .history
        .iter()
        .any(|h| h.status == OrderStatus::Cancelled)
}

impl ShardState {
    /// This shard's SKUs of `seller_id` (with at most `available_max` units
    /// available, if given), sorted by SKU; at most `limit`, and whether more matched.
    pub fn seller_skus(
        &self,
        seller_id: &str,
        available_max: Option<u64>,
        limit: usize,
    ) -> (Vec<&Sku>, bool) {
        // The index is sorted by (seller, sku): the seller's SKUs in order.
        let start = (seller_id.to_owned(), String::new());
        let mut found: Vec<&Sku> = self
            .skus_by_seller
            .range(start..)
            .take_while(|(seller, _)| seller == seller_id)
            .filter_map(|(_, sku)| self.skus.get(sku))
            .filter(|s| available_max.is_none_or(|max| s.available() <= max))
            .take(limit.saturating_add(1))
            .collect();
        let truncated = found.len() > limit;
        found.truncate(limit);
        (found, truncated)
    }

    /// The order with sequence number `seq` on this shard.
    fn order_at(&self, seq: u64) -> Option<&Order> {
        OrderId::new(self.shard, seq).and_then(|id| self.orders.get(&id))
    }

    /// The highest sequence number whose order sorts strictly before
    /// `(at_ms, id)` (placement time, then id); 0 if none.
    pub fn last_seq_before(&self, at_ms: u64, id: OrderId) -> u64 {
        let key = |o: &Order| (placed_at_ms(o), o.id);
        // Binary search over 1..next_order_seq: keys increase with the sequence.
        let (mut lo, mut hi) = (1u64, self.next_order_seq);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.order_at(mid) {
                Some(o) if key(o) < (at_ms, id) => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo - 1
    }

    /// Orders newest first, starting at sequence number `from_seq` and going
    /// down; at most `scan_max` of them.
    pub fn orders_down_from(&self, from_seq: u64, scan_max: usize) -> impl Iterator<Item = &Order> {
        (1..=from_seq)
            .rev()
            .take(scan_max)
            .filter_map(|seq| self.order_at(seq))
    }

    /// The highest order sequence number minted so far (0 if none).
    pub fn last_order_seq(&self) -> u64 {
        self.next_order_seq.saturating_sub(1)
    }
}

/// Whether any line of `order` is one of `skus` (sorted).
pub fn contains_any(order: &Order, skus: &[String]) -> bool {
    order
        .lines
        .iter()
        .any(|l| skus.binary_search_by(|s| s.as_str().cmp(&l.sku)).is_ok())
}

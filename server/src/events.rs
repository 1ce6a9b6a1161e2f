//! Live updates: a bounded, non-durable ring of recent user events per shard.
//!
//! The committer records an event for every state-changing cart or order
//! command, positioned by the LSN of its log record, so positions keep
//! growing across restarts. A gateway polls `Query::UserEvents` with the
//! last position it saw; any gateway in front of the node can serve any
//! user's stream. Events are not durable: a restart or a ring overflow is
//! reported as a gap (`gap: true`), and the reader re-reads the state.

use std::collections::VecDeque;

use reserva_engine::sm::{Command, CommerceCommand, CommerceOutcome, Outcome, ShardState};
use reserva_protocol::{UserEvent, UserEventKind};

use crate::limits::USER_EVENTS_PER_SHARD_MAX;

/// One shard's recent user events, oldest first.
#[derive(Debug)]
pub struct EventRing {
    events: VecDeque<UserEvent>,
    /// Events at or below this position may be missing (dropped or from
    /// before the last start).
    floor: u64,
    /// The highest position seen.
    head: u64,
}

impl EventRing {
    /// An empty ring for a shard whose log ends at `lsn`.
    pub fn new(lsn: u64) -> Self {
        EventRing {
            events: VecDeque::new(),
            floor: lsn,
            head: lsn,
        }
    }

    /// Records what `command` (applied with `outcome`, logged at `seq`) did to a user.
    pub fn record(
        &mut self,
        state: &ShardState,
        seq: u64,
        at_ms: u64,
        command: &Command,
        outcome: &Outcome,
    ) {
        let Some((user_id, kind)) = describe(state, command, outcome) else {
            return;
        };
        if self.events.len() >= USER_EVENTS_PER_SHARD_MAX
            && let Some(old) = self.events.pop_front()
        {
            self.floor = self.floor.max(old.seq);
        }
        self.head = self.head.max(seq);
        self.events.push_back(UserEvent {
            seq,
            at_ms,
            user_id,
            kind,
        });
    }

    /// Up to `limit` events of `user_id` after `after`, the next position,
    /// and whether some may be missing.
    pub fn read(
        &self,
        user_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> (Vec<UserEvent>, u64, bool) {
        let Some(after) = after else {
            return (Vec::new(), self.head, false);
        };
        let gap = after < self.floor;
        let events: Vec<UserEvent> = self
            .events
            .iter()
            .filter(|e| e.seq > after && e.user_id == user_id)
            .take(limit)
            .cloned()
            .collect();
        let next = match events.last() {
            Some(last) if events.len() == limit => last.seq,
            _ => self.head.max(after),
        };
        (events, next, gap)
    }
}

fn describe(
    state: &ShardState,
    command: &Command,
    outcome: &Outcome,
) -> Option<(String, UserEventKind)> {
    if let Command::Commerce(c) = command {
        let wishlist = |user_id: &String, sku: &String, qty| {
            let kind = UserEventKind::Wishlist {
                sku: sku.clone(),
                qty,
            };
            Some((user_id.clone(), kind))
        };
        match c.as_ref() {
            CommerceCommand::WishlistSet { user_id, sku, qty } => {
                return wishlist(user_id, sku, *qty);
            }
            CommerceCommand::WishlistRemove { user_id, sku } => return wishlist(user_id, sku, 0),
            _ => {}
        }
    }
    match (command, outcome) {
        (Command::CartSet { user_id, sku, qty }, _) => Some((
            user_id.clone(),
            UserEventKind::Cart {
                sku: Some(sku.clone()),
                qty: *qty,
            },
        )),
        (Command::CartRemove { user_id, sku }, _) => Some((
            user_id.clone(),
            UserEventKind::Cart {
                sku: Some(sku.clone()),
                qty: 0,
            },
        )),
        (Command::CartClear { user_id }, _) => {
            Some((user_id.clone(), UserEventKind::Cart { sku: None, qty: 0 }))
        }
        (_, Outcome::Commerce(c)) => {
            let order_id = match c.as_ref() {
                CommerceOutcome::Order { order, .. } => order.id,
                CommerceOutcome::CheckoutStep { checkout } => checkout.order_id?,
                _ => return None,
            };
            let order = state.order(order_id)?;
            Some((
                order.user_id.clone(),
                UserEventKind::Order {
                    order_id,
                    status: order.status,
                },
            ))
        }
        (_, Outcome::OrderCreated { order_id, .. })
        | (Command::SetOrderStatus { order_id, .. }, _) => {
            let order = state.order(*order_id)?;
            Some((
                order.user_id.clone(),
                UserEventKind::Order {
                    order_id: *order_id,
                    status: order.status,
                },
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cart(user: &str, qty: u32) -> Command {
        Command::CartSet {
            user_id: user.into(),
            sku: "s".into(),
            qty,
        }
    }

    #[test]
    fn reads_after_a_position_and_reports_gaps() {
        let state = ShardState::new(0);
        let out = Outcome::Cart { items: Vec::new() };
        let mut ring = EventRing::new(10);
        assert_eq!(ring.read("a", None, 10), (Vec::new(), 10, false));
        ring.record(&state, 11, 1, &cart("a", 1), &out);
        ring.record(&state, 12, 1, &cart("b", 1), &out);
        ring.record(&state, 13, 1, &cart("a", 2), &out);
        let (events, next, gap) = ring.read("a", Some(10), 10);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [11, 13]);
        assert_eq!((next, gap), (13, false));
        let (events, next, _) = ring.read("a", Some(10), 1);
        assert_eq!((events.len(), next), (1, 11));
        assert!(ring.read("a", Some(5), 10).2, "before the start is a gap");
        for i in 0..USER_EVENTS_PER_SHARD_MAX as u64 {
            ring.record(&state, 14 + i, 1, &cart("b", 1), &out);
        }
        // 11, 12 and 13 were dropped: reading after 12 may miss 13.
        assert!(ring.read("a", Some(12), 10).2, "overflow is a gap");
        assert!(!ring.read("a", Some(13), 10).2);
        assert!(ring.events.len() <= USER_EVENTS_PER_SHARD_MAX);
    }
}

//! Durability off the answer path: the checkpointer, and the barriers of
//! the interval timer and of shutdown.
//!
//! The rule that bounds the journal: a journal segment is reused only once
//! every shard with records in it has made its own log durable past them.
//! The checkpointer waits until the journal has a sealed segment, makes the
//! log of every shard pinning it durable (their `fdatasync`s run on the
//! blocking pool, one after another: parallel barriers barely overlap on
//! the disks we run on), then zeroes the segment for reuse. The shards that
//! pin the oldest segment are always the ones checkpointed first, so the
//! journal cannot fill while a checkpoint could free it.
//!
//! A shard that left this core was made durable by the move (its log is
//! synced and snapshotted before it is handed over), so it pins nothing.

use std::io;
use std::rc::Rc;
use std::time::Duration;

use reserva_engine::ids::ShardId;
use reserva_engine::log::{Lsn, PendingSync};

use super::Core;
use crate::metrics;

/// Pause after each shard-log barrier of a checkpoint (on the blocking pool).
const CHECKPOINT_PACE: Duration = Duration::from_millis(1);

/// How long the checkpointer waits before trying again after a failure.
const CHECKPOINT_RETRY: Duration = Duration::from_millis(100);

impl Core {
    /// Wakes the checkpointer.
    pub(super) fn ring_checkpointer(&self) {
        let _ = self.checkpoint_tx.try_send(());
    }

    /// The checkpointer: frees journal segments, until the node stops.
    pub async fn run_checkpointer(self: Rc<Self>) {
        while self.checkpoint_rx.recv().await.is_some() {
            loop {
                let pins = self.journal.borrow().as_ref().and_then(|j| j.oldest_pins());
                let Some(pins) = pins else {
                    break;
                };
                if !self.make_durable(&pins).await {
                    if self.stopping.get() {
                        return;
                    }
                    glommio::timer::sleep(CHECKPOINT_RETRY).await;
                    continue;
                }
                let job = self
                    .journal
                    .borrow_mut()
                    .as_mut()
                    .and_then(|j| j.release_oldest());
                let Some(job) = job else {
                    break;
                };
                let (job, result) = glommio::executor()
                    .spawn_blocking(move || {
                        let r = job.run();
                        (job, r)
                    })
                    .await;
                if let Some(j) = self.journal.borrow_mut().as_mut() {
                    j.finish_zero(job, result);
                }
                metrics::global().checkpoint_done(self.id);
                // The committer may be waiting for the free segment.
                let _ = self.doorbell_tx.try_send(());
            }
        }
    }

    /// Makes the log of every listed shard durable at least up to its LSN.
    /// Returns whether all of them are (a poisoned shard never is).
    async fn make_durable(&self, pins: &[(ShardId, Lsn)]) -> bool {
        let mut jobs: Vec<(ShardId, PendingSync)> = Vec::new();
        {
            let mut slots = self.slots.borrow_mut();
            for &(id, lsn) in pins {
                let Some(slot) = slots.get_mut(&id) else {
                    continue;
                };
                if slot.shard.durable_lsn() >= lsn {
                    continue;
                }
                match slot.shard.begin_sync() {
                    Ok(Some(p)) => jobs.push((id, p)),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(shard = id, error = %e, "checkpoint: shard cannot be made durable; its journal segment stays pinned");
                        return false;
                    }
                }
            }
        }
        let results = run_syncs(jobs).await;
        let mut slots = self.slots.borrow_mut();
        for (id, pending, result) in results {
            if let Some(slot) = slots.get_mut(&id)
                && let Err(e) = slot.shard.finish_sync(pending, result)
            {
                tracing::error!(shard = id, error = %e, "checkpoint barrier failed; shard poisoned");
            }
        }
        pins.iter()
            .all(|&(id, lsn)| slots.get(&id).is_none_or(|s| s.shard.durable_lsn() >= lsn))
    }

    /// Makes every shard's log durable (shutdown; a shard about to leave).
    pub async fn sync_dirty(&self) {
        let pins: Vec<(ShardId, Lsn)> = self
            .slots
            .borrow()
            .iter()
            .filter(|(_, s)| s.shard.last_lsn() != s.shard.durable_lsn())
            .map(|(id, s)| (*id, s.shard.last_lsn()))
            .collect();
        if !self.make_durable(&pins).await {
            tracing::error!(core = self.id, "not every shard could be made durable");
        }
    }

    /// Interval mode: one barrier for every journal frame written since the
    /// last one.
    pub async fn sync_journal(&self) {
        let job = self
            .journal
            .borrow_mut()
            .as_mut()
            .and_then(|j| j.sync_job());
        let Some(job) = job else {
            return;
        };
        let (job, result) = glommio::executor()
            .spawn_blocking(move || {
                let r = job.run();
                (job, r)
            })
            .await;
        let failed = self
            .journal
            .borrow_mut()
            .as_mut()
            .map(|j| j.finish_sync(job, result));
        if let Some(Err(e)) = failed {
            self.fail_core(&e.to_string());
        }
    }
}

/// Runs shard-log barriers on the blocking pool, one after another.
async fn run_syncs(
    jobs: Vec<(ShardId, PendingSync)>,
) -> Vec<(ShardId, PendingSync, io::Result<()>)> {
    if jobs.is_empty() {
        return Vec::new();
    }
    glommio::executor()
        .spawn_blocking(move || {
            jobs.into_iter()
                .map(|(id, p)| {
                    let r = p.run();
                    // One shard-log barrier at a time, with room between
                    // them for the journal's barriers (the disk serves one
                    // flush at a time).
                    std::thread::sleep(CHECKPOINT_PACE);
                    (id, p, r)
                })
                .collect()
        })
        .await
}

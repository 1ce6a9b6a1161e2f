//! Group commit on one core: rounds of applied requests, one journal frame
//! and one barrier per round, answers after the barrier.
//!
//! The committer drains every ready shard's queue into the pending
//! [`Batch`]: each request is applied at once (reads answered at their
//! place) and its record goes into the batch's journal frame. When no write
//! is in flight the pending batch becomes the in-flight one: its frame is
//! written and made durable on the blocking pool (`--fsync always`), while
//! the committer goes on applying what arrives into the next pending batch
//! (pipelined group commit: at most one barrier in flight per core). When
//! the barrier returns, the batch's records are appended to each shard's own
//! log (made durable later by the checkpointer) and its answers are sent.
//!
//! A record may be applied while the barrier of an earlier record of the
//! same shard is in flight, because the journal keeps frames in order and
//! the batches are answered in order: nothing is answered before every
//! record it could depend on is durable.
//!
//! Under `--fsync interval:MS` the frame is written at once without a
//! barrier (the node's timer makes the journal durable every MS); under
//! `never` there is no journal and records go straight to the shard logs.

use std::io;
use std::rc::Rc;
use std::time::Instant;

use reserva_engine::ids::ShardId;
use reserva_engine::journal::{FrameBuilder, JournalError, WriteJob};
use reserva_engine::shard::Staged;
use reserva_engine::sm::Command;
use reserva_protocol::{Op, Reply, WireError};

use super::{Answer, Core, Pending, fail_mutations};
use crate::config::FsyncMode;
use crate::limits::{COMMIT_BATCH_MAX, RETRY_AFTER_MS};
use crate::metrics;
use crate::ops::{ShardCtx, execute, watched_command};

/// What one shard contributed to a batch.
struct ShardPart {
    id: ShardId,
    records: Vec<Staged>,
    answers: Vec<Answer>,
}

/// Requests applied but not yet answered, with the journal frame of their records.
#[derive(Default)]
pub(super) struct Batch {
    frame: FrameBuilder,
    parts: Vec<ShardPart>,
    started: Option<Instant>,
    /// When its journal write started (a batch with records only).
    write_started: Option<Instant>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }
}

/// The committer's state: the batch being filled, the one in flight, and the
/// result of the in-flight write once the blocking pool returns it.
#[derive(Default)]
pub(super) struct CommitState {
    pending: Batch,
    in_flight: Option<Batch>,
    done: Option<(WriteJob, io::Result<()>)>,
    /// Frame buffers back from finished writes, for the next frames.
    spare: Vec<Vec<u8>>,
    /// The journal had no free segment: waiting for the checkpointer.
    waiting_for_space: bool,
}

impl CommitState {
    /// Whether nothing is applied but unanswered.
    pub(super) fn is_quiet(&self) -> bool {
        self.pending.is_empty() && self.in_flight.is_none() && self.done.is_none()
    }

    /// Requests applied (or refused at their turn) and not yet answered.
    pub(super) fn unanswered(&self) -> usize {
        self.pending.answers() + self.in_flight.as_ref().map_or(0, Batch::answers)
    }
}

impl Core {
    /// The committer: group commit, until the node stops and every queue,
    /// batch and barrier is done.
    pub async fn run_committer(self: Rc<Self>) {
        loop {
            let mut progressed = self.take_finished_write();
            if self.admin.has_jobs() {
                // Admin jobs (snapshots, shard moves) run when nothing is
                // applied but unanswered; new work waits for them.
                if self.commit.borrow().is_quiet() {
                    self.run_admin_jobs();
                    progressed = true;
                }
            } else if !self.ready.borrow().is_empty()
                && !self.commit.borrow().pending.frame.is_full()
            {
                progressed |= self.apply_round();
                if self.followups.replace(false) && self.commit.borrow().in_flight.is_none() {
                    // Work the round started (a checkout's holds) submits
                    // now and joins this round's barrier instead of the next.
                    futures_lite::future::yield_now().await;
                    if !self.ready.borrow().is_empty() {
                        self.apply_round();
                    }
                }
            }
            progressed |= self.start_write();
            if progressed {
                // Let connections read and write between rounds.
                glommio::yield_if_needed().await;
                continue;
            }
            if self.stopping.get()
                && self.ready.borrow().is_empty()
                && self.commit.borrow().is_quiet()
            {
                return;
            }
            if self.doorbell_rx.recv().await.is_none() {
                return;
            }
        }
    }

    /// Applies up to `COMMIT_BATCH_MAX` queued requests of every ready shard
    /// into the pending batch (until its frame is full). Returns whether any
    /// shard was drained.
    fn apply_round(&self) -> bool {
        let mut applied = false;
        let round: Vec<ShardId> = self.ready.borrow_mut().drain(..).collect();
        let now = super::now_ms();
        let instant = Instant::now();
        let journaled = self.config.fsync != FsyncMode::Never;
        let mut commit = self.commit.borrow_mut();
        let batch = &mut commit.pending;
        batch.started.get_or_insert_with(Instant::now);
        let mut slots = self.slots.borrow_mut();
        let m = metrics::global();
        let hook = self.hook();
        for id in round {
            let Some(slot) = slots.get_mut(&id) else {
                continue;
            };
            if slot.shard.snapshot_due() && slot.shard.has_records_in_flight() {
                // Snapshotted once its records in flight are in its log
                // (`complete`); it stays ready.
                self.ready.borrow_mut().push_back(id);
                continue;
            }
            applied = true;
            let started = Instant::now();
            let mut answers = Vec::with_capacity(slot.queue.len().min(COMMIT_BATCH_MAX));
            let budget = batch.frame.bytes();
            while answers.len() < COMMIT_BATCH_MAX
                && budget + slot.shard.staged_bytes()
                    < reserva_engine::journal::limits::FRAME_BYTES_SOFT_MAX
            {
                let Some(Pending {
                    op,
                    scope,
                    reply,
                    origin,
                }) = slot.queue.pop_front()
                else {
                    break;
                };
                if let Some(e) = origin.expired(instant) {
                    // Its client stopped waiting: never applied.
                    m.shed(metrics::Shed::Deadline);
                    answers.push((reply, Err(e)));
                    continue;
                }
                if hook.as_ref().is_some_and(|h| !h.admits(&op)) {
                    answers.push((
                        reply,
                        Err(WireError::Overloaded {
                            retry_after_ms: RETRY_AFTER_MS,
                        }),
                    ));
                    continue;
                }
                if matches!(&op, Op::Mutate(r) if matches!(r.command, Command::Tick { .. })) {
                    slot.tick_queued = false;
                }
                slot.hot.observe(&op);
                let label = metrics::op_label(&op);
                let watched = watched_command(&op);
                let before = slot.shard.staged_lsn();
                let ctx = ShardCtx {
                    core: self.id,
                    shard: &mut slot.shard,
                    events: &slot.events,
                    queue_depth: slot.queue.len(),
                };
                let result = execute(ctx, op, &scope, now);
                m.record_op(id, label, &result);
                let seq = slot.shard.staged_lsn();
                if seq > before {
                    if let (Some(command), Ok(Reply::Outcome(outcome))) = (&watched, &result) {
                        slot.events
                            .record(slot.shard.state(), seq, now, command, outcome);
                    }
                    if let (Some(h), Some(me)) = (&hook, self.me.upgrade())
                        && h.applied(&me, slot.shard.state(), &result)
                    {
                        self.followups.set(true);
                    }
                }
                answers.push((reply, result));
            }
            let records = slot.shard.take_staged();
            if journaled {
                for r in &records {
                    batch.frame.push(id, r.lsn, r.kind, &r.bytes);
                }
            }
            m.record_apply(self.id, id, answers.len(), started.elapsed());
            slot.in_ready = !slot.queue.is_empty();
            if slot.in_ready {
                self.ready.borrow_mut().push_back(id);
            }
            batch.parts.push(ShardPart {
                id,
                records,
                answers,
            });
        }
        applied
    }

    /// Starts writing the pending batch if no write is in flight; a batch
    /// without records (reads, refusals) is answered at once. Returns whether
    /// anything happened.
    fn start_write(&self) -> bool {
        let mut commit = self.commit.borrow_mut();
        if commit.in_flight.is_some() || commit.done.is_some() || commit.pending.is_empty() {
            return false;
        }
        if commit.pending.frame.is_empty() {
            let batch = std::mem::take(&mut commit.pending);
            drop(commit);
            self.complete(batch, Ok(()));
            return true;
        }
        let always = self.config.fsync == FsyncMode::Always;
        let mut journal = self.journal.borrow_mut();
        let Some(j) = journal.as_mut() else {
            unreachable!("frames are built only when there is a journal");
        };
        let written = j.begin_write(&mut commit.pending.frame, always);
        let job = match written {
            Ok(job) => job,
            Err(JournalError::Full) => {
                if !commit.waiting_for_space {
                    commit.waiting_for_space = true;
                    metrics::global().journal_full(self.id);
                    tracing::warn!(core = self.id, "journal full: waiting for a checkpoint");
                }
                drop((journal, commit));
                self.ring_checkpointer();
                return false;
            }
            Err(e) => {
                let batch = std::mem::take(&mut commit.pending);
                drop((journal, commit));
                self.fail_core(&e.to_string());
                self.complete(batch, Err(e.to_string()));
                return true;
            }
        };
        commit.waiting_for_space = false;
        if j.oldest_pins().is_some() {
            self.ring_checkpointer();
        }
        let buffer = commit.spare.pop().unwrap_or_default();
        let frame = FrameBuilder::with_buffer(buffer);
        let mut batch = std::mem::replace(
            &mut commit.pending,
            Batch {
                frame,
                ..Batch::default()
            },
        );
        batch.write_started = Some(Instant::now());
        if always {
            commit.in_flight = Some(batch);
            drop((journal, commit));
            self.spawn_write(job);
        } else {
            let result = job.run();
            let finished = self.finish_job(j, job, result, &batch);
            drop((journal, commit));
            self.finish_batch(batch, finished);
        }
        true
    }

    /// Counts a finished journal write and hands its result to the journal.
    fn finish_job(
        &self,
        journal: &mut reserva_engine::journal::Journal,
        job: WriteJob,
        result: io::Result<()>,
        batch: &Batch,
    ) -> Result<Vec<u8>, JournalError> {
        let records = batch.frame_entries();
        metrics::global().journal_write(self.id, job.bytes() as u64, records, job.is_barrier());
        journal.finish_write(job, result)
    }

    /// Ends a batch once its journal write returned (with or without a barrier).
    fn finish_batch(&self, batch: Batch, finished: Result<Vec<u8>, JournalError>) {
        match finished {
            Ok(buffer) => {
                self.commit.borrow_mut().spare.push(buffer);
                self.complete(batch, Ok(()));
            }
            Err(e) => {
                self.fail_core(&e.to_string());
                self.complete(batch, Err(e.to_string()));
            }
        }
    }

    /// Runs a journal write on the blocking pool; the committer picks up the
    /// result.
    fn spawn_write(&self, job: WriteJob) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        glommio::spawn_local(async move {
            let (job, result) = glommio::executor()
                .spawn_blocking(move || {
                    let r = job.run();
                    (job, r)
                })
                .await;
            me.commit.borrow_mut().done = Some((job, result));
            let _ = me.doorbell_tx.try_send(());
        })
        .detach();
    }

    /// Prepares a shard's next log segment on the blocking pool (allocation,
    /// zero fill, fsync, pre-faulted mapping), so that rollover costs a
    /// rename on this thread.
    fn spawn_prepare(&self, id: ShardId, job: reserva_engine::log::PrepareJob) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        glommio::spawn_local(async move {
            let prepared = glommio::executor().spawn_blocking(move || job.run()).await;
            if let Some(slot) = me.slots.borrow_mut().get_mut(&id) {
                slot.shard.install_prepared(prepared);
            }
        })
        .detach();
    }

    /// Completes the in-flight batch if its write has returned.
    fn take_finished_write(&self) -> bool {
        let mut commit = self.commit.borrow_mut();
        let Some((job, result)) = commit.done.take() else {
            return false;
        };
        let Some(batch) = commit.in_flight.take() else {
            unreachable!("a finished write belongs to the in-flight batch");
        };
        let finished = {
            let mut journal = self.journal.borrow_mut();
            let Some(j) = journal.as_mut() else {
                unreachable!("writes come from the journal");
            };
            self.finish_job(j, job, result, &batch)
        };
        drop(commit);
        self.finish_batch(batch, finished);
        true
    }

    /// Ends a batch: on success its records go to the shards' own logs and
    /// its answers leave; on failure every success becomes `Unavailable`.
    fn complete(&self, batch: Batch, result: Result<(), String>) {
        let answered = batch.answers();
        let Batch {
            parts,
            started,
            write_started,
            ..
        } = batch;
        let started = started.unwrap_or_else(Instant::now);
        let now = Instant::now();
        let mut admission = self.admission.borrow_mut();
        if let Some(w) = write_started {
            admission.round_took(now.saturating_duration_since(w), now);
        }
        admission.answered(answered, now);
        drop(admission);
        let never = self.config.fsync == FsyncMode::Never;
        let mut out = Vec::with_capacity(parts.len());
        {
            let mut slots = self.slots.borrow_mut();
            for ShardPart {
                id,
                records,
                mut answers,
            } in parts
            {
                match (&result, slots.get_mut(&id)) {
                    (Err(reason), _) => fail_mutations(&mut answers, id, reason),
                    (Ok(()), Some(slot)) => {
                        if let Err(e) = slot.shard.append_committed(&records) {
                            tracing::error!(shard = id, error = %e, "log append failed; shard poisoned");
                            // Without a journal the records are nowhere else.
                            if never {
                                fail_mutations(&mut answers, id, &e.to_string());
                            }
                        }
                        if let Some(job) = slot.shard.prepare_job() {
                            self.spawn_prepare(id, job);
                        }
                        if slot.shard.snapshot_due() && !slot.shard.has_records_in_flight() {
                            snapshot(slot);
                        }
                    }
                    (Ok(()), None) => {
                        assert!(
                            records.is_empty(),
                            "shard {id} left core {} with records in flight",
                            self.id
                        );
                    }
                }
                metrics::global().record_commit(self.id, id, started.elapsed());
                out.push(answers);
            }
        }
        for answers in out {
            for (reply, r) in answers {
                self.deliver(reply, r);
            }
        }
    }

    /// After a failed journal write nothing applied on this core since the
    /// last durable frame may be read: every shard of the core stops.
    pub(super) fn fail_core(&self, reason: &str) {
        tracing::error!(
            core = self.id,
            reason,
            "commit journal failed; every shard of this core refuses work until restart"
        );
        for slot in self.slots.borrow_mut().values_mut() {
            slot.shard.poison();
        }
    }
}

/// Snapshots a shard whose records are all in its log (the log is made
/// durable first). A failure is logged and retried at the next batch.
fn snapshot(slot: &mut super::Slot) {
    match slot.shard.maybe_snapshot() {
        Ok(Some(lsn)) => {
            metrics::global().snapshot_taken();
            tracing::debug!(shard = slot.shard.id(), lsn, "snapshot written");
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(shard = slot.shard.id(), error = %e, "snapshot failed; will retry later")
        }
    }
}

impl Batch {
    fn answers(&self) -> usize {
        self.parts.iter().map(|p| p.answers.len()).sum()
    }

    fn frame_entries(&self) -> u64 {
        self.parts.iter().map(|p| p.records.len() as u64).sum()
    }
}

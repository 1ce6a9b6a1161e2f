//! The per-shard append log: memory-mapped, preallocated segments of
//! checksummed records, plus snapshots that bound recovery time.
//!
//! `docs/log-format.md` describes the bytes on disk. In short:
//!
//! * [`Log::append_batch`] writes one batch of records into the mapped
//!   segment and assigns consecutive LSNs; the last record of the batch is
//!   flagged `BATCH_END`. Nothing is durable yet.
//! * [`Log::sync`] is the durability barrier: when it returns `Ok(lsn)`, every
//!   record up to `lsn` is on stable storage (see its docs for the exact
//!   guarantee). [`Log::begin_sync`], [`PendingSync::run`] and
//!   [`Log::finish_sync`] are the same barrier in three parts, so that the
//!   blocking one runs on another thread. A failed sync poisons the log for
//!   good.
//! * A rollover to the next segment syncs nothing: the sealed segment is made
//!   durable by the next barrier, before the active one, and the new
//!   segment's name by that barrier's directory `fsync`. Recovery tells the
//!   loss of a sealed segment's unsynced tail from corruption by
//!   `synced_lsn`, as anywhere else.
//! * Segments are prepared ahead (allocated, zero-filled, synced, mapped and
//!   pre-faulted) by a [`PrepareJob`] that [`Log::prepare_job`] hands out once
//!   the active segment is half full; it runs on any thread and its result
//!   goes back through [`Log::install_prepared`]. Appending never prepares
//!   ahead; a rollover that finds nothing prepared creates the segment on the
//!   writer's thread. [`Log::open`] prepares on its own thread.
//! * [`Log::open`] recovers: it cuts a torn tail (records after the last
//!   complete batch that never passed a barrier) and refuses to start on
//!   corruption of data that had passed one.
//! * [`LogReader`] is the change stream: it follows a shard directory from any
//!   LSN, independently of the writer, and only returns complete batches.
//!
//! A shard's directory has exactly one writer (enforced with `flock` on a
//! `LOCK` file); any number of readers.

mod dir;
mod error;
pub(crate) mod format;
mod inspect;
pub mod limits;
mod mmap;
mod reader;
mod recovery;
mod segment;
mod snapshot;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use memmap2::MmapMut;
use rkyv::util::AlignedVec;

pub use error::LogError;
pub use inspect::{DirInspection, SnapshotCheck, TornTail, inspect_dir, read_snapshot};
pub use reader::{LogReader, RecordRef};

use format::{
    FLAG_BATCH_END, READY_SEGMENT_NAME, SEGMENT_HEADER_BYTES, encode_record, record_span,
};
use limits::{
    BATCH_RECORDS_MAX, SEGMENT_BYTES_ALIGN, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX,
    SEGMENT_BYTES_MIN, SHARD_MAX, SNAPSHOT_PAYLOAD_BYTES_MAX, SNAPSHOTS_KEPT_DEFAULT,
    SNAPSHOTS_KEPT_MAX, SNAPSHOTS_KEPT_MIN, record_payload_bytes_max,
};
use segment::{PreparedSegment, WritableSegment, prepared_leftovers, prepared_temp_path};
use snapshot::SnapshotFile;

/// Log sequence number: 1, 2, 3, ... in append order; 0 means "none".
pub type Lsn = u64;

/// Tunables of one shard's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Size of each segment file. Between `limits::SEGMENT_BYTES_MIN` and
    /// `limits::SEGMENT_BYTES_MAX`, a multiple of `limits::SEGMENT_BYTES_ALIGN`.
    /// Existing segments keep the size they were created with.
    pub segment_bytes: u64,
    /// How many snapshots stay on disk (at least 1). Segments are deleted only
    /// once the oldest kept snapshot covers all of their records.
    pub snapshots_kept: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            snapshots_kept: SNAPSHOTS_KEPT_DEFAULT,
        }
    }
}

impl LogConfig {
    pub fn validate(&self) -> Result<(), LogError> {
        let s = self.segment_bytes;
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&s)
            || !s.is_multiple_of(SEGMENT_BYTES_ALIGN)
        {
            return Err(LogError::Config(format!(
                "segment_bytes = {s}: must be between {SEGMENT_BYTES_MIN} and {SEGMENT_BYTES_MAX} and a multiple of {SEGMENT_BYTES_ALIGN}"
            )));
        }
        let k = self.snapshots_kept;
        if !(SNAPSHOTS_KEPT_MIN..=SNAPSHOTS_KEPT_MAX).contains(&k) {
            return Err(LogError::Config(format!(
                "snapshots_kept = {k}: must be between {SNAPSHOTS_KEPT_MIN} and {SNAPSHOTS_KEPT_MAX}"
            )));
        }
        Ok(())
    }
}

/// What `Log::open` found and did.
#[derive(Debug)]
#[non_exhaustive]
pub struct Recovery {
    /// The newest valid snapshot; replay the log from `snapshot.lsn + 1`.
    pub snapshot: Option<Snapshot>,
    /// Set if a torn tail was cut off.
    pub tail_cut: Option<TailCut>,
    /// The last LSN in the log after recovery (all of it durable now).
    pub last_lsn: Lsn,
    /// The oldest LSN still readable from the segments.
    pub first_lsn_available: Lsn,
}

/// A snapshot's LSN and opaque payload (16-byte aligned, for rkyv).
#[derive(Debug)]
pub struct Snapshot {
    pub lsn: Lsn,
    pub payload: AlignedVec<16>,
}

/// A torn tail that recovery cut off: records after the last complete batch
/// that had never passed a durability barrier, plus any garbage after them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TailCut {
    /// The segment in which the log now ends.
    pub segment: PathBuf,
    /// Byte offset in `segment` where the log now ends.
    pub offset: u64,
    /// Non-zero bytes zeroed in `segment` plus those in deleted segments.
    pub bytes_discarded: u64,
    /// Valid records dropped because their batch was incomplete.
    pub records_discarded: u64,
    /// Later segments deleted because all of their content was unsynced.
    pub segments_deleted: Vec<PathBuf>,
    /// What recovery found where the valid records stopped.
    pub reason: String,
}

/// A segment before the active one.
#[derive(Debug)]
struct Sealed {
    path: PathBuf,
    first_lsn: Lsn,
    last_lsn: Lsn,
    bytes: u64,
    /// Until a finished barrier covered its last record: the file, which
    /// every barrier begun meanwhile `fdatasync`s.
    unsynced: Option<Arc<File>>,
    /// The writer's mapping of a segment sealed at rollover, handed to the
    /// next barrier, which unmaps it off the writer's thread.
    map: Option<MmapMut>,
}

/// Identifies a `Log` value, so that barriers are not handed to another log.
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

/// The writer of one shard's log. See the module docs.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    /// The directory, open for the barrier's `fsync` of new segment names.
    dir_file: Arc<File>,
    shard: u16,
    config: LogConfig,
    /// Holds the directory's single-writer `flock` while the log is open.
    _lock: File,
    active: WritableSegment,
    /// Where the next record goes in `active`.
    write_offset: usize,
    /// Older segments, oldest first.
    sealed: Vec<Sealed>,
    /// The next segment, allocated and mapped ahead of time.
    prepared: Option<PreparedSegment>,
    /// A [`PrepareJob`] was handed out and its result not installed yet.
    prepare_outstanding: bool,
    /// Segments installed (renamed to their names) since open, and how many
    /// of those renames a finished barrier's directory `fsync` made durable.
    installs: u64,
    installs_durable: u64,
    instance: u64,
    /// Snapshot files, oldest first.
    snapshots: Vec<SnapshotFile>,
    last_lsn: Lsn,
    durable_lsn: Lsn,
    poisoned: bool,
    fail_next_sync: bool,
}

impl Log {
    /// Opens (creating if missing) the log of `shard` in `dir` and recovers
    /// it: validates the segments, cuts a torn tail (zeroing it on disk),
    /// loads the newest valid snapshot (a damaged one is logged and skipped)
    /// and checks that snapshot plus segments cover every LSN. Everything
    /// recovered is made durable before this returns.
    pub fn open(dir: &Path, shard: u16, config: LogConfig) -> Result<(Log, Recovery), LogError> {
        config.validate()?;
        if shard > SHARD_MAX {
            return Err(LogError::Config(format!(
                "shard {shard} out of range 0..={SHARD_MAX}"
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| LogError::io("mkdir", dir, e))?;
        let lock = dir::lock(dir)?;
        let listing = dir::list(dir)?;
        let leftovers = prepared_leftovers(&listing.temps);
        for temp in listing.temps.iter().filter(|t| !leftovers.contains(t)) {
            dir::remove(temp)?;
        }
        let mut snapshots = snapshot_files(&listing.snapshots)?;
        let snapshot = snapshot::load_newest(shard, &mut snapshots)?;
        let snapshot_lsn = snapshot.as_ref().map_or(0, |s| s.lsn);
        let recovered = recovery::recover(dir, shard, &listing.segments, snapshot_lsn)?;
        if let Some(cut) = &recovered.tail_cut {
            tracing::warn!(shard, ?cut, "log: cut a torn tail (unsynced records lost)");
        }
        let tail_cut = recovered.tail_cut.clone();
        let left_ready = !leftovers.is_empty() || dir.join(READY_SEGMENT_NAME).exists();
        let mut spare = PreparedSegment::adopt(
            dir,
            &leftovers,
            config.segment_bytes,
            &prepared_temp_path(dir),
        )?;
        let mut log = Log::resume(dir, shard, config, lock, recovered, snapshots, &mut spare)?;
        log.prune()?;
        if spare.is_some() {
            // Free: an earlier run left it ready.
            log.prepared = spare;
        } else if left_ready {
            log.prepare_now();
        } else {
            log.prepare_ahead();
        }
        // Makes every change above durable: deletions, the cut, the names of
        // recovered segments (a crashed writer may not have synced them) and
        // of the adopted spare, before anything is written into it.
        dir::sync(dir)?;
        let recovery = Recovery {
            snapshot,
            tail_cut,
            last_lsn: log.last_lsn,
            first_lsn_available: log.first_lsn_available(),
        };
        Ok((log, recovery))
    }

    /// Builds the writer on what recovery kept, creating the first segment if
    /// none was kept (from `spare` if there is one).
    fn resume(
        dir: &Path,
        shard: u16,
        config: LogConfig,
        lock: File,
        recovered: recovery::Recovered,
        snapshots: Vec<SnapshotFile>,
        spare: &mut Option<PreparedSegment>,
    ) -> Result<Log, LogError> {
        let mut segments = recovered.segments;
        let active = match segments.pop() {
            Some((path, header)) => WritableSegment::open(&path, &header)?,
            None => {
                let first = match spare.take() {
                    Some(p) => p,
                    None => {
                        PreparedSegment::create(&prepared_temp_path(dir), config.segment_bytes)?
                    }
                };
                first.install_first(dir, shard, recovered.last_lsn + 1)?
            }
        };
        // Records recovered from the page cache after a process crash may not
        // have reached the disk yet; they count as durable only after this.
        // That holds for the active segment and for every sealed one with
        // records newer than what a record's `synced_lsn` (or the snapshot)
        // proves durable: the writer seals segments without syncing them.
        let mut sealed = Vec::with_capacity(segments.len());
        for (i, (path, h)) in segments.iter().enumerate() {
            let next_first = segments
                .get(i + 1)
                .map_or(active.first_lsn, |(_, n)| n.first_lsn);
            let last_lsn = next_first - 1;
            if last_lsn > recovered.proven_lsn {
                File::open(path)
                    .and_then(|f| f.sync_data())
                    .map_err(|e| LogError::io("fdatasync", path, e))?;
            }
            sealed.push(Sealed {
                path: path.clone(),
                first_lsn: h.first_lsn,
                last_lsn,
                bytes: h.segment_bytes,
                unsynced: None,
                map: None,
            });
        }
        let path = &active.path;
        active
            .file
            .sync_data()
            .map_err(|e| LogError::io("fdatasync", path, e))?;
        let dir_file = File::open(dir).map_err(|e| LogError::io("open", dir, e))?;
        Ok(Log {
            dir: dir.into(),
            dir_file: Arc::new(dir_file),
            shard,
            config,
            _lock: lock,
            active,
            write_offset: recovered.write_offset,
            sealed,
            prepared: None,
            prepare_outstanding: false,
            installs: 0,
            installs_durable: 0,
            instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            snapshots,
            last_lsn: recovered.last_lsn,
            durable_lsn: recovered.last_lsn,
            poisoned: false,
            fail_next_sync: false,
        })
    }

    /// Writes the records into the mapped segment, with consecutive LSNs, and
    /// flags the last one `BATCH_END`. Not durable until [`Log::sync`].
    ///
    /// Prepares nothing ahead: that is [`Log::prepare_job`]'s work, off this
    /// thread. Only if the batch needs a rollover and no segment is prepared
    /// (no job was run, or it has not finished) does it create the next
    /// segment on this thread, before writing anything, under a temporary
    /// name of its own: it neither waits for nor collides with a job in
    /// flight, whose segment then serves a later rollover.
    ///
    /// Checks every record before writing any, so `PayloadTooLarge`,
    /// `EmptyBatch`, `BatchTooLarge` and a failure to prepare the next segment
    /// leave the log unchanged. A failure in the middle of writing (only
    /// possible when the batch rolls over to a new segment) poisons the log.
    pub fn append_batch<'a>(
        &mut self,
        records: impl ExactSizeIterator<Item = (u16, &'a [u8])>,
    ) -> Result<RangeInclusive<Lsn>, LogError> {
        self.check_writable()?;
        let batch: Vec<(u16, &[u8])> = records.collect();
        self.check_batch(&batch)?;
        self.ensure_next_segment(&batch)?;
        let first = self.last_lsn + 1;
        assert!(
            first + batch.len() as u64 <= limits::LSN_MAX,
            "LSN space exhausted"
        );
        let last_index = batch.len() - 1;
        for (i, &(kind, payload)) in batch.iter().enumerate() {
            let flags = if i == last_index { FLAG_BATCH_END } else { 0 };
            self.append_one(kind, payload, flags)?;
        }
        debug_assert_eq!(self.last_lsn - first + 1, batch.len() as u64);
        Ok(first..=self.last_lsn)
    }

    fn check_batch(&self, batch: &[(u16, &[u8])]) -> Result<(), LogError> {
        if batch.is_empty() {
            return Err(LogError::EmptyBatch);
        }
        if batch.len() > BATCH_RECORDS_MAX {
            return Err(LogError::BatchTooLarge {
                records: batch.len(),
                max: BATCH_RECORDS_MAX,
            });
        }
        let max = self.record_payload_bytes_max();
        match batch.iter().find(|(_, p)| p.len() > max) {
            Some((_, p)) => Err(LogError::PayloadTooLarge { len: p.len(), max }),
            None => Ok(()),
        }
    }

    /// If the batch will not fit in the active segment, makes sure the next
    /// one is prepared before anything is written, so that running out of
    /// disk space fails the call cleanly instead of poisoning the log.
    fn ensure_next_segment(&mut self, batch: &[(u16, &[u8])]) -> Result<(), LogError> {
        let needed: usize = batch.iter().map(|(_, p)| record_span(p.len())).sum();
        if self.write_offset + needed > self.active.bytes() && self.prepared.is_none() {
            tracing::debug!(
                shard = self.shard,
                "log: no segment prepared at rollover; preparing one on the writer's thread"
            );
            self.prepared = Some(self.create_segment_now()?);
        }
        Ok(())
    }

    /// True once the active segment is half full: the point from which the
    /// next segment is prepared, so an idle shard holds one segment, not two,
    /// and a busy one has the next ready before it needs it.
    fn wants_next_segment(&self) -> bool {
        self.prepared.is_none() && self.write_offset >= self.active.bytes() / 2
    }

    /// At open: prepares the next segment on this thread if it is wanted.
    fn prepare_ahead(&mut self) {
        if self.wants_next_segment() {
            self.prepare_now();
        }
    }

    /// At open: prepares the next segment if none is. A failure here is not
    /// the caller's: it is reported, and retried by a later job or by the
    /// rollover that needs the segment.
    fn prepare_now(&mut self) {
        if self.prepared.is_some() {
            return;
        }
        match self.create_segment_now() {
            Ok(p) => self.prepared = Some(p),
            Err(e) => {
                tracing::warn!(shard = self.shard, error = %e, "log: preparing the next segment failed; will retry")
            }
        }
    }

    /// The work of preparing the next segment, to run off the writer's
    /// thread, if it should be done now: the active segment is at least half
    /// full, no segment is prepared, and no job is outstanding. The returned
    /// job is outstanding until its result reaches [`Log::install_prepared`].
    /// Takes no system call. `None` as well once the log is poisoned.
    pub fn prepare_job(&mut self) -> Option<PrepareJob> {
        if self.poisoned || self.prepare_outstanding || !self.wants_next_segment() {
            return None;
        }
        self.prepare_outstanding = true;
        Some(PrepareJob {
            path: prepared_temp_path(&self.dir),
            segment_bytes: self.config.segment_bytes,
            instance: self.instance,
        })
    }

    /// Takes the result of a [`PrepareJob`] from [`Log::prepare_job`]: the
    /// segment becomes the prepared next one, used by the next rollover. On
    /// error, logs a warning; the next [`Log::prepare_job`] offers a new job
    /// (and a rollover before that creates the segment itself). A segment
    /// prepared for another log, or when one is prepared already, is deleted.
    pub fn install_prepared(&mut self, result: Result<Prepared, LogError>) {
        let mut prepared = match result {
            Ok(p) if p.instance != self.instance => {
                tracing::warn!(
                    shard = self.shard,
                    "log: a segment prepared for another log was handed in; deleting it"
                );
                return;
            }
            Ok(p) => p,
            Err(e) => {
                self.prepare_outstanding = false;
                tracing::warn!(shard = self.shard, error = %e, "log: preparing the next segment failed; will retry");
                return;
            }
        };
        self.prepare_outstanding = false;
        if self.prepared.is_none() {
            self.prepared = prepared.segment.take();
        }
    }

    fn append_one(&mut self, kind: u16, payload: &[u8], flags: u16) -> Result<(), LogError> {
        let span = record_span(payload.len());
        if self.write_offset + span > self.active.bytes()
            && let Err(e) = self.rollover()
        {
            self.poisoned = true;
            return Err(e);
        }
        let at = self.write_offset;
        assert!(
            at + span <= self.active.bytes(),
            "record fits after rollover"
        );
        let lsn = self.last_lsn + 1;
        let dst = &mut self.active.map[at..at + span];
        encode_record(dst, lsn, self.durable_lsn, kind, flags, payload);
        self.write_offset += span;
        self.last_lsn = lsn;
        Ok(())
    }

    /// Prepares a segment on this thread, under a temporary name of its own
    /// (so it never collides with a preparation running elsewhere).
    fn create_segment_now(&self) -> Result<PreparedSegment, LogError> {
        PreparedSegment::create(&prepared_temp_path(&self.dir), self.config.segment_bytes)
    }

    /// Moves writing to the next segment. Nothing is synced here: the
    /// sealed segment joins the segments the next barrier makes durable
    /// (before the new one), and the new name waits for that barrier's
    /// directory `fsync`. Recovery needs no more: a record written into the
    /// new segment before that barrier carries a `synced_lsn` below every
    /// record the barrier would have made durable, so their loss is a torn
    /// tail, not corruption.
    fn rollover(&mut self) -> Result<(), LogError> {
        let prepared = match self.prepared.take() {
            Some(p) => p,
            None => self.create_segment_now()?,
        };
        let next = prepared.install(&self.dir, self.shard, self.last_lsn + 1)?;
        self.installs += 1;
        let old = std::mem::replace(&mut self.active, next);
        let synced = self.durable_lsn >= self.last_lsn;
        self.sealed.push(Sealed {
            bytes: old.bytes() as u64,
            path: old.path,
            first_lsn: old.first_lsn,
            last_lsn: self.last_lsn,
            unsynced: (!synced).then_some(old.file),
            map: Some(old.map),
        });
        self.write_offset = SEGMENT_HEADER_BYTES;
        Ok(())
    }

    /// The durability barrier, run inline: [`Log::begin_sync`], then
    /// [`PendingSync::run`] on this thread, then [`Log::finish_sync`]. When it
    /// returns `Ok(lsn)`:
    ///
    /// * every record with LSN <= `lsn` has been written to stable storage,
    ///   and so has everything needed to find it (see [`PendingSync::run`]);
    /// * so, given the media assumptions in `docs/log-format.md`, those
    ///   records survive a process crash and a power loss, and recovery
    ///   will return them (or refuse to open with `Corrupt`), never cut them.
    ///
    /// It says nothing about records appended after it was called, and
    /// nothing about snapshots (`write_snapshot` syncs its own file).
    ///
    /// If the barrier fails, the log is poisoned: this call returns the I/O
    /// error and every later append, sync or snapshot returns
    /// [`LogError::Poisoned`]. A failed `fdatasync` is never retried: the
    /// kernel may have dropped the dirty pages, so a retry could "succeed"
    /// without the data. Reopen the log to learn what actually reached the
    /// disk.
    pub fn sync(&mut self) -> Result<Lsn, LogError> {
        match self.begin_sync()? {
            None => Ok(self.durable_lsn),
            Some(pending) => {
                let result = pending.run();
                self.finish_sync(pending, result)
            }
        }
    }

    /// The first half of a barrier that runs off the writer's thread: the
    /// records appended so far (up to [`Log::last_lsn`]) become durable once
    /// [`PendingSync::run`] returns `Ok` and the result is handed to
    /// [`Log::finish_sync`]. Appending (and rolling over) may go on in
    /// between; those records wait for a later barrier. Several barriers may
    /// be in flight; each covers what was appended before it began. `None`
    /// if nothing is waiting for a barrier. Takes no system call.
    pub fn begin_sync(&mut self) -> Result<Option<PendingSync>, LogError> {
        self.check_writable()?;
        if self.durable_lsn == self.last_lsn {
            return Ok(None);
        }
        let mut files = Vec::new();
        let mut unmap = Vec::new();
        for s in &mut self.sealed {
            unmap.extend(s.map.take());
            if let Some(file) = &s.unsynced {
                files.push((Arc::clone(file), s.path.clone()));
            }
        }
        files.push((Arc::clone(&self.active.file), self.active.path.clone()));
        let dir = (self.installs > self.installs_durable)
            .then(|| (Arc::clone(&self.dir_file), self.dir.clone()));
        Ok(Some(PendingSync {
            files,
            dir,
            installs: self.installs,
            unmap: Mutex::new(unmap),
            lsn: self.last_lsn,
            instance: self.instance,
            fail: std::mem::take(&mut self.fail_next_sync),
            failed: OnceLock::new(),
        }))
    }

    /// The second half of [`Log::begin_sync`]: on success, advances the
    /// durable LSN to the barrier's and forgets the sealed segments it made
    /// durable. A failed barrier poisons the log (see [`Log::sync`]).
    pub fn finish_sync(
        &mut self,
        pending: PendingSync,
        result: io::Result<()>,
    ) -> Result<Lsn, LogError> {
        self.check_writable()?;
        debug_assert_eq!(pending.instance, self.instance, "a barrier of another log");
        if let Err(source) = result {
            self.poisoned = true;
            let (op, path) = pending
                .failed
                .get()
                .cloned()
                .unwrap_or_else(|| ("fdatasync", self.active.path.clone()));
            tracing::error!(shard = self.shard, path = %path.display(), error = %source, "log: {op} failed; log poisoned");
            return Err(LogError::io(op, path, source));
        }
        debug_assert!(pending.lsn <= self.last_lsn);
        self.durable_lsn = self.durable_lsn.max(pending.lsn);
        for s in &mut self.sealed {
            if s.last_lsn <= pending.lsn {
                s.unsynced = None;
            }
        }
        if pending.dir.is_some() {
            self.installs_durable = self.installs_durable.max(pending.installs);
        }
        Ok(self.durable_lsn)
    }

    fn check_writable(&self) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned { shard: self.shard });
        }
        Ok(())
    }

    /// LSN of the last appended record (durable or not).
    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    /// LSN of the last record that passed a durability barrier.
    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }

    pub fn shard(&self) -> u16 {
        self.shard
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the next record will be written: the active segment's path and
    /// the byte offset in it. For stats, tools and crash tests.
    pub fn position(&self) -> (PathBuf, u64) {
        (self.active.path.clone(), self.write_offset as u64)
    }

    /// True once a failed sync has poisoned the log.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The oldest LSN still in the segments on disk.
    pub fn first_lsn_available(&self) -> Lsn {
        self.sealed
            .first()
            .map_or(self.active.first_lsn, |s| s.first_lsn)
    }

    /// The largest payload `append_batch` accepts in this log: at most
    /// `limits::RECORD_PAYLOAD_BYTES_MAX`, less if segments are too small to
    /// hold that (a record never spans segments).
    pub fn record_payload_bytes_max(&self) -> usize {
        let smallest = self.config.segment_bytes.min(self.active.bytes() as u64);
        record_payload_bytes_max(smallest)
    }

    /// Bytes on disk used by segments (including the prepared next one, all
    /// fully allocated) and snapshots. A [`PrepareJob`] in flight is not
    /// counted until its segment is installed.
    pub fn disk_bytes(&self) -> u64 {
        let sealed: u64 = self.sealed.iter().map(|s| s.bytes).sum();
        let prepared = self.prepared.as_ref().map_or(0, |p| p.bytes());
        let snapshots: u64 = self.snapshots.iter().map(|s| s.bytes).sum();
        sealed + self.active.bytes() as u64 + prepared + snapshots
    }

    /// A reader over durable records from `from` (inclusive) up to the
    /// durable LSN at the time of this call: for replay after open. Fails with
    /// `Compacted` if `from` is older than the first segment on disk.
    pub fn read_from(&self, from: Lsn) -> Result<LogReader, LogError> {
        let mut reader = LogReader::open(&self.dir, self.shard, from)?;
        reader.set_limit(self.durable_lsn);
        Ok(reader)
    }

    /// Writes a snapshot of the state as of `lsn` atomically (temp file,
    /// fsync, rename, fsync directory), then deletes snapshots beyond the
    /// newest `snapshots_kept` and every segment whose records are all
    /// covered by the oldest kept snapshot. The active segment is never
    /// deleted.
    ///
    /// `lsn` must be durable, not older than the newest snapshot, and not
    /// older than the first segment on disk minus one (replay must be able to
    /// continue from `lsn + 1`).
    pub fn write_snapshot(&mut self, lsn: Lsn, payload: &[u8]) -> Result<(), LogError> {
        self.check_writable()?;
        self.check_snapshot_args(lsn, payload)?;
        let file = snapshot::write(&self.dir, self.shard, lsn, payload)?;
        self.snapshots.retain(|s| s.lsn != lsn);
        let at = self.snapshots.partition_point(|s| s.lsn < lsn);
        self.snapshots.insert(at, file);
        self.prune()
    }

    fn check_snapshot_args(&self, lsn: Lsn, payload: &[u8]) -> Result<(), LogError> {
        let newest_snapshot = self
            .snapshots
            .iter()
            .rev()
            .find(|s| s.valid)
            .map_or(0, |s| s.lsn);
        let floor = (self.first_lsn_available() - 1).max(1);
        if lsn > self.durable_lsn || lsn < newest_snapshot || lsn < floor {
            return Err(LogError::SnapshotLsn {
                lsn,
                durable: self.durable_lsn,
                newest_snapshot,
                floor,
            });
        }
        let len = payload.len() as u64;
        if len > SNAPSHOT_PAYLOAD_BYTES_MAX {
            return Err(LogError::SnapshotTooLarge {
                len,
                max: SNAPSHOT_PAYLOAD_BYTES_MAX,
            });
        }
        Ok(())
    }

    /// Deletes snapshots beyond the kept ones, then sealed segments whose
    /// records all have LSN <= the oldest kept snapshot. Keeping segments back
    /// to the oldest kept snapshot is what lets recovery fall back to it.
    fn prune(&mut self) -> Result<(), LogError> {
        let (doomed, oldest_kept) =
            snapshot::prune_plan(&self.snapshots, self.config.snapshots_kept);
        let mut changed = false;
        for file in &doomed {
            dir::remove(&file.path)?;
            changed = true;
        }
        self.snapshots.retain(|s| !doomed.contains(s));
        while let Some(first) = self.sealed.first() {
            if first.last_lsn > oldest_kept {
                break;
            }
            debug_assert!(first.unsynced.is_none(), "a pruned segment was synced");
            dir::remove(&first.path)?;
            self.sealed.remove(0);
            changed = true;
        }
        if changed {
            dir::sync(&self.dir)?;
        }
        Ok(())
    }

    /// LSN of the newest snapshot on disk that is not known damaged (0: none).
    pub fn last_snapshot_lsn(&self) -> Lsn {
        self.snapshots
            .iter()
            .rev()
            .find(|s| s.valid)
            .map_or(0, |s| s.lsn)
    }

    /// Deletes every snapshot but the newest and every sealed segment the
    /// newest covers: [`Log::write_snapshot`]'s pruning with one snapshot
    /// kept. Recovery then has no older snapshot to fall back to.
    pub fn compact(&mut self) -> Result<(), LogError> {
        self.check_writable()?;
        let kept = self.config.snapshots_kept;
        self.config.snapshots_kept = 1;
        let result = self.prune();
        self.config.snapshots_kept = kept;
        result
    }

    /// Test hook: the next barrier ([`Log::sync`] or [`Log::begin_sync`])
    /// fails as if `fdatasync` had returned an error.
    #[cfg(any(test, feature = "testing"))]
    pub fn fail_next_sync(&mut self) {
        self.fail_next_sync = true;
    }
}

impl Drop for Log {
    /// Leaves an unused prepared segment as `seg-prepared.ready`, so that the
    /// next open (here or on another core) does not prepare one again.
    fn drop(&mut self) {
        if let Some(p) = self.prepared.take()
            && let Err(e) = p.keep_ready(&self.dir)
        {
            tracing::warn!(shard = self.shard, error = %e, "log: could not keep the prepared segment");
        }
    }
}

// The writer and readers move between threads with their shard; barriers
// run on other threads.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Log>();
    assert_send::<LogReader>();
    assert_send::<PendingSync>();
    assert_send::<PrepareJob>();
    assert_send::<Prepared>();
};

/// The snapshot files of a listing, with their sizes.
fn snapshot_files(found: &[(Lsn, PathBuf)]) -> Result<Vec<SnapshotFile>, LogError> {
    found
        .iter()
        .map(|(lsn, path)| {
            Ok(SnapshotFile {
                lsn: *lsn,
                bytes: dir::file_bytes(path)?,
                path: path.clone(),
                valid: true,
            })
        })
        .collect()
}

/// The preparation of a log's next segment, from [`Log::prepare_job`], to run
/// on any thread.
#[derive(Debug)]
pub struct PrepareJob {
    /// A temporary name no other preparation in this process uses.
    path: PathBuf,
    segment_bytes: u64,
    instance: u64,
}

impl PrepareJob {
    /// Creates the segment file under its temporary name, allocates it
    /// (`posix_fallocate`), writes zeros over all of it, `fsync`s it, and maps
    /// it read-write with every page faulted in (`MAP_POPULATE`), so that
    /// appends into it read nothing from disk. Blocks for all of that; it
    /// touches nothing the writer uses. Hand the result to
    /// [`Log::install_prepared`].
    pub fn run(self) -> Result<Prepared, LogError> {
        let segment = PreparedSegment::create(&self.path, self.segment_bytes)?;
        Ok(Prepared {
            segment: Some(segment),
            instance: self.instance,
        })
    }
}

/// A segment prepared by [`PrepareJob::run`], for [`Log::install_prepared`].
/// Dropped without being installed (say, its log was closed meanwhile), it
/// deletes its file.
#[derive(Debug)]
pub struct Prepared {
    segment: Option<PreparedSegment>,
    instance: u64,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(segment) = self.segment.take()
            && let Err(e) = segment.discard()
        {
            tracing::warn!(error = %e, "log: could not delete an unused prepared segment");
        }
    }
}

/// A barrier prepared by [`Log::begin_sync`], to run on any thread.
#[derive(Debug)]
pub struct PendingSync {
    /// Segment files to `fdatasync`, oldest first; the active one last.
    files: Vec<(Arc<File>, PathBuf)>,
    /// The shard directory, if a segment was installed since the last
    /// barrier that `fsync`ed it.
    dir: Option<(Arc<File>, PathBuf)>,
    /// The installs whose renames `dir`'s `fsync` makes durable.
    installs: u64,
    /// Mappings of sealed segments, unmapped by `run`.
    unmap: Mutex<Vec<MmapMut>>,
    lsn: Lsn,
    instance: u64,
    fail: bool,
    /// The call and path that failed, for `finish_sync`'s error.
    failed: OnceLock<(&'static str, PathBuf)>,
}

impl PendingSync {
    /// Makes the records up to [`PendingSync::lsn`] durable. Blocks. In
    /// order: `fdatasync` of every segment sealed since the last finished
    /// barrier (oldest first), then of the active segment (on Linux this
    /// writes back the pages dirtied through the mapping, header included),
    /// then, if a segment was installed since the last barrier, `fsync` of
    /// the shard directory, which makes the new segment names durable. Also
    /// unmaps the writer's mappings of sealed segments, so that the writer's
    /// thread does not pay for it.
    pub fn run(&self) -> io::Result<()> {
        if let Ok(mut maps) = self.unmap.lock() {
            drop(std::mem::take(&mut *maps));
        }
        if self.fail {
            if let Some((_, path)) = self.files.last() {
                let _ = self.failed.set(("fdatasync", path.clone()));
            }
            return Err(io::Error::other("injected sync failure (test hook)"));
        }
        for (file, path) in &self.files {
            if let Err(e) = file.sync_data() {
                let _ = self.failed.set(("fdatasync", path.clone()));
                return Err(e);
            }
        }
        if let Some((dir, path)) = &self.dir
            && let Err(e) = dir.sync_all()
        {
            let _ = self.failed.set(("fsync", path.clone()));
            return Err(e);
        }
        Ok(())
    }

    /// The LSN that is durable once this succeeds.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }
}

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
//!   guarantee). A failed sync poisons the log for good.
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
mod format;
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
use segment::{PreparedSegment, WritableSegment};
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
    bytes: u64,
}

/// The writer of one shard's log. See the module docs.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
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
        for temp in &listing.temps {
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
        let mut log = Log::resume(dir, shard, config, lock, recovered, snapshots)?;
        log.prune()?;
        if dir.join(READY_SEGMENT_NAME).exists() {
            // Free: an earlier run left it ready.
            log.prepare_now();
        } else {
            log.prepare_ahead();
        }
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
    /// none was kept.
    fn resume(
        dir: &Path,
        shard: u16,
        config: LogConfig,
        lock: File,
        recovered: recovery::Recovered,
        snapshots: Vec<SnapshotFile>,
    ) -> Result<Log, LogError> {
        let mut segments = recovered.segments;
        let active = match segments.pop() {
            Some((path, header)) => WritableSegment::open(&path, &header)?,
            None => PreparedSegment::create(dir, config.segment_bytes)?.install_first(
                dir,
                shard,
                recovered.last_lsn + 1,
            )?,
        };
        // Records recovered from the page cache after a process crash may not
        // have reached the disk yet; they count as durable only after this.
        let path = &active.path;
        active
            .file
            .sync_data()
            .map_err(|e| LogError::io("fdatasync", path, e))?;
        let sealed = segments
            .into_iter()
            .map(|(path, h)| Sealed {
                path,
                first_lsn: h.first_lsn,
                bytes: h.segment_bytes,
            })
            .collect();
        Ok(Log {
            dir: dir.into(),
            shard,
            config,
            _lock: lock,
            active,
            write_offset: recovered.write_offset,
            sealed,
            prepared: None,
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
        self.prepare_ahead();
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
            self.prepared = Some(PreparedSegment::create(
                &self.dir,
                self.config.segment_bytes,
            )?);
        }
        Ok(())
    }

    /// Prepares the next segment once the active one is half full, so an idle
    /// shard holds one segment, not two, and a busy one never waits for
    /// allocation at rollover.
    fn prepare_ahead(&mut self) {
        if self.write_offset >= self.active.bytes() / 2 {
            self.prepare_now();
        }
    }

    /// Prepares the next segment if none is. A failure here is not the
    /// caller's: it is retried (and reported) by the next append that needs
    /// the segment.
    fn prepare_now(&mut self) {
        if self.prepared.is_some() {
            return;
        }
        match PreparedSegment::create(&self.dir, self.config.segment_bytes) {
            Ok(p) => self.prepared = Some(p),
            Err(e) => {
                tracing::warn!(shard = self.shard, error = %e, "log: preparing the next segment failed; will retry")
            }
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

    /// Moves writing to the next segment. The current one is synced first,
    /// so a valid record in segment k+1 implies segment k is durable.
    fn rollover(&mut self) -> Result<(), LogError> {
        let result = if std::mem::take(&mut self.fail_next_sync) {
            Err(io::Error::other("injected sync failure (test hook)"))
        } else {
            self.active.file.sync_data()
        };
        if let Err(source) = result {
            self.poisoned = true;
            tracing::error!(shard = self.shard, path = %self.active.path.display(), error = %source, "log: fdatasync failed; log poisoned");
            return Err(LogError::io("fdatasync", &self.active.path, source));
        }
        let prepared = match self.prepared.take() {
            Some(p) => p,
            None => PreparedSegment::create(&self.dir, self.config.segment_bytes)?,
        };
        let next = prepared.install(&self.dir, self.shard, self.last_lsn + 1)?;
        let old = std::mem::replace(&mut self.active, next);
        self.sealed.push(Sealed {
            bytes: old.bytes() as u64,
            path: old.path,
            first_lsn: old.first_lsn,
        });
        self.write_offset = SEGMENT_HEADER_BYTES;
        Ok(())
    }

    /// The durability barrier, run inline: [`Log::begin_sync`], then
    /// [`PendingSync::run`] on this thread, then [`Log::finish_sync`]. When it
    /// returns `Ok(lsn)`:
    ///
    /// * every record with LSN <= `lsn` has been written to stable storage
    ///   (`fdatasync` of the segment files that hold records not yet
    ///   durable; see [`PendingSync::run`]);
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
    /// [`Log::finish_sync`]. Appending may go on in between; those records
    /// wait for a later barrier. `None` if nothing is waiting for a barrier.
    pub fn begin_sync(&mut self) -> Result<Option<PendingSync>, LogError> {
        self.check_writable()?;
        if self.durable_lsn == self.last_lsn {
            return Ok(None);
        }
        let file = self
            .active
            .file
            .try_clone()
            .map_err(|e| LogError::io("dup", &self.active.path, e))?;
        Ok(Some(PendingSync {
            file,
            path: self.active.path.clone(),
            lsn: self.last_lsn,
            fail: std::mem::take(&mut self.fail_next_sync),
        }))
    }

    /// The second half of [`Log::begin_sync`]. A failed sync poisons the log
    /// (see [`Log::sync`]).
    pub fn finish_sync(
        &mut self,
        pending: PendingSync,
        result: io::Result<()>,
    ) -> Result<Lsn, LogError> {
        self.check_writable()?;
        if let Err(source) = result {
            self.poisoned = true;
            tracing::error!(shard = self.shard, path = %pending.path.display(), error = %source, "log: fdatasync failed; log poisoned");
            return Err(LogError::io("fdatasync", &pending.path, source));
        }
        debug_assert!(pending.lsn <= self.last_lsn);
        self.durable_lsn = self.durable_lsn.max(pending.lsn);
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
    /// fully allocated) and snapshots.
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
            let next_first = self
                .sealed
                .get(1)
                .map_or(self.active.first_lsn, |s| s.first_lsn);
            if next_first - 1 > oldest_kept {
                break;
            }
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

    /// Test hook: the next barrier (in `sync` or at rollover) fails as if
    /// `fdatasync` had returned an error.
    #[cfg(any(test, feature = "testing"))]
    pub fn fail_next_sync(&mut self) {
        self.fail_next_sync = true;
    }
}

// The writer and readers move between threads with their shard.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Log>();
    assert_send::<LogReader>();
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

/// A barrier prepared by [`Log::begin_sync`], to run on any thread.
#[derive(Debug)]
pub struct PendingSync {
    file: File,
    path: PathBuf,
    lsn: Lsn,
    fail: bool,
}

impl PendingSync {
    /// Makes the active segment's data durable (`fdatasync`; on Linux it
    /// writes back the pages dirtied through the mapping). Blocks.
    pub fn run(&self) -> io::Result<()> {
        if self.fail {
            return Err(io::Error::other("injected sync failure (test hook)"));
        }
        self.file.sync_data()
    }

    /// The LSN that is durable once this succeeds.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }
}

//! The per-core commit journal: what makes an answer durable.
//!
//! A core appends one frame per commit round holding the records of every
//! shard the round touched (shard, the record's LSN in that shard's log,
//! kind, payload), and makes it durable with one barrier (`pwrite` then
//! `fdatasync`), however many shards the round touched. The shards' own logs
//! (`crate::log`) receive the same records and are made durable later, off
//! the answer path, by a checkpointer.
//!
//! * [`Journal::begin_write`] places a sealed [`FrameBuilder`] in the active
//!   segment and returns a [`WriteJob`] that can run on any thread;
//!   [`Journal::finish_write`] takes its result. At most one write is in
//!   flight. A failed write poisons the journal: the core stops writing.
//! * Segments are preallocated, zero-filled files, reused in a ring. A sealed
//!   segment is reused only once every shard with records in it has made its
//!   own log durable past them ([`Journal::oldest_pins`] says which shards
//!   and LSNs; [`Journal::release_oldest`] then zeroes it for reuse).
//! * [`recover`] reads every core's journal (any number of cores, any
//!   placement of shards), appends to each shard's log the records beyond
//!   what that log holds, makes them durable, and clears the journals.
//!
//! `docs/log-format.md` ("The commit journal") describes the bytes.

mod format;
pub mod limits;
mod recover;
mod scan;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use format::{
    ENTRY_HEADER_BYTES, EntryRef, FRAME_HEADER_BYTES, FRAMES_START, SEGMENT_HEADER_BYTES,
    entry_span,
};
pub use recover::{JournalRecovery, recover};
pub use scan::{DirScan, JournalEntry, TornJournal, scan_dir};

use crate::log::Lsn;
use format::{SegmentHeader, push_entry, seal_frame};

/// Name of the directory (under the data directory) holding every core's journal.
pub const JOURNAL_DIR_NAME: &str = "journal";

/// The journal directory of `core` under `root` (`DATA/journal`).
pub fn core_dir(root: &Path, core: u16) -> PathBuf {
    root.join(format!("core-{core:03}"))
}

fn segment_name(index: usize) -> String {
    format!("seg-{index:04}.jrnl")
}

/// Everything that can go wrong in the journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// An operating-system call failed.
    #[error(
        "journal: I/O error during {op} on {path}: {source} (check free space, permissions and the device; then restart the node)"
    )]
    Io {
        /// The call (`"pwrite"`, `"fdatasync"`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Durable journal data is damaged: a frame or header at `offset` of
    /// `segment` is invalid and later data proves it had passed a barrier.
    #[error(
        "journal corrupt in {segment} at byte offset {offset}: {reason}. Durable data is damaged and was not skipped; restore the data directory from a backup"
    )]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the damage.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The journal's records for a shard do not continue its log.
    #[error(
        "shard {shard}: its log ends at lsn {log_last} but the journal continues at lsn {journal_first}; records in between are missing"
    )]
    Gap {
        /// Shard.
        shard: u16,
        /// Last LSN in the shard's own log.
        log_last: Lsn,
        /// The LSN the journal has next for it.
        journal_first: Lsn,
    },
    /// Every segment holds records not yet checkpointed: the frame waits.
    #[error("journal full: every segment waits for a checkpoint")]
    Full,
    /// An earlier write or barrier failed; the journal refuses writes.
    #[error(
        "core {core}: the commit journal is poisoned by an earlier failed write or barrier; restart the node so recovery re-reads what reached the disk"
    )]
    Poisoned {
        /// The core.
        core: u16,
    },
    /// A configuration value is out of range.
    #[error("journal configuration: {0}")]
    Config(String),
    /// A shard's log failed while recovery appended to it.
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
}

impl JournalError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        JournalError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Tunables of one core's journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// Bytes per segment file (`limits::SEGMENT_BYTES_MIN..=MAX`, whole pages).
    pub segment_bytes: u64,
    /// Segment files per core (`limits::SEGMENTS_MIN..=MAX`).
    pub segments: usize,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            segment_bytes: limits::SEGMENT_BYTES_DEFAULT,
            segments: limits::SEGMENTS_DEFAULT,
        }
    }
}

impl JournalConfig {
    /// Checks every field against `limits`.
    pub fn validate(&self) -> Result<(), JournalError> {
        let s = self.segment_bytes;
        if !(limits::SEGMENT_BYTES_MIN..=limits::SEGMENT_BYTES_MAX).contains(&s)
            || !s.is_multiple_of(limits::SEGMENT_BYTES_ALIGN)
        {
            return Err(JournalError::Config(format!(
                "segment_bytes = {s}: must be between {} and {} and a multiple of {}",
                limits::SEGMENT_BYTES_MIN,
                limits::SEGMENT_BYTES_MAX,
                limits::SEGMENT_BYTES_ALIGN
            )));
        }
        let n = self.segments;
        if !(limits::SEGMENTS_MIN..=limits::SEGMENTS_MAX).contains(&n) {
            return Err(JournalError::Config(format!(
                "segments = {n}: must be between {} and {}",
                limits::SEGMENTS_MIN,
                limits::SEGMENTS_MAX
            )));
        }
        Ok(())
    }
}

/// One frame being built: the records of one commit round.
#[derive(Debug)]
pub struct FrameBuilder {
    buf: Vec<u8>,
    entries: u32,
    /// Highest LSN per shard in this frame.
    pins: BTreeMap<u16, Lsn>,
}

impl Default for FrameBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameBuilder {
    /// An empty frame.
    pub fn new() -> Self {
        Self::with_buffer(Vec::new())
    }

    /// An empty frame reusing `buf`'s allocation.
    pub fn with_buffer(mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.resize(FRAME_HEADER_BYTES, 0);
        FrameBuilder {
            buf,
            entries: 0,
            pins: BTreeMap::new(),
        }
    }

    /// Adds one record. LSNs of one shard must grow within and across frames.
    pub fn push(&mut self, shard: u16, lsn: Lsn, kind: u16, payload: &[u8]) {
        if self.buf.is_empty() {
            // The buffer went to a write job; start a new frame in place.
            self.buf.resize(FRAME_HEADER_BYTES, 0);
        }
        debug_assert!(self.pins.get(&shard).is_none_or(|&l| l < lsn));
        push_entry(&mut self.buf, shard, kind, lsn, payload);
        self.entries += 1;
        self.pins.insert(shard, lsn);
    }

    /// Whether the frame has no records.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Records in the frame.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// Bytes the frame will occupy, header included.
    pub fn bytes(&self) -> usize {
        self.buf.len().max(FRAME_HEADER_BYTES)
    }

    /// Whether the frame reached `limits::FRAME_BYTES_SOFT_MAX`.
    pub fn is_full(&self) -> bool {
        self.bytes() >= limits::FRAME_BYTES_SOFT_MAX
    }
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: Arc<File>,
    /// Highest LSN per shard among the frames written into it.
    pins: BTreeMap<u16, Lsn>,
}

/// One core's journal writer. Owned by one thread; I/O runs in jobs.
#[derive(Debug)]
pub struct Journal {
    core: u16,
    config: JournalConfig,
    segments: Vec<Segment>,
    active: Option<usize>,
    /// Where the next frame goes in the active segment.
    write_offset: usize,
    /// Sealed segments waiting for a checkpoint, oldest first.
    sealed: VecDeque<usize>,
    /// Zeroed segments ready for use.
    free: VecDeque<usize>,
    next_seq: u64,
    /// Every frame up to this one has passed a barrier.
    durable_seq: u64,
    /// Sequence number of the frame in flight (or last written).
    written_seq: u64,
    /// `first_seq` of the active segment (every frame in it carries it).
    generation: u64,
    prev_crc: u32,
    in_flight: bool,
    /// Frames written to the active segment since its last barrier.
    unsynced: bool,
    poisoned: bool,
    fail_next_write: bool,
}

impl Journal {
    /// Creates the journal of `core` in `dir`: every segment file is
    /// (re)written with zeros and made durable. Blocks. Whatever the
    /// directory held must have been recovered ([`recover`]) first.
    pub fn create(dir: &Path, core: u16, config: JournalConfig) -> Result<Journal, JournalError> {
        config.validate()?;
        std::fs::create_dir_all(dir).map_err(|e| JournalError::io("mkdir", dir, e))?;
        let mut segments = Vec::with_capacity(config.segments);
        for i in 0..config.segments {
            let path = dir.join(segment_name(i));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| JournalError::io("open", &path, e))?;
            file.set_len(config.segment_bytes)
                .map_err(|e| JournalError::io("ftruncate", &path, e))?;
            zero_fill(&file, 0, config.segment_bytes as usize)
                .map_err(|e| JournalError::io("zero-fill", &path, e))?;
            file.sync_all()
                .map_err(|e| JournalError::io("fsync", &path, e))?;
            segments.push(Segment {
                path,
                file: Arc::new(file),
                pins: BTreeMap::new(),
            });
        }
        remove_extra_segments(dir, config.segments)?;
        sync_dir(dir)?;
        let free = (0..segments.len()).collect();
        Ok(Journal {
            core,
            config,
            segments,
            active: None,
            write_offset: FRAMES_START,
            sealed: VecDeque::new(),
            free,
            next_seq: 1,
            generation: 0,
            durable_seq: 0,
            written_seq: 0,
            prev_crc: 0,
            in_flight: false,
            unsynced: false,
            poisoned: false,
            fail_next_write: false,
        })
    }

    /// Seals `frame` and places it in the active segment (moving to a free
    /// segment when it does not fit); the returned job writes it (and makes it
    /// durable if `sync`). On success `frame` is left empty, reusing nothing;
    /// get its buffer back from [`Journal::finish_write`].
    ///
    /// `Full` leaves everything unchanged: checkpoint and release the oldest
    /// segment, then call again.
    pub fn begin_write(
        &mut self,
        frame: &mut FrameBuilder,
        sync: bool,
    ) -> Result<WriteJob, JournalError> {
        self.check_writable()?;
        assert!(!self.in_flight, "one journal write in flight at a time");
        assert!(!frame.is_empty(), "an empty frame is never written");
        let span = frame.bytes();
        assert!(
            span <= limits::FRAME_BYTES_MAX,
            "frame within FRAME_BYTES_MAX"
        );
        let seg_bytes = self.config.segment_bytes as usize;
        let mut header = None;
        let mut sync_before = None;
        if self.active.is_none() || self.write_offset + span > seg_bytes {
            let Some(&next) = self.free.front() else {
                return Err(JournalError::Full);
            };
            self.free.pop_front();
            if let Some(old) = self.active.take() {
                if self.unsynced {
                    // A frame in a later segment must imply that every
                    // earlier one is durable (recovery relies on it).
                    sync_before = Some(self.segments[old].file.clone());
                }
                self.sealed.push_back(old);
            }
            self.active = Some(next);
            self.write_offset = FRAMES_START;
            self.segments[next].pins.clear();
            header = Some(
                SegmentHeader {
                    core: self.core,
                    segment_bytes: self.config.segment_bytes,
                    first_seq: self.next_seq,
                }
                .encode(),
            );
            self.generation = self.next_seq;
        }
        let Some(active) = self.active else {
            unreachable!("an active segment was just chosen");
        };
        let seq = self.next_seq;
        let crc = seal_frame(
            &mut frame.buf,
            seq,
            self.generation,
            frame.entries,
            self.prev_crc,
            self.durable_seq,
        );
        let seg = &mut self.segments[active];
        for (&shard, &lsn) in &frame.pins {
            let pin = seg.pins.entry(shard).or_insert(lsn);
            *pin = (*pin).max(lsn);
        }
        let job = WriteJob {
            file: seg.file.clone(),
            path: seg.path.clone(),
            header,
            offset: self.write_offset as u64,
            buf: std::mem::take(&mut frame.buf),
            sync_before,
            sync,
            fail: std::mem::take(&mut self.fail_next_write),
        };
        frame.entries = 0;
        frame.pins.clear();
        self.written_seq = seq;
        self.next_seq += 1;
        self.prev_crc = crc;
        self.write_offset += span;
        self.in_flight = true;
        self.unsynced = !sync;
        Ok(job)
    }

    /// Takes the result of a [`WriteJob`]; returns its buffer for reuse. A
    /// failed write poisons the journal: nothing of the frame may be
    /// answered, and no later frame is written.
    pub fn finish_write(
        &mut self,
        job: WriteJob,
        result: io::Result<()>,
    ) -> Result<Vec<u8>, JournalError> {
        assert!(self.in_flight, "finish_write without a write in flight");
        self.in_flight = false;
        if let Err(source) = result {
            self.poisoned = true;
            tracing::error!(core = self.core, path = %job.path.display(), error = %source, "journal: write or barrier failed; journal poisoned");
            return Err(JournalError::io("pwrite/fdatasync", &job.path, source));
        }
        if job.sync {
            self.durable_seq = self.written_seq;
        } else if job.sync_before.is_some() {
            // Every frame of the old segment is durable now.
            self.durable_seq = self.written_seq - 1;
        }
        Ok(job.buf)
    }

    /// In interval mode: a barrier for every frame written so far without
    /// one (`None` if there is none).
    pub fn sync_job(&mut self) -> Option<SyncJob> {
        if !self.unsynced || self.poisoned {
            return None;
        }
        let active = self.active?;
        self.unsynced = false;
        Some(SyncJob {
            file: self.segments[active].file.clone(),
            path: self.segments[active].path.clone(),
            seq: self.written_seq,
        })
    }

    /// Takes the result of a [`SyncJob`]; a failure poisons the journal.
    pub fn finish_sync(
        &mut self,
        job: SyncJob,
        result: io::Result<()>,
    ) -> Result<(), JournalError> {
        match result {
            Ok(()) => {
                self.durable_seq = self.durable_seq.max(job.seq);
                Ok(())
            }
            Err(source) => {
                self.poisoned = true;
                tracing::error!(core = self.core, path = %job.path.display(), error = %source, "journal: barrier failed; journal poisoned");
                Err(JournalError::io("fdatasync", &job.path, source))
            }
        }
    }

    /// The shards (and LSNs) whose own logs must be durable before the oldest
    /// sealed segment can be reused; `None` if no segment is sealed.
    pub fn oldest_pins(&self) -> Option<Vec<(u16, Lsn)>> {
        let &oldest = self.sealed.front()?;
        Some(
            self.segments[oldest]
                .pins
                .iter()
                .map(|(&s, &l)| (s, l))
                .collect(),
        )
    }

    /// Whether every segment but the active one is sealed (the next rollover
    /// would find no free segment).
    pub fn is_short_of_space(&self) -> bool {
        self.free.is_empty()
    }

    /// Takes the oldest sealed segment out of the ring to zero it for reuse.
    /// The caller has made every shard of [`Journal::oldest_pins`] durable.
    pub fn release_oldest(&mut self) -> Option<ZeroJob> {
        let oldest = self.sealed.pop_front()?;
        self.segments[oldest].pins.clear();
        Some(ZeroJob {
            index: oldest,
            file: self.segments[oldest].file.clone(),
            path: self.segments[oldest].path.clone(),
            bytes: self.config.segment_bytes as usize,
        })
    }

    /// Takes the result of a [`ZeroJob`]: the segment is free again, or (if
    /// zeroing failed) left out of the ring for good.
    pub fn finish_zero(&mut self, job: ZeroJob, result: io::Result<()>) {
        match result {
            Ok(()) => self.free.push_back(job.index),
            Err(e) => {
                tracing::error!(core = self.core, path = %job.path.display(), error = %e, "journal: could not clear a segment; it is no longer used");
            }
        }
    }

    /// Whether a failure poisoned the journal.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    fn check_writable(&self) -> Result<(), JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned { core: self.core });
        }
        Ok(())
    }

    /// Test hook: the next write fails as if `pwrite` had.
    #[cfg(any(test, feature = "testing"))]
    pub fn fail_next_write(&mut self) {
        self.fail_next_write = true;
    }
}

/// Writes one frame (and, for a fresh segment, its header). Runs anywhere.
#[derive(Debug)]
pub struct WriteJob {
    file: Arc<File>,
    path: PathBuf,
    header: Option<[u8; SEGMENT_HEADER_BYTES]>,
    offset: u64,
    buf: Vec<u8>,
    sync_before: Option<Arc<File>>,
    sync: bool,
    fail: bool,
}

impl WriteJob {
    /// `pwrite`s the frame, then (if asked) `fdatasync`. Blocks.
    pub fn run(&self) -> io::Result<()> {
        if self.fail {
            return Err(io::Error::other(
                "injected journal write failure (test hook)",
            ));
        }
        if let Some(old) = &self.sync_before {
            old.sync_data()?;
        }
        if let Some(h) = &self.header {
            self.file.write_all_at(h, 0)?;
        }
        self.file.write_all_at(&self.buf, self.offset)?;
        if self.sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Whether this write ends with a barrier.
    pub fn is_barrier(&self) -> bool {
        self.sync
    }

    /// Frame bytes.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }
}

/// A barrier of frames written without one (interval mode).
#[derive(Debug)]
pub struct SyncJob {
    file: Arc<File>,
    path: PathBuf,
    /// The last frame written when the job was made (durable once it succeeds).
    seq: u64,
}

impl SyncJob {
    /// `fdatasync` of the active segment. Blocks.
    pub fn run(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Zeroes a released segment for reuse: its header first (made durable), so
/// a crash half way leaves a segment recovery skips, then the rest.
#[derive(Debug)]
pub struct ZeroJob {
    index: usize,
    file: Arc<File>,
    path: PathBuf,
    bytes: usize,
}

impl ZeroJob {
    /// Blocks. The body is zeroed in `limits::ZERO_CHUNK_BYTES` pieces,
    /// each made durable, with a pause of `limits::ZERO_CHUNK_PAUSE` after
    /// each: on a disk that completes one flush at a time, the journal's own
    /// barriers then wait behind one small piece, never behind the whole
    /// segment's writeback.
    pub fn run(&self) -> io::Result<()> {
        zero_fill(&self.file, 0, FRAMES_START)?;
        self.file.sync_data()?;
        let mut at = FRAMES_START;
        while at < self.bytes {
            let end = (at + limits::ZERO_CHUNK_BYTES).min(self.bytes);
            zero_fill(&self.file, at, end)?;
            self.file.sync_data()?;
            at = end;
            std::thread::sleep(limits::ZERO_CHUNK_PAUSE);
        }
        Ok(())
    }
}

fn zero_fill(file: &File, from: usize, to: usize) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(to - from)];
    let mut at = from;
    while at < to {
        let n = CHUNK.min(to - at);
        file.write_all_at(&zeros[..n], at as u64)?;
        at += n;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    let d = File::open(dir).map_err(|e| JournalError::io("open", dir, e))?;
    d.sync_all().map_err(|e| JournalError::io("fsync", dir, e))
}

/// Deletes segment files beyond the configured count (a smaller ring than
/// an earlier run's).
fn remove_extra_segments(dir: &Path, keep: usize) -> Result<(), JournalError> {
    let entries = std::fs::read_dir(dir).map_err(|e| JournalError::io("read_dir", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| JournalError::io("read_dir", dir, e))?;
        let name = entry.file_name();
        let Some(index) = scan::segment_index(&name.to_string_lossy()) else {
            continue;
        };
        if index >= keep {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| JournalError::io("unlink", &path, e))?;
        }
    }
    Ok(())
}

//! The change stream: reads a shard's records in LSN order, from any LSN,
//! independently of the writer, and keeps following the log as it grows.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

use super::error::LogError;
use super::format::{
    Decoded, NotARecord, RECORD_ALIGN, SEGMENT_HEADER_BYTES, decode_record, segment_file_name,
};
use super::recovery::find_proof_in;
use super::segment::{MappedSegment, header_hard_error};
use super::{Lsn, dir};

/// One record handed out by a [`LogReader`]. `payload` points into the mapped
/// segment and starts at a 16-byte-aligned address, so rkyv can access it in
/// place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub lsn: Lsn,
    pub kind: u16,
    pub payload: &'a [u8],
}

/// A position in the reader's mapped segments: `lsn` is the record expected
/// at `offset` of `segs[seg]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    seg: usize,
    offset: usize,
    lsn: Lsn,
}

/// Tails a shard directory from an LSN. See the module docs of
/// [`crate::log`] for what it returns and when.
#[derive(Debug)]
pub struct LogReader {
    dir: PathBuf,
    shard: u16,
    /// Records below this are skipped.
    from: Lsn,
    /// Records above this are never returned; below it they must exist.
    limit: Option<Lsn>,
    /// Mapped segments; `segs[0]` holds `pos`. Headers are all valid.
    segs: VecDeque<MappedSegment>,
    /// The next record to hand out.
    pos: Cursor,
    /// The first record not yet validated (`scan.lsn >= pos.lsn`).
    scan: Cursor,
    /// Records up to this LSN are validated and in complete batches.
    ready_until: Lsn,
}

impl LogReader {
    /// Opens a reader on `dir` that starts at `from` (0 is read as 1). Fails
    /// with `Compacted` if `from` is older than the oldest segment on disk.
    /// `from` may lie in the future: the reader then waits for it.
    pub fn open(dir: &Path, shard: u16, from: Lsn) -> Result<Self, LogError> {
        let from = from.max(1);
        let listing = dir::list(dir)?;
        let Some(&(first_available, _)) = listing.segments.first() else {
            return Err(LogError::NoSegments { dir: dir.into() });
        };
        if from < first_available {
            return Err(LogError::Compacted {
                requested: from,
                first_available,
            });
        }
        let start = listing
            .segments
            .iter()
            .rev()
            .map(|&(lsn, _)| lsn)
            .find(|&lsn| lsn <= from)
            .unwrap_or(first_available);
        let cursor = Cursor {
            seg: 0,
            offset: SEGMENT_HEADER_BYTES,
            lsn: start,
        };
        Ok(LogReader {
            dir: dir.into(),
            shard,
            from,
            limit: None,
            segs: VecDeque::new(),
            pos: cursor,
            scan: cursor,
            ready_until: start - 1,
        })
    }

    /// Never returns records after `limit`, and treats any record up to
    /// `limit` that is missing or invalid as corruption (the caller knows
    /// they were made durable). `Log::read_from` sets it to the durable LSN;
    /// a change stream in the writer's process can raise it after each sync
    /// to see only durable records.
    pub fn set_limit(&mut self, limit: Lsn) {
        self.limit = Some(limit);
    }

    /// The LSN of the next record `next` will consider.
    pub fn next_lsn(&self) -> Lsn {
        self.pos.lsn.max(self.from)
    }

    /// The next record, or `Ok(None)` at the current end of complete batches
    /// (call again later to see records appended since).
    #[allow(
        clippy::should_implement_trait,
        reason = "a lending iterator: records borrow the reader's mappings"
    )]
    pub fn next(&mut self) -> Result<Option<RecordRef<'_>>, LogError> {
        loop {
            self.drop_passed_segments();
            if self.limit.is_some_and(|limit| self.pos.lsn > limit) {
                return Ok(None);
            }
            if self.pos.lsn > self.ready_until && !self.scan_ready()? {
                return Ok(None);
            }
            let (at, d) = self.validated_at(self.pos)?;
            self.pos = Cursor {
                seg: at.seg,
                offset: d.next,
                lsn: at.lsn + 1,
            };
            if at.lsn >= self.from {
                return Ok(Some(self.record_ref(at.seg, &d)));
            }
        }
    }

    fn record_ref(&self, seg: usize, d: &Decoded) -> RecordRef<'_> {
        let bytes = self.segs[seg].bytes();
        let payload = &bytes[d.payload_at..d.payload_at + d.header.len as usize];
        debug_assert!((payload.as_ptr() as usize).is_multiple_of(RECORD_ALIGN));
        RecordRef {
            lsn: d.header.lsn,
            kind: d.header.kind,
            payload,
        }
    }

    /// Unmaps segments the reader has moved past.
    fn drop_passed_segments(&mut self) {
        while self.pos.seg > 0 {
            self.segs.pop_front();
            self.pos.seg -= 1;
            self.scan.seg -= 1;
        }
    }

    /// Validates records from `scan` up to the next BATCH_END. Returns true
    /// if a batch completed (`ready_until` advanced).
    fn scan_ready(&mut self) -> Result<bool, LogError> {
        loop {
            let Some((at, d)) = self.record_at(self.scan)? else {
                return Ok(false);
            };
            self.scan = Cursor {
                seg: at.seg,
                offset: d.next,
                lsn: at.lsn + 1,
            };
            if d.header.batch_end() {
                self.ready_until = d.header.lsn;
                return Ok(true);
            }
        }
    }

    /// The record at a position `scan_ready` already validated, stepping
    /// over segment ends (those segments are mapped). Validated again rather
    /// than trusted: the bytes could have changed if a restarted writer cut
    /// a torn tail that this reader had already seen.
    fn validated_at(&self, mut c: Cursor) -> Result<(Cursor, Decoded), LogError> {
        while let Some(seg) = self.segs.get(c.seg) {
            match decode_record(seg.bytes(), c.offset) {
                Ok(d) if d.header.lsn == c.lsn => return Ok((c, d)),
                Err(NotARecord::End) => c = next_segment(c),
                Ok(_) | Err(NotARecord::Invalid(_)) => break,
            }
        }
        let segment = self.segs.get(c.seg).map_or_else(
            || self.dir.join(segment_file_name(c.lsn)),
            |s| s.path.clone(),
        );
        Err(LogError::Corrupt {
            shard: self.shard,
            segment,
            offset: c.offset as u64,
            reason: format!(
                "record {} changed after the reader validated it (did the writer restart and cut a torn tail?)",
                c.lsn
            ),
        })
    }

    /// Validates the record expected at `c`, moving into (and mapping) the
    /// next segment at a segment end. `None`: not there (yet).
    fn record_at(&mut self, mut c: Cursor) -> Result<Option<(Cursor, Decoded)>, LogError> {
        loop {
            if c.seg == self.segs.len() && !self.map_segment(c.lsn)? {
                return self.missing(c, "the segment holding it does not exist");
            }
            let reason = match decode_record(self.segs[c.seg].bytes(), c.offset) {
                Ok(d) if d.header.lsn == c.lsn => return Ok(Some((c, d))),
                Ok(_) => "record has another lsn",
                Err(NotARecord::Invalid(why)) => why,
                Err(NotARecord::End) => {
                    c = next_segment(c);
                    continue;
                }
            };
            // Bytes being written right now look exactly like this too, and
            // so does a torn tail that recovery has not cut yet.
            self.corrupt_if_proven(c, reason)?;
            return self.missing(c, reason);
        }
    }

    /// An invalid record at `c` is corruption, not a write in progress or a
    /// torn tail, if a later segment exists and a valid record after it (in
    /// this segment or a later one) carries a `synced_lsn` that reaches it.
    ///
    /// A later segment alone proves nothing: the writer writes every record
    /// of a segment before it creates the next, but seals it without a sync,
    /// so after a power loss (before recovery runs) a segment's tail may be
    /// torn while the next one exists. The proof search runs only once a
    /// later segment exists, so the usual case (the writer is still in this
    /// segment, perhaps writing this very record) costs one listing.
    fn corrupt_if_proven(&self, c: Cursor, reason: &str) -> Result<(), LogError> {
        let here = &self.segs[c.seg];
        let listing = dir::list(&self.dir)?;
        let later: Vec<_> = listing
            .segments
            .iter()
            .filter(|&&(lsn, _)| lsn > here.name_lsn)
            .collect();
        if later.is_empty() {
            return Ok(());
        }
        // Written completely since we looked (the writer has moved on)?
        if matches!(decode_record(here.bytes(), c.offset), Ok(d) if d.header.lsn == c.lsn) {
            return Ok(());
        }
        let mut proof =
            find_proof_in(here.bytes(), c.offset, c.lsn).map(|(o, h)| (here.path.clone(), o, h));
        for (lsn, path) in later {
            if proof.is_some() {
                break;
            }
            let seg = match MappedSegment::open(path, *lsn, self.shard) {
                Ok(seg) => seg,
                // Pruned or cut meanwhile: it proves nothing.
                Err(LogError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    continue;
                }
                Err(e) => return Err(e),
            };
            proof = find_proof_in(seg.bytes(), SEGMENT_HEADER_BYTES, c.lsn)
                .map(|(o, h)| (seg.path.clone(), o, h));
        }
        let Some((path, offset, h)) = proof else {
            return Ok(());
        };
        Err(LogError::Corrupt {
            shard: self.shard,
            segment: here.path.clone(),
            offset: c.offset as u64,
            reason: format!(
                "record {} invalid ({reason}); the record with lsn {} at offset {offset} of {} was written after lsn {} had been synced",
                c.lsn,
                h.lsn,
                path.display(),
                h.synced_lsn
            ),
        })
    }

    /// The record expected at `c` is not there: normal at the tail, but
    /// corruption if the caller said it is durable.
    fn missing<T>(&self, c: Cursor, reason: &str) -> Result<Option<T>, LogError> {
        if self.limit.is_none_or(|limit| c.lsn > limit) {
            return Ok(None);
        }
        let segment = match self.segs.get(c.seg) {
            Some(s) => s.path.clone(),
            None => self.dir.join(segment_file_name(c.lsn)),
        };
        Err(LogError::Corrupt {
            shard: self.shard,
            segment,
            offset: c.offset as u64,
            reason: format!("durable record {} unreadable: {reason}", c.lsn),
        })
    }

    /// Maps `seg-{first_lsn}.log` as the next segment. False if it does not
    /// exist or its header is not written yet.
    fn map_segment(&mut self, first_lsn: Lsn) -> Result<bool, LogError> {
        let path = self.dir.join(segment_file_name(first_lsn));
        let seg = match MappedSegment::open(&path, first_lsn, self.shard) {
            Ok(seg) => seg,
            Err(LogError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return self.check_compacted(first_lsn).map(|()| false);
            }
            Err(e) => return Err(e),
        };
        match &seg.header {
            Ok(_) => {
                self.segs.push_back(seg);
                Ok(true)
            }
            Err(e) => header_hard_error(&path, self.shard, e).map_or(Ok(false), Err),
        }
    }

    /// A segment we need is missing. If the one before it is gone too, the
    /// writer pruned past this reader: report `Compacted` instead of waiting
    /// forever.
    fn check_compacted(&self, lsn: Lsn) -> Result<(), LogError> {
        let previous_gone = self.segs.back().is_none_or(|s| !s.path.exists());
        if !previous_gone {
            return Ok(());
        }
        let listing = dir::list(&self.dir)?;
        match listing.segments.first() {
            Some(&(first_available, _)) if first_available > lsn => Err(LogError::Compacted {
                requested: lsn,
                first_available,
            }),
            _ => Ok(()),
        }
    }
}

fn next_segment(c: Cursor) -> Cursor {
    Cursor {
        seg: c.seg + 1,
        offset: SEGMENT_HEADER_BYTES,
        lsn: c.lsn,
    }
}

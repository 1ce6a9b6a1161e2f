//! Recovery of the segments at open: find where valid data ends, decide
//! whether what follows is a torn tail (cut it) or corruption of durable data
//! (refuse to open), and apply the cut on disk.
//!
//! The decision rests on `synced_lsn`: every record carries the durable LSN
//! of the moment it was written. If any valid record at or after the stop
//! point says LSN `E` was already durable, then `E` was lost after a barrier:
//! corruption. Otherwise nothing after the stop point had been acknowledged.
//!
//! Nothing here assumes that a valid record in segment k+1 implies that
//! segment k is complete: the writer seals a segment without syncing it, and
//! one barrier then makes the sealed and the new segment durable together.
//! Until that barrier finishes, records in k+1 carry a `synced_lsn` below
//! the first record of k that was not yet durable, so a power loss that
//! damages k's unsynced tail is a torn tail here: the log is cut in k and
//! every later segment is deleted.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::LogError;
use super::format::{
    NotARecord, RECORD_ALIGN, RecordHeader, SEGMENT_HEADER_BYTES, SegmentHeader, decode_record,
    proves_durable,
};
use super::segment::{MappedSegment, header_hard_error, header_reason};
use super::{Lsn, TailCut, dir};

/// What recovery kept.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Retained segments in LSN order; writing continues in the last one.
    /// Empty when no segment survived (or there were none).
    pub segments: Vec<(PathBuf, SegmentHeader)>,
    /// Where the next record goes in the last retained segment.
    pub write_offset: usize,
    /// LSN of the last retained record.
    pub last_lsn: Lsn,
    /// Records up to this LSN are known to be on disk: the highest
    /// `synced_lsn` of a retained record, or the snapshot's LSN. Later ones
    /// may have been read from the page cache of a crashed writer.
    pub proven_lsn: Lsn,
    pub tail_cut: Option<TailCut>,
}

/// A byte position: segment index and offset within that segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos {
    seg: usize,
    offset: usize,
}

/// Where the walk of valid records stopped, and why.
#[derive(Debug)]
struct Stop {
    /// The first position that is not the expected record.
    at: Pos,
    /// The LSN that should have been at `at`.
    expected: Lsn,
    reason: String,
    /// Where the search for durability proofs starts (for a bad segment
    /// header: the end of the previous segment, whose rest is unexplained too).
    scan_from: Pos,
}

/// Where the log is cut: just after the last BATCH_END record before the stop.
#[derive(Debug, Clone, Copy)]
struct Cut {
    at: Pos,
    lsn: Lsn,
}

/// Recovers the segments `files` (sorted by LSN, as named) of `shard`, given
/// the LSN of the snapshot that will be loaded (0: none).
pub(crate) fn recover(
    dir: &Path,
    shard: u16,
    files: &[(Lsn, PathBuf)],
    snapshot_lsn: Lsn,
) -> Result<Recovered, LogError> {
    let Some(&(first_lsn, _)) = files.first() else {
        return Ok(Recovered {
            segments: Vec::new(),
            write_offset: SEGMENT_HEADER_BYTES,
            last_lsn: snapshot_lsn,
            proven_lsn: snapshot_lsn,
            tail_cut: None,
        });
    };
    if first_lsn > snapshot_lsn + 1 {
        return Err(LogError::Gap {
            shard,
            first_in_log: first_lsn,
            snapshot_lsn,
        });
    }
    let segs = map_all(shard, files)?;
    let (stop, batch_end, max_synced) = walk(&segs);
    let cut = cut_point(&segs, batch_end);
    check_not_durable(shard, &segs, &stop, cut, snapshot_lsn)?;
    let mut recovered = apply(dir, &segs, stop, cut)?;
    recovered.proven_lsn = max_synced.max(snapshot_lsn).min(recovered.last_lsn);
    Ok(recovered)
}

/// What a read-only look at the segments found (see [`inspect`]).
#[derive(Debug)]
pub(crate) struct Inspected {
    /// LSN of the last record of the last complete batch (what recovery would keep).
    pub last_lsn: Lsn,
    /// Records after that which recovery would cut as a torn tail, and where
    /// the walk stopped: segment, offset, reason.
    pub tail: Option<(PathBuf, u64, Lsn, String)>,
}

/// Recovery's decision without its effects: walks the segments read-only,
/// and fails with `Corrupt` (or `Gap`, or a header's hard error) exactly
/// where [`recover`] would refuse to open. Nothing on disk changes.
pub(crate) fn inspect(
    shard: u16,
    files: &[(Lsn, PathBuf)],
    snapshot_lsn: Lsn,
) -> Result<Inspected, LogError> {
    let Some(&(first_lsn, _)) = files.first() else {
        return Ok(Inspected {
            last_lsn: snapshot_lsn,
            tail: None,
        });
    };
    if first_lsn > snapshot_lsn + 1 {
        return Err(LogError::Gap {
            shard,
            first_in_log: first_lsn,
            snapshot_lsn,
        });
    }
    let segs = map_all(shard, files)?;
    let (stop, batch_end, _) = walk(&segs);
    let cut = cut_point(&segs, batch_end);
    check_not_durable(shard, &segs, &stop, cut, snapshot_lsn)?;
    let last_lsn = cut.map_or(segs[0].name_lsn - 1, |c| c.lsn);
    let records_cut = stop.expected - 1 - last_lsn;
    let clean = stop.reason == END_OF_RECORDS && records_cut == 0;
    let tail = (!clean).then(|| {
        (
            segs[stop.at.seg].path.clone(),
            stop.at.offset as u64,
            records_cut,
            stop.reason,
        )
    });
    Ok(Inspected { last_lsn, tail })
}

/// The reason `walk` gives when it ran out of records without finding damage.
const END_OF_RECORDS: &str = "end of valid records";

fn map_all(shard: u16, files: &[(Lsn, PathBuf)]) -> Result<Vec<MappedSegment>, LogError> {
    let mut segs = Vec::with_capacity(files.len());
    for (lsn, path) in files {
        let seg = MappedSegment::open(path, *lsn, shard)?;
        if let Err(e) = &seg.header
            && let Some(hard) = header_hard_error(path, shard, e)
        {
            return Err(hard);
        }
        segs.push(seg);
    }
    Ok(segs)
}

/// Walks records in order until the first position that is not the next
/// valid record. Returns that stop, the position after the last BATCH_END
/// record seen (with its LSN), and the highest `synced_lsn` of the records
/// walked.
fn walk(segs: &[MappedSegment]) -> (Stop, Option<Cut>, Lsn) {
    let mut expected = segs[0].name_lsn;
    let mut batch_end = None;
    let mut max_synced = 0;
    let mut prev_end = Pos {
        seg: 0,
        offset: SEGMENT_HEADER_BYTES,
    };
    for (i, seg) in segs.iter().enumerate() {
        let header_problem = match &seg.header {
            Err(e) => Some(header_reason(e)),
            Ok(h) if h.first_lsn != expected => Some(format!(
                "segment starts at lsn {} but the log continues at lsn {expected}",
                h.first_lsn
            )),
            Ok(_) => None,
        };
        if let Some(reason) = header_problem {
            let at = Pos { seg: i, offset: 0 };
            let stop = Stop {
                at,
                expected,
                reason,
                scan_from: prev_end,
            };
            return (stop, batch_end, max_synced);
        }
        match walk_segment(
            seg.bytes(),
            i,
            &mut expected,
            &mut batch_end,
            &mut max_synced,
        ) {
            Ok(end) => prev_end = end,
            Err(stop) => return (stop, batch_end, max_synced),
        }
    }
    let stop = Stop {
        at: prev_end,
        expected,
        reason: END_OF_RECORDS.into(),
        scan_from: prev_end,
    };
    (stop, batch_end, max_synced)
}

/// Walks the records of one segment. `Ok` carries the position where the
/// segment's written data ends (all-zero header or no room left).
fn walk_segment(
    bytes: &[u8],
    seg: usize,
    expected: &mut Lsn,
    batch_end: &mut Option<Cut>,
    max_synced: &mut Lsn,
) -> Result<Pos, Stop> {
    let mut offset = SEGMENT_HEADER_BYTES;
    loop {
        let at = Pos { seg, offset };
        let reason = match decode_record(bytes, offset) {
            Ok(d) if d.header.lsn == *expected => {
                *expected += 1;
                *max_synced = (*max_synced).max(d.header.synced_lsn);
                offset = d.next;
                if d.header.batch_end() {
                    let at = Pos { seg, offset };
                    *batch_end = Some(Cut {
                        at,
                        lsn: d.header.lsn,
                    });
                }
                continue;
            }
            Ok(d) => format!("record has lsn {}, expected lsn {expected}", d.header.lsn),
            Err(NotARecord::End) => return Ok(at),
            Err(NotARecord::Invalid(why)) => why.to_string(),
        };
        let expected = *expected;
        return Err(Stop {
            at,
            expected,
            reason,
            scan_from: at,
        });
    }
}

/// The cut point: after the last complete batch, else the start of the first
/// segment if its header is usable, else nothing is kept.
fn cut_point(segs: &[MappedSegment], batch_end: Option<Cut>) -> Option<Cut> {
    batch_end.or_else(|| {
        segs[0].header.as_ref().ok().map(|h| Cut {
            at: Pos {
                seg: 0,
                offset: SEGMENT_HEADER_BYTES,
            },
            lsn: h.first_lsn - 1,
        })
    })
}

/// Fails with `Corrupt` if anything proves that data after the cut had been
/// made durable: a later valid record whose `synced_lsn` reaches the stop, or
/// a snapshot beyond the cut.
fn check_not_durable(
    shard: u16,
    segs: &[MappedSegment],
    stop: &Stop,
    cut: Option<Cut>,
    snapshot_lsn: Lsn,
) -> Result<(), LogError> {
    let cut_lsn = cut.map_or(segs[0].name_lsn - 1, |c| c.lsn);
    let proof = if let Some((seg, offset, h)) = find_proof(segs, stop.scan_from, stop.expected) {
        format!(
            "the record with lsn {} at offset {offset} of {} was written after lsn {} had been synced",
            h.lsn,
            segs[seg].path.display(),
            h.synced_lsn
        )
    } else if cut_lsn < snapshot_lsn {
        format!("the snapshot at lsn {snapshot_lsn} was taken after those records were synced")
    } else {
        return Ok(());
    };
    Err(LogError::Corrupt {
        shard,
        segment: segs[stop.at.seg].path.clone(),
        offset: stop.at.offset as u64,
        reason: format!(
            "{} (lsn {} expected here); {proof}",
            stop.reason, stop.expected
        ),
    })
}

/// Scans every 16-byte-aligned offset from `from` to the end of the log for a
/// valid record proving that `expected` had been durable.
fn find_proof(
    segs: &[MappedSegment],
    from: Pos,
    expected: Lsn,
) -> Option<(usize, usize, RecordHeader)> {
    for (i, seg) in segs.iter().enumerate().skip(from.seg) {
        let start = if i == from.seg {
            from.offset.max(SEGMENT_HEADER_BYTES)
        } else {
            SEGMENT_HEADER_BYTES
        };
        debug_assert!(start.is_multiple_of(RECORD_ALIGN));
        if let Some((offset, h)) = find_proof_in(seg.bytes(), start, expected) {
            return Some((i, offset, h));
        }
    }
    None
}

/// A page of zeros: the unwritten rest of a segment is compared against it a
/// page at a time (one `memcmp`) instead of offset by offset.
static ZERO_PAGE: [u8; 4096] = [0; 4096];

/// [`find_proof`] within one segment's bytes, from `start` (16-byte aligned).
pub(crate) fn find_proof_in(
    bytes: &[u8],
    start: usize,
    expected: Lsn,
) -> Option<(usize, RecordHeader)> {
    let page = ZERO_PAGE.len();
    let mut offset = start;
    while offset < bytes.len() {
        if offset.is_multiple_of(page) && bytes.get(offset..offset + page) == Some(&ZERO_PAGE[..]) {
            // No record header lies wholly inside a zero page; the last
            // offset's header crosses into the next page, so check that one.
            offset += page - RECORD_ALIGN;
            continue;
        }
        if let Some(h) = proves_durable(bytes, offset, expected) {
            return Some((offset, h));
        }
        offset += RECORD_ALIGN;
    }
    None
}

/// Applies the cut on disk: zeroes the cut segment after the cut, deletes the
/// later segments, syncs. Reports what was discarded.
fn apply(
    dir: &Path,
    segs: &[MappedSegment],
    stop: Stop,
    cut: Option<Cut>,
) -> Result<Recovered, LogError> {
    let keep = cut.map_or(0, |c| c.at.seg + 1);
    let mut bytes_discarded = match cut {
        Some(c) => zero_tail(&segs[c.at.seg], c.at.offset)?,
        None => 0,
    };
    let mut deleted = Vec::new();
    for seg in &segs[keep..] {
        let start = if seg.header.is_ok() {
            SEGMENT_HEADER_BYTES
        } else {
            0
        };
        bytes_discarded += nonzero_extent(seg.bytes(), start) as u64;
        dir::remove(&seg.path)?;
        deleted.push(seg.path.clone());
    }
    if !deleted.is_empty() {
        dir::sync(dir)?;
    }
    let last_lsn = cut.map_or(segs[0].name_lsn - 1, |c| c.lsn);
    debug_assert!(last_lsn < stop.expected);
    let records_discarded = stop.expected - 1 - last_lsn;
    let tail_cut = (bytes_discarded > 0 || records_discarded > 0).then(|| TailCut {
        segment: cut.map_or(&segs[0].path, |c| &segs[c.at.seg].path).clone(),
        offset: cut.map_or(0, |c| c.at.offset as u64),
        bytes_discarded,
        records_discarded,
        segments_deleted: deleted,
        reason: stop.reason,
    });
    let segments = segs[..keep]
        .iter()
        .map(|s| match &s.header {
            Ok(h) => (s.path.clone(), *h),
            Err(e) => unreachable!(
                "retained segment {} has a bad header: {e:?}",
                s.path.display()
            ),
        })
        .collect();
    Ok(Recovered {
        segments,
        write_offset: cut.map_or(SEGMENT_HEADER_BYTES, |c| c.at.offset),
        last_lsn,
        proven_lsn: 0,
        tail_cut,
    })
}

/// Length of `bytes[start..]` up to and including its last non-zero byte.
/// Walks back a page at a time: the end of a segment is mostly zeros.
fn nonzero_extent(bytes: &[u8], start: usize) -> usize {
    let tail = bytes.get(start..).unwrap_or(&[]);
    let mut end = tail.len();
    while end > 0 {
        let from = end.saturating_sub(ZERO_PAGE.len());
        let chunk = &tail[from..end];
        if chunk != &ZERO_PAGE[..chunk.len()] {
            return chunk
                .iter()
                .rposition(|&b| b != 0)
                .map_or(end, |i| from + i + 1);
        }
        end = from;
    }
    0
}

/// Zeroes `seg` from `from` to its last non-zero byte and syncs, so that the
/// discarded bytes can never be mistaken for records again. Returns the number
/// of bytes zeroed. Writes through the file, not a mapping: this runs once.
fn zero_tail(seg: &MappedSegment, from: usize) -> Result<u64, LogError> {
    let len = nonzero_extent(seg.bytes(), from);
    if len == 0 {
        return Ok(0);
    }
    let path = &seg.path;
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| LogError::io("open", path, e))?;
    let zeros = vec![0u8; len.min(1 << 20)];
    let mut offset = from;
    while offset < from + len {
        let n = zeros.len().min(from + len - offset);
        file.write_all_at(&zeros[..n], offset as u64)
            .map_err(|e| LogError::io("pwrite", path, e))?;
        offset += n;
    }
    file.sync_data()
        .map_err(|e| LogError::io("fdatasync", path, e))?;
    debug_assert_eq!(
        nonzero_extent(seg.bytes(), from),
        0,
        "mapping sees the zeroing"
    );
    Ok(len as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::format::{encode_record, record_span};

    /// A record anywhere, even straddling a page boundary after zero pages,
    /// is found by the page-skipping scan.
    #[test]
    fn proof_scan_skips_zero_pages_but_not_records() {
        for at in [64, 4080, 4096, 8176, 12_272] {
            let mut bytes = vec![0u8; 16_384];
            let span = record_span(5);
            encode_record(&mut bytes[at..at + span], 10, 8, 1, 0, b"hello");
            let found = find_proof_in(&bytes, 64, 8).map(|(offset, h)| (offset, h.lsn));
            assert_eq!(found, Some((at, 10)), "record at {at}");
            assert_eq!(find_proof_in(&bytes, 64, 9), None);
            assert_eq!(nonzero_extent(&bytes, 64), at + 32 + 5 - 64);
            assert_eq!(nonzero_extent(&bytes, at + 40), 0);
        }
    }
}

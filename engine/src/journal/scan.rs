//! Reading one core's journal directory at recovery: which frames are
//! valid, where a torn tail starts, and what proves corruption instead.
//!
//! The rules rest on how frames are written: one write in flight, and the
//! next frame written only after the previous one's barrier (a frame in a
//! fresh segment also waits for the old segment's barrier). So:
//!
//! * frames of a segment form one run of consecutive `seq`s, each chained
//!   to the one before by `prev_crc`, then zeros;
//! * every frame carries `durable_seq`, the last frame known durable when it
//!   was written; an invalid frame followed by a valid frame of the same
//!   segment whose `durable_seq` reaches it, or by any later segment (a new
//!   segment is started only once the old one is durable), had passed a
//!   barrier: corruption, refused;
//! * an invalid frame with nothing valid after it is a torn tail: the round
//!   it held was never answered, and it is ignored.

use std::path::{Path, PathBuf};

use super::JournalError;
use super::format::{
    ALIGN, FRAME_HEADER_BYTES, FRAMES_START, FrameHeader, NotValid, SegmentHeader, decode_frame,
    entries,
};
use crate::log::Lsn;

/// One record found in a journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// The shard.
    pub shard: u16,
    /// Record kind.
    pub kind: u16,
    /// LSN in the shard's log.
    pub lsn: Lsn,
    /// Sequence number of the frame that held it.
    pub frame_seq: u64,
    /// The record payload.
    pub payload: Vec<u8>,
}

/// A torn tail: where valid frames ended, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornJournal {
    /// The segment file.
    pub segment: PathBuf,
    /// Byte offset of the first invalid frame.
    pub offset: u64,
    /// What was found there.
    pub reason: String,
}

/// What one journal directory holds.
#[derive(Debug, Default)]
pub struct DirScan {
    /// Valid frames read.
    pub frames: u64,
    /// Their records, in journal order.
    pub entries: Vec<JournalEntry>,
    /// The torn tail ignored, if any.
    pub torn: Option<TornJournal>,
    /// Segments with a valid header.
    pub segments: usize,
}

/// `seg-NNNN.jrnl` -> NNNN.
pub(crate) fn segment_index(name: &str) -> Option<usize> {
    name.strip_prefix("seg-")?
        .strip_suffix(".jrnl")?
        .parse()
        .ok()
}

struct Candidate {
    path: PathBuf,
    bytes: Vec<u8>,
    first_seq: u64,
}

/// Reads every segment of one core's journal directory. Read-only.
pub fn scan_dir(dir: &Path) -> Result<DirScan, JournalError> {
    let mut candidates = Vec::new();
    let listing = std::fs::read_dir(dir).map_err(|e| JournalError::io("read_dir", dir, e))?;
    for entry in listing {
        let entry = entry.map_err(|e| JournalError::io("read_dir", dir, e))?;
        if segment_index(&entry.file_name().to_string_lossy()).is_none() {
            continue;
        }
        let path = entry.path();
        let bytes = std::fs::read(&path).map_err(|e| JournalError::io("read", &path, e))?;
        match SegmentHeader::decode(&bytes) {
            Ok(h) => candidates.push(Candidate {
                path,
                bytes,
                first_seq: h.first_seq,
            }),
            // Free (zeroed, or being zeroed: the header goes first).
            Err(NotValid::Blank) => {}
            Err(NotValid::Damaged(reason)) => check_damaged_header(&path, &bytes, reason)?,
        }
    }
    candidates.sort_by_key(|c| c.first_seq);
    let mut scan = DirScan {
        segments: candidates.len(),
        ..DirScan::default()
    };
    let mut prev: Option<(u64, u32)> = None;
    for (i, c) in candidates.iter().enumerate() {
        if let Some((last_seq, _)) = prev
            && c.first_seq != last_seq + 1
        {
            return Err(JournalError::Corrupt {
                segment: c.path.clone(),
                offset: 0,
                reason: format!(
                    "segment starts at frame {} but the one before ended at frame {last_seq}: a segment is missing",
                    c.first_seq
                ),
            });
        }
        let end = walk_segment(c, &mut prev, &mut scan)?;
        if let Some(torn) = end {
            if let Some(later) = candidates.get(i + 1) {
                return Err(JournalError::Corrupt {
                    segment: torn.segment,
                    offset: torn.offset,
                    reason: format!(
                        "{}; yet the later segment {} was written after it, so it had been durable",
                        torn.reason,
                        later.path.display()
                    ),
                });
            }
            scan.torn = Some(torn);
            break;
        }
    }
    Ok(scan)
}

/// A segment whose header is damaged: harmless if no frame in it proves the
/// header durable (header and first frame share one barrier, so a torn first
/// write can leave either), corruption if one does (a frame whose
/// `durable_seq` reaches the segment's first frame).
fn check_damaged_header(path: &Path, bytes: &[u8], reason: &str) -> Result<(), JournalError> {
    let mut at = FRAMES_START;
    while at < bytes.len() {
        let Ok(f) = decode_frame(&bytes[at..]) else {
            break;
        };
        if f.durable_seq >= f.generation {
            return Err(JournalError::Corrupt {
                segment: path.into(),
                offset: 0,
                reason: format!(
                    "segment header {reason}, but frame {} after it was written once the header was durable",
                    f.seq
                ),
            });
        }
        at += f.span();
    }
    Ok(())
}

/// Walks the frames of one segment; returns the torn tail if it ends in one.
fn walk_segment(
    c: &Candidate,
    prev: &mut Option<(u64, u32)>,
    scan: &mut DirScan,
) -> Result<Option<TornJournal>, JournalError> {
    let mut at = FRAMES_START;
    let mut expected = c.first_seq;
    let corrupt = |offset: usize, reason: String| JournalError::Corrupt {
        segment: c.path.clone(),
        offset: offset as u64,
        reason,
    };
    while at + FRAME_HEADER_BYTES <= c.bytes.len() {
        let f = match decode_frame(&c.bytes[at..]) {
            Ok(f) => f,
            Err(NotValid::Blank) => return Ok(None),
            Err(NotValid::Damaged(reason)) => {
                if let Some(proof) = later_frame(c, at, expected) {
                    return Err(corrupt(
                        at,
                        format!(
                            "{reason} (frame {expected} expected); a frame at offset {proof} was written after it had been durable"
                        ),
                    ));
                }
                return Ok(Some(TornJournal {
                    segment: c.path.clone(),
                    offset: at as u64,
                    reason: format!("{reason} (frame {expected} expected)"),
                }));
            }
        };
        check_sequence(&f, c.first_seq, expected, *prev).map_err(|r| corrupt(at, r))?;
        let payload = &c.bytes[at + FRAME_HEADER_BYTES..at + f.span()];
        let found = entries(payload, f.entries).map_err(|r| corrupt(at, r.into()))?;
        scan.entries.extend(found.into_iter().map(|e| JournalEntry {
            shard: e.shard,
            kind: e.kind,
            lsn: e.lsn,
            frame_seq: f.seq,
            payload: e.payload.to_vec(),
        }));
        scan.frames += 1;
        *prev = Some((f.seq, f.header_crc));
        expected += 1;
        at += f.span();
    }
    Ok(None)
}

/// A valid frame must be the next of its segment and chain to the one before.
fn check_sequence(
    f: &FrameHeader,
    generation: u64,
    expected: u64,
    prev: Option<(u64, u32)>,
) -> Result<(), String> {
    if f.generation != generation {
        return Err(format!(
            "frame of segment generation {} in a segment of generation {generation}",
            f.generation
        ));
    }
    if f.seq != expected {
        return Err(format!(
            "frame {} where frame {expected} was expected",
            f.seq
        ));
    }
    if let Some((_, crc)) = prev
        && f.prev_crc != crc
    {
        return Err(format!(
            "frame {} does not chain to the frame before it",
            f.seq
        ));
    }
    Ok(())
}

/// Looks for a valid frame of this segment after `from` written once frame
/// `expected` was durable: proof that the damage at `from` is corruption.
fn later_frame(c: &Candidate, from: usize, expected: u64) -> Option<usize> {
    let mut at = from + ALIGN;
    while at + FRAME_HEADER_BYTES <= c.bytes.len() {
        if let Ok(f) = decode_frame(&c.bytes[at..])
            && f.generation == c.first_seq
            && f.durable_seq >= expected
        {
            return Some(at);
        }
        at += ALIGN;
    }
    None
}

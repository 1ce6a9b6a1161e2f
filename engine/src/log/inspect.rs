//! Read-only inspection of a shard directory, for offline verification
//! (`crate::verify`). Unlike [`Log::open`](super::Log::open) it takes no lock,
//! deletes no temporary file and cuts no torn tail: it reports what recovery
//! would find and do, and changes nothing on disk.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;

use super::error::LogError;
use super::format::{SEGMENT_HEADER_BYTES, SegmentHeader};
use super::{Lsn, dir, recovery, snapshot};

/// One snapshot file and whether it reads back intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotCheck {
    /// The LSN its name (and header) says it covers.
    pub lsn: Lsn,
    pub path: PathBuf,
    /// `None` if header, length and payload checksum are valid.
    pub problem: Option<String>,
}

/// Records after the last complete batch, which recovery would cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Where the valid records stop.
    pub segment: PathBuf,
    pub offset: u64,
    /// Records recovery would discard (valid ones of an incomplete batch).
    pub records: u64,
    /// What was found there.
    pub reason: String,
}

/// What a shard directory holds, checked without changing it.
#[derive(Debug)]
pub struct DirInspection {
    pub shard: u16,
    /// Segment files, by first LSN.
    pub segments: Vec<(Lsn, PathBuf)>,
    /// Snapshot files, oldest first.
    pub snapshots: Vec<SnapshotCheck>,
    /// Leftover temporary files (recovery deletes them; harmless).
    pub temps: Vec<PathBuf>,
    /// Segments whose size differs from the size their header records:
    /// `(path, file bytes, header bytes)`.
    pub size_mismatches: Vec<(PathBuf, u64, u64)>,
    /// The record walk: the last LSN recovery would keep and any torn tail,
    /// or the error recovery would refuse to open with (corruption naming
    /// segment and offset, a gap, a foreign or newer file).
    pub log: Result<(Lsn, Option<TornTail>), LogError>,
}

impl DirInspection {
    /// LSN of the newest snapshot that reads back intact (0: none).
    pub fn newest_valid_snapshot(&self) -> Lsn {
        self.snapshots
            .iter()
            .rev()
            .find(|s| s.problem.is_none())
            .map_or(0, |s| s.lsn)
    }
}

/// Inspects the log of `shard` in `dir` read-only. Fails only if the
/// directory cannot be listed; every other finding is in the result.
pub fn inspect_dir(dir: &Path, shard: u16) -> Result<DirInspection, LogError> {
    let listing = dir::list(dir)?;
    let mut snapshots = Vec::with_capacity(listing.snapshots.len());
    for (lsn, path) in &listing.snapshots {
        let problem = match snapshot::read(path, shard, *lsn) {
            Ok(Ok(_)) => None,
            Ok(Err(reason)) => Some(reason),
            Err(e) => Some(e.to_string()),
        };
        snapshots.push(SnapshotCheck {
            lsn: *lsn,
            path: path.clone(),
            problem,
        });
    }
    let mut size_mismatches = Vec::new();
    for (_, path) in &listing.segments {
        if let Some((file, header)) = size_mismatch(path, shard)? {
            size_mismatches.push((path.clone(), file, header));
        }
    }
    let mut inspection = DirInspection {
        shard,
        segments: listing.segments,
        snapshots,
        temps: listing.temps,
        size_mismatches,
        log: Ok((0, None)),
    };
    let snapshot_lsn = inspection.newest_valid_snapshot();
    inspection.log = recovery::inspect(shard, &inspection.segments, snapshot_lsn).map(|i| {
        let tail = i.tail.map(|(segment, offset, records, reason)| TornTail {
            segment,
            offset,
            records,
            reason,
        });
        (i.last_lsn, tail)
    });
    Ok(inspection)
}

/// The file and header sizes of a segment whose intact header records
/// another size than the file has (a truncated or extended segment).
fn size_mismatch(path: &Path, shard: u16) -> Result<Option<(u64, u64)>, LogError> {
    let file_bytes = dir::file_bytes(path)?;
    let mut head = [0u8; SEGMENT_HEADER_BYTES];
    let mut file = File::open(path).map_err(|e| LogError::io("open", path, e))?;
    if file_bytes < SEGMENT_HEADER_BYTES as u64 {
        return Ok(None);
    }
    file.read_exact(&mut head)
        .map_err(|e| LogError::io("read", path, e))?;
    Ok(SegmentHeader::decode(&head, shard)
        .ok()
        .filter(|h| h.segment_bytes != file_bytes)
        .map(|h| (file_bytes, h.segment_bytes)))
}

/// Reads and checks one snapshot file: its payload, or why it is unusable.
pub fn read_snapshot(path: &Path, shard: u16, lsn: Lsn) -> Result<AlignedVec<16>, String> {
    match snapshot::read(path, shard, lsn) {
        Ok(r) => r,
        Err(e) => Err(e.to_string()),
    }
}

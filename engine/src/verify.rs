//! Offline, read-only verification of a data directory: every record's
//! checksum and LSN order, every snapshot's checksum, snapshot/log agreement
//! (replaying the log from an older snapshot must reproduce the newer one
//! bit for bit) and the state machine's invariants after replay.
//!
//! Nothing here writes, locks, renames or deletes: it inspects through
//! [`inspect_dir`] (recovery's decision without its effects), read-only
//! mappings and [`LogReader`]. Run it on a stopped node's directory or on a
//! copy; on a running node the newest records may show as a torn tail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::ids::ShardId;
use crate::limits::SHARD_COUNT;
use crate::log::{LogError, LogReader, Lsn, inspect_dir, read_snapshot};
use crate::shard::{decode_snapshot, replay_one};
use crate::sm::ShardState;

/// What kind of damage a [`Fault`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    /// A file or directory could not be read.
    Io,
    /// A record, segment header or segment is damaged where data had been
    /// made durable (a bad checksum, a wrong LSN, a record after a hole).
    Corrupt,
    /// A segment's size differs from the size its header records.
    Truncated,
    /// The log starts after LSN 1 and no intact snapshot covers the records
    /// before it (a deleted or damaged snapshot).
    Gap,
    /// A snapshot file is damaged or does not decode to a valid state.
    BadSnapshot,
    /// Replaying the log from an older snapshot does not reproduce a newer one.
    SnapshotMismatch,
    /// A logged record does not decode or does not apply as it did when logged.
    Replay,
    /// The replayed state breaks an invariant (oversell, conservation, indexes).
    Invariant,
    /// A file belongs to another shard or a newer format.
    Foreign,
    /// The directory is not a reserva data directory.
    Layout,
}

impl FaultKind {
    /// A short stable name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Io => "io",
            FaultKind::Corrupt => "corrupt",
            FaultKind::Truncated => "truncated",
            FaultKind::Gap => "gap",
            FaultKind::BadSnapshot => "bad-snapshot",
            FaultKind::SnapshotMismatch => "snapshot-mismatch",
            FaultKind::Replay => "replay",
            FaultKind::Invariant => "invariant",
            FaultKind::Foreign => "foreign-file",
            FaultKind::Layout => "layout",
        }
    }
}

/// One problem found: which shard, which file, where in it, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The shard (`None` for the data directory itself).
    pub shard: Option<ShardId>,
    pub kind: FaultKind,
    /// The file (or directory) at fault.
    pub file: PathBuf,
    /// Byte offset in `file`, when known.
    pub offset: Option<u64>,
    /// The record's LSN, when known.
    pub lsn: Option<Lsn>,
    pub detail: String,
}

/// Something worth knowing that is not damage (recovery handles it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub shard: Option<ShardId>,
    pub file: PathBuf,
    pub offset: Option<u64>,
    pub detail: String,
}

/// What one shard holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardSummary {
    pub shard: ShardId,
    pub segments: usize,
    pub snapshots: usize,
    /// First LSN still in the segments (0: no segment).
    pub first_lsn: Lsn,
    /// Last LSN recovery would keep.
    pub last_lsn: Lsn,
    /// LSN of the snapshot replay started from (0: the empty state).
    pub replayed_from: Lsn,
    pub records_replayed: u64,
    /// Snapshots whose state the replay reproduced.
    pub snapshots_matched: usize,
    /// `ShardState::checksum` after replay (0 if replay did not finish).
    pub checksum: u64,
}

/// The result of [`verify_data_dir`].
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub data_dir: PathBuf,
    pub shards: Vec<ShardSummary>,
    pub faults: Vec<Fault>,
    pub warnings: Vec<Warning>,
}

impl VerifyReport {
    /// True if no fault was found.
    pub fn is_ok(&self) -> bool {
        self.faults.is_empty()
    }
}

/// Verifies every shard directory under `data/shards/`.
pub fn verify_data_dir(data: &Path) -> VerifyReport {
    let mut report = VerifyReport {
        data_dir: data.to_path_buf(),
        ..VerifyReport::default()
    };
    let shards_dir = data.join("shards");
    let entries = match std::fs::read_dir(&shards_dir) {
        Ok(e) => e,
        Err(e) => {
            report.faults.push(Fault {
                shard: None,
                kind: FaultKind::Layout,
                file: shards_dir,
                offset: None,
                lsn: None,
                detail: format!(
                    "cannot read the shards directory: {e} (is this a reserva data directory?)"
                ),
            });
            return report;
        }
    };
    let mut dirs = BTreeMap::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                report
                    .faults
                    .push(io_fault(None, &shards_dir, &e.to_string()));
                continue;
            }
        };
        let path = entry.path();
        let shard = entry
            .file_name()
            .to_str()
            .filter(|n| n.len() == 3 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<ShardId>().ok())
            .filter(|s| *s < SHARD_COUNT && path.is_dir());
        match shard {
            Some(s) => {
                dirs.insert(s, path);
            }
            None => report.warnings.push(Warning {
                shard: None,
                file: path,
                offset: None,
                detail: "not a shard directory (expected 000..255); ignored".into(),
            }),
        }
    }
    for (shard, dir) in dirs {
        verify_shard(&dir, shard, &mut report);
    }
    report
}

/// Verifies one shard directory, adding its summary, faults and warnings to `report`.
pub fn verify_shard(dir: &Path, shard: ShardId, report: &mut VerifyReport) {
    let mut summary = ShardSummary {
        shard,
        ..ShardSummary::default()
    };
    let inspection = match inspect_dir(dir, shard) {
        Ok(i) => i,
        Err(e) => {
            report.faults.push(log_fault(shard, dir, e));
            report.shards.push(summary);
            return;
        }
    };
    summary.segments = inspection.segments.len();
    summary.snapshots = inspection.snapshots.len();
    summary.first_lsn = inspection.segments.first().map_or(0, |(l, _)| *l);
    for temp in &inspection.temps {
        report.warnings.push(Warning {
            shard: Some(shard),
            file: temp.clone(),
            offset: None,
            detail: "leftover temporary file (the next start deletes it)".into(),
        });
    }
    for (path, file, header) in &inspection.size_mismatches {
        report.faults.push(Fault {
            shard: Some(shard),
            kind: FaultKind::Truncated,
            file: path.clone(),
            offset: Some((*file).min(*header)),
            lsn: None,
            detail: format!("segment file has {file} bytes but its header says {header}"),
        });
    }
    let mut snapshots = BTreeMap::new();
    for snap in &inspection.snapshots {
        if let Some(problem) = &snap.problem {
            report.faults.push(Fault {
                shard: Some(shard),
                kind: FaultKind::BadSnapshot,
                file: snap.path.clone(),
                offset: Some(0),
                lsn: Some(snap.lsn),
                detail: problem.clone(),
            });
            continue;
        }
        match load_state(&snap.path, shard, snap.lsn) {
            Ok(state) => {
                snapshots.insert(snap.lsn, (snap.path.clone(), state));
            }
            Err(detail) => report.faults.push(Fault {
                shard: Some(shard),
                kind: FaultKind::BadSnapshot,
                file: snap.path.clone(),
                offset: None,
                lsn: Some(snap.lsn),
                detail,
            }),
        }
    }
    let last_lsn = match inspection.log {
        Ok((last, tail)) => {
            if let Some(t) = tail {
                report.warnings.push(Warning {
                    shard: Some(shard),
                    file: t.segment,
                    offset: Some(t.offset),
                    detail: format!(
                        "torn tail after lsn {last}: {} ({} records of an incomplete batch); the next start cuts it",
                        t.reason, t.records
                    ),
                });
            }
            last
        }
        Err(e) => {
            report.faults.push(log_fault(shard, dir, e));
            report.shards.push(summary);
            return;
        }
    };
    summary.last_lsn = last_lsn;
    replay(
        dir,
        shard,
        &inspection.segments,
        snapshots,
        &mut summary,
        report,
    );
    report.shards.push(summary);
}

/// Replays the log from the oldest snapshot it continues (or from the empty
/// state), comparing every newer snapshot on the way and checking the
/// invariants at the end.
fn replay(
    dir: &Path,
    shard: ShardId,
    segments: &[(Lsn, PathBuf)],
    mut snapshots: BTreeMap<Lsn, (PathBuf, ShardState)>,
    summary: &mut ShardSummary,
    report: &mut VerifyReport,
) {
    let first = summary.first_lsn;
    let last = summary.last_lsn;
    let fault = |kind, lsn: Lsn, detail: String| Fault {
        shard: Some(shard),
        kind,
        file: segment_of(segments, lsn).unwrap_or_else(|| dir.to_path_buf()),
        offset: None,
        lsn: Some(lsn),
        detail,
    };
    // Start from the empty state when the log begins at LSN 1, else from the
    // oldest snapshot the log continues.
    let base = if first <= 1 {
        0
    } else {
        match snapshots.range(first - 1..).next() {
            Some((lsn, _)) => *lsn,
            // `inspect_dir` already reported the gap.
            None => return,
        }
    };
    let mut state = match snapshots.remove(&base) {
        Some((_, s)) => {
            summary.snapshots_matched += 1;
            s
        }
        None => ShardState::new(shard),
    };
    summary.replayed_from = base;
    let expected: BTreeMap<Lsn, (PathBuf, u64)> = snapshots
        .into_iter()
        .filter(|(lsn, _)| *lsn > base)
        .map(|(lsn, (path, s))| (lsn, (path, s.checksum())))
        .collect();
    if last > base {
        let mut reader = match LogReader::open(dir, shard, base + 1) {
            Ok(r) => r,
            Err(e) => {
                report.faults.push(log_fault(shard, dir, e));
                return;
            }
        };
        reader.set_limit(last);
        loop {
            let record = match reader.next() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    report.faults.push(log_fault(shard, dir, e));
                    return;
                }
            };
            let lsn = record.lsn;
            if let Err(e) = replay_one(&mut state, &record) {
                report
                    .faults
                    .push(fault(FaultKind::Replay, lsn, e.to_string()));
                return;
            }
            summary.records_replayed += 1;
            if let Some((path, checksum)) = expected.get(&lsn) {
                if state.checksum() == *checksum {
                    summary.snapshots_matched += 1;
                } else {
                    report.faults.push(Fault {
                        shard: Some(shard),
                        kind: FaultKind::SnapshotMismatch,
                        file: path.clone(),
                        offset: None,
                        lsn: Some(lsn),
                        detail: format!(
                            "replaying the log to lsn {lsn} gives checksum {:016x}, the snapshot holds {checksum:016x}",
                            state.checksum()
                        ),
                    });
                }
            }
        }
        if summary.records_replayed != last - base {
            let at = base + summary.records_replayed + 1;
            report.faults.push(fault(
                FaultKind::Corrupt,
                at,
                format!("the log ends before lsn {last}; record {at} is missing"),
            ));
            return;
        }
    }
    if let Err(why) = state.check_invariants() {
        report.faults.push(fault(
            FaultKind::Invariant,
            last,
            format!("after replay to lsn {last}: {why}"),
        ));
        return;
    }
    summary.checksum = state.checksum();
}

/// Reads, decodes and checks one snapshot.
fn load_state(path: &Path, shard: ShardId, lsn: Lsn) -> Result<ShardState, String> {
    let payload = read_snapshot(path, shard, lsn)?;
    decode_snapshot(shard, lsn, &payload).map_err(|e| e.to_string())
}

/// The segment that holds `lsn`.
fn segment_of(segments: &[(Lsn, PathBuf)], lsn: Lsn) -> Option<PathBuf> {
    segments
        .iter()
        .rev()
        .find(|(first, _)| *first <= lsn)
        .map(|(_, p)| p.clone())
}

fn io_fault(shard: Option<ShardId>, file: &Path, detail: &str) -> Fault {
    Fault {
        shard,
        kind: FaultKind::Io,
        file: file.to_path_buf(),
        offset: None,
        lsn: None,
        detail: detail.to_string(),
    }
}

/// A log error as a fault, keeping the file and offset it names.
fn log_fault(shard: ShardId, dir: &Path, e: LogError) -> Fault {
    let detail = e.to_string();
    let (kind, file, offset) = match e {
        LogError::Corrupt {
            segment, offset, ..
        } => (FaultKind::Corrupt, segment, Some(offset)),
        LogError::Gap { .. } => (FaultKind::Gap, dir.to_path_buf(), None),
        LogError::WrongShard { path, .. } | LogError::UnsupportedVersion { path, .. } => {
            (FaultKind::Foreign, path, Some(0))
        }
        LogError::Io { path, .. } => (FaultKind::Io, path, None),
        _ => (FaultKind::Corrupt, dir.to_path_buf(), None),
    };
    Fault {
        shard: Some(shard),
        kind,
        file,
        offset,
        lsn: None,
        detail,
    }
}

//! Offline, read-only verification of a data directory: every record's
//! checksum and LSN order, every snapshot's checksum, snapshot/log agreement
//! (replaying the log from an older snapshot must reproduce the newer one
//! bit for bit), the commit journals, and the state machine's invariants
//! after replay.
//!
//! The commit journals (`DATA/journal/core-NNN/`) of a stopped node may hold
//! records its shard logs lack (a shard log lags its journal until a
//! checkpoint, and the next start appends the rest). For every journal this
//! reports corruption the next start would refuse, a torn last frame it
//! would ignore, and for every shard: journal records at or below the log's
//! end must equal the log's records, the ones beyond it must continue the
//! log without a gap, and they are replayed after the log's records, so the
//! invariants are checked on the state the next start would recover.
//!
//! Nothing here writes, locks, renames or deletes: it inspects through
//! [`inspect_dir`] (recovery's decision without its effects), read-only
//! mappings, [`LogReader`] and [`scan_dir`] (which only reads). Run it on a
//! stopped node's directory or on a copy; on a running node the newest
//! records may show as a torn tail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::ids::ShardId;
use crate::journal::{JOURNAL_DIR_NAME, JournalEntry, JournalError, TornJournal, scan_dir};
use crate::limits::SHARD_COUNT;
use crate::log::{LogError, LogReader, Lsn, RecordRef, inspect_dir, read_snapshot};
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
    /// A commit journal's record differs from the shard log's record with
    /// the same LSN, or two journals hold different records with one LSN.
    JournalMismatch,
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
            FaultKind::JournalMismatch => "journal-mismatch",
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
    /// Records for this shard found in the commit journals (duplicates and
    /// records the log also holds included).
    pub journal_records: u64,
    /// Of them, the records past the log's last LSN: what the next start
    /// appends to the log (replayed here after the log's records).
    pub journal_pending: u64,
    /// `ShardState::checksum` after replaying the log and then the journal
    /// records past it: the state the next start recovers (0 if replay did
    /// not finish).
    pub checksum: u64,
}

/// What one core's commit journal directory holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalSummary {
    /// The directory (`DATA/journal/core-NNN`).
    pub dir: PathBuf,
    /// Segments with a valid header.
    pub segments: usize,
    /// Valid frames.
    pub frames: u64,
    /// Records in them.
    pub records: u64,
    /// A torn last frame (a round that was never answered; the next start
    /// ignores it). Also listed as a warning.
    pub torn: Option<TornJournal>,
    /// False if the journal could not be read (a fault says why).
    pub readable: bool,
}

/// The result of [`verify_data_dir`].
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub data_dir: PathBuf,
    pub shards: Vec<ShardSummary>,
    /// Every core journal directory found, by name.
    pub journals: Vec<JournalSummary>,
    pub faults: Vec<Fault>,
    pub warnings: Vec<Warning>,
}

impl VerifyReport {
    /// True if no fault was found.
    pub fn is_ok(&self) -> bool {
        self.faults.is_empty()
    }

    /// Journal records the next start would append to shard logs, in all.
    pub fn journal_pending(&self) -> u64 {
        self.shards.iter().map(|s| s.journal_pending).sum()
    }
}

/// One journal record and the journal (index in `VerifyReport::journals`)
/// that holds it.
struct Found {
    journal: usize,
    entry: JournalEntry,
}

/// Every journal's records, by shard.
struct Journals {
    by_shard: BTreeMap<ShardId, Vec<Found>>,
    /// Whether every journal could be read (else a missing record may sit
    /// in the unreadable one, and gaps are not reported).
    complete: bool,
}

impl Journals {
    fn none() -> Self {
        Journals {
            by_shard: BTreeMap::new(),
            complete: true,
        }
    }
}

/// Verifies every shard directory under `data/shards/` and every core's
/// commit journal under `data/journal/`, against each other.
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
    let mut journals = read_journals(data, &mut report);
    // A shard only the journals know: the next start creates its directory.
    for &shard in journals.by_shard.keys() {
        dirs.entry(shard)
            .or_insert_with(|| shards_dir.join(format!("{shard:03}")));
    }
    for (shard, dir) in dirs {
        let found = journals.by_shard.remove(&shard).unwrap_or_default();
        check_shard(&dir, shard, &found, journals.complete, &mut report);
    }
    report
}

/// Reads every core journal under `data/journal/` (none is fine: a node
/// that never started, or one that stopped before its first round).
fn read_journals(data: &Path, report: &mut VerifyReport) -> Journals {
    let root = data.join(JOURNAL_DIR_NAME);
    let mut journals = Journals::none();
    let listing = match std::fs::read_dir(&root) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return journals,
        Err(e) => {
            report.faults.push(io_fault(
                None,
                &root,
                &format!("cannot read the journal directory: {e}"),
            ));
            journals.complete = false;
            return journals;
        }
    };
    let mut dirs = Vec::new();
    for entry in listing {
        match entry {
            Ok(e) if e.file_name().to_string_lossy().starts_with("core-") && e.path().is_dir() => {
                dirs.push(e.path());
            }
            Ok(e) => report.warnings.push(Warning {
                shard: None,
                file: e.path(),
                offset: None,
                detail: "not a core journal directory (expected core-NNN); ignored".into(),
            }),
            Err(e) => {
                report.faults.push(io_fault(None, &root, &e.to_string()));
                journals.complete = false;
            }
        }
    }
    dirs.sort();
    for dir in dirs {
        let index = report.journals.len();
        let mut summary = JournalSummary {
            dir: dir.clone(),
            ..JournalSummary::default()
        };
        match scan_dir(&dir) {
            Ok(scan) => {
                summary.segments = scan.segments;
                summary.frames = scan.frames;
                summary.records = scan.entries.len() as u64;
                summary.readable = true;
                if let Some(torn) = &scan.torn {
                    report.warnings.push(Warning {
                        shard: None,
                        file: torn.segment.clone(),
                        offset: Some(torn.offset),
                        detail: format!(
                            "journal: torn last frame ({}): a round that was never answered; the next start ignores it",
                            torn.reason
                        ),
                    });
                }
                summary.torn = scan.torn;
                for entry in scan.entries {
                    journals
                        .by_shard
                        .entry(entry.shard)
                        .or_default()
                        .push(Found {
                            journal: index,
                            entry,
                        });
                }
            }
            Err(e) => {
                journals.complete = false;
                report.faults.push(journal_fault(&dir, e));
            }
        }
        report.journals.push(summary);
    }
    if !journals.complete {
        report.warnings.push(Warning {
            shard: None,
            file: root,
            offset: None,
            detail: "a journal could not be read: shards were not checked for records missing between their logs and the journals".into(),
        });
    }
    journals
}

/// Verifies one shard directory on its own (its records in the commit
/// journals not considered), adding its summary, faults and warnings to
/// `report`.
pub fn verify_shard(dir: &Path, shard: ShardId, report: &mut VerifyReport) {
    check_shard(dir, shard, &[], true, report);
}

/// Verifies one shard directory and the journal records for it.
fn check_shard(
    dir: &Path,
    shard: ShardId,
    journal: &[Found],
    journals_complete: bool,
    report: &mut VerifyReport,
) {
    let mut summary = ShardSummary {
        shard,
        journal_records: journal.len() as u64,
        ..ShardSummary::default()
    };
    if !journal.is_empty() && !dir.exists() {
        report.warnings.push(Warning {
            shard: Some(shard),
            file: dir.to_path_buf(),
            offset: None,
            detail: "no shard directory, but the journals hold records for the shard; the next start creates it".into(),
        });
        let Some(tail) = journal_tail(
            dir,
            shard,
            &[],
            0,
            journal,
            journals_complete,
            &mut summary,
            report,
        ) else {
            report.shards.push(summary);
            return;
        };
        replay(
            dir,
            shard,
            &[],
            BTreeMap::new(),
            &tail,
            &mut summary,
            report,
        );
        report.shards.push(summary);
        return;
    }
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
    let Some(tail) = journal_tail(
        dir,
        shard,
        &inspection.segments,
        last_lsn,
        journal,
        journals_complete,
        &mut summary,
        report,
    ) else {
        report.shards.push(summary);
        return;
    };
    replay(
        dir,
        shard,
        &inspection.segments,
        snapshots,
        &tail,
        &mut summary,
        report,
    );
    report.shards.push(summary);
}

/// Checks the journal records of one shard against its log, which ends at
/// `last` (after any torn tail the next start cuts): records with one LSN
/// agree across journals, records the log also holds equal the log's, and
/// the records past `last` continue it without a gap. Returns those (in
/// LSN order) for replay, or `None` after a fault.
#[allow(clippy::too_many_arguments)]
fn journal_tail<'a>(
    dir: &Path,
    shard: ShardId,
    segments: &[(Lsn, PathBuf)],
    last: Lsn,
    journal: &'a [Found],
    journals_complete: bool,
    summary: &mut ShardSummary,
    report: &mut VerifyReport,
) -> Option<Vec<&'a Found>> {
    if journal.is_empty() {
        return Some(Vec::new());
    }
    let journal_dir = |f: &Found| {
        report
            .journals
            .get(f.journal)
            .map_or_else(|| dir.to_path_buf(), |j| j.dir.clone())
    };
    let mut by_lsn: Vec<&Found> = journal.iter().collect();
    by_lsn.sort_by_key(|f| f.entry.lsn);
    let mut faults = Vec::new();
    for pair in by_lsn.windows(2) {
        let (a, b) = (&pair[0].entry, &pair[1].entry);
        if a.lsn == b.lsn && (a.kind != b.kind || a.payload != b.payload) {
            faults.push(Fault {
                shard: Some(shard),
                kind: FaultKind::JournalMismatch,
                file: journal_dir(pair[1]),
                offset: None,
                lsn: Some(a.lsn),
                detail: format!(
                    "two different records with lsn {} in the journals (frame {} of {}, frame {} of {})",
                    a.lsn,
                    a.frame_seq,
                    journal_dir(pair[0]).display(),
                    b.frame_seq,
                    journal_dir(pair[1]).display()
                ),
            });
        }
    }
    by_lsn.dedup_by_key(|f| f.entry.lsn);
    faults.extend(compare_with_log(
        dir,
        shard,
        segments,
        last,
        &by_lsn,
        &journal_dir,
    ));
    let tail: Vec<&Found> = by_lsn.into_iter().filter(|f| f.entry.lsn > last).collect();
    let contiguous = tail
        .iter()
        .enumerate()
        .take_while(|(i, f)| f.entry.lsn == last + 1 + *i as u64)
        .count();
    summary.journal_pending = contiguous as u64;
    if let Some(next) = tail.get(contiguous)
        && journals_complete
    {
        let expected = last + 1 + contiguous as u64;
        faults.push(Fault {
            shard: Some(shard),
            kind: FaultKind::Gap,
            file: journal_dir(next),
            offset: None,
            lsn: Some(next.entry.lsn),
            detail: format!(
                "shard {shard}: its log ends at lsn {} but the journal continues at lsn {} (frame {}); records in between are missing and the next start refuses",
                expected - 1,
                next.entry.lsn,
                next.entry.frame_seq
            ),
        });
    }
    let ok = faults.is_empty() && contiguous == tail.len();
    report.faults.extend(faults);
    ok.then_some(tail)
}

/// Compares the journal records (sorted by LSN, one per LSN) that the log
/// still holds (from its first segment to `last`) with the log's records.
fn compare_with_log(
    dir: &Path,
    shard: ShardId,
    segments: &[(Lsn, PathBuf)],
    last: Lsn,
    journal: &[&Found],
    journal_dir: &dyn Fn(&Found) -> PathBuf,
) -> Vec<Fault> {
    let first = segments.first().map_or(0, |(l, _)| *l);
    let held: BTreeMap<Lsn, &Found> = journal
        .iter()
        .filter(|f| first > 0 && f.entry.lsn >= first && f.entry.lsn <= last)
        .map(|f| (f.entry.lsn, *f))
        .collect();
    let (Some((&from, _)), Some((&to, _))) = (held.first_key_value(), held.last_key_value()) else {
        return Vec::new();
    };
    let mut faults = Vec::new();
    let mut reader = match LogReader::open(dir, shard, from) {
        Ok(r) => r,
        Err(e) => return vec![log_fault(shard, dir, e)],
    };
    reader.set_limit(to);
    loop {
        let record = match reader.next() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                faults.push(log_fault(shard, dir, e));
                break;
            }
        };
        let Some(found) = held.get(&record.lsn) else {
            continue;
        };
        let j = &found.entry;
        if j.kind != record.kind || j.payload != record.payload {
            faults.push(Fault {
                shard: Some(shard),
                kind: FaultKind::JournalMismatch,
                file: segment_of(segments, record.lsn).unwrap_or_else(|| dir.to_path_buf()),
                offset: None,
                lsn: Some(record.lsn),
                detail: format!(
                    "the log's record {} (kind {}, {} bytes) differs from the journal's (kind {}, {} bytes, frame {} of {})",
                    record.lsn,
                    record.kind,
                    record.payload.len(),
                    j.kind,
                    j.payload.len(),
                    j.frame_seq,
                    journal_dir(found).display()
                ),
            });
        }
    }
    faults
}

/// Replays the log from the oldest snapshot it continues (or from the empty
/// state), then the journal records past the log (`journal`, continuing it),
/// comparing every newer snapshot on the way and checking the invariants at
/// the end.
fn replay(
    dir: &Path,
    shard: ShardId,
    segments: &[(Lsn, PathBuf)],
    mut snapshots: BTreeMap<Lsn, (PathBuf, ShardState)>,
    journal: &[&Found],
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
    let mut end = last;
    for found in journal {
        let e = &found.entry;
        let file = report
            .journals
            .get(found.journal)
            .map_or_else(|| dir.to_path_buf(), |j| j.dir.clone());
        let record = RecordRef {
            lsn: e.lsn,
            kind: e.kind,
            payload: &e.payload,
        };
        if let Err(err) = replay_one(&mut state, &record) {
            report.faults.push(Fault {
                shard: Some(shard),
                kind: FaultKind::Replay,
                file,
                offset: None,
                lsn: Some(e.lsn),
                detail: format!("journal record (frame {}): {err}", e.frame_seq),
            });
            return;
        }
        end = e.lsn;
        let Some((path, checksum)) = expected.get(&e.lsn) else {
            continue;
        };
        if state.checksum() == *checksum {
            summary.snapshots_matched += 1;
        } else {
            report.faults.push(Fault {
                shard: Some(shard),
                kind: FaultKind::SnapshotMismatch,
                file: path.clone(),
                offset: None,
                lsn: Some(e.lsn),
                detail: format!(
                    "replaying the log and the journal to lsn {} gives checksum {:016x}, the snapshot holds {checksum:016x}",
                    e.lsn,
                    state.checksum()
                ),
            });
        }
    }
    if let Err(why) = state.check_invariants() {
        report.faults.push(fault(
            FaultKind::Invariant,
            end,
            format!("after replay to lsn {end}: {why}"),
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

/// A journal that cannot be read as a fault, keeping the file and offset.
fn journal_fault(dir: &Path, e: JournalError) -> Fault {
    let detail = e.to_string();
    let (kind, file, offset) = match e {
        JournalError::Corrupt {
            segment, offset, ..
        } => (FaultKind::Corrupt, segment, Some(offset)),
        JournalError::Io { path, .. } => (FaultKind::Io, path, None),
        _ => (FaultKind::Corrupt, dir.to_path_buf(), None),
    };
    Fault {
        shard: None,
        kind,
        file,
        offset,
        lsn: None,
        detail,
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

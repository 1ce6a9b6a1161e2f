//! Recovery: every core's journal merged into the shards' own logs.
//!
//! Each shard's log is recovered on its own first (`Log::open`: torn tail
//! cut, corruption refused). The journals then hold, for every shard, every
//! record beyond what its log made durable (a journal segment is reused only
//! once every shard with records in it has its own log durable past them),
//! so the records with an LSN past the log's end are appended in order and
//! made durable. A journal whose next record for a shard does not continue
//! that shard's log is refused (`Gap`). Only when every shard's log is
//! durable are the journals removed; a crash before that repeats recovery,
//! which skips what a log already holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::scan::{JournalEntry, TornJournal, scan_dir};
use super::{JournalError, sync_dir};
use crate::log::limits::BATCH_RECORDS_MAX;
use crate::log::{Log, LogConfig};

/// What [`recover`] found and did.
#[derive(Debug, Default)]
pub struct JournalRecovery {
    /// Core journal directories read.
    pub journals: usize,
    /// Valid frames read.
    pub frames: u64,
    /// Records found.
    pub entries: u64,
    /// Records appended to shard logs (the rest were there already).
    pub applied: u64,
    /// Shards that received records.
    pub shards: Vec<u16>,
    /// Torn tails ignored (rounds that were never answered).
    pub torn: Vec<TornJournal>,
}

/// Recovers every journal under `root` (`DATA/journal`) into the shard logs
/// (`shard_dir(shard)`), then removes the journals. Blocks.
pub fn recover(
    root: &Path,
    shard_dir: &dyn Fn(u16) -> PathBuf,
    log_config: &LogConfig,
) -> Result<JournalRecovery, JournalError> {
    let mut report = JournalRecovery::default();
    let dirs = journal_dirs(root)?;
    let mut by_shard: BTreeMap<u16, Vec<JournalEntry>> = BTreeMap::new();
    for dir in &dirs {
        let scan = scan_dir(dir)?;
        report.journals += 1;
        report.frames += scan.frames;
        report.entries += scan.entries.len() as u64;
        if let Some(torn) = scan.torn {
            tracing::warn!(segment = %torn.segment.display(), offset = torn.offset, reason = %torn.reason, "journal: ignored a torn tail (a round that was never answered)");
            report.torn.push(torn);
        }
        for e in scan.entries {
            by_shard.entry(e.shard).or_default().push(e);
        }
    }
    for (shard, mut entries) in by_shard {
        entries.sort_by_key(|e| e.lsn);
        let applied = apply_to_log(&shard_dir(shard), shard, log_config, &entries)?;
        if applied > 0 {
            report.applied += applied;
            report.shards.push(shard);
        }
    }
    for dir in &dirs {
        std::fs::remove_dir_all(dir).map_err(|e| JournalError::io("rmdir", dir, e))?;
    }
    if !dirs.is_empty() {
        sync_dir(root)?;
    }
    Ok(report)
}

/// The core journal directories under `root` (none if it does not exist).
fn journal_dirs(root: &Path) -> Result<Vec<PathBuf>, JournalError> {
    let listing = match std::fs::read_dir(root) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(JournalError::io("read_dir", root, e)),
    };
    let mut dirs = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|e| JournalError::io("read_dir", root, e))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("core-") && entry.path().is_dir() {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Appends the entries past the log's end (in LSN order, without a gap) and
/// makes them durable; returns how many were appended.
fn apply_to_log(
    dir: &Path,
    shard: u16,
    log_config: &LogConfig,
    entries: &[JournalEntry],
) -> Result<u64, JournalError> {
    for pair in entries.windows(2) {
        if pair[0].lsn == pair[1].lsn && pair[0] != pair[1] {
            return Err(JournalError::Corrupt {
                segment: dir.into(),
                offset: 0,
                reason: format!(
                    "shard {shard}: two different records with lsn {} in the journals",
                    pair[0].lsn
                ),
            });
        }
    }
    let (mut log, _) = Log::open(dir, shard, log_config.clone())?;
    let last = log.last_lsn();
    let mut next: Vec<&JournalEntry> = entries.iter().filter(|e| e.lsn > last).collect();
    next.dedup_by_key(|e| e.lsn);
    let Some(first) = next.first() else {
        return Ok(0);
    };
    for (i, e) in next.iter().enumerate() {
        let want = last + 1 + i as u64;
        if e.lsn != want {
            return Err(JournalError::Gap {
                shard,
                log_last: want - 1,
                journal_first: if i == 0 { first.lsn } else { e.lsn },
            });
        }
    }
    // One log batch per journal frame, as the records were committed.
    let mut at = 0;
    while at < next.len() {
        let seq = next[at].frame_seq;
        let end = next[at..]
            .iter()
            .position(|e| e.frame_seq != seq)
            .map_or(next.len(), |n| at + n)
            .min(at + BATCH_RECORDS_MAX);
        log.append_batch(next[at..end].iter().map(|e| (e.kind, e.payload.as_slice())))?;
        at = end;
    }
    log.sync()?;
    Ok(next.len() as u64)
}

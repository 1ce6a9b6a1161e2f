//! Snapshots: atomic write, pruning of snapshots and segments, fallback to an
//! older snapshot, compaction as seen by readers.

#[path = "log_helpers.rs"]
mod helpers;

use std::path::Path;

use helpers::*;
use reserva_engine::log::{Log, LogError, LogReader, Lsn};

/// Appends `batches` synced batches of ~6 KiB.
fn fill(log: &mut Log, batches: usize) -> Vec<Rec> {
    let mut recs = Vec::new();
    for _ in 0..batches {
        recs.extend(append(log, &[3000, 3000]));
        log.sync().unwrap();
    }
    recs
}

fn state_at(lsn: Lsn) -> Vec<u8> {
    format!("state as of {lsn}").into_bytes()
}

/// The LSN range of each segment on disk, from an independent parse.
fn segment_ranges(dir: &Path) -> Vec<(Lsn, Lsn)> {
    let placed = placements(dir);
    segments(dir)
        .iter()
        .map(|s| {
            let lsns: Vec<Lsn> = placed
                .iter()
                .filter(|p| &p.segment == s)
                .map(|p| p.lsn)
                .collect();
            (lsns[0], *lsns.last().unwrap())
        })
        .collect()
}

#[test]
fn log_snapshots_prune_old_segments_and_reopen_from_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path());
    let mut recs = fill(&mut log, 40);
    let a = log.durable_lsn();
    log.write_snapshot(a, &state_at(a)).unwrap();
    recs.extend(fill(&mut log, 40));
    let b = log.durable_lsn();
    log.write_snapshot(b, &state_at(b)).unwrap();
    // Two snapshots kept: segments are pruned up to the older one only.
    let ranges = segment_ranges(dir.path());
    assert!(
        ranges[0].0 <= a + 1,
        "records after {a} are still needed: {ranges:?}"
    );
    assert!(ranges[0].0 > 1, "segments wholly before {a} are gone");
    recs.extend(fill(&mut log, 40));
    let c = log.durable_lsn();
    log.write_snapshot(c, &state_at(c)).unwrap();
    assert_eq!(snapshots(dir.path()).len(), 2);
    let first = segment_ranges(dir.path())[0].0;
    assert!(first > a + 1 && first <= b + 1);
    let tail = fill(&mut log, 3);
    recs.extend(tail.clone());
    let disk = log.disk_bytes();
    assert!(disk >= 2 * SEGMENT_BYTES, "{disk}");
    drop(log);

    let (log, recovery) = open(dir.path());
    let snapshot = recovery.snapshot.unwrap();
    assert_eq!(snapshot.lsn, c);
    assert_eq!(snapshot.payload.as_slice(), state_at(c).as_slice());
    assert_eq!(snapshot.payload.as_ptr() as usize % 16, 0);
    assert_eq!(recovery.first_lsn_available, first);
    assert_eq!(read_all(&log, c + 1), tail);
    assert_eq!(read_all(&log, first), recs[first as usize - 1..].to_vec());
    let err = log.read_from(1).unwrap_err();
    assert!(
        matches!(err, LogError::Compacted { requested: 1, first_available } if first_available == first),
        "{err}"
    );
    let err = LogReader::open(dir.path(), 7, first - 1).unwrap_err();
    assert!(matches!(err, LogError::Compacted { .. }), "{err}");
}

#[test]
fn log_damaged_newest_snapshot_falls_back_to_the_older_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path());
    let mut recs = fill(&mut log, 30);
    let a = log.durable_lsn();
    log.write_snapshot(a, &state_at(a)).unwrap();
    recs.extend(fill(&mut log, 30));
    let b = log.durable_lsn();
    log.write_snapshot(b, &state_at(b)).unwrap();
    recs.extend(fill(&mut log, 5));
    drop(log);
    let newest = snapshots(dir.path()).pop().unwrap();
    flip_bit(&newest, 64 + 3, 2); // A payload byte.

    let (log, recovery) = open(dir.path());
    let snapshot = recovery.snapshot.unwrap();
    assert_eq!(snapshot.lsn, a);
    assert_eq!(snapshot.payload.as_slice(), state_at(a).as_slice());
    assert_eq!(read_all(&log, a + 1), recs[a as usize..].to_vec());
}

#[test]
fn log_no_usable_snapshot_for_pruned_segments_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path());
    for _ in 0..3 {
        fill(&mut log, 30);
        let lsn = log.durable_lsn();
        log.write_snapshot(lsn, &state_at(lsn)).unwrap();
    }
    drop(log);
    for snap in snapshots(dir.path()) {
        flip_bit(&snap, 10, 0); // Header damage.
    }
    let err = Log::open(dir.path(), 7, config()).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Gap {
                snapshot_lsn: 0,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn log_ending_before_the_snapshot_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path());
    fill(&mut log, 4);
    let lsn = log.durable_lsn();
    log.write_snapshot(lsn, &state_at(lsn)).unwrap();
    drop(log);
    // Lose the last synced batch: no later record proves it was durable, but
    // the snapshot does.
    let placed = placements(dir.path());
    let first_of_last_batch = &placed[placed.len() - 2];
    zero_from(&first_of_last_batch.segment, first_of_last_batch.offset);
    let err = Log::open(dir.path(), 7, config()).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("snapshot"), "{err}");
}

#[test]
fn log_snapshot_lsn_must_be_durable_and_not_go_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path());
    fill(&mut log, 2);
    append(&mut log, &[1]);
    let durable = log.durable_lsn();
    let err = log.write_snapshot(durable + 1, b"x").unwrap_err();
    assert!(matches!(err, LogError::SnapshotLsn { .. }), "{err}");
    log.write_snapshot(durable, b"x").unwrap();
    let err = log.write_snapshot(durable - 1, b"x").unwrap_err();
    assert!(matches!(err, LogError::SnapshotLsn { .. }), "{err}");
    // Same LSN again replaces the file.
    log.write_snapshot(durable, b"y").unwrap();
    drop(log);
    let (_, recovery) = open(dir.path());
    assert_eq!(recovery.snapshot.unwrap().payload.as_slice(), b"y");
}

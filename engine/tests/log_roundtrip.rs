//! Appending, reopening and reading back; the change stream.

#[path = "log_helpers.rs"]
mod helpers;

use helpers::*;
use reserva_engine::log::{Log, LogError, LogReader};

#[test]
fn log_round_trip_across_rollovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(1);
    let mut expected = Vec::new();
    {
        let (mut log, recovery) = open(dir.path());
        assert_eq!(recovery.last_lsn, 0);
        assert!(recovery.snapshot.is_none() && recovery.tail_cut.is_none());
        for i in 0..200 {
            // Mostly small records, sometimes one close to the segment limit.
            let mut lens = random_lens(&mut rng, 2000);
            if i % 37 == 0 {
                lens.push(log.record_payload_bytes_max());
            }
            expected.extend(append(&mut log, &lens));
            // Rollovers find the next segment prepared by a job, or create
            // it themselves.
            if rng.range(0, 2) == 0 {
                prepare(&mut log);
            }
            if rng.range(0, 3) == 0 {
                assert_eq!(log.sync().unwrap(), log.last_lsn());
            }
        }
        log.sync().unwrap();
        assert_eq!(read_all(&log, 1), expected);
    }
    assert!(
        segments(dir.path()).len() >= 5,
        "test must cross several rollovers"
    );
    let (log, recovery) = open(dir.path());
    assert!(recovery.tail_cut.is_none());
    assert_eq!(recovery.last_lsn, expected.len() as u64);
    assert_eq!(recovery.first_lsn_available, 1);
    let read = read_all(&log, 1);
    assert_eq!(read, expected);
    assert!(read.iter().enumerate().all(|(i, r)| r.lsn == i as u64 + 1));
    // Reading from the middle starts exactly there.
    assert_eq!(read_all(&log, 500), expected[499..].to_vec());
}

#[test]
fn log_appends_continue_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    for round in 0..4 {
        let (mut log, recovery) = open(dir.path());
        assert_eq!(recovery.last_lsn, expected.len() as u64, "round {round}");
        for _ in 0..30 {
            expected.extend(append(&mut log, &[100, 3000, 0]));
        }
        log.sync().unwrap();
    }
    let (log, _) = open(dir.path());
    assert_eq!(read_all(&log, 1), expected);
}

#[test]
fn log_bad_batches_leave_the_log_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path());
    append(&mut log, &[10]);
    let max = log.record_payload_bytes_max();
    assert!(max < 64 << 10, "limit shrinks to fit a 64 KiB segment");
    let big = vec![1u8; max + 1];
    let small = [1u8; 4];
    let err = log
        .append_batch([(1, &small[..]), (1, &big[..])].into_iter())
        .unwrap_err();
    assert!(matches!(err, LogError::PayloadTooLarge { len, max: m } if len == max + 1 && m == max));
    assert!(matches!(
        log.append_batch(std::iter::empty()),
        Err(LogError::EmptyBatch)
    ));
    assert_eq!(log.last_lsn(), 1);
    append(&mut log, &[max]);
    log.sync().unwrap();
    assert_eq!(read_all(&log, 1).len(), 2);
}

#[test]
fn log_read_from_returns_only_durable_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path());
    let synced = append(&mut log, &[5, 6]);
    log.sync().unwrap();
    append(&mut log, &[7]);
    assert_eq!(log.durable_lsn(), 2);
    assert_eq!(read_all(&log, 1), synced);
}

#[test]
fn log_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, _) = open(dir.path());
    let err = Log::open(dir.path(), 7, config()).unwrap_err();
    assert!(matches!(err, LogError::Locked { .. }), "{err}");
}

#[test]
fn log_wrong_shard_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let err = Log::open(dir.path(), 8, config()).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::WrongShard {
                expected: 8,
                found: 7,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn log_change_stream_sees_records_appended_after_it_opened() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path());
    let mut expected = Vec::new();
    for _ in 0..3 {
        expected.extend(append(&mut log, &[40, 41]));
    }
    log.sync().unwrap();
    let mut reader = LogReader::open(dir.path(), 7, 1).unwrap();
    assert_eq!(drain(&mut reader), expected);
    assert!(reader.next().unwrap().is_none());

    // Enough to roll over several segments while the reader waits.
    let mut more = Vec::new();
    for _ in 0..60 {
        more.extend(append(&mut log, &[3000, 10]));
    }
    log.sync().unwrap();
    assert!(segments(dir.path()).len() >= 3);
    assert_eq!(drain(&mut reader), more);
    assert!(reader.next().unwrap().is_none());

    let last = append(&mut log, &[1]);
    log.sync().unwrap();
    assert_eq!(drain(&mut reader), last);
}

#[test]
fn log_change_stream_from_the_future_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path());
    append(&mut log, &[1, 2]);
    log.sync().unwrap();
    let mut reader = LogReader::open(dir.path(), 7, 5).unwrap();
    assert!(reader.next().unwrap().is_none());
    let recs = append(&mut log, &[3, 4, 5, 6]);
    assert_eq!(drain(&mut reader), recs[2..].to_vec());
}

#[test]
fn log_change_stream_never_returns_an_incomplete_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path());
    let first = append(&mut log, &[8]);
    append(&mut log, &[9, 10, 11]);
    drop(log);
    // Damage the last record of the second batch: its BATCH_END is gone.
    let placed = placements(dir.path());
    let last = placed.last().unwrap();
    assert!(last.batch_end);
    flip_bit(&last.segment, last.offset + 40, 0);
    let mut reader = LogReader::open(dir.path(), 7, 1).unwrap();
    assert_eq!(drain(&mut reader), first);
}

#[test]
fn log_change_stream_from_an_empty_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = LogReader::open(dir.path(), 7, 1).unwrap_err();
    assert!(matches!(err, LogError::NoSegments { .. }), "{err}");
}

#[test]
fn log_change_stream_reports_compaction_when_it_falls_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path());
    let first = append(&mut log, &[3000]);
    log.sync().unwrap();
    let mut reader = LogReader::open(dir.path(), 7, 1).unwrap();
    assert_eq!(drain(&mut reader), first);
    // The writer moves on and prunes segments the reader has not reached.
    for _ in 0..3 {
        for _ in 0..40 {
            append(&mut log, &[3000]);
            log.sync().unwrap();
        }
        let lsn = log.durable_lsn();
        log.write_snapshot(lsn, b"state").unwrap();
    }
    let first_available = log.first_lsn_available();
    assert!(first_available > 30);
    let mut seen = 0;
    let err = loop {
        match reader.next() {
            Ok(Some(_)) => seen += 1,
            Ok(None) => panic!("reader stalled instead of reporting compaction"),
            Err(e) => break e,
        }
    };
    assert!(seen < first_available);
    assert!(
        matches!(err, LogError::Compacted { first_available: f, .. } if f == first_available),
        "{err}"
    );
}

#[test]
fn log_change_stream_reports_corruption_behind_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path());
    let first = append(&mut log, &[100]);
    for _ in 0..40 {
        append(&mut log, &[3000]);
        log.sync().unwrap();
    }
    assert!(segments(dir.path()).len() >= 2);
    let victim = placements(dir.path())[1].clone();
    flip_bit(&victim.segment, victim.offset + 50, 1);
    let mut reader = LogReader::open(dir.path(), 7, 1).unwrap();
    assert_eq!(
        reader.next().unwrap().unwrap().payload,
        first[0].payload.as_slice()
    );
    let err = reader.next().unwrap_err();
    assert!(
        matches!(&err, LogError::Corrupt { segment, offset, .. } if *segment == victim.segment && *offset == victim.offset),
        "{err}"
    );
}

#[test]
fn log_change_stream_waits_at_a_torn_sealed_segment_until_recovery_cuts_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path());
    let mut recs = append(&mut log, &[100]);
    log.sync().unwrap();
    // Rollovers with no barrier: the first segment is sealed, never synced.
    while segments(dir.path()).len() < 3 {
        recs.extend(append(&mut log, &[3000, 20]));
    }
    drop(log);
    let first_segment = segments(dir.path())[0].clone();
    let victim = placements(dir.path())
        .into_iter()
        .filter(|p| p.segment == first_segment && p.lsn > 1)
        .nth(4)
        .unwrap();
    // A power loss took some of its unsynced bytes; the writer has not
    // recovered yet, and later segments exist.
    zero_from(&victim.segment, victim.offset + 40);
    let mut reader = LogReader::open(dir.path(), 7, 1).unwrap();
    let seen = drain(&mut reader);
    // Batches are (3000, 20) pairs after the first: the victim's batch goes.
    let kept = if victim.batch_end {
        victim.lsn - 2
    } else {
        victim.lsn - 1
    };
    assert_eq!(seen, recs[..kept as usize].to_vec());
    assert!(
        reader.next().unwrap().is_none(),
        "a torn tail, not corruption"
    );
    // Recovery cuts there; a reader then sees exactly what it kept.
    let (log, recovery) = open(dir.path());
    assert_eq!(recovery.last_lsn, kept);
    assert_eq!(segments(dir.path()), vec![first_segment]);
    drop(log);
    let mut reader = LogReader::open(dir.path(), 7, 1).unwrap();
    assert_eq!(drain(&mut reader), recs[..kept as usize].to_vec());
}

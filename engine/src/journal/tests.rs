use std::os::unix::fs::FileExt;

use super::limits::SEGMENT_BYTES_MIN;
use super::*;
use crate::log::{Log, LogConfig};

fn config() -> JournalConfig {
    JournalConfig {
        segment_bytes: SEGMENT_BYTES_MIN,
        segments: 2,
    }
}

fn frame(records: &[(u16, Lsn, &[u8])]) -> FrameBuilder {
    let mut f = FrameBuilder::new();
    for &(shard, lsn, payload) in records {
        f.push(shard, lsn, 7, payload);
    }
    f
}

fn write(j: &mut Journal, records: &[(u16, Lsn, &[u8])]) {
    let mut f = frame(records);
    let job = j.begin_write(&mut f, true).unwrap();
    let r = job.run();
    j.finish_write(job, r).unwrap();
}

#[test]
fn frames_are_read_back_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = core_dir(tmp.path(), 0);
    let mut j = Journal::create(&dir, 0, config()).unwrap();
    write(&mut j, &[(1, 1, b"a"), (2, 1, b"bb")]);
    write(&mut j, &[(1, 2, b"ccc")]);
    let scan = scan_dir(&dir).unwrap();
    assert_eq!(scan.frames, 2);
    assert!(scan.torn.is_none());
    let got: Vec<(u16, Lsn, &[u8])> = scan
        .entries
        .iter()
        .map(|e| (e.shard, e.lsn, e.payload.as_slice()))
        .collect();
    assert_eq!(
        got,
        vec![(1, 1, &b"a"[..]), (2, 1, &b"bb"[..]), (1, 2, &b"ccc"[..])]
    );
}

#[test]
fn a_torn_last_frame_is_ignored_and_damage_before_a_durable_frame_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = core_dir(tmp.path(), 0);
    let mut j = Journal::create(&dir, 0, config()).unwrap();
    write(&mut j, &[(1, 1, b"first")]);
    write(&mut j, &[(1, 2, b"second")]);
    let seg = dir.join("seg-0000.jrnl");
    let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    let second = FRAMES_START + entry_span(5) + FRAME_HEADER_BYTES;
    // Damage in the last frame: a torn tail.
    file.write_all_at(b"X", (second + FRAME_HEADER_BYTES + 20) as u64)
        .unwrap();
    let scan = scan_dir(&dir).unwrap();
    assert_eq!(scan.frames, 1);
    assert_eq!(scan.torn.as_ref().unwrap().offset, second as u64);
    // Damage in the first frame, which the second proves durable: corruption.
    file.write_all_at(b"Y", (FRAMES_START + FRAME_HEADER_BYTES + 2) as u64)
        .unwrap();
    write(&mut j, &[(1, 3, b"third")]);
    match scan_dir(&dir) {
        Err(JournalError::Corrupt { offset, .. }) => assert_eq!(offset, FRAMES_START as u64),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_full_ring_waits_for_a_checkpoint_then_reuses_the_zeroed_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = core_dir(tmp.path(), 0);
    let mut j = Journal::create(&dir, 0, config()).unwrap();
    let big = vec![5u8; 512 << 10];
    let mut lsn = 0;
    // Fill the first segment and move to the second.
    while j.oldest_pins().is_none() {
        lsn += 1;
        write(&mut j, &[(9, lsn, &big)]);
    }
    let pins = j.oldest_pins().unwrap();
    assert_eq!(pins.len(), 1);
    assert_eq!(pins[0].0, 9);
    assert!(pins[0].1 < lsn);
    // Fill the second: the next frame finds no free segment.
    let mut f;
    loop {
        lsn += 1;
        f = frame(&[(9, lsn, &big)]);
        match j.begin_write(&mut f, true) {
            Ok(job) => {
                let r = job.run();
                j.finish_write(job, r).unwrap();
            }
            Err(JournalError::Full) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let zero = j.release_oldest().unwrap();
    let r = zero.run();
    j.finish_zero(zero, r);
    let job = j.begin_write(&mut f, true).unwrap();
    let r = job.run();
    j.finish_write(job, r).unwrap();
    // The reused segment continues the sequence after the other one.
    let scan = scan_dir(&dir).unwrap();
    assert!(scan.torn.is_none());
    assert_eq!(scan.segments, 2);
    let lsns: Vec<Lsn> = scan.entries.iter().map(|e| e.lsn).collect();
    assert!(lsns.windows(2).all(|w| w[1] == w[0] + 1), "{lsns:?}");
    assert_eq!(*lsns.last().unwrap(), lsn);
}

#[test]
fn a_failed_write_poisons_the_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let mut j = Journal::create(&core_dir(tmp.path(), 0), 0, config()).unwrap();
    j.fail_next_write();
    let mut f = frame(&[(1, 1, b"x")]);
    let job = j.begin_write(&mut f, true).unwrap();
    let r = job.run();
    assert!(j.finish_write(job, r).is_err());
    assert!(j.is_poisoned());
    let mut f = frame(&[(1, 2, b"y")]);
    assert!(matches!(
        j.begin_write(&mut f, true),
        Err(JournalError::Poisoned { core: 0 })
    ));
}

#[test]
fn recovery_appends_what_the_shard_logs_lack_then_clears_the_journals() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join(JOURNAL_DIR_NAME);
    let shard_dir = |s: u16| tmp.path().join(format!("shard-{s}"));
    let log_config = LogConfig {
        segment_bytes: 1 << 20,
        ..LogConfig::default()
    };
    // Shard 3's log holds lsn 1; the journals of two cores hold 1..=3.
    {
        let (mut log, _) = Log::open(&shard_dir(3), 3, log_config.clone()).unwrap();
        log.append_batch([(7u16, &b"one"[..])].into_iter()).unwrap();
        log.sync().unwrap();
    }
    let mut a = Journal::create(&core_dir(&root, 0), 0, config()).unwrap();
    write(&mut a, &[(3, 1, b"one"), (4, 1, b"four")]);
    let mut b = Journal::create(&core_dir(&root, 5), 5, config()).unwrap();
    write(&mut b, &[(3, 2, b"two")]);
    write(&mut b, &[(3, 3, b"three")]);
    drop((a, b));
    let report = recover(&root, &shard_dir, &log_config).unwrap();
    assert_eq!(report.journals, 2);
    assert_eq!(report.applied, 3);
    assert_eq!(report.shards, vec![3, 4]);
    let (log, _) = Log::open(&shard_dir(3), 3, log_config.clone()).unwrap();
    assert_eq!(log.last_lsn(), 3);
    let mut reader = log.read_from(1).unwrap();
    let mut payloads = Vec::new();
    while let Some(r) = reader.next().unwrap() {
        payloads.push(r.payload.to_vec());
    }
    assert_eq!(
        payloads,
        vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );
    drop(log);
    assert!(std::fs::read_dir(&root).unwrap().next().is_none());
    // Again: nothing left to do.
    let again = recover(&root, &shard_dir, &log_config).unwrap();
    assert_eq!(again.applied, 0);
}

#[test]
fn a_journal_that_skips_records_of_a_shard_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join(JOURNAL_DIR_NAME);
    let shard_dir = |s: u16| tmp.path().join(format!("shard-{s}"));
    let mut a = Journal::create(&core_dir(&root, 0), 0, config()).unwrap();
    write(&mut a, &[(3, 2, b"two")]);
    drop(a);
    match recover(&root, &shard_dir, &LogConfig::default()) {
        Err(JournalError::Gap {
            shard: 3,
            log_last: 0,
            journal_first: 2,
        }) => {}
        other => panic!("expected Gap, got {other:?}"),
    }
    // Nothing was removed: the operator can still look.
    assert!(core_dir(&root, 0).exists());
}

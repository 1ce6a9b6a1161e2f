//! Unit tests: byte-level format rules, configuration, snapshot pruning plan,
//! and the poisoning that needs the `fail_next_sync` hook.

use std::path::{Path, PathBuf};

use super::format::*;
use super::segment::{PreparedSegment, prepared_temp_path};
use super::snapshot::{SnapshotFile, prune_plan};
use super::*;

fn segment_with_record(payload: &[u8]) -> Vec<u8> {
    let mut seg = vec![0u8; 4096];
    let span = record_span(payload.len());
    encode_record(&mut seg[64..64 + span], 9, 4, 3, FLAG_BATCH_END, payload);
    seg
}

#[test]
fn checksum_is_crc32c_as_documented() {
    assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
}

#[test]
fn record_round_trips_and_is_padded_to_16() {
    for len in [0usize, 1, 15, 16, 17, 100] {
        let payload: Vec<u8> = (0..len as u8).collect();
        let seg = segment_with_record(&payload);
        let d = decode_record(&seg, 64).unwrap();
        assert_eq!(d.header.lsn, 9);
        assert_eq!(d.header.synced_lsn, 4);
        assert_eq!(d.header.kind, 3);
        assert!(d.header.batch_end());
        assert_eq!(&seg[d.payload_at..d.payload_at + len], &payload[..]);
        assert_eq!(d.payload_at, 64 + 32);
        assert_eq!(d.next % 16, 0);
        assert_eq!(d.next, 64 + (32 + len).next_multiple_of(16));
        assert_eq!(decode_record(&seg, d.next), Err(NotARecord::End));
    }
}

#[test]
fn any_bit_flip_in_a_record_span_invalidates_it() {
    let seg = segment_with_record(b"seventeen bytes!!");
    let span = record_span(17);
    for byte in 64..64 + span {
        for bit in 0..8 {
            let mut damaged = seg.clone();
            damaged[byte] ^= 1 << bit;
            assert!(
                matches!(decode_record(&damaged, 64), Err(NotARecord::Invalid(_))),
                "flip at byte {byte} bit {bit} went unnoticed"
            );
        }
    }
}

#[test]
fn record_must_fit_its_segment() {
    let seg = segment_with_record(&[7u8; 100]);
    let cut = &seg[..64 + 32 + 50];
    assert_eq!(
        decode_record(cut, 64),
        Err(NotARecord::Invalid("record extends past the segment end"))
    );
    // No room for even a header: the segment's end.
    assert_eq!(decode_record(&seg[..64 + 16], 64), Err(NotARecord::End));
}

#[test]
fn proof_needs_a_valid_record_synced_past_the_expected_lsn() {
    let seg = segment_with_record(b"x"); // lsn 9, synced_lsn 4
    assert!(proves_durable(&seg, 64, 4).is_some());
    assert!(proves_durable(&seg, 64, 5).is_none());
    let mut damaged = seg.clone();
    damaged[100] ^= 1;
    assert!(proves_durable(&damaged, 64, 4).is_none());
}

#[test]
fn segment_header_round_trips_and_rejects_damage() {
    let h = SegmentHeader {
        shard: 200,
        segment_bytes: 1 << 20,
        first_lsn: 77,
    };
    let bytes = h.encode();
    assert_eq!(&bytes[..8], b"RSVSEG\0\x01");
    assert_eq!(SegmentHeader::decode(&bytes, 200), Ok(h));
    assert_eq!(
        SegmentHeader::decode(&bytes, 201),
        Err(HeaderError::WrongShard(200))
    );
    for byte in 0..64 {
        let mut damaged = bytes;
        damaged[byte] ^= 0x10;
        assert!(
            matches!(
                SegmentHeader::decode(&damaged, 200),
                Err(HeaderError::Damaged(_))
            ),
            "byte {byte}"
        );
    }
    assert!(SegmentHeader::decode(&[0u8; 64], 200).is_err());
}

#[test]
fn snapshot_header_round_trips() {
    let h = SnapshotHeader {
        shard: 3,
        lsn: 5,
        payload_bytes: 6,
        payload_crc: 7,
    };
    assert_eq!(SnapshotHeader::decode(&h.encode(), 3), Ok(h));
}

#[test]
fn file_names_sort_by_lsn_and_parse_strictly() {
    assert_eq!(segment_file_name(12), "seg-00000000000000000012.log");
    assert_eq!(snapshot_file_name(12), "snap-00000000000000000012.snap");
    let kind = |s: &str| classify(std::path::Path::new(s));
    assert_eq!(kind("seg-00000000000000000012.log"), FileKind::Segment(12));
    assert_eq!(
        kind("snap-00000000000000000012.snap"),
        FileKind::Snapshot(12)
    );
    assert_eq!(kind("seg-prepared.tmp"), FileKind::Temp);
    assert_eq!(kind("seg-12.log"), FileKind::Other);
    assert_eq!(kind("seg-0000000000000000001x.log"), FileKind::Other);
    assert_eq!(kind("LOCK"), FileKind::Other);
    assert_eq!(kind("seg-00000000000000000000.log"), FileKind::Other);
    assert_eq!(kind("seg-99999999999999999999.log"), FileKind::Other);
}

#[test]
fn config_is_validated() {
    assert!(LogConfig::default().validate().is_ok());
    let bad = [
        (limits::SEGMENT_BYTES_MIN - 4096, 2),
        (limits::SEGMENT_BYTES_MAX + 4096, 2),
        (limits::SEGMENT_BYTES_MIN + 16, 2),
        (limits::SEGMENT_BYTES_MIN, 0),
        (limits::SEGMENT_BYTES_MIN, limits::SNAPSHOTS_KEPT_MAX + 1),
    ];
    for (segment_bytes, snapshots_kept) in bad {
        let c = LogConfig {
            segment_bytes,
            snapshots_kept,
        };
        assert!(matches!(c.validate(), Err(LogError::Config(_))), "{c:?}");
    }
}

#[test]
fn prune_plan_keeps_the_newest_valid_snapshots() {
    let file = |lsn, valid| SnapshotFile {
        lsn,
        path: PathBuf::from(format!("{lsn}")),
        bytes: 1,
        valid,
    };
    let files = [
        file(10, true),
        file(20, true),
        file(30, true),
        file(40, false),
    ];
    let (doomed, oldest) = prune_plan(&files, 2);
    assert_eq!(oldest, 20);
    assert_eq!(doomed, vec![file(10, true)]);
    let (doomed, oldest) = prune_plan(&files, 4);
    assert_eq!((doomed.len(), oldest), (0, 10));
    let (doomed, oldest) = prune_plan(&[file(5, false)], 1);
    assert_eq!((doomed.len(), oldest), (0, 0));
}

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: limits::SEGMENT_BYTES_MIN,
        snapshots_kept: 2,
    }
}

#[test]
fn failed_sync_poisons_the_log_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), 1, small_config()).unwrap();
    log.append_batch([(1, &b"durable"[..])].into_iter())
        .unwrap();
    assert_eq!(log.sync().unwrap(), 1);
    log.append_batch([(1, &b"lost?"[..])].into_iter()).unwrap();
    log.fail_next_sync();
    assert!(matches!(
        log.sync(),
        Err(LogError::Io {
            op: "fdatasync",
            ..
        })
    ));
    assert!(log.is_poisoned());
    assert_eq!(log.durable_lsn(), 1);
    let append = log.append_batch([(1, &b"more"[..])].into_iter());
    assert!(matches!(append, Err(LogError::Poisoned { shard: 1 })));
    assert!(matches!(log.sync(), Err(LogError::Poisoned { .. })));
    assert!(matches!(
        log.write_snapshot(1, b"s"),
        Err(LogError::Poisoned { .. })
    ));
    drop(log);
    // Reopening reads what is on disk; the durable record is there.
    let (log, recovery) = Log::open(dir.path(), 1, small_config()).unwrap();
    assert!(recovery.last_lsn >= 1);
    let mut reader = log.read_from(1).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().payload, b"durable");
}

#[test]
fn a_rollover_runs_no_barrier_and_a_failed_barrier_after_it_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), 1, small_config()).unwrap();
    let big = vec![5u8; 40 << 10];
    log.append_batch([(1, &big[..])].into_iter()).unwrap();
    log.fail_next_sync();
    // The second record does not fit: the rollover syncs nothing, so the
    // injected failure waits for the barrier.
    log.append_batch([(1, &big[..])].into_iter()).unwrap();
    assert_eq!(log.sealed.len(), 1);
    assert!(!log.is_poisoned());
    let err = log.sync().unwrap_err();
    assert!(
        matches!(&err, LogError::Io { op: "fdatasync", path, .. } if *path == log.active.path),
        "{err}"
    );
    assert!(matches!(log.sync(), Err(LogError::Poisoned { .. })));
    assert_eq!(log.durable_lsn(), 0);
}

/// Paths of the files a barrier will sync, in order.
fn barrier_files(p: &PendingSync) -> Vec<PathBuf> {
    p.files.iter().map(|(_, path)| path.clone()).collect()
}

#[test]
fn a_barrier_syncs_the_sealed_segments_in_order_then_the_active_one_then_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), 1, small_config()).unwrap();
    let big = vec![5u8; 40 << 10];
    for _ in 0..3 {
        log.append_batch([(1, &big[..])].into_iter()).unwrap();
    }
    // Two rollovers, no barrier: both sealed segments wait for one.
    assert_eq!(log.sealed.len(), 2);
    assert!(log.sealed.iter().all(|s| s.unsynced.is_some()));
    let pending = log.begin_sync().unwrap().unwrap();
    let mut expected: Vec<PathBuf> = log.sealed.iter().map(|s| s.path.clone()).collect();
    expected.push(log.active.path.clone());
    assert_eq!(barrier_files(&pending), expected);
    assert!(
        pending.dir.is_some(),
        "new segment names wait for this barrier"
    );
    assert_eq!(pending.unmap.lock().unwrap().len(), 2);
    assert!(log.sealed.iter().all(|s| s.map.is_none()));
    let result = pending.run();
    assert_eq!(log.finish_sync(pending, result).unwrap(), 3);
    assert!(log.sealed.iter().all(|s| s.unsynced.is_none()));
    assert_eq!(log.installs_durable, log.installs);
    // The next barrier syncs the active segment alone.
    log.append_batch([(1, &b"small"[..])].into_iter()).unwrap();
    let pending = log.begin_sync().unwrap().unwrap();
    assert_eq!(barrier_files(&pending), vec![log.active.path.clone()]);
    assert!(pending.dir.is_none());
    let result = pending.run();
    assert_eq!(log.finish_sync(pending, result).unwrap(), 4);
}

#[test]
fn barriers_in_flight_cover_what_was_appended_before_they_began() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), 1, small_config()).unwrap();
    let big = vec![5u8; 40 << 10];
    log.append_batch([(1, &big[..])].into_iter()).unwrap();
    let first = log.begin_sync().unwrap().unwrap();
    // Rolls over while the first barrier is in flight.
    log.append_batch([(1, &big[..])].into_iter()).unwrap();
    let second = log.begin_sync().unwrap().unwrap();
    assert_eq!(barrier_files(&second).len(), 2);
    let result = second.run();
    assert_eq!(log.finish_sync(second, result).unwrap(), 2);
    assert!(log.sealed[0].unsynced.is_none());
    // The older barrier finishing late does not move the durable LSN back.
    let result = first.run();
    assert_eq!(log.finish_sync(first, result).unwrap(), 2);
    // A segment sealed after a barrier began, holding nothing newer than
    // it, is durable once that barrier finishes.
    log.append_batch([(1, &b"x"[..])].into_iter()).unwrap();
    let third = log.begin_sync().unwrap().unwrap();
    log.append_batch([(1, &big[..])].into_iter()).unwrap();
    assert_eq!(log.sealed.len(), 2);
    assert!(log.sealed[1].unsynced.is_some());
    let result = third.run();
    assert_eq!(log.finish_sync(third, result).unwrap(), 3);
    assert!(log.sealed[1].unsynced.is_none());
    assert_eq!(log.sync().unwrap(), 4);
}

/// Prepared-segment temporary files in `dir`.
fn prepared_temps(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| is_prepared_segment_temp(Path::new(p.file_name().unwrap())))
        .collect();
    found.sort();
    found
}

/// Runs the log's prepare job, if it offers one, on another thread.
fn run_prepare_job(log: &mut Log) -> bool {
    let Some(job) = log.prepare_job() else {
        return false;
    };
    let result = std::thread::spawn(move || job.run()).join().unwrap();
    log.install_prepared(result);
    true
}

#[test]
fn next_segment_is_prepared_ahead_by_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), 1, small_config()).unwrap();
    // An empty log holds one segment; the next is prepared once it is half full.
    assert!(!run_prepare_job(&mut log));
    assert!(prepared_temps(dir.path()).is_empty());
    let big = vec![5u8; 40 << 10];
    for _ in 0..3 {
        log.append_batch([(1, &big[..])].into_iter()).unwrap();
        // Appending prepares nothing itself (the first rollover below had
        // to create its segment on the spot)...
        assert!(log.prepared.is_none());
        // ...a job does, and the next rollover takes it.
        assert!(run_prepare_job(&mut log));
        assert!(log.prepared.is_some());
        assert_eq!(prepared_temps(dir.path()).len(), 1);
        assert!(!run_prepare_job(&mut log), "one is enough");
    }
    let bytes = limits::SEGMENT_BYTES_MIN;
    assert_eq!(log.disk_bytes(), 4 * bytes);
    // Closing leaves it ready for the next open, which takes it over.
    drop(log);
    assert!(prepared_temps(dir.path()).is_empty());
    assert!(dir.path().join(READY_SEGMENT_NAME).exists());
    let (log, _) = Log::open(dir.path(), 1, small_config()).unwrap();
    assert!(!dir.path().join(READY_SEGMENT_NAME).exists());
    assert_eq!(prepared_temps(dir.path()).len(), 1);
    assert_eq!(log.disk_bytes(), 4 * bytes);
}

#[test]
fn a_prepare_job_is_offered_once_until_its_result_is_installed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), 1, small_config()).unwrap();
    let big = vec![5u8; 40 << 10];
    log.append_batch([(1, &big[..])].into_iter()).unwrap();
    let job = log.prepare_job().unwrap();
    assert!(log.prepare_job().is_none(), "one job at a time");
    // A failure is reported and the job offered again.
    log.install_prepared(Err(LogError::Config("disk full".into())));
    drop(job);
    let job = log.prepare_job().unwrap();
    // A real failure: its temporary name is taken.
    std::fs::write(&job.path, b"someone else's").unwrap();
    let taken = job.path.clone();
    let result = job.run();
    assert!(matches!(result, Err(LogError::Io { op: "create", .. })));
    assert_eq!(std::fs::read(&taken).unwrap(), b"someone else's");
    log.install_prepared(result);
    assert!(log.prepared.is_none());
    assert!(run_prepare_job(&mut log));
    assert!(log.prepared.is_some());
}

#[test]
fn the_fallback_at_rollover_does_not_wait_for_or_collide_with_a_job_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), 1, small_config()).unwrap();
    let big = vec![5u8; 40 << 10];
    log.append_batch([(1, &big[..])].into_iter()).unwrap();
    let job = log.prepare_job().unwrap();
    // The rollover comes before the job ran: the writer creates a segment
    // itself, under another name.
    log.append_batch([(1, &big[..])].into_iter()).unwrap();
    assert_eq!(log.sealed.len(), 1);
    assert!(!job.path.exists());
    let result = std::thread::spawn(move || job.run()).join().unwrap();
    log.install_prepared(result);
    // The job's segment serves the next rollover.
    let waiting = prepared_temps(dir.path());
    assert_eq!(waiting.len(), 1);
    log.append_batch([(1, &big[..])].into_iter()).unwrap();
    assert_eq!(log.sealed.len(), 2);
    assert!(!waiting[0].exists());
    assert!(prepared_temps(dir.path()).is_empty());
    assert_eq!(log.sync().unwrap(), 3);
    let mut reader = log.read_from(1).unwrap();
    for _ in 0..3 {
        assert_eq!(reader.next().unwrap().unwrap().payload, &big[..]);
    }
}

#[test]
fn a_prepared_segment_is_deleted_if_its_log_does_not_take_it() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let (mut a, _) = Log::open(dir_a.path(), 1, small_config()).unwrap();
    let (mut b, _) = Log::open(dir_b.path(), 1, small_config()).unwrap();
    let big = vec![5u8; 40 << 10];
    a.append_batch([(1, &big[..])].into_iter()).unwrap();
    b.append_batch([(1, &big[..])].into_iter()).unwrap();
    let from_a = a.prepare_job().unwrap().run().unwrap();
    let for_b = b.prepare_job().unwrap();
    // Handed to the wrong log: refused and deleted; b's job is still out.
    b.install_prepared(Ok(from_a));
    assert!(b.prepared.is_none() && b.prepare_outstanding);
    assert!(prepared_temps(dir_a.path()).is_empty());
    // Its log closed before the job finished: dropping the result deletes it.
    drop(b);
    let late = for_b.run().unwrap();
    assert_eq!(prepared_temps(dir_b.path()).len(), 1);
    drop(late);
    assert!(prepared_temps(dir_b.path()).is_empty());
    // a's job never came back; a lost job is reported like a failed one.
    assert!(a.prepare_job().is_none());
    a.install_prepared(Err(LogError::Config("job lost".into())));
    // One prepared already: a second is deleted.
    assert!(run_prepare_job(&mut a));
    let extra = Prepared {
        segment: Some(
            PreparedSegment::create(&prepared_temp_path(dir_a.path()), limits::SEGMENT_BYTES_MIN)
                .unwrap(),
        ),
        instance: a.instance,
    };
    a.install_prepared(Ok(extra));
    assert_eq!(prepared_temps(dir_a.path()).len(), 1);
}

/// A prepared-segment temporary file of `len` bytes, zero but for `dirt`.
fn leftover(dir: &Path, name: &str, len: u64, dirt: Option<u64>) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(len).unwrap();
    if let Some(at) = dirt {
        f.write_all_at(&[1], at).unwrap();
    }
    path
}

#[test]
fn open_takes_over_a_blank_leftover_and_deletes_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = limits::SEGMENT_BYTES_MIN;
    drop(Log::open(dir.path(), 1, small_config()).unwrap());
    // What a writer that crashed can leave: a segment whose rename a power
    // loss undid (records deep inside), one of another size, a blank one.
    let dirty = leftover(dir.path(), "seg-prepared-1.tmp", bytes, Some(bytes - 1));
    let short = leftover(dir.path(), "seg-prepared-2.tmp", bytes / 2, None);
    let blank = leftover(dir.path(), "seg-prepared-3.tmp", bytes, None);
    let snap = leftover(dir.path(), "snap-00000000000000000001.tmp", 10, None);
    let (log, _) = Log::open(dir.path(), 1, small_config()).unwrap();
    for p in [&dirty, &short, &blank, &snap] {
        assert!(!p.exists(), "{}", p.display());
    }
    assert!(log.prepared.is_some(), "the blank one was taken over");
    assert_eq!(prepared_temps(dir.path()).len(), 1);
    assert_eq!(log.disk_bytes(), 2 * bytes);
}

#[test]
fn open_deletes_a_dirty_leftover_and_a_ready_segment_with_a_header() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = limits::SEGMENT_BYTES_MIN;
    drop(Log::open(dir.path(), 1, small_config()).unwrap());
    let dirty = leftover(dir.path(), "seg-prepared-9.tmp", bytes, Some(5000));
    let ready = leftover(dir.path(), READY_SEGMENT_NAME, bytes, Some(3));
    let (log, _) = Log::open(dir.path(), 1, small_config()).unwrap();
    assert!(!dirty.exists() && !ready.exists());
    // Having found some, open prepares a fresh one (as it did before it
    // knew what they held).
    assert!(log.prepared.is_some());
    assert_eq!(prepared_temps(dir.path()).len(), 1);
}

#[test]
fn recovery_knows_which_records_a_crashed_writer_may_have_left_unsynced() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), 1, small_config()).unwrap();
    let big = vec![5u8; 40 << 10];
    log.append_batch([(1, &big[..])].into_iter()).unwrap();
    log.append_batch([(1, &b"x"[..])].into_iter()).unwrap();
    assert_eq!(log.sync().unwrap(), 2);
    // Two rollovers, no barrier: a crash now leaves segments 1 and 2 with
    // records that may be only in the page cache.
    log.append_batch([(1, &big[..])].into_iter()).unwrap();
    log.append_batch([(1, &big[..])].into_iter()).unwrap();
    drop(log);
    let listing = dir::list(dir.path()).unwrap();
    assert_eq!(listing.segments.len(), 3);
    let recovered = recovery::recover(dir.path(), 1, &listing.segments, 0).unwrap();
    assert_eq!(recovered.last_lsn, 4);
    assert_eq!(
        recovered.proven_lsn, 2,
        "what the records' synced_lsn proves"
    );
    let recovered = recovery::recover(dir.path(), 1, &listing.segments, 3).unwrap();
    assert_eq!(recovered.proven_lsn, 3, "or the snapshot");
}

#[test]
fn taking_over_a_leftover_survives_a_leftover_with_the_new_name() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = limits::SEGMENT_BYTES_MIN;
    let blank = leftover(dir.path(), "seg-prepared-1.tmp", bytes, None);
    let fresh = prepared_temp_path(dir.path());
    let dirty = leftover(
        dir.path(),
        fresh.file_name().unwrap().to_str().unwrap(),
        bytes,
        Some(99),
    );
    let taken = PreparedSegment::adopt(dir.path(), &[blank.clone(), dirty], bytes, &fresh)
        .unwrap()
        .unwrap();
    assert!(!blank.exists());
    assert_eq!(prepared_temps(dir.path()), vec![fresh.clone()]);
    assert_eq!(std::fs::read(&fresh).unwrap(), vec![0u8; bytes as usize]);
    drop(taken);
}

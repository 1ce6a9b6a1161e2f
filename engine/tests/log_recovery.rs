//! Recovery: torn tails are cut back to the last complete batch; damage to
//! durable records is reported with its segment and offset.

#[path = "log_helpers.rs"]
mod helpers;

use std::path::{Path, PathBuf};

use helpers::{Rng, *};
use proptest::prelude::*;
use reserva_engine::log::{Log, LogError, Lsn};

/// Writes `synced_batches` synced batches, then `unsynced_batches` batches
/// without a sync, and closes the log. Returns (records, number synced, the
/// batches' last LSNs).
fn workload(
    dir: &Path,
    seed: u64,
    synced_batches: usize,
    unsynced_batches: usize,
) -> (Vec<Rec>, Lsn, Vec<Lsn>) {
    let mut rng = Rng::new(seed);
    let (mut log, _) = open(dir);
    let mut recs = Vec::new();
    let mut batch_ends = Vec::new();
    for _ in 0..synced_batches {
        recs.extend(append(&mut log, &random_lens(&mut rng, 3000)));
        log.sync().unwrap();
        batch_ends.push(log.last_lsn());
    }
    let durable = log.durable_lsn();
    for _ in 0..unsynced_batches {
        recs.extend(append(&mut log, &random_lens(&mut rng, 3000)));
        batch_ends.push(log.last_lsn());
    }
    (recs, durable, batch_ends)
}

/// Reopens, checks the log holds exactly the first `keep` records, and that
/// appends continue at `keep + 1` (and survive another reopen).
fn assert_recovers_to(dir: &Path, recs: &[Rec], keep: Lsn) {
    let (mut log, recovery) = open(dir);
    assert_eq!(recovery.last_lsn, keep);
    assert_eq!(read_all(&log, 1), recs[..keep as usize].to_vec());
    let more = append(&mut log, &[33, 44]);
    assert_eq!(more[0].lsn, keep + 1);
    log.sync().unwrap();
    drop(log);
    let (log, recovery) = open(dir);
    assert!(recovery.tail_cut.is_none());
    let mut expected = recs[..keep as usize].to_vec();
    expected.extend(more);
    assert_eq!(read_all(&log, 1), expected);
}

/// The records of LSNs `after+1..` as placed on disk.
fn placed_after(dir: &Path, after: Lsn) -> Vec<Placed> {
    placements(dir)
        .into_iter()
        .filter(|p| p.lsn > after)
        .collect()
}

#[test]
fn log_torn_tail_zeroed_from_a_random_offset_drops_exactly_that_batch() {
    for seed in 0..40 {
        let dir = fast_tempdir();
        let (recs, durable, _) = workload(dir.path(), seed, 12, 1);
        let torn = placed_after(dir.path(), durable);
        let mut rng = Rng::new(seed + 1000);
        let victim = &torn[rng.range(0, torn.len() as u64) as usize];
        // Zero from a byte that is not zero yet (one of the first 9 header
        // bytes, which include the lsn field, or a payload byte), so the
        // batch really is damaged.
        let offset = match victim.len > 0 && rng.range(0, 2) == 0 {
            true => victim.offset + 32 + rng.range(0, victim.len),
            false => victim.offset + rng.range(0, 9),
        };
        zero_from(&victim.segment, offset);
        for later in torn.iter().filter(|p| p.segment > victim.segment) {
            zero_from(&later.segment, 64);
        }
        assert_recovers_to(dir.path(), &recs, durable);
    }
}

#[test]
fn log_torn_tail_with_flipped_bits_drops_exactly_that_batch() {
    for seed in 0..40 {
        let dir = fast_tempdir();
        let (recs, durable, _) = workload(dir.path(), seed, 10, 1);
        let torn = placed_after(dir.path(), durable);
        let mut rng = Rng::new(seed + 2000);
        // Distinct bits, so no flip undoes another.
        let mut flips = std::collections::BTreeSet::new();
        for _ in 0..rng.range(1, 4) {
            let victim = &torn[rng.range(0, torn.len() as u64) as usize];
            let offset = victim.offset + rng.range(0, victim.span);
            flips.insert((victim.segment.clone(), offset, rng.range(0, 8) as u8));
        }
        for (segment, offset, bit) in &flips {
            flip_bit(segment, *offset, *bit);
        }
        let (log, recovery) = open(dir.path());
        let cut = recovery.tail_cut.expect("a damaged batch is reported");
        assert!(cut.bytes_discarded > 0);
        drop(log);
        assert_recovers_to(dir.path(), &recs, durable);
    }
}

#[test]
fn log_incomplete_batch_in_a_fresh_segment_is_cut_with_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path());
    let mut recs = append(&mut log, &[1000]);
    log.sync().unwrap();
    // One batch that rolls over into a new segment, never synced.
    recs.extend(append(&mut log, &[30_000, 30_000, 30_000]));
    drop(log);
    let segs = segments(dir.path());
    assert_eq!(segs.len(), 2);
    zero_from(&segs[1], 0); // The new segment's header and records never made it.
    let (log, recovery) = open(dir.path());
    let cut = recovery.tail_cut.unwrap();
    assert_eq!(cut.segment, segs[0]);
    assert_eq!(cut.records_discarded, 2);
    assert_eq!(cut.segments_deleted, vec![segs[1].clone()]);
    assert_eq!(segments(dir.path()), vec![segs[0].clone()]);
    drop(log);
    assert_recovers_to(dir.path(), &recs, 1);
}

#[test]
fn log_flipped_bit_in_a_synced_record_is_corruption_at_its_offset() {
    for seed in 0..30 {
        let dir = fast_tempdir();
        let (_, durable, batch_ends) = workload(dir.path(), seed, 25, 1);
        // Any record followed by at least one later synced batch: that batch
        // was written after this record had passed a barrier.
        let last_proven = batch_ends[batch_ends.len() - 3];
        assert!(last_proven < durable);
        let candidates: Vec<Placed> = placements(dir.path())
            .into_iter()
            .filter(|p| p.lsn <= last_proven)
            .collect();
        let mut rng = Rng::new(seed + 3000);
        let victim = &candidates[rng.range(0, candidates.len() as u64) as usize];
        let offset = victim.offset + rng.range(0, victim.span);
        flip_bit(&victim.segment, offset, rng.range(0, 8) as u8);
        let err = Log::open(dir.path(), 7, config()).unwrap_err();
        match err {
            LogError::Corrupt {
                shard,
                segment,
                offset,
                ..
            } => {
                assert_eq!(shard, 7);
                assert_eq!(segment, victim.segment, "seed {seed}");
                assert_eq!(offset, victim.offset, "seed {seed}");
            }
            other => panic!("seed {seed}: expected Corrupt, got {other}"),
        }
        let message = Log::open(dir.path(), 7, config()).unwrap_err().to_string();
        assert!(message.contains(&victim.segment.display().to_string()));
    }
}

#[test]
fn log_damaged_segment_header_before_durable_records_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    workload(dir.path(), 5, 60, 0);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    flip_bit(&segs[1], 20, 3);
    let err = Log::open(dir.path(), 7, config()).unwrap_err();
    assert!(
        matches!(&err, LogError::Corrupt { segment, offset: 0, .. } if *segment == segs[1]),
        "{err}"
    );
}

#[test]
fn log_missing_middle_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    workload(dir.path(), 6, 60, 0);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    std::fs::remove_file(&segs[1]).unwrap();
    let err = Log::open(dir.path(), 7, config()).unwrap_err();
    assert!(
        matches!(&err, LogError::Corrupt { segment, offset: 0, .. } if *segment == segs[2]),
        "{err}"
    );
}

#[test]
fn log_leftover_temp_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (recs, durable, _) = workload(dir.path(), 7, 5, 0);
    std::fs::write(dir.path().join("snap-00000000000000000003.tmp"), b"junk").unwrap();
    let (log, _) = open(dir.path());
    assert!(!dir.path().join("snap-00000000000000000003.tmp").exists());
    assert_eq!(read_all(&log, 1), recs[..durable as usize].to_vec());
}

/// Damage applied to the unsynced tail, at a fraction of its byte length.
#[derive(Debug, Clone)]
enum Damage {
    ZeroFrom(f64),
    Flip(f64, u8),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0.0..1.0f64).prop_map(Damage::ZeroFrom),
        (0.0..1.0f64, 0u8..8).prop_map(|(at, bit)| Damage::Flip(at, bit)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever happens to unsynced batches, recovery does not fail, keeps
    /// every synced batch, and keeps only whole batches.
    #[test]
    fn log_recovery_keeps_synced_batches_and_only_whole_batches(
        seed in 0u64..1_000_000,
        synced in 1usize..12,
        unsynced in 1usize..4,
        damages in proptest::collection::vec(damage(), 1..4),
    ) {
        let dir = fast_tempdir();
        let (recs, durable, batch_ends) = workload(dir.path(), seed, synced, unsynced);
        let tail = placed_after(dir.path(), durable);
        let tail_bytes: u64 = tail.iter().map(|p| p.span).sum();
        for d in &damages {
            let (at, bit) = match *d {
                Damage::ZeroFrom(at) => (at, None),
                Damage::Flip(at, bit) => (at, Some(bit)),
            };
            // Map the fraction to a byte of the tail's records.
            let mut skip = (at * tail_bytes as f64) as u64;
            let victim = tail.iter().find(|p| {
                let hit = skip < p.span;
                if !hit { skip -= p.span; }
                hit
            }).unwrap();
            match bit {
                Some(bit) => flip_bit(&victim.segment, victim.offset + skip, bit),
                None => zero_from(&victim.segment, victim.offset + skip),
            }
        }
        let (log, recovery) = open(dir.path());
        let last = recovery.last_lsn;
        prop_assert!(last >= durable, "lost synced records: {last} < {durable}");
        prop_assert!(batch_ends.contains(&last), "kept a partial batch: ends at {last}");
        prop_assert_eq!(read_all(&log, 1), recs[..last as usize].to_vec());
    }
}

#[test]
fn log_failed_sync_poisons_and_reopen_keeps_synced_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path());
    let synced = append(&mut log, &[10, 20]);
    log.sync().unwrap();
    append(&mut log, &[30]);
    log.fail_next_sync();
    let err = log.sync().unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Io {
                op: "fdatasync",
                ..
            }
        ),
        "{err}"
    );
    let err = log.append_batch([(1, &b"x"[..])].into_iter()).unwrap_err();
    assert!(matches!(err, LogError::Poisoned { shard: 7 }), "{err}");
    assert!(matches!(log.sync(), Err(LogError::Poisoned { .. })));
    drop(log);
    // Whatever reached the disk of the failed batch, the synced one is there.
    let (log, recovery) = open(dir.path());
    assert!(recovery.last_lsn >= 2);
    assert_eq!(read_all(&log, 1)[..2], synced[..]);
}

/// Writes `synced` synced batches, then unsynced batches until the log has
/// rolled over at least `rollovers` times since the last barrier. Returns
/// the open log, the records, the durable LSN, every batch's last LSN (and
/// 0), and the segment that was active at the last barrier.
fn unsynced_rollovers(
    dir: &Path,
    seed: u64,
    synced: usize,
    rollovers: usize,
) -> (Log, Vec<Rec>, Lsn, Vec<Lsn>, PathBuf) {
    let mut rng = Rng::new(seed);
    let (mut log, _) = open(dir);
    let mut recs = Vec::new();
    let mut batch_ends = vec![0];
    for _ in 0..synced {
        recs.extend(append(&mut log, &random_lens(&mut rng, 3000)));
        log.sync().unwrap();
        batch_ends.push(log.last_lsn());
    }
    let durable = log.durable_lsn();
    let (at_barrier, _) = log.position();
    let before = segments(dir).len();
    while segments(dir).len() < before + rollovers {
        recs.extend(append(&mut log, &random_lens(&mut rng, 6000)));
        batch_ends.push(log.last_lsn());
    }
    assert_eq!(log.durable_lsn(), durable);
    (log, recs, durable, batch_ends, at_barrier)
}

/// The records after `durable` placed in `segment`.
fn unsynced_in(dir: &Path, durable: Lsn, segment: &Path) -> Vec<Placed> {
    placed_after(dir, durable)
        .into_iter()
        .filter(|p| p.segment == segment)
        .collect()
}

/// Damage a power loss can do to a segment sealed without a sync, and to the
/// segments after it, whose names and contents were not synced either.
#[test]
fn log_power_loss_in_an_unsynced_sealed_segment_is_a_torn_tail() {
    for seed in 0..60 {
        let dir = fast_tempdir();
        let (log, recs, durable, batch_ends, sealed) = unsynced_rollovers(
            dir.path(),
            seed,
            1 + seed as usize % 7,
            2 + seed as usize % 3,
        );
        drop(log);
        let mut rng = Rng::new(seed + 5000);
        // A record written after the last barrier into the segment that was
        // active then, sealed since: lose or garble part of it.
        let in_sealed = unsynced_in(dir.path(), durable, &sealed);
        assert!(!in_sealed.is_empty(), "seed {seed}");
        let victim = &in_sealed[rng.range(0, in_sealed.len() as u64) as usize];
        let offset = victim.offset + rng.range(0, victim.span);
        match rng.range(0, 3) {
            0 => zero_from(&victim.segment, offset),
            1 => flip_bit(&victim.segment, offset, rng.range(0, 8) as u8),
            _ => {
                zero_from(&victim.segment, offset);
                flip_bit(&victim.segment, offset + rng.range(0, 200), 3);
            }
        }
        // The later segments: kept as written, partly lost, garbled, or their
        // names lost (the rename undone, back to a temporary name).
        let later: Vec<PathBuf> = segments(dir.path())
            .into_iter()
            .filter(|s| *s > sealed)
            .collect();
        for (i, seg) in later.iter().enumerate() {
            match rng.range(0, 4) {
                0 => {}
                1 => zero_from(seg, rng.range(0, SEGMENT_BYTES)),
                2 => {
                    let undone = dir.path().join(format!("seg-prepared-undone-{i}.tmp"));
                    std::fs::rename(seg, undone).unwrap();
                }
                _ => flip_bit(seg, rng.range(64, SEGMENT_BYTES), rng.range(0, 8) as u8),
            }
        }
        let (log, recovery) = Log::open(dir.path(), 7, config())
            .unwrap_or_else(|e| panic!("seed {seed}: a torn tail reported as {e}"));
        let last = recovery.last_lsn;
        assert!(
            last >= durable,
            "seed {seed}: lost durable records: {last} < {durable}"
        );
        assert!(
            last < victim.lsn,
            "seed {seed}: kept damaged lsn {}",
            victim.lsn
        );
        assert!(
            batch_ends.contains(&last),
            "seed {seed}: kept a partial batch"
        );
        assert_eq!(
            read_all(&log, 1),
            recs[..last as usize].to_vec(),
            "seed {seed}"
        );
        // Nothing after the cut survives, under any name.
        assert!(
            segments(dir.path()).iter().all(|s| *s <= sealed),
            "seed {seed}"
        );
        for i in 0..later.len() {
            let undone = dir.path().join(format!("seg-prepared-undone-{i}.tmp"));
            assert!(
                !undone.exists(),
                "seed {seed}: {} survived",
                undone.display()
            );
        }
        drop(log);
        assert_recovers_to(dir.path(), &recs, last);
    }
}

/// A barrier begun after rollovers makes the sealed segments durable with
/// the active one: a record written after it vouches for all of them, so
/// damage in a sealed segment is corruption.
#[test]
fn log_damage_in_a_sealed_segment_after_a_barrier_covering_the_next_is_corruption() {
    for seed in 0..30 {
        let dir = fast_tempdir();
        let (mut log, _, durable, _, sealed) = unsynced_rollovers(dir.path(), seed, 2, 2);
        log.sync().unwrap();
        // Its records carry synced_lsn = everything above.
        append(&mut log, &[100, 200]);
        drop(log);
        let in_sealed = unsynced_in(dir.path(), durable, &sealed);
        let mut rng = Rng::new(seed + 6000);
        let victim = &in_sealed[rng.range(0, in_sealed.len() as u64) as usize];
        if rng.range(0, 2) == 0 {
            let at = victim.offset + rng.range(0, victim.span);
            flip_bit(&victim.segment, at, rng.range(0, 8) as u8);
        } else {
            // A lost write from inside the header on (its first 8 bytes stay,
            // so it is not read as the segment's end).
            zero_from(&victim.segment, victim.offset + 8 + rng.range(0, 24));
        }
        match Log::open(dir.path(), 7, config()) {
            Err(LogError::Corrupt {
                segment, offset, ..
            }) => {
                assert_eq!(segment, sealed, "seed {seed}: victim {victim:?}");
                assert_eq!(offset, victim.offset, "seed {seed}");
            }
            Err(e) => panic!("seed {seed}: expected Corrupt, got {e}"),
            Ok((_, r)) => panic!(
                "seed {seed}: damage to durable lsn {} went unnoticed: {r:?}",
                victim.lsn
            ),
        }
    }
}

/// The limit of what the format can tell (docs/log-format.md, media
/// assumptions): damage to records of the last barrier, when no record
/// written after that barrier survived, looks exactly like a torn tail.
#[test]
fn log_damage_to_the_last_barrier_with_no_later_record_is_cut_as_a_torn_tail() {
    let dir = fast_tempdir();
    let (mut log, recs, durable, _, sealed) = unsynced_rollovers(dir.path(), 11, 3, 2);
    assert_eq!(log.sync().unwrap(), recs.len() as Lsn);
    drop(log);
    let victim = unsynced_in(dir.path(), durable, &sealed)[0].clone();
    flip_bit(&victim.segment, victim.offset + 9, 0);
    let (log, recovery) = open(dir.path());
    assert_eq!(recovery.last_lsn, durable);
    assert!(recovery.tail_cut.is_some());
    assert_eq!(read_all(&log, 1), recs[..durable as usize].to_vec());
}

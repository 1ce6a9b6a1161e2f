//! Offline verification: a healthy shard directory verifies clean; a flipped
//! bit, a truncated segment and missing snapshots are faults naming the
//! shard, the file and (for damaged bytes) the offset; nothing is modified.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use reserva_engine::ids::key_on_shard;
use reserva_engine::log::LogConfig;
use reserva_engine::shard::{Shard, ShardConfig};
use reserva_engine::sm::*;
use reserva_engine::verify::{FaultKind, verify_data_dir};

const SHARD: u16 = 7;
const T0: u64 = 1_900_000_000_000;

/// A data directory with one busy shard: several segments, two snapshots,
/// older segments pruned.
fn busy_data_dir() -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("shards").join(format!("{SHARD:03}"));
    let config = ShardConfig {
        log: LogConfig {
            segment_bytes: 64 * 1024,
            snapshots_kept: 2,
        },
        snapshot_every_records: 0,
    };
    let (mut shard, _) = Shard::open(&dir, SHARD, config).unwrap();
    let eur = Currency::parse("EUR").unwrap();
    for round in 0..6u64 {
        let batch: Vec<Request> = (0..200u64)
            .map(|i| {
                let sku = key_on_shard("sku-", SHARD, (i % 50) as usize);
                let command = if round == 0 && i < 50 {
                    Command::UpsertSku {
                        sku,
                        seller_id: "seller".into(),
                        title: "a title long enough to fill segments".into(),
                        price: Money {
                            amount_minor: 100,
                            currency: eur,
                        },
                    }
                } else {
                    Command::SetStock {
                        sku,
                        warehouse: "w1".into(),
                        on_hand: round * 1000 + i,
                    }
                };
                Request::new(command)
            })
            .collect();
        for r in shard.commit(T0 + round, batch).unwrap() {
            r.unwrap();
        }
        if round == 2 || round == 4 {
            shard.snapshot().unwrap();
        }
    }
    drop(shard);
    data
}

fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    v.sort();
    v
}

fn shard_dir(data: &Path) -> PathBuf {
    data.join("shards").join(format!("{SHARD:03}"))
}

/// Every file's bytes, to prove verify changed nothing.
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_healthy_directory_verifies_clean_and_is_left_untouched() {
    let data = busy_data_dir();
    let dir = shard_dir(data.path());
    assert!(
        files(&dir, "seg-").len() >= 2,
        "the test needs several segments"
    );
    assert_eq!(files(&dir, "snap-").len(), 2);
    let before = contents(&dir);
    let report = verify_data_dir(data.path());
    assert!(report.is_ok(), "{:#?}", report.faults);
    assert_eq!(report.shards.len(), 1);
    let s = &report.shards[0];
    assert_eq!(s.last_lsn, 1200);
    assert!(s.snapshots_matched >= 1, "{s:?}");
    assert_ne!(s.checksum, 0);
    assert_eq!(contents(&dir), before, "verify must not modify anything");
}

#[test]
fn a_flipped_bit_is_reported_with_its_segment_and_offset() {
    let data = busy_data_dir();
    let dir = shard_dir(data.path());
    let segment = files(&dir, "seg-")[0].clone();
    let offset = 64 + 32 + 8; // inside the first record's payload
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0x10;
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&b).unwrap();
    drop(f);
    let before = contents(&dir);
    let report = verify_data_dir(data.path());
    let fault = report
        .faults
        .iter()
        .find(|f| f.kind == FaultKind::Corrupt)
        .unwrap_or_else(|| panic!("no corruption reported: {report:#?}"));
    assert_eq!(fault.shard, Some(SHARD));
    assert_eq!(fault.file, segment);
    assert_eq!(fault.offset, Some(64));
    assert_eq!(
        contents(&dir),
        before,
        "verify must not cut or repair anything"
    );
}

#[test]
fn a_truncated_segment_is_reported() {
    let data = busy_data_dir();
    let dir = shard_dir(data.path());
    let segment = files(&dir, "seg-")[0].clone();
    let f = OpenOptions::new().write(true).open(&segment).unwrap();
    f.set_len(20_000).unwrap();
    drop(f);
    let report = verify_data_dir(data.path());
    let fault = report
        .faults
        .iter()
        .find(|f| f.kind == FaultKind::Truncated)
        .unwrap_or_else(|| panic!("no truncation reported: {report:#?}"));
    assert_eq!(fault.file, segment);
    assert_eq!(fault.offset, Some(20_000));
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), 20_000);
}

#[test]
fn missing_snapshots_are_a_gap() {
    let data = busy_data_dir();
    let dir = shard_dir(data.path());
    let first = files(&dir, "seg-")[0].clone();
    assert!(
        !first.ends_with("seg-00000000000000000001.log"),
        "the test needs pruned segments"
    );
    for snap in files(&dir, "snap-") {
        std::fs::remove_file(snap).unwrap();
    }
    let report = verify_data_dir(data.path());
    assert!(
        report
            .faults
            .iter()
            .any(|f| f.kind == FaultKind::Gap && f.shard == Some(SHARD)),
        "{report:#?}"
    );
}

#[test]
fn a_damaged_snapshot_is_reported_and_an_empty_directory_is_a_layout_fault() {
    let data = busy_data_dir();
    let dir = shard_dir(data.path());
    let snap = files(&dir, "snap-").pop().unwrap();
    let len = std::fs::metadata(&snap).unwrap().len();
    let mut f = OpenOptions::new().write(true).open(&snap).unwrap();
    f.seek(SeekFrom::Start(len - 1)).unwrap();
    f.write_all(&[0xAA]).unwrap();
    drop(f);
    let report = verify_data_dir(data.path());
    assert!(
        report
            .faults
            .iter()
            .any(|f| f.kind == FaultKind::BadSnapshot && f.file == snap),
        "{report:#?}"
    );
    let empty = tempfile::tempdir().unwrap();
    let report = verify_data_dir(empty.path());
    assert_eq!(report.faults[0].kind, FaultKind::Layout);
}

/// Verify and recovery agree: after a bit flip anywhere in a segment,
/// `verify` reports a fault exactly when opening the shard fails.
#[test]
fn verify_reports_a_fault_exactly_when_recovery_refuses_to_open() {
    let data = busy_data_dir();
    let dir = shard_dir(data.path());
    let segments = files(&dir, "seg-");
    let mut seed = 0x5eed_u64;
    let cases = if std::env::var_os("RESERVA_CI").is_some() {
        40
    } else {
        16
    };
    let mut refused = 0;
    for case in 0..cases {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let copy = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(data.path().join("shards"))
            .arg(copy.path())
            .status()
            .unwrap();
        assert!(status.success());
        let seg = &segments[(seed >> 8) as usize % segments.len()];
        let target = shard_dir(copy.path()).join(seg.file_name().unwrap());
        let mut bytes = std::fs::read(&target).unwrap();
        // Mostly inside the written records, sometimes anywhere.
        let written = bytes.iter().rposition(|&b| b != 0).unwrap_or(64) + 1;
        let span = if case % 4 == 0 { bytes.len() } else { written };
        let at = (seed >> 20) as usize % span;
        bytes[at] ^= 1 << ((seed >> 40) % 8);
        std::fs::write(&target, &bytes).unwrap();
        let report = verify_data_dir(copy.path());
        let config = ShardConfig {
            log: LogConfig {
                segment_bytes: 64 * 1024,
                snapshots_kept: 2,
            },
            snapshot_every_records: 0,
        };
        let open = Shard::open(&shard_dir(copy.path()), SHARD, config);
        match open {
            Ok(_) => {
                assert!(
                    report.is_ok(),
                    "case {case}: byte {at} of {}: recovery opened but verify says {:#?}",
                    target.display(),
                    report.faults
                );
            }
            Err(e) => {
                refused += 1;
                assert!(
                    !report.is_ok(),
                    "case {case}: byte {at} of {}: recovery refused ({e}) but verify found nothing",
                    target.display()
                );
            }
        }
    }
    assert!(refused > 0, "no case hit durable data");
}

// ---- The commit journal -------------------------------------------------

use reserva_engine::journal::limits::SEGMENT_BYTES_MIN;
use reserva_engine::journal::{
    FRAMES_START, FrameBuilder, JOURNAL_DIR_NAME, Journal, JournalConfig, JournalError, core_dir,
    recover,
};
use reserva_engine::shard::Staged;

const OTHER: u16 = 8;

/// A stopped node with one core: shards `SHARD` and `OTHER` and core 0's
/// commit journal, written the way the server does (apply, one journal
/// frame per round with a barrier, then the shard logs).
struct JournalNode {
    data: tempfile::TempDir,
    shards: Vec<Shard>,
    journal: Journal,
    /// Segment offset of every frame written (all in `seg-0000.jrnl`).
    frames: Vec<u64>,
    next_offset: u64,
    round: u64,
}

/// Where a round's records go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum To {
    /// Journal, then the shard logs (made durable): a checkpointed round.
    Both,
    /// Only the journal: the shard logs lag (no checkpoint yet).
    Journal,
    /// Nowhere (as if lost): later journal records leave a gap.
    Nowhere,
}

impl JournalNode {
    fn new() -> JournalNode {
        let data = tempfile::tempdir().unwrap();
        let config = ShardConfig {
            log: LogConfig {
                segment_bytes: 64 * 1024,
                snapshots_kept: 2,
            },
            snapshot_every_records: 0,
        };
        let shards = [SHARD, OTHER]
            .iter()
            .map(|&s| {
                let dir = data.path().join("shards").join(format!("{s:03}"));
                Shard::open(&dir, s, config.clone()).unwrap().0
            })
            .collect();
        let journal = Journal::create(
            &core_dir(&data.path().join(JOURNAL_DIR_NAME), 0),
            0,
            JournalConfig {
                segment_bytes: SEGMENT_BYTES_MIN,
                segments: 2,
            },
        )
        .unwrap();
        JournalNode {
            data,
            shards,
            journal,
            frames: Vec::new(),
            next_offset: FRAMES_START as u64,
            round: 0,
        }
    }

    /// One commit round of 20 requests per shard; returns the records
    /// staged per shard.
    fn round(&mut self, to: To) -> Vec<Vec<Staged>> {
        let eur = Currency::parse("EUR").unwrap();
        let round = self.round;
        self.round += 1;
        let mut staged = Vec::new();
        for shard in &mut self.shards {
            let id = shard.id();
            for i in 0..20u64 {
                let sku = key_on_shard("sku-", id, (i % 10) as usize);
                let command = if round == 0 && i < 10 {
                    Command::UpsertSku {
                        sku,
                        seller_id: "seller".into(),
                        title: "a title".into(),
                        price: Money {
                            amount_minor: 100,
                            currency: eur,
                        },
                    }
                } else {
                    Command::SetStock {
                        sku,
                        warehouse: "w1".into(),
                        on_hand: round * 1000 + i,
                    }
                };
                shard.apply(T0 + round, Request::new(command)).unwrap();
            }
            staged.push(shard.take_staged());
        }
        if to != To::Nowhere {
            let mut frame = FrameBuilder::new();
            for (shard, records) in self.shards.iter().zip(&staged) {
                for r in records {
                    frame.push(shard.id(), r.lsn, r.kind, &r.bytes);
                }
            }
            self.write_frame(frame);
        }
        if to == To::Both {
            for (shard, records) in self.shards.iter_mut().zip(&staged) {
                shard.append_committed(records).unwrap();
                shard.sync().unwrap();
            }
        }
        staged
    }

    /// Writes one frame with its barrier, as a commit round does.
    fn write_frame(&mut self, mut frame: FrameBuilder) {
        let bytes = frame.bytes() as u64;
        let job = self.journal.begin_write(&mut frame, true).unwrap();
        let result = job.run();
        self.journal.finish_write(job, result).unwrap();
        self.frames.push(self.next_offset);
        self.next_offset += bytes;
    }

    fn segment(&self) -> PathBuf {
        core_dir(&self.data.path().join(JOURNAL_DIR_NAME), 0).join("seg-0000.jrnl")
    }

    fn journal_dir(&self) -> PathBuf {
        core_dir(&self.data.path().join(JOURNAL_DIR_NAME), 0)
    }

    /// The in-memory checksum of `shard`: the state the node had answered.
    fn checksum(&self, shard: u16) -> u64 {
        self.shards
            .iter()
            .find(|s| s.id() == shard)
            .unwrap()
            .state()
            .checksum()
    }
}

/// Every file's bytes under `dir`, recursively, to prove verify changed nothing.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let b = std::fs::read(&p).unwrap();
                out.push((p, b));
            }
        }
    }
    out.sort();
    out
}

fn flip_bit(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x08;
    std::fs::write(path, &bytes).unwrap();
}

#[test]
fn records_only_in_the_journal_verify_clean_and_are_counted() {
    let mut node = JournalNode::new();
    node.round(To::Both);
    node.round(To::Both);
    node.round(To::Journal);
    node.round(To::Journal);
    let before = tree(node.data.path());
    let report = verify_data_dir(node.data.path());
    assert!(report.is_ok(), "{:#?}", report.faults);
    assert!(report.warnings.is_empty(), "{:#?}", report.warnings);
    assert_eq!(report.journals.len(), 1);
    let j = &report.journals[0];
    assert_eq!(j.dir, node.journal_dir());
    assert!(j.readable);
    assert_eq!((j.frames, j.records), (4, 4 * 2 * 20));
    assert!(j.torn.is_none());
    for id in [SHARD, OTHER] {
        let s = report.shards.iter().find(|s| s.shard == id).unwrap();
        assert_eq!(s.last_lsn, 40, "{s:?}");
        assert_eq!(s.journal_records, 80, "{s:?}");
        assert_eq!(s.journal_pending, 40, "{s:?}");
        // Log then journal replayed: the state the node had answered.
        assert_eq!(s.checksum, node.checksum(id), "{s:?}");
    }
    assert_eq!(report.journal_pending(), 80);
    assert_eq!(
        tree(node.data.path()),
        before,
        "verify must not modify anything"
    );

    // Recovery agrees: it appends exactly those records, and afterwards the
    // directory verifies clean with nothing pending.
    let answered = node.checksum(SHARD);
    node.shards.clear(); // stopped: the directory locks are released
    let shards_dir = node.data.path().join("shards");
    let applied = recover(
        &node.data.path().join(JOURNAL_DIR_NAME),
        &|s| shards_dir.join(format!("{s:03}")),
        &LogConfig {
            segment_bytes: 64 * 1024,
            snapshots_kept: 2,
        },
    )
    .unwrap();
    assert_eq!(applied.applied, report.journal_pending());
    let after = verify_data_dir(node.data.path());
    assert!(after.is_ok(), "{:#?}", after.faults);
    assert_eq!(after.journal_pending(), 0);
    let s = after.shards.iter().find(|s| s.shard == SHARD).unwrap();
    assert_eq!((s.last_lsn, s.checksum), (80, answered));
}

#[test]
fn a_flipped_bit_in_a_durable_journal_frame_is_a_fault_naming_segment_and_offset() {
    let mut node = JournalNode::new();
    node.round(To::Both);
    node.round(To::Journal);
    node.round(To::Journal);
    let segment = node.segment();
    // In the second frame's payload; the third frame proves it durable.
    let at = node.frames[1];
    flip_bit(&segment, at + 48 + 20);
    let before = tree(node.data.path());
    let report = verify_data_dir(node.data.path());
    let fault = report
        .faults
        .iter()
        .find(|f| f.kind == FaultKind::Corrupt)
        .unwrap_or_else(|| panic!("no corruption reported: {report:#?}"));
    assert_eq!(fault.shard, None);
    assert_eq!(fault.file, segment);
    assert_eq!(fault.offset, Some(at));
    assert!(!report.journals[0].readable);
    assert_eq!(
        tree(node.data.path()),
        before,
        "verify must not modify anything"
    );
    // Recovery refuses the same directory at the same place.
    node.shards.clear();
    let shards_dir = node.data.path().join("shards");
    match recover(
        &node.data.path().join(JOURNAL_DIR_NAME),
        &|s| shards_dir.join(format!("{s:03}")),
        &LogConfig::default(),
    ) {
        Err(JournalError::Corrupt {
            segment: s, offset, ..
        }) => assert_eq!((s, offset), (segment, at)),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_torn_last_journal_frame_is_a_warning_not_a_fault() {
    let mut node = JournalNode::new();
    node.round(To::Both);
    node.round(To::Journal);
    node.round(To::Journal);
    let segment = node.segment();
    let last = node.frames[2];
    flip_bit(&segment, last + 48 + 20);
    let report = verify_data_dir(node.data.path());
    assert!(report.is_ok(), "{:#?}", report.faults);
    let torn = report.journals[0].torn.as_ref().unwrap();
    assert_eq!((&torn.segment, torn.offset), (&segment, last));
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.file == segment && w.offset == Some(last)),
        "{:#?}",
        report.warnings
    );
    // The torn round was never answered: only the second round is pending.
    let s = report.shards.iter().find(|s| s.shard == SHARD).unwrap();
    assert_eq!((s.last_lsn, s.journal_pending), (20, 20), "{s:?}");
}

#[test]
fn a_journal_that_skips_records_of_a_shard_is_a_gap() {
    let mut node = JournalNode::new();
    node.round(To::Both);
    node.round(To::Nowhere);
    node.round(To::Journal);
    let report = verify_data_dir(node.data.path());
    let gaps: Vec<_> = report
        .faults
        .iter()
        .filter(|f| f.kind == FaultKind::Gap)
        .collect();
    assert_eq!(gaps.len(), 2, "{report:#?}");
    let gap = gaps.iter().find(|f| f.shard == Some(SHARD)).unwrap();
    assert_eq!(gap.file, node.journal_dir());
    assert_eq!(gap.lsn, Some(41));
    assert!(gap.detail.contains("ends at lsn 20"), "{}", gap.detail);
    // Recovery refuses it too.
    node.shards.clear();
    let shards_dir = node.data.path().join("shards");
    match recover(
        &node.data.path().join(JOURNAL_DIR_NAME),
        &|s| shards_dir.join(format!("{s:03}")),
        &LogConfig::default(),
    ) {
        Err(JournalError::Gap {
            log_last: 20,
            journal_first: 41,
            ..
        }) => {}
        other => panic!("expected Gap, got {other:?}"),
    }
}

#[test]
fn a_journal_record_that_differs_from_the_log_is_a_mismatch() {
    let mut node = JournalNode::new();
    node.round(To::Both);
    let staged = node.round(To::Nowhere);
    // The log holds the round; the journal holds it with one payload swapped.
    let mut frame = FrameBuilder::new();
    for (i, r) in staged[0].iter().enumerate() {
        let payload = if i == 5 {
            &staged[0][6].bytes
        } else {
            &r.bytes
        };
        frame.push(SHARD, r.lsn, r.kind, payload);
    }
    node.write_frame(frame);
    node.shards[0].append_committed(&staged[0]).unwrap();
    node.shards[0].sync().unwrap();
    node.shards[1].append_committed(&staged[1]).unwrap();
    node.shards[1].sync().unwrap();
    let report = verify_data_dir(node.data.path());
    let fault = report
        .faults
        .iter()
        .find(|f| f.kind == FaultKind::JournalMismatch)
        .unwrap_or_else(|| panic!("no mismatch reported: {report:#?}"));
    assert_eq!(fault.shard, Some(SHARD));
    assert_eq!(fault.lsn, Some(staged[0][5].lsn));
    assert!(
        fault
            .file
            .starts_with(node.data.path().join("shards").join(format!("{SHARD:03}"))),
        "{fault:?}"
    );
}

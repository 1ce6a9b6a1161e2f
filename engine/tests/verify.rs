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

//! A frozen data directory of log format version 1 must stay readable.
//!
//! `tests/fixtures/format-v1/shard-005/` was written by this file's
//! generator (run with `RESERVA_WRITE_FIXTURE=1`) and is committed. Recovery
//! must still read it and give exactly the frozen state; a change to the log
//! format, the record encoding or the state machine that breaks old data
//! fails here.

use std::path::{Path, PathBuf};

use reserva_engine::ids::key_on_shard;
use reserva_engine::log::LogConfig;
use reserva_engine::shard::{Shard, ShardConfig};
use reserva_engine::sm::*;

const SHARD: u16 = 5;
const T0: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
/// `ShardState::checksum()` of the fixture, frozen when it was written.
const FROZEN_CHECKSUM: u64 = 6_879_540_542_648_750_739;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/format-v1/shard-005")
}

fn config() -> ShardConfig {
    ShardConfig {
        log: LogConfig {
            segment_bytes: 64 * 1024,
            snapshots_kept: 2,
        },
        snapshot_every_records: 0,
    }
}

fn requests(round: u64) -> Vec<Request> {
    let sku = |i: u64| key_on_shard("fx-sku-", SHARD, i as usize);
    let user = |i: u64| key_on_shard("fx-user-", SHARD, i as usize);
    let price = Money {
        amount_minor: 1_250,
        currency: Currency::parse("EUR").unwrap(),
    };
    let mut v = vec![
        Request::new(Command::UpsertSku {
            sku: sku(round % 5),
            seller_id: "fx".into(),
            title: format!("item {round}"),
            price,
        }),
        Request::new(Command::AdjustStock {
            sku: sku(round % 5),
            warehouse: "w1".into(),
            delta: 40,
        }),
        Request::keyed(
            format!("fx-key-{round}"),
            Command::Reserve {
                owner: user(round % 3),
                lines: vec![ReserveLine {
                    sku: sku(round % 5),
                    qty: 2,
                }],
                ttl_ms: Some(60_000 + round * 1_000),
                warehouse_preference: vec![],
            },
        ),
        Request::new(Command::CartSet {
            user_id: user(round % 3),
            sku: sku(round % 5),
            qty: 1 + (round % 4) as u32,
        }),
    ];
    let line = OrderLine {
        sku: sku(round % 5),
        warehouse: "w1".into(),
        qty: 1,
        unit_price: price,
    };
    v.push(Request::new(Command::CreateOrder {
        user_id: user(round % 3),
        lines: vec![line],
        ship_to: "Fixture St 1".into(),
    }));
    v
}

fn write_fixture(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let (mut shard, _) = Shard::open(dir, SHARD, config()).unwrap();
    for round in 0..120u64 {
        let now = T0 + round * 500;
        for r in shard.commit(now, requests(round)).unwrap() {
            r.unwrap();
        }
        if round == 80 {
            shard.snapshot().unwrap();
        }
        // Confirm every third reservation, let the rest expire or stay.
        if round % 3 == 0 {
            let ids: Vec<_> = shard
                .state()
                .reservations()
                .map(|r| r.id)
                .filter(|id| id.sequence() % 3 == 0)
                .collect();
            let confirms = ids
                .into_iter()
                .map(|id| Request::new(Command::Confirm { reservation_id: id }));
            shard.commit(now, confirms).unwrap();
        }
        if let Some(tick) = shard.tick_request(now) {
            shard.commit(now, [tick]).unwrap();
        }
    }
    println!("fixture checksum: {}", shard.state().checksum());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn format_v1_fixture_still_recovers_to_its_frozen_state() {
    if std::env::var_os("RESERVA_WRITE_FIXTURE").is_some() {
        write_fixture(&fixture_dir());
        return;
    }
    // Recovery may write (prepare the next segment): work on a copy.
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir(), tmp.path());
    let (shard, report) = Shard::open(tmp.path(), SHARD, config()).unwrap();
    assert!(report.snapshot_lsn.is_some(), "the fixture has a snapshot");
    assert!(report.records_replayed > 0, "and a tail after it");
    assert!(report.tail_cut.is_none(), "the fixture has no torn tail");
    shard.state().check_invariants().unwrap();
    assert_eq!(
        shard.state().checksum(),
        FROZEN_CHECKSUM,
        "format-v1 fixture no longer recovers to its frozen state"
    );
    let (skus, _, orders, keys) = shard.state().counts();
    assert_eq!((skus, orders, keys), (5, 120, 120));
}

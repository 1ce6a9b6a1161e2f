//! Crash simulation: random batches, then a torn or corrupted log, then recovery.
//!
//! Each case runs random group commits on a real shard directory (small
//! segments, occasional snapshots), leaves one more batch appended but not
//! durable, and then damages the files the way a crash can: the unsynced
//! tail is cut at a random byte offset (everything after it zeroed) and
//! random bits are flipped in it. Recovery must give exactly the state after
//! the last durable batch (or after the unsynced batch, when the damage
//! missed it entirely), hold every invariant, and keep working afterwards.
//! A bit flipped inside the durable part, before the last durable batch,
//! must be reported as corruption naming the segment and offset. Segments
//! are sealed without a sync, so a power loss may also tear a sealed
//! segment's tail while later segments exist: that too is a torn tail.
//!
//! `RESERVA_CI=1` runs thousands of cut points; the default is a quick run.
//! A failure prints its seed; `RESERVA_CRASH_SEED=<seed>` replays that case.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use reserva_engine::ids::{ReservationId, key_on_shard};
use reserva_engine::log::{LogConfig, LogError};
use reserva_engine::shard::{Shard, ShardConfig, ShardError};
use reserva_engine::sm::*;

const SHARD: u16 = 42;
const T0: u64 = 1_900_000_000_000;

/// splitmix64: a tiny deterministic generator, so a seed replays a case exactly.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn cases(ci: u64, quick: u64) -> u64 {
    if std::env::var_os("RESERVA_CI").is_some() {
        ci
    } else {
        quick
    }
}

fn config(rng: &mut Rng) -> ShardConfig {
    let snapshot_every_records = [0, 0, 7, 40][rng.below(4) as usize];
    ShardConfig {
        log: LogConfig {
            segment_bytes: 64 * 1024,
            snapshots_kept: 2,
        },
        snapshot_every_records,
    }
}

/// Drives a shard with random requests and remembers what it can refer to.
struct Driver {
    rng: Rng,
    skus: Vec<String>,
    users: Vec<String>,
    live: Vec<ReservationId>,
    now: u64,
}

impl Driver {
    fn new(seed: u64) -> Self {
        Driver {
            rng: Rng(seed),
            skus: (0..4).map(|i| key_on_shard("sku-", SHARD, i)).collect(),
            users: (0..2).map(|i| key_on_shard("user-", SHARD, i)).collect(),
            live: Vec::new(),
            now: T0,
        }
    }

    fn setup(&self) -> Vec<Request> {
        let price = Money {
            amount_minor: 500,
            currency: Currency::parse("EUR").unwrap(),
        };
        let mut v = Vec::new();
        for s in &self.skus {
            v.push(Request::new(Command::UpsertSku {
                sku: s.clone(),
                seller_id: "s".into(),
                title: "t".into(),
                price,
            }));
            v.push(Request::new(Command::SetStock {
                sku: s.clone(),
                warehouse: "w1".into(),
                on_hand: 30,
            }));
            v.push(Request::new(Command::SetStock {
                sku: s.clone(),
                warehouse: "w2".into(),
                on_hand: 20,
            }));
        }
        v
    }

    fn request(&mut self, shard: &Shard) -> Request {
        let sku = self.skus[self.rng.below(4) as usize].clone();
        let user = self.users[self.rng.below(2) as usize].clone();
        match self.rng.below(10) {
            0..=3 => {
                let key = (self.rng.below(3) == 0).then(|| format!("k{}", self.rng.below(20)));
                let ttl_ms = Some([2_000, 60_000][self.rng.below(2) as usize]);
                let qty = 1 + self.rng.below(6) as u32;
                let c = Command::Reserve {
                    owner: user,
                    lines: vec![ReserveLine { sku, qty }],
                    ttl_ms,
                    warehouse_preference: vec![],
                };
                Request {
                    idempotency_key: key,
                    command: c,
                }
            }
            4 | 5 if !self.live.is_empty() => {
                let id = self
                    .live
                    .swap_remove(self.rng.below(self.live.len() as u64) as usize);
                if self.rng.below(2) == 0 {
                    Request::new(Command::Confirm { reservation_id: id })
                } else {
                    Request::new(Command::Release { reservation_id: id })
                }
            }
            6 => Request::new(Command::AdjustStock {
                sku,
                warehouse: "w1".into(),
                delta: 3,
            }),
            7 => {
                self.now += self.rng.below(3_000);
                let expire = shard.state().due_expirations(self.now, 100);
                Request::new(Command::Tick { expire })
            }
            8 => {
                let unit_price = Money {
                    amount_minor: 500,
                    currency: Currency::parse("EUR").unwrap(),
                };
                let lines = vec![OrderLine {
                    sku,
                    warehouse: "w1".into(),
                    qty: 1,
                    unit_price,
                }];
                Request::new(Command::CreateOrder {
                    user_id: user,
                    lines,
                    ship_to: "x".into(),
                })
            }
            _ => Request::new(Command::CartSet {
                user_id: user,
                sku,
                qty: 1 + self.rng.below(3) as u32,
            }),
        }
    }

    /// Applies one random batch (not synced); returns nothing, remembers reservations.
    fn batch(&mut self, shard: &mut Shard) {
        let n = 1 + self.rng.below(12);
        let reqs: Vec<Request> = (0..n).map(|_| self.request(shard)).collect();
        for r in shard
            .apply_batch(self.now, reqs)
            .unwrap()
            .into_iter()
            .flatten()
        {
            if let Outcome::Reserved { reservation_id, .. } = r {
                self.live.push(reservation_id);
            }
        }
    }
}

/// Where the next record goes: (segment file, byte offset).
fn position(shard: &Shard) -> (PathBuf, u64) {
    shard.log().position()
}

/// Rewrites the file from `at` to its end with `f` applied; returns whether
/// the first `watch` bytes from `at` actually changed.
fn patch(path: &Path, at: u64, watch: u64, f: impl FnOnce(&mut [u8])) -> bool {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = file.metadata().unwrap().len();
    let mut buf = vec![0u8; (len - at) as usize];
    file.seek(SeekFrom::Start(at)).unwrap();
    file.read_exact(&mut buf).unwrap();
    let before = buf.clone();
    f(&mut buf);
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(&buf).unwrap();
    file.sync_all().unwrap();
    let watch = (watch as usize).min(buf.len());
    before[..watch] != buf[..watch]
}

fn torn_tail_case(seed: u64) {
    let mut d = Driver::new(seed);
    let cfg = config(&mut d.rng);
    let dir = tempfile::tempdir().unwrap();
    let (mut shard, _) = Shard::open(dir.path(), SHARD, cfg.clone()).unwrap();
    shard.commit(d.now, d.setup()).unwrap();
    for _ in 0..1 + d.rng.below(15) {
        d.batch(&mut shard);
        shard.sync().unwrap();
        shard.maybe_snapshot().unwrap();
    }
    let durable = shard.state().checksum();
    let (seg_a, start) = position(&shard);
    d.batch(&mut shard);
    let (seg_b, end) = position(&shard);
    let unsynced = shard.state().checksum();
    let wrote_any = shard.last_lsn() != shard.durable_lsn();
    drop(shard);

    // The damaged region: the unsynced batch and whatever follows it.
    let (seg, from, to) = if seg_a == seg_b {
        (seg_a, start, end)
    } else {
        (seg_b, 0, end)
    };
    let seg_len = std::fs::metadata(&seg).unwrap().len();
    let cut = from + d.rng.below(to - from + 64).min(seg_len - from);
    let flips: Vec<u64> = (0..d.rng.below(3))
        .map(|_| from + d.rng.below((seg_len - from).min(8192)))
        .collect();
    let flip_bits: Vec<u8> = flips.iter().map(|_| 1u8 << d.rng.below(8)).collect();
    let damaged = patch(&seg, from, to - from, |buf| {
        buf[(cut - from) as usize..].fill(0);
        for (at, bit) in flips.iter().zip(&flip_bits) {
            buf[(at - from) as usize] ^= bit;
        }
    });
    let batch_intact = !damaged;

    let (mut shard, report) = Shard::open(dir.path(), SHARD, cfg.clone())
        .unwrap_or_else(|e| panic!("seed {seed}: recovery failed: {e}"));
    let got = shard.state().checksum();
    let expected = if batch_intact && wrote_any {
        unsynced
    } else {
        durable
    };
    assert_eq!(
        got,
        expected,
        "seed {seed}: recovered state is not the last durable state; damage: {} bytes {from}..{to}, cut {cut}, flips {flips:?}; durable {durable}, unsynced {unsynced}; report {report:?}",
        seg.display()
    );
    shard
        .state()
        .check_invariants()
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));

    // The recovered shard keeps working and recovers again.
    d.batch(&mut shard);
    shard.sync().unwrap();
    let after = shard.state().checksum();
    drop(shard);
    let (shard, _) = Shard::open(dir.path(), SHARD, cfg).unwrap();
    assert_eq!(
        shard.state().checksum(),
        after,
        "seed {seed}: second recovery differs"
    );
}

fn corrupt_middle_case(seed: u64) {
    let mut d = Driver::new(seed);
    let cfg = ShardConfig {
        snapshot_every_records: 0,
        ..config(&mut d.rng)
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut shard, _) = Shard::open(dir.path(), SHARD, cfg.clone()).unwrap();
    shard.commit(d.now, d.setup()).unwrap();
    let mut batches = Vec::new();
    for _ in 0..2 + d.rng.below(10) {
        let a = position(&shard);
        let lsn = shard.last_lsn();
        d.batch(&mut shard);
        shard.sync().unwrap();
        let b = position(&shard);
        if shard.last_lsn() > lsn && a.0 == b.0 {
            batches.push((a.0, a.1, b.1));
        }
    }
    // One more durable batch after the damaged one proves it was durable.
    let before_last = batches.len();
    let lsn = shard.last_lsn();
    d.batch(&mut shard);
    d.batch(&mut shard);
    shard.sync().unwrap();
    assert!(shard.last_lsn() > lsn);
    drop(shard);
    if before_last == 0 {
        return;
    }
    let (seg, start, end) = batches[d.rng.below(before_last as u64) as usize].clone();
    let at = start + d.rng.below(end - start);
    let bit = 1u8 << d.rng.below(8);
    patch(&seg, at, 1, |buf| buf[0] ^= bit);
    match Shard::open(dir.path(), SHARD, cfg) {
        Err(ShardError::Log(LogError::Corrupt {
            segment, offset, ..
        })) => {
            assert_eq!(segment, seg, "seed {seed}: wrong segment named");
            assert!(
                (start..end).contains(&offset) && offset <= at,
                "seed {seed}: offset {offset} not in {start}..{end}"
            );
        }
        Err(e) => panic!("seed {seed}: flipped bit at {at} reported as {e}, not as corruption"),
        Ok(_) => panic!(
            "seed {seed}: a bit flipped at {} offset {at} of a durable record went unnoticed",
            seg.display()
        ),
    }
}

/// Many unsynced batches, rolling over at least twice after the last
/// barrier, then a power loss: the segment that was active at the barrier
/// (sealed since, never synced) loses or garbles bytes written after the
/// barrier, and each later segment keeps its bytes, loses some, or loses its
/// name. Recovery must not call this corruption, and must give the state
/// after some batch at or after the last durable one.
fn unsynced_rollovers_case(seed: u64) {
    let mut d = Driver::new(seed);
    let cfg = ShardConfig {
        snapshot_every_records: 0,
        ..config(&mut d.rng)
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut shard, _) = Shard::open(dir.path(), SHARD, cfg.clone()).unwrap();
    shard.commit(d.now, d.setup()).unwrap();
    for _ in 0..d.rng.below(6) {
        d.batch(&mut shard);
        shard.sync().unwrap();
    }
    let durable_lsn = shard.durable_lsn();
    let mut states = std::collections::BTreeMap::new();
    states.insert(durable_lsn, shard.state().checksum());
    let (sealed, start) = position(&shard);
    let mut segments = vec![sealed.clone()];
    while segments.len() < 3 {
        d.batch(&mut shard);
        states.insert(shard.last_lsn(), shard.state().checksum());
        let (seg, _) = position(&shard);
        if segments.last() != Some(&seg) {
            segments.push(seg);
        }
    }
    assert_eq!(shard.durable_lsn(), durable_lsn);
    drop(shard);

    let len = std::fs::metadata(&sealed).unwrap().len();
    let cut = start + d.rng.below(len - start);
    let flips: Vec<u64> = (0..d.rng.below(3))
        .map(|_| start + d.rng.below((len - start).min(8192)))
        .collect();
    patch(&sealed, start, 0, |buf| {
        buf[(cut - start) as usize..].fill(0);
        for at in &flips {
            buf[(at - start) as usize] ^= 1 << (at % 8);
        }
    });
    for (i, seg) in segments[1..].iter().enumerate() {
        match d.rng.below(3) {
            0 => {}
            1 => {
                let from = d.rng.below(len);
                patch(seg, from, 0, |buf| buf.fill(0));
            }
            _ => {
                let undone = dir.path().join(format!("seg-prepared-undone-{i}.tmp"));
                std::fs::rename(seg, undone).unwrap();
            }
        }
    }

    let (mut shard, report) = Shard::open(dir.path(), SHARD, cfg.clone()).unwrap_or_else(|e| {
        panic!("seed {seed}: power loss after unsynced rollovers reported as {e}")
    });
    let lsn = shard.last_lsn();
    assert!(
        lsn >= durable_lsn,
        "seed {seed}: lost durable records ({lsn} < {durable_lsn}); report {report:?}"
    );
    assert_eq!(
        states.get(&lsn),
        Some(&shard.state().checksum()),
        "seed {seed}: recovered to lsn {lsn}, not a state after a batch; cut {cut}, flips {flips:?}; report {report:?}"
    );
    shard
        .state()
        .check_invariants()
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    d.batch(&mut shard);
    shard.sync().unwrap();
    let after = shard.state().checksum();
    drop(shard);
    let (shard, _) = Shard::open(dir.path(), SHARD, cfg).unwrap();
    assert_eq!(
        shard.state().checksum(),
        after,
        "seed {seed}: second recovery differs"
    );
}

fn seeds(n: u64, salt: u64) -> Vec<u64> {
    if let Some(s) = std::env::var("RESERVA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![s];
    }
    (0..n)
        .map(|i| i.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ salt)
        .collect()
}

#[test]
fn torn_tails_recover_to_the_last_durable_batch() {
    for seed in seeds(cases(3_000, 200), 0x7041) {
        torn_tail_case(seed);
    }
}

#[test]
fn a_flipped_bit_in_durable_records_is_reported() {
    for seed in seeds(cases(600, 60), 0xC0FF) {
        corrupt_middle_case(seed);
    }
}

#[test]
fn power_loss_after_unsynced_rollovers_is_a_torn_tail() {
    for seed in seeds(cases(600, 20), 0x5E11) {
        unsynced_rollovers_case(seed);
    }
}

#[test]
fn a_failed_sync_poisons_the_shard_and_recovery_restores_it() {
    let mut d = Driver::new(7);
    let cfg = config(&mut d.rng);
    let dir = tempfile::tempdir().unwrap();
    let (mut shard, _) = Shard::open(dir.path(), SHARD, cfg.clone()).unwrap();
    shard.commit(d.now, d.setup()).unwrap();
    let durable = shard.state().checksum();
    d.batch(&mut shard);
    let applied = shard.state().checksum();
    shard.fail_next_sync();
    assert!(shard.sync().is_err());
    assert!(shard.is_poisoned());
    assert!(matches!(
        shard.apply_batch(d.now, d.setup()),
        Err(ShardError::Poisoned { shard: SHARD })
    ));
    assert!(matches!(shard.sync(), Err(ShardError::Poisoned { .. })));
    drop(shard);
    let (shard, _) = Shard::open(dir.path(), SHARD, cfg).unwrap();
    // The batch whose sync failed may or may not have reached the disk; either
    // way recovery gives a state the shard actually passed through.
    let got = shard.state().checksum();
    shard.state().check_invariants().unwrap();
    assert!(
        got == durable || got == applied,
        "recovered a state the shard never had"
    );
}

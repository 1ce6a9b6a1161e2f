//! Power loss at every step of the commit path: the per-core journal and the
//! shard logs together, recovered by `journal::recover` then `Shard::open`.
//!
//! A seeded workload drives 2 to 4 real shards and one core's real journal
//! (two minimum-size segments, so frames roll over and segments are zeroed
//! and reused) exactly as a core does: each round applies a few requests per
//! shard, writes the staged records as one frame with a barrier, then
//! appends them to the shard logs and answers. Now and then a shard log is
//! checkpointed (inline, or begun in one round and run after the next
//! round's appends, as the checkpointer does), snapshotted, and the oldest
//! journal segment is released and zeroed once its pins are durable.
//!
//! The storage double keeps, for every file, the bytes the last barrier
//! that covered it made durable, next to what reading it returns now. Every
//! step of the workload (a frame write, the appends of a round, a shard-log
//! barrier, the zeroing of a segment) is a cut point: a crash image restores
//! every file to its durable bytes and keeps an arbitrary part of what was
//! written since (nothing, all, a prefix, random 4 KiB pages, random 512-byte
//! sectors), so the frame in flight is torn, shard-log tails are lost,
//! a checkpoint is half done, a segment is half zeroed (its header first, as
//! `ZeroJob` orders it). Names no directory `fsync` made durable may vanish,
//! and a log segment installed since the last barrier may be found under its
//! temporary name again.
//!
//! Recovery must succeed (no `Corrupt`, no `Gap`) and give every shard the
//! state after one same round: at least the last round whose frame passed
//! its barrier (so every answered round), at most the round in flight.
//!
//! Some recovered images then commit one more round through a fresh journal
//! and are recovered again. A second test flips a bit in a frame that a
//! later frame (or a later segment) proves durable: recovery must refuse
//! with `JournalError::Corrupt` naming that segment and the frame's offset.
//!
//! `RESERVA_CI=1` runs three seeds and builds an image at every frame write,
//! checkpoint and zeroing and at every other append; the default is one
//! seed with a sample of those cut points. A failure prints its seed and
//! cut point; `RESERVA_JOURNAL_CRASH_SEED=<seed>` replays that seed with an
//! image at every cut point (image `k` of a cut point is the same in every
//! mode).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use reserva_engine::ids::{ReservationId, key_on_shard};
use reserva_engine::journal::limits::SEGMENT_BYTES_MIN;
use reserva_engine::journal::{
    self, FRAME_HEADER_BYTES, FRAMES_START, FrameBuilder, JOURNAL_DIR_NAME, Journal, JournalConfig,
    JournalError, SEGMENT_HEADER_BYTES, core_dir,
};
use reserva_engine::limits::TICK_EXPIRIES_MAX;
use reserva_engine::log::{LogConfig, PendingSync};
use reserva_engine::shard::{Shard, ShardConfig, Staged};
use reserva_engine::sm::*;

const CORE: u16 = 3;
const T0: u64 = 1_900_000_000_000;
const PAGE: usize = 4096;
const SECTOR: usize = 512;
static ZERO_PAGE: [u8; PAGE] = [0; PAGE];

/// splitmix64: a tiny deterministic generator, so a seed replays a case exactly.
#[derive(Clone)]
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
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// A generator for one crash image, independent of how many images other
/// cut points drew.
fn image_rng(seed: u64, step: u64, image: u64) -> Rng {
    let mut r = Rng(seed ^ step.wrapping_mul(0xA24B_AED4_963E_E407));
    r.0 ^= r.next() ^ image.wrapping_mul(0x9FB2_1C65_1E98_DF25);
    r
}

fn ci() -> bool {
    std::env::var_os("RESERVA_CI").is_some()
}

fn replay_seed() -> Option<u64> {
    std::env::var("RESERVA_JOURNAL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
}

fn seeds(n: u64, salt: u64) -> Vec<u64> {
    if let Some(s) = replay_seed() {
        return vec![s];
    }
    (0..n)
        .map(|i| i.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ salt)
        .collect()
}

fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 << 10,
        snapshots_kept: 1,
    }
}

fn shard_config() -> ShardConfig {
    ShardConfig {
        log: log_config(),
        snapshot_every_records: 0,
    }
}

fn journal_config() -> JournalConfig {
    JournalConfig {
        segment_bytes: SEGMENT_BYTES_MIN,
        segments: 2,
    }
}

/// A shard's directory, relative to the data directory.
fn shard_rel(shard: u16) -> PathBuf {
    PathBuf::from(format!("shard-{shard:03}"))
}

fn journal_rel() -> PathBuf {
    PathBuf::from(JOURNAL_DIR_NAME)
}

fn is_log_segment(rel: &Path) -> bool {
    rel.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".log"))
}

thread_local! {
    static ZERO: Rc<[u8]> = Rc::from(&ZERO_PAGE[..]);
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes == &ZERO_PAGE[..bytes.len()]
}

/// A file's bytes, page by page. Versions of a file share the pages they
/// have in common, so keeping and comparing versions is cheap.
#[derive(Clone)]
struct Pages {
    len: usize,
    pages: Vec<Rc<[u8]>>,
}

impl Pages {
    /// `bytes`, sharing every page that `like` holds equal.
    fn new(bytes: &[u8], like: Option<&Pages>) -> Pages {
        let pages = bytes
            .chunks(PAGE)
            .enumerate()
            .map(|(i, chunk)| Pages::share(chunk, like.and_then(|l| l.pages.get(i))))
            .collect();
        Pages {
            len: bytes.len(),
            pages,
        }
    }

    fn share(chunk: &[u8], like: Option<&Rc<[u8]>>) -> Rc<[u8]> {
        match like {
            Some(p) if **p == *chunk => p.clone(),
            _ if chunk.len() == PAGE && is_zero(chunk) => ZERO.with(Rc::clone),
            _ => Rc::from(chunk),
        }
    }

    fn page(&self, i: usize) -> &[u8] {
        self.pages.get(i).map_or(&[], |p| p)
    }

    fn to_vec(&self) -> Vec<u8> {
        self.pages.concat()
    }

    /// Re-reads the pages holding bytes `from..to` of `file`.
    fn reread(&mut self, file: &File, from: usize, to: usize) {
        let to = to.min(self.len);
        for i in from / PAGE..to.div_ceil(PAGE) {
            let at = i * PAGE;
            let mut buf = vec![0u8; PAGE.min(self.len - at)];
            file.read_exact_at(&mut buf, at as u64).unwrap();
            self.pages[i] = Pages::share(&buf, Some(&self.pages[i]));
        }
    }
}

/// Writes a file of `len` bytes made of `pages`, leaving zero pages as holes.
fn write_pages(path: &Path, len: usize, pages: &[Cow<'_, [u8]>]) {
    let f = File::create(path).unwrap();
    f.set_len(len as u64).unwrap();
    let mut i = 0;
    while i < pages.len() {
        if is_zero(&pages[i]) {
            i += 1;
            continue;
        }
        let start = i;
        let mut run = Vec::new();
        while i < pages.len() && !is_zero(&pages[i]) {
            run.extend_from_slice(&pages[i]);
            i += 1;
        }
        f.write_all_at(&run, (start * PAGE) as u64).unwrap();
    }
}

/// How one dirty page of a crash image is made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Take {
    /// Its durable bytes: nothing written since reached the disk.
    Old,
    /// What was written last.
    New,
    /// Some 512-byte sectors of what was written (bit `s` set: sector `s` is new).
    Sectors(u8),
}

/// What a crash image made of the bytes written since the last barrier.
#[derive(Debug, Default, Clone, Copy)]
struct Mixed {
    /// Dirty pages found durable in part or in full.
    kept: usize,
    /// Dirty pages not (fully) found.
    lost: usize,
}

/// The storage double: per file, what a read returns now and what a barrier
/// made durable. Files are keyed by their path relative to the data directory.
struct Disk {
    root: PathBuf,
    current: BTreeMap<PathBuf, Pages>,
    /// The durable bytes of each file. A file without an entry was created
    /// zero-filled and synced (a prepared log segment): it holds zeros.
    durable: BTreeMap<PathBuf, Pages>,
    /// Names a directory `fsync` made durable.
    durable_names: BTreeSet<PathBuf>,
}

/// Every file under `dir`, by path relative to `root`.
fn list_tree(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
    let Ok(listing) = fs::read_dir(dir) else {
        return;
    };
    for entry in listing {
        let path = entry.unwrap().path();
        if path.is_dir() {
            list_tree(root, &path, out);
        } else {
            out.insert(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
}

impl Disk {
    /// Everything in `root` is durable (the logs were opened and the journal
    /// created, which sync all of it).
    fn new(root: &Path) -> Disk {
        let mut disk = Disk {
            root: root.into(),
            current: BTreeMap::new(),
            durable: BTreeMap::new(),
            durable_names: BTreeSet::new(),
        };
        disk.refresh(Path::new(""), |_| true);
        disk.durable = disk.current.clone();
        disk.durable_names = disk.current.keys().cloned().collect();
        disk
    }

    fn load(&mut self, rel: &Path) {
        let bytes = fs::read(self.root.join(rel)).unwrap();
        let pages = Pages::new(&bytes, self.current.get(rel));
        self.current.insert(rel.into(), pages);
    }

    /// Re-reads bytes `from..to` of `rel` (the rest is known unchanged).
    fn load_range(&mut self, rel: &Path, from: usize, to: usize) {
        let file = File::open(self.root.join(rel)).unwrap();
        self.current.get_mut(rel).unwrap().reread(&file, from, to);
    }

    /// Re-reads the files under `sub` that are new or that `changed` names;
    /// forgets those that are gone (deleted, or renamed).
    fn refresh(&mut self, sub: &Path, changed: impl Fn(&Path) -> bool) {
        let mut found = BTreeSet::new();
        list_tree(&self.root, &self.root.join(sub), &mut found);
        let gone: Vec<PathBuf> = self
            .current
            .keys()
            .filter(|p| p.starts_with(sub) && !found.contains(*p))
            .cloned()
            .collect();
        for p in gone {
            self.current.remove(&p);
            self.durable.remove(&p);
            self.durable_names.remove(&p);
        }
        for p in found {
            if !self.current.contains_key(&p) || changed(&p) {
                self.load(&p);
            }
        }
    }

    /// Panics unless every file under `sub` reads as the model says: the
    /// model must not miss a write.
    fn check(&self, sub: &Path, ctx: &str) {
        let mut found = BTreeSet::new();
        list_tree(&self.root, &self.root.join(sub), &mut found);
        let known: BTreeSet<PathBuf> = self
            .current
            .keys()
            .filter(|p| p.starts_with(sub))
            .cloned()
            .collect();
        assert_eq!(found, known, "{ctx}: the model lost track of files");
        for p in found {
            let bytes = fs::read(self.root.join(&p)).unwrap();
            let known = &self.current[&p];
            assert!(
                bytes.len() == known.len
                    && bytes
                        .chunks(PAGE)
                        .enumerate()
                        .all(|(i, c)| c == known.page(i)),
                "{ctx}: the model missed a write to {}",
                p.display()
            );
        }
    }

    fn names_under(&self, sub: &Path) -> Vec<PathBuf> {
        self.current
            .keys()
            .filter(|p| p.starts_with(sub))
            .cloned()
            .collect()
    }

    /// A barrier made these files (their bytes as read now, and their names) durable.
    fn sync(&mut self, names: &[PathBuf]) {
        for n in names {
            if let Some(c) = self.current.get(n) {
                self.durable.insert(n.clone(), c.clone());
                self.durable_names.insert(n.clone());
            }
        }
    }

    /// The pages of `rel` whose current bytes differ from its durable ones.
    fn dirty_pages(&self, rel: &Path) -> Vec<usize> {
        let cur = &self.current[rel];
        let old = self.durable.get(rel);
        (0..cur.pages.len())
            .filter(|&i| {
                let c = &cur.pages[i];
                match old.and_then(|o| o.pages.get(i)) {
                    Some(o) => !Rc::ptr_eq(o, c) && **o != **c,
                    None => !is_zero(c),
                }
            })
            .collect()
    }

    /// Writes what the disk could hold after a power loss now into `out`.
    /// `zeroing` is the journal segment a `ZeroJob` is clearing: its header
    /// page is made durable before the rest is written. Returns, per file,
    /// how much of its unsynced bytes survived.
    fn crash_image(
        &self,
        rng: &mut Rng,
        zeroing: Option<&Path>,
        out: &Path,
    ) -> BTreeMap<PathBuf, Mixed> {
        let mut mixed = BTreeMap::new();
        for (n, (rel, cur)) in self.current.iter().enumerate() {
            let mut name = rel.clone();
            if !self.durable_names.contains(rel) {
                match rng.below(4) {
                    // Its directory entry never reached the disk.
                    0 => continue,
                    // The rename that installed it was lost.
                    1 if is_log_segment(rel) => {
                        name = rel.with_file_name(format!("seg-prepared-{}.tmp", 900_000 + n));
                    }
                    _ => {}
                }
            }
            let path = out.join(&name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            let dirty = self.dirty_pages(rel);
            if dirty.is_empty() && rel.starts_with(journal_rel()) {
                // Recovery only reads journal segments (then unlinks them).
                fs::hard_link(self.root.join(rel), &path).unwrap();
                continue;
            }
            let takes = if zeroing == Some(rel.as_path()) {
                zeroing_takes(rng, &dirty)
            } else {
                torn_takes(rng, dirty.len())
            };
            let old = self.durable.get(rel);
            let mut pages: Vec<Cow<'_, [u8]>> = (0..cur.pages.len())
                .map(|i| match old.map(|o| o.page(i)) {
                    Some(p) if p.len() == cur.page(i).len() => Cow::Borrowed(p),
                    _ => Cow::Owned(vec![0; cur.page(i).len()]),
                })
                .collect();
            let mut m = Mixed::default();
            for (&p, &take) in dirty.iter().zip(&takes) {
                match take {
                    Take::Old => m.lost += 1,
                    Take::New => {
                        pages[p] = Cow::Borrowed(cur.page(p));
                        m.kept += 1;
                    }
                    Take::Sectors(mask) => {
                        let new = cur.page(p);
                        let page = pages[p].to_mut();
                        for s in 0..PAGE / SECTOR {
                            let a = (s * SECTOR).min(new.len());
                            let b = (a + SECTOR).min(new.len());
                            if mask & (1 << s) != 0 {
                                page[a..b].copy_from_slice(&new[a..b]);
                            }
                        }
                        m.kept += usize::from(mask != 0);
                        m.lost += usize::from(mask != 0xff);
                    }
                }
            }
            write_pages(&path, cur.len, &pages);
            if !dirty.is_empty() {
                mixed.insert(rel.clone(), m);
            }
        }
        mixed
    }

    /// Writes the files as they read now (a clean stop) into `out`.
    fn write_current(&self, out: &Path) {
        for (rel, cur) in &self.current {
            let path = out.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            let pages: Vec<Cow<'_, [u8]>> =
                cur.pages.iter().map(|p| Cow::Borrowed(&p[..])).collect();
            write_pages(&path, cur.len, &pages);
        }
    }
}

/// A torn write of `n` dirty pages: none, all, a prefix, random pages, or
/// random sectors.
fn torn_takes(rng: &mut Rng, n: usize) -> Vec<Take> {
    let page_or_sectors = |rng: &mut Rng| match rng.below(3) {
        0 => Take::Old,
        1 => Take::New,
        _ => Take::Sectors(rng.next() as u8),
    };
    match rng.below(8) {
        0 => vec![Take::Old; n],
        1 => vec![Take::New; n],
        2 | 3 => {
            let k = rng.below(n as u64 + 1) as usize;
            (0..n)
                .map(|i| if i < k { Take::New } else { Take::Old })
                .collect()
        }
        4 | 5 => (0..n)
            .map(|_| if rng.one_in(2) { Take::New } else { Take::Old })
            .collect(),
        _ => (0..n).map(|_| page_or_sectors(rng)).collect(),
    }
}

/// A `ZeroJob` cut short: either its header page is not durable yet (and
/// nothing else was written), or it is and the rest is partly zeroed.
fn zeroing_takes(rng: &mut Rng, dirty: &[usize]) -> Vec<Take> {
    let header_durable = rng.one_in(2);
    dirty
        .iter()
        .map(|&p| match (p, header_durable) {
            (0, true) => Take::New,
            (0, false) => {
                if rng.one_in(2) {
                    Take::New
                } else {
                    Take::Old
                }
            }
            (_, true) => {
                if rng.one_in(2) {
                    Take::New
                } else {
                    Take::Old
                }
            }
            (_, false) => Take::Old,
        })
        .collect()
}

/// One shard's keys and the reservations it can still refer to.
struct Driver {
    id: u16,
    skus: Vec<String>,
    users: Vec<String>,
    live: Vec<ReservationId>,
}

impl Driver {
    fn new(id: u16) -> Self {
        Driver {
            id,
            skus: (0..4).map(|i| key_on_shard("sku-", id, i)).collect(),
            users: (0..2).map(|i| key_on_shard("user-", id, i)).collect(),
            live: Vec::new(),
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
            for (warehouse, on_hand) in [("w1", 30), ("w2", 20)] {
                v.push(Request::new(Command::SetStock {
                    sku: s.clone(),
                    warehouse: warehouse.into(),
                    on_hand,
                }));
            }
        }
        v
    }

    /// A random request, built the way `crash.rs` builds them.
    fn request(&mut self, rng: &mut Rng, now: u64, state: &ShardState) -> Request {
        let sku = self.skus[rng.below(4) as usize].clone();
        let user = self.users[rng.below(2) as usize].clone();
        match rng.below(10) {
            0..=3 => {
                let key = rng.one_in(3).then(|| format!("k{}", rng.below(20)));
                let ttl_ms = Some([2_000, 60_000][rng.below(2) as usize]);
                let qty = 1 + rng.below(6) as u32;
                Request {
                    idempotency_key: key,
                    command: Command::Reserve {
                        owner: user,
                        lines: vec![ReserveLine { sku, qty }],
                        ttl_ms,
                        warehouse_preference: vec![],
                    },
                }
            }
            4 | 5 if !self.live.is_empty() => {
                let id = self
                    .live
                    .swap_remove(rng.below(self.live.len() as u64) as usize);
                if rng.one_in(2) {
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
            7 => Request::new(Command::Tick {
                expire: state.due_expirations(now, 100),
            }),
            8 => {
                let unit_price = Money {
                    amount_minor: 500,
                    currency: Currency::parse("EUR").unwrap(),
                };
                Request::new(Command::CreateOrder {
                    user_id: user,
                    lines: vec![OrderLine {
                        sku,
                        warehouse: "w1".into(),
                        qty: 1,
                        unit_price,
                    }],
                    ship_to: "x".into(),
                })
            }
            _ => Request::new(Command::CartSet {
                user_id: user,
                sku,
                qty: 1 + rng.below(3) as u32,
            }),
        }
    }

    /// A large record (about 32 KiB) that changes little: a `Tick` listing
    /// reservations this shard never minted. It fills journal segments fast.
    fn bulk(&self, rng: &mut Rng) -> Request {
        let expire = (0..TICK_EXPIRIES_MAX)
            .map(|_| ReservationId::new(self.id, (1 << 50) + rng.below(1 << 40)).unwrap())
            .collect();
        Request::new(Command::Tick { expire })
    }
}

/// A step of the workload: where a crash can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A round's frame is being written (pwrite + fdatasync).
    Write { round: usize },
    /// A round's records are being appended to the shard logs.
    Append { round: usize },
    /// A shard-log barrier is running (begun in an earlier round if `deferred`).
    Checkpoint { shard: u16, deferred: bool },
    /// A released journal segment is being zeroed for reuse.
    Zero,
}

/// How many crash images to build, and at which cut points.
#[derive(Debug, Clone, Copy)]
struct Images {
    /// Images per selected cut point (0: none).
    per_cut: u64,
    /// 0: every cut point. Otherwise one frame write and one checkpoint in
    /// `stride`, one append in `2 * stride` (appends lose only shard-log
    /// tails, which nearly every image loses), and every zeroing.
    stride: u64,
}

/// What the runs covered.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    rounds: usize,
    cuts: u64,
    images: u64,
    /// Shard logs lacked records the journal supplied.
    log_behind: u64,
    /// The journal ended in a torn frame.
    journal_torn: u64,
    /// Both at once.
    both: u64,
    /// The frame in flight was recovered / lost.
    in_flight_kept: u64,
    in_flight_lost: u64,
    /// A shard-log barrier cut half way (some of its pages durable, some not).
    checkpoint_partial: u64,
    /// Deferred checkpoints (begun before a later round's appends).
    deferred_checkpoints: u64,
    /// A segment half zeroed.
    zeroing: u64,
    /// Journal segments zeroed and reused.
    segments_zeroed: u64,
    /// Journal segment generations written (rollovers + 1).
    journal_generations: u64,
    /// Shard-log segments seen.
    log_segments: u64,
    /// Frames that found the journal full.
    journal_full: u64,
    snapshots: u64,
    /// Images whose recovered node committed again and recovered again.
    restarted: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.rounds += o.rounds;
        self.cuts += o.cuts;
        self.images += o.images;
        self.log_behind += o.log_behind;
        self.journal_torn += o.journal_torn;
        self.both += o.both;
        self.in_flight_kept += o.in_flight_kept;
        self.in_flight_lost += o.in_flight_lost;
        self.checkpoint_partial += o.checkpoint_partial;
        self.deferred_checkpoints += o.deferred_checkpoints;
        self.zeroing += o.zeroing;
        self.segments_zeroed += o.segments_zeroed;
        self.journal_generations += o.journal_generations;
        self.log_segments += o.log_segments;
        self.journal_full += o.journal_full;
        self.snapshots += o.snapshots;
        self.restarted += o.restarted;
    }
}

/// A shard-log barrier begun in one round and run in a later one, with the
/// files it covers (those that existed when it began).
struct Deferred {
    barrier: PendingSync,
    files: Vec<PathBuf>,
}

/// One seeded run: the live data directory, the model of its disk, and what
/// every round left in the shards.
struct Sim {
    seed: u64,
    rng: Rng,
    images: Images,
    tmp: tempfile::TempDir,
    disk: Disk,
    journal: Journal,
    shards: Vec<Shard>,
    drivers: Vec<Driver>,
    deferred: Vec<Option<Deferred>>,
    /// Checksum of every shard's state after each round (round 0: empty).
    sums: Vec<Vec<u64>>,
    /// Every round up to this one passed its journal barrier.
    durable_round: usize,
    /// Every round up to this one was answered.
    acked_round: usize,
    step: u64,
    now: u64,
    counts: Counts,
    generations: BTreeSet<(PathBuf, u64)>,
    log_segments: BTreeSet<PathBuf>,
    /// Where the next frame goes in each journal segment with a header.
    frames_end: BTreeMap<PathBuf, usize>,
}

/// The generation (`first_seq`) of a journal segment with a valid-looking header.
fn first_seq(segment: &Pages) -> Option<u64> {
    let h = segment.page(0);
    (h.len() >= SEGMENT_HEADER_BYTES && h[..4] == *b"RSVJ")
        .then(|| u64::from_le_bytes(h[24..32].try_into().unwrap()))
}

fn scratch() -> tempfile::TempDir {
    // Barriers cost nothing on tmpfs; the model decides what is durable.
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(t) = tempfile::Builder::new()
            .prefix("journal-crash")
            .tempdir_in(shm)
    {
        return t;
    }
    tempfile::tempdir().unwrap()
}

impl Sim {
    fn new(seed: u64, images: Images) -> Sim {
        let mut rng = Rng(seed);
        let tmp = scratch();
        let root = tmp.path().join("live");
        let n = 2 + rng.below(3) as usize;
        let mut ids = BTreeSet::new();
        while ids.len() < n {
            ids.insert(rng.below(256) as u16);
        }
        let mut shards = Vec::new();
        let mut drivers = Vec::new();
        for &id in &ids {
            let (shard, _) = Shard::open(&root.join(shard_rel(id)), id, shard_config()).unwrap();
            shards.push(shard);
            drivers.push(Driver::new(id));
        }
        let journal = Journal::create(
            &core_dir(&root.join(journal_rel()), CORE),
            CORE,
            journal_config(),
        )
        .unwrap();
        let sums = vec![shards.iter().map(|s| s.state().checksum()).collect()];
        Sim {
            seed,
            rng,
            images,
            disk: Disk::new(&root),
            tmp,
            journal,
            deferred: (0..n).map(|_| None).collect(),
            shards,
            drivers,
            sums,
            durable_round: 0,
            acked_round: 0,
            step: 0,
            now: T0,
            counts: Counts::default(),
            generations: BTreeSet::new(),
            log_segments: BTreeSet::new(),
            frames_end: BTreeMap::new(),
        }
    }

    fn ids(&self) -> Vec<u16> {
        self.drivers.iter().map(|d| d.id).collect()
    }

    fn index(&self, shard: u16) -> usize {
        self.drivers.iter().position(|d| d.id == shard).unwrap()
    }

    fn checksums(&self) -> Vec<u64> {
        self.shards.iter().map(|s| s.state().checksum()).collect()
    }

    /// Runs rounds until `zeroed` journal segments were zeroed for reuse and
    /// `after` more rounds passed.
    fn run(&mut self, zeroed: u64, after: usize) {
        let mut extra = 0;
        while extra < after {
            self.round();
            if self.counts.segments_zeroed >= zeroed {
                extra += 1;
            }
            assert!(
                self.counts.rounds < 5_000,
                "seed {}: the journal never recycled a segment",
                self.seed
            );
        }
    }

    fn round(&mut self) {
        let r = self.sums.len();
        self.counts.rounds += 1;
        self.now += self.rng.below(700);
        let mut frame = FrameBuilder::new();
        let mut staged: Vec<(usize, Vec<Staged>)> = Vec::new();
        for i in 0..self.shards.len() {
            let requests = if r == 1 {
                self.drivers[i].setup()
            } else if self.rng.one_in(4) {
                continue;
            } else {
                let mut v: Vec<Request> = (0..self.rng.below(4))
                    .map(|_| {
                        self.drivers[i].request(&mut self.rng, self.now, self.shards[i].state())
                    })
                    .collect();
                for _ in 0..self.rng.below(4) {
                    let at = self.rng.below(v.len() as u64 + 1) as usize;
                    v.insert(at, self.drivers[i].bulk(&mut self.rng));
                }
                v
            };
            for request in requests {
                if let Ok(Outcome::Reserved { reservation_id, .. }) =
                    self.shards[i].apply(self.now, request)
                {
                    self.drivers[i].live.push(reservation_id);
                }
            }
            let records = self.shards[i].take_staged();
            for rec in &records {
                frame.push(self.drivers[i].id, rec.lsn, rec.kind, &rec.bytes);
            }
            staged.push((i, records));
        }
        self.sums.push(self.checksums());
        if frame.is_empty() {
            // Nothing to make durable: answered at once.
            self.durable_round = r;
            self.acked_round = r;
            self.housekeeping();
            return;
        }
        let job = loop {
            match self.journal.begin_write(&mut frame, true) {
                Ok(job) => break job,
                Err(JournalError::Full) => {
                    self.counts.journal_full += 1;
                    self.free_oldest();
                }
                Err(e) => panic!("seed {}: round {r}: {e}", self.seed),
            }
        };
        let result = job.run();
        self.load_frame(job.bytes());
        self.note_generations();
        self.cut(Step::Write { round: r }, r - 1, r, None);
        self.journal.finish_write(job, result).unwrap();
        let names = self.disk.names_under(&journal_rel());
        self.disk.sync(&names);
        self.durable_round = r;
        for (i, records) in &staged {
            let rel = shard_rel(self.drivers[*i].id);
            // Appends go to the active segment and to segments installed now.
            let active = self
                .disk
                .names_under(&rel)
                .into_iter()
                .filter(|p| is_log_segment(p))
                .max();
            self.shards[*i].append_committed(records).unwrap();
            self.disk.refresh(&rel, |p| Some(p) == active.as_deref());
        }
        self.note_log_segments();
        if r.is_multiple_of(8) {
            self.disk
                .check(Path::new(""), &format!("seed {} round {r}", self.seed));
        }
        self.cut(Step::Append { round: r }, r, r, None);
        self.acked_round = r;
        self.housekeeping();
    }

    /// Checkpoints, snapshots and journal segment recycling between rounds.
    fn housekeeping(&mut self) {
        for i in 0..self.shards.len() {
            if self.deferred[i].is_some() {
                if self.rng.one_in(2) {
                    self.finish_deferred(i);
                }
            } else if self.rng.one_in(6) {
                match self.rng.below(5) {
                    0 | 1 => self.checkpoint(i),
                    2 | 3 => self.begin_deferred(i),
                    _ => self.snapshot(i),
                }
            }
        }
        // Every other trip round the ring, segments are freed only when a
        // frame finds the journal full.
        if self.counts.segments_zeroed.is_multiple_of(2) {
            match self.pins_durable() {
                Some(true) if self.rng.one_in(2) => self.zero_oldest(),
                Some(false) if self.journal.is_short_of_space() && self.rng.one_in(3) => {
                    self.free_oldest()
                }
                _ => {}
            }
        }
    }

    fn pins_durable(&self) -> Option<bool> {
        let pins = self.journal.oldest_pins()?;
        Some(
            pins.iter()
                .all(|&(s, lsn)| self.shards[self.index(s)].durable_lsn() >= lsn),
        )
    }

    /// Makes every shard pinning the oldest segment durable, then zeroes it.
    fn free_oldest(&mut self) {
        let pins = self
            .journal
            .oldest_pins()
            .expect("a full journal has a sealed segment");
        for (s, lsn) in pins {
            let i = self.index(s);
            if self.shards[i].durable_lsn() < lsn && self.deferred[i].is_some() {
                self.finish_deferred(i);
            }
            if self.shards[i].durable_lsn() < lsn {
                self.checkpoint(i);
            }
        }
        assert_eq!(self.pins_durable(), Some(true));
        self.zero_oldest();
    }

    /// The journal's segments with a header, oldest generation first.
    fn generations_now(&self) -> Vec<(u64, PathBuf)> {
        let mut v: Vec<(u64, PathBuf)> = self
            .disk
            .current
            .iter()
            .filter(|(p, _)| p.starts_with(journal_rel()))
            .filter_map(|(p, b)| first_seq(b).map(|s| (s, p.clone())))
            .collect();
        v.sort();
        v
    }

    /// Reads back what a frame write of `bytes` changed: the end of the
    /// active segment, or the header and first frame of a fresh one.
    fn load_frame(&mut self, bytes: usize) {
        let gens = self.generations_now();
        if let Some((_, active)) = gens.last() {
            let end = self.frames_end[active];
            let file = File::open(self.disk.root.join(active)).unwrap();
            let mut magic = [0u8; 4];
            let fits = end + FRAME_HEADER_BYTES <= self.disk.current[active].len;
            if fits && file.read_exact_at(&mut magic, end as u64).is_ok() && magic == *b"RJFR" {
                let active = active.clone();
                self.disk.load_range(&active, end, end + bytes);
                self.frames_end.insert(active, end + bytes);
                return;
            }
        }
        for rel in self.disk.names_under(&journal_rel()) {
            if first_seq(&self.disk.current[&rel]).is_some() {
                continue;
            }
            self.disk.load_range(&rel, 0, SEGMENT_HEADER_BYTES);
            if first_seq(&self.disk.current[&rel]).is_some() {
                self.disk
                    .load_range(&rel, FRAMES_START, FRAMES_START + bytes);
                self.frames_end.insert(rel, FRAMES_START + bytes);
                return;
            }
        }
        panic!("seed {}: the model lost a frame write", self.seed);
    }

    fn zero_oldest(&mut self) {
        let job = self.journal.release_oldest().unwrap();
        let (_, oldest) = self.generations_now().remove(0);
        let result = job.run();
        self.disk.load(&oldest);
        assert!(
            self.disk.current[&oldest].pages.iter().all(|p| is_zero(p)),
            "seed {}: {} zeroed",
            self.seed,
            oldest.display()
        );
        self.frames_end.remove(&oldest);
        let d = self.durable_round;
        self.cut(Step::Zero, d, d, Some(&oldest));
        self.journal.finish_zero(job, result);
        self.disk.sync(&[oldest]);
        self.counts.segments_zeroed += 1;
    }

    fn checkpoint(&mut self, i: usize) {
        let Some(barrier) = self.shards[i].begin_sync().unwrap() else {
            return;
        };
        let files = self.disk.names_under(&shard_rel(self.drivers[i].id));
        self.run_barrier(i, barrier, files, false);
    }

    fn begin_deferred(&mut self, i: usize) {
        if let Some(barrier) = self.shards[i].begin_sync().unwrap() {
            let files = self.disk.names_under(&shard_rel(self.drivers[i].id));
            self.deferred[i] = Some(Deferred { barrier, files });
        }
    }

    fn finish_deferred(&mut self, i: usize) {
        if let Some(Deferred { barrier, files }) = self.deferred[i].take() {
            self.counts.deferred_checkpoints += 1;
            self.run_barrier(i, barrier, files, true);
        }
    }

    /// Runs a shard-log barrier: `fdatasync` of the files that existed when
    /// it began (segments installed since wait for a later barrier), then
    /// `fsync` of the directory.
    fn run_barrier(&mut self, i: usize, barrier: PendingSync, files: Vec<PathBuf>, deferred: bool) {
        let result = barrier.run();
        let shard = self.drivers[i].id;
        let d = self.durable_round;
        self.cut(Step::Checkpoint { shard, deferred }, d, d, None);
        self.shards[i].finish_sync(barrier, result).unwrap();
        self.disk.sync(&files);
    }

    /// A barrier (a cut point), then a snapshot and the pruning it allows:
    /// the log writes and renames the snapshot atomically and syncs the
    /// directory, so that part has no cut point here.
    fn snapshot(&mut self, i: usize) {
        self.checkpoint(i);
        if self.shards[i].snapshot_now().unwrap() > 0 {
            self.counts.snapshots += 1;
        }
        let rel = shard_rel(self.drivers[i].id);
        self.disk.refresh(&rel, |_| true);
        let names = self.disk.names_under(&rel);
        self.disk.sync(&names);
    }

    fn note_generations(&mut self) {
        for (s, p) in self.generations_now() {
            self.generations.insert((p, s));
        }
        self.counts.journal_generations = self.generations.len() as u64;
    }

    fn note_log_segments(&mut self) {
        for p in self.disk.current.keys() {
            if is_log_segment(p) {
                self.log_segments.insert(p.clone());
            }
        }
        self.counts.log_segments = self.log_segments.len() as u64;
    }

    fn selected(&self, step: Step) -> u64 {
        let mut pick = image_rng(self.seed, self.step, u64::MAX);
        let stride = self.images.stride;
        let selected = match step {
            _ if stride == 0 => true,
            Step::Zero => true,
            Step::Write { .. } | Step::Checkpoint { .. } => pick.one_in(stride),
            Step::Append { .. } => pick.one_in(2 * stride),
        };
        if selected { self.images.per_cut } else { 0 }
    }

    /// A cut point: power fails while `step` runs. Recovery must give the
    /// state after one round in `lower..=upper`.
    fn cut(&mut self, step: Step, lower: usize, upper: usize, zeroing: Option<&Path>) {
        self.step += 1;
        self.counts.cuts += 1;
        for image in 0..self.selected(step) {
            let ctx = format!(
                "seed {} cut point {} ({step:?}) image {image}: answered round {}, durable round {lower}, round in flight {upper} (replay: RESERVA_JOURNAL_CRASH_SEED={})",
                self.seed, self.step, self.acked_round, self.seed
            );
            let mut rng = image_rng(self.seed, self.step, image);
            let dir = self.tmp.path().join(format!("crash-{}-{image}", self.step));
            fs::create_dir(&dir).unwrap();
            let mixed = self.disk.crash_image(&mut rng, zeroing, &dir);
            let restart = rng.one_in(8);
            let got = self.recover(&dir, lower, upper, restart, &ctx);
            fs::remove_dir_all(&dir).unwrap();

            let c = &mut self.counts;
            c.images += 1;
            c.restarted += u64::from(restart);
            c.log_behind += u64::from(got.applied > 0);
            c.journal_torn += u64::from(got.torn);
            c.both += u64::from(got.applied > 0 && got.torn);
            if lower < upper {
                if got.round == upper {
                    c.in_flight_kept += 1;
                } else {
                    c.in_flight_lost += 1;
                }
            }
            if let Step::Checkpoint { shard, .. } = step {
                let rel = shard_rel(shard);
                let (kept, lost) = mixed
                    .iter()
                    .filter(|(p, _)| p.starts_with(&rel))
                    .fold((0, 0), |(k, l), (_, m)| (k + m.kept, l + m.lost));
                c.checkpoint_partial += u64::from(kept > 0 && lost > 0);
            }
            if let Some(z) = zeroing {
                c.zeroing += u64::from(mixed.get(z).is_some_and(|m| m.lost > 0));
            }
        }
    }

    /// Recovers a crash image; panics unless every shard is in the state after
    /// one same round in `lower..=upper`.
    fn recover(
        &self,
        img: &Path,
        lower: usize,
        upper: usize,
        restart: bool,
        ctx: &str,
    ) -> Recovered {
        let report = journal::recover(
            &img.join(journal_rel()),
            &|s| img.join(shard_rel(s)),
            &log_config(),
        )
        .unwrap_or_else(|e| panic!("{ctx}: journal recovery failed: {e}"));
        let mut got = Vec::new();
        let mut shards = Vec::new();
        for id in self.ids() {
            let (shard, _) = Shard::open(&img.join(shard_rel(id)), id, shard_config())
                .unwrap_or_else(|e| panic!("{ctx}: shard {id} does not open after journal recovery: {e}; journal recovery: {report:?}"));
            shard
                .state()
                .check_invariants()
                .unwrap_or_else(|e| panic!("{ctx}: shard {id}: {e}"));
            got.push(shard.state().checksum());
            shards.push(shard);
        }
        let Some(round) = (lower..=upper).rev().find(|&r| self.sums[r] == got) else {
            panic!(
                "{ctx}: the recovered shards {:?} are not in the state after one round in {lower}..={upper}: recovered {got:x?}, after round {lower} {:x?}, after round {upper} {:x?}; journal recovery: {report:?}",
                self.ids(),
                self.sums[lower],
                self.sums[upper]
            );
        };
        if restart {
            self.keeps_working(img, shards, ctx);
        }
        Recovered {
            round,
            applied: report.applied,
            torn: !report.torn.is_empty(),
        }
    }

    /// The recovered node commits one more round through a fresh journal and
    /// stops without a checkpoint; recovering again gives that round.
    fn keeps_working(&self, img: &Path, mut shards: Vec<Shard>, ctx: &str) {
        let dir = core_dir(&img.join(journal_rel()), CORE);
        let mut journal = Journal::create(&dir, CORE, journal_config()).unwrap();
        let mut frame = FrameBuilder::new();
        let mut staged = Vec::new();
        for shard in &mut shards {
            let tick = Request::new(Command::Tick { expire: vec![] });
            shard.apply(self.now + 1, tick).unwrap();
            let records = shard.take_staged();
            for rec in &records {
                frame.push(shard.id(), rec.lsn, rec.kind, &rec.bytes);
            }
            staged.push(records);
        }
        let job = journal.begin_write(&mut frame, true).unwrap();
        let result = job.run();
        journal.finish_write(job, result).unwrap();
        for (shard, records) in shards.iter_mut().zip(&staged) {
            shard.append_committed(records).unwrap();
        }
        let want: Vec<u64> = shards.iter().map(|s| s.state().checksum()).collect();
        drop((shards, journal));
        journal::recover(
            &img.join(journal_rel()),
            &|s| img.join(shard_rel(s)),
            &log_config(),
        )
        .unwrap_or_else(|e| panic!("{ctx}: after a restart: journal recovery failed: {e}"));
        for (id, want) in self.ids().into_iter().zip(want) {
            let (shard, _) = Shard::open(&img.join(shard_rel(id)), id, shard_config())
                .unwrap_or_else(|e| panic!("{ctx}: after a restart: shard {id}: {e}"));
            assert_eq!(
                shard.state().checksum(),
                want,
                "{ctx}: after a restart: shard {id} lost the round committed after recovery"
            );
        }
    }
}

struct Recovered {
    round: usize,
    applied: u64,
    torn: bool,
}

#[test]
fn power_loss_at_every_step_keeps_every_answered_round() {
    let started = Instant::now();
    // One image per selected cut point: a replay (every cut point) rebuilds
    // the image a failure names, whatever mode found it.
    let (n, stride, zeroed) = match (replay_seed(), ci()) {
        (Some(_), _) => (1, 0, 3),
        (None, true) => (3, 1, 3),
        (None, false) => (1, 4, 2),
    };
    let images = Images { per_cut: 1, stride };
    let mut total = Counts::default();
    for seed in seeds(n, 0x10C4_7A11) {
        let mut sim = Sim::new(seed, images);
        sim.run(zeroed, 3);
        total.add(&sim.counts);
    }
    eprintln!(
        "journal crash: {total:?} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if replay_seed().is_some() {
        return;
    }
    // Every case the runs are meant to reach was reached.
    let c = total;
    assert!(
        c.segments_zeroed >= 2 && c.journal_generations >= 3,
        "{c:?}"
    );
    assert!(c.journal_full > 0, "{c:?}");
    assert!(c.log_segments > c.journal_generations, "{c:?}");
    assert!(
        c.log_behind > 0 && c.journal_torn > 0 && c.both > 0,
        "{c:?}"
    );
    assert!(c.in_flight_kept > 0 && c.in_flight_lost > 0, "{c:?}");
    assert!(
        c.checkpoint_partial > 0 && c.deferred_checkpoints > 0,
        "{c:?}"
    );
    assert!(c.zeroing > 0 && c.snapshots > 0 && c.restarted > 0, "{c:?}");
}

/// A frame of a journal segment, as the format lays it out.
struct FrameAt {
    segment: PathBuf,
    offset: usize,
    span: usize,
    seq: u64,
}

fn frames(disk: &Disk) -> Vec<FrameAt> {
    let mut out = Vec::new();
    for (segment, pages) in &disk.current {
        if !segment.starts_with(journal_rel()) || first_seq(pages).is_none() {
            continue;
        }
        let b = pages.to_vec();
        let mut at = FRAMES_START;
        while at + FRAME_HEADER_BYTES <= b.len() && b[at..at + 4] == *b"RJFR" {
            let seq = u64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap());
            let payload = u32::from_le_bytes(b[at + 24..at + 28].try_into().unwrap()) as usize;
            let span = FRAME_HEADER_BYTES + payload;
            out.push(FrameAt {
                segment: segment.clone(),
                offset: at,
                span,
                seq,
            });
            at += span;
        }
    }
    out.sort_by_key(|f| f.seq);
    out
}

#[test]
fn a_damaged_frame_that_a_later_frame_proves_durable_is_corruption() {
    let none = Images {
        per_cut: 0,
        stride: 1,
    };
    for seed in seeds(if ci() { 24 } else { 4 }, 0xBAD_F4A3) {
        let mut sim = Sim::new(seed, none);
        let mut rng = Rng(seed ^ 0xF11F);
        // Some runs roll over, so that the proof can be a later segment.
        let roll = seed.is_multiple_of(2);
        let mut rounds = 2 + rng.below(20);
        let all = loop {
            sim.round();
            rounds = rounds.saturating_sub(1);
            if rounds > 0 {
                continue;
            }
            let all = frames(&sim.disk);
            let segments: BTreeSet<&PathBuf> = all.iter().map(|f| &f.segment).collect();
            if all.len() >= 2 && (!roll || segments.len() == 2) {
                break all;
            }
        };
        // With a rollover, half the time the last frame of the older segment:
        // only the later segment proves it durable.
        let victim = if roll && rng.one_in(2) {
            let newest = &all[all.len() - 1].segment;
            all.iter().rposition(|f| &f.segment != newest).unwrap()
        } else {
            rng.below(all.len() as u64 - 1) as usize
        };
        let img = sim.tmp.path().join("damaged");
        sim.disk.write_current(&img);
        let f = &all[victim];
        let path = img.join(&f.segment);
        let at = f.offset + rng.below(f.span as u64) as usize;
        let bit = 1u8 << rng.below(8);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at as u64).unwrap();
        file.write_all_at(&[byte[0] ^ bit], at as u64).unwrap();
        let ctx = format!(
            "seed {seed}: bit {bit:#x} flipped at byte {at} of frame {} ({} at offset {}, {} frames)",
            f.seq,
            path.display(),
            f.offset,
            all.len()
        );
        match journal::recover(
            &img.join(journal_rel()),
            &|s| img.join(shard_rel(s)),
            &log_config(),
        ) {
            Err(JournalError::Corrupt {
                segment, offset, ..
            }) => {
                assert_eq!(segment, path, "{ctx}: wrong segment named");
                assert_eq!(offset, f.offset as u64, "{ctx}: wrong offset named");
            }
            Err(e) => panic!("{ctx}: reported as {e}, not as corruption"),
            Ok(r) => panic!("{ctx}: recovery accepted it: {r:?}"),
        }
        // Nothing was removed: the operator can still look.
        assert!(core_dir(&img.join(journal_rel()), CORE).exists(), "{ctx}");
    }
}

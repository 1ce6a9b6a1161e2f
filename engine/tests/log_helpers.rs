//! Helpers shared by the `log_*` integration tests (included with
//! `#[path = "log_helpers.rs"] mod helpers;`). Also built alone as an empty
//! test crate, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use reserva_engine::log::{Log, LogConfig, LogReader, Lsn, Recovery};

/// Segment size used by the tests: the minimum, so rollovers happen often.
pub const SEGMENT_BYTES: u64 = 64 << 10;

pub fn config() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        snapshots_kept: 2,
    }
}

pub fn open(dir: &Path) -> (Log, Recovery) {
    Log::open(dir, 7, config()).unwrap()
}

/// A temporary directory on tmpfs when the machine has one, where syncs cost
/// nothing: for the tests that loop over many seeds. The other tests use the
/// default temporary directory, on a real file system.
pub fn fast_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

/// A small deterministic generator (xorshift64*), so failures replay.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }
}

/// A record as the tests expect to read it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub lsn: Lsn,
    pub kind: u16,
    pub payload: Vec<u8>,
}

/// Payload bytes derived from the LSN, so any mix-up shows.
pub fn payload_for(lsn: Lsn, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (lsn as usize * 31 + i * 7) as u8 | 1)
        .collect()
}

/// Appends one batch of `lens.len()` records and returns what was written.
pub fn append(log: &mut Log, lens: &[usize]) -> Vec<Rec> {
    let first = log.last_lsn() + 1;
    let recs: Vec<Rec> = lens
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let lsn = first + i as u64;
            Rec {
                lsn,
                kind: (lsn % 5) as u16,
                payload: payload_for(lsn, len),
            }
        })
        .collect();
    let range = log
        .append_batch(recs.iter().map(|r| (r.kind, r.payload.as_slice())))
        .unwrap();
    assert_eq!(range, first..=first + lens.len() as u64 - 1);
    recs
}

/// Prepares the next segment the way a writer's background preparer does, if
/// the log asks for it: runs the job on another thread, installs the result.
pub fn prepare(log: &mut Log) -> bool {
    let Some(job) = log.prepare_job() else {
        return false;
    };
    let result = std::thread::spawn(move || job.run()).join().unwrap();
    log.install_prepared(result);
    true
}

/// A random batch: 1..=8 records of 0..=max_len bytes.
pub fn random_lens(rng: &mut Rng, max_len: u64) -> Vec<usize> {
    let n = rng.range(1, 9);
    (0..n).map(|_| rng.range(0, max_len + 1) as usize).collect()
}

/// Reads everything the reader returns now, checking payload alignment.
pub fn drain(reader: &mut LogReader) -> Vec<Rec> {
    let mut out = Vec::new();
    while let Some(r) = reader.next().unwrap() {
        assert_eq!(
            r.payload.as_ptr() as usize % 16,
            0,
            "payload of lsn {} misaligned",
            r.lsn
        );
        out.push(Rec {
            lsn: r.lsn,
            kind: r.kind,
            payload: r.payload.to_vec(),
        });
    }
    out
}

pub fn read_all(log: &Log, from: Lsn) -> Vec<Rec> {
    drain(&mut log.read_from(from).unwrap())
}

/// Segment files in LSN order.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    files_with(dir, "seg-", ".log")
}

pub fn snapshots(dir: &Path) -> Vec<PathBuf> {
    files_with(dir, "snap-", ".snap")
}

fn files_with(dir: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with(prefix) && name.ends_with(suffix)
        })
        .collect();
    v.sort();
    v
}

/// Where a record sits on disk, found by an independent parse of the format
/// described in docs/log-format.md (no checksum checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub segment: PathBuf,
    pub offset: u64,
    /// Payload bytes.
    pub len: u64,
    /// Header + payload + padding.
    pub span: u64,
    pub lsn: Lsn,
    pub synced_lsn: Lsn,
    pub batch_end: bool,
}

pub fn placements(dir: &Path) -> Vec<Placed> {
    let mut out = Vec::new();
    for seg in segments(dir) {
        let bytes = std::fs::read(&seg).unwrap();
        let mut at = 64usize;
        while at + 32 <= bytes.len() && bytes[at..at + 32].iter().any(|&b| b != 0) {
            let h = &bytes[at..at + 32];
            let len = u32::from_le_bytes(h[0..4].try_into().unwrap()) as usize;
            let span = (32 + len).next_multiple_of(16);
            out.push(Placed {
                segment: seg.clone(),
                offset: at as u64,
                len: len as u64,
                span: span as u64,
                lsn: u64::from_le_bytes(h[8..16].try_into().unwrap()),
                synced_lsn: u64::from_le_bytes(h[16..24].try_into().unwrap()),
                batch_end: u16::from_le_bytes(h[26..28].try_into().unwrap()) & 1 == 1,
            });
            at += span;
        }
    }
    out
}

pub fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 1 << bit;
    f.write_all_at(&b, offset).unwrap();
}

/// Zeroes `path` from `offset` to its end.
pub fn zero_from(path: &Path, offset: u64) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let zeros = vec![0u8; (len - offset) as usize];
    f.write_all_at(&zeros, offset).unwrap();
}

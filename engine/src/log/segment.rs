//! Segment files: preparing the next one ahead of time, installing it at
//! rollover, and opening existing ones for writing or reading.
//!
//! A prepared segment lives under a temporary name (`seg-prepared-{n}.tmp`,
//! `n` unique in the process) until it is installed, so that two
//! preparations (a background job and the writer's fallback) never share a
//! file. A writer that closes leaves its prepared segment as
//! `seg-prepared.ready` for the next open. The rule that keeps a reused file
//! blank: nothing is ever written into a file while a name under which it
//! could be reused is durable. Installing renames a temporary name to the
//! segment's name and writes at once, without a directory `fsync` (the next
//! barrier does it); if power fails first, the file may be back under its
//! temporary name with some of those writes in it, and open deletes or
//! checks it (see [`PreparedSegment::adopt`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{Mmap, MmapMut};

use super::Lsn;
use super::dir;
use super::error::LogError;
use super::format::{
    HeaderError, READY_SEGMENT_NAME, RECORD_ALIGN, SEGMENT_HEADER_BYTES, SegmentHeader,
    is_prepared_segment_temp, prepared_segment_temp_name, segment_file_name,
};
use super::limits::{SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN};
use super::mmap;

/// The segment the writer appends to, mapped read-write and pre-faulted.
#[derive(Debug)]
pub(crate) struct WritableSegment {
    pub path: PathBuf,
    pub first_lsn: Lsn,
    pub map: MmapMut,
    /// Shared with barriers in flight, which `fdatasync` it.
    pub file: Arc<File>,
}

impl WritableSegment {
    /// Opens an existing, already validated segment to continue writing it.
    pub fn open(path: &Path, header: &SegmentHeader) -> Result<Self, LogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| LogError::io("open", path, e))?;
        let map = mmap::map_writable(&file, header.segment_bytes as usize)
            .map_err(|e| LogError::io("mmap", path, e))?;
        Ok(WritableSegment {
            path: path.into(),
            first_lsn: header.first_lsn,
            map,
            file: Arc::new(file),
        })
    }

    pub fn bytes(&self) -> usize {
        self.map.len()
    }
}

/// Numbers the temporary names of prepared segments, process-wide, so that
/// no two preparations (of any log in this process) ever share a file, even
/// one still running for a log that was closed and reopened meanwhile.
static NEXT_PREPARED: AtomicU64 = AtomicU64::new(1);

/// A fresh temporary path for a segment prepared in `dir`.
pub(crate) fn prepared_temp_path(dir: &Path) -> PathBuf {
    let n = NEXT_PREPARED.fetch_add(1, Ordering::Relaxed);
    dir.join(prepared_segment_temp_name(n))
}

/// A fully allocated, zero-filled, synced, mapped and pre-faulted segment
/// file waiting under a temporary name, so that rollover costs a rename
/// instead of an allocation.
#[derive(Debug)]
pub(crate) struct PreparedSegment {
    path: PathBuf,
    file: File,
    map: MmapMut,
}

impl PreparedSegment {
    /// Creates a new prepared segment at `path`, a temporary name that must
    /// not exist (it is created exclusively, so no other preparation's file
    /// is ever truncated): allocate, zero-fill, `fsync`, map with
    /// pre-faulting. Blocks for as long as writing `segment_bytes` takes.
    /// On failure the partial file is removed.
    pub fn create(path: &Path, segment_bytes: u64) -> Result<Self, LogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| LogError::io("create", path, e))?;
        let result = Self::fill(path, file, segment_bytes);
        if result.is_err() {
            // Best effort: the next open deletes (or checks) leftovers too.
            let _ = std::fs::remove_file(path);
        }
        result
    }

    fn fill(path: &Path, file: File, segment_bytes: u64) -> Result<Self, LogError> {
        mmap::allocate(&file, segment_bytes).map_err(|e| LogError::io("fallocate", path, e))?;
        // fallocate leaves "unwritten" extents: the first barrier after a
        // write would also have to commit their conversion to the file
        // system's journal. Writing zeros once, here, off the append path,
        // leaves a barrier nothing but data pages to write.
        zero_fill(&file, segment_bytes).map_err(|e| LogError::io("zero-fill", path, e))?;
        // Makes the allocation and the zeros durable now, off the append
        // path, so that a later barrier has no file metadata left to write
        // and the file is known blank on disk whatever name it ends up under.
        file.sync_all()
            .map_err(|e| LogError::io("fsync", path, e))?;
        let map = mmap::map_writable(&file, segment_bytes as usize)
            .map_err(|e| LogError::io("mmap", path, e))?;
        Ok(PreparedSegment {
            path: path.into(),
            file,
            map,
        })
    }

    /// Takes over a prepared segment an earlier writer left in `dir`, renamed
    /// to `path` (a fresh temporary name); `None` if there is none.
    ///
    /// * `seg-prepared.ready` is blank by construction (a writer gives that
    ///   name only to an unused, synced prepared segment, and renames it back
    ///   to a temporary name, durably, before writing into it): it is checked
    ///   for size and a blank header only.
    /// * `leftovers`, prepared-segment temporary files, may be unused
    ///   prepared segments of a writer that crashed, or installed segments
    ///   whose rename a power loss undid (with some of their records in
    ///   them). One is taken only if all of it reads back as zeros and after
    ///   an `fsync`.
    ///
    /// Every other candidate is deleted. The caller must `fsync` the
    /// directory before writing into the returned segment, so that the
    /// rename to `path` is durable first.
    pub fn adopt(
        dir: &Path,
        leftovers: &[PathBuf],
        segment_bytes: u64,
        path: &Path,
    ) -> Result<Option<Self>, LogError> {
        let ready = dir.join(READY_SEGMENT_NAME);
        let mut candidates = vec![(ready, false)];
        candidates.extend(leftovers.iter().map(|p| (p.clone(), true)));
        let mut adopted: Option<Self> = None;
        for (candidate, check_all) in candidates {
            if adopted.is_some() {
                dir::remove(&candidate)?;
                continue;
            }
            match Self::check_blank(&candidate, segment_bytes, check_all) {
                Ok(found) => adopted = found,
                Err(e) => {
                    tracing::warn!(path = %candidate.display(), error = %e, "log: discarding a prepared segment");
                    dir::remove(&candidate)?;
                }
            }
        }
        // Renamed only once every other candidate is gone: a leftover of an
        // earlier process may carry the very name `path` has.
        let Some(p) = adopted else {
            return Ok(None);
        };
        std::fs::rename(&p.path, path).map_err(|e| LogError::io("rename", &p.path, e))?;
        Ok(Some(PreparedSegment {
            path: path.into(),
            ..p
        }))
    }

    /// Opens a prepared segment left by an earlier writer and checks that it
    /// is blank: its header, or (`check_all`) every byte, then syncs it.
    fn check_blank(
        path: &Path,
        segment_bytes: u64,
        check_all: bool,
    ) -> Result<Option<Self>, LogError> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LogError::io("open", path, e)),
        };
        let len = file
            .metadata()
            .map_err(|e| LogError::io("stat", path, e))?
            .len();
        if len != segment_bytes {
            return Err(LogError::Config(format!(
                "prepared segment has {len} bytes, not {segment_bytes}"
            )));
        }
        let map = mmap::map_writable(&file, segment_bytes as usize)
            .map_err(|e| LogError::io("mmap", path, e))?;
        let checked = if check_all {
            &map[..]
        } else {
            &map[..SEGMENT_HEADER_BYTES]
        };
        if !is_zero(checked) {
            return Err(LogError::Config("prepared segment is not blank".into()));
        }
        if check_all {
            // A crashed preparation may have left zeros only in the page cache.
            file.sync_all()
                .map_err(|e| LogError::io("fsync", path, e))?;
        }
        Ok(Some(PreparedSegment {
            path: path.to_path_buf(),
            file,
            map,
        }))
    }

    pub fn bytes(&self) -> u64 {
        self.map.len() as u64
    }

    /// Renames the prepared file to its segment name and writes its header
    /// into the mapping. Neither is durable on return: the next barrier
    /// `fsync`s the directory (the name) and `fdatasync`s the file (the
    /// header), before any record in the new segment counts as durable.
    pub fn install(
        self,
        dir: &Path,
        shard: u16,
        first_lsn: Lsn,
    ) -> Result<WritableSegment, LogError> {
        let header = SegmentHeader {
            shard,
            segment_bytes: self.bytes(),
            first_lsn,
        };
        let mut segment = self.rename_to_segment(dir, first_lsn)?;
        debug_assert!(segment.map[..SEGMENT_HEADER_BYTES].iter().all(|&b| b == 0));
        segment.map[..SEGMENT_HEADER_BYTES].copy_from_slice(&header.encode());
        Ok(segment)
    }

    /// Installs the very first segment of a log (or the one after a
    /// recovery that kept no segment). Unlike `install`, header and name
    /// are durable on return, the header before the file gets its name, so
    /// a named segment never has a header that could be lost.
    pub fn install_first(
        mut self,
        dir: &Path,
        shard: u16,
        first_lsn: Lsn,
    ) -> Result<WritableSegment, LogError> {
        let header = SegmentHeader {
            shard,
            segment_bytes: self.bytes(),
            first_lsn,
        };
        self.map[..SEGMENT_HEADER_BYTES].copy_from_slice(&header.encode());
        self.file
            .sync_data()
            .map_err(|e| LogError::io("fdatasync", &self.path, e))?;
        let segment = self.rename_to_segment(dir, first_lsn)?;
        dir::sync(dir)?;
        Ok(segment)
    }

    /// Leaves the unused segment as `seg-prepared.ready` for the next open
    /// of the log. Nothing was written into it, and its zeros were synced
    /// when it was prepared, so it is blank on disk whether or not the
    /// rename survives a crash (no directory `fsync` needed).
    pub fn keep_ready(self, dir: &Path) -> Result<(), LogError> {
        let ready = dir.join(READY_SEGMENT_NAME);
        std::fs::rename(&self.path, &ready).map_err(|e| LogError::io("rename", &self.path, e))
    }

    /// Deletes the unused segment's file (gone already is fine: the open of
    /// a log deletes what a job of an earlier writer left behind).
    pub fn discard(self) -> Result<(), LogError> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(LogError::io("unlink", &self.path, e))
            }
            _ => Ok(()),
        }
    }

    fn rename_to_segment(self, dir: &Path, first_lsn: Lsn) -> Result<WritableSegment, LogError> {
        let path = dir.join(segment_file_name(first_lsn));
        std::fs::rename(&self.path, &path).map_err(|e| LogError::io("rename", &path, e))?;
        Ok(WritableSegment {
            path,
            first_lsn,
            map: self.map,
            file: Arc::new(self.file),
        })
    }
}

/// The temporary files in a listing that hold prepared segments.
pub(crate) fn prepared_leftovers(temps: &[PathBuf]) -> Vec<PathBuf> {
    temps
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| is_prepared_segment_temp(Path::new(n)))
        })
        .cloned()
        .collect()
}

/// True if every byte is zero, compared a page at a time.
fn is_zero(bytes: &[u8]) -> bool {
    static ZERO_PAGE: [u8; 4096] = [0; 4096];
    bytes
        .chunks(ZERO_PAGE.len())
        .all(|chunk| chunk == &ZERO_PAGE[..chunk.len()])
}

/// A segment mapped read-only, with its header checked against its name and
/// size. A damaged header is kept as an error value: recovery still scans the
/// file for records.
#[derive(Debug)]
pub(crate) struct MappedSegment {
    pub path: PathBuf,
    pub name_lsn: Lsn,
    pub map: Option<Mmap>,
    pub header: Result<SegmentHeader, HeaderError>,
}

impl MappedSegment {
    pub fn open(path: &Path, name_lsn: Lsn, shard: u16) -> Result<Self, LogError> {
        let file = File::open(path).map_err(|e| LogError::io("open", path, e))?;
        let len = dir::file_bytes(path)?.min(SEGMENT_BYTES_MAX);
        let map = match len {
            0 => None,
            _ => Some(
                mmap::map_readonly(&file, len as usize)
                    .map_err(|e| LogError::io("mmap", path, e))?,
            ),
        };
        let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
        let header =
            SegmentHeader::decode(bytes, shard).and_then(|h| check_header_fits(&h, name_lsn, len));
        Ok(MappedSegment {
            path: path.into(),
            name_lsn,
            map,
            header,
        })
    }

    /// The whole file (header included); empty for an empty file.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// Checks that a header with a valid checksum agrees with its file.
fn check_header_fits(
    h: &SegmentHeader,
    name_lsn: Lsn,
    file_bytes: u64,
) -> Result<SegmentHeader, HeaderError> {
    if h.first_lsn != name_lsn {
        return Err(HeaderError::Damaged(
            "header first_lsn differs from the file name",
        ));
    }
    if h.segment_bytes != file_bytes {
        return Err(HeaderError::Damaged(
            "header segment size differs from the file size",
        ));
    }
    let sane = (SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&h.segment_bytes)
        && h.segment_bytes.is_multiple_of(RECORD_ALIGN as u64);
    if !sane {
        return Err(HeaderError::Damaged("header segment size out of range"));
    }
    Ok(*h)
}

/// Maps a `HeaderError` that is not plain damage to the error it must raise:
/// a version or shard mismatch is never "torn", it is the wrong file.
pub(crate) fn header_hard_error(path: &Path, shard: u16, e: &HeaderError) -> Option<LogError> {
    use super::format::FORMAT_VERSION;
    match *e {
        HeaderError::Damaged(_) => None,
        HeaderError::Unsupported(version) => Some(LogError::UnsupportedVersion {
            path: path.into(),
            version,
            supported: FORMAT_VERSION,
        }),
        HeaderError::WrongShard(found) => Some(LogError::WrongShard {
            path: path.into(),
            expected: shard,
            found,
        }),
    }
}

/// The human-readable reason for a header error.
pub(crate) fn header_reason(e: &HeaderError) -> String {
    match e {
        HeaderError::Damaged(r) => format!("segment header invalid: {r}"),
        HeaderError::Unsupported(v) => format!("segment header has unsupported version {v}"),
        HeaderError::WrongShard(s) => format!("segment header belongs to shard {s}"),
    }
}

/// Writes zeros over the whole file, 1 MiB at a time.
fn zero_fill(file: &File, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

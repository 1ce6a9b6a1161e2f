//! Segment files: preparing the next one ahead of time, installing it at
//! rollover, and opening existing ones for writing or reading.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut};

use super::Lsn;
use super::dir;
use super::error::LogError;
use super::format::{
    HeaderError, PREPARED_SEGMENT_NAME, READY_SEGMENT_NAME, RECORD_ALIGN, SEGMENT_HEADER_BYTES,
    SegmentHeader, segment_file_name,
};
use super::limits::{SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN};
use super::mmap;

/// The segment the writer appends to, mapped read-write and pre-faulted.
#[derive(Debug)]
pub(crate) struct WritableSegment {
    pub path: PathBuf,
    pub first_lsn: Lsn,
    pub map: MmapMut,
    pub file: File,
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
            file,
        })
    }

    pub fn bytes(&self) -> usize {
        self.map.len()
    }
}

/// A fully allocated, mapped and pre-faulted segment file waiting under a
/// temporary name, so that rollover costs a rename instead of an allocation.
#[derive(Debug)]
pub(crate) struct PreparedSegment {
    path: PathBuf,
    file: File,
    map: MmapMut,
}

impl PreparedSegment {
    /// The prepared next segment: the one left ready by an earlier run if it
    /// has the right size, else a new one.
    pub fn create(dir: &Path, segment_bytes: u64) -> Result<Self, LogError> {
        let ready = dir.join(READY_SEGMENT_NAME);
        match Self::reuse(&ready, segment_bytes) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(path = %ready.display(), error = %e, "log: discarding a prepared segment");
                dir::remove(&ready)?;
            }
        }
        let p = Self::create_new(dir, segment_bytes)?;
        std::fs::rename(&p.path, &ready).map_err(|e| LogError::io("rename", &p.path, e))?;
        dir::sync(dir)?;
        Ok(PreparedSegment { path: ready, ..p })
    }

    /// Opens a segment an earlier run prepared. It was zero-filled and synced
    /// before it got this name, and nothing writes to it under this name.
    fn reuse(path: &Path, segment_bytes: u64) -> Result<Option<Self>, LogError> {
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
        if map[..SEGMENT_HEADER_BYTES].iter().any(|&b| b != 0) {
            return Err(LogError::Config("prepared segment is not blank".into()));
        }
        Ok(Some(PreparedSegment {
            path: path.to_path_buf(),
            file,
            map,
        }))
    }

    fn create_new(dir: &Path, segment_bytes: u64) -> Result<Self, LogError> {
        let path = dir.join(PREPARED_SEGMENT_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| LogError::io("create", &path, e))?;
        mmap::allocate(&file, segment_bytes).map_err(|e| LogError::io("fallocate", &path, e))?;
        // fallocate leaves "unwritten" extents: the first barrier after a
        // write would also have to commit their conversion to the file
        // system's journal. Writing zeros once, here, off the append path,
        // leaves a barrier nothing but data pages to write.
        zero_fill(&file, segment_bytes).map_err(|e| LogError::io("zero-fill", &path, e))?;
        // Makes the allocation itself durable now, off the append path, so
        // that a later barrier of the data has no file metadata left to write.
        file.sync_all()
            .map_err(|e| LogError::io("fsync", &path, e))?;
        let map = mmap::map_writable(&file, segment_bytes as usize)
            .map_err(|e| LogError::io("mmap", &path, e))?;
        Ok(PreparedSegment { path, file, map })
    }

    pub fn bytes(&self) -> u64 {
        self.map.len() as u64
    }

    /// Renames the prepared file to its final name and writes its header into
    /// the mapping. The directory entry is durable on return; the header
    /// becomes durable with the first flush of the new segment (the writer
    /// starts its dirty range at offset 0), before any record in it counts.
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
        let mut segment = self.install_named(dir, first_lsn)?;
        debug_assert!(segment.map[..SEGMENT_HEADER_BYTES].iter().all(|&b| b == 0));
        segment.map[..SEGMENT_HEADER_BYTES].copy_from_slice(&header.encode());
        Ok(segment)
    }

    /// Installs the very first segment of a log (or the one after a
    /// recovery that kept no segment). Unlike `install`, the header is made
    /// durable before the file gets its name, so a named segment never has a
    /// header that could be lost.
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
        self.install_named(dir, first_lsn)
    }

    fn install_named(self, dir: &Path, first_lsn: Lsn) -> Result<WritableSegment, LogError> {
        let path = dir.join(segment_file_name(first_lsn));
        std::fs::rename(&self.path, &path).map_err(|e| LogError::io("rename", &path, e))?;
        dir::sync(dir)?;
        Ok(WritableSegment {
            path,
            first_lsn,
            map: self.map,
            file: self.file,
        })
    }
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

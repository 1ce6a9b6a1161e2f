//! The shard directory: listing its files, locking it, and making changes to
//! its entries (create, rename, delete) durable.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use super::Lsn;
use super::error::LogError;
use super::format::{FileKind, LOCK_FILE_NAME, classify};
use super::mmap;

/// The log's files in a shard directory, each list sorted by LSN.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub segments: Vec<(Lsn, PathBuf)>,
    pub snapshots: Vec<(Lsn, PathBuf)>,
    pub temps: Vec<PathBuf>,
}

pub(crate) fn list(dir: &Path) -> Result<Listing, LogError> {
    let mut listing = Listing::default();
    let entries = fs::read_dir(dir).map_err(|e| LogError::io("read_dir", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io("read_dir", dir, e))?;
        let path = entry.path();
        match classify(Path::new(&entry.file_name())) {
            FileKind::Segment(lsn) => listing.segments.push((lsn, path)),
            FileKind::Snapshot(lsn) => listing.snapshots.push((lsn, path)),
            FileKind::Temp => listing.temps.push(path),
            FileKind::Other => {}
        }
    }
    listing.segments.sort();
    listing.snapshots.sort();
    Ok(listing)
}

/// Makes the directory's entries (created, renamed, deleted files) durable.
pub(crate) fn sync(dir: &Path) -> Result<(), LogError> {
    let d = File::open(dir).map_err(|e| LogError::io("open", dir, e))?;
    d.sync_all().map_err(|e| LogError::io("fsync", dir, e))
}

pub(crate) fn remove(path: &Path) -> Result<(), LogError> {
    fs::remove_file(path).map_err(|e| LogError::io("unlink", path, e))
}

/// Takes the single-writer lock of the directory. The returned file holds it
/// until dropped.
pub(crate) fn lock(dir: &Path) -> Result<File, LogError> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| LogError::io("open", &path, e))?;
    match mmap::lock_exclusive(&file) {
        Ok(true) => Ok(file),
        Ok(false) => Err(LogError::Locked { dir: dir.into() }),
        Err(e) => Err(LogError::io("flock", &path, e)),
    }
}

/// Size of a file on disk, for stats.
pub(crate) fn file_bytes(path: &Path) -> Result<u64, LogError> {
    let meta = fs::metadata(path).map_err(|e| LogError::io("stat", path, e))?;
    Ok(meta.len())
}

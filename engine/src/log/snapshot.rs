//! Snapshot files: atomic write, validated read, newest-valid selection.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;

use super::error::LogError;
use super::format::{
    HeaderError, SNAPSHOT_HEADER_BYTES, SnapshotHeader, TEMP_SUFFIX, snapshot_file_name,
};
use super::limits::{LSN_MAX, SNAPSHOT_PAYLOAD_BYTES_MAX};
use super::segment::header_hard_error;
use super::{Lsn, Snapshot, dir};

/// A snapshot file the log knows about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapshotFile {
    pub lsn: Lsn,
    pub path: PathBuf,
    pub bytes: u64,
    /// False once a read found it damaged. Files never read are presumed
    /// valid (they are checked when recovery falls back to them).
    pub valid: bool,
}

/// Writes `snap-{lsn}.snap` atomically: temp file, fsync, rename, fsync dir.
/// Either the complete snapshot exists afterwards (even after a crash) or the
/// directory is as before.
pub(crate) fn write(
    dir: &Path,
    shard: u16,
    lsn: Lsn,
    payload: &[u8],
) -> Result<SnapshotFile, LogError> {
    let path = dir.join(snapshot_file_name(lsn));
    let temp = path.with_extension(&TEMP_SUFFIX[1..]);
    let header = SnapshotHeader {
        shard,
        lsn,
        payload_bytes: payload.len() as u64,
        payload_crc: crc32c::crc32c(payload),
    };
    let result = write_temp(&temp, &header.encode(), payload);
    if result.is_err() {
        // Best effort: a leftover temp file is also removed at the next open.
        let _ = std::fs::remove_file(&temp);
    }
    result?;
    std::fs::rename(&temp, &path).map_err(|e| LogError::io("rename", &path, e))?;
    dir::sync(dir)?;
    Ok(SnapshotFile {
        lsn,
        bytes: (SNAPSHOT_HEADER_BYTES + payload.len()) as u64,
        path,
        valid: true,
    })
}

fn write_temp(temp: &Path, header: &[u8], payload: &[u8]) -> Result<(), LogError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(temp)
        .map_err(|e| LogError::io("create", temp, e))?;
    file.write_all(header)
        .and_then(|()| file.write_all(payload))
        .map_err(|e| LogError::io("write", temp, e))?;
    file.sync_all().map_err(|e| LogError::io("fsync", temp, e))
}

/// Reads and checks one snapshot. `Ok(Err(reason))` means the file is damaged
/// (recovery skips it); `Err` is an I/O failure or a file that is intact but
/// not readable by this build (wrong shard, newer version).
pub(crate) fn read(
    path: &Path,
    shard: u16,
    lsn: Lsn,
) -> Result<Result<AlignedVec<16>, String>, LogError> {
    let mut file = File::open(path).map_err(|e| LogError::io("open", path, e))?;
    let file_bytes = dir::file_bytes(path)?;
    let mut head = [0u8; SNAPSHOT_HEADER_BYTES];
    if file_bytes < SNAPSHOT_HEADER_BYTES as u64 {
        return Ok(Err("file shorter than the snapshot header".into()));
    }
    file.read_exact(&mut head)
        .map_err(|e| LogError::io("read", path, e))?;
    let header = match SnapshotHeader::decode(&head, shard) {
        Ok(h) => h,
        Err(HeaderError::Damaged(why)) => return Ok(Err(why.into())),
        Err(e) => {
            return header_hard_error(path, shard, &e)
                .map_or_else(|| Ok(Err(format!("{e:?}"))), Err);
        }
    };
    if let Some(why) = header_mismatch(&header, lsn, file_bytes) {
        return Ok(Err(why.into()));
    }
    let mut payload = AlignedVec::<16>::with_capacity(header.payload_bytes as usize);
    payload.resize(header.payload_bytes as usize, 0);
    file.read_exact(payload.as_mut_slice())
        .map_err(|e| LogError::io("read", path, e))?;
    if crc32c::crc32c(&payload) != header.payload_crc {
        return Ok(Err("payload checksum mismatch".into()));
    }
    Ok(Ok(payload))
}

fn header_mismatch(h: &SnapshotHeader, lsn: Lsn, file_bytes: u64) -> Option<&'static str> {
    if h.lsn != lsn || h.lsn > LSN_MAX {
        return Some("header lsn differs from the file name");
    }
    if h.payload_bytes > SNAPSHOT_PAYLOAD_BYTES_MAX {
        return Some("payload length exceeds the limit");
    }
    if file_bytes != SNAPSHOT_HEADER_BYTES as u64 + h.payload_bytes {
        return Some("file size differs from header + payload length");
    }
    None
}

/// Loads the newest valid snapshot, newest first; damaged ones are logged,
/// marked invalid in `files` and skipped.
pub(crate) fn load_newest(
    shard: u16,
    files: &mut [SnapshotFile],
) -> Result<Option<Snapshot>, LogError> {
    for file in files.iter_mut().rev() {
        match read(&file.path, shard, file.lsn)? {
            Ok(payload) => {
                return Ok(Some(Snapshot {
                    lsn: file.lsn,
                    payload,
                }));
            }
            Err(reason) => {
                tracing::warn!(
                    shard,
                    path = %file.path.display(),
                    %reason,
                    "skipping damaged snapshot; falling back to an older one"
                );
                file.valid = false;
            }
        }
    }
    Ok(None)
}

/// The snapshot files to delete so that only the newest `kept` valid ones
/// remain, plus the LSN of the oldest kept one (0 if none). Damaged files
/// newer than that are kept for inspection until newer snapshots replace them.
pub(crate) fn prune_plan(files: &[SnapshotFile], kept: usize) -> (Vec<SnapshotFile>, Lsn) {
    debug_assert!(files.windows(2).all(|w| w[0].lsn < w[1].lsn));
    let Some(oldest_kept) = files.iter().rev().filter(|f| f.valid).nth(kept - 1) else {
        let oldest = files.iter().find(|f| f.valid).map_or(0, |f| f.lsn);
        return (Vec::new(), oldest);
    };
    let doomed = files
        .iter()
        .filter(|f| f.lsn < oldest_kept.lsn)
        .cloned()
        .collect();
    (doomed, oldest_kept.lsn)
}

//! The only module of the log that uses `unsafe`: mapping segment files,
//! preallocating them and locking the shard directory. Everything unsafe is a
//! thin wrapper with its contract written next to it.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use memmap2::{Mmap, MmapMut, MmapOptions};

/// Allocates `len` bytes of real blocks for `file` (not a sparse hole), so
/// later writes through the mapping never fail for lack of space and never
/// wait for block allocation.
pub(crate) fn allocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(io::Error::other)?;
    // SAFETY: posix_fallocate only reads its integer arguments; the fd is
    // open and owned by `file` for the duration of the call.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    // posix_fallocate returns the error number instead of setting errno.
    match rc {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Maps a segment for writing, pre-faulting every page (`MAP_POPULATE`) so
/// that appends do not take page faults that read from disk.
///
/// The caller must keep the file at least `len` bytes long while mapped: the
/// log never truncates a segment, it only zeroes bytes and deletes whole files
/// (deletion keeps an existing mapping valid).
pub(crate) fn map_writable(file: &File, len: usize) -> io::Result<MmapMut> {
    // SAFETY: memmap2 requires that nobody truncates or otherwise changes the
    // file behind the mapping in ways Rust cannot see. The writer holds the
    // directory lock (`lock_exclusive`), so it is the only process mutating the
    // file; other processes only map it read-only. Segments are never
    // truncated, so every mapped page stays backed.
    unsafe { MmapOptions::new().len(len).populate().map_mut(file) }
}

/// Maps a segment read-only, for recovery and for the change-stream reader.
///
/// The bytes under this mapping may change while it is alive: the writer
/// appends after the last complete record, and recovery zeroes a torn tail.
/// Callers therefore treat every byte they have not validated as untrusted
/// input (checksums, bounds checks) and only hand out records that were
/// complete and checksummed; a complete record is never rewritten while the
/// writer runs.
pub(crate) fn map_readonly(file: &File, len: usize) -> io::Result<Mmap> {
    // SAFETY: see the contract above: the file is never truncated (so every
    // page stays backed; no SIGBUS), and appended bytes only land beyond the
    // records a reader has validated. Nothing is assumed about unvalidated
    // bytes beyond that they are readable memory of the stated length.
    unsafe { MmapOptions::new().len(len).map(file) }
}

/// Takes a non-blocking exclusive `flock` on `file`. Returns `Ok(false)` if
/// another open file description holds it. Released when `file` is closed.
pub(crate) fn lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock only takes an fd and flags; the fd is open and owned by
    // `file` for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(err),
    }
}

//! Every bound the log enforces, in one place. Units last in names.
//!
//! Relations between the bounds are asserted at compile time at the bottom of
//! this file, so changing one number cannot silently break another.

use super::format::{RECORD_ALIGN, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};

/// Largest record payload the log accepts, in any segment size.
///
/// A record never spans two segments, so in segments smaller than
/// `RECORD_PAYLOAD_BYTES_MAX + 96` the effective bound is smaller: see
/// [`record_payload_bytes_max`].
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 1 << 20;

/// Most records one `append_batch` call may carry. A batch is one group
/// commit; this bounds the memory the log borrows per call.
pub const BATCH_RECORDS_MAX: usize = 1 << 16;

/// Smallest segment file (64 KiB).
pub const SEGMENT_BYTES_MIN: u64 = 64 << 10;
/// Largest segment file (1 GiB).
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;
/// Default segment file size (64 MiB).
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// Segment sizes must be a multiple of this (the page size on the platforms we
/// run on), so a segment maps to whole pages.
pub const SEGMENT_BYTES_ALIGN: u64 = 4096;

/// Fewest snapshots kept on disk. One is enough to recover; two (the default)
/// survive the newest one being unreadable.
pub const SNAPSHOTS_KEPT_MIN: usize = 1;
/// Default number of snapshots kept on disk.
pub const SNAPSHOTS_KEPT_DEFAULT: usize = 2;
/// Most snapshots kept on disk (a bound on recovery's fallback walk).
pub const SNAPSHOTS_KEPT_MAX: usize = 16;

/// Largest snapshot payload accepted on write and on read (64 GiB). A read
/// allocates the payload, so a damaged length field must not be trusted
/// beyond this.
pub const SNAPSHOT_PAYLOAD_BYTES_MAX: u64 = 1 << 36;

/// Highest LSN a valid record or file name may carry. Far beyond any real
/// log (2^63 records), it keeps `lsn + 1` arithmetic on values read from
/// disk from overflowing.
pub const LSN_MAX: u64 = (1 << 63) - 1;

/// Highest shard id (there are 256 logical shards, fixed forever).
pub const SHARD_MAX: u16 = 255;

/// The largest payload a record can carry in a segment of `segment_bytes`:
/// the segment header, one record header and the payload must fit, and the
/// payload is capped at [`RECORD_PAYLOAD_BYTES_MAX`].
pub const fn record_payload_bytes_max(segment_bytes: u64) -> usize {
    let room = segment_bytes as usize - SEGMENT_HEADER_BYTES - RECORD_HEADER_BYTES;
    // Round down so that header + payload, padded to RECORD_ALIGN, still fits.
    let room = room - room % RECORD_ALIGN;
    if room < RECORD_PAYLOAD_BYTES_MAX {
        room
    } else {
        RECORD_PAYLOAD_BYTES_MAX
    }
}

const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_MIN.is_multiple_of(SEGMENT_BYTES_ALIGN));
const _: () = assert!(SEGMENT_BYTES_DEFAULT.is_multiple_of(SEGMENT_BYTES_ALIGN));
const _: () = assert!(SEGMENT_BYTES_MAX.is_multiple_of(SEGMENT_BYTES_ALIGN));
const _: () = assert!((SEGMENT_BYTES_ALIGN as usize).is_multiple_of(RECORD_ALIGN));
// A maximal record fits in a default segment; the limit only shrinks in
// segments configured smaller than that.
const _: () = assert!(record_payload_bytes_max(SEGMENT_BYTES_DEFAULT) == RECORD_PAYLOAD_BYTES_MAX);
// Even the smallest segment holds a reasonably large record (>= 32 KiB).
const _: () = assert!(record_payload_bytes_max(SEGMENT_BYTES_MIN) >= 32 << 10);
// Record length travels in a u32 field.
const _: () = assert!(RECORD_PAYLOAD_BYTES_MAX <= u32::MAX as usize);
// Offsets inside a mapped segment are usize.
const _: () = assert!(SEGMENT_BYTES_MAX <= isize::MAX as u64);
const _: () = assert!(SNAPSHOTS_KEPT_MIN >= 1);
const _: () = assert!(SNAPSHOTS_KEPT_MIN <= SNAPSHOTS_KEPT_DEFAULT);
const _: () = assert!(SNAPSHOTS_KEPT_DEFAULT <= SNAPSHOTS_KEPT_MAX);

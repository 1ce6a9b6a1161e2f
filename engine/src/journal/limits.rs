//! Every bound of the commit journal, in one place. Units last in names.

use super::format::{FRAME_HEADER_BYTES, FRAMES_START, entry_span};
use crate::log::limits::RECORD_PAYLOAD_BYTES_MAX;

/// A core stops adding records to the frame it is building once the frame
/// holds this many bytes; the rest of the work waits for the next frame.
/// Small enough that one frame is one cheap write, large enough that a
/// round of thousands of small records is still one frame.
pub const FRAME_BYTES_SOFT_MAX: usize = 1 << 20;

/// The largest frame that can be built: the soft bound plus one maximal
/// record (a record is never split across frames).
pub const FRAME_BYTES_MAX: usize =
    FRAME_HEADER_BYTES + FRAME_BYTES_SOFT_MAX + entry_span(RECORD_PAYLOAD_BYTES_MAX);

/// A released segment is zeroed in pieces of this size, each made durable
/// before the next, so the journal's barriers never queue behind a whole
/// segment's writeback.
pub const ZERO_CHUNK_BYTES: usize = 1 << 20;
/// Pause after each zeroed piece (on the blocking pool, never on a core).
pub const ZERO_CHUNK_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// Smallest journal segment (8 MiB): it must hold at least two largest frames.
pub const SEGMENT_BYTES_MIN: u64 = 8 << 20;
/// Default journal segment (32 MiB).
pub const SEGMENT_BYTES_DEFAULT: u64 = 32 << 20;
/// Largest journal segment (1 GiB).
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;
/// Segment sizes are whole pages.
pub const SEGMENT_BYTES_ALIGN: u64 = 4096;

/// Fewest segments per core: one being written while another is checkpointed.
pub const SEGMENTS_MIN: usize = 2;
/// Default segments per core.
pub const SEGMENTS_DEFAULT: usize = 4;
/// Most segments per core (bounds journal space and recovery's reading).
pub const SEGMENTS_MAX: usize = 64;

const _: () = assert!(SEGMENT_BYTES_MIN as usize >= FRAMES_START + 2 * FRAME_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_MIN.is_multiple_of(SEGMENT_BYTES_ALIGN));
const _: () = assert!(SEGMENT_BYTES_DEFAULT.is_multiple_of(SEGMENT_BYTES_ALIGN));
const _: () = assert!(SEGMENTS_MIN >= 2 && SEGMENTS_MIN <= SEGMENTS_DEFAULT);
const _: () = assert!(SEGMENTS_DEFAULT <= SEGMENTS_MAX);
// Frame lengths travel in a u32 field.
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);

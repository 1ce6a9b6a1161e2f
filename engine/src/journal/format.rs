//! The journal's bytes, version 1: segment header, frame header, entries.
//! `docs/log-format.md` ("The commit journal") is the prose version of this
//! file; keep them in step. Pure code: no I/O.
//!
//! All integers are little-endian. Checksums are CRC32C.
//!
//! ```text
//! segment file (JournalConfig::segment_bytes, preallocated, zero-filled)
//!   0      64-byte segment header
//!   64     zeros up to FRAMES_START
//!   4096   frame, frame, ... (each 16-byte aligned), then zeros
//!
//! segment header (64 bytes)
//!   0  magic "RSVJRN\0\x01"   8  format version u32   12 core u16   14 zero u16
//!   16 segment_bytes u64     24 first_seq u64 (the segment's generation)
//!   32 zeros                 60 crc32c of bytes 0..60
//!
//! frame header (48 bytes), then `payload_bytes` of entries
//!   0  magic "RJFR"          4  header_crc u32 (crc32c of bytes 8..48)
//!   8  seq u64               16 generation u64 (= its segment's first_seq)
//!   24 payload_bytes u32     28 entries u32
//!   32 payload_crc u32       36 prev_crc u32 (header_crc of the frame before)
//!   40 durable_seq u64 (every frame up to it had passed a barrier when
//!      this one was written)
//!
//! entry (16 bytes, then the record payload, zero-padded to 16)
//!   0  shard u16   2 kind u16   4 len u32   8 lsn u64
//! ```

use crate::log::Lsn;
use crate::log::format::{u16_at, u32_at, u64_at};
use crate::log::limits::{LSN_MAX, RECORD_PAYLOAD_BYTES_MAX, SHARD_MAX};

pub(crate) const FORMAT_VERSION: u32 = 1;
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"RSVJRN\0\x01";
pub(crate) const FRAME_MAGIC: [u8; 4] = *b"RJFR";

/// Bytes of the segment header at offset 0.
pub const SEGMENT_HEADER_BYTES: usize = 64;
/// Offset of the first frame in a segment (one page: the header's page is
/// never shared with frame bytes).
pub const FRAMES_START: usize = 4096;
/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = 48;
/// Bytes of an entry header.
pub const ENTRY_HEADER_BYTES: usize = 16;
/// Frames, entries and payloads start at multiples of this.
pub const ALIGN: usize = 16;

const SEGMENT_CRC_OFFSET: usize = 60;

const _: () = assert!(FRAME_HEADER_BYTES.is_multiple_of(ALIGN));
const _: () = assert!(ENTRY_HEADER_BYTES.is_multiple_of(ALIGN));
const _: () = assert!(FRAMES_START.is_multiple_of(ALIGN));
const _: () = assert!(SEGMENT_HEADER_BYTES <= FRAMES_START);

/// The header of one journal segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub core: u16,
    pub segment_bytes: u64,
    pub first_seq: u64,
}

/// What sits where a header or frame was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotValid {
    /// Only zeros: never written (or freed).
    Blank,
    /// Something else; the reason.
    Damaged(&'static str),
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut b = [0u8; SEGMENT_HEADER_BYTES];
        b[..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..14].copy_from_slice(&self.core.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment_bytes.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_seq.to_le_bytes());
        let crc = crc32c::crc32c(&b[..SEGMENT_CRC_OFFSET]);
        b[SEGMENT_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, NotValid> {
        if b.len() < SEGMENT_HEADER_BYTES {
            return Err(NotValid::Damaged("file shorter than its header"));
        }
        let b = &b[..SEGMENT_HEADER_BYTES];
        if b.iter().all(|&x| x == 0) {
            return Err(NotValid::Blank);
        }
        if b[..8] != SEGMENT_MAGIC {
            return Err(NotValid::Damaged("bad magic"));
        }
        if crc32c::crc32c(&b[..SEGMENT_CRC_OFFSET]) != u32_at(b, SEGMENT_CRC_OFFSET) {
            return Err(NotValid::Damaged("header checksum mismatch"));
        }
        if u32_at(b, 8) != FORMAT_VERSION {
            return Err(NotValid::Damaged("unsupported journal format version"));
        }
        let h = SegmentHeader {
            core: u16_at(b, 12),
            segment_bytes: u64_at(b, 16),
            first_seq: u64_at(b, 24),
        };
        if h.first_seq == 0 || h.first_seq > LSN_MAX {
            return Err(NotValid::Damaged("first_seq out of range"));
        }
        Ok(h)
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub header_crc: u32,
    pub seq: u64,
    pub generation: u64,
    pub payload_bytes: u32,
    pub entries: u32,
    pub payload_crc: u32,
    pub prev_crc: u32,
    pub durable_seq: u64,
}

impl FrameHeader {
    /// Bytes the frame occupies (header + payload; payloads are 16-aligned).
    pub fn span(&self) -> usize {
        FRAME_HEADER_BYTES + self.payload_bytes as usize
    }
}

/// Fills the 48-byte header in front of `frame[FRAME_HEADER_BYTES..]` (the
/// entries); returns the header checksum.
pub(crate) fn seal_frame(
    frame: &mut [u8],
    seq: u64,
    generation: u64,
    entries: u32,
    prev_crc: u32,
    durable_seq: u64,
) -> u32 {
    debug_assert!(durable_seq < seq, "a frame cannot be durable when written");
    debug_assert!(frame.len() >= FRAME_HEADER_BYTES);
    debug_assert!(frame.len().is_multiple_of(ALIGN));
    let payload_bytes = (frame.len() - FRAME_HEADER_BYTES) as u32;
    let payload_crc = crc32c::crc32c(&frame[FRAME_HEADER_BYTES..]);
    let h = &mut frame[..FRAME_HEADER_BYTES];
    h[..4].copy_from_slice(&FRAME_MAGIC);
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&generation.to_le_bytes());
    h[24..28].copy_from_slice(&payload_bytes.to_le_bytes());
    h[28..32].copy_from_slice(&entries.to_le_bytes());
    h[32..36].copy_from_slice(&payload_crc.to_le_bytes());
    h[36..40].copy_from_slice(&prev_crc.to_le_bytes());
    h[40..48].copy_from_slice(&durable_seq.to_le_bytes());
    let header_crc = crc32c::crc32c(&h[8..FRAME_HEADER_BYTES]);
    h[4..8].copy_from_slice(&header_crc.to_le_bytes());
    header_crc
}

/// Decodes the frame header at the start of `b` (which may extend to the
/// end of the segment) and checks the payload checksum when the whole
/// payload is inside `b`.
pub(crate) fn decode_frame(b: &[u8]) -> Result<FrameHeader, NotValid> {
    if b.len() < FRAME_HEADER_BYTES {
        return Err(NotValid::Damaged("frame header runs past the segment end"));
    }
    let h = &b[..FRAME_HEADER_BYTES];
    if h.iter().all(|&x| x == 0) {
        return Err(NotValid::Blank);
    }
    if h[..4] != FRAME_MAGIC {
        return Err(NotValid::Damaged("bad frame magic"));
    }
    let header_crc = u32_at(h, 4);
    if crc32c::crc32c(&h[8..FRAME_HEADER_BYTES]) != header_crc {
        return Err(NotValid::Damaged("frame header checksum mismatch"));
    }
    let f = FrameHeader {
        header_crc,
        seq: u64_at(h, 8),
        generation: u64_at(h, 16),
        payload_bytes: u32_at(h, 24),
        entries: u32_at(h, 28),
        payload_crc: u32_at(h, 32),
        prev_crc: u32_at(h, 36),
        durable_seq: u64_at(h, 40),
    };
    if f.durable_seq >= f.seq {
        return Err(NotValid::Damaged(
            "frame claims to be durable before it was written",
        ));
    }
    if !(f.payload_bytes as usize).is_multiple_of(ALIGN) {
        return Err(NotValid::Damaged("frame payload length not aligned"));
    }
    if f.span() > b.len() {
        return Err(NotValid::Damaged("frame runs past the segment end"));
    }
    if crc32c::crc32c(&b[FRAME_HEADER_BYTES..f.span()]) != f.payload_crc {
        return Err(NotValid::Damaged("frame payload checksum mismatch"));
    }
    Ok(f)
}

/// One entry of a frame, borrowed from its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// The shard whose record this is.
    pub shard: u16,
    /// Record kind (as in the shard log).
    pub kind: u16,
    /// The record's LSN in its shard's log.
    pub lsn: Lsn,
    /// The record payload (what the shard log stores).
    pub payload: &'a [u8],
}

/// Bytes an entry with `len` payload bytes occupies.
pub const fn entry_span(len: usize) -> usize {
    (ENTRY_HEADER_BYTES + len).next_multiple_of(ALIGN)
}

/// Appends one entry to a frame buffer.
pub(crate) fn push_entry(buf: &mut Vec<u8>, shard: u16, kind: u16, lsn: Lsn, payload: &[u8]) {
    let start = buf.len();
    debug_assert!(start.is_multiple_of(ALIGN));
    buf.extend_from_slice(&shard.to_le_bytes());
    buf.extend_from_slice(&kind.to_le_bytes());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.extend_from_slice(payload);
    buf.resize(start + entry_span(payload.len()), 0);
}

/// Walks the entries of a checksummed frame payload. A frame that passed
/// its checksum but whose entries do not parse was written wrong: that is
/// an error, never skipped.
pub(crate) fn entries(payload: &[u8], count: u32) -> Result<Vec<EntryRef<'_>>, &'static str> {
    let mut out = Vec::with_capacity(count.min(1 << 16) as usize);
    let mut at = 0;
    for _ in 0..count {
        if at + ENTRY_HEADER_BYTES > payload.len() {
            return Err("entry header runs past the frame");
        }
        let shard = u16_at(payload, at);
        let kind = u16_at(payload, at + 2);
        let len = u32_at(payload, at + 4) as usize;
        let lsn = u64_at(payload, at + 8);
        if shard > SHARD_MAX {
            return Err("entry shard out of range");
        }
        if lsn == 0 || lsn > LSN_MAX {
            return Err("entry lsn out of range");
        }
        if len > RECORD_PAYLOAD_BYTES_MAX || at + entry_span(len) > payload.len() {
            return Err("entry payload runs past the frame");
        }
        let body = at + ENTRY_HEADER_BYTES;
        out.push(EntryRef {
            shard,
            kind,
            lsn,
            payload: &payload[body..body + len],
        });
        at += entry_span(len);
    }
    if at != payload.len() {
        return Err("bytes after the last entry of a frame");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(entries_: &[(u16, u16, Lsn, &[u8])], seq: u64, generation: u64, prev: u32) -> Vec<u8> {
        let mut buf = vec![0u8; FRAME_HEADER_BYTES];
        for (s, k, l, p) in entries_ {
            push_entry(&mut buf, *s, *k, *l, p);
        }
        seal_frame(
            &mut buf,
            seq,
            generation,
            entries_.len() as u32,
            prev,
            seq - 1,
        );
        buf
    }

    #[test]
    fn frames_round_trip_and_reject_damage() {
        let b = frame(&[(3, 1, 7, b"hello"), (255, 2, 1, b"")], 5, 4, 99);
        let h = decode_frame(&b).unwrap();
        assert_eq!((h.seq, h.generation, h.entries, h.prev_crc), (5, 4, 2, 99));
        assert_eq!(h.span(), b.len());
        let e = entries(&b[FRAME_HEADER_BYTES..], h.entries).unwrap();
        assert_eq!(e[0].payload, b"hello");
        assert_eq!((e[1].shard, e[1].kind, e[1].lsn), (255, 2, 1));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x40;
            assert!(decode_frame(&bad).is_err(), "flip at {i} not caught");
        }
        assert_eq!(decode_frame(&[0u8; 64]), Err(NotValid::Blank));
        assert!(decode_frame(&b[..b.len() - 16]).is_err());
    }

    #[test]
    fn segment_headers_round_trip() {
        let h = SegmentHeader {
            core: 2,
            segment_bytes: 1 << 24,
            first_seq: 77,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        let mut bad = b;
        bad[30] ^= 1;
        assert!(matches!(
            SegmentHeader::decode(&bad),
            Err(NotValid::Damaged(_))
        ));
        assert_eq!(SegmentHeader::decode(&[0u8; 64]), Err(NotValid::Blank));
    }
}

//! On-disk format, version 1: byte layouts, checksums and file names.
//! `docs/log-format.md` is the prose version of this file; keep them in step.
//!
//! Pure code: no I/O here, so every rule can be unit-tested on byte slices.

use std::path::Path;

use super::Lsn;
use super::limits::{LSN_MAX, RECORD_PAYLOAD_BYTES_MAX};

pub(crate) const FORMAT_VERSION: u32 = 1;
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"RSVSEG\0\x01";
pub(crate) const SNAPSHOT_MAGIC: [u8; 8] = *b"RSVSNP\0\x01";

pub(crate) const SEGMENT_HEADER_BYTES: usize = 64;
pub(crate) const SNAPSHOT_HEADER_BYTES: usize = 64;
pub(crate) const RECORD_HEADER_BYTES: usize = 32;
/// Records start, and payloads therefore start, at multiples of this.
pub(crate) const RECORD_ALIGN: usize = 16;

/// Record flag: last record of one `append_batch` call.
pub(crate) const FLAG_BATCH_END: u16 = 1;
const FLAGS_KNOWN: u16 = FLAG_BATCH_END;

/// Offset of the header checksum in segment and snapshot headers; it covers
/// every byte before it.
const HEADER_CRC_OFFSET: usize = 60;

const _: () = assert!(SEGMENT_HEADER_BYTES.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(SNAPSHOT_HEADER_BYTES.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(RECORD_HEADER_BYTES.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(HEADER_CRC_OFFSET + 4 == SEGMENT_HEADER_BYTES);
const _: () = assert!(HEADER_CRC_OFFSET + 4 == SNAPSHOT_HEADER_BYTES);

pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Why a header or record could not be read. `Unsupported` and `WrongShard`
/// carry a valid checksum: the file is intact but not ours to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderError {
    Damaged(&'static str),
    Unsupported(u32),
    WrongShard(u16),
}

/// Checks magic, checksum, version and shard of a 64-byte file header.
fn check_file_header(b: &[u8], magic: &[u8; 8], shard: u16) -> Result<(), HeaderError> {
    if b.len() < HEADER_CRC_OFFSET + 4 {
        return Err(HeaderError::Damaged("file shorter than its header"));
    }
    if b[..HEADER_CRC_OFFSET + 4].iter().all(|&x| x == 0) {
        return Err(HeaderError::Damaged("header is all zeros"));
    }
    if &b[..8] != magic {
        return Err(HeaderError::Damaged("bad magic"));
    }
    if crc32c::crc32c(&b[..HEADER_CRC_OFFSET]) != u32_at(b, HEADER_CRC_OFFSET) {
        return Err(HeaderError::Damaged("header checksum mismatch"));
    }
    let version = u32_at(b, 8);
    if version != FORMAT_VERSION {
        return Err(HeaderError::Unsupported(version));
    }
    let found = u16_at(b, 12);
    if found != shard {
        return Err(HeaderError::WrongShard(found));
    }
    Ok(())
}

/// Writes magic, version, shard and (last) the header checksum.
fn seal_file_header(b: &mut [u8; 64], magic: &[u8; 8], shard: u16) {
    b[..8].copy_from_slice(magic);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..14].copy_from_slice(&shard.to_le_bytes());
    let crc = crc32c::crc32c(&b[..HEADER_CRC_OFFSET]);
    b[HEADER_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
}

/// Segment header (64 bytes at offset 0 of every segment file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub shard: u16,
    pub segment_bytes: u64,
    pub first_lsn: Lsn,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut b = [0u8; SEGMENT_HEADER_BYTES];
        b[16..24].copy_from_slice(&self.segment_bytes.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_lsn.to_le_bytes());
        seal_file_header(&mut b, &SEGMENT_MAGIC, self.shard);
        b
    }

    pub fn decode(b: &[u8], shard: u16) -> Result<Self, HeaderError> {
        check_file_header(b, &SEGMENT_MAGIC, shard)?;
        let header = SegmentHeader {
            shard,
            segment_bytes: u64_at(b, 16),
            first_lsn: u64_at(b, 24),
        };
        if header.first_lsn == 0 || header.first_lsn > LSN_MAX {
            return Err(HeaderError::Damaged("segment first_lsn out of range"));
        }
        Ok(header)
    }
}

/// Snapshot header (64 bytes at offset 0 of every snapshot file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SnapshotHeader {
    pub shard: u16,
    pub lsn: Lsn,
    pub payload_bytes: u64,
    pub payload_crc: u32,
}

impl SnapshotHeader {
    pub fn encode(&self) -> [u8; SNAPSHOT_HEADER_BYTES] {
        let mut b = [0u8; SNAPSHOT_HEADER_BYTES];
        b[16..24].copy_from_slice(&self.lsn.to_le_bytes());
        b[24..32].copy_from_slice(&self.payload_bytes.to_le_bytes());
        b[32..36].copy_from_slice(&self.payload_crc.to_le_bytes());
        seal_file_header(&mut b, &SNAPSHOT_MAGIC, self.shard);
        b
    }

    pub fn decode(b: &[u8], shard: u16) -> Result<Self, HeaderError> {
        check_file_header(b, &SNAPSHOT_MAGIC, shard)?;
        Ok(SnapshotHeader {
            shard,
            lsn: u64_at(b, 16),
            payload_bytes: u64_at(b, 24),
            payload_crc: u32_at(b, 32),
        })
    }
}

/// The fixed 32-byte header in front of every record payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub len: u32,
    pub crc: u32,
    pub lsn: Lsn,
    pub synced_lsn: Lsn,
    pub kind: u16,
    pub flags: u16,
}

impl RecordHeader {
    pub fn batch_end(&self) -> bool {
        self.flags & FLAG_BATCH_END != 0
    }

    fn parse(b: &[u8]) -> (Self, u32) {
        let header = RecordHeader {
            len: u32_at(b, 0),
            crc: u32_at(b, 4),
            lsn: u64_at(b, 8),
            synced_lsn: u64_at(b, 16),
            kind: u16_at(b, 24),
            flags: u16_at(b, 26),
        };
        (header, u32_at(b, 28))
    }
}

/// Bytes a record with `len` payload bytes occupies: header + payload, padded
/// with zeros to a multiple of `RECORD_ALIGN`.
pub(crate) const fn record_span(len: usize) -> usize {
    (RECORD_HEADER_BYTES + len).next_multiple_of(RECORD_ALIGN)
}

/// The record checksum: crc32c over header bytes 8..32, then the payload.
/// The length field is covered indirectly: it decides how many payload bytes
/// enter the checksum.
fn record_crc(header_tail: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header_tail), payload)
}

/// Encodes one record into `dst`, which must be exactly `record_span` bytes.
pub(crate) fn encode_record(
    dst: &mut [u8],
    lsn: Lsn,
    synced_lsn: Lsn,
    kind: u16,
    flags: u16,
    payload: &[u8],
) {
    assert_eq!(dst.len(), record_span(payload.len()));
    debug_assert!(synced_lsn < lsn, "a record cannot be durable when written");
    let (head, rest) = dst.split_at_mut(RECORD_HEADER_BYTES);
    let (body, padding) = rest.split_at_mut(payload.len());
    head[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    head[8..16].copy_from_slice(&lsn.to_le_bytes());
    head[16..24].copy_from_slice(&synced_lsn.to_le_bytes());
    head[24..26].copy_from_slice(&kind.to_le_bytes());
    head[26..28].copy_from_slice(&flags.to_le_bytes());
    head[28..32].fill(0);
    body.copy_from_slice(payload);
    padding.fill(0);
    let crc = record_crc(&head[8..], body);
    head[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// A record that passed every check `decode_record` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decoded {
    pub header: RecordHeader,
    /// Offset of the payload within the segment.
    pub payload_at: usize,
    /// Offset just past this record's padding: where the next record starts.
    pub next: usize,
}

/// Why no record could be decoded at an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotARecord {
    /// All-zero header, or no room for a header before the segment end: the
    /// writer wrote nothing more in this segment.
    End,
    /// Non-zero bytes that are not a valid record.
    Invalid(&'static str),
}

/// Decodes and fully validates the record at `at` in `segment` (a whole
/// segment file, header included). Checks everything except the LSN sequence,
/// which only the caller knows.
pub(crate) fn decode_record(segment: &[u8], at: usize) -> Result<Decoded, NotARecord> {
    debug_assert!(at.is_multiple_of(RECORD_ALIGN) && at >= SEGMENT_HEADER_BYTES);
    let Some(head) = segment.get(at..at + RECORD_HEADER_BYTES) else {
        return Err(NotARecord::End);
    };
    if head.iter().all(|&b| b == 0) {
        return Err(NotARecord::End);
    }
    let (header, reserved) = RecordHeader::parse(head);
    let len = header.len as usize;
    if len > RECORD_PAYLOAD_BYTES_MAX {
        return Err(NotARecord::Invalid("record length exceeds the limit"));
    }
    let next = at + record_span(len);
    if next > segment.len() {
        return Err(NotARecord::Invalid("record extends past the segment end"));
    }
    let payload_at = at + RECORD_HEADER_BYTES;
    if record_crc(&head[8..], &segment[payload_at..payload_at + len]) != header.crc {
        return Err(NotARecord::Invalid("record checksum mismatch"));
    }
    // Padding is not checksummed, so it is checked: a damaged byte anywhere
    // in a record's span must invalidate the record.
    if segment[payload_at + len..next].iter().any(|&b| b != 0) {
        return Err(NotARecord::Invalid("record padding is not zero"));
    }
    if reserved != 0 || header.flags & !FLAGS_KNOWN != 0 {
        return Err(NotARecord::Invalid(
            "record has unknown flags or reserved bits set",
        ));
    }
    if header.lsn == 0 || header.lsn > LSN_MAX || header.synced_lsn >= header.lsn {
        return Err(NotARecord::Invalid("record lsn fields are inconsistent"));
    }
    Ok(Decoded {
        header,
        payload_at,
        next,
    })
}

/// True if `at` could hold a record that proves `expected` was durable: a
/// fully valid record with `lsn >= expected` and `synced_lsn >= expected`.
/// Cheap field checks run before the checksum, since recovery calls this at
/// every 16-byte offset of the unexplained remainder of the log.
pub(crate) fn proves_durable(segment: &[u8], at: usize, expected: Lsn) -> Option<RecordHeader> {
    let head = segment.get(at..at + RECORD_HEADER_BYTES)?;
    let (header, _) = RecordHeader::parse(head);
    if header.lsn < expected || header.synced_lsn < expected {
        return None;
    }
    decode_record(segment, at).ok().map(|d| d.header)
}

/// Segment files are named by the first LSN they hold, zero-padded so that
/// lexical order is LSN order.
pub(crate) fn segment_file_name(first_lsn: Lsn) -> String {
    format!("seg-{first_lsn:020}.log")
}

pub(crate) fn snapshot_file_name(lsn: Lsn) -> String {
    format!("snap-{lsn:020}.snap")
}

/// Prefix of the temporary names under which segments are prepared before
/// they are needed: `seg-prepared-{n}.tmp` (`seg-prepared.tmp` before
/// reserva numbered them).
const PREPARED_SEGMENT_PREFIX: &str = "seg-prepared";

/// The temporary name of the `n`th segment prepared in this process.
pub(crate) fn prepared_segment_temp_name(n: u64) -> String {
    format!("{PREPARED_SEGMENT_PREFIX}-{n}{TEMP_SUFFIX}")
}

/// True for the temporary name of a prepared segment.
pub(crate) fn is_prepared_segment_temp(name: &Path) -> bool {
    name.to_str()
        .is_some_and(|n| n.starts_with(PREPARED_SEGMENT_PREFIX) && n.ends_with(TEMP_SUFFIX))
}

/// Name of an unused prepared (allocated, zero-filled, synced) segment left
/// by a writer that closed, so that the next open does not prepare it again.
/// Never written under this name.
pub(crate) const READY_SEGMENT_NAME: &str = "seg-prepared.ready";
/// Suffix of every temporary file; leftovers are deleted at open.
pub(crate) const TEMP_SUFFIX: &str = ".tmp";
/// The file whose `flock` marks the directory's single writer.
pub(crate) const LOCK_FILE_NAME: &str = "LOCK";

/// The kinds of files a shard directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Segment(Lsn),
    Snapshot(Lsn),
    Temp,
    Other,
}

pub(crate) fn classify(name: &Path) -> FileKind {
    let Some(name) = name.to_str() else {
        return FileKind::Other;
    };
    if name.ends_with(TEMP_SUFFIX) {
        return FileKind::Temp;
    }
    let lsn_between = |prefix: &str, suffix: &str| {
        let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
        let ok = digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit());
        // LSN 0 names nothing the writer creates; out-of-range names are
        // not ours either (and must not reach LSN arithmetic).
        digits
            .parse::<Lsn>()
            .ok()
            .filter(|&l| ok && (1..=LSN_MAX).contains(&l))
    };
    if let Some(lsn) = lsn_between("seg-", ".log") {
        return FileKind::Segment(lsn);
    }
    if let Some(lsn) = lsn_between("snap-", ".snap") {
        return FileKind::Snapshot(lsn);
    }
    FileKind::Other
}

//! Frames: a 24-byte header and an rkyv payload, checked by CRC32C.
//!
//! ```text
//! offset  size  field
//!      0     2  magic        u16 LE 0x5652 (bytes 0x52 0x56, "RV")
//!      2     1  version      u8     PROTOCOL_VERSION (2)
//!      3     1  opcode       u8     see `Opcode`
//!      4     2  flags        u16 LE 0
//!      6     2  reserved     u16 LE 0
//!      8     8  request_id   u64 LE chosen by the client, echoed by the server
//!     16     4  payload_len  u32 LE <= FRAME_BYTES_MAX
//!     20     4  crc32c       u32 LE CRC32C of bytes 0..20, then of the payload
//!     24     n  payload      rkyv archive of the opcode's message type
//! ```

use std::fmt;

use bytes::{Buf, BufMut, BytesMut};
use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;

use crate::error::WireError;
use crate::limits::{
    BATCH_OPS_MAX, FRAME_BYTES_MAX, HEADER_BYTES, HEADER_CRC_COVERED_BYTES, MAGIC, PROTOCOL_VERSION,
};
use crate::message::{Batch, Hello, HelloOk, Results};

/// The rkyv bytes of a message, aligned as rkyv needs them.
pub type Payload = AlignedVec<16>;

/// What a frame carries. The byte values are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// Client -> server: [`Hello`].
    Hello = 1,
    /// Server -> client: [`HelloOk`].
    HelloOk = 2,
    /// Client -> server: [`Batch`].
    Batch = 3,
    /// Server -> client: [`Results`].
    Results = 4,
    /// Server -> client: [`WireError`], then the server closes the connection.
    Error = 5,
    /// Either way: empty payload; the peer answers `Pong` with the same request id.
    Ping = 6,
    /// Either way: empty payload.
    Pong = 7,
}

impl Opcode {
    /// The opcode of a byte, if it names one.
    pub fn from_u8(b: u8) -> Option<Opcode> {
        Some(match b {
            1 => Opcode::Hello,
            2 => Opcode::HelloOk,
            3 => Opcode::Batch,
            4 => Opcode::Results,
            5 => Opcode::Error,
            6 => Opcode::Ping,
            7 => Opcode::Pong,
            _ => return None,
        })
    }

    /// The opcode's name in `docs/protocol.md`.
    pub fn name(self) -> &'static str {
        match self {
            Opcode::Hello => "HELLO",
            Opcode::HelloOk => "HELLO_OK",
            Opcode::Batch => "BATCH",
            Opcode::Results => "RESULTS",
            Opcode::Error => "ERROR",
            Opcode::Ping => "PING",
            Opcode::Pong => "PONG",
        }
    }
}

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes are not a valid frame or message. After any of these the byte
/// stream cannot be resynchronised: the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The first two bytes are not the magic `0x52 0x56`.
    BadMagic {
        /// The little-endian u16 found.
        found: u16,
    },
    /// The header names a version this crate does not speak.
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
        /// The version this crate speaks.
        supported: u8,
    },
    /// The opcode byte names no opcode.
    UnknownOpcode {
        /// The byte found.
        opcode: u8,
        /// The frame's request id, as read (not yet checked by the CRC).
        request_id: u64,
    },
    /// Flags or reserved bits are set; versions 1 and 2 define none.
    ReservedBits {
        /// The flags field.
        flags: u16,
        /// The reserved field.
        reserved: u16,
        /// The frame's request id, as read (not yet checked by the CRC).
        request_id: u64,
    },
    /// The payload length exceeds the limit (detected from the header alone).
    TooLarge {
        /// The announced (or produced) payload length.
        len: u64,
        /// The limit.
        max: u32,
        /// The frame's request id, as read (not yet checked by the CRC).
        request_id: u64,
    },
    /// The CRC32C in the header does not match the header and payload.
    ChecksumMismatch {
        /// The CRC in the header.
        expected: u32,
        /// The CRC computed over the bytes received.
        actual: u32,
        /// The frame's request id, as read (unverified).
        request_id: u64,
    },
    /// The payload is not a valid archive of the opcode's message type (or a
    /// `PING`/`PONG` payload is not empty).
    InvalidPayload {
        /// The frame's opcode.
        opcode: Opcode,
        /// The frame's request id.
        request_id: u64,
        /// What the validator said.
        reason: String,
    },
    /// A `BATCH` or `RESULTS` holds more than `BATCH_OPS_MAX` entries.
    TooManyOps {
        /// Entries in the frame.
        count: u64,
        /// The limit.
        max: u32,
        /// The frame's request id.
        request_id: u64,
    },
    /// A message could not be serialised (encoder side).
    Encode {
        /// What the serialiser said.
        reason: String,
    },
}

impl FrameError {
    /// The offending frame's request id, when the header was read far enough
    /// to know it (an `ERROR` reply echoes it; otherwise it carries 0).
    pub fn request_id(&self) -> Option<u64> {
        match self {
            FrameError::UnknownOpcode { request_id, .. }
            | FrameError::ReservedBits { request_id, .. }
            | FrameError::TooLarge { request_id, .. }
            | FrameError::ChecksumMismatch { request_id, .. }
            | FrameError::InvalidPayload { request_id, .. }
            | FrameError::TooManyOps { request_id, .. } => Some(*request_id),
            FrameError::BadMagic { .. }
            | FrameError::UnsupportedVersion { .. }
            | FrameError::Encode { .. } => None,
        }
    }

    /// The [`WireError`] a server sends in its `ERROR` frame before closing.
    pub fn to_wire_error(&self) -> WireError {
        match self {
            FrameError::UnsupportedVersion { supported, .. } => WireError::UnsupportedVersion {
                supported: u16::from(*supported),
            },
            FrameError::TooLarge { max, .. } => WireError::FrameTooLarge { max_bytes: *max },
            other => WireError::invalid(other.to_string()),
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadMagic { found } => {
                write!(f, "bad frame magic {found:#06x}, expected {MAGIC:#06x}")
            }
            FrameError::UnsupportedVersion { found, supported } => write!(
                f,
                "frame version {found} is not supported (this peer speaks {supported})"
            ),
            FrameError::UnknownOpcode { opcode, .. } => write!(f, "unknown opcode {opcode}"),
            FrameError::ReservedBits {
                flags, reserved, ..
            } => write!(
                f,
                "flags {flags:#06x} / reserved {reserved:#06x} must be zero"
            ),
            FrameError::TooLarge { len, max, .. } => {
                write!(f, "payload of {len} bytes exceeds the limit of {max}")
            }
            FrameError::ChecksumMismatch {
                expected, actual, ..
            } => write!(
                f,
                "frame checksum mismatch: header says {expected:#010x}, computed {actual:#010x}"
            ),
            FrameError::InvalidPayload { opcode, reason, .. } => {
                write!(f, "invalid {opcode} payload: {reason}")
            }
            FrameError::TooManyOps { count, max, .. } => {
                write!(f, "{count} entries in one frame exceed the limit of {max}")
            }
            FrameError::Encode { reason } => write!(f, "cannot encode message: {reason}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// A complete, checksum-verified frame. Its payload is not yet validated
/// against the opcode's message type: see [`Frame::message`].
#[derive(Debug, Clone)]
pub struct Frame {
    /// What the payload is.
    pub opcode: Opcode,
    /// The request id from the header.
    pub request_id: u64,
    /// The payload, copied to a 16-byte-aligned buffer (rkyv needs alignment).
    pub payload: AlignedVec<16>,
}

impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.opcode == other.opcode
            && self.request_id == other.request_id
            && self.payload.as_slice() == other.payload.as_slice()
    }
}

impl Eq for Frame {}

/// A frame's message, decoded and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `HELLO`.
    Hello(Hello),
    /// `HELLO_OK`.
    HelloOk(HelloOk),
    /// `BATCH`.
    Batch(Batch),
    /// `RESULTS`.
    Results(Results),
    /// `ERROR`.
    Error(WireError),
    /// `PING`.
    Ping,
    /// `PONG`.
    Pong,
}

impl Message {
    /// The opcode that carries this message.
    pub fn opcode(&self) -> Opcode {
        match self {
            Message::Hello(_) => Opcode::Hello,
            Message::HelloOk(_) => Opcode::HelloOk,
            Message::Batch(_) => Opcode::Batch,
            Message::Results(_) => Opcode::Results,
            Message::Error(_) => Opcode::Error,
            Message::Ping => Opcode::Ping,
            Message::Pong => Opcode::Pong,
        }
    }

    /// The rkyv bytes of the message (empty for `PING`/`PONG`).
    pub fn to_payload(&self) -> Result<Payload, FrameError> {
        let bytes = match self {
            Message::Hello(m) => rkyv::to_bytes::<BoxedError>(m),
            Message::HelloOk(m) => rkyv::to_bytes::<BoxedError>(m),
            Message::Batch(m) => rkyv::to_bytes::<BoxedError>(m),
            Message::Results(m) => rkyv::to_bytes::<BoxedError>(m),
            Message::Error(m) => rkyv::to_bytes::<BoxedError>(m),
            Message::Ping | Message::Pong => return Ok(Payload::new()),
        };
        bytes.map_err(|e| FrameError::Encode {
            reason: e.to_string(),
        })
    }
}

impl Frame {
    /// Validates the payload against the opcode's message type (checked rkyv
    /// access, never unchecked) and deserialises it.
    pub fn message(&self) -> Result<Message, FrameError> {
        let bytes: &[u8] = &self.payload;
        let invalid = |reason: String| FrameError::InvalidPayload {
            opcode: self.opcode,
            request_id: self.request_id,
            reason,
        };
        let check_count = |count: usize| {
            if count > BATCH_OPS_MAX {
                Err(FrameError::TooManyOps {
                    count: count as u64,
                    max: BATCH_OPS_MAX as u32,
                    request_id: self.request_id,
                })
            } else {
                Ok(())
            }
        };
        let err = |e: BoxedError| invalid(e.to_string());
        Ok(match self.opcode {
            Opcode::Hello => {
                Message::Hello(rkyv::from_bytes::<Hello, BoxedError>(bytes).map_err(err)?)
            }
            Opcode::HelloOk => {
                Message::HelloOk(rkyv::from_bytes::<HelloOk, BoxedError>(bytes).map_err(err)?)
            }
            Opcode::Batch => {
                let archived =
                    rkyv::access::<rkyv::Archived<Batch>, BoxedError>(bytes).map_err(err)?;
                check_count(archived.ops.len())?;
                Message::Batch(rkyv::deserialize::<Batch, BoxedError>(archived).map_err(err)?)
            }
            Opcode::Results => {
                let archived =
                    rkyv::access::<rkyv::Archived<Results>, BoxedError>(bytes).map_err(err)?;
                check_count(archived.results.len())?;
                Message::Results(rkyv::deserialize::<Results, BoxedError>(archived).map_err(err)?)
            }
            Opcode::Error => {
                Message::Error(rkyv::from_bytes::<WireError, BoxedError>(bytes).map_err(err)?)
            }
            Opcode::Ping | Opcode::Pong => {
                if !bytes.is_empty() {
                    return Err(invalid(format!(
                        "{} bytes of payload, expected none",
                        bytes.len()
                    )));
                }
                if self.opcode == Opcode::Ping {
                    Message::Ping
                } else {
                    Message::Pong
                }
            }
        })
    }
}

/// Appends one frame (header, then `payload`) to `dst`.
///
/// Refuses a payload over [`FRAME_BYTES_MAX`] with [`FrameError::TooLarge`].
pub fn encode_frame(
    opcode: Opcode,
    request_id: u64,
    payload: &[u8],
    dst: &mut impl BufMut,
) -> Result<(), FrameError> {
    let too_large = || FrameError::TooLarge {
        len: payload.len() as u64,
        max: FRAME_BYTES_MAX as u32,
        request_id,
    };
    if payload.len() > FRAME_BYTES_MAX {
        return Err(too_large());
    }
    let len = u32::try_from(payload.len()).map_err(|_| too_large())?;
    let mut header = [0u8; HEADER_BYTES];
    header[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    header[2] = PROTOCOL_VERSION;
    header[3] = opcode as u8;
    // flags (4..6) and reserved (6..8) stay zero.
    header[8..16].copy_from_slice(&request_id.to_le_bytes());
    header[16..20].copy_from_slice(&len.to_le_bytes());
    let crc = frame_crc(&header[..HEADER_CRC_COVERED_BYTES], payload);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    dst.put_slice(&header);
    dst.put_slice(payload);
    Ok(())
}

/// Appends the frame of `message` to `dst`. Nothing is appended on error.
pub fn encode_message(
    request_id: u64,
    message: &Message,
    dst: &mut impl BufMut,
) -> Result<(), FrameError> {
    let payload = message.to_payload()?;
    encode_frame(message.opcode(), request_id, &payload, dst)
}

/// The frame of `message` as a byte vector.
pub fn message_to_vec(request_id: u64, message: &Message) -> Result<Vec<u8>, FrameError> {
    let payload = message.to_payload()?;
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    encode_frame(message.opcode(), request_id, &payload, &mut out)?;
    Ok(out)
}

/// Appends the `RESULTS` frame answering `request_id`, keeping its payload
/// within `payload_bytes_max` (at most [`FRAME_BYTES_MAX`]): while too large,
/// the largest successful replies are replaced by
/// `Err(WireError::FrameTooLarge)`, which tells the client to ask for that
/// operation alone (a mutation's outcome is then answered from its
/// idempotency record). Returns how many replies were replaced.
pub fn encode_results(
    request_id: u64,
    results: &mut Results,
    payload_bytes_max: usize,
    dst: &mut impl BufMut,
) -> Result<usize, FrameError> {
    let max = payload_bytes_max.min(FRAME_BYTES_MAX);
    let too_large = WireError::FrameTooLarge {
        max_bytes: max as u32,
    };
    let encode = |r: &Results| {
        rkyv::to_bytes::<BoxedError>(r).map_err(|e| FrameError::Encode {
            reason: e.to_string(),
        })
    };
    let mut replaced = 0;
    loop {
        let payload = encode(results)?;
        if payload.len() <= max {
            encode_frame(Opcode::Results, request_id, &payload, dst)?;
            return Ok(replaced);
        }
        let mut sizes = Vec::new();
        for (i, r) in results.results.iter().enumerate() {
            if r.is_ok() {
                let size = rkyv::to_bytes::<BoxedError>(r)
                    .map_err(|e| FrameError::Encode {
                        reason: e.to_string(),
                    })?
                    .len();
                sizes.push((size, i));
            }
        }
        if sizes.is_empty() {
            // Only errors left, and still too large: nothing more to shed.
            return Err(FrameError::TooLarge {
                len: payload.len() as u64,
                max: max as u32,
                request_id,
            });
        }
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        let mut excess = payload.len() - max;
        for (size, i) in sizes {
            results.results[i] = Err(too_large.clone());
            replaced += 1;
            excess = excess.saturating_sub(size);
            if excess == 0 {
                break;
            }
        }
    }
}

fn frame_crc(header: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header), payload)
}

/// Cuts frames out of a byte stream, incrementally.
///
/// Feed it the connection's read buffer after every read: it returns
/// `Ok(None)` until a whole frame is buffered, then removes that frame's bytes
/// and returns it. A bad magic, version, opcode, reserved bits or an oversized
/// length is reported as soon as the bytes that show it arrive, before the
/// payload is awaited. It never panics, whatever the input; after an error the
/// buffer is left as it was and the connection must be closed.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    payload_bytes_max: u32,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new()
    }
}

impl FrameDecoder {
    /// A decoder enforcing [`FRAME_BYTES_MAX`].
    pub fn new() -> Self {
        FrameDecoder {
            payload_bytes_max: FRAME_BYTES_MAX as u32,
        }
    }

    /// A decoder enforcing a smaller payload limit (e.g. the one a server
    /// advertised). Values above [`FRAME_BYTES_MAX`] are clamped to it.
    pub fn with_payload_bytes_max(max: u32) -> Self {
        FrameDecoder {
            payload_bytes_max: max.min(FRAME_BYTES_MAX as u32),
        }
    }

    /// The payload limit this decoder enforces.
    pub fn payload_bytes_max(&self) -> u32 {
        self.payload_bytes_max
    }

    /// Takes the next complete frame off the front of `buf`, if there is one.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(header) = self.check_header(buf)? else {
            return Ok(None);
        };
        let payload_len = header.payload_len as usize;
        let total = HEADER_BYTES + payload_len;
        if buf.len() < total {
            return Ok(None);
        }
        let payload = &buf[HEADER_BYTES..total];
        let actual = frame_crc(&buf[..HEADER_CRC_COVERED_BYTES], payload);
        if actual != header.crc {
            return Err(FrameError::ChecksumMismatch {
                expected: header.crc,
                actual,
                request_id: header.request_id,
            });
        }
        let mut aligned = AlignedVec::<16>::with_capacity(payload_len);
        aligned.extend_from_slice(payload);
        buf.advance(total);
        Ok(Some(Frame {
            opcode: header.opcode,
            request_id: header.request_id,
            payload: aligned,
        }))
    }

    /// How many bytes `buf` must hold before the next frame is complete (at
    /// least a header), for sizing reads. Never more than one maximal frame.
    pub fn bytes_wanted(&self, buf: &[u8]) -> usize {
        if buf.len() < HEADER_BYTES {
            return HEADER_BYTES;
        }
        let len = read_u32(buf, 16).min(self.payload_bytes_max);
        HEADER_BYTES + len as usize
    }

    /// Validates whatever prefix of the header is buffered; the parsed header
    /// once all of it is.
    fn check_header(&self, buf: &[u8]) -> Result<Option<Header>, FrameError> {
        if buf.len() >= 2 {
            let found = read_u16(buf, 0);
            if found != MAGIC {
                return Err(FrameError::BadMagic { found });
            }
        }
        if let Some(&found) = buf.get(2)
            && found != PROTOCOL_VERSION
        {
            return Err(FrameError::UnsupportedVersion {
                found,
                supported: PROTOCOL_VERSION,
            });
        }
        if buf.len() < HEADER_BYTES {
            return Ok(None);
        }
        let request_id = read_u64(buf, 8);
        let opcode = Opcode::from_u8(buf[3]).ok_or(FrameError::UnknownOpcode {
            opcode: buf[3],
            request_id,
        })?;
        let (flags, reserved) = (read_u16(buf, 4), read_u16(buf, 6));
        if flags != 0 || reserved != 0 {
            return Err(FrameError::ReservedBits {
                flags,
                reserved,
                request_id,
            });
        }
        let payload_len = read_u32(buf, 16);
        if payload_len > self.payload_bytes_max {
            return Err(FrameError::TooLarge {
                len: u64::from(payload_len),
                max: self.payload_bytes_max,
                request_id,
            });
        }
        Ok(Some(Header {
            opcode,
            request_id,
            payload_len,
            crc: read_u32(buf, 20),
        }))
    }
}

/// The parts of a validated header the decoder needs.
struct Header {
    opcode: Opcode,
    request_id: u64,
    payload_len: u32,
    crc: u32,
}

// The readers below are only called with offsets inside a checked header.
fn read_u16(buf: &[u8], at: usize) -> u16 {
    let mut b = [0u8; 2];
    b.copy_from_slice(&buf[at..at + 2]);
    u16::from_le_bytes(b)
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn read_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

//! Every bound of the wire protocol, in one place.
//!
//! Units come last in names. Relations between limits are asserted at compile
//! time below. The server advertises the limits it enforces in `HELLO_OK`
//! (`frame_bytes_max`, `batch_ops_max`); a peer never sends more than that.

use reserva_engine::limits::{ID_BYTES_MAX, SHARD_COUNT};

/// Frame magic, little-endian on the wire: the bytes `0x52 0x56` (`"RV"`).
pub const MAGIC: u16 = 0x5652;
/// The frame format and message encoding this crate speaks.
pub const PROTOCOL_VERSION: u8 = 2;
/// Bytes of a frame header: magic, version, opcode, flags, reserved,
/// request id, payload length, CRC32C.
pub const HEADER_BYTES: usize = 24;
/// Header bytes covered by the CRC (everything before the CRC field).
pub const HEADER_CRC_COVERED_BYTES: usize = 20;

/// Largest payload of one frame, in bytes (1 MiB). Enforced in both directions.
pub const FRAME_BYTES_MAX: usize = 1 << 20;
/// Most operations in one `BATCH` frame (and results in one `RESULTS` frame).
pub const BATCH_OPS_MAX: usize = 1024;
/// Most orders one `ListOrders` query may ask for.
pub const LIST_ORDERS_LIMIT_MAX: u32 = 100;

/// Most SKUs one `SellerSkus` query may ask for.
pub const SELLER_SKUS_LIMIT_MAX: u32 = 1_000;
/// Most SKUs in the filter of a `SellerOrders` or `SellerAnalytics` query.
pub const SKU_FILTER_MAX: usize = 2_048;
/// Most events one `UserEvents` query may ask for.
pub const USER_EVENTS_LIMIT_MAX: u32 = 256;

/// Longest credential in `HELLO`, in bytes.
pub const CREDENTIAL_BYTES_MAX: usize = 1024;
/// Longest client name in `HELLO`, in bytes.
pub const CLIENT_NAME_BYTES_MAX: usize = 128;
/// Most cores a shard map may list.
pub const CORES_MAX: usize = 1024;
/// Longest core address (`"ip:port"`, IPv6 in brackets) in a shard map, in bytes.
pub const ADDR_BYTES_MAX: usize = 64;
/// Longest free-text field of a [`WireError`](crate::WireError) a server sends, in bytes.
pub const REASON_BYTES_MAX: usize = 512;

const _: () = assert!(HEADER_CRC_COVERED_BYTES + 4 == HEADER_BYTES);
// The payload length field is a u32; a whole frame stays far from overflow.
const _: () = assert!(FRAME_BYTES_MAX + HEADER_BYTES < u32::MAX as usize);
// A full batch of small operations (a few ids each) fits one frame.
const _: () = assert!(BATCH_OPS_MAX * 4 * ID_BYTES_MAX <= FRAME_BYTES_MAX);
// A shard map with every core listed fits one frame with room to spare.
const _: () =
    assert!((SHARD_COUNT as usize) * 2 + CORES_MAX * (ADDR_BYTES_MAX + 16) <= FRAME_BYTES_MAX / 4);
// The advertised limits fit the u32 fields of `HELLO_OK`.
const _: () = assert!(BATCH_OPS_MAX <= u32::MAX as usize);
// A SKU filter of maximal ids fits one frame with room for the rest of the query.
const _: () = assert!(SKU_FILTER_MAX * (ID_BYTES_MAX + 8) <= FRAME_BYTES_MAX / 4);
// A page of orders is a small fraction of a batch.
const _: () = assert!((LIST_ORDERS_LIMIT_MAX as usize) <= BATCH_OPS_MAX);

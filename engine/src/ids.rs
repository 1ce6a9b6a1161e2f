//! Identifiers: how keys map to shards, and the ids a shard mints.
//!
//! Inventory is sharded by SKU, everything a user owns (orders, carts,
//! reservations they hold) by user id. Ids a shard mints carry the shard in
//! their top 8 bits, so a lookup by id goes straight to one shard.

use std::fmt;
use std::str::FromStr;

use crate::limits::{SEQUENCE_MAX, SHARD_COUNT};

/// A logical shard number, `0..SHARD_COUNT`.
pub type ShardId = u16;

/// The shard that owns `key` (a SKU or a user id): CRC32C of its UTF-8 bytes
/// modulo [`SHARD_COUNT`]. Stable forever: clients in any language compute the
/// same value (see `docs/protocol.md`).
pub fn shard_of(key: &str) -> ShardId {
    (crc32c::crc32c(key.as_bytes()) % u32::from(SHARD_COUNT)) as ShardId
}

/// Why a textual id did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdParseError {
    /// What was expected, e.g. `"res_<shard hex>_<sequence>"`.
    pub expected: &'static str,
}

impl fmt::Display for IdParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed id, expected {}", self.expected)
    }
}

impl std::error::Error for IdParseError {}

macro_rules! minted_id {
    ($name:ident, $prefix:literal, $doc:literal) => {
        #[doc = $doc]
        ///
        /// Layout: shard in bits 56..64, sequence in bits 0..56. Text form:
        #[doc = concat!("`", $prefix, "_<shard, 2 hex digits>_<sequence, decimal>`.")]
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            PartialOrd,
            Ord,
            Hash,
            rkyv::Archive,
            rkyv::Serialize,
            rkyv::Deserialize,
        )]
        #[rkyv(derive(Debug, PartialEq, Eq, Hash))]
        pub struct $name(pub u64);

        impl $name {
            /// Composes an id; `None` if the shard or sequence is out of range.
            pub fn new(shard: ShardId, sequence: u64) -> Option<Self> {
                (shard < SHARD_COUNT && sequence <= SEQUENCE_MAX)
                    .then(|| Self((u64::from(shard) << 56) | sequence))
            }
            /// The shard that minted (and owns) this id.
            pub fn shard(self) -> ShardId {
                (self.0 >> 56) as ShardId
            }
            /// The per-shard sequence number.
            pub fn sequence(self) -> u64 {
                self.0 & SEQUENCE_MAX
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    concat!($prefix, "_{:02x}_{}"),
                    self.shard(),
                    self.sequence()
                )
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, IdParseError> {
                const EXPECTED: &str = concat!($prefix, "_<shard hex>_<sequence>");
                let err = IdParseError { expected: EXPECTED };
                let rest = s.strip_prefix(concat!($prefix, "_")).ok_or(err.clone())?;
                let (shard, seq) = rest.split_once('_').ok_or(err.clone())?;
                if shard.len() != 2 || seq.is_empty() || seq.len() > 17 {
                    return Err(err);
                }
                if !seq.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err);
                }
                let shard = u16::from_str_radix(shard, 16).map_err(|_| err.clone())?;
                let seq: u64 = seq.parse().map_err(|_| err.clone())?;
                Self::new(shard, seq).ok_or(err)
            }
        }
    };
}

minted_id!(
    ReservationId,
    "res",
    "A reservation, minted by the shard of the user who holds it."
);
minted_id!(
    OrderId,
    "ord",
    "An order, minted by the shard of the user who placed it."
);

minted_id!(
    CheckoutId,
    "chk",
    "A checkout (the saga that places an order), minted by the shard of the user who started it."
);
minted_id!(
    ReturnId,
    "ret",
    "A return of some lines of an order, minted by the shard that holds the order."
);

/// The first key `"{prefix}{n}"` (n = 0, 1, ...) that lands on `shard`:
/// handy for tests and tools that need keys owned by a given shard.
///
/// # Panics
/// If `shard >= SHARD_COUNT`.
pub fn key_on_shard(prefix: &str, shard: ShardId, skip: usize) -> String {
    assert!(shard < SHARD_COUNT, "shard {shard} out of range");
    (0u64..)
        .map(|n| format!("{prefix}{n}"))
        .filter(|k| shard_of(k) == shard)
        .nth(skip)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_round_trips_through_text() {
        let id = ReservationId::new(0xab, 12345).unwrap();
        assert_eq!(id.shard(), 0xab);
        assert_eq!(id.sequence(), 12345);
        assert_eq!(id.to_string(), "res_ab_12345");
        assert_eq!("res_ab_12345".parse::<ReservationId>(), Ok(id));
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "res_",
            "res_ab",
            "res_ab_",
            "res_abc_1",
            "res_zz_1",
            "ord_ab_1",
            "res_ab_-1",
            "res_ab_1x",
            "res_ab_99999999999999999999",
        ] {
            assert!(bad.parse::<ReservationId>().is_err(), "{bad:?} parsed");
        }
        assert!(ReservationId::new(256, 0).is_none());
        assert!(OrderId::new(0, SEQUENCE_MAX + 1).is_none());
    }

    /// CRC32C("sku-1") % 256 and CRC32C("user-42") % 256, computed once and frozen.
    const PINNED_SKU_1: u16 = 216;
    const PINNED_USER_42: u16 = 14;

    #[test]
    fn crc32c_is_castagnoli() {
        // The standard check value of CRC-32C over "123456789".
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn shard_of_is_stable_and_in_range() {
        // Pinned values: changing the key hash would move every key to another shard.
        assert_eq!(shard_of("sku-1"), PINNED_SKU_1);
        assert_eq!(shard_of("user-42"), PINNED_USER_42);
        for i in 0..10_000 {
            assert!(shard_of(&format!("user-{i}")) < SHARD_COUNT);
        }
    }
}

//! Input checks shared by every command. Each failure names the field and the limit.

use crate::ids::{ShardId, shard_of};
use crate::limits::{ID_BYTES_MAX, LINE_QTY_MAX};
use crate::sm::error::{EngineError, invalid};

/// An id: 1..=`ID_BYTES_MAX` bytes, no control characters.
pub(crate) fn id(field: &str, value: &str) -> Result<(), EngineError> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > ID_BYTES_MAX {
        return Err(invalid(
            field,
            format!(
                "{} bytes exceeds ID_BYTES_MAX ({ID_BYTES_MAX})",
                value.len()
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Free text of at most `max` bytes (named `limit`).
pub(crate) fn text(field: &str, value: &str, max: usize, limit: &str) -> Result<(), EngineError> {
    if value.len() > max {
        return Err(invalid(
            field,
            format!("{} bytes exceeds {limit} ({max})", value.len()),
        ));
    }
    Ok(())
}

/// A line quantity: `1..=LINE_QTY_MAX`.
pub(crate) fn qty(field: &str, value: u32) -> Result<(), EngineError> {
    if value == 0 {
        return Err(invalid(field, "must be at least 1"));
    }
    if value > LINE_QTY_MAX {
        return Err(invalid(
            field,
            format!("{value} exceeds LINE_QTY_MAX ({LINE_QTY_MAX})"),
        ));
    }
    Ok(())
}

/// A count of items: `1..=max`.
pub(crate) fn count(field: &str, len: usize, max: usize, limit: &str) -> Result<(), EngineError> {
    if len == 0 {
        return Err(invalid(field, "must not be empty"));
    }
    if len > max {
        return Err(invalid(
            field,
            format!("{len} entries exceed {limit} ({max})"),
        ));
    }
    Ok(())
}

/// A shard key (SKU or user id) that must belong to `shard`.
pub(crate) fn key_on(field: &str, key: &str, shard: ShardId) -> Result<(), EngineError> {
    id(field, key)?;
    let owner = shard_of(key);
    if owner != shard {
        return Err(EngineError::WrongShard { owner });
    }
    Ok(())
}

/// A minted id (its shard bits) that must belong to `shard`.
pub(crate) fn minted_on(owner: ShardId, shard: ShardId) -> Result<(), EngineError> {
    if owner != shard {
        return Err(EngineError::WrongShard { owner });
    }
    Ok(())
}

//! Input checks shared by every command. Each failure names the field and the limit.
//!
//! Field names are taken as `impl Display` and turned into text only when a
//! check fails: an accepted command formats and allocates nothing here.

use std::fmt::{self, Display};

use crate::ids::{ShardId, shard_of};
use crate::limits::{ID_BYTES_MAX, LINE_QTY_MAX};
use crate::sm::error::{EngineError, invalid};

/// The name of an element of a list field, `{list}[{index}]` or
/// `{list}[{index}].{name}` (`lines[2].qty`), formatted only on refusal.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Item {
    pub list: &'static str,
    pub index: usize,
    pub name: Option<&'static str>,
}

impl Item {
    /// `{list}[{index}].{name}`.
    pub fn field(list: &'static str, index: usize, name: &'static str) -> Self {
        Item {
            list,
            index,
            name: Some(name),
        }
    }
    /// `{list}[{index}]`.
    pub fn element(list: &'static str, index: usize) -> Self {
        Item {
            list,
            index,
            name: None,
        }
    }
}

impl Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.list, self.index)?;
        match self.name {
            Some(name) => write!(f, ".{name}"),
            None => Ok(()),
        }
    }
}

/// An id: 1..=`ID_BYTES_MAX` bytes, no control characters.
pub(crate) fn id(field: impl Display, value: &str) -> Result<(), EngineError> {
    if value.is_empty() {
        return Err(invalid(field.to_string(), "must not be empty"));
    }
    if value.len() > ID_BYTES_MAX {
        return Err(invalid(
            field.to_string(),
            format!(
                "{} bytes exceeds ID_BYTES_MAX ({ID_BYTES_MAX})",
                value.len()
            ),
        ));
    }
    if has_control(value) {
        return Err(invalid(
            field.to_string(),
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Whether `value` holds a `char::is_control` character (Unicode Cc).
fn has_control(value: &str) -> bool {
    // Ids are nearly always printable ASCII. One branch-free pass over the
    // bytes flags ASCII controls and anything outside printable ASCII; only
    // then are chars decoded (Cc also covers U+0080..=U+009F).
    let suspect = value
        .bytes()
        .fold(false, |acc, b| acc | !(0x20..0x7f).contains(&b));
    suspect && value.chars().any(char::is_control)
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
pub(crate) fn qty(field: impl Display, value: u32) -> Result<(), EngineError> {
    if value == 0 {
        return Err(invalid(field.to_string(), "must be at least 1"));
    }
    if value > LINE_QTY_MAX {
        return Err(invalid(
            field.to_string(),
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
pub(crate) fn key_on(field: impl Display, key: &str, shard: ShardId) -> Result<(), EngineError> {
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

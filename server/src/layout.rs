//! Where things live in a data directory, and how a shard's storage is
//! configured: the one place that names the data directory's parts.

use std::path::{Path, PathBuf};

use reserva_engine::ids::ShardId;
use reserva_engine::log::LogConfig;
use reserva_engine::shard::ShardConfig;

use crate::config::ServerConfig;

/// The directory of one shard.
pub fn shard_dir(data: &Path, shard: ShardId) -> PathBuf {
    data.join("shards").join(format!("{shard:03}"))
}

/// How a shard's log and snapshots are configured on this node.
pub fn shard_config(config: &ServerConfig) -> ShardConfig {
    ShardConfig {
        log: LogConfig {
            segment_bytes: config.segment_bytes,
            ..LogConfig::default()
        },
        snapshot_every_records: config.snapshot_every_records,
    }
}

/// The directory holding every core's commit journal.
pub fn journal_root(data: &Path) -> PathBuf {
    data.join(reserva_engine::journal::JOURNAL_DIR_NAME)
}

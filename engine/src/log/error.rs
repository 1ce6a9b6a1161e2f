//! The log's one error type.

use std::io;
use std::path::PathBuf;

use super::Lsn;

/// Everything that can go wrong in the log. Each message says what an
/// operator can do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// An operating-system call failed. `op` names the call (`"fdatasync"`,
    /// `"fallocate"`, `"rename"`, ...), `path` the file or directory.
    #[error(
        "I/O error during {op} on {path}: {source} (check free space, permissions and the device; then restart the node)"
    )]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Data that had been made durable is damaged: a record (or segment
    /// header) at `offset` in `segment` is invalid, and later records or a
    /// snapshot prove it had passed a durability barrier. Recovery refuses to
    /// skip it.
    #[error(
        "shard {shard}: log corrupt in {segment} at byte offset {offset}: {reason}. Durable data is damaged and was not skipped; restore this shard's directory from a backup, or cut the log at this offset by hand knowingly losing the records after it"
    )]
    Corrupt {
        shard: u16,
        segment: PathBuf,
        offset: u64,
        reason: String,
    },

    /// A durability barrier failed earlier. The state of the unsynced pages
    /// is unknown, so the log refuses all further writes (a failed `fdatasync` is
    /// never retried).
    #[error(
        "shard {shard}: log is poisoned by an earlier failed sync and refuses writes; restart the node so recovery re-reads what reached the disk"
    )]
    Poisoned { shard: u16 },

    /// A record payload exceeds the limit for this log's segment size.
    #[error("record payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge { len: usize, max: usize },

    /// `append_batch` was called with no records.
    #[error("append_batch called with an empty batch")]
    EmptyBatch,

    /// A batch carries more records than `limits::BATCH_RECORDS_MAX`.
    #[error("batch of {records} records exceeds the limit of {max} records")]
    BatchTooLarge { records: usize, max: usize },

    /// A reader asked for LSNs that snapshots have already compacted away.
    #[error(
        "lsn {requested} is no longer in the log (first available: {first_available}); start from a snapshot instead"
    )]
    Compacted {
        requested: Lsn,
        first_available: Lsn,
    },

    /// No snapshot plus the remaining segments covers every LSN from 1: the
    /// log starts at `first_in_log` but the newest usable snapshot ends at
    /// `snapshot_lsn` (0: none).
    #[error(
        "shard {shard}: log starts at lsn {first_in_log} but the newest usable snapshot is at lsn {snapshot_lsn}; records in between are missing (snapshots may be corrupt or deleted); restore the shard's directory"
    )]
    Gap {
        shard: u16,
        first_in_log: Lsn,
        snapshot_lsn: Lsn,
    },

    /// A file in the directory belongs to a different shard.
    #[error(
        "{path} belongs to shard {found}, not shard {expected}; the directory holds the wrong shard's files"
    )]
    WrongShard {
        path: PathBuf,
        expected: u16,
        found: u16,
    },

    /// A file was written by a format version this build cannot read.
    #[error(
        "{path} has format version {version}, this build reads version {supported}; run a newer reserva"
    )]
    UnsupportedVersion {
        path: PathBuf,
        version: u32,
        supported: u32,
    },

    /// Another process (or another `Log` in this one) is writing the shard.
    #[error("{dir} is locked by another writer; stop it first (one writer per shard)")]
    Locked { dir: PathBuf },

    /// A reader found no segment files in the directory.
    #[error("{dir} holds no log segments; is it a shard directory?")]
    NoSegments { dir: PathBuf },

    /// `write_snapshot` was asked for an LSN it cannot snapshot.
    #[error(
        "cannot snapshot at lsn {lsn}: it must be between the newest snapshot ({newest_snapshot}) and the durable lsn ({durable}), and not before the log's first lsn minus one ({floor})"
    )]
    SnapshotLsn {
        lsn: Lsn,
        durable: Lsn,
        newest_snapshot: Lsn,
        floor: Lsn,
    },

    /// A snapshot payload exceeds `limits::SNAPSHOT_PAYLOAD_BYTES_MAX`.
    #[error("snapshot payload of {len} bytes exceeds the limit of {max} bytes")]
    SnapshotTooLarge { len: u64, max: u64 },

    /// The configuration or an argument is out of range.
    #[error("invalid log configuration: {0}")]
    Config(String),
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        LogError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

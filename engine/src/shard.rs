//! A durable shard: the state machine joined to its log.
//!
//! Group commit happens here in two steps the server drives: [`Shard::apply_batch`]
//! applies a batch of requests and appends the successful ones to the log
//! (not yet durable), then [`Shard::sync`] is the one durability barrier for
//! the whole batch. Answers may be released only after `sync` returns.
//!
//! Recovery ([`Shard::open`]) loads the newest valid snapshot and replays the
//! log after it. Every replayed request must succeed again exactly as it did
//! when it was logged; anything else is a determinism failure and stops the
//! shard with the LSN that diverged.

use std::fmt;
use std::path::{Path, PathBuf};

use rkyv::rancor;

use crate::ids::{ReservationId, ShardId};
use crate::limits::TICK_EXPIRIES_MAX;
use crate::log::{Log, LogConfig, LogError, LogReader, Lsn, PendingSync, RecordRef, TailCut};
use crate::sm::{Command, EngineError, LogEntry, Outcome, Request, ShardState, StateImage};

/// How a shard is opened.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Log segment size and snapshot retention.
    pub log: LogConfig,
    /// Take a snapshot after this many records since the last one (0 = never automatically).
    pub snapshot_every_records: u64,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            log: LogConfig::default(),
            snapshot_every_records: 1_000_000,
        }
    }
}

/// What recovery found and did.
#[derive(Debug, Clone)]
pub struct RecoveryReport {
    /// LSN of the snapshot recovery started from, if any.
    pub snapshot_lsn: Option<Lsn>,
    /// Records replayed after the snapshot.
    pub records_replayed: u64,
    /// The torn tail that was cut off, if any.
    pub tail_cut: Option<TailCut>,
    /// Last LSN in the log after recovery.
    pub last_lsn: Lsn,
}

/// Why a shard cannot serve.
#[derive(Debug)]
#[non_exhaustive]
pub enum ShardError {
    /// The log failed (I/O, corruption, poisoned).
    Log(LogError),
    /// A logged record cannot be decoded.
    BadRecord {
        /// Shard.
        shard: ShardId,
        /// Its LSN.
        lsn: Lsn,
        /// What is wrong with it.
        reason: String,
    },
    /// Replaying a record did not give the result it had when it was logged.
    ReplayDiverged {
        /// Shard.
        shard: ShardId,
        /// LSN of the record.
        lsn: Lsn,
        /// What happened on replay.
        reason: String,
    },
    /// A snapshot decoded but its state is invalid.
    BadSnapshot {
        /// Shard.
        shard: ShardId,
        /// Snapshot LSN.
        lsn: Lsn,
        /// What is wrong.
        reason: String,
    },
    /// A snapshot was asked for while appended records are not yet durable.
    NotSynced {
        /// Shard.
        shard: ShardId,
    },
    /// An earlier append or sync failed: the in-memory state is ahead of the
    /// log, so the shard refuses everything until it is reopened (recovered).
    Poisoned {
        /// Shard.
        shard: ShardId,
    },
}

impl fmt::Display for ShardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardError::Log(e) => write!(f, "log: {e}"),
            ShardError::BadRecord { shard, lsn, reason } => {
                write!(f, "shard {shard}: record {lsn} cannot be decoded: {reason}")
            }
            ShardError::ReplayDiverged { shard, lsn, reason } => {
                write!(
                    f,
                    "shard {shard}: replay of record {lsn} diverged: {reason}"
                )
            }
            ShardError::BadSnapshot { shard, lsn, reason } => {
                write!(f, "shard {shard}: snapshot at {lsn} is invalid: {reason}")
            }
            ShardError::NotSynced { shard } => {
                write!(
                    f,
                    "shard {shard}: cannot snapshot with records not yet durable"
                )
            }
            ShardError::Poisoned { shard } => write!(
                f,
                "shard {shard} is poisoned by an earlier log failure; restart to recover it from its log"
            ),
        }
    }
}

impl std::error::Error for ShardError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ShardError::Log(e) => Some(e),
            _ => None,
        }
    }
}

impl From<LogError> for ShardError {
    fn from(e: LogError) -> Self {
        ShardError::Log(e)
    }
}

/// One logical shard: state plus log, owned by exactly one thread.
pub struct Shard {
    state: ShardState,
    log: Log,
    config: ShardConfig,
    records_since_snapshot: u64,
    /// Records of applied requests not yet taken by [`Shard::take_staged`].
    staged: Vec<Staged>,
    staged_bytes: usize,
    /// The LSN of the last record handed out by `apply` (staged, in flight
    /// to the journal, or appended to the log).
    assigned_lsn: Lsn,
    poisoned: bool,
}

/// The log record of one applied request, with the LSN it will have in the
/// shard's log.
#[derive(Debug)]
pub struct Staged {
    /// Its LSN.
    pub lsn: Lsn,
    /// Record kind.
    pub kind: u16,
    /// The encoded `LogEntry`.
    pub bytes: rkyv::util::AlignedVec<16>,
}

impl fmt::Debug for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shard")
            .field("shard", &self.state.shard())
            .field("last_lsn", &self.log.last_lsn())
            .field("durable_lsn", &self.log.durable_lsn())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl Shard {
    /// Opens (or creates) the shard in `dir` and recovers its state.
    pub fn open(
        dir: &Path,
        shard: ShardId,
        config: ShardConfig,
    ) -> Result<(Shard, RecoveryReport), ShardError> {
        let (log, recovery) = Log::open(dir, shard, config.log.clone())?;
        let (mut state, snapshot_lsn) = match recovery.snapshot {
            Some(snap) => (
                decode_snapshot(shard, snap.lsn, &snap.payload)?,
                Some(snap.lsn),
            ),
            None => (ShardState::new(shard), None),
        };
        let from = snapshot_lsn.map_or(1, |l| l + 1);
        let mut reader = log.read_from(from)?;
        let mut replayed = 0u64;
        while let Some(record) = reader.next()? {
            replay_one(&mut state, &record)?;
            replayed += 1;
        }
        let report = RecoveryReport {
            snapshot_lsn,
            records_replayed: replayed,
            tail_cut: recovery.tail_cut,
            last_lsn: log.last_lsn(),
        };
        debug_assert_eq!(state.check_invariants(), Ok(()));
        let shard = Shard {
            state,
            assigned_lsn: log.last_lsn(),
            log,
            config,
            records_since_snapshot: replayed,
            staged: Vec::new(),
            staged_bytes: 0,
            poisoned: false,
        };
        Ok((shard, report))
    }

    /// Applies `requests` in order at batch time `now_ms` and appends the
    /// successful, state-changing ones to the log as one batch. Nothing is
    /// durable until [`Shard::sync`]; do not answer before it returns.
    pub fn apply_batch(
        &mut self,
        now_ms: u64,
        requests: impl IntoIterator<Item = Request>,
    ) -> Result<Vec<Result<Outcome, EngineError>>, ShardError> {
        self.check_poisoned()?;
        let results = requests
            .into_iter()
            .map(|r| self.apply(now_ms, r))
            .collect();
        self.append_staged()?;
        Ok(results)
    }

    /// Applies one request and stages its log record (if it changed state).
    /// Staged records reach the log with [`Shard::append_staged`]; a server
    /// interleaves reads between `apply` calls and appends once per batch.
    pub fn apply(&mut self, now_ms: u64, request: Request) -> Result<Outcome, EngineError> {
        if self.poisoned {
            return Err(EngineError::InvalidInput {
                field: "shard".into(),
                reason: format!("shard {} is poisoned", self.state.shard()),
            });
        }
        let kind = request.command.kind();
        // Encode before applying, so a request that cannot be logged never changes state.
        let entry = LogEntry { now_ms, request };
        let bytes = encode_entry(&entry, self.log.record_payload_bytes_max())?;
        let applied = self.state.apply(now_ms, &entry.request)?;
        if applied.is_new {
            self.assigned_lsn += 1;
            self.staged_bytes += bytes.len();
            self.staged.push(Staged {
                lsn: self.assigned_lsn,
                kind,
                bytes,
            });
        }
        Ok(applied.outcome)
    }

    /// Appends every staged record as one batch (not yet durable).
    pub fn append_staged(&mut self) -> Result<usize, ShardError> {
        let staged = self.take_staged();
        self.append_committed(&staged)
    }

    /// The records staged since the last call, in LSN order, for a commit
    /// journal; they reach this shard's log with [`Shard::append_committed`]
    /// once the journal made them durable.
    pub fn take_staged(&mut self) -> Vec<Staged> {
        self.staged_bytes = 0;
        std::mem::take(&mut self.staged)
    }

    /// Payload bytes of the staged records not yet taken.
    pub fn staged_bytes(&self) -> usize {
        self.staged_bytes
    }

    /// Whether enough records were appended since the last snapshot that
    /// [`Shard::maybe_snapshot`] would take one.
    pub fn snapshot_due(&self) -> bool {
        let every = self.config.snapshot_every_records;
        every != 0 && self.records_since_snapshot >= every
    }

    /// Stops the shard: it refuses everything until reopened. For a server
    /// whose commit journal failed, so that state applied in memory but never
    /// made durable is never read.
    pub fn poison(&mut self) {
        self.poisoned = true;
    }

    /// Appends records taken with [`Shard::take_staged`] to the log as one
    /// batch, in order: they must continue the log exactly. A failed append
    /// poisons the shard.
    pub fn append_committed(&mut self, records: &[Staged]) -> Result<usize, ShardError> {
        self.check_poisoned()?;
        let Some(first) = records.first() else {
            return Ok(0);
        };
        assert_eq!(
            first.lsn,
            self.log.last_lsn() + 1,
            "shard {}: committed records continue the log",
            self.id()
        );
        let appended = self
            .log
            .append_batch(records.iter().map(|r| (r.kind, r.bytes.as_slice())));
        if let Err(e) = appended {
            self.poisoned = true;
            return Err(e.into());
        }
        debug_assert_eq!(self.log.last_lsn(), records[records.len() - 1].lsn);
        self.records_since_snapshot += records.len() as u64;
        Ok(records.len())
    }

    /// A job that prepares the log's next segment off this thread, when one
    /// is due (see `Log::prepare_job`); hand its result to
    /// [`Shard::install_prepared`].
    pub fn prepare_job(&mut self) -> Option<crate::log::PrepareJob> {
        self.log.prepare_job()
    }

    /// Takes a prepared next segment (see `Log::install_prepared`).
    pub fn install_prepared(&mut self, result: Result<crate::log::Prepared, crate::log::LogError>) {
        self.log.install_prepared(result);
    }

    /// Whether records applied to the state have not all reached the log
    /// yet (staged, or waiting for a journal barrier).
    pub fn has_records_in_flight(&self) -> bool {
        self.assigned_lsn != self.log.last_lsn()
    }

    /// The durability barrier for everything appended so far. On failure the
    /// shard is poisoned (the effect of a failed sync is unknown).
    pub fn sync(&mut self) -> Result<Lsn, ShardError> {
        self.check_poisoned()?;
        self.log.sync().map_err(|e| {
            self.poisoned = true;
            ShardError::from(e)
        })
    }

    /// [`Shard::sync`] in two halves, so that the blocking part
    /// ([`PendingSync::run`]) can run on another thread while the owner serves
    /// other shards. Appends may go on in between; they wait for a later
    /// barrier. Answers of records appended before `begin_sync` may be
    /// released once `finish_sync` returns `Ok`.
    pub fn begin_sync(&mut self) -> Result<Option<PendingSync>, ShardError> {
        self.check_poisoned()?;
        self.log.begin_sync().map_err(|e| {
            self.poisoned = true;
            ShardError::from(e)
        })
    }

    /// The second half of [`Shard::begin_sync`]; a failed sync poisons the shard.
    pub fn finish_sync(
        &mut self,
        pending: PendingSync,
        result: std::io::Result<()>,
    ) -> Result<Lsn, ShardError> {
        self.check_poisoned()?;
        self.log.finish_sync(pending, result).map_err(|e| {
            self.poisoned = true;
            ShardError::from(e)
        })
    }

    /// `apply_batch` then `sync`: a whole group commit.
    pub fn commit(
        &mut self,
        now_ms: u64,
        requests: impl IntoIterator<Item = Request>,
    ) -> Result<Vec<Result<Outcome, EngineError>>, ShardError> {
        let results = self.apply_batch(now_ms, requests)?;
        self.sync()?;
        Ok(results)
    }

    /// The housekeeping request due at `now_ms` (expiries and idempotency
    /// pruning), if any. The server submits it like any other request.
    pub fn tick_request(&self, now_ms: u64) -> Option<Request> {
        self.tick_request_sparing(now_ms, |_| false)
    }

    /// [`Shard::tick_request`], but reservations for which `spared` is true
    /// are not expired (the server spares holds under an order until they are
    /// deducted). `None` when nothing but spared reservations is due.
    pub fn tick_request_sparing(
        &self,
        now_ms: u64,
        spared: impl Fn(ReservationId) -> bool,
    ) -> Option<Request> {
        let due = self.state.next_deadline_ms().is_some_and(|at| at <= now_ms);
        if !due {
            return None;
        }
        let mut expire = self.state.due_expirations(now_ms, 2 * TICK_EXPIRIES_MAX);
        let before = expire.len();
        expire.retain(|id| !spared(*id));
        expire.truncate(TICK_EXPIRIES_MAX);
        if expire.len() < before
            && expire.is_empty()
            && self
                .state
                .next_housekeeping_deadline_ms()
                .is_none_or(|at| at > now_ms)
        {
            return None;
        }
        Some(Request::new(Command::Tick { expire }))
    }

    /// Writes a snapshot of the current state (all appended records must be durable).
    pub fn snapshot(&mut self) -> Result<Lsn, ShardError> {
        self.check_poisoned()?;
        let shard = self.state.shard();
        if self.log.last_lsn() != self.log.durable_lsn() || self.has_records_in_flight() {
            return Err(ShardError::NotSynced { shard });
        }
        let lsn = self.log.durable_lsn();
        let bytes = rkyv::to_bytes::<rancor::Error>(&self.state.to_image()).map_err(|e| {
            ShardError::BadSnapshot {
                shard,
                lsn,
                reason: e.to_string(),
            }
        })?;
        self.log.write_snapshot(lsn, &bytes)?;
        self.records_since_snapshot = 0;
        Ok(lsn)
    }

    /// Makes the log durable if it is not, then snapshots the state (an
    /// operator's snapshot, or before a shard is handed to another core).
    /// Returns the LSN covered; a shard without records has nothing to
    /// snapshot and returns 0.
    pub fn snapshot_now(&mut self) -> Result<Lsn, ShardError> {
        self.check_poisoned()?;
        if self.log.last_lsn() != self.log.durable_lsn() {
            self.sync()?;
        }
        if self.log.last_lsn() == 0 {
            return Ok(0);
        }
        self.snapshot()
    }

    /// [`Shard::snapshot_now`], then deletes every older snapshot and every
    /// segment the new snapshot covers (the active segment stays).
    pub fn compact(&mut self) -> Result<Lsn, ShardError> {
        let lsn = self.snapshot_now()?;
        self.log.compact()?;
        Ok(lsn)
    }

    /// Records appended since the last snapshot (or since the shard was opened).
    pub fn records_since_snapshot(&self) -> u64 {
        self.records_since_snapshot
    }

    /// Takes a snapshot if `snapshot_every_records` records were appended
    /// since the last one, first making the log durable if it is not (so
    /// snapshots also happen when barriers are not on the answer path).
    pub fn maybe_snapshot(&mut self) -> Result<Option<Lsn>, ShardError> {
        let every = self.config.snapshot_every_records;
        if every == 0 || self.records_since_snapshot < every || self.has_records_in_flight() {
            return Ok(None);
        }
        if self.log.last_lsn() != self.log.durable_lsn() {
            self.sync()?;
        }
        self.snapshot().map(Some)
    }

    /// The state (reads are served from here).
    pub fn state(&self) -> &ShardState {
        &self.state
    }
    /// This shard's number.
    pub fn id(&self) -> ShardId {
        self.state.shard()
    }
    /// LSN of the last appended record.
    pub fn last_lsn(&self) -> Lsn {
        self.log.last_lsn()
    }
    /// The LSN the last staged record will get once appended (`last_lsn`
    /// when nothing is staged): grows with every state-changing `apply`.
    pub fn staged_lsn(&self) -> Lsn {
        self.assigned_lsn
    }
    /// LSN of the last durable record.
    pub fn durable_lsn(&self) -> Lsn {
        self.log.durable_lsn()
    }
    /// The log (for stats and the change stream).
    pub fn log(&self) -> &Log {
        &self.log
    }
    /// Whether an earlier failure poisoned the shard.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }
    /// Directory of this shard.
    pub fn dir(&self) -> PathBuf {
        self.log.dir().to_path_buf()
    }

    /// Test hook: the next sync fails (as a failed `msync` would).
    #[cfg(any(test, feature = "testing"))]
    pub fn fail_next_sync(&mut self) {
        self.log.fail_next_sync();
    }

    fn check_poisoned(&self) -> Result<(), ShardError> {
        if self.poisoned {
            return Err(ShardError::Poisoned {
                shard: self.state.shard(),
            });
        }
        Ok(())
    }
}

fn encode_entry(entry: &LogEntry, max: usize) -> Result<rkyv::util::AlignedVec<16>, EngineError> {
    let bytes = rkyv::to_bytes::<rancor::Error>(entry).map_err(|e| EngineError::InvalidInput {
        field: "request".into(),
        reason: format!("cannot be encoded: {e}"),
    })?;
    if bytes.len() > max {
        return Err(EngineError::InvalidInput {
            field: "request".into(),
            reason: format!(
                "encoded size {} exceeds the log's record limit ({max} bytes; RECORD_PAYLOAD_BYTES_MAX or the segment size)",
                bytes.len()
            ),
        });
    }
    Ok(bytes)
}

/// Decodes one log record's payload (the change stream uses this too).
pub fn decode_entry(shard: ShardId, record: &RecordRef<'_>) -> Result<LogEntry, ShardError> {
    let bad = |reason: String| ShardError::BadRecord {
        shard,
        lsn: record.lsn,
        reason,
    };
    let entry = rkyv::from_bytes::<LogEntry, rancor::Error>(record.payload)
        .map_err(|e| bad(e.to_string()))?;
    if entry.request.command.kind() != record.kind {
        return Err(bad(format!(
            "record kind {} does not match its command (kind {})",
            record.kind,
            entry.request.command.kind()
        )));
    }
    Ok(entry)
}

pub(crate) fn replay_one(state: &mut ShardState, record: &RecordRef<'_>) -> Result<(), ShardError> {
    let shard = state.shard();
    let entry = decode_entry(shard, record)?;
    let diverged = |reason: String| ShardError::ReplayDiverged {
        shard,
        lsn: record.lsn,
        reason,
    };
    match state.apply(entry.now_ms, &entry.request) {
        Ok(applied) if applied.is_new => Ok(()),
        Ok(_) => Err(diverged(
            "answered from an idempotency record instead of applying".into(),
        )),
        Err(e) => Err(diverged(format!("refused on replay: {e}"))),
    }
}

pub(crate) fn decode_snapshot(
    shard: ShardId,
    lsn: Lsn,
    payload: &[u8],
) -> Result<ShardState, ShardError> {
    let bad = |reason: String| ShardError::BadSnapshot { shard, lsn, reason };
    // The current image layout first; snapshots written before wishlists
    // hold version 2, before checkouts version 1.
    let image = match rkyv::from_bytes::<StateImage, rancor::Error>(payload) {
        Ok(image) if image.version == crate::sm::IMAGE_VERSION => image,
        first => {
            if let Ok(v2) = rkyv::from_bytes::<crate::sm::StateImageV2, rancor::Error>(payload)
                && v2.version == 2
            {
                StateImage::from(v2)
            } else if let Ok(v1) =
                rkyv::from_bytes::<crate::sm::StateImageV1, rancor::Error>(payload)
                && v1.version == 1
            {
                StateImage::from(v1)
            } else {
                return Err(bad(match first {
                    Ok(image) => format!("unknown state image version {}", image.version),
                    Err(e) => e.to_string(),
                }));
            }
        }
    };
    if image.shard != shard {
        return Err(bad(format!("image is of shard {}", image.shard)));
    }
    ShardState::from_image(image).map_err(bad)
}

/// Opens a change-stream reader on a shard directory from `from` (inclusive)
/// and decodes each record into the request that was applied.
pub struct ChangeStream {
    shard: ShardId,
    reader: LogReader,
}

impl ChangeStream {
    /// Tails `dir` (a shard directory another process or thread may be writing).
    pub fn open(dir: &Path, shard: ShardId, from: Lsn) -> Result<Self, ShardError> {
        Ok(ChangeStream {
            shard,
            reader: LogReader::open(dir, shard, from)?,
        })
    }

    /// The next committed change, or `None` at the current end (call again later).
    pub fn next_change(&mut self) -> Result<Option<(Lsn, LogEntry)>, ShardError> {
        let shard = self.shard;
        match self.reader.next()? {
            Some(record) => Ok(Some((record.lsn, decode_entry(shard, &record)?))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::key_on_shard;
    use crate::sm::{
        CommerceCommand, Currency, IMAGE_VERSION, Money, OrderV1, StateImageV1, StateImageV2,
    };

    const SHARD: ShardId = 7;

    fn apply(state: &mut ShardState, now: u64, command: Command) {
        state.apply(now, &Request::new(command)).unwrap();
    }

    /// A SKU with stock and a cart: what image version 1 could hold.
    fn catalogue() -> ShardState {
        let mut s = ShardState::new(SHARD);
        let user = key_on_shard("user-", SHARD, 0);
        let sku = key_on_shard("sku-", SHARD, 0);
        let eur = Currency::parse("EUR").unwrap();
        apply(
            &mut s,
            10,
            Command::UpsertSku {
                sku: sku.clone(),
                seller_id: "acme".into(),
                title: "thing".into(),
                price: Money {
                    amount_minor: 500,
                    currency: eur,
                },
            },
        );
        apply(
            &mut s,
            11,
            Command::SetStock {
                sku: sku.clone(),
                warehouse: "w1".into(),
                on_hand: 9,
            },
        );
        apply(
            &mut s,
            12,
            Command::CartSet {
                user_id: user,
                sku,
                qty: 2,
            },
        );
        s
    }

    /// A catalogue and a cart plus store credit: every image field group
    /// but wishlists.
    fn state_before_wishlists() -> ShardState {
        let mut s = catalogue();
        let grant = CommerceCommand::CreditGrant {
            user_id: key_on_shard("user-", SHARD, 0),
            amount: Money {
                amount_minor: 1_000,
                currency: Currency::parse("EUR").unwrap(),
            },
        };
        apply(&mut s, 13, Command::Commerce(Box::new(grant)));
        s
    }

    fn bytes<T>(value: &T) -> Vec<u8>
    where
        T: for<'a> rkyv::Serialize<
                rkyv::api::high::HighSerializer<
                    rkyv::util::AlignedVec,
                    rkyv::ser::allocator::ArenaHandle<'a>,
                    rancor::Error,
                >,
            >,
    {
        rkyv::to_bytes::<rancor::Error>(value).unwrap().to_vec()
    }

    #[test]
    fn snapshots_of_every_image_version_load() {
        let mut s = state_before_wishlists();
        let v3 = bytes(&s.to_image());
        let loaded = decode_snapshot(SHARD, 1, &v3).unwrap();
        assert_eq!(loaded.checksum(), s.checksum());

        // Version 2: the same state written before wishlists existed.
        let i = s.to_image();
        let v2 = StateImageV2 {
            version: 2,
            shard: i.shard,
            clock_ms: i.clock_ms,
            next_reservation_seq: i.next_reservation_seq,
            next_order_seq: i.next_order_seq,
            skus: i.skus,
            reservations: i.reservations,
            orders: i.orders,
            carts: i.carts,
            idempotency: i.idempotency,
            next_checkout_seq: i.next_checkout_seq,
            next_return_seq: i.next_return_seq,
            checkouts: i.checkouts,
            credit: i.credit,
            users: i.users,
            cards: i.cards,
        };
        let loaded = decode_snapshot(SHARD, 1, &bytes(&v2)).unwrap();
        assert_eq!(loaded.checksum(), s.checksum());
        assert_eq!(loaded.to_image().version, IMAGE_VERSION);

        // Version 1: no commerce fields at all.
        let plain = catalogue();
        let i = plain.to_image();
        let v1 = StateImageV1 {
            version: 1,
            shard: i.shard,
            clock_ms: i.clock_ms,
            next_reservation_seq: i.next_reservation_seq,
            next_order_seq: i.next_order_seq,
            skus: i.skus,
            reservations: i.reservations,
            orders: Vec::<OrderV1>::new(),
            carts: i.carts,
            idempotency: i.idempotency,
        };
        let loaded = decode_snapshot(SHARD, 1, &bytes(&v1)).unwrap();
        assert_eq!(loaded.checksum(), plain.checksum());

        // With a wishlist the current version carries it.
        let user = key_on_shard("user-", SHARD, 0);
        let wish = CommerceCommand::WishlistSet {
            user_id: user.clone(),
            sku: "far-away".into(),
            qty: 1,
        };
        apply(&mut s, 20, Command::Commerce(Box::new(wish)));
        let loaded = decode_snapshot(SHARD, 1, &bytes(&s.to_image())).unwrap();
        assert_eq!(loaded.wishlist(&user).len(), 1);
        assert_eq!(loaded.checksum(), s.checksum());

        // A snapshot of another shard, or of nothing recognisable, is refused.
        assert!(decode_snapshot(SHARD + 1, 1, &v3).is_err());
        assert!(decode_snapshot(SHARD, 1, &[0u8; 64]).is_err());
        let mut future = s.to_image();
        future.version = IMAGE_VERSION + 1;
        let err = decode_snapshot(SHARD, 1, &bytes(&future)).unwrap_err();
        assert!(err.to_string().contains("version"), "{err}");
    }
}

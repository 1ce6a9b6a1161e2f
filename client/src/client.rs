//! The shard-aware client: a pool of connections per core, routing, batching
//! and retries.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use reserva_protocol::frame::Payload;
use reserva_protocol::limits::{BATCH_OPS_MAX, FRAME_BYTES_MAX};
use reserva_protocol::{Batch, HelloOk, Message, Op, OpResult, Reply, ShardMap, WireError, route};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::conn::{ConnectParams, Connection};
use crate::error::ClientError;
use crate::limits::{
    CONNECTIONS_PER_CORE_MAX, IN_FLIGHT_PER_CONNECTION_MAX, RETRIES_MAX, RETRY_BACKOFF_MS_MAX,
};

/// How a [`Client`] connects and retries.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The credential sent in `HELLO`.
    pub credential: String,
    /// A name for the server's logs and metrics.
    pub client_name: String,
    /// Connections opened to each core (default 2, at most `CONNECTIONS_PER_CORE_MAX`).
    pub connections_per_core: usize,
    /// Requests in flight per connection before callers wait (default and
    /// maximum `IN_FLIGHT_PER_CONNECTION_MAX`).
    pub in_flight_per_connection: usize,
    /// How long a call may take, with its retries and the waits for a free
    /// in-flight slot (default 5 s). Each attempt carries what is left of it
    /// to the server as the batch's deadline, so the server never applies
    /// an operation after the caller stopped waiting for it.
    pub request_timeout: Duration,
    /// How long connecting and the handshake may take (default 5 s).
    pub connect_timeout: Duration,
    /// Attempts after the first for retryable failures (default 3, at most `RETRIES_MAX`).
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one, with jitter
    /// (default 10 ms). A server's `retry_after_ms` is honoured when longer.
    pub retry_backoff: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            credential: String::new(),
            client_name: format!("reserva-client/{}", env!("CARGO_PKG_VERSION")),
            connections_per_core: 2,
            in_flight_per_connection: IN_FLIGHT_PER_CONNECTION_MAX,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            retries: 3,
            retry_backoff: Duration::from_millis(10),
        }
    }
}

impl ClientConfig {
    /// The defaults, with `credential`.
    pub fn new(credential: impl Into<String>) -> Self {
        ClientConfig {
            credential: credential.into(),
            ..ClientConfig::default()
        }
    }
}

/// A shard-aware, pipelining client of one reserva node. Cheap to clone; all
/// clones share the connections.
///
/// It learns the shard map at connect time and sends each operation straight
/// to the core owning its shard ([`reserva_protocol::route`]), over a small
/// pool of connections per core with many requests in flight on each.
/// Retryable failures (overloaded, unavailable, timeouts, lost connections)
/// are retried with the same idempotency key: a mutation sent without one gets
/// a random key before its first attempt, so a retry can never apply twice.
///
/// ```no_run
/// use reserva_client::{Client, ClientConfig};
/// use reserva_client::protocol::engine::{Currency, Money, ReserveLine};
///
/// # async fn demo() -> Result<(), reserva_client::ClientError> {
/// let client = Client::connect("127.0.0.1:7700", ClientConfig::new("secret")).await?;
/// let eur = Currency::parse("EUR").expect("valid code");
/// client
///     .upsert_sku("sku-1", "seller-9", "Kettle", Money { amount_minor: 2_999, currency: eur })
///     .await?;
/// client.set_stock("sku-1", "wh-berlin", 40).await?;
/// let held = client
///     .reserve("user-42", vec![ReserveLine { sku: "sku-1".into(), qty: 2 }], None, Some("checkout-7".into()))
///     .await?;
/// client.confirm(held.reservation_id).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("seed", &self.inner.seed)
            .field(
                "map_version",
                &self.inner.topology().hello.shard_map.version,
            )
            .finish()
    }
}

struct Inner {
    seed: String,
    /// The ip the seed address resolved to: stands in for an unspecified ip in the map.
    seed_ip: IpAddr,
    /// Connections per core.
    pool_size: usize,
    config: ClientConfig,
    params: ConnectParams,
    topology: RwLock<Arc<Topology>>,
    /// Serialises shard-map refreshes.
    refresh: Mutex<()>,
}

/// One shard map and the connection pools of its cores.
struct Topology {
    hello: HelloOk,
    /// Batch size limit: ours and the server's, whichever is smaller.
    batch_ops_max: usize,
    /// Frame payload limit: ours and the server's, whichever is smaller.
    frame_bytes_max: usize,
    pools: BTreeMap<u16, Arc<Pool>>,
}

/// The connections to one core. A failed connection is replaced on next use.
struct Pool {
    addr: SocketAddr,
    slots: Vec<Mutex<Option<Arc<Connection>>>>,
    next: AtomicUsize,
}

impl Pool {
    fn new(addr: SocketAddr, size: usize) -> Self {
        Pool {
            addr,
            slots: (0..size).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A live connection, round robin; opens one if the slot is empty or dead.
    async fn get(&self, params: &ConnectParams) -> Result<Arc<Connection>, ClientError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len().max(1);
        let Some(slot) = self.slots.get(i) else {
            return Err(ClientError::Closed);
        };
        let mut slot = slot.lock().await;
        if let Some(conn) = slot.as_ref()
            && !conn.is_closed()
        {
            return Ok(conn.clone());
        }
        *slot = None;
        let conn = Arc::new(Connection::open(self.addr, params).await?);
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

impl Client {
    /// Connects to the node at `addr` (`"host:port"`), says `HELLO`, learns
    /// the shard map, and opens `connections_per_core` connections to each
    /// core's own listener. A core that cannot be reached now is retried when
    /// an operation needs it.
    pub async fn connect(addr: &str, config: ClientConfig) -> Result<Client, ClientError> {
        let params = ConnectParams {
            credential: config.credential.clone(),
            client_name: config.client_name.clone(),
            connect_timeout: config.connect_timeout,
            in_flight_max: config
                .in_flight_per_connection
                .clamp(1, IN_FLIGHT_PER_CONNECTION_MAX),
        };
        let seed_addr = resolve(addr, None).await?;
        let seed = Connection::open(seed_addr, &params).await?;
        let hello = seed.hello().clone();
        drop(seed);
        let pool_size = config
            .connections_per_core
            .clamp(1, CONNECTIONS_PER_CORE_MAX);
        let topology = build_topology(hello, None, seed_addr.ip(), pool_size).await?;
        let inner = Arc::new(Inner {
            seed: addr.to_owned(),
            seed_ip: seed_addr.ip(),
            pool_size,
            config,
            params,
            topology: RwLock::new(Arc::new(topology)),
            refresh: Mutex::new(()),
        });
        let client = Client { inner };
        client.warm_up().await;
        Ok(client)
    }

    /// The shard map in use.
    pub fn shard_map(&self) -> ShardMap {
        self.inner.topology().hello.shard_map.clone()
    }

    /// The server's `HELLO_OK` (versions, node id, limits, shard map).
    pub fn server_info(&self) -> HelloOk {
        self.inner.topology().hello.clone()
    }

    /// Fetches the shard map again (a new `HELLO` to the address given to
    /// [`Client::connect`]) and switches to it if it is newer. Done
    /// automatically on `WrongShard`.
    pub async fn refresh_shard_map(&self) -> Result<(), ClientError> {
        let seen = self.inner.topology().hello.shard_map.version;
        self.inner.refresh(seen).await
    }

    /// Executes one operation on the shard it routes to.
    pub async fn execute(&self, op: Op) -> Result<Reply, ClientError> {
        let mut results = self.run(vec![op]).await;
        results.pop().unwrap_or(Err(ClientError::Closed))
    }

    /// Executes many operations: split by owning core, one `BATCH` frame per
    /// core (chunked by the batch and frame limits), sent concurrently; the
    /// results come back in the order of `ops`.
    ///
    /// An operation whose outcome stayed unknown after the retries (lost
    /// connection, timeout) is answered `WireError::Timeout` or
    /// `WireError::Unavailable` here. The call as a whole fails only on a
    /// protocol violation by the server. Keys the client generated protect
    /// retries inside this call; to retry a whole failed call safely, give
    /// the mutations your own idempotency keys.
    pub async fn batch(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, ClientError> {
        let shards: Vec<u16> = ops.iter().map(|op| route(op).unwrap_or(0)).collect();
        let results = self.run(ops).await;
        results
            .into_iter()
            .zip(shards)
            .map(|(r, shard)| match r {
                Ok(reply) => Ok(Ok(reply)),
                Err(ClientError::Server(e)) => Ok(Err(e)),
                Err(ClientError::Timeout) => Ok(Err(WireError::Timeout)),
                Err(e) if e.is_transport() || matches!(e, ClientError::Handshake(_)) => {
                    Ok(Err(WireError::Unavailable {
                        shard,
                        reason: e.to_string(),
                    }))
                }
                Err(e) => Err(e),
            })
            .collect()
    }

    /// Opens every pool's connections concurrently; failures are retried on use.
    async fn warm_up(&self) {
        let topology = self.inner.topology();
        let mut tasks = JoinSet::new();
        for (core, pool) in &topology.pools {
            for _ in 0..pool.slots.len() {
                let (pool, inner, core) = (pool.clone(), self.inner.clone(), *core);
                tasks.spawn(async move {
                    if let Err(e) = pool.get(&inner.params).await {
                        tracing::warn!(core, addr = %pool.addr, error = %e, "cannot connect to core yet");
                    }
                });
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Runs `ops` with routing, batching and retries, within the call's
    /// deadline (`request_timeout` from now); one result per op, in order.
    async fn run(&self, mut ops: Vec<Op>) -> Vec<Result<Reply, ClientError>> {
        let deadline = tokio::time::Instant::now() + self.inner.config.request_timeout;
        for op in &mut ops {
            op.ensure_idempotency_key(new_idempotency_key);
        }
        let ops: Arc<[Op]> = ops.into();
        let mut results: Vec<Option<Result<Reply, ClientError>>> = vec![None; ops.len()];
        let mut todo: Vec<usize> = (0..ops.len()).collect();
        // Ops whose answer did not fit a shared RESULTS frame: sent alone.
        let mut solo = HashSet::new();
        let retries = self.inner.config.retries.min(RETRIES_MAX);
        for attempt in 0..=retries {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let round = self.attempt(&ops, &todo, &solo, left).await;
            todo.clear();
            let mut wait_ms = 0u64;
            let mut refresh_seen = None;
            let mut only_solo = true;
            for (i, shared_frame, result) in round {
                match &result {
                    Err(ClientError::Server(WireError::FrameTooLarge { .. })) if shared_frame => {
                        solo.insert(i);
                        results[i] = Some(result);
                        todo.push(i);
                        continue;
                    }
                    Err(ClientError::Server(WireError::WrongShard { .. })) => {
                        refresh_seen = Some(self.inner.topology().hello.shard_map.version);
                    }
                    Err(ClientError::Server(WireError::Overloaded { retry_after_ms })) => {
                        wait_ms = wait_ms.max(u64::from(*retry_after_ms));
                    }
                    Err(e) if e.is_retryable() => {}
                    _ => {
                        results[i] = Some(result);
                        continue;
                    }
                }
                // Retried below; kept in case the retries run out.
                only_solo = false;
                results[i] = Some(result);
                todo.push(i);
            }
            if todo.is_empty() || attempt == retries {
                break;
            }
            if let Some(seen) = refresh_seen {
                if let Err(e) = self.inner.refresh(seen).await {
                    tracing::warn!(error = %e, "shard map refresh failed");
                }
            } else if !only_solo {
                let wait = self.backoff(attempt, wait_ms);
                if tokio::time::Instant::now() + wait >= deadline {
                    // The server's hint outlasts the caller's patience: answer
                    // what the last attempt said rather than a late retry.
                    break;
                }
                tokio::time::sleep(wait).await;
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
            .collect()
    }

    /// Exponential backoff with jitter, capped; never shorter than the
    /// server's hint, which gets jitter of its own (up to half again), so
    /// that callers refused together do not all come back together.
    fn backoff(&self, attempt: u32, server_hint_ms: u64) -> Duration {
        let base = self.inner.config.retry_backoff.as_millis() as u64;
        let exp = base.saturating_mul(1u64 << attempt.min(20));
        let jittered = exp / 2 + rand::random_range(0..=exp / 2);
        let hinted = server_hint_ms + rand::random_range(0..=server_hint_ms / 2);
        Duration::from_millis(jittered.max(hinted).min(RETRY_BACKOFF_MS_MAX))
    }

    /// One attempt of the operations `todo` within `left`: routes, groups by
    /// core, sends the chunks concurrently. Returns a result for every index
    /// of `todo`.
    async fn attempt(
        &self,
        ops: &Arc<[Op]>,
        todo: &[usize],
        solo: &HashSet<usize>,
        left: Duration,
    ) -> Vec<(usize, bool, Result<Reply, ClientError>)> {
        let topology = self.inner.topology();
        let mut out = Vec::with_capacity(todo.len());
        let mut by_core: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for &i in todo {
            let core = route(&ops[i]).and_then(|shard| {
                topology
                    .hello
                    .shard_map
                    .owner_of(shard)
                    .ok_or(WireError::Unavailable {
                        shard,
                        reason: "the shard map names no owner".into(),
                    })
            });
            match core {
                Ok(core) => by_core.entry(core).or_default().push(i),
                Err(e) => out.push((i, false, Err(ClientError::Server(e)))),
            }
        }
        let mut tasks = JoinSet::new();
        for (core, indices) in by_core {
            let Some(pool) = topology.pools.get(&core).cloned() else {
                out.extend(
                    indices
                        .into_iter()
                        .map(|i| (i, false, Err(ClientError::Closed))),
                );
                continue;
            };
            let (alone, shared): (Vec<usize>, Vec<usize>) =
                indices.into_iter().partition(|i| solo.contains(i));
            let limits = (topology.batch_ops_max, topology.frame_bytes_max);
            let timeout_ms = deadline_ms(left);
            let groups = chunks(ops, shared, limits.0, limits.1, timeout_ms)
                .into_iter()
                .chain(chunks(ops, alone, 1, limits.1, timeout_ms));
            for chunk in groups {
                let (inner, pool) = (self.inner.clone(), pool.clone());
                tasks.spawn(async move { send_chunk(inner, pool, chunk, left).await });
            }
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(results) => out.extend(results),
                // A chunk task cannot panic by design; if one did, its ops
                // stay unanswered and end as `Closed` below.
                Err(e) => tracing::error!(error = %e, "batch chunk task failed"),
            }
        }
        let answered: HashSet<usize> = out.iter().map(|(i, _, _)| *i).collect();
        for &i in todo {
            if !answered.contains(&i) {
                out.push((i, false, Err(ClientError::Closed)));
            }
        }
        out
    }
}

/// One frame's worth of operations for one core.
enum Chunk {
    /// Indices into the call's ops, and their encoded `Batch` payload.
    Frame {
        indices: Vec<usize>,
        payload: Payload,
    },
    /// An operation too large for any frame, or that could not be encoded.
    Refused { index: usize, error: ClientError },
}

/// The deadline a batch carries for `left`: whole ms, at least 1 (0 would
/// mean no deadline), saturating at `u32::MAX`.
fn deadline_ms(left: Duration) -> u32 {
    u32::try_from(left.as_millis()).unwrap_or(u32::MAX).max(1)
}

/// Splits `indices` into frames of at most `ops_max` operations and
/// `bytes_max` payload bytes (halving a chunk until it fits), each with the
/// deadline `timeout_ms`.
fn chunks(
    ops: &[Op],
    indices: Vec<usize>,
    ops_max: usize,
    bytes_max: usize,
    timeout_ms: u32,
) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut stack: Vec<Vec<usize>> = indices
        .chunks(ops_max.max(1))
        .rev()
        .map(<[usize]>::to_vec)
        .collect();
    while let Some(group) = stack.pop() {
        let batch = Message::Batch(Batch {
            ops: group.iter().map(|&i| ops[i].clone()).collect(),
            timeout_ms,
        });
        let payload = match batch.to_payload() {
            Ok(p) => p,
            Err(e) => {
                out.extend(group.into_iter().map(|index| Chunk::Refused {
                    index,
                    error: ClientError::Protocol(e.clone()),
                }));
                continue;
            }
        };
        if payload.len() <= bytes_max {
            out.push(Chunk::Frame {
                indices: group,
                payload,
            });
        } else if group.len() == 1 {
            out.push(Chunk::Refused {
                index: group[0],
                error: ClientError::Server(WireError::FrameTooLarge {
                    max_bytes: bytes_max as u32,
                }),
            });
        } else {
            let (a, b) = group.split_at(group.len() / 2);
            stack.push(b.to_vec());
            stack.push(a.to_vec());
        }
    }
    out
}

/// Sends one chunk on a connection of `pool`, waiting at most `left`; one
/// result per index.
async fn send_chunk(
    inner: Arc<Inner>,
    pool: Arc<Pool>,
    chunk: Chunk,
    left: Duration,
) -> Vec<(usize, bool, Result<Reply, ClientError>)> {
    let (indices, payload) = match chunk {
        Chunk::Frame { indices, payload } => (indices, payload),
        Chunk::Refused { index, error } => return vec![(index, false, Err(error))],
    };
    let answer = match pool.get(&inner.params).await {
        Ok(conn) => conn.call(&payload, indices.len(), left).await,
        Err(e) => Err(e),
    };
    // Whether the answer shared its RESULTS frame with other operations.
    let shared = indices.len() > 1;
    match answer {
        Ok(results) => indices
            .into_iter()
            .zip(results)
            .map(|(i, r)| (i, shared, r.map_err(ClientError::Server)))
            .collect(),
        Err(e) => indices
            .into_iter()
            .map(|i| (i, shared, Err(e.clone())))
            .collect(),
    }
}

impl Inner {
    fn topology(&self) -> Arc<Topology> {
        self.topology
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Fetches the map again unless someone already replaced the one of
    /// version `seen`; switches only to a newer map.
    async fn refresh(&self, seen: u64) -> Result<(), ClientError> {
        let _one_at_a_time = self.refresh.lock().await;
        let current = self.topology();
        if current.hello.shard_map.version > seen {
            return Ok(());
        }
        let addr = resolve(&self.seed, None).await?;
        let hello = Connection::open(addr, &self.params).await?.hello().clone();
        if hello.shard_map.version <= current.hello.shard_map.version {
            return Ok(());
        }
        tracing::info!(
            from = current.hello.shard_map.version,
            to = hello.shard_map.version,
            "reserva shard map changed"
        );
        let topology = build_topology(hello, Some(&current), self.seed_ip, self.pool_size).await?;
        *self.topology.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(topology);
        Ok(())
    }
}

/// Builds pools for `hello`'s map, reusing `old`'s pools of unchanged cores.
async fn build_topology(
    hello: HelloOk,
    old: Option<&Topology>,
    seed_ip: IpAddr,
    pool_size: usize,
) -> Result<Topology, ClientError> {
    let mut pools = BTreeMap::new();
    for endpoint in &hello.shard_map.cores {
        let addr = resolve(&endpoint.addr, Some(seed_ip)).await?;
        let reused = old
            .and_then(|t| t.pools.get(&endpoint.core))
            .filter(|p| p.addr == addr)
            .cloned();
        let pool = reused.unwrap_or_else(|| Arc::new(Pool::new(addr, pool_size)));
        pools.insert(endpoint.core, pool);
    }
    Ok(Topology {
        batch_ops_max: (hello.batch_ops_max as usize).clamp(1, BATCH_OPS_MAX),
        frame_bytes_max: (hello.frame_bytes_max as usize).min(FRAME_BYTES_MAX),
        hello,
        pools,
    })
}

/// Resolves `"host:port"`; an unspecified ip (`0.0.0.0`, `[::]`) becomes `seed_ip`.
async fn resolve(addr: &str, seed_ip: Option<IpAddr>) -> Result<SocketAddr, ClientError> {
    let mut resolved = match addr.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => tokio::net::lookup_host(addr).await?.next().ok_or_else(|| {
            ClientError::from(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{addr:?} resolves to no address"),
            ))
        })?,
    };
    if let Some(ip) = seed_ip
        && resolved.ip().is_unspecified()
    {
        resolved.set_ip(ip);
    }
    Ok(resolved)
}

/// A fresh idempotency key: `"rc-"` and 32 hex digits of a random u128.
pub fn new_idempotency_key() -> String {
    format!("rc-{:032x}", rand::random::<u128>())
}

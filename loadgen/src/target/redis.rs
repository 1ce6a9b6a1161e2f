//! `redis://HOST:PORT`: the same operations as Lua scripts.
//!
//! Keys (one Redis instance, no cluster hash tags):
//! - `stk:{sku}`: a hash per SKU with, per warehouse index `w`, fields `h{w}`
//!   (on hand), `r{w}` (reserved), `d{w}` (deducted by confirmations) and
//!   `a{w}` (ever added).
//! - `rsv:{id}`: a reservation, `"{user}|{stk key},{w},{qty};..."`, with a TTL
//!   (`PX`); `rsv:exp` a sorted set of live reservation ids by deadline (what
//!   a sweeper would scan to give expired holds back); `rsv:seq` the id counter.
//! - `ord:{id}`: an order hash (`user`, `lines`, `total`, `status`); `ord:seq`.
//! - `cart:{user}`: a hash SKU -> qty.
//!
//! Each step is one `EVALSHA`: a script checks every line before it changes
//! anything, so a reservation is all-or-nothing (a script runs atomically).
//!
//! Connections (`--connections`, 64 by default, opened at the start):
//! plain RESP2 connections, multiplexed. A call appends its commands to a
//! connection's buffer and awaits its replies; a writer task per connection
//! sends what has gathered in one write, a reader task per connection hands
//! replies back in order. Calls fill the first connection up to
//! [`LANE_DEPTH`] commands in flight before they use the next, so a closed
//! loop of 64 workers x 1 unit runs on one connection: with `appendfsync
//! always` Redis syncs once per event-loop turn and takes, per turn, what one
//! read of each client brings, so the fewer, fuller writes it gets, the more
//! commands share a sync (and the fewer syscalls it spends per command).
//! The writer waits (yielding, at most [`FLUSH_WAIT_MAX`]) until the calls
//! that a read of replies completed have appended their next steps, so a
//! round goes out in one write. Every command's reply is awaited; a
//! connection that fails is replaced on the next call, and the commands in
//! flight on it, like those of a call that timed out, count as unknown
//! outcomes.
//!
//! `redis-rs` only parses the URL (host, port, db, user, password).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::future::join_all;
use redis::{ConnectionAddr, IntoConnectionInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, oneshot};

use super::{Binding, CartReq, CheckoutReq, Hold, OpError, OpResult, ReserveReq, StockRow};
use crate::workload::{Catalog, PRICE_MINOR, sku_name};

/// Reservation time-to-live (the same default as reserva's: 15 minutes).
const TTL_MS: u64 = 15 * 60 * 1000;
/// Longest wait for a connection to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a call's replies (its connection is then dropped).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Commands one call pipelines on one connection at most: about 14 KiB of
/// `EVALSHA`, under the 16 KiB Redis reads from a client per event-loop turn.
const CMDS_PER_CALL: usize = 128;
/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;
/// Commands in flight on one connection before calls go to the next one:
/// Redis reads a client's commands 16 KiB (about 150 `EVALSHA`) per
/// event-loop turn, and with `appendfsync always` every turn is a sync.
const LANE_DEPTH: usize = 128;
/// Longest the writer waits for the callers a read of replies completed to
/// append their next commands (see [`writer`]).
const FLUSH_WAIT_MAX: Duration = Duration::from_micros(200);

const RESERVE: &str = r#"
local nwh = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local picks = {}
for i, key in ipairs(KEYS) do
  local q = tonumber(ARGV[3 + i])
  local found = nil
  for w = 0, nwh - 1 do
    local v = redis.call('HMGET', key, 'h' .. w, 'r' .. w)
    if v[1] and (tonumber(v[1]) - tonumber(v[2] or '0')) >= q then
      found = w
      break
    end
  end
  if not found then
    return redis.error_reply('insufficient_stock ' .. key)
  end
  picks[i] = found
end
local id = redis.call('INCR', 'rsv:seq')
local parts = {}
for i, key in ipairs(KEYS) do
  local q = tonumber(ARGV[3 + i])
  redis.call('HINCRBY', key, 'r' .. picks[i], q)
  parts[i] = key .. ',' .. picks[i] .. ',' .. q
end
redis.call('SET', 'rsv:' .. id, ARGV[3] .. '|' .. table.concat(parts, ';'), 'PX', ttl)
local t = redis.call('TIME')
redis.call('ZADD', 'rsv:exp', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl, id)
return id
"#;

/// ARGV: id, mode (`confirm` | `order` | `release`), unit price.
const SETTLE: &str = r#"
local key = 'rsv:' .. ARGV[1]
local v = redis.call('GET', key)
if not v then
  return redis.error_reply('unknown_reservation ' .. ARGV[1])
end
local sep = string.find(v, '|', 1, true)
local user = string.sub(v, 1, sep - 1)
local lines = string.sub(v, sep + 1)
local units = 0
for skey, w, q in string.gmatch(lines, '([^,;]+),(%d+),(%d+)') do
  q = tonumber(q)
  redis.call('HINCRBY', skey, 'r' .. w, -q)
  if ARGV[2] ~= 'release' then
    redis.call('HINCRBY', skey, 'h' .. w, -q)
    redis.call('HINCRBY', skey, 'd' .. w, q)
  end
  units = units + q
end
redis.call('DEL', key)
redis.call('ZREM', 'rsv:exp', ARGV[1])
if ARGV[2] == 'order' then
  local oid = redis.call('INCR', 'ord:seq')
  redis.call('HSET', 'ord:' .. oid, 'user', user, 'lines', lines,
    'total', units * tonumber(ARGV[3]), 'status', 'confirmed')
  return oid
end
return 0
"#;

/// The Redis binding.
pub struct Redis {
    pool: Pool,
    reserve_sha: String,
    settle_sha: String,
    warehouses: u32,
}

impl Redis {
    /// Opens `connections` connections to `url` and loads the scripts.
    pub async fn connect(url: &str, connections: usize, warehouses: u32) -> anyhow::Result<Self> {
        let info = url
            .into_connection_info()
            .with_context(|| format!("redis url {url:?}"))?;
        let (host, port) = match info.addr() {
            ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
            other => bail!("redis url {url:?}: only plain TCP is supported, not {other:?}"),
        };
        let r = info.redis_settings();
        let pool = Pool::open(
            host,
            port,
            r.db(),
            r.username().map(str::to_owned),
            r.password().map(str::to_owned),
            connections,
        )
        .await
        .with_context(|| format!("connecting to redis at {url}"))?;
        let load = |text: &'static str| {
            let pool = &pool;
            async move {
                match pool
                    .call(1, |e| {
                        e.cmd(3)
                            .bytes(b"SCRIPT")
                            .bytes(b"LOAD")
                            .bytes(text.as_bytes());
                    })
                    .await
                {
                    Ok(mut v) => match v.pop() {
                        Some(Resp::Bulk(sha)) => Ok(String::from_utf8_lossy(&sha).into_owned()),
                        other => bail!("SCRIPT LOAD answered {other:?}"),
                    },
                    Err(e) => bail!("SCRIPT LOAD failed: {}", e.code),
                }
            }
        };
        let reserve_sha = load(RESERVE).await?;
        let settle_sha = load(SETTLE).await?;
        Ok(Redis {
            pool,
            reserve_sha,
            settle_sha,
            warehouses,
        })
    }

    fn encode_reserve(&self, e: &mut Encoder<'_>, req: &ReserveReq) {
        let n = req.lines.len();
        e.cmd(6 + 2 * n)
            .bytes(b"EVALSHA")
            .bytes(self.reserve_sha.as_bytes())
            .num(n as u64);
        for l in &req.lines {
            e.fmt(format_args!("stk:sku-{}", l.sku));
        }
        e.num(u64::from(self.warehouses))
            .num(TTL_MS)
            .fmt(format_args!("user-{}", req.user));
        for l in &req.lines {
            e.num(u64::from(l.qty));
        }
    }

    fn encode_settle(&self, e: &mut Encoder<'_>, id: u64, mode: &str) {
        e.cmd(6)
            .bytes(b"EVALSHA")
            .bytes(self.settle_sha.as_bytes())
            .bytes(b"0")
            .num(id)
            .bytes(mode.as_bytes())
            .num(PRICE_MINOR);
    }

    /// Sends `per_item` commands for each of `items` (pipelined, spread over
    /// connections about [`CMDS_PER_CALL`] commands at a time) and answers
    /// every command's reply, in order.
    async fn pipelined<T: Sync>(
        &self,
        items: &[T],
        per_item: usize,
        encode: impl Fn(&mut Encoder<'_>, &T) + Sync,
    ) -> Vec<Result<Resp, OpError>> {
        if items.is_empty() {
            return Vec::new();
        }
        let encode = &encode;
        let per_call = (CMDS_PER_CALL / per_item).max(1);
        let chunks = join_all(items.chunks(per_call).map(|chunk| async move {
            let n = chunk.len() * per_item;
            match self
                .pool
                .call(n, |e| {
                    for it in chunk {
                        encode(e, it);
                    }
                })
                .await
            {
                Ok(replies) => replies.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(err) => vec![Err(err); n],
            }
        }))
        .await;
        chunks.into_iter().flatten().collect()
    }

    /// One command per item.
    async fn each<T: Sync>(
        &self,
        items: &[T],
        encode: impl Fn(&mut Encoder<'_>, &T) + Sync,
    ) -> Vec<Result<Resp, OpError>> {
        self.pipelined(items, 1, encode).await
    }

    async fn reserve_many(&self, reqs: Vec<ReserveReq>) -> Vec<OpResult<Hold>> {
        let replies = self.each(&reqs, |e, r| self.encode_reserve(e, r)).await;
        reqs.into_iter()
            .zip(replies)
            .map(|(req, reply)| match reply? {
                Resp::Int(id) => Ok(Hold {
                    id: id as u64,
                    user: req.user,
                    lines: req.lines,
                }),
                other => Err(reply_error(&other)),
            })
            .collect()
    }

    async fn settle(&self, holds: &[Hold], mode: &str) -> Vec<OpResult<u64>> {
        self.each(holds, |e, h| self.encode_settle(e, h.id, mode))
            .await
            .into_iter()
            .map(|reply| match reply? {
                Resp::Int(n) => Ok(n as u64),
                other => Err(reply_error(&other)),
            })
            .collect()
    }
}

/// What a reply other than the expected integer means.
fn reply_error(r: &Resp) -> OpError {
    match r {
        Resp::Error(text) => map_error_text(text),
        _ => OpError::unknown("unexpected_reply"),
    }
}

fn map_error_text(text: &str) -> OpError {
    if text.contains("insufficient_stock") {
        OpError::refused(super::CODE_INSUFFICIENT_STOCK)
    } else if text.contains("unknown_reservation") {
        OpError::refused("unknown_reservation")
    } else if text.starts_with("OOM") || text.starts_with("BUSY") || text.starts_with("LOADING") {
        OpError::refused(super::CODE_OVERLOADED)
    } else {
        OpError::unknown("redis_error")
    }
}

fn stock_key(sku: u32) -> String {
    format!("stk:{}", sku_name(sku))
}

fn int(v: &Resp) -> u64 {
    match v {
        Resp::Int(n) => *n as u64,
        Resp::Bulk(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// The connections; calls go to them in turn.
struct Pool {
    host: String,
    port: u16,
    db: i64,
    username: Option<String>,
    password: Option<String>,
    slots: Vec<Mutex<Arc<Mux>>>,
    /// Commands sent on each slot's connection and not yet answered.
    in_flight: Vec<AtomicUsize>,
}

impl Pool {
    /// Opens `n` connections.
    async fn open(
        host: String,
        port: u16,
        db: i64,
        username: Option<String>,
        password: Option<String>,
        n: usize,
    ) -> anyhow::Result<Pool> {
        let mut pool = Pool {
            host,
            port,
            db,
            username,
            password,
            slots: Vec::new(),
            in_flight: Vec::new(),
        };
        for _ in 0..n.max(1) {
            let mux = pool.connect().await?;
            pool.slots.push(Mutex::new(mux));
            pool.in_flight.push(AtomicUsize::new(0));
        }
        Ok(pool)
    }

    /// One new connection, authenticated and on the right database, with its
    /// reader and writer tasks running.
    async fn connect(&self) -> anyhow::Result<Arc<Mux>> {
        let mut stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| anyhow::anyhow!("connection timed out"))??;
        stream.set_nodelay(true)?;
        let mut hello: Vec<Vec<&str>> = Vec::new();
        if let Some(pw) = &self.password {
            hello.push(match &self.username {
                Some(u) => vec!["AUTH", u, pw],
                None => vec!["AUTH", pw],
            });
        }
        let db = self.db.to_string();
        if self.db != 0 {
            hello.push(vec!["SELECT", &db]);
        }
        if !hello.is_empty() {
            let (mut out, mut scratch) = (Vec::new(), String::new());
            let mut e = Encoder {
                out: &mut out,
                scratch: &mut scratch,
            };
            for c in &hello {
                e.cmd(c.len());
                for a in c {
                    e.bytes(a.as_bytes());
                }
            }
            stream.write_all(&out).await?;
            let mut buf = Vec::new();
            let mut at = 0;
            let mut seen = 0;
            while seen < hello.len() {
                match parse(&buf[at..]) {
                    Ok(Some((Resp::Error(e), _))) => bail!("redis refused the connection: {e}"),
                    Ok(Some((_, used))) => {
                        at += used;
                        seen += 1;
                    }
                    Ok(None) => {
                        buf.reserve(READ_CHUNK);
                        let read =
                            tokio::time::timeout(RESPONSE_TIMEOUT, stream.read_buf(&mut buf))
                                .await
                                .map_err(|_| anyhow::anyhow!("AUTH/SELECT timed out"))??;
                        if read == 0 {
                            bail!("redis closed the connection during AUTH/SELECT");
                        }
                    }
                    Err(BadReply) => bail!("redis answered AUTH/SELECT with something not RESP"),
                }
            }
        }
        let (rd, wr) = stream.into_split();
        let mux = Arc::new(Mux {
            state: Mutex::new(MuxState {
                wbuf: Vec::with_capacity(READ_CHUNK),
                scratch: String::new(),
                pending: VecDeque::new(),
                dead: false,
                appended: 0,
                answered: 0,
            }),
            flush: Notify::new(),
        });
        tokio::spawn(writer(mux.clone(), wr));
        tokio::spawn(reader(mux.clone(), rd));
        Ok(mux)
    }

    /// The connection for `n` more commands: the first one with room for
    /// them under [`LANE_DEPTH`], else the least busy.
    fn pick(&self, n: usize) -> usize {
        let mut best = (usize::MAX, 0);
        for (i, f) in self.in_flight.iter().enumerate() {
            let busy = f.load(Ordering::Relaxed);
            if busy + n <= LANE_DEPTH {
                return i;
            }
            if busy < best.0 {
                best = (busy, i);
            }
        }
        best.1
    }

    /// Sends the `n` commands `encode` writes on one connection and answers
    /// their `n` replies. A connection that failed is replaced first; a
    /// failure or timeout makes every command's outcome unknown.
    async fn call(
        &self,
        n: usize,
        encode: impl FnOnce(&mut Encoder<'_>),
    ) -> Result<Vec<Resp>, OpError> {
        let i = self.pick(n);
        self.in_flight[i].fetch_add(n, Ordering::Relaxed);
        let r = self.call_on(i, n, encode).await;
        self.in_flight[i].fetch_sub(n, Ordering::Relaxed);
        r
    }

    async fn call_on(
        &self,
        i: usize,
        n: usize,
        encode: impl FnOnce(&mut Encoder<'_>),
    ) -> Result<Vec<Resp>, OpError> {
        let mut mux = lock(&self.slots[i]).clone();
        if lock(&mux.state).dead {
            let fresh = self
                .connect()
                .await
                .map_err(|_| OpError::unknown("connection"))?;
            let mut slot = lock(&self.slots[i]);
            if Arc::ptr_eq(&slot, &mux) {
                *slot = fresh;
            }
            mux = slot.clone();
        }
        let rx = mux.send(n, encode)?;
        match tokio::time::timeout(RESPONSE_TIMEOUT, rx).await {
            Ok(Ok(replies)) => Ok(replies),
            Ok(Err(_)) => Err(OpError::unknown("connection")),
            Err(_) => Err(OpError::unknown("timeout")),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One multiplexed connection: callers append commands to one buffer, a
/// writer task sends what has gathered in one write, a reader task hands
/// the replies back in order.
struct Mux {
    state: Mutex<MuxState>,
    /// Wakes the writer.
    flush: Notify,
}

struct MuxState {
    /// Commands not yet written.
    wbuf: Vec<u8>,
    scratch: String,
    /// Calls waiting for replies, in the order their commands were appended.
    pending: VecDeque<Pending>,
    /// The connection failed: no call may use it.
    dead: bool,
    /// Calls appended since the last write.
    appended: usize,
    /// Calls the reader completed since the last write.
    answered: usize,
}

struct Pending {
    left: usize,
    replies: Vec<Resp>,
    tx: oneshot::Sender<Vec<Resp>>,
}

impl Mux {
    fn send(
        &self,
        n: usize,
        encode: impl FnOnce(&mut Encoder<'_>),
    ) -> Result<oneshot::Receiver<Vec<Resp>>, OpError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = lock(&self.state);
            if st.dead {
                return Err(OpError::unknown("connection"));
            }
            let st = &mut *st;
            encode(&mut Encoder {
                out: &mut st.wbuf,
                scratch: &mut st.scratch,
            });
            st.pending.push_back(Pending {
                left: n,
                replies: Vec::with_capacity(n),
                tx,
            });
            st.appended += 1;
        }
        self.flush.notify_one();
        Ok(rx)
    }

    /// Fails every waiting call (their senders drop) and refuses new ones.
    fn kill(&self) {
        let mut st = lock(&self.state);
        st.dead = true;
        st.pending.clear();
        st.wbuf.clear();
        drop(st);
        self.flush.notify_one();
    }
}

/// Sends what callers appended, in one write per round: after a read of
/// replies completed k calls, it waits (yielding to the other tasks, at most
/// [`FLUSH_WAIT_MAX`]) until k calls were appended since its last write, so
/// that the callers' next steps go out together. With `appendfsync always`
/// Redis takes what one read brings it, runs it and syncs: a round split
/// over two writes costs a second sync and the later half a whole turn.
/// Calls that were not answers to a reply (nothing was completed since the
/// last write) go out at once.
async fn writer(mux: Arc<Mux>, mut wr: OwnedWriteHalf) {
    let mut out = Vec::with_capacity(READ_CHUNK);
    loop {
        mux.flush.notified().await;
        let since = Instant::now();
        loop {
            {
                let mut st = lock(&mux.state);
                if st.dead {
                    return;
                }
                if st.appended >= st.answered || since.elapsed() >= FLUSH_WAIT_MAX {
                    std::mem::swap(&mut st.wbuf, &mut out);
                    st.appended = 0;
                    st.answered = 0;
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
        if out.is_empty() {
            continue;
        }
        if wr.write_all(&out).await.is_err() {
            mux.kill();
            return;
        }
        out.clear();
    }
}

/// Reads replies and completes the waiting calls in order.
async fn reader(mux: Arc<Mux>, mut rd: OwnedReadHalf) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut replies = Vec::new();
    loop {
        buf.reserve(READ_CHUNK);
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut at = 0;
        loop {
            match parse(&buf[at..]) {
                Ok(Some((r, used))) => {
                    replies.push(r);
                    at += used;
                }
                Ok(None) => break,
                Err(BadReply) => {
                    mux.kill();
                    return;
                }
            }
        }
        buf.drain(..at);
        if replies.is_empty() {
            continue;
        }
        let mut st = lock(&mux.state);
        for r in replies.drain(..) {
            let Some(p) = st.pending.front_mut() else {
                // A reply nobody asked for: the connection is out of step.
                drop(st);
                mux.kill();
                return;
            };
            p.replies.push(r);
            p.left -= 1;
            if p.left == 0
                && let Some(p) = st.pending.pop_front()
            {
                // A call that timed out has gone: its replies are dropped.
                if p.tx.send(p.replies).is_ok() {
                    st.answered += 1;
                }
            }
        }
    }
    mux.kill();
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resp {
    /// `+OK`.
    Status(String),
    /// `-ERR ...`: the text after the dash.
    Error(String),
    /// `:42`.
    Int(i64),
    /// `$3\r\nabc`.
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`.
    Nil,
    /// `*2\r\n...`.
    Array(Vec<Resp>),
}

/// A reply that is not RESP.
#[derive(Debug)]
struct BadReply;

/// Parses one reply from the start of `buf`: the reply and the bytes it
/// took, or `None` while `buf` holds only part of one.
fn parse(buf: &[u8]) -> Result<Option<(Resp, usize)>, BadReply> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[1..end]).map_err(|_| BadReply)?;
    let after = end + 2;
    let int = || line.parse::<i64>().map_err(|_| BadReply);
    Ok(Some(match kind {
        b'+' => (Resp::Status(line.to_owned()), after),
        b'-' => (Resp::Error(line.to_owned()), after),
        b':' => (Resp::Int(int()?), after),
        b'$' => {
            let Ok(len) = usize::try_from(int()?) else {
                return Ok(Some((Resp::Nil, after)));
            };
            let Some(body) = buf.get(after..after + len + 2) else {
                return Ok(None);
            };
            if &body[len..] != b"\r\n" {
                return Err(BadReply);
            }
            (Resp::Bulk(body[..len].to_vec()), after + len + 2)
        }
        b'*' => {
            let Ok(len) = usize::try_from(int()?) else {
                return Ok(Some((Resp::Nil, after)));
            };
            let mut items = Vec::with_capacity(len.min(1024));
            let mut at = after;
            for _ in 0..len {
                let Some((v, used)) = parse(&buf[at..])? else {
                    return Ok(None);
                };
                items.push(v);
                at += used;
            }
            (Resp::Array(items), at)
        }
        _ => return Err(BadReply),
    }))
}

/// Writes commands as RESP arrays of bulk strings.
struct Encoder<'a> {
    out: &'a mut Vec<u8>,
    scratch: &'a mut String,
}

impl Encoder<'_> {
    /// Starts a command of `args` arguments, its name included.
    fn cmd(&mut self, args: usize) -> &mut Self {
        self.out.push(b'*');
        push_decimal(self.out, args as u64);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.out.push(b'$');
        push_decimal(self.out, b.len() as u64);
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(b);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    /// An argument formatted in place (`format_args!`), without an allocation.
    fn fmt(&mut self, args: std::fmt::Arguments<'_>) -> &mut Self {
        self.scratch.clear();
        let _ = self.scratch.write_fmt(args);
        self.out.push(b'$');
        push_decimal(self.out, self.scratch.len() as u64);
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(self.scratch.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self
    }

    fn num(&mut self, n: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let len = decimal(n, &mut digits);
        self.bytes(&digits[20 - len..]);
        self
    }
}

/// Writes `n` in decimal at the end of `buf`, answers how many digits.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> usize {
    let mut i = 20;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return 20 - i;
        }
    }
}

fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let len = decimal(n, &mut digits);
    out.extend_from_slice(&digits[20 - len..]);
}

impl Binding for Redis {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn seed(&self, catalog: &Catalog, skus: Range<u32>) -> anyhow::Result<()> {
        let skus: Vec<u32> = skus.collect();
        let whs = catalog.warehouses;
        // Per SKU: DEL, HSET of the stock fields, HSET of the SKU record.
        let replies = self
            .pipelined(&skus, 3, |e, &i| {
                e.cmd(2).bytes(b"DEL").fmt(format_args!("stk:sku-{i}"));
                e.cmd(2 + 8 * whs as usize)
                    .bytes(b"HSET")
                    .fmt(format_args!("stk:sku-{i}"));
                for w in 0..whs {
                    e.fmt(format_args!("h{w}"))
                        .num(catalog.stock)
                        .fmt(format_args!("r{w}"))
                        .num(0)
                        .fmt(format_args!("d{w}"))
                        .num(0)
                        .fmt(format_args!("a{w}"))
                        .num(catalog.stock);
                }
                e.cmd(8)
                    .bytes(b"HSET")
                    .fmt(format_args!("sku:sku-{i}"))
                    .bytes(b"seller")
                    .fmt(format_args!("seller-{}", i % catalog.sellers))
                    .bytes(b"title")
                    .fmt(format_args!("Item {i}"))
                    .bytes(b"price")
                    .num(PRICE_MINOR);
            })
            .await;
        for r in replies {
            match r {
                Ok(Resp::Error(e)) => bail!("seeding: redis answered {e}"),
                Ok(_) => {}
                Err(e) => bail!("seeding: {}", e.code),
            }
        }
        Ok(())
    }

    async fn reserve(&self, reqs: Vec<ReserveReq>) -> Vec<OpResult<Hold>> {
        self.reserve_many(reqs).await
    }

    async fn confirm(&self, holds: &[Hold]) -> Vec<OpResult<()>> {
        let r = self.settle(holds, "confirm").await;
        r.into_iter().map(|r| r.map(|_| ())).collect()
    }

    async fn release(&self, holds: &[Hold]) -> Vec<OpResult<()>> {
        let r = self.settle(holds, "release").await;
        r.into_iter().map(|r| r.map(|_| ())).collect()
    }

    async fn checkout(&self, reqs: Vec<CheckoutReq>) -> Vec<OpResult<u64>> {
        // Reserve + an order record: two round trips, as in the peer setup.
        // Each step goes out for the whole batch at once.
        let n = reqs.len();
        let held = self
            .reserve_many(
                reqs.into_iter()
                    .map(|r| ReserveReq {
                        user: r.user,
                        lines: r.lines,
                    })
                    .collect(),
            )
            .await;
        let mut out: Vec<OpResult<u64>> = Vec::with_capacity(n);
        let (mut at, mut holds) = (Vec::new(), Vec::new());
        for (i, h) in held.into_iter().enumerate() {
            match h {
                Ok(h) => {
                    at.push(i);
                    holds.push(h);
                    out.push(Err(OpError::unknown("no_result")));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        let ordered = self.settle(&holds, "order").await;
        // A refused order step gives its hold back; unknown if that fails too.
        let (mut back_at, mut back) = (Vec::new(), Vec::new());
        for ((i, h), r) in at.into_iter().zip(holds).zip(ordered) {
            match r {
                Err(e) if !e.unknown_outcome => {
                    back_at.push((i, e));
                    back.push(h);
                }
                r => out[i] = r,
            }
        }
        let released = self.settle(&back, "release").await;
        for ((i, e), r) in back_at.into_iter().zip(released) {
            out[i] = match r {
                Ok(_) => Err(e),
                Err(_) => Err(OpError::unknown(e.code)),
            };
        }
        out
    }

    async fn stock(&self, skus: Vec<u32>) -> Vec<OpResult<u64>> {
        let whs = self.warehouses;
        self.each(&skus, |e, &s| {
            e.cmd(2 + 2 * whs as usize)
                .bytes(b"HMGET")
                .fmt(format_args!("stk:sku-{s}"));
            for w in 0..whs {
                e.fmt(format_args!("h{w}")).fmt(format_args!("r{w}"));
            }
        })
        .await
        .into_iter()
        .map(|reply| match reply? {
            Resp::Array(vals) => Ok(vals
                .chunks(2)
                .map(|p| int(&p[0]).saturating_sub(p.get(1).map(int).unwrap_or(0)))
                .sum()),
            other => Err(reply_error(&other)),
        })
        .collect()
    }

    async fn cart_set(&self, reqs: Vec<CartReq>) -> Vec<OpResult<()>> {
        self.each(&reqs, |e, c| {
            e.cmd(4)
                .bytes(b"HSET")
                .fmt(format_args!("cart:user-{}", c.user))
                .fmt(format_args!("sku-{}", c.sku))
                .num(u64::from(c.qty));
        })
        .await
        .into_iter()
        .map(|reply| match reply? {
            Resp::Int(_) => Ok(()),
            other => Err(reply_error(&other)),
        })
        .collect()
    }

    async fn stock_rows(&self, skus: Vec<u32>) -> anyhow::Result<Vec<Vec<StockRow>>> {
        let whs = self.warehouses;
        let replies = self
            .each(&skus, |e, &s| {
                e.cmd(2 + 4 * whs as usize)
                    .bytes(b"HMGET")
                    .fmt(format_args!("stk:sku-{s}"));
                for w in 0..whs {
                    e.fmt(format_args!("h{w}"))
                        .fmt(format_args!("r{w}"))
                        .fmt(format_args!("d{w}"))
                        .fmt(format_args!("a{w}"));
                }
            })
            .await;
        let mut out = Vec::with_capacity(skus.len());
        for (reply, s) in replies.into_iter().zip(skus) {
            let row = match reply {
                Ok(Resp::Array(row)) => row,
                Ok(other) => bail!("HMGET {} answered {other:?}", stock_key(s)),
                Err(e) => bail!("HMGET {}: {}", stock_key(s), e.code),
            };
            let field = |v: Option<&Resp>| match v {
                None | Some(Resp::Nil) => None,
                Some(v) => Some(int(v)),
            };
            let mut whs = Vec::new();
            for f in row.chunks(4) {
                let Some(on_hand) = field(f.first()) else {
                    bail!("{} has no stock hash", stock_key(s));
                };
                whs.push(StockRow {
                    on_hand,
                    reserved: field(f.get(1)).unwrap_or(0),
                    deducted: Some(field(f.get(2)).unwrap_or(0)),
                    added: Some(field(f.get(3)).unwrap_or(0)),
                });
            }
            out.push(whs);
        }
        Ok(out)
    }

    async fn missing_orders(&self, ids: Vec<u64>) -> anyhow::Result<u64> {
        let replies = self
            .each(&ids, |e, id| {
                e.cmd(2).bytes(b"EXISTS").fmt(format_args!("ord:{id}"));
            })
            .await;
        let mut missing = 0;
        for r in replies {
            match r {
                Ok(Resp::Int(0)) => missing += 1,
                Ok(Resp::Int(_)) => {}
                Ok(other) => bail!("EXISTS answered {other:?}"),
                Err(e) => bail!("EXISTS: {}", e.code),
            }
        }
        Ok(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_whole_and_partial_replies() {
        let buf = b":42\r\n$3\r\nabc\r\n$-1\r\n-ERR insufficient_stock stk:sku-1\r\n*2\r\n:1\r\n$1\r\n7\r\n";
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((r, used)) = parse(&buf[at..]).unwrap() {
            got.push(r);
            at += used;
        }
        assert_eq!(at, buf.len());
        assert_eq!(
            got,
            vec![
                Resp::Int(42),
                Resp::Bulk(b"abc".to_vec()),
                Resp::Nil,
                Resp::Error("ERR insufficient_stock stk:sku-1".into()),
                Resp::Array(vec![Resp::Int(1), Resp::Bulk(b"7".to_vec())]),
            ]
        );
        // Every strict prefix of a reply is incomplete, not an error.
        let arr = b"*2\r\n:1\r\n$1\r\n7\r\n";
        for cut in 0..arr.len() {
            assert!(parse(&arr[..cut]).unwrap().is_none(), "prefix {cut}");
        }
        assert!(parse(b"?x\r\n").is_err());
        assert_eq!(
            map_error_text("ERR insufficient_stock stk:sku-1"),
            OpError::refused(crate::target::CODE_INSUFFICIENT_STOCK)
        );
    }

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let (mut out, mut scratch) = (Vec::new(), String::new());
        let mut e = Encoder {
            out: &mut out,
            scratch: &mut scratch,
        };
        e.cmd(3)
            .bytes(b"HGET")
            .fmt(format_args!("stk:sku-{}", 12))
            .num(1_999);
        assert_eq!(
            out,
            b"*3\r\n$4\r\nHGET\r\n$10\r\nstk:sku-12\r\n$4\r\n1999\r\n"
        );
        // The inline key format is the catalogue's.
        assert_eq!(stock_key(12), "stk:sku-12");
    }
}

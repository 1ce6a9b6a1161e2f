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
//! Calls are pipelined: every connection is multiplexed, and a batch sends
//! all of its calls at once, spread over the connections.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Value};

use super::{Binding, CartReq, CheckoutReq, Hold, OpError, OpResult, ReserveReq, StockRow};
use crate::workload::{Catalog, PRICE_MINOR, sku_name, user_name};

/// Reservation time-to-live (the same default as reserva's: 15 minutes).
const TTL_MS: u64 = 15 * 60 * 1000;

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
    conns: Vec<MultiplexedConnection>,
    next: AtomicUsize,
    reserve_sha: String,
    settle_sha: String,
    warehouses: u32,
}

impl Redis {
    /// Opens `connections` multiplexed connections to `url` and loads the scripts.
    pub async fn connect(url: &str, connections: usize, warehouses: u32) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).with_context(|| format!("redis url {url:?}"))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let mut conns = Vec::new();
        for _ in 0..connections.max(1) {
            conns.push(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .with_context(|| format!("connecting to redis at {url}"))?,
            );
        }
        let mut c = conns[0].clone();
        let reserve_sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(RESERVE)
            .query_async(&mut c)
            .await?;
        let settle_sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SETTLE)
            .query_async(&mut c)
            .await?;
        Ok(Redis {
            conns,
            next: AtomicUsize::new(0),
            reserve_sha,
            settle_sha,
            warehouses,
        })
    }

    fn conn(&self) -> MultiplexedConnection {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }

    async fn query(&self, cmd: redis::Cmd) -> Result<Value, OpError> {
        let mut c = self.conn();
        cmd.query_async::<Value>(&mut c)
            .await
            .map_err(|e| map_error(&e))
    }

    fn reserve_cmd(&self, req: &ReserveReq) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.reserve_sha).arg(req.lines.len());
        for l in &req.lines {
            cmd.arg(stock_key(l.sku));
        }
        cmd.arg(self.warehouses)
            .arg(TTL_MS)
            .arg(user_name(req.user));
        for l in &req.lines {
            cmd.arg(l.qty);
        }
        cmd
    }

    fn settle_cmd(&self, id: u64, mode: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.settle_sha)
            .arg(0)
            .arg(id)
            .arg(mode)
            .arg(PRICE_MINOR);
        cmd
    }

    async fn settle(&self, holds: &[Hold], mode: &str) -> Vec<OpResult<u64>> {
        join_all(holds.iter().map(|h| async move {
            match self.query(self.settle_cmd(h.id, mode)).await? {
                Value::Int(n) => Ok(n as u64),
                _ => Err(OpError::unknown("unexpected_reply")),
            }
        }))
        .await
    }

    async fn reserve_one(&self, req: ReserveReq) -> OpResult<Hold> {
        match self.query(self.reserve_cmd(&req)).await? {
            Value::Int(id) => Ok(Hold {
                id: id as u64,
                user: req.user,
                lines: req.lines,
            }),
            _ => Err(OpError::unknown("unexpected_reply")),
        }
    }
}

fn stock_key(sku: u32) -> String {
    format!("stk:{}", sku_name(sku))
}

fn map_error(e: &RedisError) -> OpError {
    if e.is_timeout() {
        return OpError::unknown("timeout");
    }
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        return OpError::unknown("connection");
    }
    let text = e.to_string();
    if text.contains("insufficient_stock") {
        OpError::refused(super::CODE_INSUFFICIENT_STOCK)
    } else if text.contains("unknown_reservation") {
        OpError::refused("unknown_reservation")
    } else if text.contains("OOM") || text.contains("BUSY") || text.contains("LOADING") {
        OpError::refused(super::CODE_OVERLOADED)
    } else {
        OpError::unknown("redis_error")
    }
}

fn int(v: &Value) -> u64 {
    match v {
        Value::Int(n) => *n as u64,
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

impl Binding for Redis {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn seed(&self, catalog: &Catalog, skus: Range<u32>) -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        for i in skus {
            let mut fields: Vec<(String, u64)> = Vec::new();
            for w in 0..catalog.warehouses {
                fields.push((format!("h{w}"), catalog.stock));
                fields.push((format!("r{w}"), 0));
                fields.push((format!("d{w}"), 0));
                fields.push((format!("a{w}"), catalog.stock));
            }
            pipe.cmd("DEL").arg(stock_key(i)).ignore();
            pipe.cmd("HSET").arg(stock_key(i)).arg(fields).ignore();
            pipe.cmd("HSET")
                .arg(format!("sku:{}", sku_name(i)))
                .arg("seller")
                .arg(format!("seller-{}", i % catalog.sellers))
                .arg("title")
                .arg(format!("Item {i}"))
                .arg("price")
                .arg(PRICE_MINOR)
                .ignore();
        }
        let mut c = self.conn();
        pipe.query_async::<()>(&mut c).await?;
        Ok(())
    }

    async fn reserve(&self, reqs: Vec<ReserveReq>) -> Vec<OpResult<Hold>> {
        join_all(reqs.into_iter().map(|r| self.reserve_one(r))).await
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
        join_all(reqs.into_iter().map(|r| async move {
            let hold = self
                .reserve_one(ReserveReq {
                    user: r.user,
                    lines: r.lines,
                })
                .await?;
            match self
                .settle(std::slice::from_ref(&hold), "order")
                .await
                .pop()
            {
                Some(Ok(order)) => Ok(order),
                Some(Err(e)) if !e.unknown_outcome => {
                    // Compensate: give the hold back; unknown if that fails too.
                    match self
                        .settle(std::slice::from_ref(&hold), "release")
                        .await
                        .pop()
                    {
                        Some(Ok(_)) => Err(e),
                        _ => Err(OpError::unknown(e.code)),
                    }
                }
                Some(Err(e)) => Err(e),
                None => Err(OpError::unknown("unexpected_reply")),
            }
        }))
        .await
    }

    async fn stock(&self, skus: Vec<u32>) -> Vec<OpResult<u64>> {
        let warehouses = self.warehouses;
        join_all(skus.into_iter().map(|s| async move {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(stock_key(s));
            for w in 0..warehouses {
                cmd.arg(format!("h{w}")).arg(format!("r{w}"));
            }
            match self.query(cmd).await? {
                Value::Array(vals) => Ok(vals
                    .chunks(2)
                    .map(|p| int(&p[0]).saturating_sub(p.get(1).map(int).unwrap_or(0)))
                    .sum()),
                _ => Err(OpError::unknown("unexpected_reply")),
            }
        }))
        .await
    }

    async fn cart_set(&self, reqs: Vec<CartReq>) -> Vec<OpResult<()>> {
        join_all(reqs.into_iter().map(|c| async move {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(format!("cart:{}", user_name(c.user)))
                .arg(sku_name(c.sku))
                .arg(c.qty);
            self.query(cmd).await.map(|_| ())
        }))
        .await
    }

    async fn stock_rows(&self, skus: Vec<u32>) -> anyhow::Result<Vec<Vec<StockRow>>> {
        let mut pipe = redis::pipe();
        for &s in &skus {
            pipe.cmd("HMGET").arg(stock_key(s));
            for w in 0..self.warehouses {
                pipe.arg(format!("h{w}"))
                    .arg(format!("r{w}"))
                    .arg(format!("d{w}"))
                    .arg(format!("a{w}"));
            }
        }
        let mut c = self.conn();
        let rows: Vec<Vec<Option<u64>>> = pipe.query_async(&mut c).await?;
        let mut out = Vec::with_capacity(rows.len());
        for (row, s) in rows.into_iter().zip(skus) {
            let mut whs = Vec::new();
            for f in row.chunks(4) {
                let Some(on_hand) = f[0] else {
                    anyhow::bail!("{} has no stock hash", stock_key(s));
                };
                whs.push(StockRow {
                    on_hand,
                    reserved: f.get(1).copied().flatten().unwrap_or(0),
                    deducted: Some(f.get(2).copied().flatten().unwrap_or(0)),
                    added: Some(f.get(3).copied().flatten().unwrap_or(0)),
                });
            }
            out.push(whs);
        }
        Ok(out)
    }

    async fn missing_orders(&self, ids: Vec<u64>) -> anyhow::Result<u64> {
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("EXISTS").arg(format!("ord:{id}"));
        }
        let mut c = self.conn();
        let found: Vec<u64> = pipe.query_async(&mut c).await?;
        Ok(found.iter().filter(|&&n| n == 0).count() as u64)
    }
}

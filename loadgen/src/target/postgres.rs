//! `postgres://USER@HOST:PORT/DB`: the same operations in SQL.
//!
//! Each step is one prepared statement calling a PL/pgSQL function, so it
//! is one round trip and one transaction: `rsv_reserve` runs a conditional
//! `UPDATE rsv_stock SET reserved = reserved + q WHERE ... AND on_hand -
//! reserved >= q` per line and raises `insufficient_stock` (rolling the
//! whole statement back) when a line finds no warehouse; `rsv_settle`
//! deletes the reservation and deducts or releases its lines, and for a
//! checkout inserts the order row. Lines are sent sorted by SKU so that
//! concurrent multi-line transactions lock rows in one order (no deadlocks).
//! Connections are checked out of a pool, one statement at a time.

use std::ops::Range;
use std::sync::Mutex;

use anyhow::Context;
use futures_util::future::join_all;
use tokio::sync::Semaphore;
use tokio_postgres::{Client, NoTls, Statement};

use super::{Binding, CartReq, CheckoutReq, Hold, OpError, OpResult, ReserveReq, StockRow};
use crate::workload::{Catalog, PRICE_MINOR, seller_name, sku_name, user_name};

/// Reservation time-to-live (the same default as reserva's: 15 minutes).
const TTL_MS: i64 = 15 * 60 * 1000;

/// Tables and functions, created if missing.
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS rsv_sku (
  sku text PRIMARY KEY, seller text NOT NULL, title text NOT NULL, price bigint NOT NULL);
CREATE TABLE IF NOT EXISTS rsv_stock (
  sku text NOT NULL, wh int NOT NULL,
  on_hand bigint NOT NULL, reserved bigint NOT NULL DEFAULT 0,
  deducted bigint NOT NULL DEFAULT 0, added bigint NOT NULL,
  PRIMARY KEY (sku, wh), CHECK (reserved >= 0 AND reserved <= on_hand));
CREATE TABLE IF NOT EXISTS rsv_reservation (
  id bigserial PRIMARY KEY, user_id text NOT NULL,
  skus text[] NOT NULL, whs int[] NOT NULL, qtys int[] NOT NULL,
  expires_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS rsv_order (
  id bigserial PRIMARY KEY, user_id text NOT NULL,
  skus text[] NOT NULL, whs int[] NOT NULL, qtys int[] NOT NULL,
  total bigint NOT NULL, status text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS rsv_cart (
  user_id text NOT NULL, sku text NOT NULL, qty int NOT NULL, PRIMARY KEY (user_id, sku));

CREATE OR REPLACE FUNCTION rsv_reserve(p_user text, p_skus text[], p_qtys int[], p_ttl_ms bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  v_whs int[] := '{}';
  v_wh int;
  v_id bigint;
BEGIN
  FOR i IN 1 .. array_length(p_skus, 1) LOOP
    UPDATE rsv_stock SET reserved = reserved + p_qtys[i]
      WHERE sku = p_skus[i]
        AND wh = (SELECT s.wh FROM rsv_stock s
                  WHERE s.sku = p_skus[i] AND s.on_hand - s.reserved >= p_qtys[i]
                  ORDER BY s.wh LIMIT 1)
        AND on_hand - reserved >= p_qtys[i]
      RETURNING wh INTO v_wh;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'insufficient_stock %', p_skus[i];
    END IF;
    v_whs := v_whs || v_wh;
  END LOOP;
  INSERT INTO rsv_reservation (user_id, skus, whs, qtys, expires_at)
    VALUES (p_user, p_skus, v_whs, p_qtys, now() + p_ttl_ms * interval '1 millisecond')
    RETURNING id INTO v_id;
  RETURN v_id;
END $$;

CREATE OR REPLACE FUNCTION rsv_settle(p_id bigint, p_mode text, p_price bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  r rsv_reservation%ROWTYPE;
  v_units bigint := 0;
  v_oid bigint := 0;
BEGIN
  DELETE FROM rsv_reservation WHERE id = p_id RETURNING * INTO r;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown_reservation %', p_id;
  END IF;
  FOR i IN 1 .. array_length(r.skus, 1) LOOP
    IF p_mode = 'release' THEN
      UPDATE rsv_stock SET reserved = reserved - r.qtys[i]
        WHERE sku = r.skus[i] AND wh = r.whs[i];
    ELSE
      UPDATE rsv_stock SET reserved = reserved - r.qtys[i], on_hand = on_hand - r.qtys[i],
          deducted = deducted + r.qtys[i]
        WHERE sku = r.skus[i] AND wh = r.whs[i];
    END IF;
    v_units := v_units + r.qtys[i];
  END LOOP;
  IF p_mode = 'order' THEN
    INSERT INTO rsv_order (user_id, skus, whs, qtys, total, status)
      VALUES (r.user_id, r.skus, r.whs, r.qtys, v_units * p_price, 'confirmed')
      RETURNING id INTO v_oid;
  END IF;
  RETURN v_oid;
END $$;
"#;

/// One pooled connection and its prepared statements.
struct Conn {
    client: Client,
    reserve: Statement,
    settle: Statement,
    stock: Statement,
    cart: Statement,
}

/// The PostgreSQL binding.
pub struct Postgres {
    conns: Vec<Conn>,
    free: Mutex<Vec<usize>>,
    permits: Semaphore,
}

/// A checked-out connection; goes back to the pool when dropped.
struct Lease<'a> {
    pool: &'a Postgres,
    index: usize,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Lease<'_> {
    fn conn(&self) -> &Conn {
        &self.pool.conns[self.index]
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.pool
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.index);
    }
}

impl Postgres {
    /// Opens `connections` connections to `url`, creates the schema, prepares the statements.
    pub async fn connect(url: &str, connections: usize) -> anyhow::Result<Self> {
        let mut conns = Vec::new();
        for i in 0..connections.max(1) {
            let (client, connection) = tokio_postgres::connect(url, NoTls)
                .await
                .with_context(|| format!("connecting to postgres at {url}"))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    eprintln!("postgres connection closed: {e}");
                }
            });
            if i == 0 {
                client
                    .batch_execute(SCHEMA)
                    .await
                    .context("creating the schema")?;
            }
            let reserve = client.prepare("SELECT rsv_reserve($1, $2, $3, $4)").await?;
            let settle = client.prepare("SELECT rsv_settle($1, $2, $3)").await?;
            let stock = client
                .prepare(
                    "SELECT coalesce(sum(on_hand - reserved), 0)::bigint FROM rsv_stock WHERE sku = $1",
                )
                .await?;
            let cart = client
                .prepare(
                    "INSERT INTO rsv_cart (user_id, sku, qty) VALUES ($1, $2, $3) \
                     ON CONFLICT (user_id, sku) DO UPDATE SET qty = EXCLUDED.qty",
                )
                .await?;
            conns.push(Conn {
                client,
                reserve,
                settle,
                stock,
                cart,
            });
        }
        let n = conns.len();
        Ok(Postgres {
            conns,
            free: Mutex::new((0..n).collect()),
            permits: Semaphore::new(n),
        })
    }

    async fn lease(&self) -> Result<Lease<'_>, OpError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| OpError::unknown("pool_closed"))?;
        let index = self
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .ok_or(OpError::unknown("pool_empty"))?;
        Ok(Lease {
            pool: self,
            index,
            _permit: permit,
        })
    }

    async fn reserve_one(&self, req: ReserveReq) -> OpResult<Hold> {
        let mut lines = req.lines;
        lines.sort_by_key(|l| sku_name(l.sku));
        let skus: Vec<String> = lines.iter().map(|l| sku_name(l.sku)).collect();
        let qtys: Vec<i32> = lines.iter().map(|l| l.qty as i32).collect();
        let lease = self.lease().await?;
        let c = lease.conn();
        let row = c
            .client
            .query_one(&c.reserve, &[&user_name(req.user), &skus, &qtys, &TTL_MS])
            .await
            .map_err(|e| map_error(&e))?;
        let id: i64 = row.try_get(0).map_err(|_| OpError::unknown("bad_row"))?;
        Ok(Hold {
            id: id as u64,
            user: req.user,
            lines,
        })
    }

    async fn settle_one(&self, id: u64, mode: &str) -> OpResult<u64> {
        let lease = self.lease().await?;
        let c = lease.conn();
        let row = c
            .client
            .query_one(&c.settle, &[&(id as i64), &mode, &(PRICE_MINOR as i64)])
            .await
            .map_err(|e| map_error(&e))?;
        let id: i64 = row.try_get(0).map_err(|_| OpError::unknown("bad_row"))?;
        Ok(id as u64)
    }

    async fn any(&self) -> Result<Lease<'_>, anyhow::Error> {
        self.lease()
            .await
            .map_err(|e| anyhow::anyhow!("no connection: {}", e.code))
    }
}

fn map_error(e: &tokio_postgres::Error) -> OpError {
    if e.is_closed() {
        return OpError::unknown("connection");
    }
    let Some(db) = e.as_db_error() else {
        return OpError::unknown("connection");
    };
    let msg = db.message();
    if msg.starts_with("insufficient_stock") {
        OpError::refused(super::CODE_INSUFFICIENT_STOCK)
    } else if msg.starts_with("unknown_reservation") {
        OpError::refused("unknown_reservation")
    } else {
        match db.code().code() {
            "40P01" => OpError::refused("deadlock"),
            "40001" => OpError::refused("serialization_failure"),
            "53300" | "57P03" => OpError::refused(super::CODE_OVERLOADED),
            _ => OpError::refused("postgres_error"),
        }
    }
}

impl Binding for Postgres {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn seed(&self, catalog: &Catalog, skus: Range<u32>) -> anyhow::Result<()> {
        let names: Vec<String> = skus.clone().map(sku_name).collect();
        let sellers: Vec<String> = skus
            .clone()
            .map(|i| seller_name(i % catalog.sellers))
            .collect();
        let titles: Vec<String> = skus.clone().map(|i| format!("Item {i}")).collect();
        let lease = self.any().await?;
        let c = &lease.conn().client;
        c.execute(
            "INSERT INTO rsv_sku (sku, seller, title, price) \
             SELECT s, sl, t, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS u(s, sl, t) \
             ON CONFLICT (sku) DO UPDATE SET seller = EXCLUDED.seller, title = EXCLUDED.title, \
             price = EXCLUDED.price",
            &[&names, &sellers, &titles, &(PRICE_MINOR as i64)],
        )
        .await?;
        c.execute(
            "INSERT INTO rsv_stock (sku, wh, on_hand, added) \
             SELECT s, w, $2, $2 FROM unnest($1::text[]) AS s CROSS JOIN generate_series(0, $3 - 1) AS w \
             ON CONFLICT (sku, wh) DO UPDATE SET on_hand = EXCLUDED.on_hand, reserved = 0, \
             deducted = 0, added = EXCLUDED.added",
            &[&names, &(catalog.stock as i64), &(catalog.warehouses as i32)],
        )
        .await?;
        Ok(())
    }

    async fn reserve(&self, reqs: Vec<ReserveReq>) -> Vec<OpResult<Hold>> {
        join_all(reqs.into_iter().map(|r| self.reserve_one(r))).await
    }

    async fn confirm(&self, holds: &[Hold]) -> Vec<OpResult<()>> {
        join_all(
            holds
                .iter()
                .map(|h| async move { self.settle_one(h.id, "confirm").await.map(|_| ()) }),
        )
        .await
    }

    async fn release(&self, holds: &[Hold]) -> Vec<OpResult<()>> {
        join_all(
            holds
                .iter()
                .map(|h| async move { self.settle_one(h.id, "release").await.map(|_| ()) }),
        )
        .await
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
            match self.settle_one(hold.id, "order").await {
                Ok(order) => Ok(order),
                Err(e) if !e.unknown_outcome => match self.settle_one(hold.id, "release").await {
                    Ok(_) => Err(e),
                    Err(_) => Err(OpError::unknown(e.code)),
                },
                Err(e) => Err(e),
            }
        }))
        .await
    }

    async fn stock(&self, skus: Vec<u32>) -> Vec<OpResult<u64>> {
        join_all(skus.into_iter().map(|s| async move {
            let lease = self.lease().await?;
            let c = lease.conn();
            let row = c
                .client
                .query_one(&c.stock, &[&sku_name(s)])
                .await
                .map_err(|e| map_error(&e))?;
            let n: i64 = row.try_get(0).map_err(|_| OpError::unknown("bad_row"))?;
            Ok(n.max(0) as u64)
        }))
        .await
    }

    async fn cart_set(&self, reqs: Vec<CartReq>) -> Vec<OpResult<()>> {
        join_all(reqs.into_iter().map(|r| async move {
            let lease = self.lease().await?;
            let c = lease.conn();
            c.client
                .execute(
                    &c.cart,
                    &[&user_name(r.user), &sku_name(r.sku), &(r.qty as i32)],
                )
                .await
                .map_err(|e| map_error(&e))?;
            Ok(())
        }))
        .await
    }

    async fn stock_rows(&self, skus: Vec<u32>) -> anyhow::Result<Vec<Vec<StockRow>>> {
        let names: Vec<String> = skus.iter().map(|&s| sku_name(s)).collect();
        let lease = self.any().await?;
        let rows = lease
            .conn()
            .client
            .query(
                "SELECT sku, on_hand, reserved, deducted, added FROM rsv_stock \
                 WHERE sku = ANY($1) ORDER BY sku, wh",
                &[&names],
            )
            .await?;
        let mut by_sku: std::collections::HashMap<String, Vec<StockRow>> =
            std::collections::HashMap::new();
        for row in rows {
            let sku: String = row.try_get(0)?;
            let get =
                |i: usize| -> anyhow::Result<u64> { Ok(row.try_get::<_, i64>(i)?.max(0) as u64) };
            by_sku.entry(sku).or_default().push(StockRow {
                on_hand: get(1)?,
                reserved: get(2)?,
                deducted: Some(get(3)?),
                added: Some(get(4)?),
            });
        }
        names
            .into_iter()
            .map(|n| {
                by_sku
                    .remove(&n)
                    .ok_or_else(|| anyhow::anyhow!("{n} has no stock rows"))
            })
            .collect()
    }

    async fn missing_orders(&self, ids: Vec<u64>) -> anyhow::Result<u64> {
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let lease = self.any().await?;
        let row = lease
            .conn()
            .client
            .query_one("SELECT count(*) FROM rsv_order WHERE id = ANY($1)", &[&ids])
            .await?;
        let found: i64 = row.try_get(0)?;
        Ok((ids.len() as i64 - found).max(0) as u64)
    }
}

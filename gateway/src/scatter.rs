//! Scatter-gather: one query per shard, all 256 shards, bounded concurrency
//! and one deadline. A shard that does not answer in time (or fails) is left
//! out and counted, so that the answer can say it is partial.

use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use reserva_client::ClientError;
use reserva_protocol::engine::SHARD_COUNT;
use reserva_protocol::{Op, Query, Reply, WireError};
use tokio::time::Instant;

use crate::App;
use crate::limits::{SCATTER_CONCURRENCY_MAX, SCATTER_DEADLINE};
use crate::problem::ApiError;

/// The answers that arrived in time, and how many shards are missing.
#[derive(Debug)]
pub struct Gathered {
    /// (shard, answer), in no particular order.
    pub answers: Vec<(u16, Reply)>,
    /// Shards that did not answer in time or failed.
    pub missing: u32,
}

/// Runs `make(shard)` on every shard. A shard refusing the query as invalid
/// fails the whole call (400); overload, timeouts and unreachable shards only
/// make it partial.
pub async fn scatter(app: &App, make: impl Fn(u16) -> Query) -> Result<Gathered, ApiError> {
    let deadline = Instant::now() + SCATTER_DEADLINE;
    let client = app.client();
    let legs = futures_util::stream::iter((0..SHARD_COUNT).map(|shard| {
        let op = Op::Query(make(shard));
        let client = client.clone();
        async move {
            let r = tokio::time::timeout_at(deadline, client.execute(op)).await;
            (shard, r)
        }
    }))
    .buffer_unordered(SCATTER_CONCURRENCY_MAX);
    let results: Vec<_> = legs.collect().await;
    let mut gathered = Gathered {
        answers: Vec::with_capacity(results.len()),
        missing: 0,
    };
    for (shard, r) in results {
        match r {
            Ok(Ok(reply)) => gathered.answers.push((shard, reply)),
            Ok(Err(ClientError::Server(e @ WireError::InvalidRequest { .. }))) => {
                return Err(e.into());
            }
            Ok(Err(e)) => {
                tracing::debug!(shard, error = %e, "scatter leg failed");
                gathered.missing += 1;
            }
            Err(_) => gathered.missing += 1,
        }
    }
    let m = app.metrics();
    m.scatter_total.fetch_add(1, Ordering::Relaxed);
    if gathered.missing > 0 {
        m.scatter_partial.fetch_add(1, Ordering::Relaxed);
        m.scatter_shards_missing
            .fetch_add(u64::from(gathered.missing), Ordering::Relaxed);
    }
    Ok(gathered)
}

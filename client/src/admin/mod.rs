//! The admin API client the `reserva` CLI uses, and its text views.
//!
//! [`AdminClient`] speaks gRPC (`admin-proto/proto/admin.proto`) to a node's
//! `--admin` address, sending the admin token as `authorization: Bearer`
//! metadata when one is given. [`view`] renders the replies as tables.

pub mod view;

use std::time::Duration;

pub use reserva_admin_proto::admin as proto;
use reserva_admin_proto::admin::admin_client::AdminClient as Stub;
use tonic::transport::{Channel, Endpoint};

/// How long connecting to the admin address may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one admin call may take (a rebalance moves shards one by one).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Why an admin call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum AdminError {
    /// The address is not a valid URI.
    Address(String),
    /// The node could not be reached.
    Connect(tonic::transport::Error),
    /// The node answered with an error status.
    Call(tonic::Status),
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminError::Address(a) => write!(f, "invalid admin address {a:?}"),
            AdminError::Connect(e) => write!(f, "cannot reach the admin API: {e}"),
            AdminError::Call(s) => write!(f, "{:?}: {}", s.code(), s.message()),
        }
    }
}

impl std::error::Error for AdminError {}

impl From<tonic::Status> for AdminError {
    fn from(s: tonic::Status) -> Self {
        AdminError::Call(s)
    }
}

/// A connection to one node's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    stub: Stub<Channel>,
    token: Option<String>,
}

impl AdminClient {
    /// Connects to `addr` (`host:port` or `http://host:port`).
    pub async fn connect(addr: &str, token: Option<String>) -> Result<Self, AdminError> {
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|_| AdminError::Address(addr.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        let channel = endpoint.connect().await.map_err(AdminError::Connect)?;
        Ok(AdminClient {
            stub: Stub::new(channel),
            token,
        })
    }

    fn request<T>(&self, msg: T) -> Result<tonic::Request<T>, AdminError> {
        let mut req = tonic::Request::new(msg);
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                AdminError::Call(tonic::Status::invalid_argument(
                    "the token is not valid metadata",
                ))
            })?;
            req.metadata_mut()
                .insert(reserva_admin_proto::AUTHORIZATION, value);
        }
        Ok(req)
    }

    /// Node status.
    pub async fn status(&mut self) -> Result<proto::StatusReply, AdminError> {
        let req = self.request(proto::StatusRequest {})?;
        Ok(self.stub.status(req).await?.into_inner())
    }

    /// Every shard's statistics.
    pub async fn shards(&mut self) -> Result<proto::ShardsReply, AdminError> {
        let req = self.request(proto::ShardsRequest {})?;
        Ok(self.stub.shards(req).await?.into_inner())
    }

    /// Moves `shard` to `core`.
    pub async fn move_shard(
        &mut self,
        shard: u32,
        core: u32,
    ) -> Result<proto::MoveShardReply, AdminError> {
        let req = self.request(proto::MoveShardRequest { shard, core })?;
        Ok(self.stub.move_shard(req).await?.into_inner())
    }

    /// Proposes (and unless `dry_run`, applies) moves that even out load.
    pub async fn rebalance(&mut self, dry_run: bool) -> Result<proto::RebalanceReply, AdminError> {
        let req = self.request(proto::RebalanceRequest { dry_run })?;
        Ok(self.stub.rebalance(req).await?.into_inner())
    }

    /// Snapshots `shards`, or every shard with `all`.
    pub async fn snapshot(
        &mut self,
        shards: Vec<u32>,
        all: bool,
    ) -> Result<proto::SnapshotReply, AdminError> {
        let req = self.request(proto::SnapshotRequest { shards, all })?;
        Ok(self.stub.snapshot(req).await?.into_inner())
    }

    /// Compacts `shards` (every shard if empty).
    pub async fn compact(&mut self, shards: Vec<u32>) -> Result<proto::CompactReply, AdminError> {
        let req = self.request(proto::CompactRequest { shards })?;
        Ok(self.stub.compact(req).await?.into_inner())
    }
}

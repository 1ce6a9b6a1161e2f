//! reserva's thread-per-core shard server.
//!
//! [`node`] starts one glommio executor per core and recovers the shards each
//! owns; [`core`] is one executor's shards, queues and group commit (its
//! round loop knows nothing of commerce: [`ops`] runs an operation on its
//! shard, [`saga`] drives checkouts above it); [`layout`] names the data
//! directory's parts; [`conn`]
//! serves one client connection of the binary protocol; [`auth`] maps API keys
//! to roles; [`config`] and [`limits`] hold the settings and bounds;
//! [`admin`] serves the admin API (gRPC) and `/metrics` ([`metrics`]).

pub mod admin;
pub mod auth;
pub mod checkout_config;
pub mod config;
pub mod conn;
pub mod core;
pub mod events;
pub mod http;
pub mod layout;
pub mod limits;
pub mod listings;
pub mod metrics;
pub mod node;
pub mod ops;
pub mod payments;
pub mod placement;
pub mod saga;

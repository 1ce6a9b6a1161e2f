//! reserva's admin API: the gRPC schema (`proto/admin.proto`) and the tonic
//! code generated from it, shared by the server (`admin::admin_server`) and
//! the `reserva` CLI (`admin::admin_client`).

#![allow(
    missing_docs,
    clippy::all,
    reason = "generated code; the schema documents every message"
)]

/// `reserva.admin.v1`.
pub mod admin {
    tonic::include_proto!("reserva.admin.v1");
}

/// The metadata key that carries the admin credential (`Bearer TOKEN`).
pub const AUTHORIZATION: &str = "authorization";

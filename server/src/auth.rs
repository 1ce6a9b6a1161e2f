//! API keys and what each role may do.
//!
//! The auth file is TOML:
//!
//! ```toml
//! [[keys]]
//! token = "s3cret-admin"
//! role = "admin"          # admin | seller | customer
//!
//! [[keys]]
//! token = "alice-token"
//! role = "customer"
//! user_id = "alice"       # a customer acts only as this user
//! tier = "standard"       # optional, used by the gateway's rate limits
//! ```

use std::collections::HashMap;
use std::path::Path;

use reserva_protocol::engine::{Command, CommerceCommand, OrderAction};
use reserva_protocol::{Op, Query, WireError};
use serde::Deserialize;

/// Longest token accepted in the auth file.
pub const TOKEN_BYTES_MAX: usize = 1_024;
/// Most keys in one auth file.
pub const KEYS_MAX: usize = 100_000;

/// A role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Catalogue and stock of their own SKUs, reads.
    Seller,
    /// Reservations, orders and carts of their own user, reads of SKUs.
    Customer,
}

/// Who a connection speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    /// The secret.
    pub token: String,
    /// The role.
    pub role: Role,
    /// For customers: the user they are.
    pub user_id: Option<String>,
    /// For sellers: the seller they are.
    pub seller_id: Option<String>,
    /// Rate-limit tier (gateway).
    pub tier: Option<String>,
}

impl Principal {
    /// Full access: used when the server runs without an auth file.
    pub fn open_access() -> Self {
        Principal {
            token: String::new(),
            role: Role::Admin,
            user_id: None,
            seller_id: None,
            tier: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    keys: Vec<Principal>,
}

/// Tokens to principals.
#[derive(Debug, Clone, Default)]
pub struct AuthTable {
    by_token: HashMap<String, Principal>,
}

impl AuthTable {
    /// Loads and checks an auth file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read auth file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("auth file {}: {e}", path.display()))
    }

    /// Parses an auth file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: AuthFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.keys.len() > KEYS_MAX {
            return Err(format!(
                "{} keys exceed KEYS_MAX ({KEYS_MAX})",
                file.keys.len()
            ));
        }
        let mut by_token = HashMap::new();
        for (i, k) in file.keys.into_iter().enumerate() {
            if k.token.len() < 8 || k.token.len() > TOKEN_BYTES_MAX {
                return Err(format!(
                    "keys[{i}].token must have 8..={TOKEN_BYTES_MAX} bytes"
                ));
            }
            if k.role == Role::Customer && k.user_id.is_none() {
                return Err(format!("keys[{i}]: a customer key needs user_id"));
            }
            if k.role == Role::Seller && k.seller_id.is_none() {
                return Err(format!("keys[{i}]: a seller key needs seller_id"));
            }
            if by_token.insert(k.token.clone(), k).is_some() {
                return Err(format!("keys[{i}].token is used twice"));
            }
        }
        Ok(AuthTable { by_token })
    }

    /// The principal of a token, if any.
    pub fn lookup(&self, token: &str) -> Option<&Principal> {
        self.by_token.get(token)
    }
}

/// Whether `who` may run `op`. Seller ownership of an existing SKU is checked
/// again on the owning shard (see `core::seller_owns`).
pub fn authorize(who: &Principal, op: &Op) -> Result<(), WireError> {
    let deny = |what: &str| {
        Err(WireError::Unauthorized {
            reason: format!("role may not {what}"),
        })
    };
    match who.role {
        Role::Admin => Ok(()),
        Role::Customer => {
            let me = who.user_id.as_deref().unwrap_or_default();
            let own = |user: &str| {
                if user == me {
                    Ok(())
                } else {
                    deny("act for another user")
                }
            };
            match op {
                // Ownership of ids is checked on the owning shard (`core::owns`).
                Op::Query(
                    Query::GetSku { .. }
                    | Query::GetReservation { .. }
                    | Query::GetOrder { .. }
                    | Query::GetCheckout { .. }
                    | Query::GetReturn { .. },
                ) => Ok(()),
                Op::Query(
                    Query::ListOrders { user_id, .. }
                    | Query::GetCart { user_id }
                    | Query::GetCredit { user_id },
                ) => own(user_id),
                Op::Query(Query::ShardStats { .. }) => deny("read shard stats"),
                Op::Mutate(r) => match &r.command {
                    Command::Reserve { owner, .. } => own(owner),
                    Command::Release { .. } | Command::Confirm { .. } => Ok(()),
                    Command::CreateOrder { user_id, .. }
                    | Command::CartSet { user_id, .. }
                    | Command::CartRemove { user_id, .. }
                    | Command::CartClear { user_id } => own(user_id),
                    Command::Commerce(c) => match &**c {
                        CommerceCommand::CheckoutBegin { user_id, .. } => own(user_id),
                        CommerceCommand::Order {
                            action: OrderAction::Cancel { .. },
                            ..
                        }
                        | CommerceCommand::ReturnRequest { .. } => Ok(()),
                        _ => deny("fulfil orders, decide returns or grant credit"),
                    },
                    _ => deny("change the catalogue, stock or order status"),
                },
            }
        }
        Role::Seller => match op {
            Op::Query(Query::ShardStats { .. }) => deny("read shard stats"),
            Op::Query(_) => Ok(()),
            Op::Mutate(r) => match &r.command {
                Command::UpsertSku { seller_id, .. }
                    if Some(seller_id) == who.seller_id.as_ref() =>
                {
                    Ok(())
                }
                Command::UpsertSku { .. } => deny("create SKUs for another seller"),
                Command::SetStock { .. }
                | Command::AdjustStock { .. }
                | Command::Restock { .. } => Ok(()),
                // Fulfilment of orders that contain the seller's SKUs (checked on the shard).
                Command::Commerce(c) => match &**c {
                    CommerceCommand::Order {
                        action:
                            OrderAction::Cancel { .. }
                            | OrderAction::Pack
                            | OrderAction::Ship { .. }
                            | OrderAction::Track { .. }
                            | OrderAction::Deliver,
                        ..
                    }
                    | CommerceCommand::Return { .. } => Ok(()),
                    _ => deny("check out, decide fraud reviews or grant credit"),
                },
                _ => deny("reserve, order, change carts or order status"),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reserva_protocol::engine::Request;

    const FILE: &str = r#"
        [[keys]]
        token = "admin-token-1"
        role = "admin"
        [[keys]]
        token = "alice-token"
        role = "customer"
        user_id = "alice"
        [[keys]]
        token = "seller-token"
        role = "seller"
        seller_id = "acme"
    "#;

    #[test]
    fn parses_and_looks_up() {
        let t = AuthTable::parse(FILE).unwrap();
        assert_eq!(t.lookup("alice-token").unwrap().role, Role::Customer);
        assert!(t.lookup("nope").is_none());
    }

    #[test]
    fn refuses_bad_files() {
        assert!(AuthTable::parse("[[keys]]\ntoken = \"short\"\nrole = \"admin\"").is_err());
        assert!(
            AuthTable::parse("[[keys]]\ntoken = \"long-enough\"\nrole = \"customer\"").is_err()
        );
        assert!(AuthTable::parse("[[keys]]\ntoken = \"long-enough\"\nrole = \"root\"").is_err());
        let twice = "[[keys]]\ntoken = \"long-enough\"\nrole = \"admin\"\n[[keys]]\ntoken = \"long-enough\"\nrole = \"admin\"";
        assert!(AuthTable::parse(twice).is_err());
    }

    #[test]
    fn customers_act_only_for_themselves() {
        let t = AuthTable::parse(FILE).unwrap();
        let alice = t.lookup("alice-token").unwrap();
        let cart = |u: &str| Op::Mutate(Request::new(Command::CartClear { user_id: u.into() }));
        assert!(authorize(alice, &cart("alice")).is_ok());
        assert!(matches!(
            authorize(alice, &cart("bob")),
            Err(WireError::Unauthorized { .. })
        ));
        let stock = Op::Mutate(Request::new(Command::SetStock {
            sku: "s".into(),
            warehouse: "w".into(),
            on_hand: 1,
        }));
        assert!(authorize(alice, &stock).is_err());
        let seller = t.lookup("seller-token").unwrap();
        assert!(authorize(seller, &stock).is_ok());
        assert!(authorize(seller, &cart("alice")).is_err());
    }
}

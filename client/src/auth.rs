//! API keys: the auth file a node and a gateway both read.
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
//! tier = "prime"          # optional, used by the gateway's rate limits
//! ```

use std::collections::HashMap;
use std::path::Path;

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

    /// The token of an admin key (the smallest, so the choice is stable), if any.
    pub fn admin_token(&self) -> Option<&str> {
        self.by_token
            .values()
            .filter(|p| p.role == Role::Admin)
            .map(|p| p.token.as_str())
            .min()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Whether the table has no keys.
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }
}

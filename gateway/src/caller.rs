//! Who is calling, from the `Authorization: Bearer` header, and what they may touch.

use reserva_client::auth::{Principal, Role};

use crate::config::RateLimits;
use crate::problem::ApiError;

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No key, with an auth file in use: SKU reads only.
    Anonymous,
    /// No auth file in use: full access (the gateway then serves loopback only).
    Open,
    /// A known API key.
    Key(Principal),
}

impl Caller {
    /// Whether the caller may do everything.
    pub fn is_admin(&self) -> bool {
        match self {
            Caller::Open => true,
            Caller::Key(p) => p.role == Role::Admin,
            Caller::Anonymous => false,
        }
    }

    /// The user a customer key acts as.
    pub fn customer(&self) -> Option<&str> {
        match self {
            Caller::Key(p) if p.role == Role::Customer => p.user_id.as_deref(),
            _ => None,
        }
    }

    /// The seller a seller key acts as.
    pub fn seller(&self) -> Option<&str> {
        match self {
            Caller::Key(p) if p.role == Role::Seller => p.seller_id.as_deref(),
            _ => None,
        }
    }

    /// 401 for anonymous callers.
    pub fn require_key(&self) -> Result<(), ApiError> {
        match self {
            Caller::Anonymous => Err(ApiError::unauthorized(
                "this route needs an API key: Authorization: Bearer TOKEN",
            )),
            _ => Ok(()),
        }
    }

    /// Admin, or the customer `user_id` itself.
    pub fn require_user(&self, user_id: &str) -> Result<(), ApiError> {
        self.require_key()?;
        if self.is_admin() || self.customer() == Some(user_id) {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "this key may not act for user {user_id:?}"
        )))
    }

    /// Admin, or the seller `seller_id` itself.
    pub fn require_seller(&self, seller_id: &str) -> Result<(), ApiError> {
        self.require_key()?;
        if self.is_admin() || self.seller() == Some(seller_id) {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "this key may not act for seller {seller_id:?}"
        )))
    }

    /// Admin only.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        self.require_key()?;
        if self.is_admin() {
            return Ok(());
        }
        Err(ApiError::forbidden("only an admin key may do this"))
    }

    /// Requests per minute allowed to this caller.
    pub fn rate(&self, limits: &RateLimits) -> u32 {
        match self {
            Caller::Anonymous => limits.anonymous,
            Caller::Open => limits.admin,
            Caller::Key(p) => match (p.role, p.tier.as_deref()) {
                (Role::Admin, _) => limits.admin,
                (Role::Seller, _) => limits.seller,
                (Role::Customer, Some("prime")) => limits.prime,
                (Role::Customer, _) => limits.customer,
            },
        }
    }

    /// A short, stable name of the caller's identity, used to keep one
    /// caller's idempotency keys apart from another's.
    pub fn scope(&self) -> String {
        let who = match self {
            Caller::Anonymous => "anonymous".to_owned(),
            Caller::Open => "open".to_owned(),
            Caller::Key(p) => match p.role {
                Role::Admin => "admin".to_owned(),
                Role::Seller => format!("seller:{}", p.seller_id.as_deref().unwrap_or_default()),
                Role::Customer => format!("user:{}", p.user_id.as_deref().unwrap_or_default()),
            },
        };
        format!("{:016x}", fnv64(who.as_bytes()))
    }
}

/// FNV-1a 64: stable across builds (the scope ends up in stored keys).
fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

//! Card payment providers. Store credit and cash on delivery need no
//! provider: the user's shard keeps the store-credit ledger, and cash is
//! recorded on delivery.
//!
//! Every call carries an idempotency key derived from the checkout or the
//! order effect it belongs to: the same key answers the same result, so a
//! saga resumed after a crash never charges twice.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use reserva_protocol::card::{SANDBOX_SLOW_MS, SandboxBehaviour, sandbox_behaviour};
use reserva_protocol::engine::Money;

use crate::limits::PAYMENT_KEYS_REMEMBERED_MAX;

/// Why a provider call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentError {
    /// A final answer: the issuer refused (`card_declined`, `insufficient_funds`, ...).
    Declined {
        /// Stable code.
        code: String,
    },
    /// The provider failed; the same call may succeed later.
    Provider {
        /// What happened.
        message: String,
    },
}

/// A card payment provider. Implementations must treat `key` as an
/// idempotency key: a repeated call with the same key has no further effect
/// and returns the first result.
#[allow(async_fn_in_trait)]
pub trait CardProvider {
    /// Authorizes (holds) `amount` on the card behind `token`; returns the provider's reference.
    async fn authorize(
        &self,
        key: &str,
        token: &str,
        amount: Money,
    ) -> Result<String, PaymentError>;
    /// Captures an authorization.
    async fn capture(
        &self,
        key: &str,
        auth_ref: &str,
        amount_minor: u64,
    ) -> Result<(), PaymentError>;
    /// Voids an authorization (nothing is charged).
    async fn void(&self, key: &str, auth_ref: &str) -> Result<(), PaymentError>;
    /// Voids whatever the authorization call keyed `auth_key` authorized, if
    /// it authorized anything (its reference was never learnt: the node
    /// stopped before it was recorded).
    async fn cancel(&self, key: &str, auth_key: &str) -> Result<(), PaymentError>;
    /// Refunds part or all of a capture.
    async fn refund(
        &self,
        key: &str,
        auth_ref: &str,
        amount_minor: u64,
    ) -> Result<(), PaymentError>;
}

/// What the sandbox did, per idempotency key (for idempotent answers and for tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxCall {
    /// An authorization and its reference.
    Authorized(String),
    /// A capture of minor units.
    Captured(u64),
    /// A void.
    Voided,
    /// A refund of minor units.
    Refunded(u64),
}

/// The sandbox card provider: deterministic test cards (see
/// `reserva_protocol::card`), a configurable latency per call, and
/// idempotent answers per key (the last `PAYMENT_KEYS_REMEMBERED_MAX` keys; an
/// authorization's reference is derived from its key, so even a forgotten
/// key answers the same reference).
pub struct SandboxCards {
    latency: Duration,
    calls: RefCell<(HashMap<String, SandboxCall>, VecDeque<String>)>,
}

impl SandboxCards {
    /// A sandbox answering after `latency`.
    pub fn new(latency: Duration) -> Self {
        SandboxCards {
            latency,
            calls: RefCell::new((HashMap::new(), VecDeque::new())),
        }
    }

    async fn wait(&self) {
        if !self.latency.is_zero() {
            glommio::timer::sleep(self.latency).await;
        }
    }

    fn remember(&self, key: &str, call: SandboxCall) -> SandboxCall {
        let mut calls = self.calls.borrow_mut();
        let (map, order) = &mut *calls;
        if let Some(first) = map.get(key) {
            return first.clone();
        }
        if order.len() >= PAYMENT_KEYS_REMEMBERED_MAX
            && let Some(old) = order.pop_front()
        {
            map.remove(&old);
        }
        map.insert(key.to_owned(), call.clone());
        order.push_back(key.to_owned());
        call
    }

    fn behaviour(token: &str) -> Result<SandboxBehaviour, PaymentError> {
        sandbox_behaviour(token).ok_or_else(|| PaymentError::Declined {
            code: "invalid_token".into(),
        })
    }
}

impl CardProvider for SandboxCards {
    async fn authorize(
        &self,
        key: &str,
        token: &str,
        _amount: Money,
    ) -> Result<String, PaymentError> {
        self.wait().await;
        let behaviour = Self::behaviour(token)?;
        match behaviour {
            SandboxBehaviour::Slow => {
                glommio::timer::sleep(Duration::from_millis(SANDBOX_SLOW_MS)).await;
            }
            SandboxBehaviour::Timeout => {
                // Never answers; the caller's timeout ends the call.
                glommio::timer::sleep(Duration::from_secs(24 * 3600)).await;
                return Err(PaymentError::Provider {
                    message: "timeout: the sandbox provider never answered".into(),
                });
            }
            _ => {}
        }
        match behaviour {
            SandboxBehaviour::Approve | SandboxBehaviour::Slow | SandboxBehaviour::Timeout => {
                let reference = format!("auth_{:016x}", fnv(key));
                match self.remember(key, SandboxCall::Authorized(reference)) {
                    SandboxCall::Authorized(r) => Ok(r),
                    other => Err(PaymentError::Declined {
                        code: format!("idempotency_key_reused: {other:?}"),
                    }),
                }
            }
            SandboxBehaviour::Decline(code) => Err(PaymentError::Declined { code: code.into() }),
            SandboxBehaviour::ProviderError => Err(PaymentError::Provider {
                message: "processing_error: the sandbox provider failed".into(),
            }),
        }
    }

    async fn capture(
        &self,
        key: &str,
        _auth_ref: &str,
        amount_minor: u64,
    ) -> Result<(), PaymentError> {
        self.wait().await;
        self.remember(key, SandboxCall::Captured(amount_minor));
        Ok(())
    }

    async fn void(&self, key: &str, _auth_ref: &str) -> Result<(), PaymentError> {
        self.wait().await;
        self.remember(key, SandboxCall::Voided);
        Ok(())
    }

    async fn cancel(&self, key: &str, auth_key: &str) -> Result<(), PaymentError> {
        self.wait().await;
        let authorized = matches!(
            self.calls.borrow().0.get(auth_key),
            Some(SandboxCall::Authorized(_))
        );
        if authorized {
            self.remember(key, SandboxCall::Voided);
        }
        Ok(())
    }

    async fn refund(
        &self,
        key: &str,
        _auth_ref: &str,
        amount_minor: u64,
    ) -> Result<(), PaymentError> {
        self.wait().await;
        self.remember(key, SandboxCall::Refunded(amount_minor));
        Ok(())
    }
}

fn fnv(s: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = reserva_engine::sm::Fnv64::default();
    h.write(s.as_bytes());
    h.finish()
}

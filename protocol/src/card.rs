//! Card numbers to payment tokens, as the sandbox card provider issues them.
//!
//! A card number never reaches a shard's log: callers (the Rust client, the
//! REST gateway) turn it into a [`PaymentMethod::Card`] here, which keeps a
//! provider token, the last four digits, the issuing country and a
//! fingerprint. The sandbox provider's test cards behave deterministically:
//!
//! | number | behaviour |
//! |---|---|
//! | `4242424242424242` | approves (US) |
//! | `4000000000000002` | declines: `card_declined` |
//! | `4000000000009995` | declines: `insufficient_funds` |
//! | `4000000000000119` | provider error (`processing_error`, retryable) |
//! | `4000000760000002` | approves (issued in BR) |
//! | `4000001240000000` | approves (issued in CA) |
//! | any other valid number | approves (US) |

use std::hash::Hasher;

use reserva_engine::sm::{Fnv64, PaymentMethod};

use crate::error::WireError;

/// What the sandbox provider does with a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxBehaviour {
    /// Authorizes, captures, voids and refunds.
    Approve,
    /// Declines authorization with this code.
    Decline(&'static str),
    /// Fails every call with a retryable provider error.
    ProviderError,
    /// Approves like `Approve`, but every authorization takes
    /// [`SANDBOX_SLOW_MS`] (a slow provider).
    Slow,
    /// Never answers an authorization: the caller's timeout must fire.
    Timeout,
}

/// How long the sandbox's slow card takes to authorize.
pub const SANDBOX_SLOW_MS: u64 = 1_000;

const TOKEN_PREFIX: &str = "tok_sbx_";

/// Tokenizes a card number for the sandbox provider: 12 to 19 digits (spaces
/// and dashes ignored) with a valid Luhn check digit.
pub fn tokenize_card(number: &str) -> Result<PaymentMethod, WireError> {
    let digits: String = number.chars().filter(|c| *c != ' ' && *c != '-').collect();
    if !(12..=19).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WireError::invalid(
            "card_number must be 12 to 19 digits".to_owned(),
        ));
    }
    if !luhn_ok(&digits) {
        return Err(WireError::invalid(
            "card_number fails its check digit (Luhn)".to_owned(),
        ));
    }
    let (behaviour, country) = match digits.as_str() {
        "4000000000000002" => ("declined", "US"),
        "4000000000009995" => ("funds", "US"),
        "4000000000000119" => ("error", "US"),
        "4000000760000002" => ("approve", "BR"),
        "4000001240000000" => ("approve", "CA"),
        "4000000000003220" => ("slow", "US"),
        "4000000000000259" => ("timeout", "US"),
        _ => ("approve", "US"),
    };
    let last4 = digits[digits.len() - 4..].to_owned();
    let mut h = Fnv64::default();
    h.write(digits.as_bytes());
    Ok(PaymentMethod::Card {
        token: format!("{TOKEN_PREFIX}{behaviour}_{last4}"),
        last4,
        country: country.to_owned(),
        fingerprint: h.finish(),
    })
}

/// The behaviour of a sandbox token; `None` if it is not a sandbox token.
pub fn sandbox_behaviour(token: &str) -> Option<SandboxBehaviour> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (behaviour, _) = rest.split_once('_')?;
    Some(match behaviour {
        "approve" => SandboxBehaviour::Approve,
        "declined" => SandboxBehaviour::Decline("card_declined"),
        "funds" => SandboxBehaviour::Decline("insufficient_funds"),
        "error" => SandboxBehaviour::ProviderError,
        "slow" => SandboxBehaviour::Slow,
        "timeout" => SandboxBehaviour::Timeout,
        _ => return None,
    })
}

fn luhn_ok(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 { d2 - 9 } else { d2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cards_tokenize_to_their_behaviour() {
        let cases = [
            ("4242424242424242", SandboxBehaviour::Approve, "US"),
            (
                "4000000000000002",
                SandboxBehaviour::Decline("card_declined"),
                "US",
            ),
            (
                "4000000000009995",
                SandboxBehaviour::Decline("insufficient_funds"),
                "US",
            ),
            ("4000000000000119", SandboxBehaviour::ProviderError, "US"),
            ("4000 0007 6000 0002", SandboxBehaviour::Approve, "BR"),
            ("4000001240000000", SandboxBehaviour::Approve, "CA"),
            ("4000000000003220", SandboxBehaviour::Slow, "US"),
            ("4000000000000259", SandboxBehaviour::Timeout, "US"),
        ];
        for (number, behaviour, want_country) in cases {
            let Ok(PaymentMethod::Card {
                token,
                last4,
                country,
                ..
            }) = tokenize_card(number)
            else {
                panic!("{number} did not tokenize");
            };
            assert_eq!(sandbox_behaviour(&token), Some(behaviour), "{number}");
            assert_eq!(country, want_country);
            assert_eq!(last4.len(), 4);
            assert!(
                !token.contains(&number.replace(' ', "")),
                "token leaks the number"
            );
        }
    }

    #[test]
    fn bad_numbers_are_refused() {
        for bad in [
            "",
            "4242",
            "4242424242424241",
            "42424242424242424242",
            "4242x24242424242",
        ] {
            assert!(tokenize_card(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn same_card_same_fingerprint() {
        let a = tokenize_card("4242424242424242");
        let b = tokenize_card("4242 4242 4242 4242");
        let c = tokenize_card("4000056655665556");
        let fp = |m: Result<PaymentMethod, WireError>| match m {
            Ok(PaymentMethod::Card { fingerprint, .. }) => fingerprint,
            _ => 0,
        };
        let (a, b, c) = (fp(a), fp(b), fp(c));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, 0);
    }
}

//! Fraud scoring: a pure function of the rules, the checkout and what the
//! user's and the card's shards remember.

use crate::sm::commerce::{
    Checkout, FraudDecision, FraudResult, FraudRules, PaymentMethod, UserRecord,
};

/// Scores `checkout` at time `now`. `card_uses` counts the card's uses in the
/// window (this one included); `user` is what the user's shard remembers.
pub fn score(
    rules: &FraudRules,
    now: u64,
    checkout: &Checkout,
    user: &UserRecord,
    card_uses: u32,
) -> FraudResult {
    let mut score: u32 = 0;
    let mut reasons = Vec::new();
    let mut fire = |points: u32, reason: String| {
        score = score.saturating_add(points);
        reasons.push(reason);
    };
    let since = now.saturating_sub(rules.window_ms);
    let recent = user
        .recent_checkouts_ms
        .iter()
        .filter(|t| **t > since)
        .count() as u32;
    if recent > rules.user_velocity_max {
        fire(
            rules.user_velocity_points,
            format!(
                "user_velocity: {recent} checkouts in {} s (max {})",
                rules.window_ms / 1000,
                rules.user_velocity_max
            ),
        );
    }
    if let PaymentMethod::Card { country, .. } = &checkout.payment.method {
        if card_uses > rules.card_velocity_max {
            fire(
                rules.card_velocity_points,
                format!(
                    "card_velocity: card used {card_uses} times in {} s (max {})",
                    rules.window_ms / 1000,
                    rules.card_velocity_max
                ),
            );
        }
        if *country != checkout.ship_to.country {
            fire(
                rules.country_mismatch_points,
                format!(
                    "country_mismatch: card from {country}, shipping to {}",
                    checkout.ship_to.country
                ),
            );
        }
    }
    let amount = checkout.payment.amount.amount_minor;
    if now.saturating_sub(user.first_seen_ms) < rules.new_account_ms
        && amount > rules.new_account_amount_minor
    {
        fire(
            rules.new_account_points,
            format!(
                "new_account_amount: {amount} on an account first seen {} s ago (max {})",
                now.saturating_sub(user.first_seen_ms) / 1000,
                rules.new_account_amount_minor
            ),
        );
    }
    if user.cards.len() as u32 > rules.distinct_cards_max {
        fire(
            rules.distinct_cards_points,
            format!(
                "distinct_cards: {} cards on this user (max {})",
                user.cards.len(),
                rules.distinct_cards_max
            ),
        );
    }
    let decision = if score >= rules.reject_at {
        FraudDecision::Reject
    } else if score >= rules.review_at {
        FraudDecision::Review
    } else {
        FraudDecision::Accept
    };
    reasons.truncate(crate::limits::FRAUD_REASONS_MAX);
    FraudResult {
        score,
        reasons,
        decision,
    }
}

//! The checkout saga's steps, store credit and card velocity, as recorded on a
//! shard. Every step checks that the checkout is where the step expects it,
//! so a step recorded once is refused if sent again: a resumed saga reads
//! the checkout and carries on from its state.

use crate::ids::{CheckoutId, ReservationId};
use crate::limits::*;
use crate::sm::command::Outcome;
use crate::sm::commerce::*;
use crate::sm::error::{EngineError, invalid, limit_reached};
use crate::sm::inventory::check_money;
use crate::sm::state::ShardState;
use crate::sm::types::{Currency, Money, Order, OrderLine, OrderStatus, ReserveLine, StatusChange};
use crate::sm::validate::{self, Item};

/// Placeholder currency of a payment whose amount is not known yet (ISO 4217 "no currency").
pub const NO_CURRENCY: Currency = Currency(*b"XXX");

impl ShardState {
    pub(crate) fn commerce(
        &mut self,
        now: u64,
        command: &CommerceCommand,
    ) -> Result<Outcome, EngineError> {
        use CommerceCommand as C;
        let outcome = match command {
            C::CheckoutBegin {
                user_id,
                source,
                payment,
                ship_to,
            } => self.checkout_begin(now, user_id, source, payment, ship_to)?,
            C::CheckoutReserved {
                checkout_id,
                holds,
                prices,
                lines,
            } => self.checkout_reserved(now, *checkout_id, holds, prices, lines)?,
            C::CheckoutScore {
                checkout_id,
                rules,
                card_uses,
            } => self.checkout_score(now, *checkout_id, rules, *card_uses)?,
            C::CheckoutAuthorized {
                checkout_id,
                auth_ref,
            } => self.checkout_authorized(now, *checkout_id, auth_ref)?,
            C::CheckoutCreateOrder {
                checkout_id,
                estimates,
            } => self.checkout_create_order(now, *checkout_id, estimates)?,
            C::CheckoutStockConfirmed { checkout_id } => {
                self.checkout_stock_confirmed(now, *checkout_id)?
            }
            C::CheckoutFinish { checkout_id } => self.checkout_finish(now, *checkout_id)?,
            C::CheckoutFail { checkout_id, error } => {
                self.checkout_fail(now, *checkout_id, error)?
            }
            C::CheckoutCompensated { checkout_id } => {
                self.checkout_compensated(now, *checkout_id)?
            }
            C::CardUse {
                fingerprint,
                window_ms,
            } => self.card_use(now, *fingerprint, *window_ms)?,
            C::CreditGrant { user_id, amount } => self.credit_grant(now, user_id, *amount)?,
            C::Order { order_id, action } => self.order_action(now, *order_id, action)?,
            C::ReturnRequest {
                order_id,
                lines,
                reason,
            } => self.return_request(now, *order_id, lines, reason)?,
            C::Return { return_id, action } => self.return_action(now, *return_id, *action)?,
            C::EffectDone { order_id, seq } => self.effect_done(*order_id, *seq)?,
            C::WishlistSet { user_id, sku, qty } => self.wishlist_set(user_id, sku, *qty)?,
            C::WishlistRemove { user_id, sku } => self.wishlist_remove(user_id, sku)?,
            C::CheckoutHold {
                owner,
                lines,
                adopt,
                ttl_ms,
                warehouse_preference,
            } => self.checkout_hold(now, owner, lines, *adopt, *ttl_ms, warehouse_preference)?,
            C::CheckoutPlace { checkout_id, place } => {
                self.checkout_place(now, *checkout_id, place)?
            }
            C::HoldDeduct { reservation_id } => CommerceOutcome::Deducted {
                allocations: self.deduct(None, *reservation_id)?,
            },
            C::CheckoutSettle { checkout_id } => self.checkout_settle(now, *checkout_id)?,
        };
        Ok(Outcome::Commerce(Box::new(outcome)))
    }

    fn checkout_begin(
        &mut self,
        now: u64,
        user_id: &str,
        source: &CheckoutSource,
        payment: &PaymentMethod,
        ship_to: &Address,
    ) -> Result<CommerceOutcome, EngineError> {
        validate::key_on("user_id", user_id, self.shard)?;
        check_address(ship_to)?;
        check_payment_method(payment)?;
        let lines = match source {
            CheckoutSource::Lines(lines) => {
                check_lines("lines", lines)?;
                lines.clone()
            }
            CheckoutSource::Cart => {
                let cart = self.cart(user_id);
                if cart.is_empty() {
                    return Err(invalid("cart", "is empty"));
                }
                let lines: Vec<ReserveLine> = cart
                    .iter()
                    .map(|i| ReserveLine {
                        sku: i.sku.clone(),
                        qty: i.qty,
                    })
                    .collect();
                // A cart may hold more items (CART_ITEMS_MAX) than one order
                // has lines; such a checkout could never be reserved.
                check_lines("cart", &lines)?;
                lines
            }
            CheckoutSource::Reservation(_) => Vec::new(),
        };
        if self.checkouts.len() >= CHECKOUTS_MAX {
            return Err(limit_reached("CHECKOUTS_MAX", CHECKOUTS_MAX as u64));
        }
        if !self.users.contains_key(user_id) && self.users.len() >= USERS_TRACKED_MAX {
            return Err(limit_reached("USERS_TRACKED_MAX", USERS_TRACKED_MAX as u64));
        }
        let seq = ShardState::mint(&mut self.next_checkout_seq)?;
        let id =
            CheckoutId::new(self.shard, seq).ok_or_else(|| invalid("shard", "out of range"))?;
        // Commit: nothing below can fail.
        let user = self.user_mut(now, user_id);
        push_bounded(
            &mut user.recent_checkouts_ms,
            now,
            USER_RECENT_CHECKOUTS_MAX,
        );
        if let PaymentMethod::Card { fingerprint, .. } = payment
            && !user.cards.contains(fingerprint)
        {
            push_bounded(&mut user.cards, *fingerprint, USER_CARDS_MAX);
        }
        let checkout = Checkout {
            id,
            user_id: user_id.to_owned(),
            source: source.clone(),
            lines,
            ship_to: ship_to.clone(),
            payment: Payment {
                method: payment.clone(),
                amount: Money {
                    amount_minor: 0,
                    currency: NO_CURRENCY,
                },
                status: PaymentStatus::Pending,
                auth_ref: String::new(),
                captured_minor: 0,
                refunded_minor: 0,
            },
            state: CheckoutState::Started,
            holds: Vec::new(),
            prices: Vec::new(),
            fraud: None,
            order_id: None,
            failure: None,
            created_at_ms: now,
            updated_at_ms: now,
        };
        self.checkouts.insert(id, checkout);
        Ok(CommerceOutcome::CheckoutStarted { checkout_id: id })
    }

    /// The checkout `id`, which must be in `expected`.
    fn checkout_in(
        &mut self,
        id: CheckoutId,
        expected: &[CheckoutState],
    ) -> Result<&mut Checkout, EngineError> {
        validate::minted_on(id.shard(), self.shard)?;
        let c = self
            .checkouts
            .get_mut(&id)
            .ok_or(EngineError::UnknownCheckout { checkout_id: id })?;
        if !expected.contains(&c.state) {
            return Err(EngineError::CheckoutState {
                checkout_id: id,
                state: c.state.as_str().to_owned(),
            });
        }
        Ok(c)
    }

    fn step(&mut self, id: CheckoutId) -> CommerceOutcome {
        CommerceOutcome::CheckoutStep {
            checkout: self.checkouts.get(&id).cloned().unwrap_or_else(|| {
                unreachable!("step answered for checkout {id} that was just changed")
            }),
        }
    }

    fn checkout_reserved(
        &mut self,
        now: u64,
        id: CheckoutId,
        holds: &[Hold],
        prices: &[PricedLine],
        lines: &[ReserveLine],
    ) -> Result<CommerceOutcome, EngineError> {
        validate::count(
            "holds",
            holds.len(),
            CHECKOUT_HOLDS_MAX,
            "CHECKOUT_HOLDS_MAX",
        )?;
        for (i, h) in holds.iter().enumerate() {
            if h.shard >= SHARD_COUNT || h.reservation_id.shard() != h.shard {
                return Err(invalid(
                    Item::field("holds", i, "shard").to_string(),
                    "must be the shard that minted the reservation",
                ));
            }
            validate::count(
                "holds[].allocations",
                h.allocations.len(),
                RESERVATION_ALLOCATIONS_MAX,
                "RESERVATION_ALLOCATIONS_MAX",
            )?;
        }
        check_lines("lines", lines)?;
        let c = self.checkout_in(id, &[CheckoutState::Started])?;
        if !c.lines.is_empty() && c.lines != lines {
            return Err(invalid("lines", "differ from the checkout's lines"));
        }
        // Every line needs a price, and every price one currency.
        let mut total: u64 = 0;
        let mut currency = None;
        for (i, line) in lines.iter().enumerate() {
            let price = prices
                .iter()
                .find(|p| p.sku == line.sku)
                .ok_or_else(|| invalid(Item::field("lines", i, "sku").to_string(), "no price"))?;
            check_money("prices[].unit_price", price.unit_price)?;
            if *currency.get_or_insert(price.unit_price.currency) != price.unit_price.currency {
                return Err(invalid(
                    "prices",
                    "all lines of a checkout must share one currency",
                ));
            }
            // Bounded by PRICE_MINOR_MAX * LINE_QTY_MAX * ORDER_LINES_MAX (see limits).
            total += price.unit_price.amount_minor * u64::from(line.qty);
        }
        // Held units per SKU must equal the lines.
        for line in lines {
            let held: u64 = holds
                .iter()
                .flat_map(|h| &h.allocations)
                .filter(|a| a.sku == line.sku)
                .map(|a| u64::from(a.qty))
                .sum();
            if held != u64::from(line.qty) {
                return Err(invalid(
                    "holds",
                    format!(
                        "hold {held} units of {:?}, the line wants {}",
                        line.sku, line.qty
                    ),
                ));
            }
        }
        // ...and nothing else: the order's lines are made from the
        // allocations and its total from the lines, so an allocation of a SKU
        // no line wants (or of no units) would put a line in the order that
        // its total does not pay for.
        for (i, h) in holds.iter().enumerate() {
            for a in &h.allocations {
                if a.qty == 0 || !lines.iter().any(|l| l.sku == a.sku) {
                    return Err(invalid(
                        Item::field("holds", i, "allocations").to_string(),
                        format!("hold {} units of {:?}, which no line wants", a.qty, a.sku),
                    ));
                }
            }
        }
        c.lines = lines.to_vec();
        c.holds = holds.to_vec();
        c.prices = prices.to_vec();
        c.payment.amount = Money {
            amount_minor: total,
            currency: currency.unwrap_or(NO_CURRENCY),
        };
        c.state = CheckoutState::Reserved;
        c.updated_at_ms = now;
        Ok(self.step(id))
    }

    /// A checkout's hold on this SKU shard, answered with its SKUs' prices.
    fn checkout_hold(
        &mut self,
        now: u64,
        owner: &str,
        lines: &[ReserveLine],
        adopt: Option<ReservationId>,
        ttl_ms: u64,
        preference: &[String],
    ) -> Result<CommerceOutcome, EngineError> {
        let (hold, lines) = match adopt {
            Some(id) => {
                validate::id("owner", owner)?;
                if !lines.is_empty() {
                    return Err(invalid(
                        "lines",
                        "must be empty when adopting a reservation",
                    ));
                }
                if !(TTL_MS_MIN..=TTL_MS_MAX).contains(&ttl_ms) {
                    return Err(invalid(
                        "ttl_ms",
                        format!(
                            "{ttl_ms} outside TTL_MS_MIN..=TTL_MS_MAX ({TTL_MS_MIN}..={TTL_MS_MAX})"
                        ),
                    ));
                }
                validate::minted_on(id.shard(), self.shard)?;
                let r = self
                    .reservations
                    .get(&id)
                    .ok_or(EngineError::UnknownReservation { reservation_id: id })?;
                if r.owner != owner {
                    return Err(invalid(
                        "reservation_id",
                        "the reservation belongs to another user",
                    ));
                }
                let old = r.expires_at_ms;
                let expires_at_ms = old.max(now.saturating_add(ttl_ms));
                if expires_at_ms != old {
                    self.expiries.remove(&(old, id));
                    self.expiries.insert((expires_at_ms, id));
                    if let Some(r) = self.reservations.get_mut(&id) {
                        r.expires_at_ms = expires_at_ms;
                    }
                }
                let allocations = self
                    .reservations
                    .get(&id)
                    .map(|r| r.allocations.clone())
                    .unwrap_or_default();
                let mut lines: Vec<ReserveLine> = Vec::new();
                for a in &allocations {
                    match lines.iter_mut().find(|l| l.sku == a.sku) {
                        Some(l) => l.qty += a.qty,
                        None => lines.push(ReserveLine {
                            sku: a.sku.clone(),
                            qty: a.qty,
                        }),
                    }
                }
                let hold = Hold {
                    shard: self.shard,
                    reservation_id: id,
                    allocations,
                    expires_at_ms,
                };
                (hold, lines)
            }
            None => {
                let preference = self.rank_warehouses(lines, preference);
                match self.reserve(now, owner, lines, Some(ttl_ms), &preference)? {
                    Outcome::Reserved {
                        reservation_id,
                        expires_at_ms,
                        allocations,
                    } => (
                        Hold {
                            shard: self.shard,
                            reservation_id,
                            allocations,
                            expires_at_ms,
                        },
                        lines.to_vec(),
                    ),
                    other => unreachable!("reserve answered {other:?}"),
                }
            }
        };
        // Every SKU held exists (the hold or the adopted reservation holds it).
        let prices = lines
            .iter()
            .filter_map(|l| self.skus.get(l.sku.as_str()))
            .map(|sku| PricedLine {
                sku: sku.sku.clone(),
                seller_id: sku.seller_id.clone(),
                unit_price: sku.price,
            })
            .collect();
        Ok(CommerceOutcome::Held {
            hold,
            prices,
            lines,
        })
    }

    /// The warehouses to try for `lines`, in order: those able to ship more
    /// of the lines whole first (fewer split shipments), then by `preference`
    /// (nearest the address first), then by id.
    fn rank_warehouses(&self, lines: &[ReserveLine], preference: &[String]) -> Vec<String> {
        let whole = |w: &str| {
            lines
                .iter()
                .filter(|l| {
                    self.skus
                        .get(l.sku.as_str())
                        .and_then(|s| s.warehouse(w))
                        .is_some_and(|ws| ws.available() >= u64::from(l.qty))
                })
                .count()
        };
        // Candidates: the preferred warehouses, then every other warehouse
        // stocking a line's SKU (after them, by id).
        let mut candidates: Vec<&str> = preference.iter().map(String::as_str).collect();
        let mut others: Vec<&str> = lines
            .iter()
            .filter_map(|l| self.skus.get(l.sku.as_str()))
            .flat_map(|s| s.warehouses.iter().map(|w| w.warehouse.as_str()))
            .filter(|w| !preference.iter().any(|p| p == w))
            .collect();
        others.sort_unstable();
        others.dedup();
        candidates.extend(others);
        let mut ranked: Vec<(usize, usize, &str)> = candidates
            .into_iter()
            .enumerate()
            .map(|(i, w)| (whole(w), i, w))
            .filter(|(whole, _, _)| *whole > 0)
            .collect();
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked
            .into_iter()
            .take(WAREHOUSE_PREFERENCE_MAX)
            .map(|(_, _, w)| w.to_owned())
            .collect()
    }

    /// The checkout's one record after its holds (see `CheckoutPlace`). All
    /// or nothing: a refusal leaves the checkout in `started`.
    fn checkout_place(
        &mut self,
        now: u64,
        id: CheckoutId,
        p: &Placement,
    ) -> Result<CommerceOutcome, EngineError> {
        // Everything that can refuse is checked before anything changes.
        check_rules(&p.rules)?;
        validate::text("auth_ref", &p.auth_ref, ID_BYTES_MAX, "ID_BYTES_MAX")?;
        if p.estimates.len() > CHECKOUT_ORDER_LINES_MAX {
            return Err(invalid(
                "estimates",
                format!("more than CHECKOUT_ORDER_LINES_MAX ({CHECKOUT_ORDER_LINES_MAX})"),
            ));
        }
        let allocations: usize = p.holds.iter().map(|h| h.allocations.len()).sum();
        if allocations > CHECKOUT_ORDER_LINES_MAX {
            return Err(limit_reached(
                "CHECKOUT_ORDER_LINES_MAX",
                CHECKOUT_ORDER_LINES_MAX as u64,
            ));
        }
        if self.orders.len() >= ORDERS_MAX {
            return Err(limit_reached("ORDERS_MAX", ORDERS_MAX as u64));
        }
        // A card needs an authorization unless the rules reject the checkout
        // (then none was asked for): `checkout_authorized` checks it.
        let saved = self.checkout_in(id, &[CheckoutState::Started])?.clone();
        let result = self.place_steps(now, id, p);
        if result.is_err() {
            // Undo: the checkout as it was, and no store-credit hold.
            let user = saved.user_id.clone();
            self.checkouts.insert(id, saved);
            self.credit_settle(&user, id, false);
        }
        result
    }

    fn place_steps(
        &mut self,
        now: u64,
        id: CheckoutId,
        p: &Placement,
    ) -> Result<CommerceOutcome, EngineError> {
        self.checkout_reserved(now, id, &p.holds, &p.prices, &p.lines)?;
        self.checkout_score(now, id, &p.rules, p.card_uses)?;
        let c = self
            .checkouts
            .get_mut(&id)
            .ok_or(EngineError::UnknownCheckout { checkout_id: id })?;
        if c.state == CheckoutState::Compensating {
            // Rejected by the rules: an authorization already taken is
            // recorded, so that compensation voids it.
            if !p.auth_ref.is_empty() {
                c.payment.auth_ref = p.auth_ref.clone();
                c.payment.status = PaymentStatus::Authorized;
            }
            return Ok(self.step(id));
        }
        self.checkout_authorized(now, id, &p.auth_ref)?;
        if self.checkouts.get(&id).map(|c| c.state) == Some(CheckoutState::Compensating) {
            return Ok(self.step(id));
        }
        self.checkout_create_order(now, id, &p.estimates)
    }

    /// Stock deducted and payment captured: `order_created` (or
    /// `stock_confirmed`) to the end.
    fn checkout_settle(
        &mut self,
        now: u64,
        id: CheckoutId,
    ) -> Result<CommerceOutcome, EngineError> {
        let c = self.checkout_in(
            id,
            &[CheckoutState::OrderCreated, CheckoutState::StockConfirmed],
        )?;
        c.state = CheckoutState::StockConfirmed;
        self.checkout_finish(now, id)
    }

    fn checkout_score(
        &mut self,
        now: u64,
        id: CheckoutId,
        rules: &FraudRules,
        card_uses: u32,
    ) -> Result<CommerceOutcome, EngineError> {
        check_rules(rules)?;
        let user_id = self
            .checkout_in(id, &[CheckoutState::Reserved])?
            .user_id
            .clone();
        let user = self.users.get(&user_id).cloned().unwrap_or_default();
        let c = self
            .checkouts
            .get_mut(&id)
            .ok_or(EngineError::UnknownCheckout { checkout_id: id })?;
        let result = crate::sm::fraud::score(rules, now, c, &user, card_uses);
        if result.decision == FraudDecision::Reject {
            c.failure = Some(EngineError::FraudRejected {
                score: result.score,
                reasons: result.reasons.clone(),
            });
            c.state = CheckoutState::Compensating;
        } else {
            c.state = CheckoutState::Scored;
        }
        c.fraud = Some(result);
        c.updated_at_ms = now;
        Ok(self.step(id))
    }

    fn checkout_authorized(
        &mut self,
        now: u64,
        id: CheckoutId,
        auth_ref: &str,
    ) -> Result<CommerceOutcome, EngineError> {
        validate::text("auth_ref", auth_ref, ID_BYTES_MAX, "ID_BYTES_MAX")?;
        let c = self.checkout_in(id, &[CheckoutState::Scored])?;
        let amount = c.payment.amount;
        match &c.payment.method {
            PaymentMethod::Card { .. } => {
                if auth_ref.is_empty() {
                    return Err(invalid(
                        "auth_ref",
                        "a card authorization needs a reference",
                    ));
                }
            }
            PaymentMethod::StoreCredit | PaymentMethod::CashOnDelivery => {}
        }
        let method = c.payment.method.clone();
        let user_id = c.user_id.clone();
        let declined = if method == PaymentMethod::StoreCredit {
            self.credit_hold(&user_id, id, amount).err()
        } else {
            None
        };
        let c = self
            .checkouts
            .get_mut(&id)
            .ok_or(EngineError::UnknownCheckout { checkout_id: id })?;
        match declined {
            Some(error) => {
                c.payment.status = PaymentStatus::Declined;
                c.failure = Some(error);
                c.state = CheckoutState::Compensating;
            }
            None => {
                c.payment.status = PaymentStatus::Authorized;
                c.payment.auth_ref = auth_ref.to_owned();
                c.state = CheckoutState::Authorized;
            }
        }
        c.updated_at_ms = now;
        Ok(self.step(id))
    }

    /// Holds `amount` of the user's store credit for checkout `id`.
    fn credit_hold(
        &mut self,
        user_id: &str,
        id: CheckoutId,
        amount: Money,
    ) -> Result<(), EngineError> {
        let declined = |available: u64| EngineError::PaymentDeclined {
            code: "insufficient_credit".into(),
            message: format!(
                "store credit available {available}, order total {} {}",
                amount.amount_minor,
                amount.currency.as_str()
            ),
        };
        let Some(account) = self.credit.get_mut(user_id) else {
            return Err(declined(0));
        };
        if account.currency != amount.currency {
            return Err(EngineError::PaymentDeclined {
                code: "currency_mismatch".into(),
                message: format!(
                    "store credit is in {}, the order in {}",
                    account.currency.as_str(),
                    amount.currency.as_str()
                ),
            });
        }
        if account.available_minor() < amount.amount_minor {
            return Err(declined(account.available_minor()));
        }
        account.held_minor += amount.amount_minor;
        account.holds.push((id, amount.amount_minor));
        Ok(())
    }

    /// Ends the store-credit hold of checkout `id`: captured (spent) or released.
    pub(crate) fn credit_settle(&mut self, user_id: &str, id: CheckoutId, capture: bool) {
        if let Some(account) = self.credit.get_mut(user_id)
            && let Some(i) = account.holds.iter().position(|(c, _)| *c == id)
        {
            let (_, amount) = account.holds.remove(i);
            account.held_minor -= amount;
            if capture {
                account.balance_minor -= amount;
            }
        }
    }

    fn checkout_create_order(
        &mut self,
        now: u64,
        id: CheckoutId,
        estimates: &[DeliveryEstimate],
    ) -> Result<CommerceOutcome, EngineError> {
        if estimates.len() > CHECKOUT_ORDER_LINES_MAX {
            return Err(invalid(
                "estimates",
                format!("more than CHECKOUT_ORDER_LINES_MAX ({CHECKOUT_ORDER_LINES_MAX})"),
            ));
        }
        let c = self.checkout_in(id, &[CheckoutState::Authorized])?.clone();
        if self.orders.len() >= ORDERS_MAX {
            return Err(limit_reached("ORDERS_MAX", ORDERS_MAX as u64));
        }
        let mut lines = Vec::new();
        let mut shipments: Vec<Shipment> = Vec::new();
        for a in c.holds.iter().flat_map(|h| &h.allocations) {
            let price = c
                .prices
                .iter()
                .find(|p| p.sku == a.sku)
                .map(|p| p.unit_price)
                .ok_or_else(|| invalid("prices", format!("no price for {:?}", a.sku)))?;
            lines.push(OrderLine {
                sku: a.sku.clone(),
                warehouse: a.warehouse.clone(),
                qty: a.qty,
                unit_price: price,
            });
            if !shipments.iter().any(|s| s.warehouse == a.warehouse) {
                let est = estimates.iter().find(|e| e.warehouse == a.warehouse);
                shipments.push(Shipment {
                    warehouse: a.warehouse.clone(),
                    distance_km: est.map_or(0, |e| e.distance_km),
                    estimated_delivery_ms: est.map_or(0, |e| e.estimated_at_ms),
                    carrier: String::new(),
                    tracking_number: String::new(),
                    events: Vec::new(),
                });
            }
        }
        // ORDER_EFFECTS_MAX is asserted (limits.rs) to fit cancelling this many lines.
        if lines.len() > CHECKOUT_ORDER_LINES_MAX {
            return Err(limit_reached(
                "CHECKOUT_ORDER_LINES_MAX",
                CHECKOUT_ORDER_LINES_MAX as u64,
            ));
        }
        let mut sellers: Vec<String> = c.prices.iter().map(|p| p.seller_id.clone()).collect();
        sellers.sort();
        sellers.dedup();
        let seq = ShardState::mint(&mut self.next_order_seq)?;
        let order_id = crate::ids::OrderId::new(self.shard, seq)
            .ok_or_else(|| limit_reached("SEQUENCE_MAX", SEQUENCE_MAX))?;
        let order = Order {
            id: order_id,
            user_id: c.user_id.clone(),
            lines,
            total: c.payment.amount,
            ship_to: c.ship_to.one_line(),
            status: OrderStatus::Placed,
            history: vec![StatusChange {
                status: OrderStatus::Placed,
                at_ms: now,
                note: format!("checkout {id}"),
            }],
            fulfilment: Some(Box::new(Fulfilment {
                checkout_id: id,
                sellers,
                address: c.ship_to.clone(),
                payment: c.payment.clone(),
                fraud: c.fraud.clone(),
                shipments,
                returns: Vec::new(),
                effects: Vec::new(),
            })),
        };
        self.orders.insert(order_id, order);
        self.orders_by_user
            .entry(c.user_id.clone())
            .or_default()
            .push(order_id);
        let c = self
            .checkouts
            .get_mut(&id)
            .ok_or(EngineError::UnknownCheckout { checkout_id: id })?;
        c.order_id = Some(order_id);
        c.state = CheckoutState::OrderCreated;
        c.updated_at_ms = now;
        Ok(self.step(id))
    }

    fn checkout_stock_confirmed(
        &mut self,
        now: u64,
        id: CheckoutId,
    ) -> Result<CommerceOutcome, EngineError> {
        let c = self.checkout_in(id, &[CheckoutState::OrderCreated])?;
        c.state = CheckoutState::StockConfirmed;
        c.updated_at_ms = now;
        Ok(self.step(id))
    }

    fn checkout_finish(
        &mut self,
        now: u64,
        id: CheckoutId,
    ) -> Result<CommerceOutcome, EngineError> {
        let c = self.checkout_in(id, &[CheckoutState::StockConfirmed])?;
        let review = c
            .fraud
            .as_ref()
            .is_some_and(|f| f.decision == FraudDecision::Review);
        let (user_id, order_id, method, source) = (
            c.user_id.clone(),
            c.order_id,
            c.payment.method.clone(),
            c.source.clone(),
        );
        if review {
            c.state = CheckoutState::InReview;
        } else {
            if method != PaymentMethod::CashOnDelivery {
                c.payment.status = PaymentStatus::Captured;
                c.payment.captured_minor = c.payment.amount.amount_minor;
            }
            c.state = CheckoutState::Completed;
        }
        c.updated_at_ms = now;
        let payment = c.payment.clone();
        if !review && method == PaymentMethod::StoreCredit {
            self.credit_settle(&user_id, id, true);
        }
        let status = if review {
            OrderStatus::Review
        } else {
            OrderStatus::Confirmed
        };
        if let Some(order) = order_id.and_then(|o| self.orders.get_mut(&o)) {
            push_status(
                order,
                status,
                now,
                if review {
                    "held for fraud review"
                } else {
                    "payment captured"
                },
            );
            if let Some(f) = order.fulfilment.as_mut() {
                f.payment = payment;
            }
        }
        if source == CheckoutSource::Cart {
            self.carts.remove(&user_id);
        }
        self.retire_checkout(id, now);
        Ok(self.step(id))
    }

    fn checkout_fail(
        &mut self,
        now: u64,
        id: CheckoutId,
        error: &EngineError,
    ) -> Result<CommerceOutcome, EngineError> {
        let c = self.checkout_in(
            id,
            &[
                CheckoutState::Started,
                CheckoutState::Reserved,
                CheckoutState::Scored,
                CheckoutState::Authorized,
                CheckoutState::OrderCreated,
                CheckoutState::StockConfirmed,
            ],
        )?;
        match error {
            EngineError::PaymentDeclined { .. } => c.payment.status = PaymentStatus::Declined,
            EngineError::PaymentFailed { .. } => c.payment.status = PaymentStatus::Failed,
            _ => {}
        }
        c.failure = Some(error.clone());
        c.state = CheckoutState::Compensating;
        c.updated_at_ms = now;
        Ok(self.step(id))
    }

    fn checkout_compensated(
        &mut self,
        now: u64,
        id: CheckoutId,
    ) -> Result<CommerceOutcome, EngineError> {
        let c = self.checkout_in(id, &[CheckoutState::Compensating])?;
        if c.payment.status == PaymentStatus::Authorized {
            c.payment.status = PaymentStatus::Voided;
        }
        c.state = CheckoutState::Failed;
        c.updated_at_ms = now;
        let (user_id, order_id, payment) = (c.user_id.clone(), c.order_id, c.payment.clone());
        let note = c.failure.as_ref().map_or_else(
            || "checkout failed".to_owned(),
            |e| format!("checkout failed: {e}"),
        );
        self.credit_settle(&user_id, id, false);
        if let Some(order) = order_id.and_then(|o| self.orders.get_mut(&o))
            && order.status.can_become(OrderStatus::Cancelled)
        {
            let mut note = note;
            note.truncate(TEXT_BYTES_MAX);
            push_status(order, OrderStatus::Cancelled, now, &note);
            if let Some(f) = order.fulfilment.as_mut() {
                f.payment = payment;
            }
        }
        self.retire_checkout(id, now);
        Ok(self.step(id))
    }

    /// A finished checkout is kept for `CHECKOUT_RETENTION_MS`, then pruned by `Tick`.
    fn retire_checkout(&mut self, id: CheckoutId, now: u64) {
        self.checkout_expiries
            .insert((now.saturating_add(CHECKOUT_RETENTION_MS), id));
    }

    fn card_use(
        &mut self,
        now: u64,
        fingerprint: u64,
        window_ms: u64,
    ) -> Result<CommerceOutcome, EngineError> {
        if !(1..=FRAUD_WINDOW_MS_MAX).contains(&window_ms) {
            return Err(invalid(
                "window_ms",
                format!("must be in 1..=FRAUD_WINDOW_MS_MAX ({FRAUD_WINDOW_MS_MAX})"),
            ));
        }
        if crate::sm::commerce::card_shard(fingerprint) != self.shard {
            return Err(EngineError::WrongShard {
                owner: crate::sm::commerce::card_shard(fingerprint),
            });
        }
        if !self.cards.contains_key(&fingerprint) && self.cards.len() >= CARDS_TRACKED_MAX {
            // Past capacity a new card counts as unseen rather than failing checkouts.
            return Ok(CommerceOutcome::CardUses { count: 1 });
        }
        let entry = self.cards.entry(fingerprint).or_insert_with(|| CardUses {
            fingerprint,
            uses_ms: Vec::new(),
        });
        if let Some(last) = entry.uses_ms.last() {
            self.card_expiries.remove(&(*last, fingerprint));
        }
        let horizon = now.saturating_sub(FRAUD_WINDOW_MS_MAX);
        entry.uses_ms.retain(|t| *t > horizon);
        push_bounded(&mut entry.uses_ms, now, CARD_RECENT_USES_MAX);
        let since = now.saturating_sub(window_ms);
        let count = entry.uses_ms.iter().filter(|t| **t > since).count() as u32;
        self.card_expiries.insert((now, fingerprint));
        Ok(CommerceOutcome::CardUses { count })
    }

    fn credit_grant(
        &mut self,
        now: u64,
        user_id: &str,
        amount: Money,
    ) -> Result<CommerceOutcome, EngineError> {
        validate::key_on("user_id", user_id, self.shard)?;
        check_money("amount", amount)?;
        if amount.amount_minor == 0 {
            return Err(invalid("amount.amount_minor", "must be positive"));
        }
        if !self.credit.contains_key(user_id) && self.credit.len() >= CREDIT_ACCOUNTS_MAX {
            return Err(limit_reached(
                "CREDIT_ACCOUNTS_MAX",
                CREDIT_ACCOUNTS_MAX as u64,
            ));
        }
        if let Some(a) = self.credit.get(user_id) {
            if a.currency != amount.currency {
                return Err(invalid(
                    "amount.currency",
                    format!("the account is in {}", a.currency.as_str()),
                ));
            }
            if a.balance_minor + amount.amount_minor > CREDIT_BALANCE_MINOR_MAX {
                return Err(invalid(
                    "amount.amount_minor",
                    format!(
                        "balance would exceed CREDIT_BALANCE_MINOR_MAX ({CREDIT_BALANCE_MINOR_MAX})"
                    ),
                ));
            }
        }
        if !self.users.contains_key(user_id) && self.users.len() >= USERS_TRACKED_MAX {
            return Err(limit_reached("USERS_TRACKED_MAX", USERS_TRACKED_MAX as u64));
        }
        self.user_mut(now, user_id);
        let account = self.credit_account_mut(user_id, amount.currency);
        account.balance_minor += amount.amount_minor;
        Ok(CommerceOutcome::Credit {
            account: account.clone(),
        })
    }

    /// Adds `amount` back to the user's store credit (a refund).
    pub(crate) fn credit_refund(&mut self, user_id: &str, amount: Money) {
        let account = self.credit_account_mut(user_id, amount.currency);
        account.balance_minor =
            (account.balance_minor + amount.amount_minor).min(CREDIT_BALANCE_MINOR_MAX);
    }

    /// The user's store-credit account, opened empty in `currency` if absent.
    fn credit_account_mut(&mut self, user_id: &str, currency: Currency) -> &mut CreditAccount {
        self.credit
            .entry(user_id.to_owned())
            .or_insert_with(|| CreditAccount {
                user_id: user_id.to_owned(),
                currency,
                balance_minor: 0,
                held_minor: 0,
                holds: Vec::new(),
            })
    }

    fn user_mut(&mut self, now: u64, user_id: &str) -> &mut UserRecord {
        self.users
            .entry(user_id.to_owned())
            .or_insert_with(|| UserRecord {
                user_id: user_id.to_owned(),
                first_seen_ms: now,
                recent_checkouts_ms: Vec::new(),
                cards: Vec::new(),
            })
    }

    /// Forgets finished checkouts past retention and cards unused for the longest window.
    pub(crate) fn prune_commerce(&mut self, now: u64) -> u32 {
        let mut pruned = 0;
        while pruned < TICK_CHECKOUT_PRUNES_MAX {
            let Some(&(at, id)) = self.checkout_expiries.first() else {
                break;
            };
            if at > now {
                break;
            }
            self.checkout_expiries.pop_first();
            self.checkouts.remove(&id);
            pruned += 1;
        }
        let horizon = now.saturating_sub(FRAUD_WINDOW_MS_MAX);
        while pruned < TICK_CHECKOUT_PRUNES_MAX {
            let Some(&(at, fp)) = self.card_expiries.first() else {
                break;
            };
            if at > horizon {
                break;
            }
            self.card_expiries.pop_first();
            self.cards.remove(&fp);
            pruned += 1;
        }
        pruned as u32
    }

    /// The earliest time a `Tick` has commerce records to prune.
    pub(crate) fn next_commerce_deadline_ms(&self) -> Option<u64> {
        let c = self.checkout_expiries.first().map(|(at, _)| *at);
        let k = self
            .card_expiries
            .first()
            .map(|(at, _)| at.saturating_add(FRAUD_WINDOW_MS_MAX));
        match (c, k) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Appends `value`, dropping the oldest entry past `max`.
fn push_bounded<T>(list: &mut Vec<T>, value: T, max: usize) {
    if list.len() >= max {
        list.remove(0);
    }
    list.push(value);
}

/// Sets an order's status and records it in the history (bounded: the oldest
/// entries after the first are dropped past `ORDER_HISTORY_MAX`).
pub(crate) fn push_status(order: &mut Order, status: OrderStatus, now: u64, note: &str) {
    order.status = status;
    if order.history.len() >= ORDER_HISTORY_MAX {
        order.history.remove(1);
    }
    order.history.push(StatusChange {
        status,
        at_ms: now,
        note: note.to_owned(),
    });
}

pub(crate) fn check_lines(field: &'static str, lines: &[ReserveLine]) -> Result<(), EngineError> {
    validate::count(field, lines.len(), ORDER_LINES_MAX, "ORDER_LINES_MAX")?;
    for (i, line) in lines.iter().enumerate() {
        validate::id(Item::field(field, i, "sku"), &line.sku)?;
        validate::qty(Item::field(field, i, "qty"), line.qty)?;
        if lines[..i].iter().any(|l| l.sku == line.sku) {
            return Err(invalid(
                Item::field(field, i, "sku").to_string(),
                "appears twice; put the units on one line",
            ));
        }
    }
    Ok(())
}

fn check_address(a: &Address) -> Result<(), EngineError> {
    for (field, value, required) in [
        ("ship_to.name", &a.name, true),
        ("ship_to.line1", &a.line1, true),
        ("ship_to.line2", &a.line2, false),
        ("ship_to.city", &a.city, true),
        ("ship_to.region", &a.region, false),
        ("ship_to.postal_code", &a.postal_code, true),
    ] {
        if required && value.trim().is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
        validate::text(
            field,
            value,
            ADDRESS_FIELD_BYTES_MAX,
            "ADDRESS_FIELD_BYTES_MAX",
        )?;
        if value.chars().any(char::is_control) {
            return Err(invalid(field, "must not contain control characters"));
        }
    }
    check_country("ship_to.country", &a.country)?;
    if let Some(lat) = a.lat_e6
        && !(-90_000_000..=90_000_000).contains(&lat)
    {
        return Err(invalid("ship_to.lat", "must be within -90..=90 degrees"));
    }
    if let Some(lon) = a.lon_e6
        && !(-180_000_000..=180_000_000).contains(&lon)
    {
        return Err(invalid("ship_to.lon", "must be within -180..=180 degrees"));
    }
    if a.lat_e6.is_some() != a.lon_e6.is_some() {
        return Err(invalid("ship_to", "lat and lon come together"));
    }
    Ok(())
}

fn check_country(field: &str, c: &str) -> Result<(), EngineError> {
    if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(invalid(
            field,
            "must be two upper-case letters (ISO 3166-1 alpha-2)",
        ));
    }
    Ok(())
}

fn check_payment_method(p: &PaymentMethod) -> Result<(), EngineError> {
    if let PaymentMethod::Card {
        token,
        last4,
        country,
        ..
    } = p
    {
        validate::id("payment.token", token)?;
        if last4.len() != 4 || !last4.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("payment.last4", "must be four digits"));
        }
        check_country("payment.country", country)?;
    }
    Ok(())
}

fn check_rules(r: &FraudRules) -> Result<(), EngineError> {
    if !(1..=FRAUD_WINDOW_MS_MAX).contains(&r.window_ms) {
        return Err(invalid(
            "rules.window_ms",
            format!("must be in 1..=FRAUD_WINDOW_MS_MAX ({FRAUD_WINDOW_MS_MAX})"),
        ));
    }
    if r.review_at > r.reject_at {
        return Err(invalid("rules.review_at", "must not exceed reject_at"));
    }
    Ok(())
}

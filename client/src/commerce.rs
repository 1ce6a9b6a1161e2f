//! Checkout, order lifecycle, returns and store credit.

use reserva_protocol::card::tokenize_card;
use reserva_protocol::engine::{
    Address, CartItem, Checkout, CheckoutId, CheckoutSource, Command, CommerceCommand,
    CommerceOutcome, CreditAccount, Money, Order, OrderAction, OrderId, Outcome, PaymentMethod,
    Request, ReserveLine, ReturnAction, ReturnId,
};
use reserva_protocol::{Op, Query, Reply, WireError};

use crate::client::{Client, new_idempotency_key};
use crate::error::ClientError;

/// How the customer pays, as a caller gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentInput {
    /// A card number; tokenized here, never sent to the server.
    Card {
        /// The card number.
        number: String,
    },
    /// The user's store credit.
    StoreCredit,
    /// Cash on delivery.
    CashOnDelivery,
}

/// A checkout to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutRequest {
    /// Who checks out.
    pub user_id: String,
    /// Lines, a reservation the user holds, or the user's cart.
    pub source: CheckoutSource,
    /// How to pay.
    pub payment: PaymentInput,
    /// Where to ship.
    pub ship_to: Address,
}

/// A placed checkout: its order is recorded durably.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutResult {
    /// The saga's record: state `order_created` when answered as soon as the
    /// order was recorded (stock deduction and capture follow on their own),
    /// or `completed` / `in_review` when a retry finds it finished.
    pub checkout: Checkout,
    /// The order it placed: `placed` (payment authorized) right after the
    /// order record, `confirmed` once settled, or `review` when held for
    /// fraud review.
    pub order: Order,
}

fn unexpected(op: &str, reply: &Reply) -> ClientError {
    ClientError::unexpected(format!("{op} answered {reply:?}"))
}

impl Client {
    async fn commerce(
        &self,
        name: &str,
        key: Option<String>,
        command: CommerceCommand,
    ) -> Result<CommerceOutcome, ClientError> {
        let request = Request {
            idempotency_key: key,
            command: Command::Commerce(Box::new(command)),
        };
        match self.execute(Op::Mutate(request)).await? {
            Reply::Outcome(Outcome::Commerce(outcome)) => Ok(*outcome),
            other => Err(unexpected(name, &other)),
        }
    }

    /// Runs a checkout until its order is recorded: stock held on every SKU's
    /// shard, fraud scored, payment authorized, order created. The stock
    /// deduction and the capture follow the answer and are guaranteed by the
    /// node (see `get_checkout` to follow them). On failure everything is
    /// compensated and the error says why (`InsufficientStock`,
    /// `PaymentDeclined`, `PaymentFailed`, `FraudRejected`,
    /// `CheckoutInterrupted`, ...).
    ///
    /// Exactly once: retries (here and by the caller with the same
    /// `idempotency_key`) attach to the same checkout. One key is generated
    /// when none is given.
    pub async fn checkout(
        &self,
        request: CheckoutRequest,
        idempotency_key: Option<String>,
    ) -> Result<CheckoutResult, ClientError> {
        let payment = match request.payment {
            PaymentInput::Card { number } => tokenize_card(&number).map_err(ClientError::Server)?,
            PaymentInput::StoreCredit => PaymentMethod::StoreCredit,
            PaymentInput::CashOnDelivery => PaymentMethod::CashOnDelivery,
        };
        let command = CommerceCommand::CheckoutBegin {
            user_id: request.user_id,
            source: request.source,
            payment,
            ship_to: request.ship_to,
        };
        let key = idempotency_key.unwrap_or_else(new_idempotency_key);
        match self.commerce("Checkout", Some(key), command).await? {
            CommerceOutcome::CheckoutStep { checkout } => {
                let order_id = checkout.order_id.ok_or_else(|| {
                    ClientError::unexpected(format!(
                        "checkout {} ended {} without an order",
                        checkout.id,
                        checkout.state.as_str()
                    ))
                })?;
                let order = self.get_order(order_id).await?.ok_or_else(|| {
                    ClientError::Server(WireError::NotFound {
                        what: "order".into(),
                        id: order_id.to_string(),
                    })
                })?;
                Ok(CheckoutResult { checkout, order })
            }
            other => Err(unexpected(
                "Checkout",
                &Reply::Outcome(Outcome::Commerce(Box::new(other))),
            )),
        }
    }

    /// A checkout's record (running, or finished within the last 24 hours).
    pub async fn get_checkout(&self, id: CheckoutId) -> Result<Option<Checkout>, ClientError> {
        match self.execute(Op::Query(Query::GetCheckout { id })).await {
            Ok(Reply::Checkout(c)) => Ok(Some(*c)),
            Ok(other) => Err(unexpected("GetCheckout", &other)),
            Err(ClientError::Server(WireError::NotFound { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Acts on an order (cancel, pack, ship, track, deliver, review decisions).
    /// Returns the order afterwards; its side effects (restock, refund) are
    /// carried out by the server before it answers.
    pub async fn order_action(
        &self,
        order_id: OrderId,
        action: OrderAction,
        idempotency_key: Option<String>,
    ) -> Result<Order, ClientError> {
        let command = CommerceCommand::Order { order_id, action };
        match self.commerce("Order", idempotency_key, command).await? {
            CommerceOutcome::Order { order, .. } => Ok(order),
            other => Err(unexpected(
                "Order",
                &Reply::Outcome(Outcome::Commerce(Box::new(other))),
            )),
        }
    }

    /// Asks to return some delivered lines. Returns the new return's id and the order.
    pub async fn request_return(
        &self,
        order_id: OrderId,
        lines: Vec<ReserveLine>,
        reason: impl Into<String>,
        idempotency_key: Option<String>,
    ) -> Result<(ReturnId, Order), ClientError> {
        let command = CommerceCommand::ReturnRequest {
            order_id,
            lines,
            reason: reason.into(),
        };
        match self
            .commerce("ReturnRequest", idempotency_key, command)
            .await?
        {
            CommerceOutcome::Order {
                order,
                return_id: Some(id),
            } => Ok((id, order)),
            other => Err(unexpected(
                "ReturnRequest",
                &Reply::Outcome(Outcome::Commerce(Box::new(other))),
            )),
        }
    }

    /// Acts on a return (approve, reject, receive, refund). Returns the order afterwards.
    pub async fn return_action(
        &self,
        return_id: ReturnId,
        action: ReturnAction,
        idempotency_key: Option<String>,
    ) -> Result<Order, ClientError> {
        let command = CommerceCommand::Return { return_id, action };
        match self.commerce("Return", idempotency_key, command).await? {
            CommerceOutcome::Order { order, .. } => Ok(order),
            other => Err(unexpected(
                "Return",
                &Reply::Outcome(Outcome::Commerce(Box::new(other))),
            )),
        }
    }

    /// The order a return belongs to.
    pub async fn get_return_order(&self, id: ReturnId) -> Result<Option<Order>, ClientError> {
        match self.execute(Op::Query(Query::GetReturn { id })).await {
            Ok(Reply::Order(o)) => Ok(Some(o)),
            Ok(other) => Err(unexpected("GetReturn", &other)),
            Err(ClientError::Server(WireError::NotFound { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Adds store credit to a user's account (admin). Returns the account.
    pub async fn grant_credit(
        &self,
        user_id: impl Into<String>,
        amount: Money,
        idempotency_key: Option<String>,
    ) -> Result<CreditAccount, ClientError> {
        let command = CommerceCommand::CreditGrant {
            user_id: user_id.into(),
            amount,
        };
        match self
            .commerce("CreditGrant", idempotency_key, command)
            .await?
        {
            CommerceOutcome::Credit { account } => Ok(account),
            other => Err(unexpected(
                "CreditGrant",
                &Reply::Outcome(Outcome::Commerce(Box::new(other))),
            )),
        }
    }

    /// A user's store-credit account (`None` if they never had credit).
    pub async fn get_credit(
        &self,
        user_id: impl Into<String>,
    ) -> Result<Option<CreditAccount>, ClientError> {
        match self
            .execute(Op::Query(Query::GetCredit {
                user_id: user_id.into(),
            }))
            .await?
        {
            Reply::Credit(account) => Ok(account),
            other => Err(unexpected("GetCredit", &other)),
        }
    }

    /// Sets the quantity of a SKU in a user's wishlist (adds it if absent).
    /// Returns the wishlist, sorted by SKU.
    pub async fn wishlist_set(
        &self,
        user_id: impl Into<String>,
        sku: impl Into<String>,
        qty: u32,
        idempotency_key: Option<String>,
    ) -> Result<Vec<CartItem>, ClientError> {
        let command = CommerceCommand::WishlistSet {
            user_id: user_id.into(),
            sku: sku.into(),
            qty,
        };
        let outcome = self
            .commerce("WishlistSet", idempotency_key, command)
            .await?;
        wishlist_items("WishlistSet", outcome)
    }

    /// Removes a SKU from a user's wishlist (no error if absent). Returns the wishlist.
    pub async fn wishlist_remove(
        &self,
        user_id: impl Into<String>,
        sku: impl Into<String>,
        idempotency_key: Option<String>,
    ) -> Result<Vec<CartItem>, ClientError> {
        let command = CommerceCommand::WishlistRemove {
            user_id: user_id.into(),
            sku: sku.into(),
        };
        let outcome = self
            .commerce("WishlistRemove", idempotency_key, command)
            .await?;
        wishlist_items("WishlistRemove", outcome)
    }

    /// A user's wishlist, sorted by SKU (empty if none).
    pub async fn get_wishlist(
        &self,
        user_id: impl Into<String>,
    ) -> Result<Vec<CartItem>, ClientError> {
        match self
            .execute(Op::Query(Query::GetWishlist {
                user_id: user_id.into(),
            }))
            .await?
        {
            Reply::Wishlist(items) => Ok(items),
            other => Err(unexpected("GetWishlist", &other)),
        }
    }
}

fn wishlist_items(name: &str, outcome: CommerceOutcome) -> Result<Vec<CartItem>, ClientError> {
    match outcome {
        CommerceOutcome::Wishlist { items } => Ok(items),
        other => Err(unexpected(
            name,
            &Reply::Outcome(Outcome::Commerce(Box::new(other))),
        )),
    }
}

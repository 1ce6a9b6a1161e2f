//! Typed shorthands for the common operations, on top of [`Client::execute`].

use std::time::Duration;

use reserva_protocol::engine::{
    Allocation, CartItem, Command, Money, Order, OrderId, OrderLine, Outcome, Request, Reservation,
    ReservationId, ReserveLine, Sku,
};
use reserva_protocol::{Op, Query, Reply, UserEvent, WireError};

use crate::client::Client;
use crate::error::ClientError;

/// Stock of one SKU in one warehouse after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockLevel {
    /// Units physically present.
    pub on_hand: u64,
    /// Units held by live reservations.
    pub reserved: u64,
}

/// A reservation that was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    /// Its id (pass to [`Client::confirm`] or [`Client::release`]).
    pub reservation_id: ReservationId,
    /// When it expires unless confirmed (server clock, Unix ms).
    pub expires_at_ms: u64,
    /// Where each line is held.
    pub allocations: Vec<Allocation>,
}

/// An order that was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderCreated {
    /// Its id.
    pub order_id: OrderId,
    /// Its total.
    pub total: Money,
}

fn unexpected(op: &str, reply: &Reply) -> ClientError {
    ClientError::unexpected(format!("{op} answered {reply:?}"))
}

impl Client {
    async fn mutate(&self, key: Option<String>, command: Command) -> Result<Outcome, ClientError> {
        let name = command_name(&command);
        let request = Request {
            idempotency_key: key,
            command,
        };
        match self.execute(Op::Mutate(request)).await? {
            Reply::Outcome(outcome) => Ok(outcome),
            other => Err(unexpected(name, &other)),
        }
    }

    /// Runs a query; `Ok(None)` when the server answers `NotFound`.
    async fn query(&self, query: Query) -> Result<Option<Reply>, ClientError> {
        match self.execute(Op::Query(query)).await {
            Ok(reply) => Ok(Some(reply)),
            Err(ClientError::Server(WireError::NotFound { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a SKU or replaces its seller, title and price. Returns whether it is new.
    pub async fn upsert_sku(
        &self,
        sku: impl Into<String>,
        seller_id: impl Into<String>,
        title: impl Into<String>,
        price: Money,
    ) -> Result<bool, ClientError> {
        let command = Command::UpsertSku {
            sku: sku.into(),
            seller_id: seller_id.into(),
            title: title.into(),
            price,
        };
        match self.mutate(None, command).await? {
            Outcome::SkuUpserted { created } => Ok(created),
            other => Err(unexpected("UpsertSku", &Reply::Outcome(other))),
        }
    }

    /// Sets the on-hand count of a SKU in a warehouse.
    pub async fn set_stock(
        &self,
        sku: impl Into<String>,
        warehouse: impl Into<String>,
        on_hand: u64,
    ) -> Result<StockLevel, ClientError> {
        let command = Command::SetStock {
            sku: sku.into(),
            warehouse: warehouse.into(),
            on_hand,
        };
        stock_level("SetStock", self.mutate(None, command).await?)
    }

    /// Adds `delta` (may be negative) to the on-hand count.
    pub async fn adjust_stock(
        &self,
        sku: impl Into<String>,
        warehouse: impl Into<String>,
        delta: i64,
    ) -> Result<StockLevel, ClientError> {
        let command = Command::AdjustStock {
            sku: sku.into(),
            warehouse: warehouse.into(),
            delta,
        };
        stock_level("AdjustStock", self.mutate(None, command).await?)
    }

    /// Holds stock for every line or none. All lines must live on one shard
    /// (see [`reserva_protocol::route`]). `ttl` defaults to the server's
    /// (15 minutes); give an `idempotency_key` to make retries across calls
    /// safe (one is generated otherwise).
    pub async fn reserve(
        &self,
        owner: impl Into<String>,
        lines: Vec<ReserveLine>,
        ttl: Option<Duration>,
        idempotency_key: Option<String>,
    ) -> Result<Reserved, ClientError> {
        let command = Command::Reserve {
            owner: owner.into(),
            lines,
            ttl_ms: ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            warehouse_preference: Vec::new(),
        };
        match self.mutate(idempotency_key, command).await? {
            Outcome::Reserved {
                reservation_id,
                expires_at_ms,
                allocations,
            } => Ok(Reserved {
                reservation_id,
                expires_at_ms,
                allocations,
            }),
            other => Err(unexpected("Reserve", &Reply::Outcome(other))),
        }
    }

    /// Gives a reservation's stock back.
    pub async fn release(&self, reservation_id: ReservationId) -> Result<(), ClientError> {
        match self
            .mutate(None, Command::Release { reservation_id })
            .await?
        {
            Outcome::Released => Ok(()),
            other => Err(unexpected("Release", &Reply::Outcome(other))),
        }
    }

    /// Turns a reservation into a deduction of stock. Returns what was deducted.
    pub async fn confirm(
        &self,
        reservation_id: ReservationId,
    ) -> Result<Vec<Allocation>, ClientError> {
        match self
            .mutate(None, Command::Confirm { reservation_id })
            .await?
        {
            Outcome::Confirmed { allocations } => Ok(allocations),
            other => Err(unexpected("Confirm", &Reply::Outcome(other))),
        }
    }

    /// Stores a new order for `user_id`.
    pub async fn create_order(
        &self,
        user_id: impl Into<String>,
        lines: Vec<OrderLine>,
        ship_to: impl Into<String>,
        idempotency_key: Option<String>,
    ) -> Result<OrderCreated, ClientError> {
        let command = Command::CreateOrder {
            user_id: user_id.into(),
            lines,
            ship_to: ship_to.into(),
        };
        match self.mutate(idempotency_key, command).await? {
            Outcome::OrderCreated { order_id, total } => Ok(OrderCreated { order_id, total }),
            other => Err(unexpected("CreateOrder", &Reply::Outcome(other))),
        }
    }

    /// Sets the quantity of a SKU in a user's cart. Returns the cart.
    pub async fn cart_set(
        &self,
        user_id: impl Into<String>,
        sku: impl Into<String>,
        qty: u32,
    ) -> Result<Vec<CartItem>, ClientError> {
        let command = Command::CartSet {
            user_id: user_id.into(),
            sku: sku.into(),
            qty,
        };
        match self.mutate(None, command).await? {
            Outcome::Cart { items } => Ok(items),
            other => Err(unexpected("CartSet", &Reply::Outcome(other))),
        }
    }

    /// A SKU and its stock; `None` if it does not exist.
    pub async fn get_sku(&self, sku: impl Into<String>) -> Result<Option<Sku>, ClientError> {
        match self.query(Query::GetSku { sku: sku.into() }).await? {
            None => Ok(None),
            Some(Reply::Sku(sku)) => Ok(Some(sku)),
            Some(other) => Err(unexpected("GetSku", &other)),
        }
    }

    /// A live reservation; `None` if there is none with this id.
    pub async fn get_reservation(
        &self,
        id: ReservationId,
    ) -> Result<Option<Reservation>, ClientError> {
        match self.query(Query::GetReservation { id }).await? {
            None => Ok(None),
            Some(Reply::Reservation(r)) => Ok(Some(r)),
            Some(other) => Err(unexpected("GetReservation", &other)),
        }
    }

    /// An order; `None` if there is none with this id.
    pub async fn get_order(&self, id: OrderId) -> Result<Option<Order>, ClientError> {
        match self.query(Query::GetOrder { id }).await? {
            None => Ok(None),
            Some(Reply::Order(o)) => Ok(Some(o)),
            Some(other) => Err(unexpected("GetOrder", &other)),
        }
    }

    /// Runs one mutation exactly as given (command and idempotency key) and
    /// returns what it did.
    pub async fn apply(&self, request: Request) -> Result<Outcome, ClientError> {
        let name = command_name(&request.command);
        match self.execute(Op::Mutate(request)).await? {
            Reply::Outcome(outcome) => Ok(outcome),
            other => Err(unexpected(name, &other)),
        }
    }

    /// A page of a user's orders, oldest first, and the id to continue
    /// after (`None` on the last page).
    pub async fn list_orders(
        &self,
        user_id: impl Into<String>,
        after: Option<OrderId>,
        limit: u32,
    ) -> Result<(Vec<Order>, Option<OrderId>), ClientError> {
        let query = Query::ListOrders {
            user_id: user_id.into(),
            after,
            limit,
        };
        match self.execute(Op::Query(query)).await? {
            Reply::Orders { orders, next } => Ok((orders, next)),
            other => Err(unexpected("ListOrders", &other)),
        }
    }

    /// A user's recent cart and order events after position `after` (`None`:
    /// only the current position), the next position, and whether events
    /// may have been lost in between.
    pub async fn user_events(
        &self,
        user_id: impl Into<String>,
        after: Option<u64>,
        limit: u32,
    ) -> Result<(Vec<UserEvent>, u64, bool), ClientError> {
        let query = Query::UserEvents {
            user_id: user_id.into(),
            after,
            limit,
        };
        match self.execute(Op::Query(query)).await? {
            Reply::UserEvents { events, next, gap } => Ok((events, next, gap)),
            other => Err(unexpected("UserEvents", &other)),
        }
    }

    /// A user's cart, sorted by SKU (empty if none).
    pub async fn get_cart(&self, user_id: impl Into<String>) -> Result<Vec<CartItem>, ClientError> {
        match self
            .query(Query::GetCart {
                user_id: user_id.into(),
            })
            .await?
        {
            None => Ok(Vec::new()),
            Some(Reply::Cart(items)) => Ok(items),
            Some(other) => Err(unexpected("GetCart", &other)),
        }
    }
}

fn stock_level(op: &str, outcome: Outcome) -> Result<StockLevel, ClientError> {
    match outcome {
        Outcome::Stock { on_hand, reserved } => Ok(StockLevel { on_hand, reserved }),
        other => Err(unexpected(op, &Reply::Outcome(other))),
    }
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::UpsertSku { .. } => "UpsertSku",
        Command::SetStock { .. } => "SetStock",
        Command::AdjustStock { .. } => "AdjustStock",
        Command::Reserve { .. } => "Reserve",
        Command::Release { .. } => "Release",
        Command::Confirm { .. } => "Confirm",
        Command::Restock { .. } => "Restock",
        Command::CreateOrder { .. } => "CreateOrder",
        Command::SetOrderStatus { .. } => "SetOrderStatus",
        Command::CartSet { .. } => "CartSet",
        Command::CartRemove { .. } => "CartRemove",
        Command::CartClear { .. } => "CartClear",
        Command::Tick { .. } => "Tick",
        Command::Commerce(_) => "Commerce",
    }
}

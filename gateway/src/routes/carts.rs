//! Carts and wishlists: per-user item lists of the same shape.

use axum::Json;
use axum::extract::State;
use reserva_protocol::engine::{Command, CommerceCommand, CommerceOutcome, Outcome, Request};

use crate::App;
use crate::caller::Caller;
use crate::extract::{IdempotencyKey, JsonBody, PathParams, check_id};
use crate::model::{CartView, SetQty};
use crate::problem::{ApiError, ApiResult, Problem};

/// Which of a user's two item lists.
#[derive(Clone, Copy)]
enum List {
    Cart,
    Wishlist,
}

impl List {
    fn set(self, user_id: String, sku: String, qty: u32) -> Command {
        match self {
            List::Cart => Command::CartSet { user_id, sku, qty },
            List::Wishlist => commerce(CommerceCommand::WishlistSet { user_id, sku, qty }),
        }
    }

    fn remove(self, user_id: String, sku: String) -> Command {
        match self {
            List::Cart => Command::CartRemove { user_id, sku },
            List::Wishlist => commerce(CommerceCommand::WishlistRemove { user_id, sku }),
        }
    }
}

fn commerce(c: CommerceCommand) -> Command {
    Command::Commerce(Box::new(c))
}

async fn read(
    app: &App,
    caller: &Caller,
    list: List,
    user_id: String,
) -> ApiResult<Json<CartView>> {
    check_id("user_id", &user_id)?;
    caller.require_user(&user_id)?;
    let items = match list {
        List::Cart => app.client().get_cart(user_id.as_str()).await?,
        List::Wishlist => app.client().get_wishlist(user_id.as_str()).await?,
    };
    Ok(Json(CartView::new(&user_id, &items)))
}

async fn set(
    app: &App,
    caller: &Caller,
    idem: &IdempotencyKey,
    list: List,
    user_id: String,
    sku: String,
    qty: u32,
) -> ApiResult<Json<CartView>> {
    check_id("user_id", &user_id)?;
    check_id("sku", &sku)?;
    caller.require_user(&user_id)?;
    if qty == 0 {
        return Err(ApiError::invalid(
            "qty must be at least 1 (DELETE removes an item)",
        ));
    }
    let command = list.set(user_id.clone(), sku, qty);
    change(app, caller, idem, &user_id, command).await
}

async fn remove(
    app: &App,
    caller: &Caller,
    idem: &IdempotencyKey,
    list: List,
    user_id: String,
    sku: String,
) -> ApiResult<Json<CartView>> {
    check_id("user_id", &user_id)?;
    check_id("sku", &sku)?;
    caller.require_user(&user_id)?;
    let command = list.remove(user_id.clone(), sku);
    change(app, caller, idem, &user_id, command).await
}

/// Applies a change to a list and answers the list afterwards.
async fn change(
    app: &App,
    caller: &Caller,
    idem: &IdempotencyKey,
    user_id: &str,
    command: Command,
) -> ApiResult<Json<CartView>> {
    let outcome = app
        .client()
        .apply(Request {
            idempotency_key: idem.wire(caller),
            command,
        })
        .await?;
    let items = match outcome {
        Outcome::Cart { items } => items,
        Outcome::Commerce(c) => match *c {
            CommerceOutcome::Wishlist { items } => items,
            other => return Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
        },
        other => return Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    };
    Ok(Json(CartView::new(user_id, &items)))
}

/// A user's cart.
#[utoipa::path(get, path = "/v1/users/{user_id}/cart", tag = "carts",
    params(("user_id" = String, Path, description = "User id")),
    responses(
        (status = 200, body = CartView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn get_cart(
    State(app): State<App>,
    caller: Caller,
    PathParams(user_id): PathParams<String>,
) -> ApiResult<Json<CartView>> {
    read(&app, &caller, List::Cart, user_id).await
}

/// Sets the quantity of a SKU in the cart (adds it if absent). Other
/// devices of the user see a `cart` event.
#[utoipa::path(put, path = "/v1/users/{user_id}/cart/items/{sku}", tag = "carts", request_body = SetQty,
    params(("user_id" = String, Path, description = "User id"), ("sku" = String, Path, description = "SKU id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key apply once")),
    responses(
        (status = 200, body = CartView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The cart is full", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn set_item(
    State(app): State<App>,
    caller: Caller,
    idem: IdempotencyKey,
    PathParams((user_id, sku)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<SetQty>,
) -> ApiResult<Json<CartView>> {
    set(&app, &caller, &idem, List::Cart, user_id, sku, body.qty).await
}

/// Removes a SKU from the cart.
#[utoipa::path(delete, path = "/v1/users/{user_id}/cart/items/{sku}", tag = "carts",
    params(("user_id" = String, Path, description = "User id"), ("sku" = String, Path, description = "SKU id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key apply once")),
    responses(
        (status = 200, body = CartView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn remove_item(
    State(app): State<App>,
    caller: Caller,
    idem: IdempotencyKey,
    PathParams((user_id, sku)): PathParams<(String, String)>,
) -> ApiResult<Json<CartView>> {
    remove(&app, &caller, &idem, List::Cart, user_id, sku).await
}

/// A user's wishlist.
#[utoipa::path(get, path = "/v1/users/{user_id}/wishlist", tag = "carts",
    params(("user_id" = String, Path, description = "User id")),
    responses(
        (status = 200, body = CartView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn get_wishlist(
    State(app): State<App>,
    caller: Caller,
    PathParams(user_id): PathParams<String>,
) -> ApiResult<Json<CartView>> {
    read(&app, &caller, List::Wishlist, user_id).await
}

/// Sets the quantity of a SKU in the wishlist (adds it if absent). Other
/// devices of the user see a `wishlist` event.
#[utoipa::path(put, path = "/v1/users/{user_id}/wishlist/items/{sku}", tag = "carts", request_body = SetQty,
    params(("user_id" = String, Path, description = "User id"), ("sku" = String, Path, description = "SKU id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key apply once")),
    responses(
        (status = 200, body = CartView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The wishlist is full", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn set_wishlist_item(
    State(app): State<App>,
    caller: Caller,
    idem: IdempotencyKey,
    PathParams((user_id, sku)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<SetQty>,
) -> ApiResult<Json<CartView>> {
    set(&app, &caller, &idem, List::Wishlist, user_id, sku, body.qty).await
}

/// Removes a SKU from the wishlist.
#[utoipa::path(delete, path = "/v1/users/{user_id}/wishlist/items/{sku}", tag = "carts",
    params(("user_id" = String, Path, description = "User id"), ("sku" = String, Path, description = "SKU id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key apply once")),
    responses(
        (status = 200, body = CartView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn remove_wishlist_item(
    State(app): State<App>,
    caller: Caller,
    idem: IdempotencyKey,
    PathParams((user_id, sku)): PathParams<(String, String)>,
) -> ApiResult<Json<CartView>> {
    remove(&app, &caller, &idem, List::Wishlist, user_id, sku).await
}

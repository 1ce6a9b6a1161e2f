//! The handlers, one module per group of routes.

pub(crate) mod carts;
pub(crate) mod commerce;
pub(crate) mod events;
pub(crate) mod ops;
pub(crate) mod orders;
pub(crate) mod reservations;
pub(crate) mod sellers;
pub(crate) mod skus;

use axum::Router;
use axum::routing::{get, post, put};

use crate::App;

/// Every route of the API.
pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/v1/skus/{sku}", get(skus::get_sku).put(skus::put_sku))
        .route("/v1/skus/{sku}/stock/{warehouse}", put(skus::set_stock))
        .route(
            "/v1/skus/{sku}/stock/{warehouse}/adjust",
            post(skus::adjust_stock),
        )
        .route("/v1/reservations", post(reservations::create))
        .route(
            "/v1/reservations/{reservation_id}",
            get(reservations::get).delete(reservations::release),
        )
        .route("/v1/users/{user_id}/cart", get(carts::get_cart))
        .route(
            "/v1/users/{user_id}/cart/items/{sku}",
            put(carts::set_item).delete(carts::remove_item),
        )
        .route("/v1/users/{user_id}/wishlist", get(carts::get_wishlist))
        .route(
            "/v1/users/{user_id}/wishlist/items/{sku}",
            put(carts::set_wishlist_item).delete(carts::remove_wishlist_item),
        )
        .route("/v1/users/{user_id}/orders", get(orders::list_user_orders))
        .route("/v1/users/{user_id}/events", get(events::user_events))
        .route("/v1/orders/{order_id}", get(orders::get_order))
        .route("/v1/orders/{order_id}/cancel", post(orders::cancel))
        .route("/v1/orders/{order_id}/pack", post(orders::pack))
        .route("/v1/orders/{order_id}/ship", post(orders::ship))
        .route("/v1/orders/{order_id}/deliver", post(orders::deliver))
        .route("/v1/orders/{order_id}/track", post(orders::track))
        .route(
            "/v1/orders/{order_id}/approve-review",
            post(orders::approve_review),
        )
        .route(
            "/v1/orders/{order_id}/reject-review",
            post(orders::reject_review),
        )
        .route(
            "/v1/orders/{order_id}/returns",
            post(commerce::request_return),
        )
        .route(
            "/v1/returns/{return_id}/approve",
            post(commerce::approve_return),
        )
        .route(
            "/v1/returns/{return_id}/reject",
            post(commerce::reject_return),
        )
        .route(
            "/v1/returns/{return_id}/receive",
            post(commerce::receive_return),
        )
        .route(
            "/v1/returns/{return_id}/refund",
            post(commerce::refund_return),
        )
        .route("/v1/checkout", post(commerce::checkout))
        .route(
            "/v1/users/{user_id}/credit",
            get(commerce::get_credit).post(commerce::grant_credit),
        )
        .route("/v1/sellers/{seller_id}/orders", get(sellers::orders))
        .route("/v1/sellers/{seller_id}/analytics", get(sellers::analytics))
        .route("/v1/sellers/{seller_id}/low-stock", get(sellers::low_stock))
}

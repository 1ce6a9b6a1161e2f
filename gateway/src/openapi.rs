//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use std::sync::OnceLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::model::*;
use crate::problem::Problem;
use crate::routes::{carts, commerce, events, ops, orders, reservations, sellers, skus};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "reserva REST API", description = "Stock, reservations, carts, wishlists, orders and seller views of reserva. See docs/rest-api.md."),
    paths(
        ops::healthz, ops::metrics, ops::openapi,
        skus::get_sku, skus::put_sku, skus::set_stock, skus::adjust_stock,
        reservations::create, reservations::get, reservations::release,
        carts::get_cart, carts::set_item, carts::remove_item,
        carts::get_wishlist, carts::set_wishlist_item, carts::remove_wishlist_item,
        events::user_events,
        orders::get_order, orders::list_user_orders, orders::cancel, orders::pack, orders::ship, orders::deliver,
        orders::track, orders::approve_review, orders::reject_review,
        commerce::checkout, commerce::request_return, commerce::approve_return, commerce::reject_return,
        commerce::receive_return, commerce::refund_return, commerce::get_credit, commerce::grant_credit,
        sellers::orders, sellers::analytics, sellers::low_stock,
    ),
    components(schemas(Problem, MoneyJson, PutSku, SkuView, WarehouseView, SetStock, AdjustStock, StockView,
        LineJson, CreateReservation, AllocationView, ReservationView, CartItemView, CartView, SetQty,
        OrderLineView, HistoryView, OrderView, OrderPage, Ship, SkuSalesView, AnalyticsView, LowStockSku,
        LowStockView, Health, UserEventView, PaymentView, TrackingView, ShipmentView, ReturnView,
        AddressJson, PaymentJson, CheckoutBody, Track, ReturnBody, ReturnCreated, CreditView, GrantCredit)),
    modifiers(&BearerAuth),
    tags((name = "inventory"), (name = "reservations"), (name = "carts"), (name = "orders"), (name = "returns"), (name = "credit"),
        (name = "sellers"), (name = "operations")),
)]
pub struct ApiDoc;

/// The document as JSON (built once).
pub fn document() -> String {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_default())
        .clone()
}

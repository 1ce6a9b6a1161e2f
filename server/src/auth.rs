//! What each role may do on the binary protocol. The auth file itself (keys,
//! roles, tiers) is parsed by [`reserva_client::auth`], shared with the gateway.

use reserva_protocol::engine::{Command, CommerceCommand, OrderAction};
use reserva_protocol::{Op, Query, WireError};

pub use reserva_client::auth::{AuthTable, KEYS_MAX, Principal, Role, TOKEN_BYTES_MAX};

/// Whether `who` may run `op`. Seller ownership of an existing SKU is checked
/// again on the owning shard (see `core::seller_owns`).
pub fn authorize(who: &Principal, op: &Op) -> Result<(), WireError> {
    let deny = |what: &str| {
        Err(WireError::Unauthorized {
            reason: format!("role may not {what}"),
        })
    };
    match who.role {
        Role::Admin => Ok(()),
        Role::Customer => {
            let me = who.user_id.as_deref().unwrap_or_default();
            let own = |user: &str| {
                if user == me {
                    Ok(())
                } else {
                    deny("act for another user")
                }
            };
            match op {
                // Ownership of ids is checked on the owning shard (`core::owns`).
                Op::Query(
                    Query::GetSku { .. }
                    | Query::GetReservation { .. }
                    | Query::GetOrder { .. }
                    | Query::GetCheckout { .. }
                    | Query::GetReturn { .. },
                ) => Ok(()),
                Op::Query(
                    Query::ListOrders { user_id, .. }
                    | Query::GetCart { user_id }
                    | Query::GetWishlist { user_id }
                    | Query::GetCredit { user_id },
                ) => own(user_id),
                Op::Query(Query::ShardStats { .. }) => deny("read shard stats"),
                Op::Query(Query::UserEvents { user_id, .. }) => own(user_id),
                Op::Query(
                    Query::SellerSkus { .. }
                    | Query::SellerOrders { .. }
                    | Query::SellerAnalytics { .. },
                ) => deny("read seller listings"),
                Op::Mutate(r) => match &r.command {
                    Command::Reserve { owner, .. } => own(owner),
                    Command::Release { .. } | Command::Confirm { .. } => Ok(()),
                    Command::CreateOrder { user_id, .. }
                    | Command::CartSet { user_id, .. }
                    | Command::CartRemove { user_id, .. }
                    | Command::CartClear { user_id } => own(user_id),
                    Command::Commerce(c) => match &**c {
                        CommerceCommand::CheckoutBegin { user_id, .. }
                        | CommerceCommand::WishlistSet { user_id, .. }
                        | CommerceCommand::WishlistRemove { user_id, .. } => own(user_id),
                        CommerceCommand::Order {
                            action: OrderAction::Cancel { .. },
                            ..
                        }
                        | CommerceCommand::ReturnRequest { .. } => Ok(()),
                        _ => deny("fulfil orders, decide returns or grant credit"),
                    },
                    _ => deny("change the catalogue, stock or order status"),
                },
            }
        }
        Role::Seller => match op {
            Op::Query(Query::ShardStats { .. }) => deny("read shard stats"),
            Op::Query(Query::SellerSkus { seller_id, .. })
                if Some(seller_id) != who.seller_id.as_ref() =>
            {
                deny("list another seller's SKUs")
            }
            // Their SKU list is not checkable on one shard; the gateway runs these as admin.
            Op::Query(
                Query::SellerOrders { .. }
                | Query::SellerAnalytics { .. }
                | Query::UserEvents { .. },
            ) => deny("read cross-shard order listings or user events"),
            Op::Query(
                Query::ListOrders { .. }
                | Query::GetCart { .. }
                | Query::GetWishlist { .. }
                | Query::GetCredit { .. },
            ) => deny("read a user's orders, cart, wishlist or credit"),
            Op::Query(_) => Ok(()),
            Op::Mutate(r) => match &r.command {
                Command::UpsertSku { seller_id, .. }
                    if Some(seller_id) == who.seller_id.as_ref() =>
                {
                    Ok(())
                }
                Command::UpsertSku { .. } => deny("create SKUs for another seller"),
                Command::SetStock { .. }
                | Command::AdjustStock { .. }
                | Command::Restock { .. } => Ok(()),
                // Fulfilment of orders that contain the seller's SKUs (checked on the shard).
                Command::Commerce(c) => match &**c {
                    CommerceCommand::Order {
                        action:
                            OrderAction::Cancel { .. }
                            | OrderAction::Pack
                            | OrderAction::Ship { .. }
                            | OrderAction::Track { .. }
                            | OrderAction::Deliver,
                        ..
                    }
                    | CommerceCommand::Return { .. } => Ok(()),
                    _ => deny("check out, change wishlists, decide fraud reviews or grant credit"),
                },
                _ => deny("reserve, order, change carts or order status"),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reserva_protocol::engine::Request;

    const FILE: &str = r#"
        [[keys]]
        token = "admin-token-1"
        role = "admin"
        [[keys]]
        token = "alice-token"
        role = "customer"
        user_id = "alice"
        [[keys]]
        token = "seller-token"
        role = "seller"
        seller_id = "acme"
    "#;

    #[test]
    fn parses_and_looks_up() {
        let t = AuthTable::parse(FILE).unwrap();
        assert_eq!(t.lookup("alice-token").unwrap().role, Role::Customer);
        assert!(t.lookup("nope").is_none());
    }

    #[test]
    fn refuses_bad_files() {
        assert!(AuthTable::parse("[[keys]]\ntoken = \"short\"\nrole = \"admin\"").is_err());
        assert!(
            AuthTable::parse("[[keys]]\ntoken = \"long-enough\"\nrole = \"customer\"").is_err()
        );
        assert!(AuthTable::parse("[[keys]]\ntoken = \"long-enough\"\nrole = \"root\"").is_err());
        let twice = "[[keys]]\ntoken = \"long-enough\"\nrole = \"admin\"\n[[keys]]\ntoken = \"long-enough\"\nrole = \"admin\"";
        assert!(AuthTable::parse(twice).is_err());
    }

    #[test]
    fn customers_act_only_for_themselves() {
        let t = AuthTable::parse(FILE).unwrap();
        let alice = t.lookup("alice-token").unwrap();
        let cart = |u: &str| Op::Mutate(Request::new(Command::CartClear { user_id: u.into() }));
        assert!(authorize(alice, &cart("alice")).is_ok());
        assert!(matches!(
            authorize(alice, &cart("bob")),
            Err(WireError::Unauthorized { .. })
        ));
        let stock = Op::Mutate(Request::new(Command::SetStock {
            sku: "s".into(),
            warehouse: "w".into(),
            on_hand: 1,
        }));
        assert!(authorize(alice, &stock).is_err());
        let seller = t.lookup("seller-token").unwrap();
        assert!(authorize(seller, &stock).is_ok());
        assert!(authorize(seller, &cart("alice")).is_err());

        let wish = |u: &str| {
            Op::Mutate(Request::new(Command::Commerce(Box::new(
                CommerceCommand::WishlistSet {
                    user_id: u.into(),
                    sku: "s".into(),
                    qty: 1,
                },
            ))))
        };
        assert!(authorize(alice, &wish("alice")).is_ok());
        assert!(authorize(alice, &wish("bob")).is_err());
        assert!(authorize(seller, &wish("alice")).is_err());
        let read = |u: &str| Op::Query(Query::GetWishlist { user_id: u.into() });
        assert!(authorize(alice, &read("alice")).is_ok());
        assert!(authorize(alice, &read("bob")).is_err());
        assert!(authorize(seller, &read("alice")).is_err());
        let cart_read = Op::Query(Query::GetCart {
            user_id: "alice".into(),
        });
        assert!(authorize(seller, &cart_read).is_err());
    }
}

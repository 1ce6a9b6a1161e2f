//! Every bound the state machine enforces, in one place.
//!
//! Units come last in names (`ttl_ms_max`). Relations between limits are
//! asserted at compile time below. Changing a limit that shrinks what the log
//! may already contain is a format change: replay re-validates every command.

/// Longest id of any kind (SKU, warehouse, user, seller, idempotency key), in bytes.
pub const ID_BYTES_MAX: usize = 64;
/// Longest SKU title, in bytes.
pub const TITLE_BYTES_MAX: usize = 256;
/// Longest free-text field on an order (shipping address, status note), in bytes.
pub const TEXT_BYTES_MAX: usize = 512;

/// Lines in one reservation request (each line may be split over warehouses).
pub const RESERVATION_LINES_MAX: usize = 64;
/// Warehouse allocations one reservation may hold after routing.
pub const RESERVATION_ALLOCATIONS_MAX: usize = 256;
/// Warehouses that may hold stock of one SKU.
pub const WAREHOUSES_PER_SKU_MAX: usize = 64;
/// Entries in a reservation's warehouse preference list.
pub const WAREHOUSE_PREFERENCE_MAX: usize = 16;
/// Units in one reservation, order or cart line.
pub const LINE_QTY_MAX: u32 = 1_000_000;
/// Units of one SKU in one warehouse. Keeps every sum of quantities far from overflow.
pub const ON_HAND_MAX: u64 = 1 << 48;
/// Price of one unit, in minor units of its currency.
pub const PRICE_MINOR_MAX: u64 = 1 << 32;

/// Shortest reservation time-to-live.
pub const TTL_MS_MIN: u64 = 1_000;
/// Longest reservation time-to-live.
pub const TTL_MS_MAX: u64 = 24 * 60 * 60 * 1_000;
/// Time-to-live of a reservation that does not name one (15 minutes).
pub const TTL_MS_DEFAULT: u64 = 15 * 60 * 1_000;

/// How long an idempotency record answers retries (24 hours).
pub const IDEMPOTENCY_RETENTION_MS: u64 = 24 * 60 * 60 * 1_000;
/// Idempotency records one shard keeps; past it, keyed requests are refused until old ones age out.
pub const IDEMPOTENCY_RECORDS_MAX: usize = 1 << 21;
/// Live reservations one shard holds.
pub const RESERVATIONS_LIVE_MAX: usize = 1 << 21;
/// SKUs one shard holds.
pub const SKUS_MAX: usize = 1 << 22;
/// Orders one shard holds.
pub const ORDERS_MAX: usize = 1 << 24;
/// Users with a non-empty cart on one shard.
pub const CARTS_MAX: usize = 1 << 22;
/// Distinct SKUs in one cart.
pub const CART_ITEMS_MAX: usize = 200;
/// Users with a non-empty wishlist on one shard.
pub const WISHLISTS_MAX: usize = 1 << 22;
/// Distinct SKUs in one wishlist.
pub const WISHLIST_ITEMS_MAX: usize = 500;
// A full list is never empty (orders.rs relies on it).
const _: () = assert!(CART_ITEMS_MAX >= 1 && WISHLIST_ITEMS_MAX >= 1);
/// Lines in one order.
pub const ORDER_LINES_MAX: usize = 64;
/// Lines of an order placed by checkout: one per SKU and shipping warehouse,
/// so a line split over warehouses counts once per warehouse.
pub const CHECKOUT_ORDER_LINES_MAX: usize = ORDER_LINES_MAX * 4;

/// Longest field of a shipping address (name, lines, city, region, postal code), in bytes.
pub const ADDRESS_FIELD_BYTES_MAX: usize = 128;
/// Checkouts one shard keeps (running ones plus finished ones for `CHECKOUT_RETENTION_MS`).
pub const CHECKOUTS_MAX: usize = 1 << 22;
/// How long a finished checkout stays readable (and answers retries): 24 hours.
pub const CHECKOUT_RETENTION_MS: u64 = 24 * 60 * 60 * 1_000;
/// Per-shard holds (one per SKU shard) one checkout may take: at most one per line.
pub const CHECKOUT_HOLDS_MAX: usize = ORDER_LINES_MAX;
/// Store-credit accounts one shard keeps.
pub const CREDIT_ACCOUNTS_MAX: usize = 1 << 22;
/// Balance of one store-credit account, in minor units.
pub const CREDIT_BALANCE_MINOR_MAX: u64 = 1 << 48;
/// Users one shard keeps fraud history for (first seen, recent checkouts, cards).
pub const USERS_TRACKED_MAX: usize = 1 << 22;
/// Recent checkout times kept per user for velocity rules.
pub const USER_RECENT_CHECKOUTS_MAX: usize = 64;
/// Distinct cards remembered per user.
pub const USER_CARDS_MAX: usize = 32;
/// Cards one shard counts uses of for velocity rules; past it, new cards count as unseen.
pub const CARDS_TRACKED_MAX: usize = 1 << 20;
/// Recent uses kept per card.
pub const CARD_RECENT_USES_MAX: usize = 64;
/// Longest window a fraud velocity rule may look back over (24 hours).
pub const FRAUD_WINDOW_MS_MAX: u64 = 24 * 60 * 60 * 1_000;
/// Fraud reasons stored on an order.
pub const FRAUD_REASONS_MAX: usize = 8;
/// Tracking events kept per shipment.
pub const TRACKING_EVENTS_MAX: usize = 64;
/// Returns one order may have.
pub const RETURNS_PER_ORDER_MAX: usize = 16;
/// Side effects (restocks, payment calls) one order may have queued over its life.
pub const ORDER_EFFECTS_MAX: usize = 512;
/// Status changes kept in an order's history.
pub const ORDER_HISTORY_MAX: usize = 64;
/// Checkouts one `Tick` may forget after their retention.
pub const TICK_CHECKOUT_PRUNES_MAX: usize = 4_096;

/// Reservations one `Tick` may expire; the rest wait for the next tick.
pub const TICK_EXPIRIES_MAX: usize = 4_096;
/// Idempotency records one `Tick` may prune.
pub const TICK_PRUNES_MAX: usize = 4_096;

/// Logical shards in a cluster, fixed forever.
pub const SHARD_COUNT: u16 = 256;
/// Sequence numbers minted by a shard fit below this bound (the shard takes the top 8 bits of an id).
pub const SEQUENCE_MAX: u64 = (1 << 56) - 1;

const _: () = assert!(TTL_MS_MIN <= TTL_MS_DEFAULT && TTL_MS_DEFAULT <= TTL_MS_MAX);
// Approving a review (one capture) and then cancelling (a restock per line
// and a refund) must fit an order's effects.
const _: () = assert!(ORDER_EFFECTS_MAX >= CHECKOUT_ORDER_LINES_MAX + 2);
const _: () = assert!(RESERVATION_ALLOCATIONS_MAX >= RESERVATION_LINES_MAX);
const _: () = assert!(WAREHOUSE_PREFERENCE_MAX <= WAREHOUSES_PER_SKU_MAX);
// Sums of a whole reservation's quantities, or of every warehouse of a SKU, cannot overflow u64.
const _: () = assert!((LINE_QTY_MAX as u64) * (RESERVATION_ALLOCATIONS_MAX as u64) < ON_HAND_MAX);
const _: () = assert!(
    (WAREHOUSES_PER_SKU_MAX as u64)
        .checked_mul(ON_HAND_MAX)
        .is_some()
);
// An order total cannot overflow u64.
const _: () = assert!(
    (PRICE_MINOR_MAX as u128) * (LINE_QTY_MAX as u128) * (ORDER_LINES_MAX as u128)
        < u64::MAX as u128
);
const _: () = assert!(SHARD_COUNT as u64 <= 256);

//! Black-box tests of `reserva-server`: a real process, real sockets, the
//! binary protocol through the Rust client (or raw bytes).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reserva_client::{Client, ClientConfig, ClientError};
use reserva_engine::ids::ReservationId;
use reserva_protocol::engine::{Currency, EngineError, Money, OrderLine, ReserveLine};
use reserva_protocol::limits::{FRAME_BYTES_MAX, PROTOCOL_VERSION};
use reserva_protocol::{Hello, Message, WireError, message_to_vec};
use reserva_tests::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn eur(amount_minor: u64) -> Money {
    Money {
        amount_minor,
        currency: Currency::parse("EUR").unwrap(),
    }
}

async fn client(server: &Server) -> Client {
    Client::connect(&server.addr, ClientConfig::new("any"))
        .await
        .expect("connect")
}

async fn stock_sku(c: &Client, sku: &str, warehouses: &[(&str, u64)]) {
    c.upsert_sku(sku, "seller-1", "A thing", eur(1_000))
        .await
        .unwrap();
    for (w, n) in warehouses {
        c.set_stock(sku, *w, *n).await.unwrap();
    }
}

fn line(sku: &str, qty: u32) -> Vec<ReserveLine> {
    vec![ReserveLine {
        sku: sku.into(),
        qty,
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_clients_race_for_the_last_ten_units() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let admin = client(&server).await;
    stock_sku(&admin, "doorbuster", &[("w1", 6), ("w2", 4)]).await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let addr = server.addr.clone();
        tasks.push(tokio::spawn(async move {
            let c = Client::connect(&addr, ClientConfig::new("any"))
                .await
                .expect("connect");
            c.reserve(format!("user-{i}"), line("doorbuster", 1), None, None)
                .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                assert_eq!(r.allocations.iter().map(|a| a.qty).sum::<u32>(), 1);
                won += 1;
            }
            Err(ClientError::Server(WireError::Engine(EngineError::InsufficientStock {
                available,
                ..
            }))) => {
                assert_eq!(available, 0);
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(won, 10, "exactly the last 10 units must be reserved");
    let sku = admin.get_sku("doorbuster").await.unwrap().unwrap();
    let reserved: u64 = sku.warehouses.iter().map(|w| w.reserved).sum();
    let on_hand: u64 = sku.warehouses.iter().map(|w| w.on_hand).sum();
    assert_eq!((reserved, on_hand), (10, 10));
    assert!(sku.warehouses.iter().all(|w| w.reserved <= w.on_hand));
}

/// What writers saw acknowledged before the crash.
#[derive(Default, Clone)]
struct Acked {
    /// Reservations acknowledged and not (attempted to be) confirmed or released, with units.
    live: HashMap<ReservationId, (String, u64)>,
    /// Confirms acknowledged: (sku, units).
    confirmed: Vec<(ReservationId, String, u64)>,
    /// Confirms sent, acknowledged or not: units per SKU.
    confirm_attempted: HashMap<String, u64>,
    /// Orders acknowledged.
    orders: Vec<reserva_engine::ids::OrderId>,
    /// Reserve idempotency keys acknowledged: (user, key, sku, qty, the id they got).
    keys: Vec<(String, String, String, u32, ReservationId)>,
    /// Last acknowledged cart quantity per (user, sku).
    carts: HashMap<(String, String), u32>,
}

async fn writer(c: Client, w: usize, acked: Arc<std::sync::Mutex<Acked>>) {
    let user = format!("crash-user-{w}");
    for i in 0u64.. {
        let sku = format!("crash-sku-{}", i % 4);
        let key = format!("w{w}-r{i}");
        let qty = 1 + (i % 3) as u32;
        let res = c
            .reserve(&user, line(&sku, qty), None, Some(key.clone()))
            .await;
        let Ok(r) = res else { break };
        acked
            .lock()
            .unwrap()
            .keys
            .push((user.clone(), key, sku.clone(), qty, r.reservation_id));
        let qty = u64::from(qty);
        acked
            .lock()
            .unwrap()
            .live
            .insert(r.reservation_id, (sku.clone(), qty));
        if i % 2 == 0 {
            {
                let mut a = acked.lock().unwrap();
                a.live.remove(&r.reservation_id);
                *a.confirm_attempted.entry(sku.clone()).or_default() += qty;
            }
            if c.confirm(r.reservation_id).await.is_err() {
                break;
            }
            acked
                .lock()
                .unwrap()
                .confirmed
                .push((r.reservation_id, sku.clone(), qty));
        }
        let unit_price = eur(250);
        let lines = vec![OrderLine {
            sku: sku.clone(),
            warehouse: "w1".into(),
            qty: 1,
            unit_price,
        }];
        let Ok(o) = c.create_order(&user, lines, "1 Main St", None).await else {
            break;
        };
        acked.lock().unwrap().orders.push(o.order_id);
        let qty = 1 + (i % 5) as u32;
        if c.cart_set(&user, &sku, qty).await.is_err() {
            break;
        }
        acked
            .lock()
            .unwrap()
            .carts
            .insert((user.clone(), sku.clone()), qty);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    const STOCK: u64 = 1_000_000;
    {
        let c = client(&server).await;
        for s in 0..4 {
            stock_sku(&c, &format!("crash-sku-{s}"), &[("w1", STOCK)]).await;
        }
    }
    let acked = Arc::new(std::sync::Mutex::new(Acked::default()));
    for round in 0..3u64 {
        let c = Client::connect(
            &server.addr,
            ClientConfig {
                retries: 0,
                ..ClientConfig::new("any")
            },
        )
        .await
        .unwrap();
        let writers: Vec<_> = (0..8)
            .map(|w| tokio::spawn(writer(c.clone(), w + 8 * round as usize, acked.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(700 + 300 * round)).await;
        server.kill9();
        for w in writers {
            w.await.unwrap();
        }
        server.restart();
        verify(&server, &acked, STOCK).await;
    }
}

async fn verify(server: &Server, acked: &std::sync::Mutex<Acked>, stock: u64) {
    let c = client(server).await;
    let a = acked.lock().unwrap().clone();
    assert!(!a.orders.is_empty(), "the load never got going");
    for (id, (sku, qty)) in &a.live {
        let r = c.get_reservation(*id).await.unwrap();
        let r = r.unwrap_or_else(|| panic!("acknowledged reservation {id} lost"));
        assert_eq!(&r.allocations[0].sku, sku);
        assert_eq!(u64::from(r.allocations[0].qty), *qty);
    }
    for (id, _, _) in &a.confirmed {
        assert!(
            c.get_reservation(*id).await.unwrap().is_none(),
            "confirmed reservation {id} is live again"
        );
    }
    for id in &a.orders {
        assert!(
            c.get_order(*id).await.unwrap().is_some(),
            "acknowledged order {id} lost"
        );
    }
    for ((user, sku), qty) in &a.carts {
        let cart = c.get_cart(user.clone()).await.unwrap();
        let item = cart.iter().find(|i| &i.sku == sku);
        // A later, unacknowledged set may have landed; the acknowledged one may not vanish.
        assert!(
            item.is_some(),
            "acknowledged cart item {user}/{sku} (qty {qty}) lost"
        );
    }
    for s in 0..4 {
        let sku = format!("crash-sku-{s}");
        let rec = c.get_sku(sku.clone()).await.unwrap().unwrap();
        let w = &rec.warehouses[0];
        assert!(w.reserved <= w.on_hand, "oversold {sku}");
        let acked_confirmed: u64 = a.confirmed.iter().filter(|c| c.1 == sku).map(|c| c.2).sum();
        let attempted = a.confirm_attempted.get(&sku).copied().unwrap_or(0);
        assert!(
            w.on_hand <= stock - acked_confirmed,
            "{sku}: acknowledged confirms lost"
        );
        assert!(
            w.on_hand >= stock - attempted,
            "{sku}: more deducted than ever confirmed"
        );
        let acked_live: u64 = a.live.values().filter(|l| l.0 == sku).map(|l| l.1).sum();
        assert!(
            w.reserved >= acked_live,
            "{sku}: acknowledged reservations lost"
        );
    }
    // Exactly-once across the crash: an acknowledged reserve retried with its key answers the same id.
    for (user, key, sku, qty, id) in a.keys.iter().rev().take(20) {
        let again = c
            .reserve(user.clone(), line(sku, *qty), None, Some(key.clone()))
            .await
            .unwrap();
        assert_eq!(again.reservation_id, *id, "retry of {key} reserved again");
        // The same key with another request is refused.
        let other = c
            .reserve(user.clone(), line(sku, *qty + 1), None, Some(key.clone()))
            .await;
        assert!(
            matches!(
                other,
                Err(ClientError::Server(WireError::Engine(
                    EngineError::IdempotencyConflict { .. }
                )))
            ),
            "{other:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_expires_after_its_ttl_also_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let c = client(&server).await;
    stock_sku(&c, "ttl-sku", &[("w1", 5)]).await;
    let r = c
        .reserve(
            "ttl-user",
            line("ttl-sku", 2),
            Some(Duration::from_secs(2)),
            None,
        )
        .await
        .unwrap();
    assert_eq!(reserved(&c, "ttl-sku").await, 2);
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert_eq!(
        reserved(&c, "ttl-sku").await,
        0,
        "not released after its TTL"
    );
    assert!(c.get_reservation(r.reservation_id).await.unwrap().is_none());

    // Across a restart: reserve, stop, wait past the TTL, start: the expiry still happens, once.
    let r = c
        .reserve(
            "ttl-user",
            line("ttl-sku", 3),
            Some(Duration::from_secs(2)),
            None,
        )
        .await
        .unwrap();
    drop(c);
    server.kill9();
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    server.restart();
    let c = client(&server).await;
    let mut waited = 0;
    while reserved(&c, "ttl-sku").await != 0 {
        assert!(
            waited < 30,
            "reservation {} not expired after restart",
            r.reservation_id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    let sku = c.get_sku("ttl-sku").await.unwrap().unwrap();
    assert_eq!(
        sku.warehouses[0].on_hand, 5,
        "expiry must not change on_hand"
    );
}

async fn reserved(c: &Client, sku: &str) -> u64 {
    c.get_sku(sku)
        .await
        .unwrap()
        .unwrap()
        .warehouses
        .iter()
        .map(|w| w.reserved)
        .sum()
}

/// Sends `bytes` on a fresh connection and returns what the server answers before closing.
async fn raw_exchange(addr: &str, bytes: &[u8], close_write: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if close_write {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "server neither answered nor closed the connection"
    );
    out
}

fn decode_error(bytes: &[u8]) -> Option<WireError> {
    let mut buf = bytes::BytesMut::from(bytes);
    let frame = reserva_protocol::FrameDecoder::new()
        .decode(&mut buf)
        .ok()??;
    match frame.message().ok()? {
        Message::Error(e) => Some(e),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_an_error_and_others_keep_being_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let good = client(&server).await;
    stock_sku(&good, "steady", &[("w1", 1_000)]).await;
    let hello = message_to_vec(
        1,
        &Message::Hello(Hello {
            protocol_version: u16::from(PROTOCOL_VERSION),
            credential: "x".into(),
            client_name: "t".into(),
        }),
    )
    .unwrap();

    // Garbage bytes: an error frame (bad magic) or a plain close, never a hang.
    let out = raw_exchange(&server.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false).await;
    if !out.is_empty() {
        assert!(
            decode_error(&out).is_some(),
            "garbage answered with something other than ERROR"
        );
    }
    // A truncated frame, then the client hangs up.
    let out = raw_exchange(&server.addr, &hello[..hello.len() - 3], true).await;
    assert!(out.is_empty() || decode_error(&out).is_some());
    // An oversized length: refused from the header alone.
    let mut big = hello.clone();
    big[16..20].copy_from_slice(&((FRAME_BYTES_MAX as u32) + 1).to_le_bytes());
    let out = raw_exchange(&server.addr, &big[..24], false).await;
    assert!(
        matches!(decode_error(&out), Some(WireError::FrameTooLarge { .. })),
        "oversized frame: {:?}",
        decode_error(&out)
    );
    // A wrong version.
    let mut v = hello.clone();
    v[2] = PROTOCOL_VERSION + 1;
    let out = raw_exchange(&server.addr, &v, false).await;
    assert!(
        matches!(
            decode_error(&out),
            Some(WireError::UnsupportedVersion { .. })
        ),
        "wrong version: {:?}",
        decode_error(&out)
    );
    // A batch before HELLO.
    let ping = message_to_vec(2, &Message::Ping).unwrap();
    let out = raw_exchange(&server.addr, &ping, false).await;
    assert!(matches!(
        decode_error(&out),
        Some(WireError::Unauthorized { .. })
    ));

    // Meanwhile, and afterwards, a well-behaved client is served.
    let abusers: Vec<_> = (0..16)
        .map(|i| {
            let addr = server.addr.clone();
            tokio::spawn(async move {
                let junk: Vec<u8> = (0..4096u32)
                    .map(|b| (b.wrapping_mul(2_654_435_761) >> (i % 24)) as u8)
                    .collect();
                raw_exchange(&addr, &junk, true).await
            })
        })
        .collect();
    for i in 0..50 {
        let r = good
            .reserve(format!("u{i}"), line("steady", 1), None, None)
            .await
            .unwrap();
        good.confirm(r.reservation_id).await.unwrap();
    }
    for a in abusers {
        a.await.unwrap();
    }
    let sku = good.get_sku("steady").await.unwrap().unwrap();
    assert_eq!(sku.warehouses[0].on_hand, 950);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let c = client(&server).await;
    stock_sku(&c, "term-sku", &[("w1", 7)]).await;
    let r = c
        .reserve("term-user", line("term-sku", 3), None, None)
        .await
        .unwrap();
    drop(c);
    let status = server.terminate();
    assert!(status.success(), "SIGTERM exit status {status}");
    server.restart();
    let c = client(&server).await;
    assert!(c.get_reservation(r.reservation_id).await.unwrap().is_some());
    assert_eq!(reserved(&c, "term-sku").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_checked_and_roles_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.toml");
    std::fs::write(
        &auth,
        "[[keys]]\ntoken = \"admin-secret-1\"\nrole = \"admin\"\n\n\
         [[keys]]\ntoken = \"alice-secret-1\"\nrole = \"customer\"\nuser_id = \"alice\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--auth-file", auth.to_str().unwrap()]);
    let wrong = Client::connect(&server.addr, ClientConfig::new("not-a-key")).await;
    assert!(
        matches!(
            &wrong,
            Err(ClientError::Handshake(
                reserva_client::HandshakeError::Refused(WireError::Unauthorized { .. })
            ))
        ),
        "a wrong key must be refused: {:?}",
        wrong.err()
    );
    let admin = Client::connect(&server.addr, ClientConfig::new("admin-secret-1"))
        .await
        .unwrap();
    stock_sku(&admin, "auth-sku", &[("w1", 5)]).await;
    let alice = Client::connect(&server.addr, ClientConfig::new("alice-secret-1"))
        .await
        .unwrap();
    alice
        .reserve("alice", line("auth-sku", 1), None, None)
        .await
        .unwrap();
    let as_bob = alice.reserve("bob", line("auth-sku", 1), None, None).await;
    assert!(
        matches!(
            as_bob,
            Err(ClientError::Server(WireError::Unauthorized { .. }))
        ),
        "{as_bob:?}"
    );
    let stock = alice.set_stock("auth-sku", "w1", 100).await;
    assert!(
        matches!(
            stock,
            Err(ClientError::Server(WireError::Unauthorized { .. }))
        ),
        "{stock:?}"
    );
    // Another user's reservation can be neither read nor confirmed.
    let bobs = admin
        .reserve("bob", line("auth-sku", 2), None, None)
        .await
        .unwrap();
    let peek = alice.get_reservation(bobs.reservation_id).await;
    assert!(
        matches!(
            peek,
            Err(ClientError::Server(WireError::Unauthorized { .. }))
        ),
        "{peek:?}"
    );
    let steal = alice.confirm(bobs.reservation_id).await;
    assert!(
        matches!(
            steal,
            Err(ClientError::Server(WireError::Unauthorized { .. }))
        ),
        "{steal:?}"
    );
    assert_eq!(reserved(&admin, "auth-sku").await, 3);
}

#[test]
fn without_api_keys_the_server_refuses_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(reserva_tests::server_binary())
        .args(["--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--auth-file"), "unclear refusal: {stderr}");
}

/// Reads frames from a raw connection until one with `request_id` arrives.
async fn read_frame(s: &mut TcpStream, buf: &mut bytes::BytesMut) -> reserva_protocol::Frame {
    let mut decoder = reserva_protocol::FrameDecoder::new();
    loop {
        if let Some(f) = decoder.decode(buf).unwrap() {
            return f;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read_buf(buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "server closed the connection");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_on_any_core_are_forwarded_to_the_owner() {
    use reserva_protocol::engine::{Command, Request};
    use reserva_protocol::{Batch, Op, Reply};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    // A client that is not shard-aware: one connection to the node's main
    // address, whichever core the kernel hands it to, ops for every shard.
    let mut s = TcpStream::connect(&server.addr).await.unwrap();
    let hello = Hello {
        protocol_version: u16::from(PROTOCOL_VERSION),
        credential: "x".into(),
        client_name: "raw".into(),
    };
    s.write_all(&message_to_vec(1, &Message::Hello(hello)).unwrap())
        .await
        .unwrap();
    let mut buf = bytes::BytesMut::new();
    assert!(matches!(
        read_frame(&mut s, &mut buf).await.message().unwrap(),
        Message::HelloOk(_)
    ));
    let price = eur(100);
    let ops: Vec<Op> = (0..64)
        .flat_map(|i| {
            let sku = format!("fwd-sku-{i}");
            [
                Op::Mutate(Request::new(Command::UpsertSku {
                    sku: sku.clone(),
                    seller_id: "s".into(),
                    title: "t".into(),
                    price,
                })),
                Op::Mutate(Request::new(Command::SetStock {
                    sku,
                    warehouse: "w1".into(),
                    on_hand: 3,
                })),
            ]
        })
        .collect();
    s.write_all(&message_to_vec(2, &Message::Batch(Batch { ops, timeout_ms: 0 })).unwrap())
        .await
        .unwrap();
    let frame = read_frame(&mut s, &mut buf).await;
    assert_eq!(frame.request_id, 2);
    let Message::Results(results) = frame.message().unwrap() else {
        panic!("expected RESULTS")
    };
    assert_eq!(results.results.len(), 128);
    assert!(
        results
            .results
            .iter()
            .all(|r| matches!(r, Ok(Reply::Outcome(_)))),
        "{:?}",
        results.results
    );
    let c = client(&server).await;
    let shards: std::collections::BTreeSet<u16> = (0..64)
        .map(|i| reserva_protocol::engine::shard_of(&format!("fwd-sku-{i}")))
        .collect();
    let cores: std::collections::BTreeSet<u16> = shards
        .iter()
        .filter_map(|s| c.shard_map().owner_of(*s))
        .collect();
    assert_eq!(
        cores.len(),
        2,
        "the SKUs must span both cores for this test to mean anything"
    );
    for i in 0..64 {
        assert_eq!(
            c.get_sku(format!("fwd-sku-{i}"))
                .await
                .unwrap()
                .unwrap()
                .warehouses[0]
                .on_hand,
            3
        );
    }
}

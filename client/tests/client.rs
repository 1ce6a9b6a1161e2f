//! The client against a fake node (tokio + the real protocol crate).

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reserva_client::protocol::engine::{Command, Request, key_on_shard, shard_of};
use reserva_client::protocol::limits::BATCH_OPS_MAX;
use reserva_client::{
    Client, ClientConfig, ClientError, HandshakeError, Op, Query, Reply, WireError,
};
use support::{Action, FakeCluster, FakeOptions, echo, echo_result, map};

fn config() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(5),
        retry_backoff: Duration::from_millis(1),
        ..ClientConfig::new("secret")
    }
}

fn get_sku(sku: &str) -> Op {
    Op::Query(Query::GetSku { sku: sku.into() })
}

fn title(reply: &Reply) -> &str {
    match reply {
        Reply::Sku(s) => &s.title,
        other => panic!("expected a SKU, got {other:?}"),
    }
}

#[tokio::test]
async fn handshake_learns_the_map_and_routes_to_the_owning_core() {
    let fake = FakeCluster::start(FakeOptions::default(), echo).await;
    let client = Client::connect(&fake.seed, config()).await.unwrap();
    let map = client.shard_map();
    assert_eq!(map, *fake.state.map.lock().unwrap());
    assert_eq!(client.server_info().node_id, "fake-node");
    for shard in 0..8u16 {
        let sku = key_on_shard("sku-", shard, 0);
        let reply = client.execute(get_sku(&sku)).await.unwrap();
        assert_eq!(title(&reply), format!("core {}", shard % 2));
        let sku = client.get_sku(&sku).await.unwrap().unwrap();
        assert_eq!(sku.title, format!("core {}", shard % 2));
    }
    // Every op arrived at its owner; 2 connections to each core (the seed's closed).
    for seen in fake.state.seen() {
        let shard = reserva_client::protocol::route(&seen.op).unwrap();
        assert_eq!(seen.core, map.owners[usize::from(shard)]);
    }
    assert_eq!(fake.state.connections_to(1), 2);
    assert_eq!(fake.state.connections_to(0), 3);
}

#[tokio::test]
async fn a_refused_credential_fails_the_handshake() {
    let fake = FakeCluster::start(FakeOptions::default(), echo).await;
    let err = Client::connect(&fake.seed, ClientConfig::new("wrong"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Handshake(HandshakeError::Refused(WireError::Unauthorized { .. }))
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn answers_out_of_order_reach_their_callers() {
    let options = FakeOptions {
        cores: 1,
        hold: 16,
        ..FakeOptions::default()
    };
    let fake = FakeCluster::start(options, echo).await;
    let cfg = ClientConfig {
        connections_per_core: 1,
        ..config()
    };
    let client = Client::connect(&fake.seed, cfg).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let sku = format!("sku-{i}");
            let got = client.get_sku(&sku).await.unwrap().unwrap();
            assert_eq!(got.sku, sku);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Many were in flight on one connection at once (all 16 unless the machine
    // stalled past the fake's quiet window), then answered newest first.
    assert!(fake.state.max_held.load(Ordering::Relaxed) >= 2);
    assert_eq!(fake.state.connections_to(0), 2);
}

#[tokio::test]
async fn callers_wait_when_a_connection_is_full() {
    let options = FakeOptions {
        cores: 1,
        hold: 8,
        ..FakeOptions::default()
    };
    let fake = FakeCluster::start(options, echo).await;
    let cfg = ClientConfig {
        connections_per_core: 1,
        in_flight_per_connection: 4,
        ..config()
    };
    let client = Client::connect(&fake.seed, cfg).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client.get_sku(format!("sku-{i}")).await.unwrap().unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The fake would hold up to 8 frames; the client never had more than 4 out
    // (normally exactly 4: pipelining did happen).
    let max_held = fake.state.max_held.load(Ordering::Relaxed);
    assert!((2..=4).contains(&max_held), "{max_held}");
}

#[tokio::test]
async fn overloaded_is_retried_after_the_hint_with_the_same_key() {
    let fake = FakeCluster::start(FakeOptions::default(), |state, seen| {
        let key = seen.op.idempotency_key().unwrap_or_default();
        if state.times_seen_key(key) == 1 {
            Action::Reply(Err(WireError::Overloaded { retry_after_ms: 50 }))
        } else {
            echo(state, seen)
        }
    })
    .await;
    let client = Client::connect(&fake.seed, config()).await.unwrap();
    let start = Instant::now();
    let level = client.set_stock("sku-1", "wh-1", 5).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(50));
    assert_eq!(level.on_hand, u64::from(shard_of("sku-1") % 2));
    let seen = fake.state.seen();
    assert_eq!(seen.len(), 2);
    let key = seen[0].op.idempotency_key().unwrap();
    assert!(key.starts_with("rc-") && key.len() == 35, "{key}");
    assert_eq!(seen[1].op.idempotency_key(), Some(key));
    assert_eq!(seen[0].op, seen[1].op);
}

#[tokio::test]
async fn a_callers_key_is_kept_and_errors_end_after_the_retries() {
    let fake = FakeCluster::start(FakeOptions::default(), |_, _| {
        Action::Reply(Err(WireError::Unavailable {
            shard: 1,
            reason: "recovering".into(),
        }))
    })
    .await;
    let cfg = ClientConfig {
        retries: 2,
        ..config()
    };
    let client = Client::connect(&fake.seed, cfg).await.unwrap();
    let op = Op::Mutate(Request::keyed(
        "my-key",
        Command::Release {
            reservation_id: reserva_client::protocol::engine::ReservationId(1),
        },
    ));
    let err = client.execute(op).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Server(WireError::Unavailable { .. })),
        "{err:?}"
    );
    assert_eq!(fake.state.times_seen_key("my-key"), 3);
}

#[tokio::test]
async fn a_dropped_connection_is_replaced_and_the_op_retried() {
    let fake = FakeCluster::start(FakeOptions::default(), |state, seen| {
        // The first connection to core 1 that gets a BATCH is cut.
        if seen.core == 1 && seen.conn == 0 {
            Action::Close
        } else {
            echo(state, seen)
        }
    })
    .await;
    let cfg = ClientConfig {
        connections_per_core: 1,
        ..config()
    };
    let client = Client::connect(&fake.seed, cfg).await.unwrap();
    let sku = key_on_shard("sku-", 1, 0);
    let level = client.adjust_stock(&sku, "wh", 3).await.unwrap();
    assert_eq!(level.on_hand, 1);
    assert_eq!(fake.state.connections_to(1), 2);
    let seen = fake.state.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].conn, 0);
    assert_eq!(seen[1].conn, 1);
    assert_eq!(seen[0].op, seen[1].op, "the retry carries the same key");
    // The replacement connection keeps working.
    client.adjust_stock(&sku, "wh", 3).await.unwrap();
    assert_eq!(fake.state.connections_to(1), 2);
}

#[tokio::test]
async fn wrong_shard_refreshes_the_map_and_goes_to_the_new_owner() {
    let fake = FakeCluster::start(FakeOptions::default(), echo).await;
    let client = Client::connect(&fake.seed, config()).await.unwrap();
    assert_eq!(client.shard_map().version, 1);
    // Every shard moves to core 1; core 0 now answers WrongShard.
    fake.state.set_map(map(2, &fake.addrs, |_| 1));
    let sku = key_on_shard("sku-", 0, 0);
    let reply = client.execute(get_sku(&sku)).await.unwrap();
    assert_eq!(title(&reply), "core 1");
    assert_eq!(client.shard_map().version, 2);
    let cores: Vec<u16> = fake.state.seen().iter().map(|s| s.core).collect();
    assert_eq!(cores, [0, 1]);
}

#[tokio::test]
async fn a_silent_server_times_out_within_the_calls_deadline() {
    let fake = FakeCluster::start(FakeOptions::default(), |_, _| Action::Ignore).await;
    let cfg = ClientConfig {
        request_timeout: Duration::from_millis(100),
        retries: 3,
        ..config()
    };
    let client = Client::connect(&fake.seed, cfg).await.unwrap();
    let start = Instant::now();
    let err = client.set_stock("sku-1", "wh", 1).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout), "{err:?}");
    // The first attempt had the whole deadline and used it: no retry
    // outlives the caller, and the server was told the deadline.
    assert!(
        start.elapsed() < Duration::from_millis(400),
        "{:?}",
        start.elapsed()
    );
    let seen = fake.state.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        (1..=100).contains(&seen[0].timeout_ms),
        "{}",
        seen[0].timeout_ms
    );
    // In a batch, the unknown outcome is a per-op Timeout.
    let results = client.batch(vec![get_sku("a")]).await.unwrap();
    assert_eq!(results, vec![Err(WireError::Timeout)]);
}

#[tokio::test]
async fn a_lost_connection_is_retried_with_the_same_key_and_what_is_left_of_the_deadline() {
    let fake = FakeCluster::start(FakeOptions::default(), |state, seen| {
        let key = seen.op.idempotency_key().unwrap_or_default();
        if state.times_seen_key(key) == 1 {
            Action::Close
        } else {
            echo(state, seen)
        }
    })
    .await;
    let client = Client::connect(&fake.seed, config()).await.unwrap();
    client.set_stock("sku-1", "wh", 1).await.unwrap();
    let seen = fake.state.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].op, seen[1].op);
    assert!(seen[0].timeout_ms <= 5_000 && seen[0].timeout_ms > 4_000);
    assert!(seen[1].timeout_ms <= seen[0].timeout_ms, "{seen:?}");
}

#[tokio::test]
async fn an_overload_hint_past_the_deadline_answers_at_once() {
    let fake = FakeCluster::start(FakeOptions::default(), |_, _| {
        Action::Reply(Err(WireError::Overloaded {
            retry_after_ms: 10_000,
        }))
    })
    .await;
    let cfg = ClientConfig {
        request_timeout: Duration::from_millis(500),
        retries: 5,
        ..config()
    };
    let client = Client::connect(&fake.seed, cfg).await.unwrap();
    let start = Instant::now();
    let err = client.set_stock("sku-1", "wh", 1).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Server(WireError::Overloaded {
                retry_after_ms: 10_000
            })
        ),
        "{err:?}"
    );
    assert!(
        start.elapsed() < Duration::from_millis(400),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(fake.state.seen().len(), 1);
}

#[tokio::test]
async fn overload_retries_stop_at_the_deadline() {
    let fake = FakeCluster::start(FakeOptions::default(), |_, _| {
        Action::Reply(Err(WireError::Overloaded { retry_after_ms: 40 }))
    })
    .await;
    let cfg = ClientConfig {
        request_timeout: Duration::from_millis(300),
        retries: 30,
        ..config()
    };
    let client = Client::connect(&fake.seed, cfg).await.unwrap();
    let start = Instant::now();
    let err = client.set_stock("sku-1", "wh", 1).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Server(WireError::Overloaded { .. })),
        "{err:?}"
    );
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_millis(300), "{elapsed:?}");
    // Every retry honoured the hint: at most 300 / 40 attempts fit.
    let seen = fake.state.seen();
    assert!((2..=8).contains(&seen.len()), "{}", seen.len());
    let key = seen[0].op.idempotency_key().unwrap();
    assert!(seen.iter().all(|s| s.op.idempotency_key() == Some(key)));
}

#[tokio::test]
async fn batches_split_by_core_and_size_and_come_back_in_order() {
    let fake = FakeCluster::start(FakeOptions::default(), echo).await;
    let client = Client::connect(&fake.seed, config()).await.unwrap();
    let n = 2 * BATCH_OPS_MAX + 500;
    let mut ops: Vec<Op> = (0..n).map(|i| get_sku(&format!("sku-{i}"))).collect();
    // An op no shard may run is refused locally, in its place.
    ops.insert(
        7,
        Op::Mutate(Request::new(Command::Tick { expire: vec![] })),
    );
    let results = client.batch(ops.clone()).await.unwrap();
    assert_eq!(results.len(), ops.len());
    for (op, result) in ops.iter().zip(&results) {
        match (op, result) {
            (Op::Query(Query::GetSku { sku }), Ok(Reply::Sku(got))) => {
                assert_eq!(&got.sku, sku);
                assert_eq!(got.title, format!("core {}", shard_of(sku) % 2));
            }
            (Op::Mutate(_), Err(WireError::InvalidRequest { .. })) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let seen = fake.state.seen();
    assert_eq!(seen.len(), n, "Tick never left the client");
    assert!(seen.iter().all(|s| s.frame_ops <= BATCH_OPS_MAX));
    assert!(seen.iter().any(|s| s.frame_ops == BATCH_OPS_MAX));
}

#[tokio::test]
async fn batch_retries_only_the_ops_that_need_it() {
    let fake = FakeCluster::start(FakeOptions::default(), |state, seen| {
        let key = seen.op.idempotency_key().unwrap_or_default();
        let first = state.times_seen_key(key) == 1;
        let flaky = matches!(&seen.op, Op::Mutate(r) if matches!(&r.command, Command::SetStock { on_hand, .. } if on_hand % 2 == 1));
        if first && flaky {
            Action::Reply(Err(WireError::Overloaded { retry_after_ms: 1 }))
        } else {
            Action::Reply(echo_result(state, seen))
        }
    })
    .await;
    let client = Client::connect(&fake.seed, config()).await.unwrap();
    let ops: Vec<Op> = (0..10u64)
        .map(|i| {
            Op::Mutate(Request::new(Command::SetStock {
                sku: format!("sku-{i}"),
                warehouse: "wh".into(),
                on_hand: i,
            }))
        })
        .collect();
    let results = client.batch(ops).await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // 10 first attempts, 5 retries of the odd ones, each with its first key.
    let seen = fake.state.seen();
    assert_eq!(seen.len(), 15);
    let keys: std::collections::HashSet<_> = seen
        .iter()
        .map(|s| s.op.idempotency_key().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 10);
}

#[tokio::test]
async fn a_client_is_shared_across_tasks() {
    let fake = Arc::new(FakeCluster::start(FakeOptions::default(), echo).await);
    let client = Client::connect(&fake.seed, config()).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let sku = format!("sku-{t}-{i}");
                assert_eq!(client.get_sku(&sku).await.unwrap().unwrap().sku, sku);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(fake.state.seen().len(), 400);
}

#[tokio::test]
async fn an_answer_too_large_to_share_a_frame_is_asked_for_alone() {
    let fake = FakeCluster::start(FakeOptions::default(), |state, seen| {
        let big = matches!(&seen.op, Op::Query(Query::GetSku { sku }) if sku.starts_with("big"));
        if big && seen.frame_ops > 1 {
            Action::Reply(Err(WireError::FrameTooLarge { max_bytes: 1 << 20 }))
        } else {
            echo(state, seen)
        }
    })
    .await;
    let client = Client::connect(&fake.seed, config()).await.unwrap();
    let ops: Vec<Op> = ["a", "big-1", "b", "big-2", "c"]
        .iter()
        .map(|s| get_sku(s))
        .collect();
    let results = client.batch(ops).await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let alone = fake
        .state
        .seen()
        .iter()
        .filter(|s| s.frame_ops == 1)
        .count();
    assert_eq!(alone, 2);
}

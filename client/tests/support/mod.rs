//! A fake reserva node for client tests: one tokio listener per core, the real
//! frame codec, and a programmable answer per operation.

#![allow(dead_code)] // each test file uses a different part of it

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use reserva_client::protocol::engine::{Currency, Money, Outcome, SHARD_COUNT, Sku};
use reserva_client::protocol::{
    CoreEndpoint, FrameDecoder, HelloOk, Message, Op, OpResult, Query, Reply, Results, ShardMap,
    WireError, encode_message, route,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fake does with one operation.
pub enum Action {
    /// Answer it.
    Reply(OpResult),
    /// Close the connection without answering the frame.
    Close,
    /// Never answer the frame.
    Ignore,
}

/// Where an operation arrived.
#[derive(Debug, Clone)]
pub struct Seen {
    pub core: u16,
    /// Connection number on that core, from 0.
    pub conn: usize,
    pub op: Op,
    /// Ops in the frame it arrived in.
    pub frame_ops: usize,
    /// The frame's deadline (`Batch::timeout_ms`).
    pub timeout_ms: u32,
}

pub type Behavior = dyn Fn(&FakeState, &Seen) -> Action + Send + Sync;

pub struct FakeState {
    pub map: Mutex<ShardMap>,
    pub seen: Mutex<Vec<Seen>>,
    pub connections: Mutex<HashMap<u16, usize>>,
    pub credential: String,
    /// Frames held before answering (in reverse order); 1 = answer at once.
    pub hold: usize,
    /// Most frames ever held unanswered on one connection.
    pub max_held: AtomicU64,
    pub behavior: Box<Behavior>,
}

impl FakeState {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    pub fn connections_to(&self, core: u16) -> usize {
        self.connections
            .lock()
            .unwrap()
            .get(&core)
            .copied()
            .unwrap_or(0)
    }
    /// How many times an op with this idempotency key arrived.
    pub fn times_seen_key(&self, key: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.op.idempotency_key() == Some(key))
            .count()
    }
    pub fn set_map(&self, map: ShardMap) {
        *self.map.lock().unwrap() = map;
    }
}

pub struct FakeCluster {
    pub seed: String,
    pub addrs: Vec<String>,
    pub state: Arc<FakeState>,
}

pub struct FakeOptions {
    pub cores: u16,
    pub hold: usize,
    pub credential: String,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            cores: 2,
            hold: 1,
            credential: "secret".into(),
        }
    }
}

/// A map giving shard `s` to core `owner(s)`.
pub fn map(version: u64, addrs: &[String], owner: impl Fn(u16) -> u16) -> ShardMap {
    ShardMap {
        version,
        owners: (0..SHARD_COUNT).map(owner).collect(),
        cores: addrs
            .iter()
            .enumerate()
            .map(|(i, a)| CoreEndpoint {
                core: i as u16,
                addr: a.clone(),
            })
            .collect(),
    }
}

/// The default answer: refuse ops of shards this core does not own
/// (`WrongShard`), else echo the op (a SKU whose title names the core).
pub fn echo(state: &FakeState, seen: &Seen) -> Action {
    Action::Reply(echo_result(state, seen))
}

pub fn echo_result(state: &FakeState, seen: &Seen) -> OpResult {
    let shard = route(&seen.op)?;
    let map = state.map.lock().unwrap().clone();
    let owner = map.owners[usize::from(shard)];
    if owner != seen.core {
        return Err(WireError::WrongShard {
            shard,
            owner_core: owner,
            map_version: map.version,
        });
    }
    Ok(match &seen.op {
        Op::Query(Query::GetSku { sku }) => Reply::Sku(Sku {
            sku: sku.clone(),
            seller_id: "seller".into(),
            title: format!("core {}", seen.core),
            price: Money {
                amount_minor: 1,
                currency: Currency(*b"EUR"),
            },
            warehouses: vec![],
        }),
        Op::Query(_) => Err(WireError::NotFound {
            what: "thing".into(),
            id: "x".into(),
        })?,
        Op::Mutate(_) => Reply::Outcome(Outcome::Stock {
            on_hand: u64::from(seen.core),
            reserved: 0,
        }),
    })
}

impl FakeCluster {
    pub async fn start(
        options: FakeOptions,
        behavior: impl Fn(&FakeState, &Seen) -> Action + Send + Sync + 'static,
    ) -> FakeCluster {
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for _ in 0..options.cores {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(l.local_addr().unwrap().to_string());
            listeners.push(l);
        }
        let n = options.cores;
        let state = Arc::new(FakeState {
            map: Mutex::new(map(1, &addrs, |s| s % n)),
            seen: Mutex::new(Vec::new()),
            connections: Mutex::new(HashMap::new()),
            credential: options.credential,
            hold: options.hold.max(1),
            max_held: AtomicU64::new(0),
            behavior: Box::new(behavior),
        });
        for (core, listener) in listeners.into_iter().enumerate() {
            let state = state.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let conn = {
                        let mut c = state.connections.lock().unwrap();
                        let e = c.entry(core as u16).or_insert(0);
                        *e += 1;
                        *e - 1
                    };
                    tokio::spawn(serve(state.clone(), core as u16, conn, stream));
                }
            });
        }
        FakeCluster {
            seed: addrs[0].clone(),
            addrs,
            state,
        }
    }
}

async fn send(stream: &mut TcpStream, request_id: u64, m: &Message) -> bool {
    let mut out = BytesMut::new();
    encode_message(request_id, m, &mut out).unwrap();
    stream.write_all(&out).await.is_ok()
}

async fn serve(state: Arc<FakeState>, core: u16, conn: usize, mut stream: TcpStream) {
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut held: Vec<(u64, Results)> = Vec::new();
    let mut greeted = false;
    loop {
        while let Some(frame) = decoder.decode(&mut buf).unwrap() {
            let id = frame.request_id;
            match frame.message().unwrap() {
                Message::Hello(h) => {
                    if h.credential != state.credential {
                        let e = WireError::Unauthorized {
                            reason: "bad credential".into(),
                        };
                        send(&mut stream, id, &Message::Error(e)).await;
                        return;
                    }
                    greeted = true;
                    let ok = HelloOk {
                        server_version: "fake".into(),
                        node_id: "fake-node".into(),
                        shard_map: state.map.lock().unwrap().clone(),
                        frame_bytes_max: reserva_client::protocol::limits::FRAME_BYTES_MAX as u32,
                        batch_ops_max: reserva_client::protocol::limits::BATCH_OPS_MAX as u32,
                    };
                    if !send(&mut stream, id, &Message::HelloOk(ok)).await {
                        return;
                    }
                }
                Message::Batch(b) => {
                    assert!(greeted, "BATCH before HELLO");
                    let frame_ops = b.ops.len();
                    let timeout_ms = b.timeout_ms;
                    let mut results = Vec::new();
                    let mut ignore = false;
                    for op in b.ops {
                        let seen = Seen {
                            core,
                            conn,
                            op,
                            frame_ops,
                            timeout_ms,
                        };
                        state.seen.lock().unwrap().push(seen.clone());
                        match (state.behavior)(&state, &seen) {
                            Action::Reply(r) => results.push(r),
                            Action::Close => return,
                            Action::Ignore => ignore = true,
                        }
                    }
                    if !ignore {
                        held.push((id, Results { results }));
                    }
                }
                Message::Ping => {
                    send(&mut stream, id, &Message::Pong).await;
                }
                other => panic!("fake got {other:?}"),
            }
            state
                .max_held
                .fetch_max(held.len() as u64, Ordering::Relaxed);
            if held.len() >= state.hold && !flush(&mut stream, &mut held).await {
                return;
            }
        }
        // Held answers go out after a quiet spell even if fewer than `hold` came.
        let read = tokio::time::timeout(Duration::from_millis(200), stream.read_buf(&mut buf));
        match read.await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => {
                if !flush(&mut stream, &mut held).await {
                    return;
                }
            }
        }
    }
}

/// Answers the held frames, newest first (so answers arrive out of order).
async fn flush(stream: &mut TcpStream, held: &mut Vec<(u64, Results)>) -> bool {
    while let Some((id, results)) = held.pop() {
        if !send(stream, id, &Message::Results(results)).await {
            return false;
        }
    }
    true
}

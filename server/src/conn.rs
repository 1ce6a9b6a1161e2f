//! One client connection: bytes -> frames -> operations -> shards -> results -> frames.
//!
//! The read side decodes frames (checked complete and bounded before any
//! payload is parsed), authenticates the `HELLO`, and dispatches each
//! `BATCH`: every operation is routed to its shard (forwarded when another
//! core owns it). A task per batch waits for the answers and queues one
//! `RESULTS` frame on the write side. At most
//! `IN_FLIGHT_BATCHES_PER_CONNECTION_MAX` batches are in flight; past that the
//! connection is simply not read, so a fast or dead client cannot grow memory.
//! A malformed frame gets an `ERROR` frame, then the connection is closed.

use std::rc::Rc;

use bytes::BytesMut;
use futures_channel::oneshot;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use reserva_protocol::limits::{BATCH_OPS_MAX, FRAME_BYTES_MAX, HEADER_BYTES, PROTOCOL_VERSION};
use reserva_protocol::{
    Batch, FrameDecoder, Hello, HelloOk, Message, OpResult, Results, WireError, encode_results,
    message_to_vec, route,
};

use crate::auth::{Principal, Role, authorize};
use crate::core::{Core, Origin, Pending, Scope};
use crate::limits::{
    HANDSHAKE_TIMEOUT, IN_FLIGHT_BATCHES_PER_CONNECTION_MAX, WRITE_QUEUE_FRAMES_MAX,
};
use crate::metrics;

/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Serves one connection until it closes or breaks the protocol.
/// `own_port`: it came in on the core's own listener, so its client is
/// shard-aware and is told `WrongShard` for a shard this core does not own
/// (after a shard move) instead of being forwarded.
pub async fn serve(core: Rc<Core>, stream: TcpStream, own_port: bool) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let (out_tx, out_rx) = local_channel::new_bounded::<Vec<u8>>(WRITE_QUEUE_FRAMES_MAX);
    let writer_task = glommio::spawn_local(async move {
        while let Some(frame) = out_rx.recv().await {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = writer.close().await;
    });
    let mut conn = Conn {
        core,
        out: Rc::new(out_tx),
        principal: None,
        own_port,
        in_flight: Rc::new(Semaphore::new(IN_FLIGHT_BATCHES_PER_CONNECTION_MAX as u64)),
    };
    let end = conn.read_loop(&mut reader).await;
    if let Err(reason) = end {
        tracing::debug!(%peer, %reason, "connection closed");
    }
    // Wait for answers in flight, then let the writer flush and close.
    let _ = conn
        .in_flight
        .acquire(IN_FLIGHT_BATCHES_PER_CONNECTION_MAX as u64)
        .await;
    drop(conn);
    writer_task.await;
}

struct Conn {
    core: Rc<Core>,
    out: Rc<LocalSender<Vec<u8>>>,
    principal: Option<Rc<Principal>>,
    own_port: bool,
    in_flight: Rc<Semaphore>,
}

impl Conn {
    async fn read_loop<R: futures_lite::AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> Result<(), String> {
        let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
        let mut decoder = FrameDecoder::new();
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let request_id = frame.request_id;
                    match frame.message() {
                        Ok(msg) => self.handle(request_id, msg).await?,
                        Err(e) => {
                            return self
                                .fail(e.request_id().unwrap_or(request_id), e.to_wire_error())
                                .await;
                        }
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    return self
                        .fail(e.request_id().unwrap_or(0), e.to_wire_error())
                        .await;
                }
            }
            if self.core.is_stopping() {
                return Err("server stopping".into());
            }
            let n = self.read_some(reader, &mut buf).await?;
            if n == 0 {
                return if buf.is_empty() {
                    Ok(())
                } else {
                    Err("peer closed mid-frame".into())
                };
            }
        }
    }

    async fn read_some<R: futures_lite::AsyncRead + Unpin>(
        &self,
        reader: &mut R,
        buf: &mut BytesMut,
    ) -> Result<usize, String> {
        // The decoder refuses a frame over the limit from its header, so the
        // buffer never holds more than one frame plus one read.
        debug_assert!(buf.len() <= HEADER_BYTES + FRAME_BYTES_MAX + READ_CHUNK_BYTES);
        let len = buf.len();
        buf.resize(len + READ_CHUNK_BYTES, 0);
        let read = reader.read(&mut buf[len..]);
        let result = if self.principal.is_none() {
            read.or(async {
                glommio::timer::sleep(HANDSHAKE_TIMEOUT).await;
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no HELLO in time",
                ))
            })
            .await
        } else {
            read.await
        };
        match result {
            Ok(n) => {
                buf.truncate(len + n);
                Ok(n)
            }
            Err(e) => {
                buf.truncate(len);
                Err(e.to_string())
            }
        }
    }

    async fn handle(&mut self, request_id: u64, msg: Message) -> Result<(), String> {
        match (msg, self.principal.is_some()) {
            (Message::Hello(hello), false) => self.hello(request_id, hello).await,
            (Message::Hello(_), true) => {
                self.fail(request_id, WireError::invalid("HELLO sent twice"))
                    .await
            }
            (_, false) => {
                self.fail(
                    request_id,
                    WireError::Unauthorized {
                        reason: "the first frame must be HELLO".into(),
                    },
                )
                .await
            }
            (Message::Batch(batch), true) => self.batch(request_id, batch).await,
            (Message::Ping, true) => self.send(request_id, &Message::Pong).await,
            (other, true) => {
                self.fail(
                    request_id,
                    WireError::invalid(format!("a client may not send {}", other.opcode().name())),
                )
                .await
            }
        }
    }

    async fn hello(&mut self, request_id: u64, hello: Hello) -> Result<(), String> {
        if hello.protocol_version != u16::from(PROTOCOL_VERSION) {
            let e = WireError::UnsupportedVersion {
                supported: u16::from(PROTOCOL_VERSION),
            };
            return self.fail(request_id, e).await;
        }
        let principal = match &self.core.config.auth {
            None => Principal::open_access(),
            Some(table) => match table.lookup(&hello.credential) {
                Some(p) => p.clone(),
                None => {
                    let e = WireError::Unauthorized {
                        reason: "unknown credential".into(),
                    };
                    return self.fail(request_id, e).await;
                }
            },
        };
        self.principal = Some(Rc::new(principal));
        let ok = HelloOk {
            server_version: env!("CARGO_PKG_VERSION").into(),
            node_id: "node-0".into(),
            shard_map: (**self.core.map.load()).clone(),
            frame_bytes_max: FRAME_BYTES_MAX as u32,
            batch_ops_max: BATCH_OPS_MAX as u32,
        };
        self.send(request_id, &Message::HelloOk(ok)).await
    }

    async fn batch(&mut self, request_id: u64, batch: Batch) -> Result<(), String> {
        // The deadline counts from now, when the frame has just been read
        // (the wait for an in-flight slot counts against it).
        let mut origin = Origin::client(std::time::Instant::now(), batch.timeout_ms);
        let permit = self
            .in_flight
            .acquire_static_permit(1)
            .await
            .map_err(|e| e.to_string())?;
        let principal = self.principal.clone().ok_or("no principal")?;
        let scope = match principal.role {
            Role::Admin => Scope::Full,
            Role::Seller => Scope::Seller(principal.seller_id.clone().unwrap_or_default()),
            Role::Customer => Scope::Customer(principal.user_id.clone().unwrap_or_default()),
        };
        // The batch is weighed once, here, when its slot is free.
        if let Some((error, why)) = self.core.refusal(&origin) {
            metrics::global().shed_n(why, batch.ops.len() as u64);
            let results = batch.ops.iter().map(|_| Err(error.clone())).collect();
            return self.answer_now(request_id, results, permit).await;
        }
        if let Origin::Client { admitted_by, .. } = &mut origin {
            *admitted_by = Some(self.core.id);
        }
        // (shard, answer) per op; shard 0 for ops refused before routing.
        let mut answers: Vec<(u16, oneshot::Receiver<OpResult>)> =
            Vec::with_capacity(batch.ops.len());
        for op in batch.ops {
            let (tx, rx) = oneshot::channel();
            let routed = authorize(&principal, &op)
                .and_then(|()| route(&op))
                .and_then(|shard| self.check_owner(shard));
            answers.push((*routed.as_ref().unwrap_or(&0), rx));
            match routed {
                Ok(shard) => self.core.submit(
                    shard,
                    Pending {
                        op,
                        scope: scope.clone(),
                        reply: Some(tx),
                        origin,
                    },
                ),
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        }
        let out = self.out.clone();
        glommio::spawn_local(async move {
            let mut results = Vec::with_capacity(answers.len());
            for (shard, rx) in answers {
                let lost = WireError::Unavailable {
                    shard,
                    reason: "server stopped before answering".into(),
                };
                results.push(rx.await.unwrap_or(Err(lost)));
            }
            // Replies that do not fit one frame are shed (answered FrameTooLarge) by the encoder.
            let mut frame = Vec::new();
            let mut results = Results { results };
            if let Err(e) = encode_results(request_id, &mut results, FRAME_BYTES_MAX, &mut frame) {
                frame = message_to_vec(request_id, &Message::Error(e.to_wire_error()))
                    .unwrap_or_default();
            }
            let _ = out.send(frame).await;
            drop(permit);
        })
        .detach();
        Ok(())
    }

    /// Answers a whole batch at once (it was refused before any op was queued).
    async fn answer_now(
        &self,
        request_id: u64,
        results: Vec<OpResult>,
        permit: glommio::sync::StaticPermit,
    ) -> Result<(), String> {
        let mut frame = Vec::new();
        let mut results = Results { results };
        if let Err(e) = encode_results(request_id, &mut results, FRAME_BYTES_MAX, &mut frame) {
            frame = message_to_vec(request_id, &Message::Error(e.to_wire_error()))
                .map_err(|e| e.to_string())?;
        }
        drop(permit);
        self.out
            .send(frame)
            .await
            .map_err(|_| "writer closed".to_string())
    }

    /// On a core's own port, a shard this core does not own is `WrongShard`:
    /// the client's map is out of date (the shard moved).
    fn check_owner(&self, shard: u16) -> Result<u16, WireError> {
        if !self.own_port {
            return Ok(shard);
        }
        let map = self.core.map.load();
        match map.owner_of(shard) {
            Some(owner) if owner != self.core.id => Err(WireError::WrongShard {
                shard,
                owner_core: owner,
                map_version: map.version,
            }),
            _ => Ok(shard),
        }
    }

    async fn send(&self, request_id: u64, msg: &Message) -> Result<(), String> {
        let frame = message_to_vec(request_id, msg).map_err(|e| e.to_string())?;
        self.out
            .send(frame)
            .await
            .map_err(|_| "writer closed".to_string())
    }

    /// Sends an `ERROR` frame; the caller then closes the connection.
    async fn fail(&self, request_id: u64, error: WireError) -> Result<(), String> {
        let reason = error.to_string();
        let _ = self.send(request_id, &Message::Error(error)).await;
        Err(reason)
    }
}

//! One connection to one core: handshake, then a writer task and a reader
//! task with many requests in flight, matched to answers by request id.
//!
//! Everything is bounded: a semaphore caps the requests in flight (and so the
//! map of pending requests), a bounded channel feeds the writer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reserva_protocol::limits::PROTOCOL_VERSION;
use reserva_protocol::{
    FrameDecoder, Hello, HelloOk, Message, OpResult, Opcode, encode_frame, encode_message,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::error::{ClientError, HandshakeError};
use crate::limits::{
    FRAME_BYTES_MIN, READ_BUFFER_BYTES, WRITE_COALESCE_BYTES_MAX, WRITE_QUEUE_FRAMES_MAX,
};

type Reply = Result<Vec<OpResult>, ClientError>;

/// What the reader and writer tasks share with callers.
struct Shared {
    state: Mutex<State>,
}

struct State {
    /// Callers waiting for an answer, by request id.
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    /// Set once the connection failed; every later call gets this error.
    closed: Option<ClientError>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a task panicked while holding it; the map
        // itself is still consistent (each operation is a single insert/remove).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the connection failed and answers every waiting caller.
    fn fail(&self, error: ClientError) {
        let waiters: Vec<_> = {
            let mut state = self.lock();
            if state.closed.is_none() {
                state.closed = Some(error.clone());
            }
            state.pending.drain().map(|(_, tx)| tx).collect()
        };
        for tx in waiters {
            let _ = tx.send(Err(error.clone()));
        }
    }

    fn take(&self, request_id: u64) -> Option<oneshot::Sender<Reply>> {
        self.lock().pending.remove(&request_id)
    }
}

/// Removes a caller's pending entry when its call ends for any reason
/// (answer, timeout, cancellation), so the map never outgrows the semaphore.
struct PendingGuard<'a> {
    shared: &'a Shared,
    request_id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.take(self.request_id);
    }
}

/// An open, authenticated connection to one core.
pub(crate) struct Connection {
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<Bytes>,
    in_flight: Semaphore,
    next_request_id: AtomicU64,
    tasks: [AbortHandle; 2],
    hello: HelloOk,
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Connection parameters.
#[derive(Debug, Clone)]
pub(crate) struct ConnectParams {
    pub credential: String,
    pub client_name: String,
    pub connect_timeout: Duration,
    pub in_flight_max: usize,
}

impl Connection {
    /// Connects to `addr`, says `HELLO`, and starts the reader and writer tasks.
    pub(crate) async fn open(
        addr: SocketAddr,
        params: &ConnectParams,
    ) -> Result<Self, ClientError> {
        let handshake = async {
            let mut stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (hello, leftover) = handshake(&mut stream, params).await?;
            Ok::<_, ClientError>((stream, hello, leftover))
        };
        let (stream, hello, leftover) = tokio::time::timeout(params.connect_timeout, handshake)
            .await
            .map_err(|_| ClientError::Handshake(HandshakeError::TimedOut))??;
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: HashMap::new(),
                closed: None,
            }),
        });
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_FRAMES_MAX);
        let writer = tokio::spawn(write_loop(write, rx, shared.clone()));
        let reader = tokio::spawn(read_loop(read, leftover, shared.clone(), tx.clone()));
        Ok(Connection {
            shared,
            outgoing: tx,
            in_flight: Semaphore::new(params.in_flight_max.max(1)),
            next_request_id: AtomicU64::new(1),
            tasks: [writer.abort_handle(), reader.abort_handle()],
            hello,
        })
    }

    /// The server's answer to this connection's `HELLO`.
    pub(crate) fn hello(&self) -> &HelloOk {
        &self.hello
    }

    /// Whether the connection failed (it is then replaced).
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.lock().closed.is_some() || self.outgoing.is_closed()
    }

    /// Sends one `BATCH` (its rkyv payload, already encoded) and waits for its
    /// `RESULTS`, at most `timeout` including the wait for an in-flight slot.
    pub(crate) async fn call(
        &self,
        payload: &[u8],
        ops: usize,
        timeout: Duration,
    ) -> Result<Vec<OpResult>, ClientError> {
        tokio::time::timeout(timeout, self.call_inner(payload, ops))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn call_inner(&self, payload: &[u8], ops: usize) -> Result<Vec<OpResult>, ClientError> {
        // Back-pressure: wait for a free slot; the semaphore is never closed.
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| ClientError::Closed)?;
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let mut frame =
            BytesMut::with_capacity(reserva_protocol::limits::HEADER_BYTES + payload.len());
        encode_frame(Opcode::Batch, request_id, payload, &mut frame)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            if let Some(e) = &state.closed {
                return Err(e.clone());
            }
            state.pending.insert(request_id, tx);
        }
        let _guard = PendingGuard {
            shared: &self.shared,
            request_id,
        };
        self.outgoing
            .send(frame.freeze())
            .await
            .map_err(|_| ClientError::Closed)?;
        let results = rx.await.map_err(|_| ClientError::Closed)??;
        if results.len() != ops {
            return Err(ClientError::unexpected(format!(
                "RESULTS for request {request_id} holds {} results for {ops} operations",
                results.len()
            )));
        }
        Ok(results)
    }
}

/// Writes `HELLO`, reads `HELLO_OK`. Returns any bytes read past it.
async fn handshake(
    stream: &mut TcpStream,
    params: &ConnectParams,
) -> Result<(HelloOk, BytesMut), ClientError> {
    let hello = Message::Hello(Hello {
        protocol_version: u16::from(PROTOCOL_VERSION),
        credential: params.credential.clone(),
        client_name: params.client_name.clone(),
    });
    let mut out = BytesMut::new();
    encode_message(0, &hello, &mut out)?;
    stream.write_all(&out).await?;
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::with_capacity(READ_BUFFER_BYTES);
    let frame = loop {
        if let Some(frame) = decoder.decode(&mut buf)? {
            break frame;
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(ClientError::Closed);
        }
    };
    match frame.message()? {
        Message::HelloOk(ok) => {
            check_hello(&ok).map_err(|reason| {
                ClientError::Handshake(HandshakeError::InvalidHello { reason })
            })?;
            Ok((ok, buf))
        }
        Message::Error(e) => Err(ClientError::Handshake(HandshakeError::Refused(e))),
        other => Err(ClientError::Handshake(HandshakeError::UnexpectedMessage {
            opcode: other.opcode().to_string(),
        })),
    }
}

/// What the client relies on in `HELLO_OK`.
fn check_hello(ok: &HelloOk) -> Result<(), String> {
    ok.shard_map.validate()?;
    if (ok.frame_bytes_max as usize) < FRAME_BYTES_MIN {
        return Err(format!(
            "frame_bytes_max {} is below {FRAME_BYTES_MIN}",
            ok.frame_bytes_max
        ));
    }
    if ok.batch_ops_max == 0 {
        return Err("batch_ops_max is 0".into());
    }
    Ok(())
}

async fn write_loop(mut write: OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>, shared: Arc<Shared>) {
    let mut buf = BytesMut::with_capacity(READ_BUFFER_BYTES);
    while let Some(first) = rx.recv().await {
        // Gather what is already queued into one write (fewer syscalls under load).
        buf.extend_from_slice(&first);
        while buf.len() < WRITE_COALESCE_BYTES_MAX {
            match rx.try_recv() {
                Ok(more) => buf.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if let Err(e) = write.write_all(&buf).await {
            tracing::debug!(error = %e, "reserva connection write failed");
            shared.fail(e.into());
            return;
        }
        buf.clear();
    }
    // Every sender is gone: the connection was dropped.
    let _ = write.shutdown().await;
}

async fn read_loop(
    mut read: OwnedReadHalf,
    mut buf: BytesMut,
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<Bytes>,
) {
    let error = read_frames(&mut read, &mut buf, &shared, &outgoing).await;
    tracing::debug!(error = %error, "reserva connection closed");
    shared.fail(error);
}

/// Dispatches frames until the connection ends; returns why it ended.
async fn read_frames(
    read: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    shared: &Shared,
    outgoing: &mpsc::Sender<Bytes>,
) -> ClientError {
    let mut decoder = FrameDecoder::new();
    loop {
        loop {
            let frame = match decoder.decode(buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return e.into(),
            };
            let request_id = frame.request_id;
            match frame.message() {
                Ok(Message::Results(r)) => match shared.take(request_id) {
                    Some(tx) => {
                        let _ = tx.send(Ok(r.results));
                    }
                    // Its caller timed out or went away: nothing to do.
                    None => tracing::trace!(request_id, "answer to a request nobody awaits"),
                },
                Ok(Message::Error(e)) => {
                    // The server closes after ERROR: the request it names gets
                    // the error, the others see the connection close.
                    if let Some(tx) = shared.take(request_id) {
                        let _ = tx.send(Err(ClientError::Server(e.clone())));
                    }
                    tracing::debug!(request_id, error = %e, "reserva server sent ERROR");
                    return ClientError::Closed;
                }
                Ok(Message::Ping) => {
                    let mut pong = BytesMut::new();
                    if encode_message(request_id, &Message::Pong, &mut pong).is_ok() {
                        // A full queue means the writer is busy anyway; a lost pong is harmless.
                        let _ = outgoing.try_send(pong.freeze());
                    }
                }
                Ok(Message::Pong) => {}
                Ok(other) => {
                    return ClientError::unexpected(format!(
                        "{} from the server on an open connection",
                        other.opcode()
                    ));
                }
                Err(e) => return e.into(),
            }
        }
        buf.reserve(
            decoder
                .bytes_wanted(buf)
                .saturating_sub(buf.len())
                .max(READ_BUFFER_BYTES / 4),
        );
        match read.read_buf(buf).await {
            Ok(0) => return ClientError::Closed,
            Ok(_) => {}
            Err(e) => return e.into(),
        }
    }
}

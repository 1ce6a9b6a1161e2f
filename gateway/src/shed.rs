//! Load shedding: the bounds on requests in flight and on open connections.
//!
//! Past either bound the gateway answers 503 `overloaded` with `Retry-After`
//! at once instead of queueing: a queue in front of busy shards only adds
//! latency, and a fast refusal lets the client back off or try another
//! gateway.
//!
//! - Requests: [`admit`] takes a permit without waiting (the `front`
//!   middleware calls it for every routed request but `GET /metrics`); the
//!   permit is held until the head of the answer is ready.
//! - Connections: [`BoundedListener`] holds a permit for every connection
//!   it hands to the HTTP server ([`BoundedStream`] gives it back when the
//!   connection closes). Past the bound it still accepts, writes a complete
//!   HTTP/1.1 503 problem document with `Connection: close`, closes, and
//!   keeps accepting, so clients get an answer instead of a connect timeout.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::limits::{
    CONNECTION_REFUSAL_DRAIN_BYTES_MAX, CONNECTION_REFUSAL_LINGER, CONNECTION_REFUSALS_MAX,
    OVERLOADED_RETRY_AFTER_S,
};
use crate::metrics::Metrics;
use crate::problem::ApiError;

/// How long to wait after an accept error that is not about one connection
/// (out of file descriptors, say) before accepting again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// A semaphore of `max` permits (at least 1, at most what tokio allows).
pub(crate) fn permits(max: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS)))
}

/// A request admitted under the in-flight bound; dropping it lets the next one in.
#[derive(Debug)]
pub(crate) struct InFlight {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics
            .requests_in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Admits a request if one of `permits` is free, without waiting; otherwise
/// counts it as shed and answers 503 `overloaded` with `Retry-After`.
pub(crate) fn admit(
    permits: &Arc<Semaphore>,
    metrics: &Arc<Metrics>,
) -> Result<InFlight, ApiError> {
    match permits.clone().try_acquire_owned() {
        Ok(permit) => {
            metrics.requests_in_flight.fetch_add(1, Ordering::Relaxed);
            Ok(InFlight {
                _permit: permit,
                metrics: metrics.clone(),
            })
        }
        Err(_) => {
            metrics.shed_requests.fetch_add(1, Ordering::Relaxed);
            Err(ApiError::overloaded(
                "the gateway has too many requests in flight; retry later",
                OVERLOADED_RETRY_AFTER_S,
            ))
        }
    }
}

/// The client address of a connection accepted by [`BoundedListener`]
/// (`ConnectInfo<PeerAddr>` in a request's extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, BoundedListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, BoundedListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// A TCP listener that serves at most `connections_max` connections at once
/// and answers the others 503 `overloaded` (see the module documentation).
#[derive(Debug)]
pub struct BoundedListener {
    inner: TcpListener,
    idle_timeout: Duration,
    permits: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl BoundedListener {
    /// Bounds `inner` to `connections_max` open connections (at least 1),
    /// each closed after `idle_timeout` without a byte read or written,
    /// counting them and the refused ones in `metrics`.
    pub fn new(
        inner: TcpListener,
        connections_max: usize,
        idle_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        BoundedListener {
            inner,
            idle_timeout,
            permits: permits(connections_max),
            refusals: permits(CONNECTION_REFUSALS_MAX),
            metrics,
        }
    }

    /// Answers a connection past the bound and closes it, off the accept loop.
    fn refuse(&self, stream: TcpStream) {
        self.metrics
            .shed_connections
            .fetch_add(1, Ordering::Relaxed);
        match self.refusals.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    let _permit = permit;
                    let _ =
                        tokio::time::timeout(CONNECTION_REFUSAL_LINGER, answer_and_close(stream))
                            .await;
                });
            }
            // Too many refusals lingering already: one write that cannot
            // block (a new socket's send buffer holds the answer), then close.
            Err(_) => {
                let _ = stream.try_write(refusal());
            }
        }
    }
}

impl Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (BoundedStream, SocketAddr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            };
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    self.metrics.connections.fetch_add(1, Ordering::Relaxed);
                    let stream = BoundedStream {
                        stream,
                        idle: Box::pin(tokio::time::sleep(self.idle_timeout)),
                        idle_for: self.idle_timeout,
                        _permit: permit,
                        metrics: self.metrics.clone(),
                    };
                    return (stream, addr);
                }
                Err(_) => self.refuse(stream),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accept error about one connection is skipped; any other (such as
/// running out of file descriptors) is logged and followed by a pause, so
/// the loop does not spin while it lasts.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "HTTP accept failed; pausing");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}

/// Writes the refusal, ends the sending side, then reads and drops what the
/// client sent until it closes: closing a socket with unread input resets
/// the connection, and the client could lose the answer.
async fn answer_and_close(mut stream: TcpStream) -> io::Result<()> {
    stream.write_all(refusal()).await?;
    stream.shutdown().await?;
    let mut buf = [0u8; 4096];
    let mut drained = 0;
    while drained < CONNECTION_REFUSAL_DRAIN_BYTES_MAX {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        drained += n;
    }
    Ok(())
}

/// The complete HTTP/1.1 answer to a connection past the bound.
pub(crate) fn refusal() -> &'static [u8] {
    static ANSWER: OnceLock<Vec<u8>> = OnceLock::new();
    ANSWER.get_or_init(|| {
        let e = ApiError::overloaded(
            "the gateway has too many open connections; retry later",
            OVERLOADED_RETRY_AFTER_S,
        );
        let body = serde_json::to_vec(&e.problem()).unwrap_or_default();
        let mut answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\n\
             Content-Type: application/problem+json\r\n\
             Content-Length: {}\r\n\
             Retry-After: {}\r\n\
             Connection: close\r\n\r\n",
            body.len(),
            e.retry_after_s.unwrap_or(OVERLOADED_RETRY_AFTER_S),
        )
        .into_bytes();
        answer.extend_from_slice(&body);
        answer
    })
}

/// A connection served under the bound; dropping it frees its place.
#[derive(Debug)]
pub struct BoundedStream {
    stream: TcpStream,
    /// Fires `idle_for` after the last byte read or written.
    idle: Pin<Box<tokio::time::Sleep>>,
    idle_for: Duration,
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl BoundedStream {
    /// The TCP stream.
    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }

    /// Bytes moved: the idle clock starts again.
    fn touch(&mut self) {
        let at = tokio::time::Instant::now() + self.idle_for;
        self.idle.as_mut().reset(at);
    }

    /// While the socket has nothing to give or take: an error once the
    /// connection has been idle too long (the server then closes it).
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.idle.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "HTTP connection idle past CONNECTION_IDLE_TIMEOUT",
            )
        })
    }
}

impl Drop for BoundedStream {
    fn drop(&mut self) {
        self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl BoundedStream {
    /// A write moved bytes (the idle clock starts again), or is waiting on
    /// a client that does not read (an error once that lasts too long).
    fn after_write(
        &mut self,
        r: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => match self.idle_expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncRead for BoundedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.idle_expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.after_write(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.after_write(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::Router;
    use axum::extract::{ConnectInfo, Request, State};
    use axum::middleware::Next;
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    /// Status, headers (names lowercased) and body of one HTTP/1.1 answer.
    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
        }
    }

    /// Reads one answer (its body sized by `Content-Length`).
    async fn read_answer(stream: &mut TcpStream) -> Answer {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .expect("answer in time")
                .expect("read");
            assert!(
                n > 0,
                "closed before a full head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).expect("text head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status: u16 = status_line[9..12].parse().expect("status code");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().expect("content-length"))
            .expect("content-length header");
        let mut body = buf[head_end + 4..].to_vec();
        while body.len() < len {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .expect("body in time")
                .expect("read");
            assert!(n > 0, "closed before the full body");
            body.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(body.len(), len, "no bytes past the body");
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn request(stream: &mut TcpStream, path: &str) -> Answer {
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        stream.write_all(req.as_bytes()).await.expect("write");
        read_answer(stream).await
    }

    fn assert_overloaded(a: &Answer) {
        assert_eq!(a.status, 503);
        assert_eq!(a.header("retry-after"), Some("1"));
        assert_eq!(a.header("content-type"), Some("application/problem+json"));
        let p = a.json();
        assert_eq!(p["code"], "overloaded", "{p}");
        assert_eq!(p["status"], 503, "{p}");
    }

    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn connections_past_the_bound_get_a_complete_503_and_accepting_goes_on() {
        let metrics = Arc::new(Metrics::default());
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let listener = BoundedListener::new(
            tcp,
            1,
            crate::limits::CONNECTION_IDLE_TIMEOUT,
            metrics.clone(),
        );
        let router = Router::new().route(
            "/",
            get(|ConnectInfo(peer): ConnectInfo<PeerAddr>| async move { peer.0.ip().to_string() }),
        );
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<PeerAddr>(),
            )
            .await
        });

        // The one connection allowed is served, and kept open.
        let mut first = TcpStream::connect(addr).await.expect("connect");
        let a = request(&mut first, "/").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body, b"127.0.0.1", "the client address reaches handlers");
        assert_eq!(metrics.connections.load(Ordering::Relaxed), 1);

        // The next one is answered 503 at once and closed, request or not.
        for send_request in [true, false] {
            let mut second = TcpStream::connect(addr).await.expect("connect");
            if send_request {
                second
                    .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
                    .await
                    .expect("write");
            }
            let a = read_answer(&mut second).await;
            assert_overloaded(&a);
            assert_eq!(a.header("connection"), Some("close"));
            let mut rest = [0u8; 16];
            let n = tokio::time::timeout(WAIT, second.read(&mut rest))
                .await
                .expect("closed in time")
                .expect("read");
            assert_eq!(n, 0, "the refused connection is closed");
        }
        assert_eq!(metrics.shed_connections.load(Ordering::Relaxed), 2);
        assert!(
            metrics
                .render()
                .contains("reserva_gateway_shed_total{reason=\"connections\"} 2\n"),
            "{}",
            metrics.render()
        );

        // The first still works; once it closes, its place is free again.
        assert_eq!(request(&mut first, "/").await.status, 200);
        drop(first);
        wait_for("the connection to close", || {
            metrics.connections.load(Ordering::Relaxed) == 0
        })
        .await;
        let mut third = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(request(&mut third, "/").await.status, 200);
        server.abort();
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_and_frees_its_place() {
        let metrics = Arc::new(Metrics::default());
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        // Well above the gaps below, so a slow machine cannot close the busy
        // connection by accident.
        let idle = Duration::from_secs(1);
        let listener = BoundedListener::new(tcp, 1, idle, metrics.clone());
        let router = Router::new().route("/", get(|| async { "ok" }));
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<PeerAddr>(),
            )
            .await
        });

        // A connection used more often than the timeout stays open.
        let mut busy = TcpStream::connect(addr).await.expect("connect");
        let mut last = Instant::now();
        for _ in 0..6 {
            assert_eq!(request(&mut busy, "/").await.status, 200);
            last = Instant::now();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Left idle, it is closed, and its place is free again.
        let mut rest = [0u8; 16];
        let n = tokio::time::timeout(WAIT, busy.read(&mut rest))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "the idle connection is closed");
        assert!(
            last.elapsed() >= Duration::from_millis(900),
            "closed {:?} after its last answer",
            last.elapsed()
        );
        wait_for("the connection to be counted out", || {
            metrics.connections.load(Ordering::Relaxed) == 0
        })
        .await;
        let mut next = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(request(&mut next, "/").await.status, 200);
        server.abort();
    }

    type Gate = (Arc<Semaphore>, Arc<Metrics>);

    /// What `front` does with the in-flight bound, on a tiny router.
    async fn bounded(State((permits, metrics)): State<Gate>, req: Request, next: Next) -> Response {
        match admit(&permits, &metrics) {
            Ok(_in_flight) => next.run(req).await,
            Err(e) => e.into_response(),
        }
    }

    #[tokio::test]
    async fn requests_past_the_in_flight_bound_are_shed_at_once() {
        let metrics = Arc::new(Metrics::default());
        let release = Arc::new(Semaphore::new(0));
        let slow = {
            let release = release.clone();
            move || async move {
                let _ = release.acquire().await;
                "slow"
            }
        };
        let gate: Gate = (permits(2), metrics.clone());
        let router = Router::new()
            .route("/slow", get(slow))
            .route("/fast", get(|| async { "fast" }))
            .route_layer(axum::middleware::from_fn_with_state(gate, bounded));
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let server = tokio::spawn(async move { axum::serve(tcp, router).await });

        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
                .await
                .expect("write");
            held.push(s);
        }
        wait_for("two requests in flight", || {
            metrics.requests_in_flight.load(Ordering::Relaxed) == 2
        })
        .await;

        let mut other = TcpStream::connect(addr).await.expect("connect");
        let started = Instant::now();
        let a = request(&mut other, "/fast").await;
        assert_overloaded(&a);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "shed without waiting"
        );
        assert!(
            a.json()["detail"]
                .as_str()
                .is_some_and(|d| d.contains("in flight")),
            "{}",
            a.json()
        );
        assert_eq!(metrics.shed_requests.load(Ordering::Relaxed), 1);
        assert!(
            metrics
                .render()
                .contains("reserva_gateway_shed_total{reason=\"requests\"} 1\n"),
            "{}",
            metrics.render()
        );

        // Once the slow ones finish, requests are admitted again (on the
        // same connection: a shed request does not close it).
        release.add_permits(2);
        for s in &mut held {
            let a = read_answer(s).await;
            assert_eq!((a.status, a.body.as_slice()), (200, &b"slow"[..]));
        }
        wait_for("nothing in flight", || {
            metrics.requests_in_flight.load(Ordering::Relaxed) == 0
        })
        .await;
        let a = request(&mut other, "/fast").await;
        assert_eq!((a.status, a.body.as_slice()), (200, &b"fast"[..]));
        assert_eq!(metrics.shed_requests.load(Ordering::Relaxed), 1);
        server.abort();
    }

    #[test]
    fn the_refusal_is_one_well_formed_answer() {
        let text = String::from_utf8(refusal().to_vec()).expect("text");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\nContent-Length: {}", body.len())),
            "{head}"
        );
        let p: serde_json::Value = serde_json::from_str(body).expect("json body");
        assert_eq!(p["code"], "overloaded");
        assert_eq!(p["type"], "urn:reserva:problem:overloaded");
    }
}

//! The REST gateway's load shedding, end to end: a real `reserva-server`
//! node, and a gateway served in-process in front of it with low bounds on
//! requests in flight and open connections (the defaults, 4,096 and 10,000,
//! are too high to reach in a test). Real sockets, raw HTTP/1.1, so the
//! test decides exactly which connection carries which request.

use std::time::{Duration, Instant};

use reserva_client::{Client, ClientConfig};
use reserva_gateway::{App, GatewayConfig};
use reserva_tests::Server;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);

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
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
        .await
        .expect("an answer in time")
        .expect("read");
    buf.extend_from_slice(&chunk[..n]);
    n
}

/// Reads one answer, its body sized by `Content-Length`.
async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = read_some(stream, &mut buf).await;
        assert!(
            n > 0,
            "closed mid-head: {:?}",
            String::from_utf8_lossy(&buf)
        );
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("text head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
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
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    let mut body = buf.split_off(head_end + 4);
    while body.len() < len {
        let n = read_some(stream, &mut body).await;
        assert!(n > 0, "closed mid-body");
    }
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(stream: &mut TcpStream, path: &str) -> Answer {
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    read_answer(stream).await
}

fn assert_overloaded(a: &Answer, what: &str) {
    assert_eq!(a.status, 503, "{what}: {}", a.text());
    assert_eq!(a.header("retry-after"), Some("1"), "{what}");
    assert_eq!(
        a.header("content-type"),
        Some("application/problem+json"),
        "{what}"
    );
    assert_eq!(a.json()["code"], "overloaded", "{what}: {}", a.text());
}

/// The value of an unlabelled or fully labelled series in `/metrics`.
fn metric(text: &str, series: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_sheds_requests_and_connections_past_its_bounds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &["--http", "off"]);
    let client = Client::connect(&server.addr, ClientConfig::new("reserva-gateway"))
        .await
        .expect("connect to the node");
    let app = App::new(
        client,
        GatewayConfig {
            requests_in_flight_max: 1,
            connections_max: 3,
            ..GatewayConfig::default()
        },
    );
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let gateway = tokio::spawn(reserva_gateway::serve(tcp, app));

    // Connection 1: operations and the requests that get shed.
    let mut ops = TcpStream::connect(addr).await.expect("connect");
    let a = get(&mut ops, "/v1/skus/nope").await;
    assert_eq!(
        (a.status, a.json()["code"].clone()),
        (404, "not_found".into())
    );

    // Connection 2 holds the one request allowed in flight: its handler
    // waits for a body that comes only later.
    let body = br#"{"user_id":"alice","lines":[{"sku":"nope","qty":1}]}"#;
    let (first, rest) = body.split_at(10);
    let mut held = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/reservations HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    held.write_all(head.as_bytes()).await.expect("write");
    held.write_all(first).await.expect("write");
    let deadline = Instant::now() + WAIT;
    loop {
        let m = get(&mut ops, "/metrics").await;
        assert_eq!(m.status, 200, "/metrics is never shed");
        if metric(&m.text(), "reserva_gateway_requests_in_flight") == Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "the request never got in flight");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Past the in-flight bound: 503 at once, and the connection stays usable.
    let started = Instant::now();
    let a = get(&mut ops, "/v1/skus/nope").await;
    assert_overloaded(&a, "a request past the in-flight bound");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shed, not queued"
    );
    let m = get(&mut ops, "/metrics").await.text();
    assert_eq!(
        metric(&m, "reserva_gateway_shed_total{reason=\"requests\"}"),
        Some(1),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "reserva_gateway_requests_total{route=\"/v1/skus/{sku}\",method=\"GET\",status=\"503\"}"
        ),
        Some(1),
        "{m}"
    );

    // Connection 3 is the last one allowed; connection 4 is answered 503
    // and closed, whether it sent a request or not.
    let mut third = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(get(&mut third, "/metrics").await.status, 200);
    for send_request in [false, true] {
        let mut fourth = TcpStream::connect(addr).await.expect("connect");
        if send_request {
            fourth
                .write_all(b"GET /v1/skus/nope HTTP/1.1\r\nHost: test\r\n\r\n")
                .await
                .expect("write");
        }
        let a = read_answer(&mut fourth).await;
        assert_overloaded(&a, "a connection past the bound");
        assert_eq!(a.header("connection"), Some("close"));
        let mut after = Vec::new();
        assert_eq!(read_some(&mut fourth, &mut after).await, 0, "then closed");
    }
    let m = get(&mut ops, "/metrics").await.text();
    assert_eq!(
        metric(&m, "reserva_gateway_shed_total{reason=\"connections\"}"),
        Some(2),
        "{m}"
    );
    assert_eq!(metric(&m, "reserva_gateway_connections"), Some(3), "{m}");

    // The held request completes normally; then requests are admitted again.
    held.write_all(rest).await.expect("write");
    let a = read_answer(&mut held).await;
    assert_ne!(a.status, 503, "{}", a.text());
    assert!(
        a.status >= 400 && a.status < 500,
        "unknown SKU: {}",
        a.text()
    );
    let a = get(&mut ops, "/v1/skus/nope").await;
    assert_eq!(a.status, 404, "{}", a.text());

    // Once a connection closes, a new one is served.
    drop(third);
    let deadline = Instant::now() + WAIT;
    loop {
        let m = get(&mut ops, "/metrics").await.text();
        if metric(&m, "reserva_gateway_connections") == Some(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed connection was not freed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut again = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(get(&mut again, "/v1/skus/nope").await.status, 404);

    gateway.abort();
    drop(server);
}

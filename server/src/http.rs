//! The REST gateway run by the node (`--http ADDR`) or on its own
//! (`reserva-server gateway`). The gateway lives on a tokio runtime of its
//! own threads, beside the glommio executors, and reaches the shards through
//! `reserva_client` like any other client.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use reserva_client::auth::AuthTable;
use reserva_client::{Client, ClientConfig};
use reserva_gateway::{App, GatewayConfig, RateLimits};

/// How long the node waits for its embedded gateway to connect before it
/// reports the start-up as failed.
pub const EMBEDDED_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait between two connection attempts of a standalone gateway.
pub const STANDALONE_RETRY_MAX: Duration = Duration::from_secs(5);

/// How to run a gateway.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Where to serve HTTP.
    pub addr: SocketAddr,
    /// Requests per minute per tier.
    pub rate_limits: RateLimits,
    /// Tokio worker threads.
    pub threads: usize,
}

/// Binds the HTTP listener, refusing a non-loopback address without API keys.
pub fn bind(addr: SocketAddr, auth: Option<&AuthTable>) -> anyhow::Result<std::net::TcpListener> {
    if auth.is_none() && !addr.ip().is_loopback() {
        bail!(
            "refusing to serve HTTP on {addr} without --auth-file: without API keys the gateway serves loopback only"
        );
    }
    let l = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot bind HTTP address {addr}"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The credential the gateway connects to the node with: an admin key of
/// the auth file (the gateway checks every caller itself).
pub fn gateway_credential(
    auth: Option<&AuthTable>,
    explicit: Option<String>,
) -> anyhow::Result<String> {
    if let Some(t) = explicit {
        return Ok(t);
    }
    match auth {
        None => Ok("reserva-gateway".into()),
        Some(a) => a.admin_token().map(str::to_owned).context(
            "the HTTP gateway connects to the node with an admin key: add one to the auth file, \
             or give --server-token, or use --http off",
        ),
    }
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("http")
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")
}

/// The gateway's configuration; an embedded gateway appends the node's own
/// metrics (`crate::metrics::render`) to its `/metrics`.
fn config(auth: Option<AuthTable>, opts: &HttpOptions, embedded: bool) -> GatewayConfig {
    let metrics_hook: Option<reserva_gateway::MetricsHook> = if embedded {
        Some(Arc::new(crate::metrics::render))
    } else {
        None
    };
    GatewayConfig {
        auth: auth.map(Arc::new),
        rate_limits: opts.rate_limits,
        metrics_hook,
        ..GatewayConfig::default()
    }
}

/// Where a client on this host reaches a node listening on `listen`.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, listen.port()))
        }
        ip if ip.is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, listen.port())),
        _ => listen,
    }
}

/// The node's ready hook for an embedded gateway: once the shards are
/// recovered, starts the runtime, connects to the node, starts serving, and
/// returns the ready line's extra field (` http=ADDR`).
pub fn embedded(
    listener: std::net::TcpListener,
    auth: Option<AuthTable>,
    opts: HttpOptions,
) -> anyhow::Result<crate::node::ReadyHook> {
    let credential = gateway_credential(auth.as_ref(), None)?;
    let bound = listener.local_addr()?;
    Ok(Box::new(move |listen: SocketAddr| {
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let rt = runtime(opts.threads).map_err(|e| format!("{e:#}"))?;
        let cfg = config(auth, &opts, true);
        std::thread::Builder::new()
            .name("http-gateway".into())
            .spawn(move || {
                rt.block_on(async move {
                    let target = reachable(listen).to_string();
                    let client = match Client::connect(&target, ClientConfig::new(credential)).await
                    {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx.send(Err(format!(
                                "the HTTP gateway cannot connect to {target}: {e}"
                            )));
                            return;
                        }
                    };
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = tx.send(Err(format!("HTTP listener: {e}")));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(()));
                    let app = App::new(client, cfg);
                    if let Err(e) = reserva_gateway::serve(listener, app).await {
                        tracing::error!(error = %e, "HTTP gateway stopped");
                    }
                });
            })
            .map_err(|e| format!("cannot start the HTTP thread: {e}"))?;
        match rx.recv_timeout(EMBEDDED_CONNECT_TIMEOUT) {
            Ok(Ok(())) => Ok(format!(" http={bound}")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!(
                "the HTTP gateway did not connect to the node within {EMBEDDED_CONNECT_TIMEOUT:?}"
            )),
        }
    }))
}

/// Runs a standalone gateway in front of the node at `server` until SIGINT
/// or SIGTERM. Keeps trying to connect until the node answers.
pub fn standalone(
    server: String,
    auth: Option<AuthTable>,
    token: Option<String>,
    opts: HttpOptions,
) -> anyhow::Result<()> {
    let credential = gateway_credential(auth.as_ref(), token)?;
    let listener = bind(opts.addr, auth.as_ref())?;
    let bound = listener.local_addr()?;
    let rt = runtime(opts.threads)?;
    let cfg = config(auth, &opts, false);
    rt.block_on(async move {
        let mut wait = Duration::from_millis(100);
        let client = loop {
            match Client::connect(&server, ClientConfig::new(credential.clone())).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(%server, error = %e, "cannot reach the node yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(STANDALONE_RETRY_MAX);
                }
            }
        };
        let listener = tokio::net::TcpListener::from_std(listener)?;
        println!("reserva-gateway ready http={bound} server={server}");
        let serve = reserva_gateway::serve(listener, App::new(client, cfg));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = serve => r?,
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("gateway stopped");
        Ok(())
    })
}

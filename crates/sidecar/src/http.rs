//! Serving HTTP connections: the accept loop of every listener, with the limits a sidecar needs
//! against slow, idle and stalled clients.
//!
//! `axum::serve` exposes none of hyper's per-connection settings and its graceful shutdown waits
//! for every connection without bound, so the sidecar runs its own loop on hyper's HTTP/1
//! connection builder:
//!
//! - **Header timeout** ([`Limits::header_timeout`]): a connection must deliver a complete
//!   request head within this time of opening, and within this time of the previous response on
//!   a kept-alive connection, else hyper closes it. One timer covers both slow headers
//!   (slowloris) and idle keep-alive connections.
//! - **Body timeout** ([`Limits::body_timeout`]): the whole request body must arrive within this
//!   time of the head, else `408 request_timeout` and the connection is closed (see
//!   `api::read_body`). A declared `Content-Length` above `--max-body` is refused with `413`
//!   before any of the body is read.
//! - **Connections** ([`Limits::max_connections`], per listener): at the limit the listener stops
//!   accepting until a connection ends (new clients wait in the kernel's backlog).
//! - **Buffering** ([`CONNECTION_BUFFER_BYTES`]): the most a connection buffers for a request head
//!   and for a response the client does not read fast enough.
//! - **Shutdown grace** ([`Limits::shutdown_grace`]): on shutdown the listener stops accepting,
//!   idle connections close, open ones finish their request; those still open when the grace
//!   ends (a stalled event-stream client, a slow upload) are closed.

use axum::serve::Listener;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Most bytes a connection buffers: a request head (method, path, headers) longer than this is
/// refused (`431`), and a response the client does not read waits once this much is buffered.
pub const CONNECTION_BUFFER_BYTES: usize = 64 << 10;

/// Per-connection limits of a listener (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time to receive a complete request head, from the connection's start or the end of the
    /// previous response (also the idle keep-alive timeout).
    pub header_timeout: Duration,
    /// Time to receive a whole request body, from the end of its head.
    pub body_timeout: Duration,
    /// Most connections open at once on one listener.
    pub max_connections: usize,
    /// On shutdown, how long open connections may take to finish before they are closed.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serve `app` on `listener` until `stop` turns true, then shut down within the grace.
pub(crate) async fn serve<L: Listener>(mut listener: L, app: Router, limits: Limits, stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut conns = JoinSet::new();
    let mut stop_accepting = stop.clone();
    loop {
        // Reap the connections that ended, so the set holds only open ones.
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            biased;
            _ = stop_accepting.wait_for(|s| *s) => break,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let io = tokio::select! {
            biased;
            _ = stop_accepting.wait_for(|s| *s) => break,
            (io, _) = listener.accept() => io,
        };
        let svc = TowerToHyperService::new(app.clone());
        let mut stop = stop.clone();
        conns.spawn(async move {
            let _permit = permit;
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).max_buf_size(CONNECTION_BUFFER_BYTES);
            let conn = b.serve_connection(TokioIo::new(io), svc);
            tokio::pin!(conn);
            let r = tokio::select! {
                r = conn.as_mut() => r,
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    // Idle connections close now; a request in flight finishes first.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    drop(listener);
    let open = conns.len();
    if open == 0 {
        return;
    }
    let finished =
        tokio::time::timeout(limits.shutdown_grace, async { while conns.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        tracing::warn!(
            open = conns.len(),
            grace_ms = limits.shutdown_grace.as_millis() as u64,
            "closing connections still open at the end of the shutdown grace"
        );
        conns.shutdown().await;
    }
}

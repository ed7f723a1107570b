//! Helpers: start a sidecar in-process on ephemeral ports, stop it, talk to it.
#![allow(dead_code)]

pub mod child;

use podcache_sidecar::{Config, Error, RingSpec, Server, TableSpec};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running in-process sidecar.
pub struct Running {
    pub api: SocketAddr,
    pub ops: SocketAddr,
    pub socket: Option<PathBuf>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), Error>>>,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    pub fn ops_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ops)
    }

    /// Graceful shutdown; returns what `serve` returned.
    pub async fn stop(mut self) -> Result<(), Error> {
        let _ = self.stop.take().expect("running").send(());
        tokio::time::timeout(Duration::from_secs(30), self.task.take().expect("running"))
            .await
            .expect("shutdown finishes (watchdog)")
            .expect("serve task did not panic")
    }
}

/// A configuration on `dir` with ephemeral ports.
pub fn config(dir: &Path) -> Config {
    Config {
        dir: dir.to_path_buf(),
        tables: vec![TableSpec { name: "web".into(), max_items: 1000, data_bytes: 4 << 20 }],
        rings: vec![RingSpec { name: "events".into(), capacity: 1 << 20, max_message: Some(64 << 10) }],
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ops_listen: Some("127.0.0.1:0".parse().unwrap()),
        sweep_interval: Duration::from_millis(50),
        ..Config::default()
    }
}

/// Start a sidecar (panics on a start-up error).
///
/// A lock still held is retried for a few seconds. The files' writer locks are released when a
/// stopped server returns (`LOCK_UN`, whoever else holds a copy of the descriptor), but its
/// directory lock goes with the last reference to its state, which a subscription's blocking
/// thread can keep a moment longer.
pub async fn start(config: Config) -> Running {
    retrying_locks(config).await.unwrap_or_else(|e| panic!("sidecar starts: {e}"))
}

/// The start-up error of a configuration that must be refused (panics if it starts). A lock
/// still held is retried as in [`start`], so the error is the one the test is about.
pub async fn refused(config: Config) -> Error {
    match retrying_locks(config).await {
        Ok(running) => {
            running.stop().await.unwrap();
            panic!("the sidecar started; it should have been refused")
        }
        Err(e) => e,
    }
}

/// [`try_start`], retried for up to 5 s while the error is a lock held (see [`start`]).
async fn retrying_locks(config: Config) -> Result<Running, Error> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match try_start(config.clone()).await {
            Err(e) if is_lock_error(&e) && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r,
        }
    }
}

fn is_lock_error(e: &Error) -> bool {
    matches!(e, Error::AlreadyServed { .. }) || e.to_string().contains("writer lock")
}

/// Start a sidecar.
pub async fn try_start(config: Config) -> Result<Running, Error> {
    let server = Server::start(config).await?;
    let api = server.api_addr().expect("api listener");
    let ops = server.ops_addr().expect("ops listener");
    let socket = server.socket_path().map(Path::to_path_buf);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async move {
        let _ = rx.await;
    }));
    Ok(Running { api, ops, socket, stop: Some(tx), task: Some(task) })
}

/// An HTTP client for requests: each one (with its body) must finish within 30 s.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// An HTTP client for event streams (subscriptions). reqwest's `timeout` bounds a whole
/// request, body included, so it would cut a stream that is meant to stay open longer (a
/// subscriber left unread while a flood is published takes longer than that in a debug build).
/// Only connecting is bounded here; the test's watchdog bounds the rest.
pub fn stream_client() -> reqwest::Client {
    reqwest::Client::builder().connect_timeout(Duration::from_secs(30)).build().unwrap()
}

/// The `error.code` of a JSON error response.
pub async fn error_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let v = json(resp).await;
    (status, v["error"]["code"].as_str().expect("error.code").to_string())
}

/// Run `podcache ARGS` and return (status code, stdout, stderr).
pub fn podcache(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_podcache")).args(args).output().expect("run podcache");
    (out.status.code().unwrap_or(-1), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The body as JSON.
pub async fn json(resp: reqwest::Response) -> serde_json::Value {
    let bytes = resp.bytes().await.expect("a body");
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("JSON body ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// Read SSE events (event name, data) from a streaming response until `n` events arrived.
pub async fn sse_events(resp: &mut reqwest::Response, buf: &mut String, n: usize) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut event = "message".to_string();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if !data.is_empty() {
                out.push((event, serde_json::from_str(&data).expect("event data is JSON")));
            }
            if out.len() == n {
                return out;
            }
        }
        let chunk = resp.chunk().await.expect("stream readable").expect("stream not ended");
        buf.push_str(std::str::from_utf8(&chunk).expect("utf-8 events"));
    }
}

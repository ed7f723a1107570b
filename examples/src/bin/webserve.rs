//! Serve `GET /{key}` straight from a podcache table: the serving half of the classic
//! "web server + content generator sharing an emptyDir" Pod, rebuilt on podcache.
//!
//! The content generator puts pages into the table through the sidecar (`curl -X PUT
//! http://127.0.0.1:7070/v1/tables/web/keys/index.html --data-binary @-`); this server maps the
//! table file read-only with [`podcache_reader::TableReader`] and answers every request from
//! shared memory: no file is read from disk, no socket to the sidecar is opened, and the volume
//! can be mounted `readOnly: true`.
//!
//! ```text
//! webserve --dir /run/podcache --table web --listen 0.0.0.0:8080
//! curl http://127.0.0.1:8080/            # the value of key "index.html"
//! curl http://127.0.0.1:8080/about.html  # the value of key "about.html"
//! ```
//!
//! HTTP/1.1 on hyper's server (tokio, `--threads` worker threads), `GET` and `HEAD` only, with
//! keep-alive. One [`TableReader`] (it is `Sync`) serves every connection. When the sidecar
//! replaces the table file (a new layout is a new file renamed into place), a background task
//! notices within a second and the next requests read the new file.
//!
//! # Slow, idle and hostile clients
//!
//! A connection holds at most a few KiB and a task, and is closed when it stops making progress:
//!
//! - **Header timeout** (`--header-timeout`, 10 s): a complete request head must arrive within
//!   this time of the connection's start, and within this time of the previous response on a
//!   kept-alive connection. One timer (hyper's `header_read_timeout`) closes both slowloris
//!   clients (a header byte every few seconds) and idle keep-alive connections.
//! - **Head size**: a request head longer than 8 KiB is refused (`431`) and the
//!   connection closed.
//! - **No request bodies**: `GET` and `HEAD` take none, so a request that declares one (any
//!   `Content-Length` above 0, or `Transfer-Encoding`) is answered `413` at once, before any of
//!   it is read, and the connection is closed; other methods get `405` and are closed too.
//! - **Connections** (`--max-connections`, 1024): at the limit the listener stops accepting until
//!   a connection ends (new clients wait in the kernel's backlog).
//!
//! Not bounded by a timer: a client that stops *reading* a response it asked for keeps its
//! connection (and the copy of the value being sent) until it reads or disconnects; the
//! connection limit bounds how many such clients are held.

use clap::Parser;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use podcache_reader::TableReader;
use std::convert::Infallible;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Semaphore;

#[derive(Parser, Clone)]
#[command(
    name = "webserve",
    about = "Serve GET /{key} from a podcache table (read-only mapping of the shared volume)",
    long_about = "Serve GET /{key} from a podcache table. The table file DIR/TABLE.table is mapped \
                  read-only, so the volume may be mounted readOnly: true. GET / serves the key given \
                  by --index. Start-up waits up to --wait-secs for the sidecar to create the table; \
                  the listener opens only once the table is readable, so a readiness probe on it \
                  tells when pages can be served. A connection must send a complete request head \
                  within --header-timeout of opening (or of its previous response, when kept \
                  alive), else it is closed; a request declaring a body is refused (413)."
)]
struct Args {
    /// Directory of the podcache files (the shared volume's mountPath).
    #[arg(long, env = "PODCACHE_DIR", default_value = "/run/podcache")]
    dir: PathBuf,
    /// Table to serve (file DIR/TABLE.table).
    #[arg(long, default_value = "web")]
    table: String,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: String,
    /// Key served for `GET /`.
    #[arg(long, default_value = "index.html")]
    index: String,
    /// Worker threads of the runtime.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Seconds to wait at start-up for the table file to be created and ready.
    #[arg(long, default_value_t = 60)]
    wait_secs: u64,
    /// Seconds a connection has to send a complete request head, from its start or from its
    /// previous response (the idle keep-alive timeout too). Fractions allowed.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    header_timeout: Duration,
    /// Most connections open at once; further clients wait in the kernel's backlog.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("{s:?}: give a positive number of seconds")),
    }
}

/// Longest request head (request line and headers) accepted; hyper's smallest buffer limit.
const MAX_HEAD: usize = 8 * 1024;

/// How often the table file is checked for a replacement.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    podcache_examples::exit_on_termination("webserve");
    let args = Args::parse();
    let path = args.dir.join(format!("{}.table", args.table));
    // Open before listening: the port opens only when the table can be read.
    let reader = match TableReader::open_wait(&path, Duration::from_secs(args.wait_secs)) {
        Ok(reader) => reader,
        Err(e) => {
            eprintln!("webserve: error: cannot open table {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads.max(1)).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("webserve: error: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
    runtime.block_on(run(args, reader))
}

/// The table being served, swapped for a new reader when the file is replaced.
struct Site {
    reader: RwLock<Arc<TableReader>>,
    index: Vec<u8>,
}

impl Site {
    fn reader(&self) -> Arc<TableReader> {
        Arc::clone(&self.reader.read().unwrap_or_else(|e| e.into_inner()))
    }
}

async fn run(args: Args, reader: TableReader) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("webserve: error: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "webserve: serving table {} (writer epoch {}, {} items) on http://{} (header timeout {:?}, at most {} connections)",
        reader.path().display(),
        reader.writer_epoch(),
        reader.stats().items,
        args.listen,
        args.header_timeout,
        args.max_connections,
    );
    let site = Arc::new(Site { reader: RwLock::new(Arc::new(reader)), index: args.index.into_bytes() });
    tokio::spawn(follow(Arc::clone(&site)));
    let permits = Arc::new(Semaphore::new(args.max_connections.max(1)));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return ExitCode::FAILURE; // never closed
        };
        let io = match listener.accept().await {
            Ok((io, _)) => io,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                eprintln!("webserve: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let site = Arc::clone(&site);
        let header_timeout = args.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| {
                let answer = answer(&site, &req);
                async move { Ok::<_, Infallible>(answer) }
            });
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new()).header_read_timeout(header_timeout).max_buf_size(MAX_HEAD);
            // Errors are the client's doing (timeouts, resets, bad requests): nothing to report.
            let _ = b.serve_connection(TokioIo::new(io), svc).await;
        });
    }
}

/// Re-open the table when the file at its path is replaced (a new layout is a new file renamed
/// over the old one, which is marked retired) or removed and created again.
async fn follow(site: Arc<Site>) {
    let mut tick = tokio::time::interval(FOLLOW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let current = site.reader();
        if !current.file_replaced() {
            continue;
        }
        match TableReader::open(current.path()) {
            Ok(new) => {
                eprintln!("webserve: {} was replaced; serving the new file", current.path().display());
                *site.reader.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
            }
            // Removed and not (yet) created again: keep serving the old mapping.
            Err(e) => eprintln!("webserve: {} was replaced, re-opening failed: {e}", current.path().display()),
        }
    }
}

/// The response to one request.
fn answer(site: &Site, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    // hyper sends no body in answer to HEAD, only the Content-Length a GET would have.
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "GET and HEAD only\n");
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return closing(r);
    }
    // GET and HEAD take no body: refuse one before reading any of it, however large it claims
    // to be, and close the connection rather than drain it.
    let declared = req.headers().get(CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    if declared || req.headers().contains_key(TRANSFER_ENCODING) {
        return closing(text(StatusCode::PAYLOAD_TOO_LARGE, "GET and HEAD take no request body\n"));
    }
    let raw = req.uri().path().strip_prefix('/').unwrap_or_default();
    let key: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    let key = if key.is_empty() { site.index.clone() } else { key };
    if key.len() > 255 {
        // podcache keys are 1..=255 bytes: a longer one cannot be in the table.
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    match site.reader().get_vec(&key) {
        Ok(Some(value)) => {
            let mut r = Response::new(Full::new(Bytes::from(value)));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type(&key)));
            r
        }
        Ok(None) => text(StatusCode::NOT_FOUND, "not found\n"),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("podcache get failed: {e}\n")),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// `r`, and close the connection after it.
fn closing(mut r: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Content type from the key's extension.
fn content_type(key: &[u8]) -> &'static str {
    let ext = key.rsplit(|&b| b == b'.').next().unwrap_or_default();
    match ext {
        b"html" | b"htm" => "text/html; charset=utf-8",
        b"css" => "text/css; charset=utf-8",
        b"js" => "text/javascript; charset=utf-8",
        b"json" => "application/json",
        b"txt" => "text/plain; charset=utf-8",
        b"svg" => "image/svg+xml",
        b"png" => "image/png",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type(b"index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type(b"data.json"), "application/json");
        assert_eq!(content_type(b"blob"), "application/octet-stream");
    }

    #[test]
    fn header_timeouts_are_positive_seconds() {
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("10s").is_err());
    }
}

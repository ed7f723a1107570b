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
//! Plain std HTTP/1.1 (one request per connection, `Connection: close`), `GET` and `HEAD` only,
//! a fixed pool of threads that each own a reader (a [`TableReader`] is cheap and not `Sync`).
//! When the sidecar replaces the table file (a new layout is a new file renamed into place),
//! the workers notice within a second and serve the new file.

use clap::Parser;
use podcache_reader::TableReader;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser, Clone)]
#[command(
    name = "webserve",
    about = "Serve GET /{key} from a podcache table (read-only mapping of the shared volume)",
    long_about = "Serve GET /{key} from a podcache table. The table file DIR/TABLE.table is mapped \
                  read-only, so the volume may be mounted readOnly: true. GET / serves the key given \
                  by --index. Start-up waits up to --wait-secs for the sidecar to create the table; \
                  the listener opens only once the table is readable, so a readiness probe on it \
                  tells when pages can be served."
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
    /// Worker threads (each owns a reader).
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Seconds to wait at start-up for the table file to be created and ready.
    #[arg(long, default_value_t = 60)]
    wait_secs: u64,
}

/// Longest request head (request line and headers) accepted.
const MAX_HEAD: usize = 16 * 1024;

fn main() -> ExitCode {
    podcache_examples::exit_on_termination("webserve");
    let args = Args::parse();
    let path = args.dir.join(format!("{}.table", args.table));
    // Open once before listening: the port opens only when the table can be read.
    let mut first = match TableReader::open_wait(&path, Duration::from_secs(args.wait_secs)) {
        Ok(reader) => Some(Table::new(&path, reader, inode(&path))),
        Err(e) => {
            eprintln!("webserve: error: cannot open table {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let listener = match TcpListener::bind(&args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("webserve: error: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "webserve: serving table {} (writer epoch {}, {} items) on http://{}",
        path.display(),
        first.as_ref().map_or(0, |t| t.reader.writer_epoch()),
        first.as_ref().map_or(0, |t| t.reader.stats().items),
        args.listen
    );
    let mut workers = Vec::new();
    for _ in 0..args.threads.max(1) {
        let listener = match listener.try_clone() {
            Ok(l) => l,
            Err(e) => {
                eprintln!("webserve: error: {e}");
                return ExitCode::FAILURE;
            }
        };
        // The first worker reuses the reader opened above; the others open their own.
        let table = match first.take().map_or_else(|| Table::open(&path), Ok) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("webserve: error: cannot open table {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        };
        let index = args.index.clone();
        workers.push(std::thread::spawn(move || worker(&listener, table, &index)));
    }
    for w in workers {
        let _ = w.join();
    }
    ExitCode::FAILURE
}

/// How often a worker checks whether the table file was replaced.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// A worker's reader, following the file when it is replaced.
///
/// podcache never re-lays out a live file: a table with a new layout is a new file renamed
/// over the old one (the old one is marked retired). The reader keeps the old mapping until it
/// re-opens, so at most once per [`FOLLOW_EVERY`] the worker compares the inode at the path
/// with the one it opened, and re-opens when they differ.
struct Table {
    path: PathBuf,
    reader: TableReader,
    inode: Option<u64>,
    checked: Instant,
}

impl Table {
    fn new(path: &Path, reader: TableReader, inode: Option<u64>) -> Table {
        Table { path: path.to_path_buf(), reader, inode, checked: Instant::now() }
    }

    fn open(path: &Path) -> Result<Table, podcache_reader::OpenError> {
        // The inode before opening: if the file is replaced in between, the next check sees
        // a different inode and re-opens (never the other way round).
        let inode = inode(path);
        TableReader::open(path).map(|r| Table::new(path, r, inode))
    }

    /// The reader, re-opened first if the file at the path is not the one it reads.
    fn current(&mut self) -> &TableReader {
        if self.checked.elapsed() >= FOLLOW_EVERY {
            self.checked = Instant::now();
            let now = inode(&self.path);
            if now.is_some() && now != self.inode {
                match Table::open(&self.path) {
                    Ok(t) => {
                        eprintln!("webserve: {} was replaced; serving the new file", self.path.display());
                        *self = t;
                    }
                    Err(e) => eprintln!("webserve: {} was replaced, re-opening failed: {e}", self.path.display()),
                }
            }
        }
        &self.reader
    }
}

fn inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

fn worker(listener: &TcpListener, mut table: Table, index: &str) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                match serve(stream, table.current(), index) {
                    Ok(()) => {}
                    // The client went away: nothing to tell it.
                    Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {}
                    Err(e) => eprintln!("webserve: connection: {e}"),
                }
            }
            Err(e) => {
                eprintln!("webserve: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Answer one request on `stream`, then close it.
fn serve(stream: TcpStream, reader: &TableReader, index: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut input = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut line = String::new();
    let mut head = input.read_line(&mut line)?;
    if head == 0 {
        return Ok(()); // connected and closed without a request (a TCP probe)
    }
    let request = line.trim_end().to_string();
    // Drain the headers (bounded); the body of a GET is not read.
    loop {
        line.clear();
        let n = input.read_line(&mut line)?;
        head += n;
        if n == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if head > MAX_HEAD {
            return respond(&mut out, 431, "text/plain", b"request head too large\n", false);
        }
    }
    let mut parts = request.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return respond(&mut out, 400, "text/plain", b"bad request line\n", false);
    };
    if !version.starts_with("HTTP/1.") {
        return respond(&mut out, 505, "text/plain", b"HTTP/1.x only\n", false);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return respond(&mut out, 405, "text/plain", b"GET and HEAD only\n", false),
    };
    let path = target.split(['?', '#']).next().unwrap_or("");
    let Some(raw) = path.strip_prefix('/') else {
        return respond(&mut out, 400, "text/plain", b"target must start with /\n", head_only);
    };
    let Some(key) = percent_decode(raw) else {
        return respond(&mut out, 400, "text/plain", b"bad percent-encoding\n", head_only);
    };
    let key: &[u8] = if key.is_empty() { index.as_bytes() } else { &key };
    if key.len() > 255 {
        // podcache keys are 1..=255 bytes: a longer one cannot be in the table.
        return respond(&mut out, 404, "text/plain", b"not found\n", head_only);
    }
    match reader.get_vec(key) {
        Ok(Some(value)) => respond(&mut out, 200, content_type(key), &value, head_only),
        Ok(None) => respond(&mut out, 404, "text/plain", b"not found\n", head_only),
        Err(e) => {
            let msg = format!("podcache get failed: {e}\n");
            respond(&mut out, 503, "text/plain", msg.as_bytes(), head_only)
        }
    }
}

fn respond(out: &mut TcpStream, status: u16, ctype: &str, body: &[u8], head_only: bool) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    let allow = if status == 405 { "Allow: GET, HEAD\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    out.write_all(head.as_bytes())?;
    if !head_only {
        out.write_all(body)?;
    }
    out.flush()
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

/// Decode `%XX` escapes; `None` on a malformed escape.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("a%20b%2Fc").as_deref(), Some(&b"a b/c"[..]));
        assert_eq!(percent_decode("plain.html").as_deref(), Some(&b"plain.html"[..]));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type(b"index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type(b"data.json"), "application/json");
        assert_eq!(content_type(b"blob"), "application/octet-stream");
    }
}

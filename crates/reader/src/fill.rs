//! [`NearTable`]: read a table that mirrors Redis, and on a miss ask the sidecar to fill it
//! (cargo feature `fill`).
//!
//! A sidecar started with `--upstream` and `--mirror TABLE=PREFIX` keeps the table a Pod-local
//! copy of the Redis keys under `PREFIX` (`docs/design.md` §10). Any container can read it with
//! a [`TableReader`]; this module adds the miss path for containers that link the reader:
//!
//! 1. **Shared memory first.** [`NearTable::get_into`] looks the key up in the table: a value,
//!    or the negative entry `0x00 + key` the sidecar stores for a key absent in Redis. A hit
//!    makes no system call.
//! 2. **Fill over the sidecar's Unix socket.** On a miss it sends `GET
//!    /v1/tables/TABLE/keys/KEY` to the sidecar's API socket (`podcache serve --socket NAME`):
//!    the sidecar fetches value and TTL from Redis, stores them in the table and answers.
//!    Concurrent misses on one key, from any number of threads, processes and containers, share
//!    one upstream request: the sidecar's single flight.
//! 3. **Shared memory again.** Once the sidecar answered, the table is read again and what it
//!    holds is returned ([`Source::Filled`]). Only where it holds nothing for the key (the entry
//!    was invalidated, expired or evicted in between, or was never stored: a value larger than
//!    the table takes, a TTL already over) is the sidecar's reply returned
//!    ([`Source::Reply`]).
//!
//! **Contract: never older than what the sidecar vouched for.** The sidecar changes a mirrored
//! table only in Redis's order of writes (fills and invalidations are applied in the order they
//! arrive on its one connection), and it answers a fill after storing it. So whatever the table
//! holds for the key after the reply is the reply's state or a later one, and the reply itself
//! is only returned when the table holds nothing newer. Like every read of the near cache, the
//! answer may trail Redis by the invalidation delay (`docs/design.md` §10, "What a reader may
//! see").
//!
//! **Failures are errors, never hangs.** Every fill has a deadline ([`DEFAULT_TIMEOUT`],
//! [`NearTableBuilder::timeout`]) covering connect, request and reply; a sidecar that is stopped
//! or whose connection backlog is full gives [`FillError::Timeout`]. A sidecar that is not
//! running (no socket file, or nobody listening on it) gives [`FillError::SidecarDown`] at once.
//! A sidecar that cannot reach Redis answers 503: [`FillError::UpstreamUnavailable`] (the
//! default deadline is longer than the sidecar's default `--upstream-timeout` of 3 s, so this
//! is what an unreachable Redis looks like, not a timeout). A table the sidecar does not mirror
//! gives [`FillError::NotMirrored`]. Nothing is retried: the caller decides.
//!
//! **Keys.** The fill goes through the HTTP API, whose keys are UTF-8 path segments: a key that
//! is not UTF-8, empty or longer than 255 bytes gives [`FillError::BadKey`] on a miss (hits work
//! for any key).
//!
//! **The reply is untrusted input.** The response parser is bounded: a head over 16 KiB, a body
//! over the limit ([`NearTableBuilder::max_reply`]), a chunked or malformed response is a
//! [`FillError::Protocol`] or [`FillError::ReplyTooLarge`], never an unbounded allocation.
//!
//! **Read-only mounts.** Connecting to a Unix socket needs write permission on the socket file
//! (the sidecar gives it to whoever may read the files) but no writable mount: a container
//! that mounts the volume `readOnly: true` can fill.

use crate::TableReader;
use podcache_format::table::{GetError, MAX_KEY};
use podcache_format::OpenError;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a fill may take, connect to last byte, unless [`NearTableBuilder::timeout`] says
/// otherwise. Longer than the sidecar's default `--upstream-timeout` (3 s, a lost connection
/// noticed within 4 s), so an unreachable Redis is reported as
/// [`FillError::UpstreamUnavailable`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The socket name used when [`NearTableBuilder::socket`] is not called: the one the README's
/// examples give `podcache serve --socket`.
pub const DEFAULT_SOCKET: &str = "podcache.sock";

/// Largest response head accepted.
const MAX_HEAD: usize = 16 << 10;
/// Largest error body accepted.
const MAX_ERROR_BODY: usize = 64 << 10;
/// The reply limit's floor (a value larger than the table takes is answered, not stored).
const MIN_MAX_REPLY: usize = 16 << 20;

/// What a mirrored table holds for a key (shared memory only, no fill).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cached {
    /// A value (copied into the caller's buffer).
    Value,
    /// A negative entry: the key was absent in Redis when filled.
    Absent,
    /// Nothing: not filled, invalidated, expired or evicted.
    NotCached,
}

/// Where an answer of [`NearTable::get_into`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The table, without asking the sidecar (no system call).
    Table,
    /// The table, read again after the sidecar answered a fill.
    Filled,
    /// The sidecar's reply: the table held nothing for the key after the fill.
    Reply,
}

/// The answer of [`NearTable::get_into`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Got {
    /// The key has a value (in the caller's buffer).
    Value(Source),
    /// The key is absent in Redis.
    Absent(Source),
}

impl Got {
    /// Where the answer came from.
    pub fn source(self) -> Source {
        match self {
            Got::Value(s) | Got::Absent(s) => s,
        }
    }
}

/// Opening a [`NearTable`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum NearOpenError {
    /// The table file could not be opened.
    Open(OpenError),
    /// The table name is not one the sidecar accepts (`[A-Za-z0-9_-]{1,64}`).
    BadName(String),
    /// The token is unusable (empty, or holds whitespace or control characters).
    BadToken,
    /// The token file could not be read.
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl std::fmt::Display for NearOpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NearOpenError::Open(e) => write!(f, "{e}"),
            NearOpenError::BadName(n) => write!(f, "table name {n:?}: expected 1 to 64 of A-Z a-z 0-9 _ -"),
            NearOpenError::BadToken => f.write_str("bearer token is empty or holds whitespace or control characters"),
            NearOpenError::TokenFile { path, source } => write!(f, "token file {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for NearOpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NearOpenError::Open(e) => Some(e),
            NearOpenError::TokenFile { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A get that may fill failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum FillError {
    /// Reading the table failed (kept racing the writer, or the file is corrupt).
    Get(GetError),
    /// The key cannot be filled through the sidecar's HTTP API (the reason says why).
    BadKey(&'static str),
    /// Nobody answers on the socket: no socket file, nobody listening (the sidecar is not
    /// running, or was started without `--socket`), or no permission to connect.
    SidecarDown {
        /// The socket.
        socket: PathBuf,
        /// The error of `connect`.
        source: std::io::Error,
    },
    /// The sidecar did not answer within the deadline (stopped, overloaded, or its backlog is
    /// full).
    Timeout {
        /// The socket.
        socket: PathBuf,
        /// The deadline.
        after: Duration,
    },
    /// The connection failed after it was made (reset, closed early).
    Io(std::io::Error),
    /// The sidecar does not mirror this table (no `--mirror TABLE=PREFIX`, or no such table).
    NotMirrored {
        /// The table.
        table: String,
    },
    /// The sidecar cannot reach Redis now (it answered 503 `upstream_unavailable`).
    UpstreamUnavailable(String),
    /// Redis answered the fill with an error (502 `upstream_error`, e.g. `WRONGTYPE`).
    Upstream(String),
    /// The sidecar refused the token (401). A token file is read again once before this.
    Unauthorized,
    /// The sidecar answered another error.
    Refused {
        /// HTTP status.
        status: u16,
        /// The error's `code` (empty if the body had none).
        code: String,
        /// The error's message.
        message: String,
    },
    /// The reply is larger than [`NearTableBuilder::max_reply`] allows.
    ReplyTooLarge {
        /// Its `Content-Length`.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The reply is not an HTTP response this client reads.
    Protocol(&'static str),
}

impl std::fmt::Display for FillError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FillError::Get(e) => write!(f, "{e}"),
            FillError::BadKey(why) => write!(f, "key cannot be filled through the sidecar: {why}"),
            FillError::SidecarDown { socket, source } => write!(
                f,
                "cannot reach the sidecar at {}: {source} (is `podcache serve --socket` running on this volume?)",
                socket.display()
            ),
            FillError::Timeout { socket, after } => {
                write!(f, "the sidecar at {} did not answer within {after:?}", socket.display())
            }
            FillError::Io(e) => write!(f, "connection to the sidecar failed: {e}"),
            FillError::NotMirrored { table } => write!(
                f,
                "the sidecar does not mirror table {table:?} (start it with --upstream and --mirror {table}=PREFIX)"
            ),
            FillError::UpstreamUnavailable(m) => write!(f, "the sidecar cannot reach Redis now: {m}"),
            FillError::Upstream(m) => write!(f, "Redis refused the fill: {m}"),
            FillError::Unauthorized => f.write_str("the sidecar refused the bearer token (401)"),
            FillError::Refused { status, code, message } => {
                write!(f, "the sidecar answered {status} {code}: {message}")
            }
            FillError::ReplyTooLarge { len, max } => {
                write!(f, "the sidecar's reply of {len} bytes is over the limit of {max} bytes")
            }
            FillError::Protocol(what) => write!(f, "malformed reply from the sidecar: {what}"),
        }
    }
}

impl std::error::Error for FillError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FillError::Get(e) => Some(e),
            FillError::SidecarDown { source, .. } => Some(source),
            FillError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<GetError> for FillError {
    fn from(e: GetError) -> FillError {
        FillError::Get(e)
    }
}

/// The table key of the negative entry for `key`, built in `buf` (`None`: too long to have
/// one). On the stack, so a hit on a negative entry allocates nothing.
fn negative_key<'b>(key: &[u8], buf: &'b mut [u8; MAX_KEY]) -> Option<&'b [u8]> {
    let nk = buf.get_mut(..key.len() + 1)?;
    nk[0] = 0;
    nk[1..].copy_from_slice(key);
    Some(nk)
}

/// Read `key` from a mirrored table into `out`: the value first, then the negative entry
/// (`docs/design.md` §10: a reader looking at `k` first sees each two-step change of the sidecar
/// as either the old or the new state). A key that is empty, longer than the table's keys or
/// starts with `0x00` is never cached: [`Cached::NotCached`].
pub fn lookup_into(reader: &TableReader, key: &[u8], out: &mut Vec<u8>) -> Result<Cached, GetError> {
    if key.first().is_none_or(|&b| b == 0) || key.len() > MAX_KEY {
        out.clear();
        return Ok(Cached::NotCached);
    }
    if reader.get_into(key, out)? {
        return Ok(Cached::Value);
    }
    match negative_key(key, &mut [0u8; MAX_KEY]) {
        Some(nk) if reader.contains(nk)? => Ok(Cached::Absent),
        _ => Ok(Cached::NotCached),
    }
}

/// Builds a [`NearTable`].
pub struct NearTableBuilder {
    dir: PathBuf,
    table: String,
    socket: PathBuf,
    token: Option<Token>,
    timeout: Duration,
    max_reply: Option<usize>,
    wait: Duration,
}

impl NearTableBuilder {
    /// The sidecar's API socket: a path, relative to the directory unless absolute
    /// (default [`DEFAULT_SOCKET`]; `podcache serve --socket NAME` creates `DIR/NAME`).
    pub fn socket(mut self, path: impl AsRef<Path>) -> Self {
        self.socket = self.dir.join(path);
        self
    }

    /// The bearer token, if the sidecar has `--token-file`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Token::Fixed(token.into()));
        self
    }

    /// Read the bearer token from this file (e.g. a mounted Secret) at open, and again when the
    /// sidecar refuses it (a rotated Secret), once per refused fill.
    pub fn token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.token = Some(Token::File { path: path.into(), current: Mutex::new(String::new()) });
        self
    }

    /// Deadline of one fill, connect to last byte (default [`DEFAULT_TIMEOUT`]; at least 1 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Largest reply body accepted (default: the table's largest value, and at least 16 MiB:
    /// the sidecar answers values larger than the table takes without storing them).
    pub fn max_reply(mut self, bytes: usize) -> Self {
        self.max_reply = Some(bytes);
        self
    }

    /// Wait up to `timeout` for the sidecar to create the table file (default: do not wait).
    pub fn wait_for_file(mut self, timeout: Duration) -> Self {
        self.wait = timeout;
        self
    }

    /// Open `DIR/TABLE.table` read-only. The socket is not touched until the first miss: the
    /// sidecar may start later.
    pub fn open(self) -> Result<NearTable, NearOpenError> {
        let valid = |n: &str| {
            (1..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !valid(&self.table) {
            return Err(NearOpenError::BadName(self.table));
        }
        if let Some(t) = &self.token {
            t.load()?;
        }
        let reader = TableReader::open_wait(self.dir.join(format!("{}.table", self.table)), self.wait)
            .map_err(NearOpenError::Open)?;
        let max_reply = self.max_reply.unwrap_or(reader.max_value_len().max(MIN_MAX_REPLY));
        Ok(NearTable {
            reader,
            client: Client {
                socket: self.socket,
                table: self.table,
                token: self.token,
                timeout: self.timeout,
                max_reply,
            },
        })
    }
}

/// A mirrored table: shared-memory gets, and fills through the sidecar on a miss. `Send` and
/// `Sync`; each fill uses a connection of its own, so any number of threads may miss at once
/// (the sidecar makes one upstream request per key). See the [module docs](self).
///
/// ```no_run
/// use podcache_reader::{Got, NearTable};
///
/// // `podcache serve --dir /run/podcache --socket podcache.sock --table users=100000:256MiB
/// //    --upstream redis://redis:6379 --mirror users=user:` runs in the sidecar container.
/// let users = NearTable::builder("/run/podcache", "users").socket("podcache.sock").open()?;
/// let mut value = Vec::new();
/// match users.get_into(b"42", &mut value)? {
///     Got::Value(source) => println!("user:42 = {value:?} (from {source:?})"),
///     Got::Absent(_) => println!("no user:42 in Redis"), // cached as absent too
/// }
/// // Now a hit (until Redis invalidates it): shared memory only, no system call.
/// let again = users.get(b"42")?;
/// # let _ = again;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct NearTable {
    reader: TableReader,
    client: Client,
}

impl NearTable {
    /// A builder for table `table` (file `DIR/TABLE.table`) of the sidecar serving `dir`.
    pub fn builder(dir: impl Into<PathBuf>, table: impl Into<String>) -> NearTableBuilder {
        let dir = dir.into();
        NearTableBuilder {
            socket: dir.join(DEFAULT_SOCKET),
            dir,
            table: table.into(),
            token: None,
            timeout: DEFAULT_TIMEOUT,
            max_reply: None,
            wait: Duration::ZERO,
        }
    }

    /// The value of `key` (`None`: absent in Redis), filling on a miss.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, FillError> {
        let mut out = Vec::new();
        Ok(match self.get_into(key, &mut out)? {
            Got::Value(_) => Some(out),
            Got::Absent(_) => None,
        })
    }

    /// Copy the value of `key` into `out` (resized to it; emptied for [`Got::Absent`]). A hit
    /// in shared memory makes no system call and, once `out` held the largest value, no
    /// allocation. On a miss, asks the sidecar to fill, then reads the table again (see the
    /// [module docs](self) for what is returned and why it is never older than the sidecar's
    /// reply).
    pub fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> Result<Got, FillError> {
        match lookup_into(&self.reader, key, out)? {
            Cached::Value => return Ok(Got::Value(Source::Table)),
            Cached::Absent => return Ok(Got::Absent(Source::Table)),
            Cached::NotCached => {}
        }
        let reply = self.client.fill(key)?;
        match lookup_into(&self.reader, key, out)? {
            Cached::Value => Ok(Got::Value(Source::Filled)),
            Cached::Absent => Ok(Got::Absent(Source::Filled)),
            Cached::NotCached => match reply {
                Some(v) => {
                    *out = v;
                    Ok(Got::Value(Source::Reply))
                }
                None => Ok(Got::Absent(Source::Reply)),
            },
        }
    }

    /// What the table holds for `key` now, without filling: no system call.
    pub fn cached(&self, key: &[u8], out: &mut Vec<u8>) -> Result<Cached, GetError> {
        lookup_into(&self.reader, key, out)
    }

    /// The table reader (statistics, [`TableReader::file_replaced`]).
    pub fn reader(&self) -> &TableReader {
        &self.reader
    }

    /// Open the table file again (after [`TableReader::file_replaced`]); see
    /// [`TableReader::reopen`].
    pub fn reopen(&mut self, timeout: Duration) -> Result<(), OpenError> {
        self.reader.reopen(timeout)
    }

    /// The sidecar's socket.
    pub fn socket(&self) -> &Path {
        &self.client.socket
    }
}

enum Token {
    Fixed(String),
    /// Read at open and after a 401.
    File {
        path: PathBuf,
        current: Mutex<String>,
    },
}

fn check_token(t: &str) -> Result<(), NearOpenError> {
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(NearOpenError::BadToken);
    }
    Ok(())
}

impl Token {
    /// Check a fixed token; (re-)read a file.
    fn load(&self) -> Result<(), NearOpenError> {
        match self {
            Token::Fixed(t) => check_token(t),
            Token::File { path, current } => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| NearOpenError::TokenFile { path: path.clone(), source })?;
                let t = text.trim();
                check_token(t)?;
                *current.lock().unwrap_or_else(|p| p.into_inner()) = t.to_string();
                Ok(())
            }
        }
    }

    fn get(&self) -> String {
        match self {
            Token::Fixed(t) => t.clone(),
            Token::File { current, .. } => current.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

/// The fill client: one HTTP/1.1 request per connection on the sidecar's Unix socket.
struct Client {
    socket: PathBuf,
    table: String,
    token: Option<Token>,
    timeout: Duration,
    max_reply: usize,
}

/// A parsed response.
struct Response {
    status: u16,
    /// `X-Podcache-Source` was present: the table mirrors Redis.
    mirrored: bool,
    body: Vec<u8>,
}

impl Client {
    /// Ask the sidecar for `key`: `Some(value)`, or `None` for a key absent in Redis.
    fn fill(&self, key: &[u8]) -> Result<Option<Vec<u8>>, FillError> {
        let key = std::str::from_utf8(key).map_err(|_| FillError::BadKey("not UTF-8"))?;
        if key.is_empty() {
            return Err(FillError::BadKey("empty"));
        }
        if key.len() > MAX_KEY {
            return Err(FillError::BadKey("longer than 255 bytes"));
        }
        // One deadline for the whole fill, a retry included.
        let deadline = Instant::now() + self.timeout;
        let mut resp = self.request(key, deadline)?;
        if resp.status == 401 {
            // A rotated Secret: read the file again and retry once.
            if let Some(t @ Token::File { .. }) = &self.token {
                if t.load().is_ok() {
                    resp = self.request(key, deadline)?;
                }
            }
        }
        match (resp.status, resp.mirrored) {
            (200, true) => Ok(Some(resp.body)),
            (404, true) => Ok(None),
            (200 | 404, false) => Err(FillError::NotMirrored { table: self.table.clone() }),
            (401, _) => Err(FillError::Unauthorized),
            (status, _) => {
                let (code, message) = error_fields(&resp.body);
                Err(match code.as_str() {
                    "upstream_unavailable" => FillError::UpstreamUnavailable(message),
                    "upstream_error" => FillError::Upstream(message),
                    _ => FillError::Refused { status, code, message },
                })
            }
        }
    }

    fn request(&self, key: &str, deadline: Instant) -> Result<Response, FillError> {
        let mut s = self.connect(deadline)?;
        let mut req = format!("GET /v1/tables/{}/keys/", self.table);
        encode_segment(key, &mut req);
        req.push_str(" HTTP/1.1\r\nHost: localhost\r\nUser-Agent: podcache-reader\r\nConnection: close\r\n");
        if let Some(t) = &self.token {
            req.push_str("Authorization: Bearer ");
            req.push_str(&t.get());
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        s.set_write_timeout(Some(self.remaining(deadline)?)).map_err(FillError::Io)?;
        s.write_all(req.as_bytes()).map_err(|e| self.io_err(e))?;
        read_response(&mut s, self.max_reply, || self.remaining(deadline)).map_err(|e| match e {
            FillError::Io(e) => self.io_err(e),
            e => e,
        })
    }

    /// Connect, bounded by the deadline. A blocking `connect` on a Unix socket whose listener
    /// has a full backlog waits for room (the sidecar may be stopped): `SO_SNDTIMEO` set before
    /// it bounds that wait (Linux `unix_stream_connect`), which `UnixStream::connect` cannot do.
    fn connect(&self, deadline: Instant) -> Result<UnixStream, FillError> {
        use rustix::net::{sockopt, AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
        let down = |e: rustix::io::Errno| FillError::SidecarDown { socket: self.socket.clone(), source: e.into() };
        let fd = rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)
            .map_err(|e| FillError::Io(e.into()))?;
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(self.remaining(deadline)?))
            .map_err(|e| FillError::Io(e.into()))?;
        let addr = SocketAddrUnix::new(self.socket.as_path()).map_err(down)?;
        match rustix::net::connect(&fd, &addr) {
            Ok(()) => Ok(UnixStream::from(fd)),
            Err(rustix::io::Errno::AGAIN) => {
                Err(FillError::Timeout { socket: self.socket.clone(), after: self.timeout })
            }
            Err(rustix::io::Errno::INTR) => Err(FillError::Io(rustix::io::Errno::INTR.into())),
            Err(e) => Err(down(e)),
        }
    }

    fn remaining(&self, deadline: Instant) -> Result<Duration, FillError> {
        // At least 1 ms: a zero socket timeout would mean "none".
        match deadline.checked_duration_since(Instant::now()) {
            Some(d) if d >= Duration::from_millis(1) => Ok(d),
            _ => Err(FillError::Timeout { socket: self.socket.clone(), after: self.timeout }),
        }
    }

    fn io_err(&self, e: std::io::Error) -> FillError {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                FillError::Timeout { socket: self.socket.clone(), after: self.timeout }
            }
            _ => FillError::Io(e),
        }
    }
}

/// Percent-encode `s` as one path segment (everything but unreserved characters).
fn encode_segment(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.extend(['%', HEX[usize::from(b >> 4)] as char, HEX[usize::from(b & 15)] as char]);
        }
    }
}

/// Read one response: a head of at most [`MAX_HEAD`] bytes, then a `Content-Length` body of at
/// most `max_reply` bytes (200) or [`MAX_ERROR_BODY`] (errors). `remaining` gives the time left
/// before each read.
fn read_response(
    s: &mut UnixStream,
    max_reply: usize,
    remaining: impl Fn() -> Result<Duration, FillError>,
) -> Result<Response, FillError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(FillError::Protocol("response head over 16 KiB"));
        }
        s.set_read_timeout(Some(remaining()?)).map_err(FillError::Io)?;
        match s.read(&mut chunk).map_err(FillError::Io)? {
            0 => return Err(FillError::Protocol("connection closed before the response head ended")),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    };
    if head_end > MAX_HEAD {
        return Err(FillError::Protocol("response head over 16 KiB"));
    }
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| FillError::Protocol("response head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if !version.starts_with("HTTP/1.") || code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FillError::Protocol("bad status line"));
    }
    let status: u16 = code.parse().map_err(|_| FillError::Protocol("bad status line"))?;
    if status < 200 {
        return Err(FillError::Protocol("interim (1xx) response"));
    }
    let (mut len, mut mirrored) = (None::<u64>, false);
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(FillError::Protocol("header line without a colon"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = (!value.is_empty() && value.len() <= 19 && value.bytes().all(|b| b.is_ascii_digit()))
                .then(|| value.parse::<u64>().ok())
                .flatten()
                .ok_or(FillError::Protocol("bad Content-Length"))?;
            if len.is_some_and(|l| l != n) {
                return Err(FillError::Protocol("conflicting Content-Length headers"));
            }
            len = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(FillError::Protocol("Transfer-Encoding is not supported"));
        } else if name.eq_ignore_ascii_case("x-podcache-source") {
            mirrored = true;
        }
    }
    let len = len.ok_or(FillError::Protocol("no Content-Length"))?;
    let max = if status == 200 { max_reply } else { MAX_ERROR_BODY };
    if len > max as u64 {
        return Err(FillError::ReplyTooLarge { len, max });
    }
    let len = len as usize; // <= max, a usize
    let mut body = buf.split_off(head_end + 4);
    if body.len() > len {
        return Err(FillError::Protocol("more bytes than Content-Length"));
    }
    body.reserve_exact(len - body.len());
    while body.len() < len {
        s.set_read_timeout(Some(remaining()?)).map_err(FillError::Io)?;
        let want = (len - body.len()).min(chunk.len());
        match s.read(&mut chunk[..want]).map_err(FillError::Io)? {
            0 => return Err(FillError::Protocol("connection closed before the body ended")),
            n => body.extend_from_slice(&chunk[..n]),
        }
    }
    Ok(Response { status, mirrored, body })
}

/// `code` and `message` of the sidecar's error body `{"error":{"code":"...","message":"..."}}`
/// (best effort: the body is only used in the error, never trusted further).
fn error_fields(body: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(body);
    let field = |name: &str| -> Option<String> {
        let start = text.find(&format!("\"{name}\":\""))? + name.len() + 4;
        let mut out = String::new();
        let mut chars = text[start..].chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Some(out),
                '\\' => out.push(chars.next()?),
                c => out.push(c),
            }
            if out.len() > 512 {
                return Some(out);
            }
        }
        None
    };
    let code = field("code").unwrap_or_default();
    let message = field("message").unwrap_or_else(|| text.chars().take(200).collect());
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn respond(raw: &'static [u8], max_reply: usize) -> Result<Response, FillError> {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let _ = b.write_all(raw);
        });
        let r = read_response(&mut a, max_reply, || Ok(Duration::from_secs(10)));
        t.join().unwrap();
        r
    }

    #[test]
    fn reads_well_formed_responses() {
        let r = respond(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-podcache-source: table\r\n\r\nabc", 10).unwrap();
        assert_eq!((r.status, r.mirrored, r.body.as_slice()), (200, true, &b"abc"[..]));
        let r = respond(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 10).unwrap();
        assert_eq!((r.status, r.mirrored, r.body.len()), (404, false, 0));
    }

    #[test]
    fn refuses_hostile_responses() {
        let protocol = |raw: &'static [u8]| matches!(respond(raw, 10), Err(FillError::Protocol(_)));
        assert!(protocol(b""));
        assert!(protocol(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nab"), "truncated body");
        assert!(protocol(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nab"), "extra bytes");
        assert!(protocol(b"HTTP/1.1 200 OK\r\n\r\nabc"), "no length");
        assert!(protocol(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"));
        assert!(protocol(b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n"));
        assert!(protocol(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab"));
        assert!(protocol(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"));
        assert!(protocol(b"HTTP/1.1 100 Continue\r\n\r\n"));
        assert!(protocol(b"SSH-2.0 hello\r\n\r\n"));
        assert!(protocol(b"HTTP/1.1 2000 OK\r\n\r\n"));
        assert!(protocol(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"));
        let huge: &'static [u8] = Box::leak([b"HTTP/1.1 200 OK\r\nx: ".as_slice(), &[b'a'; 40_000]].concat().into());
        assert!(protocol(huge), "endless head");
        assert!(matches!(
            respond(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n", 10),
            Err(FillError::ReplyTooLarge { len: 11, max: 10 })
        ));
        // An error body is bounded by its own limit, not the value limit.
        assert!(matches!(
            respond(b"HTTP/1.1 503 x\r\ncontent-length: 70000\r\n\r\n", 1 << 20),
            Err(FillError::ReplyTooLarge { len: 70000, .. })
        ));
    }

    #[test]
    fn error_bodies() {
        let (code, message) =
            error_fields(br#"{"error":{"code":"upstream_unavailable","message":"no \"Redis\" here"}}"#);
        assert_eq!((code.as_str(), message.as_str()), ("upstream_unavailable", "no \"Redis\" here"));
        assert_eq!(error_fields(b"not json"), (String::new(), "not json".to_string()));
        assert_eq!(error_fields(br#"{"code":"x"#).0, "");
    }

    #[test]
    fn keys_are_percent_encoded() {
        let mut s = String::new();
        encode_segment("a b/\r\n%ü~", &mut s);
        assert_eq!(s, "a%20b%2F%0D%0A%25%C3%BC~");
    }

    fn client(socket: PathBuf, timeout: Duration) -> Client {
        Client { socket, table: "t".into(), token: None, timeout, max_reply: 1 << 20 }
    }

    /// A socket file nobody listens on (a killed sidecar leaves one) and a missing one are
    /// `SidecarDown` at once.
    #[test]
    fn a_sidecar_that_is_down_is_an_error_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let c = client(path.clone(), Duration::from_secs(600));
        assert!(matches!(c.fill(b"k"), Err(FillError::SidecarDown { .. })));
        drop(UnixListener::bind(&path).unwrap()); // the file stays, nobody listens
        let e = c.fill(b"k").unwrap_err();
        assert!(
            matches!(&e, FillError::SidecarDown { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused)
        );
        assert!(e.to_string().contains("s.sock"), "{e}");
        assert!(matches!(c.fill(&[0xff]), Err(FillError::BadKey(_))));
        assert!(matches!(c.fill(b""), Err(FillError::BadKey(_))));
    }

    /// A listener that never accepts (a stopped sidecar) and one whose backlog is full (where a
    /// blocking connect would wait for ever) both end in `Timeout`.
    #[test]
    fn a_listener_that_never_answers_times_out() {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let l = rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None).unwrap();
        rustix::net::bind(&l, &SocketAddrUnix::new(path.as_path()).unwrap()).unwrap();
        rustix::net::listen(&l, 0).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let c = client(path, Duration::from_millis(100));
            // The first connections fill the backlog and wait for a reply; the later ones wait
            // to connect.
            let r: Vec<_> = (0..4).map(|_| c.fill(b"k")).collect();
            let _ = tx.send(r);
        });
        let results = rx.recv_timeout(Duration::from_secs(60)).expect("fills end (watchdog)");
        for r in results {
            assert!(matches!(r, Err(FillError::Timeout { .. })), "{r:?}");
        }
        drop(l);
    }
}

//! The tracking connection: one task that owns the socket, sends fills and writes, and applies
//! every reply and invalidation to the tables in the order it reads them (`docs/design.md` §10).

use super::resp::{self, Frame, Limits};
use super::{negative_key, Addr, Guard, Mirror, NearStats, UpstreamConfig};
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

/// Why an upstream request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamError {
    /// No connection to Redis now (connecting, or lost while the request was in flight).
    Unavailable(String),
    /// Redis answered with an error (e.g. `WRONGTYPE`).
    Redis(String),
    /// The sidecar is shutting down.
    ShuttingDown,
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Unavailable(why) => write!(f, "upstream Redis unavailable: {why}"),
            UpstreamError::Redis(msg) => write!(f, "upstream Redis error: {msg}"),
            UpstreamError::ShuttingDown => f.write_str("the server is shutting down"),
        }
    }
}

impl std::error::Error for UpstreamError {}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, UpstreamError>>;

/// A request from a handler to the connection task. `asking` (Redis Cluster): the request
/// follows an `ASK` redirection, so it is sent after `ASKING`, and a fill is answered but not
/// stored (the slot is being migrated; nothing tracks the key on this node for us).
pub(crate) enum Request {
    Fill { mirror: usize, key: Vec<u8>, asking: bool, reply: Reply<Option<Vec<u8>>> },
    Set { mirror: usize, key: Vec<u8>, value: Vec<u8>, ttl: Option<Duration>, asking: bool, reply: Reply<()> },
    Del { mirror: usize, key: Vec<u8>, asking: bool, reply: Reply<bool> },
}

/// What the next reply on the wire answers.
enum Expect {
    /// `CLIENT CACHING`, `MULTI`, `ASKING`: anything but an error.
    Ok(&'static str),
    /// `QUEUED` for a command of fill `id`'s transaction; an error (e.g. a Redis Cluster
    /// `MOVED`) is kept for the fill's callers, and the `EXEC` then answers `EXECABORT`.
    Queued(u64),
    /// The `EXEC` of a fill: `[PTTL, GET]`. `epoch`: [`Guard`]'s epoch when it was sent;
    /// `store`: whether the answer may be stored (false after `ASK`).
    Fill {
        id: u64,
        mirror: usize,
        key: Vec<u8>,
        epoch: u64,
        store: bool,
    },
    Set {
        mirror: usize,
        key: Vec<u8>,
        reply: Reply<()>,
    },
    Del {
        mirror: usize,
        key: Vec<u8>,
        reply: Reply<bool>,
    },
    Ping,
}

/// Why a connection ended.
enum End {
    Lost(String),
    Shutdown,
}

pub(super) type Stream = Box<dyn AsyncReadWrite>;
pub(super) trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncReadWrite for T {}

pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Name the connection carries in `CLIENT LIST`.
pub(crate) const CLIENT_NAME: &str = "podcache-near";

pub(crate) struct Task {
    cfg: UpstreamConfig,
    /// The node this task connects to (a Redis Cluster master, or the one upstream).
    addr: Addr,
    /// Reconnect after a loss (one upstream); `false`: end, and let the cluster task decide.
    reconnect: bool,
    guard: Arc<Guard>,
    password: Option<String>,
    mirrors: Vec<Arc<Mirror>>,
    rx: mpsc::Receiver<Request>,
    stats: Arc<NearStats>,
    limits: Limits,
    /// Replies expected, in wire order, with when each request was sent.
    pending: VecDeque<(Instant, Expect)>,
    /// Fills in flight by id, with every caller waiting for each.
    fills: HashMap<u64, Vec<Reply<Option<Vec<u8>>>>>,
    /// The fill a new miss on (mirror, table key) may join. A write through this connection
    /// detaches the key: a fill sent before the write must not answer a get made after it.
    joinable: HashMap<(usize, Vec<u8>), u64>,
    /// The first error a queued command of a fill got, by fill id.
    queued_errors: HashMap<u64, Vec<u8>>,
    next_fill: u64,
}

impl Task {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: UpstreamConfig,
        addr: Addr,
        reconnect: bool,
        guard: Arc<Guard>,
        password: Option<String>,
        mirrors: Vec<Arc<Mirror>>,
        rx: mpsc::Receiver<Request>,
        stats: Arc<NearStats>,
    ) -> Task {
        Task {
            cfg,
            addr,
            reconnect,
            guard,
            password,
            mirrors,
            rx,
            stats,
            limits: Limits::default(),
            pending: VecDeque::new(),
            fills: HashMap::new(),
            joinable: HashMap::new(),
            queued_errors: HashMap::new(),
            next_fill: 0,
        }
    }

    /// Connect, serve, and on any loss clear the tables and reconnect with backoff, until
    /// `shutdown` turns true. Without `reconnect` (a Redis Cluster master), the first loss (or
    /// failed connect) ends the task, after the tables are cleared and the requests in flight
    /// are failed; requests still queued were never sent and are dropped, which tells their
    /// callers to route them again. With `max_stale` (one Redis), a loss leaves the tables as
    /// they are until `max_stale` runs out or the next connection clears them.
    pub(crate) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        if !self.reconnect {
            // Dropping `self` drops the queued requests (see `cluster::Handle::ask`).
            self.run_once(&mut shutdown).await;
            return;
        }
        // The tables may hold what an earlier sidecar filled (emptyDir outlives a container):
        // clear them now, not at the first successful connect, which may be a long way off
        // when Redis is down.
        self.flush_tables();
        let mut backoff = BACKOFF_MIN;
        // With `max_stale`: when the tables must be cleared after a loss, unless a connection
        // (which clears them) comes first.
        let mut stale: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let connected = {
                let connect = self.connect();
                tokio::pin!(connect);
                loop {
                    tokio::select! {
                        c = &mut connect => break c,
                        _ = stopped(&mut shutdown) => {
                            self.flush_tables();
                            return;
                        }
                        _ = expired(&mut stale) => self.stale_expired(&mut stale),
                    }
                }
            };
            match connected {
                Ok((stream, buf)) => {
                    backoff = BACKOFF_MIN;
                    // A table may hold entries filled by an earlier connection (or an earlier
                    // sidecar) whose tracking is gone: nothing in it can be vouched for.
                    self.flush_tables();
                    stale = None;
                    self.stats.connected.fetch_add(1, Ordering::Relaxed);
                    NearStats::inc(&self.stats.connects);
                    tracing::info!(upstream = ?self.addr, "near cache: connected to Redis, tracking on");
                    let end = self.serve(stream, buf, &mut shutdown).await;
                    self.stats.connected.fetch_sub(1, Ordering::Relaxed);
                    let why = match end {
                        End::Shutdown => {
                            self.flush_tables();
                            self.fail_all(&UpstreamError::ShuttingDown);
                            return;
                        }
                        End::Lost(why) => why,
                    };
                    // Clear first, then fail the callers: no caller is answered while the table
                    // still holds what the lost connection can no longer vouch for. Unless the
                    // operator chose `max_stale`: then readers keep the last values that long.
                    match self.cfg.max_stale {
                        Some(d) => {
                            stale = Some(Box::pin(tokio::time::sleep(d)));
                            tracing::warn!(
                                upstream = ?self.addr, max_stale = ?d,
                                "near cache: connection lost ({why}); tables kept for at most max_stale"
                            );
                        }
                        None => {
                            self.flush_tables();
                            tracing::warn!(upstream = ?self.addr, "near cache: connection lost ({why}); tables cleared");
                        }
                    }
                    self.fail_all(&UpstreamError::Unavailable(why));
                }
                Err(why) => {
                    tracing::warn!(upstream = ?self.addr, retry_in = ?backoff, "near cache: cannot connect: {why}");
                }
            }
            // Back off, answering requests at once meanwhile.
            let wake = tokio::time::sleep(backoff);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    _ = &mut wake => break,
                    _ = stopped(&mut shutdown) => {
                        self.flush_tables();
                        return;
                    }
                    _ = expired(&mut stale) => self.stale_expired(&mut stale),
                    r = self.rx.recv() => match r {
                        Some(r) => refuse(r, &UpstreamError::Unavailable("not connected to Redis".into())),
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// `max_stale` ran out while disconnected: clear now.
    fn stale_expired(&self, stale: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
        *stale = None;
        self.flush_tables();
        tracing::warn!(upstream = ?self.addr, "near cache: still disconnected after max_stale; tables cleared");
    }

    /// One connection (a Redis Cluster master): connect, serve until lost or shutdown, clear
    /// the tables, fail the callers.
    async fn run_once(&mut self, shutdown: &mut watch::Receiver<bool>) {
        let connected = tokio::select! {
            c = self.connect() => c,
            _ = stopped(shutdown) => return,
        };
        let (stream, buf) = match connected {
            Ok(c) => c,
            Err(why) => {
                tracing::warn!(upstream = ?self.addr, "near cache: cannot connect to a cluster node: {why}");
                return;
            }
        };
        // No clear here: the cluster task cleared the tables before it started this topology's
        // connections, so what they hold was filled through one of them, which tracks it.
        self.stats.connected.fetch_add(1, Ordering::Relaxed);
        NearStats::inc(&self.stats.connects);
        tracing::info!(upstream = ?self.addr, "near cache: connected to a Redis Cluster master, tracking on");
        let end = self.serve(stream, buf, shutdown).await;
        self.stats.connected.fetch_sub(1, Ordering::Relaxed);
        self.flush_tables();
        let e = match end {
            End::Shutdown => UpstreamError::Unavailable("the connection to this Redis Cluster node was closed".into()),
            End::Lost(why) => {
                tracing::warn!(upstream = ?self.addr, "near cache: connection to a cluster master lost ({why}); tables cleared");
                UpstreamError::Unavailable(why)
            }
        };
        self.fail_all(&e);
    }

    fn flush_tables(&self) {
        super::flush(&self.guard, &self.mirrors, &self.stats);
    }

    fn fail_all(&mut self, e: &UpstreamError) {
        for (_, exp) in self.pending.drain(..) {
            match exp {
                Expect::Set { reply, .. } => {
                    let _ = reply.send(Err(e.clone()));
                }
                Expect::Del { reply, .. } => {
                    let _ = reply.send(Err(e.clone()));
                }
                Expect::Ok(_) | Expect::Queued(_) | Expect::Fill { .. } | Expect::Ping => {}
            }
        }
        self.joinable.clear();
        self.queued_errors.clear();
        for (_, waiters) in self.fills.drain() {
            for w in waiters {
                let _ = w.send(Err(e.clone()));
            }
        }
    }

    /// Open the socket and do the handshake (`HELLO 3`, `CLIENT TRACKING ON OPTIN`).
    async fn connect(&self) -> Result<(Stream, Vec<u8>), String> {
        let tracking: Vec<&[u8]> = vec![b"OPTIN"];
        open(&self.cfg, &self.addr, self.password.as_deref(), CLIENT_NAME, &tracking, &self.limits).await
    }

    /// Serve one connection until it is lost or shutdown.
    async fn serve(&mut self, stream: Stream, mut buf: Vec<u8>, shutdown: &mut watch::Receiver<bool>) -> End {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut tick = tokio::time::interval(self.cfg.ping_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut out = Vec::new();
        // Frames that came with the handshake's last reply.
        if let Err(why) = self.drain_frames(&mut buf) {
            return End::Lost(why);
        }
        loop {
            tokio::select! {
                _ = stopped(shutdown) => return End::Shutdown,
                r = self.rx.recv() => {
                    let Some(r) = r else { return End::Shutdown };
                    self.request(r, &mut out);
                    // Batch whatever else is queued into the same write.
                    while out.len() < 64 << 10 {
                        match self.rx.try_recv() {
                            Ok(r) => self.request(r, &mut out),
                            Err(_) => break,
                        }
                    }
                    if !out.is_empty() {
                        match tokio::time::timeout(self.cfg.ping_timeout, wr.write_all(&out)).await {
                            Ok(Ok(())) => out.clear(),
                            Ok(Err(e)) => return End::Lost(format!("write: {e}")),
                            Err(_) => return End::Lost("write timed out".into()),
                        }
                    }
                }
                n = rd.read_buf(&mut buf) => {
                    match n {
                        Ok(0) => return End::Lost("closed by Redis".into()),
                        Ok(_) => {}
                        Err(e) => return End::Lost(format!("read: {e}")),
                    }
                    if let Err(why) = self.drain_frames(&mut buf) {
                        return End::Lost(why);
                    }
                }
                _ = tick.tick() => {
                    if let Some((sent, _)) = self.pending.front() {
                        if sent.elapsed() > self.cfg.ping_timeout {
                            return End::Lost(format!("no reply within {:?}", self.cfg.ping_timeout));
                        }
                    } else {
                        resp::encode(&mut out, &[b"PING"]);
                        self.pending.push_back((Instant::now(), Expect::Ping));
                        match tokio::time::timeout(self.cfg.ping_timeout, wr.write_all(&out)).await {
                            Ok(Ok(())) => out.clear(),
                            Ok(Err(e)) => return End::Lost(format!("write: {e}")),
                            Err(_) => return End::Lost("write timed out".into()),
                        }
                    }
                }
            }
        }
    }

    /// Parse and apply every whole frame in `buf`.
    fn drain_frames(&mut self, buf: &mut Vec<u8>) -> Result<(), String> {
        let mut at = 0;
        let result = loop {
            match resp::parse(&buf[at..], &self.limits) {
                Ok(Some((f, used))) => {
                    at += used;
                    if let Err(why) = self.frame(f) {
                        break Err(why);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(format!("protocol error: {e}")),
            }
        };
        buf.drain(..at);
        result
    }

    /// Queue the commands of a request in `out`.
    fn request(&mut self, r: Request, out: &mut Vec<u8>) {
        let now = Instant::now();
        match r {
            Request::Fill { mirror, key, asking, reply } => {
                let joined = match self.joinable.get(&(mirror, key.clone())).and_then(|id| self.fills.get_mut(id)) {
                    Some(waiters) if !asking => {
                        waiters.push(reply);
                        None
                    }
                    _ => Some(reply),
                };
                if let Some(reply) = joined {
                    let id = self.next_fill;
                    self.next_fill += 1;
                    let rk = self.mirrors[mirror].redis_key(&key);
                    if asking {
                        // CLIENT CACHING and ASKING each apply to the next command only, so
                        // an ASK-redirected fill is not tracked, and not stored.
                        resp::encode(out, &[b"ASKING"]);
                        self.pending.push_back((now, Expect::Ok("ASKING")));
                    } else {
                        resp::encode(out, &[b"CLIENT", b"CACHING", b"YES"]);
                        self.pending.push_back((now, Expect::Ok("CLIENT CACHING YES")));
                    }
                    resp::encode(out, &[b"MULTI"]);
                    resp::encode(out, &[b"PTTL", &rk]);
                    resp::encode(out, &[b"GET", &rk]);
                    resp::encode(out, &[b"EXEC"]);
                    self.pending.push_back((now, Expect::Ok("MULTI")));
                    self.pending.push_back((now, Expect::Queued(id)));
                    self.pending.push_back((now, Expect::Queued(id)));
                    // Relaxed: compared under the table's writer lock in `store_fill`, which
                    // orders it against `flush` (see `Guard`).
                    let epoch = self.guard.epoch.load(Ordering::Relaxed);
                    self.pending.push_back((now, Expect::Fill { id, mirror, key: key.clone(), epoch, store: !asking }));
                    self.fills.insert(id, vec![reply]);
                    if !asking {
                        self.joinable.insert((mirror, key), id);
                    }
                    NearStats::inc(&self.stats.fills);
                }
                NearStats::inc(&self.stats.misses);
            }
            Request::Set { mirror, key, value, ttl, asking, reply } => {
                let rk = self.mirrors[mirror].redis_key(&key);
                if asking {
                    resp::encode(out, &[b"ASKING"]);
                    self.pending.push_back((now, Expect::Ok("ASKING")));
                }
                match ttl {
                    Some(t) => {
                        let ms = t.as_millis().max(1).to_string();
                        resp::encode(out, &[b"SET", &rk, &value, b"PX", ms.as_bytes()]);
                    }
                    None => resp::encode(out, &[b"SET", &rk, &value]),
                }
                self.joinable.remove(&(mirror, key.clone()));
                self.pending.push_back((now, Expect::Set { mirror, key, reply }));
                NearStats::inc(&self.stats.writes);
            }
            Request::Del { mirror, key, asking, reply } => {
                let rk = self.mirrors[mirror].redis_key(&key);
                if asking {
                    resp::encode(out, &[b"ASKING"]);
                    self.pending.push_back((now, Expect::Ok("ASKING")));
                }
                resp::encode(out, &[b"DEL", &rk]);
                self.joinable.remove(&(mirror, key.clone()));
                self.pending.push_back((now, Expect::Del { mirror, key, reply }));
                NearStats::inc(&self.stats.writes);
            }
        }
    }

    /// Apply one frame, in wire order. An error ends the connection.
    fn frame(&mut self, f: Frame) -> Result<(), String> {
        if let Frame::Push(items) = f {
            self.push(items);
            return Ok(());
        }
        let Some((sent, exp)) = self.pending.pop_front() else {
            return Err("a reply that answers no request".into());
        };
        if matches!(exp, Expect::Ping | Expect::Fill { .. } | Expect::Set { .. } | Expect::Del { .. }) {
            self.stats.observe_latency(sent);
        }
        match exp {
            Expect::Ok(what) => {
                if let Frame::Error(e) = f {
                    return Err(format!("{what}: {}", String::from_utf8_lossy(&e)));
                }
            }
            Expect::Ping => {}
            Expect::Queued(id) => {
                if let Frame::Error(e) = f {
                    self.queued_errors.entry(id).or_insert(e);
                }
            }
            Expect::Fill { id, mirror, key, epoch, store } => {
                let k = (mirror, key);
                if self.joinable.get(&k) == Some(&id) {
                    self.joinable.remove(&k);
                }
                let queued = self.queued_errors.remove(&id);
                let (result, lost) = match (fill_answer(f), queued) {
                    // A queued command was refused (e.g. MOVED): the EXEC answered EXECABORT.
                    (Ok(Err(_)), Some(e)) => {
                        (Err(UpstreamError::Redis(String::from_utf8_lossy(&e).into_owned())), None)
                    }
                    (Ok(Ok(_)), Some(_)) => {
                        let why = "protocol error: a transaction with a refused command was executed".to_string();
                        (Err(UpstreamError::Unavailable(why.clone())), Some(why))
                    }
                    (Ok(Ok((pttl, value))), None) if store => {
                        (self.store_fill(mirror, &k.1, pttl, value, sent, epoch), None)
                    }
                    (Ok(Ok((_, value))), None) => (Ok(value), None),
                    (Ok(Err(e)), None) => (Err(e), None),
                    (Err(why), _) => (Err(UpstreamError::Unavailable(why.clone())), Some(why)),
                };
                for w in self.fills.remove(&id).unwrap_or_default() {
                    let _ = w.send(result.clone());
                }
                if let Some(why) = lost {
                    return Err(why);
                }
            }
            Expect::Set { mirror, key, reply } => {
                let r = match f {
                    Frame::Error(e) => Err(UpstreamError::Redis(String::from_utf8_lossy(&e).into_owned())),
                    _ => {
                        self.mirrors[mirror].evict(&key);
                        self.mirrors[mirror].refetch(&key);
                        Ok(())
                    }
                };
                let _ = reply.send(r);
            }
            Expect::Del { mirror, key, reply } => {
                let r = match f {
                    Frame::Error(e) => Err(UpstreamError::Redis(String::from_utf8_lossy(&e).into_owned())),
                    Frame::Integer(n) => {
                        self.mirrors[mirror].evict(&key);
                        self.mirrors[mirror].refetch(&key);
                        Ok(n > 0)
                    }
                    other => return Err(format!("DEL answered {other:?}")),
                };
                let _ = reply.send(r);
            }
        }
        Ok(())
    }

    /// Store a fill's value (or a negative entry for `None`) with its local TTL; returns the
    /// value for the callers.
    fn store_fill(
        &self,
        mirror: usize,
        key: &[u8],
        pttl: i64,
        value: Option<Vec<u8>>,
        sent: Instant,
        epoch: u64,
    ) -> Result<Option<Vec<u8>>, UpstreamError> {
        let m = &self.mirrors[mirror];
        // A prefetched table is written only by its own connection (`prefetch.rs`), in that
        // connection's wire order: a read-through answer is passed on, not stored.
        if !super::cacheable(key) || m.prefetch.is_some() {
            return Ok(value);
        }
        // Local expiry: the Redis TTL less the time since the request left (Redis measured it
        // later than that), capped by max_ttl.
        let ttl = match pttl {
            t if t >= 0 => Some(Duration::from_millis(t as u64).saturating_sub(sent.elapsed())),
            _ => None,
        };
        let ttl = match (ttl, m.max_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if ttl.is_some_and(|t| t.as_millis() == 0) {
            return Ok(value);
        }
        let mut guard = m.table.writer();
        let Some(w) = guard.as_mut() else { return Ok(value) };
        // A flush since the fill was sent (a topology change, a lost connection elsewhere):
        // the fill may come from a node that no longer tracks the key for us. Answered, not
        // stored. Checked under the writer lock, which `flush` takes after bumping the epoch.
        // Relaxed: the lock orders it (see `Guard`).
        if self.guard.epoch.load(Ordering::Relaxed) != epoch {
            return Ok(value);
        }
        let nk = negative_key(key);
        match &value {
            Some(v) => {
                let stored = match ttl {
                    Some(t) => w.put_with_ttl(key, v.as_slice(), t).is_ok(),
                    None => w.put(key, v.as_slice()).is_ok(),
                };
                if !stored {
                    // Too large or no room: answered, not kept (and nothing older kept either).
                    w.delete(key);
                }
                if let Some(nk) = nk {
                    w.delete(&nk);
                }
            }
            None => {
                w.delete(key);
                if let Some(nk) = nk {
                    let stored = match ttl {
                        Some(t) => w.put_with_ttl(&nk, b"".as_slice(), t).is_ok(),
                        None => w.put(&nk, b"".as_slice()).is_ok(),
                    };
                    if stored {
                        NearStats::inc(&self.stats.negative_fills);
                    }
                }
            }
        }
        Ok(value)
    }

    /// An out-of-band push: `invalidate` with the keys (or null: everything) is applied now.
    fn push(&mut self, items: Vec<Frame>) {
        match invalidation(items, &self.stats) {
            None => {}
            Some(Some(keys)) => {
                for k in keys {
                    // A prefetched table follows its own (BCAST) connection's invalidations.
                    for m in self.mirrors.iter().filter(|m| m.prefetch.is_none()) {
                        if let Some(rel) = k.strip_prefix(m.prefix.as_slice()) {
                            m.evict(rel);
                        }
                    }
                }
            }
            // FLUSHALL / FLUSHDB (or anything we cannot read as a key list): drop everything.
            Some(None) => {
                tracing::info!("near cache: Redis invalidated every key (FLUSHALL/FLUSHDB); tables cleared");
                self.flush_tables();
            }
        }
    }
}

/// Open a socket to `addr` and do the handshake: `HELLO 3` (with `AUTH` and the client name
/// `name`), then `CLIENT TRACKING ON` followed by `tracking` (e.g. `OPTIN`, or `BCAST PREFIX p`).
pub(super) async fn open(
    cfg: &UpstreamConfig,
    addr: &Addr,
    password: Option<&str>,
    name: &str,
    tracking: &[&[u8]],
    limits: &Limits,
) -> Result<(Stream, Vec<u8>), String> {
    let t = cfg.ping_timeout;
    let mut stream: Stream = match addr {
        Addr::Tcp(hp) => {
            let s = tokio::time::timeout(t, tokio::net::TcpStream::connect(hp.as_str()))
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| e.to_string())?;
            let _ = s.set_nodelay(true);
            Box::new(s)
        }
        Addr::Unix(p) => Box::new(
            tokio::time::timeout(t, tokio::net::UnixStream::connect(p))
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| e.to_string())?,
        ),
        Addr::Cluster(_) => return Err("a connection task needs one node's address".into()),
    };
    let mut out = Vec::new();
    let mut hello: Vec<&[u8]> = vec![b"HELLO", b"3"];
    if let Some(pw) = &password {
        hello.extend([b"AUTH".as_slice(), cfg.user.as_deref().unwrap_or("default").as_bytes(), pw.as_bytes()]);
    }
    hello.extend([b"SETNAME".as_slice(), name.as_bytes()]);
    resp::encode(&mut out, &hello);
    let mut track: Vec<&[u8]> = vec![b"CLIENT", b"TRACKING", b"ON"];
    track.extend_from_slice(tracking);
    resp::encode(&mut out, &track);
    let mut buf = Vec::new();
    let handshake = async {
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        for what in ["HELLO 3", "CLIENT TRACKING ON"] {
            let f = loop {
                if let Some((f, used)) = resp::parse(&buf, limits).map_err(|e| e.to_string())? {
                    buf.drain(..used);
                    if matches!(f, Frame::Push(_)) {
                        continue;
                    }
                    break f;
                }
                if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                    return Err("connection closed during the handshake".to_string());
                }
            };
            if let Frame::Error(e) = f {
                return Err(format!("{what}: {}", String::from_utf8_lossy(&e)));
            }
        }
        Ok(())
    };
    tokio::time::timeout(t, handshake).await.map_err(|_| "handshake timed out".to_string())??;
    Ok((stream, buf))
}

/// Read an out-of-band push: `None` if it is not an `invalidate`; else the keys it names, or
/// `None` for a null list (`FLUSHALL`, `FLUSHDB`; also anything not readable as a key list).
/// Records the time and counts the keys in `stats`.
pub(super) fn invalidation(items: Vec<Frame>, stats: &NearStats) -> Option<Option<Vec<Vec<u8>>>> {
    let mut it = items.into_iter();
    if !matches!(it.next(), Some(Frame::Bulk(k) | Frame::Simple(k)) if k == b"invalidate") {
        return None;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    // Relaxed: a statistic.
    stats.last_invalidation_ms.store(now.as_millis() as u64, Ordering::Relaxed);
    let Some(Frame::Array(keys)) = it.next() else { return Some(None) };
    let keys: Vec<Vec<u8>> = keys
        .into_iter()
        .filter_map(|k| match k {
            Frame::Bulk(k) | Frame::Simple(k) => Some(k),
            _ => None,
        })
        .collect();
    // Relaxed: a statistic.
    stats.invalidations.fetch_add(keys.len() as u64, Ordering::Relaxed);
    Some(Some(keys))
}

/// The answer of a fill's `EXEC`: `[PTTL, GET]`. The outer `Err` is a protocol violation (an
/// answer of the wrong shape: the stream cannot be trusted any more), which ends the
/// connection; a Redis error reply (e.g. `WRONGTYPE`) is an answer for the callers.
type FillAnswer = Result<(i64, Option<Vec<u8>>), UpstreamError>;

fn fill_answer(f: Frame) -> Result<FillAnswer, String> {
    let redis_err = |e: &[u8]| Ok(Err(UpstreamError::Redis(String::from_utf8_lossy(e).into_owned())));
    let shape = |what: &dyn std::fmt::Debug| format!("protocol error: a fill was answered {what:?}");
    match f {
        Frame::Array(mut a) if a.len() == 2 => {
            let v = a.pop();
            let t = a.pop();
            match (t, v) {
                (Some(Frame::Integer(t)), Some(Frame::Bulk(v))) => Ok(Ok((t, Some(v)))),
                (Some(Frame::Integer(t)), Some(Frame::Null)) => Ok(Ok((t, None))),
                (_, Some(Frame::Error(e))) | (Some(Frame::Error(e)), _) => redis_err(&e),
                other => Err(shape(&other)),
            }
        }
        Frame::Error(e) => redis_err(&e),
        other => Err(shape(&other)),
    }
}

/// Until the `max_stale` deadline passes (never while there is none).
async fn expired(stale: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match stale {
        Some(s) => s.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Until `rx` turns true (the watch guard is dropped here, so callers stay `Send`).
pub(super) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn refuse(r: Request, e: &UpstreamError) {
    match r {
        Request::Fill { reply, .. } => {
            let _ = reply.send(Err(e.clone()));
        }
        Request::Set { reply, .. } => {
            let _ = reply.send(Err(e.clone()));
        }
        Request::Del { reply, .. } => {
            let _ = reply.send(Err(e.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_answers() {
        let b = |s: &str| Frame::Bulk(s.as_bytes().to_vec());
        assert_eq!(fill_answer(Frame::Array(vec![Frame::Integer(500), b("v")])), Ok(Ok((500, Some(b"v".to_vec())))));
        assert_eq!(fill_answer(Frame::Array(vec![Frame::Integer(-2), Frame::Null])), Ok(Ok((-2, None))));
        let wrongtype = Frame::Error(b"WRONGTYPE x".to_vec());
        assert!(matches!(
            fill_answer(Frame::Array(vec![Frame::Integer(-1), wrongtype])),
            Ok(Err(UpstreamError::Redis(m))) if m.starts_with("WRONGTYPE")
        ));
        // Wrong shapes end the connection: the stream is out of step or hostile.
        for bad in [
            Frame::Integer(1),
            Frame::Null,
            Frame::Array(vec![Frame::Integer(1)]),
            Frame::Array(vec![b("1"), b("v")]),
            Frame::Array(vec![Frame::Integer(1), Frame::Integer(2)]),
        ] {
            assert!(fill_answer(bad.clone()).is_err(), "{bad:?}");
        }
    }
}

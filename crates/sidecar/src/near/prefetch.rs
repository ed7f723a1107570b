//! Prefetch mode (`--prefetch TABLE=PREFIX`): every key under the prefix is loaded into the
//! table at start and kept in sync, so a reader finds every key without a first miss.
//!
//! **One connection, wire order.** The prefetch tables have their own connection, in
//! `CLIENT TRACKING ON BCAST PREFIX p ...` mode (one connection cannot mix BCAST and OPTIN).
//! It `SCAN`s each prefix and pipelines `PTTL k` + `GET k` for every key found; Redis pushes an
//! `invalidate` for every later change of a key under a tracked prefix, by anyone. This task
//! applies each reply and each push in the order it reads them from that one socket, and nothing
//! else writes the prefetch tables (the read-through connection answers misses on them without
//! storing). Redis appends a reply to the output buffer when it runs the command, and a BCAST
//! push after the write that caused it, so:
//!
//! - a value read before a change is followed on the wire by that change's push;
//! - a push is never followed by a reply computed before its change.
//!
//! A push evicts the key and fetches it again (`PTTL` + `GET`): the new value (or its absence) is
//! stored when its reply arrives, and any change after that read comes with a push after it.
//! That also covers keys created under the prefix (during the `SCAN` or later): `SCAN` may or may
//! not return a key created while it runs, but the creation's push always comes. A `PTTL` and a
//! `GET` that straddle a change are followed by its push too, which fetches again.
//!
//! **Loss and flush.** The tables are cleared when the task starts, when the connection is lost
//! (before anything else; `max_stale` does not apply to prefetched tables), and on a `FLUSHALL`
//! / `FLUSHDB` push (a null key list), then loaded again from the start. Replies of a load
//! interrupted by a flush are still applied (they were computed after it), but its `SCAN` is not
//! continued.
//!
//! **Readiness.** `/readyz` answers 503 until the first load of every prefetched table has
//! completed (the `PING` sent after the last `SCAN`'s fetches is answered); a later reload (after
//! a reconnect or `FLUSHALL`) does not take the Pod out of service, and reads that miss meanwhile
//! are answered from Redis.

use super::conn::{invalidation, open, stopped, Stream, BACKOFF_MAX, BACKOFF_MIN};
use super::resp::{self, Frame, Limits};
use super::{cacheable, Addr, Mirror, NearStats, UpstreamConfig};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Name the connection carries in `CLIENT LIST`.
pub(crate) const CLIENT_NAME: &str = "podcache-prefetch";

/// Keys asked of each `SCAN` (a hint to Redis).
const SCAN_COUNT: &[u8] = b"1000";

/// How often a load logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What the next reply on the wire answers. `usize`: a mirror's position in `Task::mirrors`.
enum Expect {
    /// `SCAN` of mirror `m` in load `gen`.
    Scan {
        m: usize,
        gen: u64,
    },
    /// `PTTL` of a key; the `GET` that follows uses it.
    Ttl,
    /// `GET` of table key `key` of mirror `m`.
    Get {
        m: usize,
        key: Vec<u8>,
    },
    /// The `PING` after load `gen`'s last fetch.
    Loaded {
        gen: u64,
    },
    Ping,
}

/// A load in progress.
struct Load {
    gen: u64,
    started: Instant,
    last_log: Instant,
    /// Keys the `SCAN`s returned so far.
    found: u64,
}

pub(crate) struct Task {
    cfg: UpstreamConfig,
    addr: Addr,
    password: Option<String>,
    /// The prefetched mirrors only.
    mirrors: Vec<Arc<Mirror>>,
    /// Refetch requests from the read-through connection, by `Mirror::index`.
    refetch: mpsc::UnboundedReceiver<(usize, Vec<u8>)>,
    stats: Arc<NearStats>,
    /// Set once the first load completed (`Near::prefetched`).
    ready: Arc<AtomicBool>,
    limits: Limits,
    pending: VecDeque<(Instant, Expect)>,
    /// The `PTTL` answer waiting for its `GET`.
    ttl: Option<i64>,
    load: Option<Load>,
    /// Load generation: a flush starts a new one, and `SCAN` replies of older ones are dropped.
    gen: u64,
    /// Fetches answered but not stored (too large, no room, not a string).
    not_stored: u64,
}

enum End {
    Lost(String),
    Shutdown,
}

impl Task {
    pub(crate) fn new(
        cfg: UpstreamConfig,
        addr: Addr,
        password: Option<String>,
        mirrors: Vec<Arc<Mirror>>,
        refetch: mpsc::UnboundedReceiver<(usize, Vec<u8>)>,
        stats: Arc<NearStats>,
        ready: Arc<AtomicBool>,
    ) -> Task {
        Task {
            cfg,
            addr,
            password,
            mirrors,
            refetch,
            stats,
            ready,
            limits: Limits::default(),
            pending: VecDeque::new(),
            ttl: None,
            load: None,
            gen: 0,
            not_stored: 0,
        }
    }

    /// Connect, load, follow; on a loss clear the tables and reconnect with backoff, until
    /// `shutdown` turns true.
    pub(crate) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        // What an earlier sidecar left in the tables (emptyDir outlives a container) is not
        // vouched for by anything.
        self.clear();
        let mut backoff = BACKOFF_MIN;
        loop {
            let connected = tokio::select! {
                c = self.connect() => c,
                _ = stopped(&mut shutdown) => return self.clear(),
            };
            match connected {
                Ok((stream, buf)) => {
                    backoff = BACKOFF_MIN;
                    tracing::info!(upstream = ?self.addr, "near cache: prefetch connection up (tracking BCAST); loading");
                    let end = self.serve(stream, buf, &mut shutdown).await;
                    self.clear();
                    self.pending.clear();
                    self.ttl = None;
                    self.load = None;
                    match end {
                        End::Shutdown => return,
                        End::Lost(why) => tracing::warn!(
                            upstream = ?self.addr,
                            "near cache: prefetch connection lost ({why}); prefetched tables cleared"
                        ),
                    }
                }
                Err(why) => {
                    tracing::warn!(upstream = ?self.addr, retry_in = ?backoff, "near cache: prefetch cannot connect: {why}");
                }
            }
            let wake = tokio::time::sleep(backoff);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    _ = &mut wake => break,
                    _ = stopped(&mut shutdown) => return self.clear(),
                    // Nothing to fetch into: the next load reads every key. `None`: the
                    // server (which holds the senders) is gone.
                    r = self.refetch.recv() => if r.is_none() { return self.clear() },
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Clear every prefetched table.
    fn clear(&self) {
        for m in &self.mirrors {
            m.clear();
        }
        NearStats::inc(&self.stats.flushes);
    }

    /// `HELLO 3`, then `CLIENT TRACKING ON BCAST` with every prefetched prefix (none: an empty
    /// prefix, the whole keyspace).
    async fn connect(&self) -> Result<(Stream, Vec<u8>), String> {
        let mut tracking: Vec<&[u8]> = vec![b"BCAST"];
        if self.mirrors.iter().all(|m| !m.prefix.is_empty()) {
            for m in &self.mirrors {
                tracking.extend([b"PREFIX".as_slice(), m.prefix.as_slice()]);
            }
        }
        open(&self.cfg, &self.addr, self.password.as_deref(), CLIENT_NAME, &tracking, &self.limits).await
    }

    /// Clear the tables and start loading every prefix from the first.
    fn start_load(&mut self, out: &mut Vec<u8>) {
        self.clear();
        self.gen += 1;
        let now = Instant::now();
        self.load = Some(Load { gen: self.gen, started: now, last_log: now, found: 0 });
        self.scan(0, b"0", out);
    }

    fn scan(&mut self, m: usize, cursor: &[u8], out: &mut Vec<u8>) {
        let pattern = glob_prefix(&self.mirrors[m].prefix);
        resp::encode(out, &[b"SCAN", cursor, b"MATCH", &pattern, b"COUNT", SCAN_COUNT]);
        self.pending.push_back((Instant::now(), Expect::Scan { m, gen: self.gen }));
    }

    /// Pipeline `PTTL` + `GET` of table key `key` of mirror `m`.
    fn fetch(&mut self, m: usize, key: Vec<u8>, out: &mut Vec<u8>) {
        let rk = self.mirrors[m].redis_key(&key);
        resp::encode(out, &[b"PTTL", &rk]);
        resp::encode(out, &[b"GET", &rk]);
        let now = Instant::now();
        self.pending.push_back((now, Expect::Ttl));
        self.pending.push_back((now, Expect::Get { m, key }));
        NearStats::inc(&self.stats.prefetched);
    }

    async fn serve(&mut self, stream: Stream, mut buf: Vec<u8>, shutdown: &mut watch::Receiver<bool>) -> End {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut tick = tokio::time::interval(self.cfg.ping_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut out = Vec::new();
        // Tracking is on before the first SCAN: every change from here on comes with a push.
        self.start_load(&mut out);
        loop {
            if let Err(why) = self.drain_frames(&mut buf, &mut out) {
                return End::Lost(why);
            }
            if !out.is_empty() {
                match tokio::time::timeout(self.cfg.ping_timeout, wr.write_all(&out)).await {
                    Ok(Ok(())) => out.clear(),
                    Ok(Err(e)) => return End::Lost(format!("write: {e}")),
                    Err(_) => return End::Lost("write timed out".into()),
                }
            }
            tokio::select! {
                _ = stopped(shutdown) => return End::Shutdown,
                n = rd.read_buf(&mut buf) => match n {
                    Ok(0) => return End::Lost("closed by Redis".into()),
                    Ok(_) => {}
                    Err(e) => return End::Lost(format!("read: {e}")),
                },
                r = self.refetch.recv() => match r {
                    Some((index, key)) => {
                        if let Some(m) = self.mirrors.iter().position(|m| m.index == index) {
                            self.fetch(m, key, &mut out);
                        }
                    }
                    None => return End::Shutdown,
                },
                _ = tick.tick() => {
                    if let Some((sent, _)) = self.pending.front() {
                        if sent.elapsed() > self.cfg.ping_timeout {
                            return End::Lost(format!("no reply within {:?}", self.cfg.ping_timeout));
                        }
                    } else {
                        resp::encode(&mut out, &[b"PING"]);
                        self.pending.push_back((Instant::now(), Expect::Ping));
                    }
                }
            }
        }
    }

    /// Parse and apply every whole frame in `buf`, queueing follow-up commands in `out`.
    fn drain_frames(&mut self, buf: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), String> {
        let mut at = 0;
        let result = loop {
            match resp::parse(&buf[at..], &self.limits) {
                Ok(Some((f, used))) => {
                    at += used;
                    if let Err(why) = self.frame(f, out) {
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

    /// Apply one frame, in wire order. An error ends the connection.
    fn frame(&mut self, f: Frame, out: &mut Vec<u8>) -> Result<(), String> {
        if let Frame::Push(items) = f {
            self.push(items, out);
            return Ok(());
        }
        let Some((sent, exp)) = self.pending.pop_front() else {
            return Err("a reply that answers no request".into());
        };
        if let Frame::Error(e) = &f {
            // A key of another type under the prefix answers WRONGTYPE: not mirrored.
            match exp {
                Expect::Ttl => {}
                Expect::Get { m, key } => {
                    self.mirrors[m].evict(&key);
                    self.not_stored += 1;
                }
                _ => return Err(format!("prefetch: Redis answered {}", String::from_utf8_lossy(e))),
            }
            self.ttl = None;
            return Ok(());
        }
        match exp {
            Expect::Ping => {}
            Expect::Ttl => match f {
                Frame::Integer(t) => self.ttl = Some(t),
                other => return Err(format!("PTTL answered {other:?}")),
            },
            Expect::Get { m, key } => {
                self.stats.observe_latency(sent);
                let pttl = self.ttl.take();
                match f {
                    Frame::Bulk(v) => self.store(m, &key, &v, pttl, sent),
                    Frame::Null => self.mirrors[m].evict(&key),
                    other => return Err(format!("GET answered {other:?}")),
                }
            }
            Expect::Scan { m, gen } => {
                let (cursor, keys) = scan_answer(f)?;
                if gen != self.gen {
                    // A flush started a new load: this one's keys are read again by it.
                    return Ok(());
                }
                let prefix_len = self.mirrors[m].prefix.len();
                let mut found = 0;
                for rk in keys {
                    let Some(key) = rk.get(prefix_len..).filter(|k| cacheable(k)) else { continue };
                    if rk.starts_with(&self.mirrors[m].prefix) {
                        self.fetch(m, key.to_vec(), out);
                        found += 1;
                    }
                }
                if let Some(load) = self.load.as_mut().filter(|l| l.gen == gen) {
                    load.found += found;
                    if load.last_log.elapsed() >= PROGRESS_EVERY {
                        load.last_log = Instant::now();
                        tracing::info!(
                            table = %self.mirrors[m].table.name,
                            keys = load.found,
                            "near cache: prefetch loading"
                        );
                    }
                }
                if cursor != b"0" {
                    self.scan(m, &cursor, out);
                } else if m + 1 < self.mirrors.len() {
                    self.scan(m + 1, b"0", out);
                } else {
                    // Answered after every fetch queued above: the load is complete then.
                    resp::encode(out, &[b"PING"]);
                    self.pending.push_back((Instant::now(), Expect::Loaded { gen }));
                }
            }
            Expect::Loaded { gen } => {
                if let Some(load) = self.load.take_if(|l| l.gen == gen) {
                    tracing::info!(
                        keys = load.found,
                        not_stored = self.not_stored,
                        elapsed = ?load.started.elapsed(),
                        "near cache: prefetch load complete"
                    );
                    // SYNC: Release, pairs with the Acquire in `Near::prefetched`: every key
                    // of the load is in the table before /readyz says ready.
                    self.ready.store(true, Ordering::Release);
                }
            }
        }
        Ok(())
    }

    /// Store a fetched value with the Redis TTL less the time since the request left.
    fn store(&mut self, m: usize, key: &[u8], value: &[u8], pttl: Option<i64>, sent: Instant) {
        let mirror = &self.mirrors[m];
        let ttl = match pttl {
            Some(t) if t >= 0 => Some(Duration::from_millis(t as u64).saturating_sub(sent.elapsed())),
            _ => None,
        };
        let mut guard = mirror.table.writer();
        let Some(w) = guard.as_mut() else { return };
        let stored = match ttl {
            Some(t) if t.as_millis() == 0 => false,
            Some(t) => w.put_with_ttl(key, value, t).is_ok(),
            None => w.put(key, value).is_ok(),
        };
        if !stored {
            // Too large, no room or already expired: not kept (and nothing older kept either).
            w.delete(key);
            self.not_stored += 1;
        }
    }

    /// An `invalidate` push: fetch each named key again; a null list (`FLUSHALL`, `FLUSHDB`):
    /// clear and load again.
    fn push(&mut self, items: Vec<Frame>, out: &mut Vec<u8>) {
        match invalidation(items, &self.stats) {
            None => {}
            Some(Some(keys)) => {
                for k in keys {
                    let Some(m) = self.mirrors.iter().position(|m| k.starts_with(&m.prefix)) else { continue };
                    let key = k[self.mirrors[m].prefix.len()..].to_vec();
                    if cacheable(&key) {
                        self.mirrors[m].evict(&key);
                        self.fetch(m, key, out);
                    }
                }
            }
            Some(None) => {
                tracing::info!(
                    "near cache: Redis invalidated every key (FLUSHALL/FLUSHDB); prefetched tables reloading"
                );
                self.start_load(out);
            }
        }
    }
}

/// A `SCAN MATCH` pattern for the keys that start with `prefix`: glob characters escaped.
fn glob_prefix(prefix: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(prefix.len() + 1);
    for &b in prefix {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            p.push(b'\\');
        }
        p.push(b);
    }
    p.push(b'*');
    p
}

/// The answer of a `SCAN`: `[cursor, [key...]]`.
fn scan_answer(f: Frame) -> Result<(Vec<u8>, Vec<Vec<u8>>), String> {
    let bad = |f: &dyn std::fmt::Debug| format!("SCAN answered {f:?}");
    let Frame::Array(mut a) = f else { return Err(bad(&f)) };
    if a.len() != 2 {
        return Err(bad(&a));
    }
    let keys = a.pop();
    let cursor = a.pop();
    match (cursor, keys) {
        (Some(Frame::Bulk(c) | Frame::Simple(c)), Some(Frame::Array(keys))) => {
            let keys = keys
                .into_iter()
                .map(|k| match k {
                    Frame::Bulk(k) | Frame::Simple(k) => Ok(k),
                    other => Err(bad(&other)),
                })
                .collect::<Result<_, _>>()?;
            Ok((c, keys))
        }
        other => Err(bad(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_prefix_escapes_glob_characters() {
        assert_eq!(glob_prefix(b"user:"), b"user:*");
        assert_eq!(glob_prefix(b""), b"*");
        assert_eq!(glob_prefix(b"a*b?[c]\\"), b"a\\*b\\?\\[c\\]\\\\*");
    }

    #[test]
    fn scan_answers() {
        let b = |s: &str| Frame::Bulk(s.as_bytes().to_vec());
        let (c, k) = scan_answer(Frame::Array(vec![b("17"), Frame::Array(vec![b("p:a"), b("p:b")])])).unwrap();
        assert_eq!((c, k), (b"17".to_vec(), vec![b"p:a".to_vec(), b"p:b".to_vec()]));
        for bad in [
            Frame::Null,
            Frame::Array(vec![b("0")]),
            Frame::Array(vec![Frame::Integer(0), Frame::Array(vec![])]),
            Frame::Array(vec![b("0"), Frame::Array(vec![Frame::Integer(1)])]),
        ] {
            assert!(scan_answer(bad.clone()).is_err(), "{bad:?}");
        }
    }
}

//! Near cache over Redis: a table that mirrors a key prefix of an upstream Redis, filled on a
//! miss and kept correct by Redis's server-assisted client tracking (RESP3 push invalidations).
//!
//! **Semantics.** Redis key `PREFIX + k` is table key `k`. A get on a mirrored table reads the
//! shared-memory table first; on a miss the sidecar fetches value and TTL from Redis in one
//! transaction on its tracking connection, stores them (or a negative entry for a key absent
//! upstream), and answers. Concurrent misses on one key share one upstream request. Every change
//! of a filled key in Redis — by anyone, including this sidecar's own write-through `PUT` and
//! `DELETE` — deletes the local copy when Redis's invalidation arrives; a lost connection clears
//! every mirrored table before anything else happens. See `docs/design.md` §10 for the ordering
//! argument and the staleness bounds.
//!
//! **Table encoding** (what a linked reader sees): a value under `k` is the Redis value, raw. A
//! key absent upstream is the key [`negative_key`]`(k)` = `0x00 + k` with an empty value. A key
//! that starts with `0x00` is never stored. [`lookup`] tells the three cases apart.

mod cluster;
mod conn;
pub(crate) mod http;
pub(crate) mod metrics;
mod prefetch;
pub mod resp;
pub mod slot;

use crate::config::parse_duration;
use crate::server::TableEntry;
use podcache_format::table::MAX_KEY;
use podcache_reader::{GetError, TableReader};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub use conn::UpstreamError;

/// Where the upstream Redis listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    /// `host:port`.
    Tcp(String),
    /// A Unix socket path.
    Unix(PathBuf),
    /// A Redis Cluster: the seed nodes (`host:port`) the topology is first asked of.
    Cluster(Vec<String>),
}

/// The upstream Redis (`--upstream`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Address.
    pub addr: Addr,
    /// ACL user (`redis://USER@host:port`); `None` with a password means `default`.
    pub user: Option<String>,
    /// File holding the password (`--upstream-password-file`), read at start-up.
    pub password_file: Option<PathBuf>,
    /// How often an idle connection is checked with `PING`.
    pub ping_interval: Duration,
    /// How long a request (or `PING`) may go unanswered before the connection counts as lost.
    pub ping_timeout: Duration,
    /// How long the mirrored tables keep serving their last values after the connection to
    /// one Redis is lost (`--upstream-max-stale`; `None`: cleared at once).
    pub max_stale: Option<Duration>,
}

impl UpstreamConfig {
    /// Parse `redis://[USER@]HOST:PORT`, `redis+cluster://[USER@]HOST:PORT[,HOST:PORT...]`,
    /// `unix:///PATH` or `unix:PATH` with default timings.
    pub fn parse(url: &str) -> Result<UpstreamConfig, String> {
        let bad = || {
            format!(
                "{url:?}: expected redis://[USER@]HOST:PORT, redis+cluster://[USER@]HOST:PORT[,HOST:PORT...] or \
                 unix:///PATH/TO/redis.sock"
            )
        };
        let tcp = |rest: &str| -> Result<(Option<String>, Vec<String>), String> {
            let (user, hosts) = match rest.rsplit_once('@') {
                Some((u, h)) => (Some(u.to_string()), h),
                None => (None, rest),
            };
            let hosts: Vec<String> = hosts.trim_end_matches('/').split(',').map(str::to_string).collect();
            if user.as_deref() == Some("") || hosts.iter().any(|h| h.contains('/') || !h.contains(':')) {
                return Err(bad());
            }
            Ok((user, hosts))
        };
        let (addr, user) = if let Some(rest) = url.strip_prefix("redis://") {
            let (user, mut hosts) = tcp(rest)?;
            if hosts.len() != 1 {
                return Err(format!("{}: several addresses are a cluster's seeds (redis+cluster://)", bad()));
            }
            (Addr::Tcp(hosts.remove(0)), user)
        } else if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let (user, hosts) = tcp(rest)?;
            (Addr::Cluster(hosts), user)
        } else if let Some(path) = url.strip_prefix("unix://").or_else(|| url.strip_prefix("unix:")) {
            if !path.starts_with('/') {
                return Err(bad());
            }
            (Addr::Unix(PathBuf::from(path)), None)
        } else {
            return Err(bad());
        };
        Ok(UpstreamConfig {
            addr,
            user,
            password_file: None,
            ping_interval: Duration::from_secs(1),
            // See `--upstream-timeout`.
            ping_timeout: Duration::from_secs(3),
            max_stale: None,
        })
    }
}

/// A table that mirrors a key prefix (`--mirror TABLE=PREFIX`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorSpec {
    /// The table (one of `--table`).
    pub table: String,
    /// The Redis key prefix (may be empty: the whole keyspace).
    pub prefix: String,
    /// Longest a filled entry (value or negative) is kept locally without an invalidation
    /// (`None`: until invalidated or its Redis TTL ends). Not applied to a prefetched table,
    /// whose entries follow the Redis TTL.
    pub max_ttl: Option<Duration>,
    /// Prefetch mode (`--prefetch`): every key under the prefix is loaded at start and kept in
    /// sync by a `CLIENT TRACKING ON BCAST` connection; `false`: read-through (`--mirror`).
    pub prefetch: bool,
}

/// Parse `TABLE=PREFIX`, e.g. `users=user:` (everything after the first `=` is the prefix).
pub fn parse_mirror(s: &str) -> Result<MirrorSpec, String> {
    let (table, prefix) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected TABLE=PREFIX, e.g. users=user:"))?;
    crate::names::check(table).map_err(|e| format!("mirror table {table:?}: {e}"))?;
    if prefix.as_bytes().first() == Some(&0) {
        return Err(format!("mirror {table}: a prefix may not start with a NUL byte"));
    }
    Ok(MirrorSpec {
        table: table.to_string(),
        prefix: prefix.to_string(),
        max_ttl: Some(DEFAULT_MAX_TTL),
        prefetch: false,
    })
}

/// Parse `--prefetch TABLE=PREFIX` (the syntax of [`parse_mirror`]), in prefetch mode.
pub fn parse_prefetch(s: &str) -> Result<MirrorSpec, String> {
    Ok(MirrorSpec { prefetch: true, ..parse_mirror(s)? })
}

/// Parse `--mirror-max-ttl`: a duration, or `none`.
pub fn parse_max_ttl(s: &str) -> Result<Option<Duration>, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    match parse_duration(s)? {
        d if d.is_zero() => Err("mirror max TTL must be more than 0 (or none)".into()),
        d => Ok(Some(d)),
    }
}

/// The default [`MirrorSpec::max_ttl`]: a safety net, not the consistency mechanism.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(3600);

/// Everything the near cache needs (`Config::near`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NearConfig {
    /// The upstream Redis.
    pub upstream: UpstreamConfig,
    /// Mirrored tables (at least one).
    pub mirrors: Vec<MirrorSpec>,
}

/// Build the near-cache configuration from the merged `serve` settings (`None`: no upstream).
pub fn config_from(
    upstream: Option<&str>,
    password_file: Option<PathBuf>,
    mut mirrors: Vec<MirrorSpec>,
    max_ttl: Option<&str>,
    timeout: Option<&str>,
    max_stale: Option<&str>,
) -> Result<Option<NearConfig>, String> {
    let Some(url) = upstream else {
        if !mirrors.is_empty() {
            return Err("--mirror needs --upstream (the Redis to mirror)".into());
        }
        return Ok(None);
    };
    let mut upstream = UpstreamConfig::parse(url)?;
    upstream.password_file = password_file;
    if let Some(t) = timeout {
        let t = parse_duration(t).map_err(|e| format!("upstream timeout: {e}"))?;
        if t < Duration::from_millis(10) {
            return Err("upstream timeout must be at least 10ms".into());
        }
        upstream.ping_timeout = t;
        // A PING every third of the timeout: a silent connection is noticed within about
        // 1.33 timeouts.
        upstream.ping_interval = t / 3;
    }
    if let Some(d) = max_stale {
        let d = parse_duration(d).map_err(|e| format!("upstream max stale: {e}"))?;
        if matches!(upstream.addr, Addr::Cluster(_)) && !d.is_zero() {
            return Err("--upstream-max-stale applies to one Redis, not to a Redis Cluster (whose topology \
                        changes always clear the tables)"
                .into());
        }
        upstream.max_stale = Some(d).filter(|d| !d.is_zero());
    }
    if mirrors.is_empty() {
        return Err("--upstream needs at least one --mirror or --prefetch TABLE=PREFIX".into());
    }
    let prefetched: Vec<&MirrorSpec> = mirrors.iter().filter(|m| m.prefetch).collect();
    if !prefetched.is_empty() && matches!(upstream.addr, Addr::Cluster(_)) {
        return Err("--prefetch needs one Redis, not a Redis Cluster (use --mirror, read-through)".into());
    }
    // One BCAST connection tracks every prefetched prefix, and Redis refuses overlapping ones.
    for a in &prefetched {
        for b in &prefetched {
            if !std::ptr::eq(*a, *b) && b.prefix.starts_with(a.prefix.as_str()) {
                return Err(format!(
                    "--prefetch {}={} and {}={}: prefetched prefixes may not overlap",
                    a.table, a.prefix, b.table, b.prefix
                ));
            }
        }
    }
    if let Some(t) = max_ttl {
        let t = parse_max_ttl(t)?;
        for m in &mut mirrors {
            m.max_ttl = t;
        }
    }
    Ok(Some(NearConfig { upstream, mirrors }))
}

/// The table key of a negative entry for `key` (`None`: the key is too long to have one).
pub fn negative_key(key: &[u8]) -> Option<Vec<u8>> {
    if key.len() >= MAX_KEY {
        return None;
    }
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(0);
    k.extend_from_slice(key);
    Some(k)
}

/// Whether a fill of `key` may be stored (not empty, not starting with the reserved `0x00`).
pub fn cacheable(key: &[u8]) -> bool {
    key.first().is_some_and(|&b| b != 0) && key.len() <= MAX_KEY
}

/// What a mirrored table holds for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cached {
    /// The Redis value, as filled.
    Value(Vec<u8>),
    /// A negative entry: the key was absent upstream when filled.
    Absent,
    /// Nothing: not filled, invalidated, expired or evicted.
    NotCached,
}

/// Read `key` from a mirrored table: value first, then the negative entry.
pub fn lookup(reader: &TableReader, key: &[u8]) -> Result<Cached, GetError> {
    if !cacheable(key) {
        return Ok(Cached::NotCached);
    }
    if let Some(v) = reader.get_vec(key)? {
        return Ok(Cached::Value(v));
    }
    match negative_key(key) {
        Some(nk) if reader.contains(&nk)? => Ok(Cached::Absent),
        _ => Ok(Cached::NotCached),
    }
}

/// Counters of the near cache (process memory; exported on `/metrics`).
#[derive(Debug)]
pub struct NearStats {
    /// Tracking connections up (1 for one Redis; one per master of a Redis Cluster).
    pub connected: AtomicU64,
    /// Redis Cluster topology changes handled (MOVED, a changed slot map, a lost master).
    pub topology_changes: AtomicU64,
    /// Connections established (handshake done).
    pub connects: AtomicU64,
    /// Gets answered from the table (values and negative entries).
    pub hits: AtomicU64,
    /// Gets that missed the table and asked upstream (joined a fill in flight or started one).
    pub misses: AtomicU64,
    /// Upstream fills (one per single-flight group).
    pub fills: AtomicU64,
    /// Fills stored as negative entries.
    pub negative_fills: AtomicU64,
    /// Keys named by invalidation pushes.
    pub invalidations: AtomicU64,
    /// Whole-table clears (connection lost, reconnect, FLUSHALL).
    pub flushes: AtomicU64,
    /// Writes through to Redis (SET and DEL).
    pub writes: AtomicU64,
    /// Values fetched by the prefetch connection (loads, and fetches after invalidations).
    pub prefetched: AtomicU64,
    /// Time from sending an upstream request (fill, write, `PING`) to reading its answer.
    pub upstream_latency: prometheus_client::metrics::histogram::Histogram,
    /// Requests in `upstream_latency` (with `upstream_micros`, the mean that `GET /v1/tables`
    /// and `podcache stat` show; the histogram's own sums are not readable).
    pub upstream_requests: AtomicU64,
    /// Total time of the requests in `upstream_requests`, in microseconds.
    pub upstream_micros: AtomicU64,
    /// Unix time in milliseconds of the last invalidation message (0: none yet).
    pub last_invalidation_ms: AtomicU64,
}

impl Default for NearStats {
    fn default() -> Self {
        NearStats {
            connected: AtomicU64::new(0),
            topology_changes: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            fills: AtomicU64::new(0),
            negative_fills: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            prefetched: AtomicU64::new(0),
            // 50 µs to about 0.8 s.
            upstream_latency: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(50e-6, 2.0, 15),
            ),
            upstream_requests: AtomicU64::new(0),
            upstream_micros: AtomicU64::new(0),
            last_invalidation_ms: AtomicU64::new(0),
        }
    }
}

impl NearStats {
    pub(crate) fn inc(c: &AtomicU64) {
        // Relaxed: a statistic; nothing is ordered by it.
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Record one upstream request's time from sending to its answer.
    pub(crate) fn observe_latency(&self, sent: std::time::Instant) {
        let took = sent.elapsed();
        self.upstream_latency.observe(took.as_secs_f64());
        Self::inc(&self.upstream_requests);
        // Relaxed: statistics.
        self.upstream_micros.fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The counters as `GET /v1/tables` lists them under `near`: each counter by its metric
    /// name without the `podcache_near_` prefix, the mean upstream latency in milliseconds
    /// (`null` before the first request) and the seconds since the last invalidation message
    /// (`null` before the first).
    pub(crate) fn json(&self) -> serde_json::Value {
        // Relaxed: statistics, read independently of each other.
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let requests = get(&self.upstream_requests);
        let mean_ms = (requests > 0).then(|| get(&self.upstream_micros) as f64 / requests as f64 / 1000.0);
        let last = get(&self.last_invalidation_ms);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let since = (last > 0).then(|| now_ms.saturating_sub(last) as f64 / 1000.0);
        serde_json::json!({
            "connected": get(&self.connected),
            "connects": get(&self.connects),
            "hits": get(&self.hits),
            "misses": get(&self.misses),
            "fills": get(&self.fills),
            "negative_fills": get(&self.negative_fills),
            "invalidations": get(&self.invalidations),
            "flushes": get(&self.flushes),
            "writes": get(&self.writes),
            "prefetched": get(&self.prefetched),
            "topology_changes": get(&self.topology_changes),
            "upstream_requests": requests,
            "upstream_mean_ms": mean_ms,
            "seconds_since_invalidation": since,
        })
    }
}

/// The generation of what the mirrored tables hold: [`flush`] bumps it before it clears the
/// tables, and a fill is stored only if the epoch is still the one it was sent under. This is
/// what keeps a fill answered by one connection from landing after a clear caused by another
/// (a Redis Cluster topology change, a master lost).
///
/// The epoch is compared under the table's writer lock, and `flush` takes that lock after the
/// bump, so a fill stored after a clear always sees the bumped epoch; Relaxed loads and stores
/// suffice (the mutex orders them).
#[derive(Debug, Default)]
pub(crate) struct Guard {
    pub(crate) epoch: AtomicU64,
}

/// Bump the epoch, then clear every mirrored table.
pub(crate) fn flush(guard: &Guard, mirrors: &[Arc<Mirror>], stats: &NearStats) {
    // Relaxed: see `Guard` (the writer locks taken below order it against `store_fill`).
    guard.epoch.fetch_add(1, Ordering::Relaxed);
    // A prefetched table is cleared (and reloaded) by its own connection only.
    for m in mirrors.iter().filter(|m| m.prefetch.is_none()) {
        m.clear();
    }
    NearStats::inc(&stats.flushes);
}

/// A connection task ended before answering (its channel or the reply was dropped).
pub(crate) struct Closed;

/// Send the request `make` builds to a connection task and wait for its answer.
pub(crate) async fn send<T>(
    tx: &mpsc::Sender<conn::Request>,
    make: impl FnOnce(conn::Reply<T>) -> conn::Request,
) -> Result<Result<T, UpstreamError>, Closed> {
    let (reply, rx) = oneshot::channel();
    tx.send(make(reply)).await.map_err(|_| Closed)?;
    rx.await.map_err(|_| Closed)
}

/// A mirrored table at run time.
pub(crate) struct Mirror {
    pub(crate) index: usize,
    pub(crate) prefix: Vec<u8>,
    pub(crate) max_ttl: Option<Duration>,
    pub(crate) table: Arc<TableEntry>,
    /// Prefetch mode: asks the prefetch connection to fetch a key again (by `index`).
    pub(crate) prefetch: Option<mpsc::UnboundedSender<(usize, Vec<u8>)>>,
}

impl Mirror {
    /// The Redis key of table key `key`.
    pub(crate) fn redis_key(&self, key: &[u8]) -> Vec<u8> {
        [self.prefix.as_slice(), key].concat()
    }

    /// Delete `key` and its negative entry.
    pub(crate) fn evict(&self, key: &[u8]) {
        if let Some(w) = self.table.writer().as_mut() {
            w.delete(key);
            if let Some(nk) = negative_key(key) {
                w.delete(&nk);
            }
        }
    }

    /// In prefetch mode, have the prefetch connection fetch `key` again (after a write through
    /// the read-through connection evicted it: that eviction may come after the prefetch
    /// connection stored the new value).
    pub(crate) fn refetch(&self, key: &[u8]) {
        if let Some(tx) = &self.prefetch {
            // An error: the prefetch task ended (shutdown); nothing to refill.
            let _ = tx.send((self.index, key.to_vec()));
        }
    }

    /// Drop everything the table holds.
    pub(crate) fn clear(&self) {
        if let Some(w) = self.table.writer().as_mut() {
            w.clear();
        }
    }
}

/// The near cache of a running server: the mirrors and the handle of the connection task.
pub(crate) struct Near {
    pub(crate) mirrors: BTreeMap<String, Arc<Mirror>>,
    pub(crate) stats: Arc<NearStats>,
    route: Route,
    task: std::sync::Mutex<Option<Runner>>,
    /// The prefetch connection's task, if a table is prefetched.
    prefetch: std::sync::Mutex<Option<prefetch::Task>>,
    /// Whether the first load of every prefetched table is complete (`/readyz`).
    prefetched: Arc<std::sync::atomic::AtomicBool>,
}

/// Where requests go.
enum Route {
    /// The one connection task.
    Single(mpsc::Sender<conn::Request>),
    /// The connection of the master that owns the key's slot.
    Cluster(cluster::Handle),
}

/// The task [`Near::run`] drives.
enum Runner {
    Single(conn::Task),
    Cluster(cluster::Task),
}

impl Near {
    /// Check the configuration against the tables and read the password; the connection starts
    /// in [`Near::run`].
    pub(crate) fn new(
        config: &NearConfig,
        tables: &BTreeMap<String, Arc<TableEntry>>,
    ) -> Result<Near, crate::error::Error> {
        use crate::error::Error;
        if config.mirrors.is_empty() {
            return Err(Error::Config("--upstream is set but no --mirror names a table".into()));
        }
        let mut mirrors = BTreeMap::new();
        let mut list = Vec::new();
        let (refetch_tx, refetch_rx) = mpsc::unbounded_channel();
        for (index, m) in config.mirrors.iter().enumerate() {
            let table = tables.get(&m.table).ok_or_else(|| {
                Error::Config(format!("--mirror {}={}: no table {:?} (add --table)", m.table, m.prefix, m.table))
            })?;
            let mirror = Arc::new(Mirror {
                index,
                prefix: m.prefix.as_bytes().to_vec(),
                max_ttl: if m.prefetch { None } else { m.max_ttl },
                table: Arc::clone(table),
                prefetch: m.prefetch.then(|| refetch_tx.clone()),
            });
            if mirrors.insert(m.table.clone(), Arc::clone(&mirror)).is_some() {
                return Err(Error::Config(format!("table {:?} mirrored twice", m.table)));
            }
            list.push(mirror);
        }
        let password = match &config.upstream.password_file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| Error::Config(format!("upstream password file {}: {e}", p.display())))?;
                let pw = text.trim_end_matches(['\r', '\n']).to_string();
                if pw.is_empty() {
                    return Err(Error::Config(format!("upstream password file {}: empty", p.display())));
                }
                Some(pw)
            }
            None => None,
        };
        let stats = Arc::new(NearStats::default());
        let guard = Arc::new(Guard::default());
        let prefetched_list: Vec<Arc<Mirror>> = list.iter().filter(|m| m.prefetch.is_some()).cloned().collect();
        let prefetched = Arc::new(std::sync::atomic::AtomicBool::new(prefetched_list.is_empty()));
        let prefetch = match (&config.upstream.addr, prefetched_list.is_empty()) {
            (_, true) => None,
            (Addr::Cluster(_), false) => {
                return Err(Error::Config("--prefetch needs one Redis, not a Redis Cluster".into()));
            }
            (addr, false) => Some(prefetch::Task::new(
                config.upstream.clone(),
                addr.clone(),
                password.clone(),
                prefetched_list,
                refetch_rx,
                Arc::clone(&stats),
                Arc::clone(&prefetched),
            )),
        };
        let (route, runner) = match &config.upstream.addr {
            Addr::Cluster(seeds) => {
                let (task, handle) = cluster::Task::new(
                    config.upstream.clone(),
                    seeds.clone(),
                    password,
                    list,
                    Arc::clone(&stats),
                    guard,
                );
                (Route::Cluster(handle), Runner::Cluster(task))
            }
            addr => {
                let (tx, rx) = mpsc::channel(4096);
                let task = conn::Task::new(
                    config.upstream.clone(),
                    addr.clone(),
                    true,
                    guard,
                    password,
                    list,
                    rx,
                    Arc::clone(&stats),
                );
                (Route::Single(tx), Runner::Single(task))
            }
        };
        Ok(Near {
            mirrors,
            stats,
            route,
            task: std::sync::Mutex::new(Some(runner)),
            prefetch: std::sync::Mutex::new(prefetch),
            prefetched,
        })
    }

    /// Run the connection task(s) until `shutdown` turns true.
    pub(crate) async fn run(&self, shutdown: tokio::sync::watch::Receiver<bool>) {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        let prefetch = self.prefetch.lock().unwrap_or_else(|p| p.into_inner()).take();
        let main = async {
            match task {
                Some(Runner::Single(t)) => t.run(shutdown.clone()).await,
                Some(Runner::Cluster(t)) => t.run(shutdown.clone()).await,
                None => {}
            }
        };
        let prefetch = async {
            if let Some(p) = prefetch {
                p.run(shutdown.clone()).await;
            }
        };
        tokio::join!(main, prefetch);
    }

    /// Whether the first load of every prefetched table is complete (true without any).
    pub(crate) fn prefetched(&self) -> bool {
        // Acquire: pairs with the Release store in `prefetch::Task` once the load's last reply
        // was applied (a reader that sees ready finds every loaded key in the table).
        self.prefetched.load(Ordering::Acquire)
    }

    /// Send the request `make` builds (given whether it follows an `ASK`) to the connection
    /// that serves Redis key `rk`, following Redis Cluster redirections.
    async fn ask<T>(
        &self,
        rk: &[u8],
        make: impl Fn(bool, oneshot::Sender<Result<T, UpstreamError>>) -> conn::Request,
    ) -> Result<T, UpstreamError> {
        match &self.route {
            Route::Single(tx) => send(tx, |reply| make(false, reply)).await.unwrap_or(Err(UpstreamError::ShuttingDown)),
            Route::Cluster(h) => h.ask(slot::key_slot(rk), make).await,
        }
    }

    /// Fetch `key` (a table key of `mirror`) from Redis, store it, and return it (`None`:
    /// absent upstream). Joins a fill of the same key already in flight.
    pub(crate) async fn fill(&self, mirror: &Mirror, key: &[u8]) -> Result<Option<Vec<u8>>, UpstreamError> {
        let m = mirror.index;
        let rk = mirror.redis_key(key);
        self.ask(&rk, |asking, reply| conn::Request::Fill { mirror: m, key: key.to_vec(), asking, reply }).await
    }

    /// `SET` (with `PX ttl`) in Redis, then evict the local entry.
    pub(crate) async fn set(
        &self,
        mirror: &Mirror,
        key: &[u8],
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), UpstreamError> {
        let m = mirror.index;
        let rk = mirror.redis_key(key);
        self.ask(&rk, |asking, reply| conn::Request::Set {
            mirror: m,
            key: key.to_vec(),
            value: value.clone(),
            ttl,
            asking,
            reply,
        })
        .await
    }

    /// `DEL` in Redis, then evict the local entry; `true` if Redis deleted a key.
    pub(crate) async fn del(&self, mirror: &Mirror, key: &[u8]) -> Result<bool, UpstreamError> {
        let m = mirror.index;
        let rk = mirror.redis_key(key);
        self.ask(&rk, |asking, reply| conn::Request::Del { mirror: m, key: key.to_vec(), asking, reply }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let u = UpstreamConfig::parse("redis://127.0.0.1:6379").unwrap();
        assert_eq!((u.addr, u.user), (Addr::Tcp("127.0.0.1:6379".into()), None));
        let u = UpstreamConfig::parse("redis://cache@redis.ns.svc:6380/").unwrap();
        assert_eq!((u.addr, u.user), (Addr::Tcp("redis.ns.svc:6380".into()), Some("cache".into())));
        assert_eq!(UpstreamConfig::parse("unix:///run/redis.sock").unwrap().addr, Addr::Unix("/run/redis.sock".into()));
        assert_eq!(UpstreamConfig::parse("unix:/run/redis.sock").unwrap().addr, Addr::Unix("/run/redis.sock".into()));
        let u = UpstreamConfig::parse("redis+cluster://cache@10.0.0.1:7000,10.0.0.2:7000/").unwrap();
        assert_eq!(
            (u.addr, u.user),
            (Addr::Cluster(vec!["10.0.0.1:7000".into(), "10.0.0.2:7000".into()]), Some("cache".into()))
        );
        let u = UpstreamConfig::parse("redis+cluster://redis-cluster.ns.svc:6379").unwrap();
        assert_eq!(u.addr, Addr::Cluster(vec!["redis-cluster.ns.svc:6379".into()]));
        assert!(UpstreamConfig::parse("redis://a:1,b:2").unwrap_err().contains("redis+cluster://"));
        for bad in [
            "",
            "127.0.0.1:6379",
            "redis://host",
            "redis://@h:1",
            "redis://h:1/3",
            "unix:rel.sock",
            "http://h:1",
            "redis+cluster://",
            "redis+cluster://a:1,,b:2",
            "redis+cluster://a:1,b",
        ] {
            assert!(UpstreamConfig::parse(bad).is_err(), "{bad:?} refused");
        }
    }

    #[test]
    fn mirrors() {
        let m = parse_mirror("users=user:").unwrap();
        assert_eq!((m.table.as_str(), m.prefix.as_str()), ("users", "user:"));
        assert_eq!(parse_mirror("all=").unwrap().prefix, "");
        assert_eq!(parse_mirror("t=a=b").unwrap().prefix, "a=b");
        assert!(parse_mirror("users").is_err());
        assert!(parse_mirror("../x=p").is_err());
        assert!(parse_mirror("t=\0p").is_err());
        assert_eq!(parse_max_ttl("none"), Ok(None));
        assert_eq!(parse_max_ttl("10s"), Ok(Some(Duration::from_secs(10))));
        assert!(parse_max_ttl("0s").is_err());
    }

    #[test]
    fn prefetch_configuration() {
        let p = parse_prefetch("geo=geo:").unwrap();
        assert!(p.prefetch && !parse_mirror("geo=geo:").unwrap().prefetch);
        let cfg = |url: &str, m: Vec<MirrorSpec>| config_from(Some(url), None, m, None, None, None);
        let one = cfg("redis://h:1", vec![p.clone(), parse_mirror("u=user:").unwrap()]).unwrap().unwrap();
        assert_eq!(one.mirrors.len(), 2);
        let e = cfg("redis+cluster://h:1", vec![p.clone()]).unwrap_err();
        assert!(e.contains("not a Redis Cluster"), "{e}");
        for (a, b) in [("a=geo:", "b=geo:x"), ("a=", "b=x"), ("a=x", "b=x")] {
            let e = cfg("redis://h:1", vec![parse_prefetch(a).unwrap(), parse_prefetch(b).unwrap()]).unwrap_err();
            assert!(e.contains("may not overlap"), "{a} {b}: {e}");
        }
        // A read-through mirror may overlap a prefetched prefix (its own connection).
        assert!(cfg("redis://h:1", vec![parse_prefetch("a=x").unwrap(), parse_mirror("b=x").unwrap()]).is_ok());
    }

    #[test]
    fn negative_keys_never_collide_with_stored_keys() {
        assert_eq!(negative_key(b"k"), Some(b"\0k".to_vec()));
        assert!(!cacheable(b"\0k"), "a key that looks like a negative entry is never stored");
        assert!(!cacheable(b""));
        assert!(cacheable(b"k"));
        assert_eq!(negative_key(&[b'a'; MAX_KEY]), None);
        assert!(negative_key(&[b'a'; MAX_KEY - 1]).is_some());
    }
}

//! `serve`: start-up (directory lock, free space, files, listeners), the background sweep, and
//! graceful shutdown.
//!
//! Ownership: the server owns every configured file's single writer (`TableWriter`,
//! `Publisher`), each behind its own `Mutex`, so writes to one file are serialised and writes to
//! different files run in parallel. The lock is held only for the synchronous put/publish (no
//! `.await` inside). Gets do not take it: each worker thread keeps its own lock-free
//! `TableReader` on the same file, so HTTP gets scale with cores like any other reader.

use crate::config::Config;
use crate::error::Error;
use crate::filecheck::FileCheck;
use crate::metrics::Metrics;
use crate::stats::ring_stats;
use podcache_format::file::ExclusiveLock;
use podcache_format::ring::RingParams;
use podcache_format::table::TableParams;
use podcache_reader::{Subscriber, TableReader};
use podcache_writer::{CreateError, Publisher, TableWriter};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use thread_local::ThreadLocal;
use tokio::sync::watch;

/// A table the server owns.
pub(crate) struct TableEntry {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    /// The single writer; `None` once shut down.
    pub(crate) writer: Mutex<Option<TableWriter>>,
    /// One lock-free reader per worker thread.
    pub(crate) readers: ThreadLocal<TableReader>,
    pub(crate) max_items: u64,
    pub(crate) file_size: u64,
    /// Whether the file is still the one at `path`.
    pub(crate) check: FileCheck,
    /// Expired items not yet removed, as of the last census (see `census`).
    pub(crate) expired: std::sync::atomic::AtomicU64,
}

impl TableEntry {
    pub(crate) fn writer(&self) -> MutexGuard<'_, Option<TableWriter>> {
        // A panic while holding the lock cannot leave the table inconsistent for readers (the
        // format's protocols are crash-safe at any instruction), so a poisoned lock is used on.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn reader(&self) -> Result<&TableReader, podcache_reader::OpenError> {
        self.readers.get_or_try(|| TableReader::open(&self.path))
    }
}

/// A ring the server owns.
pub(crate) struct RingEntry {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    /// The single writer; `None` once shut down.
    pub(crate) publisher: Mutex<Option<Publisher>>,
    pub(crate) capacity: u64,
    pub(crate) file_size: u64,
    /// Whether the file is still the one at `path`.
    pub(crate) check: FileCheck,
}

impl RingEntry {
    pub(crate) fn publisher(&self) -> MutexGuard<'_, Option<Publisher>> {
        self.publisher.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// State shared by every handler.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) tables: Tables,
    pub(crate) rings: Rings,
    pub(crate) token: Option<crate::token::Token>,
    pub(crate) max_body: usize,
    pub(crate) limits: crate::http::Limits,
    /// Log every API request (`--access-log`).
    pub(crate) access_log: bool,
    pub(crate) ready: AtomicBool,
    pub(crate) shutting_down: AtomicBool,
    /// Open ring subscriptions (each holds a blocking thread).
    pub(crate) subscribers: std::sync::atomic::AtomicUsize,
    /// What each open subscription delivered (`GET /v1/rings`, `podcache stat`).
    pub(crate) subscriptions: std::sync::Mutex<Vec<Arc<crate::api::Subscription>>>,
    pub(crate) metrics: Metrics,
    /// The near cache over Redis (`--upstream`), if configured.
    pub(crate) near: Option<Arc<crate::near::Near>>,
    pub(crate) shutdown_rx: watch::Receiver<bool>,
    _dir_lock: ExclusiveLock,
}

impl Shared {
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Why each file deleted or replaced under the sidecar is lost (see `filecheck`).
    pub(crate) fn lost_files(&self) -> Vec<String> {
        let checks = self.tables.values().map(|t| &t.check).chain(self.rings.values().map(|r| &r.check));
        checks.filter_map(|c| c.check().err()).collect()
    }
}

/// The lock file that keeps a second `serve` off the directory.
pub const LOCK_FILE: &str = ".podcache.lock";

/// Path of table `name` in `dir`.
pub fn table_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.table"))
}

/// Path of ring `name` in `dir`.
pub fn ring_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.ring"))
}

/// The seed `TableWriter::builder` derives from the sizes (part of the layout).
fn lock_dir(dir: &Path) -> Result<ExclusiveLock, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let lock = dir.join(LOCK_FILE);
    // 0600: only the sidecar's uid can open it, so no other container's process can hold it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&lock)
        .map_err(|source| Error::Dir { dir: dir.to_path_buf(), source })?;
    // A lock file an earlier release created 0644: tighten it (ours, so this works).
    if file.metadata().is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
    }
    ExclusiveLock::try_lock(file).map_err(|e| match e {
        rustix::io::Errno::WOULDBLOCK => Error::AlreadyServed { lock },
        e => Error::Dir { dir: dir.to_path_buf(), source: e.into() },
    })
}

/// Check that the volume has room for every file to create, before creating any.
fn check_space(config: &Config) -> Result<(), Error> {
    let mut files = Vec::new();
    for t in &config.tables {
        // Only the size is used: the seed a new file gets is random (any value sizes the same).
        let p = TableParams::new(t.max_items, t.data_bytes, 0, 1)
            .map_err(|e| Error::Config(format!("table {}: {e}", t.name)))?;
        files.push((table_path(&config.dir, &t.name), p.file_size()));
    }
    for r in &config.rings {
        let max = r.max_message.unwrap_or_else(|| RingParams::max_msg_limit(r.capacity).min(u32::MAX.into()) as u32);
        let p = RingParams::new(r.capacity, max).map_err(|e| Error::Config(format!("ring {}: {e}", r.name)))?;
        files.push((ring_path(&config.dir, &r.name), p.file_size()));
    }
    // A file already there with the same size is attached (no new space); anything else needs
    // its full size (a new file, or a replacement built beside the old one).
    let needed_files: Vec<(PathBuf, u64)> =
        files.into_iter().filter(|(p, size)| std::fs::metadata(p).map(|m| m.len() != *size).unwrap_or(true)).collect();
    let needed: u64 = needed_files.iter().map(|(_, s)| *s).fold(0u64, u64::saturating_add);
    if needed == 0 {
        return Ok(());
    }
    let st = rustix::fs::statvfs(&config.dir).map_err(|e| Error::Dir { dir: config.dir.clone(), source: e.into() })?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if needed > free {
        return Err(Error::VolumeTooSmall { dir: config.dir.clone(), files: needed_files, needed, free });
    }
    Ok(())
}

/// Create or attach a file with `build(replace)`. A file of another layout or version is
/// replaced only if `replace` allows it, and only after `warn` described what it held (the
/// builder itself would replace it without a word). Returns the writer and whether it replaced.
fn create_or_replace<W>(
    replace: bool,
    build: impl Fn(bool) -> Result<W, CreateError>,
    warn: impl FnOnce(&CreateError),
) -> Result<(W, bool), Error> {
    match build(false) {
        Err(e @ (CreateError::LayoutMismatch { .. } | CreateError::VersionMismatch { .. })) if replace => {
            warn(&e);
            build(true).map(|w| (w, true)).map_err(Error::File)
        }
        r => r.map(|w| (w, false)).map_err(Error::File),
    }
}

type Tables = BTreeMap<String, Arc<TableEntry>>;
type Rings = BTreeMap<String, Arc<RingEntry>>;

fn open_files(config: &Config) -> Result<(Tables, Rings), Error> {
    let mut tables = BTreeMap::new();
    for t in &config.tables {
        let path = table_path(&config.dir, &t.name);
        let build = |replace: bool| {
            TableWriter::builder(&path)
                .max_items(t.max_items)
                .data_bytes(t.data_bytes)
                .mode(config.file_mode)
                .replace_mismatched(replace)
                .create()
        };
        let (w, replaced) = create_or_replace(config.replace_mismatched, build, |e| {
            let held = match TableReader::open(&path) {
                Ok(r) => {
                    let s = r.stats();
                    format!("{} items, {} bytes of records", s.items, s.bytes_used)
                }
                Err(e) => format!("unreadable ({e})"),
            };
            tracing::warn!(
                table = %t.name, path = %path.display(), mismatch = %e, destroyed = %held,
                "replacing a table whose layout differs from the configuration (replace_mismatched): its data is lost"
            );
        })?;
        match w.recovery() {
            None => tracing::info!(
                table = %t.name, path = %path.display(), file_bytes = w.file_size(), replaced,
                "created table"
            ),
            Some(r) => tracing::info!(
                table = %t.name, path = %path.display(), file_bytes = w.file_size(), epoch = w.epoch(),
                items = r.items, cleared_slots = r.cleared_slots, damaged_segments = r.damaged_segments,
                "attached to existing table"
            ),
        }
        let check = FileCheck::new(&path).map_err(|source| Error::Dir { dir: path.clone(), source })?;
        let entry = TableEntry {
            name: t.name.clone(),
            check,
            expired: std::sync::atomic::AtomicU64::new(0),
            path,
            max_items: t.max_items,
            file_size: w.file_size(),
            writer: Mutex::new(Some(w)),
            readers: ThreadLocal::new(),
        };
        tables.insert(t.name.clone(), Arc::new(entry));
    }
    let mut rings = BTreeMap::new();
    for r in &config.rings {
        let path = ring_path(&config.dir, &r.name);
        let build = |replace: bool| {
            let mut b =
                Publisher::builder(&path).capacity(r.capacity).mode(config.file_mode).replace_mismatched(replace);
            if let Some(m) = r.max_message {
                b = b.max_message(m);
            }
            b.create()
        };
        let (p, replaced) = create_or_replace(config.replace_mismatched, build, |e| {
            let held = match ring_stats(&path, 0, &mut Vec::new()) {
                Ok(s) => format!("{} messages ({} bytes), newest seq {}", s.messages, s.bytes, s.newest_seq),
                Err(e) => format!("unreadable ({e})"),
            };
            tracing::warn!(
                ring = %r.name, path = %path.display(), mismatch = %e, destroyed = %held,
                "replacing a ring whose layout differs from the configuration (replace_mismatched): its messages are lost"
            );
        })?;
        let file_size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match p.recovery() {
            None => {
                tracing::info!(ring = %r.name, path = %path.display(), file_bytes = file_size, replaced, "created ring")
            }
            Some(rec) => tracing::info!(
                ring = %r.name, path = %path.display(), epoch = p.epoch(), intact = rec.intact,
                discarded = rec.discarded, "attached to existing ring"
            ),
        }
        let check = FileCheck::new(&path).map_err(|source| Error::Dir { dir: path.clone(), source })?;
        let entry = RingEntry {
            name: r.name.clone(),
            path,
            capacity: p.capacity(),
            file_size,
            check,
            publisher: Mutex::new(Some(p)),
        };
        rings.insert(r.name.clone(), Arc::new(entry));
    }
    Ok((tables, rings))
}

/// The start-up error for a file whose layout is not the configured one, in the terms of the
/// configuration (items, bytes, capacity) rather than the header's words.
fn layout_mismatch(config: &Config, path: &Path) -> String {
    let existing = |kind| podcache_format::file::open_read(path, kind).map(|(_, view)| view);
    let (found, wanted) = if let Some(t) = config.tables.iter().find(|t| table_path(&config.dir, &t.name) == path) {
        let found = existing(podcache_format::Kind::Table)
            .ok()
            .and_then(|v| TableParams::from_header(&v).ok().map(|p| (p, v.file_size)))
            .map_or_else(
                || "an unreadable layout".to_string(),
                |(p, size)| format!("{}={}:{} ({size}-byte file)", t.name, p.max_items, p.data_bytes()),
            );
        (found, format!("{}={}:{}", t.name, t.max_items, t.data_bytes))
    } else if let Some(r) = config.rings.iter().find(|r| ring_path(&config.dir, &r.name) == path) {
        let found = existing(podcache_format::Kind::Ring)
            .ok()
            .and_then(|v| RingParams::from_header(&v).ok().map(|p| (p, v.file_size)))
            .map_or_else(
                || "an unreadable layout".to_string(),
                |(p, size)| format!("{}={}:{} ({size}-byte file)", r.name, p.capacity, p.max_msg),
            );
        let max = r.max_message.map_or_else(|| "default".to_string(), |m| m.to_string());
        (found, format!("{}={}:{max}", r.name, r.capacity))
    } else {
        ("another layout".to_string(), "the configured one".to_string())
    };
    format!(
        "{}: the file has layout {found}, the configuration asks for {wanted} (in bytes and items); \
         keep the file by configuring its layout, or pass --replace-mismatched to replace it (its data is lost). \
         Sizes with k, M, G are powers of 1000 as in Kubernetes: a file made when they meant KiB, MiB, GiB is \
         kept by writing Ki, Mi, Gi",
        path.display()
    )
}

/// Bind a TCP listener. The IPv6 wildcard `[::]` is bound dual-stack (`IPV6_V6ONLY` off, so
/// IPv4 clients connect too, whatever `net.ipv6.bindv6only` says); where the kernel has no IPv6
/// (`EAFNOSUPPORT`, `EADDRNOTAVAIL`) it falls back to `0.0.0.0` on the same port, with a
/// warning. Other addresses are bound as given.
fn bind_tcp(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    use socket2::{Domain, Socket, Type};
    let err = |source| Error::Listen { what: addr.to_string(), source };
    let bind = |addr: SocketAddr, dual: bool| -> std::io::Result<std::net::TcpListener> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking().cloexec(), None)?;
        if dual {
            s.set_only_v6(false)?;
        }
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        Ok(s.into())
    };
    let dual = matches!(addr, SocketAddr::V6(a) if a.ip().is_unspecified());
    let std = match bind(addr, dual) {
        Err(e)
            if dual
                && matches!(
                    rustix::io::Errno::from_io_error(&e),
                    Some(rustix::io::Errno::AFNOSUPPORT | rustix::io::Errno::ADDRNOTAVAIL)
                ) =>
        {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            tracing::warn!(%addr, fallback = %v4, "no IPv6 on this host ({e}): listening on IPv4 only");
            bind(v4, false).map_err(err)?
        }
        r => r.map_err(err)?,
    };
    tokio::net::TcpListener::from_std(std).map_err(err)
}

/// A started server: files created or attached, listeners bound, not serving yet.
pub struct Server {
    shared: Arc<Shared>,
    api: Option<tokio::net::TcpListener>,
    socket: Option<(tokio::net::UnixListener, PathBuf)>,
    ops: Option<tokio::net::TcpListener>,
    shutdown_tx: watch::Sender<bool>,
    sweep_interval: std::time::Duration,
}

impl Server {
    /// Start-up: validate the configuration, lock the directory, check free space, create or
    /// attach every file, bind the listeners. Any failure here is returned before a listener
    /// accepts anything.
    pub async fn start(config: Config) -> Result<Server, Error> {
        config.validate().map_err(Error::Config)?;
        std::fs::create_dir_all(&config.dir).map_err(|source| Error::Dir { dir: config.dir.clone(), source })?;
        let dir_lock = lock_dir(&config.dir)?;
        let token = config.token_file.as_deref().map(crate::token::Token::load).transpose()?;
        check_space(&config)?;
        let (tables, rings) = match open_files(&config) {
            Ok(f) => f,
            // The directory lock is ours, so a locked file is held by another program (a CLI
            // writing directly, or another writer): say so.
            Err(Error::File(CreateError::Locked { path })) => {
                return Err(Error::Config(format!(
                    "{}: another process holds this file's writer lock (a `podcache put` writing directly, or \
                     another writer); stop it and start again",
                    path.display()
                )))
            }
            Err(Error::File(CreateError::LayoutMismatch { path, .. })) => {
                return Err(Error::Config(layout_mismatch(&config, &path)))
            }
            Err(e) => return Err(e),
        };
        let near = config.near.as_ref().map(|n| crate::near::Near::new(n, &tables).map(Arc::new)).transpose()?;
        let api = config.listen.map(bind_tcp).transpose()?;
        let socket = match &config.socket {
            Some(name) => {
                let path = config.dir.join(name);
                // The directory lock is ours: a socket file left there is stale.
                if std::fs::symlink_metadata(&path).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_socket()
                }) {
                    let _ = std::fs::remove_file(&path);
                }
                let l = tokio::net::UnixListener::bind(&path)
                    .map_err(|source| Error::Listen { what: path.display().to_string(), source })?;
                // Connecting needs write permission on the socket: give it wherever the files give
                // read permission (0640 -> 0660: the Pod's fsGroup may connect).
                let mode = config.file_mode | ((config.file_mode & 0o444) >> 1);
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map_err(|source| Error::Listen { what: path.display().to_string(), source })?;
                Some((l, path))
            }
            None => None,
        };
        let ops = config.ops_listen.map(bind_tcp).transpose()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            dir: config.dir.clone(),
            metrics: Metrics::new(),
            near,
            tables,
            rings,
            token,
            max_body: config.max_body,
            limits: config.limits,
            access_log: config.access_log,
            ready: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            subscribers: std::sync::atomic::AtomicUsize::new(0),
            subscriptions: Default::default(),
            shutdown_rx,
            _dir_lock: dir_lock,
        });
        Ok(Server { shared, api, socket, ops, shutdown_tx, sweep_interval: config.sweep_interval })
    }

    /// Address of the HTTP API listener.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Address of the health and metrics listener.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Path of the API's Unix socket.
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket.as_ref().map(|(_, p)| p.as_path())
    }

    /// Serve until `shutdown` completes, then shut down gracefully: stop accepting, end
    /// subscriptions, finish requests in flight (connections still open after the shutdown grace,
    /// such as a stalled event-stream client, are closed), mark every file cleanly closed and
    /// release the writer locks.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let Server { shared, api, socket, ops, shutdown_tx, sweep_interval } = self;
        let api_router = crate::api::router(Arc::clone(&shared));
        let mut tasks = tokio::task::JoinSet::new();
        let limits = shared.limits;
        if let Some(l) = api {
            let app = api_router.clone();
            let rx = shared.shutdown_rx.clone();
            if let Ok(addr) = l.local_addr() {
                tracing::info!(%addr, "HTTP API listening");
            }
            tasks.spawn(async move {
                crate::http::serve(l, app, limits, rx).await;
                Ok(())
            });
        }
        let socket_path = socket.as_ref().map(|(_, p)| p.clone());
        if let Some((l, path)) = socket {
            let app = api_router.clone();
            let rx = shared.shutdown_rx.clone();
            tracing::info!(path = %path.display(), "HTTP API listening on Unix socket");
            tasks.spawn(async move {
                crate::http::serve(l, app, limits, rx).await;
                Ok(())
            });
        }
        if let Some(l) = ops {
            let app = crate::ops::router(Arc::clone(&shared));
            let rx = shared.shutdown_rx.clone();
            if let Ok(addr) = l.local_addr() {
                tracing::info!(%addr, "ops listening (/healthz, /readyz, /metrics)");
            }
            tasks.spawn(async move {
                crate::http::serve(l, app, limits, rx).await;
                Ok(())
            });
        }
        // The near cache's connection to Redis (it clears the mirrored tables when it connects).
        if let Some(near) = shared.near.clone() {
            let rx = shared.shutdown_rx.clone();
            tasks.spawn(async move {
                near.run(rx).await;
                Ok(())
            });
        }
        // Expiry sweep, and the token file's check (see `token`).
        {
            let shared = Arc::clone(&shared);
            let mut rx = shared.shutdown_rx.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(sweep_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = rx.wait_for(|s| *s) => return Ok(()),
                    }
                    if let Some(t) = &shared.token {
                        t.refresh();
                    }
                    for r in shared.rings.values() {
                        let _ = r.check.check();
                    }
                    for t in shared.tables.values() {
                        let _ = t.check.check();
                        let removed = t.writer().as_mut().map_or(0, |w| w.expire());
                        if removed > 0 {
                            tracing::debug!(table = %t.name, removed, "swept expired items");
                        }
                    }
                }
            });
        }
        // Census of expired items not yet removed (a metric), on a blocking thread: it reads
        // every key of every table, so it waits 20 times as long as it took (at most ~5% of a
        // core on a large table), and at least CENSUS_INTERVAL.
        {
            let shared = Arc::clone(&shared);
            let mut rx = shared.shutdown_rx.clone();
            tasks.spawn(async move {
                loop {
                    let s = Arc::clone(&shared);
                    let took = tokio::task::spawn_blocking(move || {
                        let start = std::time::Instant::now();
                        for t in s.tables.values() {
                            if s.is_shutting_down() {
                                break;
                            }
                            if let Some(n) = count_expired(t) {
                                t.expired.store(n, Ordering::Relaxed);
                            }
                        }
                        start.elapsed()
                    })
                    .await
                    .unwrap_or_default();
                    tokio::select! {
                        _ = tokio::time::sleep(CENSUS_INTERVAL.max(took * 20)) => {}
                        _ = rx.wait_for(|s| *s) => return Ok(()),
                    }
                }
            });
        }
        shared.ready.store(true, Ordering::Release);
        // Version and build information here, not before start-up: a failed start-up stays one
        // line on stderr.
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            layout_version = podcache_format::header::LAYOUT_VERSION,
            pid = std::process::id(),
            dir = %shared.dir.display(),
            tables = shared.tables.len(),
            rings = shared.rings.len(),
            "ready"
        );

        let mut failed = None;
        tokio::select! {
            _ = shutdown => tracing::info!("shutting down"),
            Some(r) = tasks.join_next() => {
                tracing::error!("a listener stopped unexpectedly: {r:?}");
                if let Ok(Err(e)) = r {
                    failed = Some(Error::Listen { what: "listener".into(), source: e });
                }
            }
        }
        shared.ready.store(false, Ordering::Release);
        shared.shutting_down.store(true, Ordering::Release);
        let _ = shutdown_tx.send(true);
        while let Some(r) = tasks.join_next().await {
            if let Ok(Err(e)) = r {
                tracing::warn!("listener ended with an error: {e}");
            }
        }
        // Drop the writers now (not when the last handler lets go of `shared`): marks every file
        // cleanly closed and releases its writer lock.
        for t in shared.tables.values() {
            drop(t.writer().take());
        }
        for r in shared.rings.values() {
            drop(r.publisher().take());
        }
        if let Some(p) = socket_path {
            let _ = std::fs::remove_file(p);
        }
        tracing::info!("files closed");
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Least time between two counts of expired items not yet removed
/// (`podcache_table_expired_items`); a count that takes longer than a twentieth of it waits 20
/// times as long as it took.
pub const CENSUS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Items of table `t` that expired but are not yet removed: the writer removes expired items a
/// whole segment at a time (when every item in it has expired), so the file's item count
/// includes them until then. The key iteration validates every key with a full get (expiry
/// included), so the difference is what expired. Reads every key (about a get per item); `None`
/// if the table cannot be read. A write between the two reads can skew one census by its items.
fn count_expired(t: &TableEntry) -> Option<u64> {
    let r = t.reader().ok()?;
    let items = r.stats().items;
    let mut live = 0u64;
    for k in r.keys() {
        k.ok()?;
        live += 1;
    }
    Some(items.saturating_sub(live))
}

/// Run the sidecar until `shutdown` completes: [`Server::start`] then [`Server::serve`].
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    Server::start(config).await?.serve(shutdown).await
}

/// Open a subscriber for SSE (helper shared with the API).
pub(crate) fn open_subscriber(entry: &RingEntry, newest: bool) -> Result<Subscriber, podcache_reader::OpenError> {
    let start = if newest { podcache_reader::Start::Newest } else { podcache_reader::Start::Oldest };
    Subscriber::builder(&entry.path).start(start).open()
}

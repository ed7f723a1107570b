//! The CLI tools: `inspect`, `verify`, `get`, `keys`, `tail` (read-only, on the files), and
//! `put`, `del`, `publish`, `load` (through the sidecar when it holds the file's writer lock,
//! directly otherwise). Each returns the process exit status.

use crate::cli::{From, WriteArgs};
use crate::client::{self, Target};
use crate::names;
use crate::server::{ring_path, table_path};
use crate::stats::{ring_stats, TableStatsJson};
use podcache_format::header::{self, HeaderError, HeaderView, HEADER_BYTES, LAYOUT_VERSION};
use podcache_format::ring::RingParams;
use podcache_format::table::TableParams;
use podcache_format::{file, Kind};
use podcache_reader::{Expiry, Start, Subscriber, TableReader};
use podcache_writer::{CreateError, Publisher, TableWriter};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A failed tool: the message for stderr (exit status 1).
pub type ToolResult = Result<(), String>;

/// Print a line to stdout. A closed stdout (`podcache inspect FILE | head -1`) is not an error:
/// the rest of the output is dropped and the tool ends with the status it would have had
/// (`println!` would panic). Another write error is reported on stderr.
macro_rules! outln {
    ($($t:tt)*) => {
        $crate::tools::write_line(format_args!($($t)*))
    };
}

/// What [`outln!`] calls.
#[doc(hidden)]
pub fn write_line(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|_| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("podcache: stdout: {e}");
        }
    }
}

/// The result of a failed write to stdout: a closed stdout ends the tool quietly.
fn stdout_error(e: std::io::Error) -> ToolResult {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(format!("stdout: {e}"))
    }
}

/// What kind of podcache file `path` is, from its header.
fn kind_of(path: &Path) -> Result<Kind, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| format!("{}: {e}", path.display()))?.len();
    let mut bytes = vec![0u8; HEADER_BYTES as usize];
    if len < HEADER_BYTES {
        return Err(format!("{}: {len} bytes, too short for a podcache file", path.display()));
    }
    f.read_exact_at(&mut bytes, 0).map_err(|e| format!("{}: {e}", path.display()))?;
    match header::validate_bytes(&bytes, len, Kind::Table) {
        Ok(_) => Ok(Kind::Table),
        Err(HeaderError::WrongKind { found, .. }) if found == Kind::Ring as u32 => Ok(Kind::Ring),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn writer_state(words: &[std::sync::atomic::AtomicU64]) -> &'static str {
    match header::writer_state(words) {
        header::WRITER_RUNNING => "running (or crashed)",
        header::WRITER_CLOSED => "closed cleanly",
        header::RETIRED => "retired (replaced by a new file)",
        _ => "unknown",
    }
}

fn header_json(view: &HeaderView, epoch: u64, state: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": view.kind.to_string(),
        "version": LAYOUT_VERSION,
        "file_bytes": view.file_size,
        "created_unix_ns": view.created_ns,
        "epoch": epoch,
        "writer_state": state,
    })
}

fn print_rows(rows: &[(String, String)]) {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        outln!("{k:<w$}  {v}");
    }
}

/// `podcache inspect PATH [--json]`.
pub fn inspect(path: &Path, json: bool) -> ToolResult {
    let kind = kind_of(path)?;
    let (region, view) = file::open_read(path, kind).map_err(|e| e.to_string())?;
    let epoch = header::epoch(region.words());
    let state = writer_state(region.words());
    let mut out = serde_json::json!({ "path": path, "header": header_json(&view, epoch, state) });
    match kind {
        Kind::Table => {
            let p = TableParams::from_header(&view).map_err(|e| format!("{}: {e}", path.display()))?;
            let r = TableReader::open(path).map_err(|e| e.to_string())?;
            let s = TableStatsJson::new(r.stats(), p.max_items);
            out["layout"] = serde_json::json!({
                "max_items": p.max_items, "segments": p.nsegments, "segment_bytes": p.segment_size,
                "buckets": p.nbuckets, "data_bytes": p.data_bytes(), "max_value_bytes": p.max_value(1),
            });
            out["stats"] = serde_json::to_value(s).map_err(|e| e.to_string())?;
        }
        Kind::Ring => {
            let p = RingParams::from_header(&view).map_err(|e| format!("{}: {e}", path.display()))?;
            let s = ring_stats(path, p.capacity, &mut Vec::new())?;
            out["layout"] = serde_json::json!({ "capacity_bytes": p.capacity, "max_message_bytes": p.max_msg });
            out["stats"] = serde_json::to_value(s).map_err(|e| e.to_string())?;
        }
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
        return Ok(());
    }
    let mut rows: Vec<(String, String)> = [
        ("path", path.display().to_string()),
        ("kind", kind.to_string()),
        ("layout version", LAYOUT_VERSION.to_string()),
        ("file bytes", view.file_size.to_string()),
        ("writer epoch", epoch.to_string()),
        ("writer state", state.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for section in ["layout", "stats"] {
        if let Some(obj) = out[section].as_object() {
            for (k, v) in obj {
                rows.push((format!("{section}.{k}"), v.to_string()));
            }
        }
    }
    print_rows(&rows);
    Ok(())
}

/// `podcache verify PATH [--json]`: `Err` (exit 1) if the file is corrupt.
pub fn verify(path: &Path, json: bool) -> ToolResult {
    // A file that cannot be opened is not corrupt: say what the OS said.
    if let Err(e) = std::fs::File::open(path) {
        return Err(format!("{}: cannot open: {e}", path.display()));
    }
    let kind = kind_of(path).map_err(|e| format!("CORRUPT: {e}"))?;
    let (region, view) = file::open_read(path, kind).map_err(|e| format!("CORRUPT: {e}"))?;
    let (ok, report) = match kind {
        Kind::Table => {
            let p = TableParams::from_header(&view).map_err(|e| format!("CORRUPT: {}: {e}", path.display()))?;
            let c = podcache_format::table::verify(&region, &p);
            let report = serde_json::json!({
                "path": path, "kind": "table", "ok": c.is_ok(), "records": c.records,
                "indexed_items": c.indexed_items, "stats_items": c.stats.items,
                "segments_used": c.segments_used, "segments_changed_during_check": c.segments_changed,
                "problem_count": c.problem_count, "problems": c.problems,
            });
            (c.is_ok(), report)
        }
        Kind::Ring => {
            let p = RingParams::from_header(&view).map_err(|e| format!("CORRUPT: {}: {e}", path.display()))?;
            let mut sub = Subscriber::builder(path).start(Start::Oldest).open().map_err(|e| format!("CORRUPT: {e}"))?;
            let mut buf = vec![0u8; p.max_msg as usize];
            let (mut n, mut problem) = (0u64, None);
            // Read every message from the oldest: each is bounds-, sequence- and crc-checked.
            let until = sub.writer_next_seq();
            loop {
                match sub.try_recv(&mut buf) {
                    Ok(Some(m)) => {
                        n += 1;
                        if m.seq + 1 >= until {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        problem = Some(e.to_string());
                        break;
                    }
                }
            }
            let report = serde_json::json!({
                "path": path, "kind": "ring", "ok": problem.is_none(), "messages_checked": n,
                "lost_to_writer_during_check": sub.lost(), "problems": problem.iter().collect::<Vec<_>>(),
            });
            (problem.is_none(), report)
        }
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    } else {
        outln!("{}: {}", path.display(), if ok { "OK" } else { "CORRUPT" });
        if let Some(obj) = report.as_object() {
            for (k, v) in obj.iter().filter(|(k, _)| !matches!(k.as_str(), "path" | "ok" | "problems")) {
                outln!("  {k}: {v}");
            }
            for p in report["problems"].as_array().into_iter().flatten() {
                outln!("  problem: {}", p.as_str().unwrap_or_default());
            }
        }
    }
    if ok {
        Ok(())
    } else {
        Err(format!("{}: integrity check failed", path.display()))
    }
}

fn check_name(what: &str, name: &str) -> ToolResult {
    names::check(name).map_err(|e| format!("{what} name {name:?}: {e}"))
}

/// `podcache get --dir DIR TABLE KEY`. The key is taken as bytes: a key that is not UTF-8 can
/// be read too.
pub fn get(dir: &Path, table: &str, key: &std::ffi::OsStr) -> ToolResult {
    use std::os::unix::ffi::OsStrExt;
    check_name("table", table)?;
    let r = TableReader::open(table_path(dir, table)).map_err(|e| e.to_string())?;
    match r.get_vec(key.as_bytes()).map_err(|e| e.to_string())? {
        Some(v) => std::io::stdout().write_all(&v).or_else(stdout_error),
        None => Err(format!("no key {key:?} in table {table} (absent or expired)")),
    }
}

/// `podcache keys --dir DIR TABLE`.
pub fn keys(dir: &Path, table: &str) -> ToolResult {
    check_name("table", table)?;
    let r = TableReader::open(table_path(dir, table)).map_err(|e| e.to_string())?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for k in r.keys() {
        let k = k.map_err(|e| e.to_string())?;
        if let Err(e) = out.write_all(&k).and_then(|_| out.write_all(b"\n")) {
            return stdout_error(e);
        }
    }
    out.flush().or_else(stdout_error)
}

/// `podcache dump --dir DIR TABLE`: every live item as one NDJSON line, in the format `podcache
/// load` reads (see `api::dump_line`), with the TTL each item has left. Read-only: works on a
/// `readOnly: true` mount, the sidecar running or not.
///
/// The dump is not a snapshot: it walks the table while the writer may change it, so an item
/// put or deleted during the walk may or may not be in it; every line is one whole item as some
/// put stored it (value and TTL validated together). An item that expires during the walk is
/// left out. A TTL is rounded up to the next millisecond, so a load puts no item back with
/// less time than it had when it was read.
pub fn dump(dir: &Path, table: &str) -> ToolResult {
    check_name("table", table)?;
    let r = TableReader::open(table_path(dir, table)).map_err(|e| e.to_string())?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut value = Vec::new();
    for k in r.keys() {
        let k = k.map_err(|e| e.to_string())?;
        let ttl_ms = match r.get_into_with_expiry(&k, &mut value).map_err(|e| e.to_string())? {
            // Deleted or expired since the walk saw its key.
            None => continue,
            Some(Expiry::Never) => None,
            Some(Expiry::AtMs(at)) => match at.checked_sub(podcache_format::table::now_ms()) {
                Some(left) if left > 0 => Some(left),
                _ => continue, // expired since the get
            },
        };
        let line = crate::api::dump_line(&k, &value, ttl_ms);
        if let Err(e) = out.write_all(line.as_bytes()).and_then(|_| out.write_all(b"\n")) {
            return stdout_error(e);
        }
    }
    out.flush().or_else(stdout_error)
}

/// `podcache tail --dir DIR RING`.
pub fn tail(dir: &Path, ring: &str, from: From, count: Option<u64>, idle_ms: Option<u64>) -> ToolResult {
    check_name("ring", ring)?;
    let start = if from == From::Oldest { Start::Oldest } else { Start::Newest };
    let mut sub = Subscriber::builder(ring_path(dir, ring)).start(start).open().map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; sub.max_message()];
    let mut n = 0u64;
    let mut last = Instant::now();
    let stdout = std::io::stdout();
    while count.is_none_or(|c| n < c) {
        match sub.recv_timeout(&mut buf, Duration::from_millis(200)).map_err(|e| e.to_string())? {
            Some(m) => {
                if m.lost > 0 {
                    eprintln!("podcache tail: lapped, {} messages lost", m.lost);
                }
                let mut out = stdout.lock();
                if let Err(e) =
                    out.write_all(&buf[..m.len]).and_then(|_| out.write_all(b"\n")).and_then(|_| out.flush())
                {
                    return stdout_error(e);
                }
                n += 1;
                last = Instant::now();
            }
            None => {
                if idle_ms.is_some_and(|ms| last.elapsed() >= Duration::from_millis(ms)) {
                    break;
                }
                if sub.is_retired() {
                    return Err(format!("{}: the file was replaced; run tail again", sub.path().display()));
                }
            }
        }
    }
    Ok(())
}

fn target(w: &WriteArgs) -> Result<Target, String> {
    match &w.socket {
        Some(name) => {
            names::check_socket(name)?;
            Ok(Target::Unix(w.dir.dir.join(name)))
        }
        None => Target::from_url(&w.url),
    }
}

fn token(w: &WriteArgs) -> Result<Option<String>, String> {
    w.token_file
        .as_ref()
        .map(|p| std::fs::read_to_string(p).map(|t| t.trim().to_string()).map_err(|e| format!("{}: {e}", p.display())))
        .transpose()
}

/// Field `field` of the sidecar's JSON answer `body`, a number.
fn answer_u64(body: &[u8], field: &str) -> Result<u64, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    v[field].as_u64().ok_or_else(|| format!("the sidecar's answer has no {field}"))
}

/// Send a request to the sidecar: `Err` if it cannot be reached, else `Ok(Ok(body))` on 2xx and
/// `Ok(Err(message))` otherwise.
fn via_sidecar(w: &WriteArgs, method: &str, path: &str, body: &[u8]) -> Result<Result<Vec<u8>, String>, String> {
    let (t, tok) = match (target(w), token(w)) {
        (Ok(t), Ok(tok)) => (t, tok),
        (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
    };
    let r = client::request(&t, method, path, tok.as_deref(), body).map_err(|e| {
        format!(
            "the file cannot be written here (the sidecar holds its writer lock, or the mount is read-only) and \
             the sidecar's API ({t:?}) cannot be reached: {e}; pass --url or --socket"
        )
    })?;
    if (200..300).contains(&r.status) {
        return Ok(Ok(r.body));
    }
    let msg = serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&r.body).into_owned());
    Ok(Err(format!("sidecar answered {}: {msg}", r.status)))
}

/// Write directly when the file's writer lock is free, else through the sidecar. A lock held
/// while the sidecar cannot be reached (a sidecar shutting down, another writer exiting) is
/// tried again for up to two seconds.
fn write_via<W, T>(
    open: impl Fn() -> Result<Option<W>, String>,
    direct: impl FnOnce(W) -> Result<T, String>,
    sidecar: impl Fn() -> Result<Result<T, String>, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(w) = open()? {
            return direct(w);
        }
        match sidecar() {
            Ok(answer) => return answer,
            Err(unreachable) if Instant::now() >= deadline => return Err(unreachable),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn missing(path: &Path, what: &str) -> String {
    format!("{}: no such {what} (configure the sidecar with it, e.g. --{what} NAME=...)", path.display())
}

/// Whether a failure to attach as the writer means "write through the sidecar": the sidecar
/// holds the file's writer lock, or this container cannot write the file (a `readOnly: true`
/// mount, or no write permission), which is the documented app-container case.
fn leave_to_sidecar(e: &CreateError) -> bool {
    match e {
        CreateError::Locked { .. } => true,
        CreateError::Io { source, .. } => {
            matches!(source.kind(), std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied)
        }
        _ => false,
    }
}

/// Attach directly to a table as its writer, with the layout the file has; `None` if another
/// process (the sidecar) holds it.
fn direct_table(path: &Path) -> Result<Option<TableWriter>, String> {
    let (_, view) = file::open_read(path, Kind::Table).map_err(|e| match e {
        podcache_reader::OpenError::NotFound { .. } => missing(path, "table"),
        e => e.to_string(),
    })?;
    let p = TableParams::from_header(&view).map_err(|e| format!("{}: {e}", path.display()))?;
    // The same sizes as the file (the data region is whole segments, so it maps back to the
    // same number of segments); the writer keeps the file's own random hash seed.
    let builder = TableWriter::builder(path).max_items(p.max_items).data_bytes(p.data_bytes());
    match builder.segment_size(p.segment_size).create() {
        Ok(w) => Ok(Some(w)),
        Err(e) if leave_to_sidecar(&e) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

fn direct_ring(path: &Path) -> Result<Option<Publisher>, String> {
    let (_, view) = file::open_read(path, Kind::Ring).map_err(|e| match e {
        podcache_reader::OpenError::NotFound { .. } => missing(path, "ring"),
        e => e.to_string(),
    })?;
    let p = RingParams::from_header(&view).map_err(|e| format!("{}: {e}", path.display()))?;
    match Publisher::builder(path).capacity(p.capacity).max_message(p.max_msg).create() {
        Ok(w) => Ok(Some(w)),
        Err(e) if leave_to_sidecar(&e) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

fn read_input(arg: Option<&str>) -> Result<Vec<u8>, String> {
    match arg {
        Some(v) if v != "-" => Ok(v.as_bytes().to_vec()),
        _ => {
            let mut v = Vec::new();
            std::io::stdin().read_to_end(&mut v).map_err(|e| format!("stdin: {e}"))?;
            Ok(v)
        }
    }
}

/// `podcache put`.
pub fn put(w: &WriteArgs, table: &str, key: &str, value: Option<&str>, ttl_ms: Option<u64>) -> ToolResult {
    check_name("table", table)?;
    if ttl_ms == Some(0) {
        return Err("--ttl-ms must be at least 1".into());
    }
    let value = read_input(value)?;
    let path = table_path(&w.dir.dir, table);
    let q = ttl_ms.map(|t| format!("?ttl_ms={t}")).unwrap_or_default();
    let url = format!("/v1/tables/{table}/keys/{}{q}", client::encode_segment(key));
    write_via(
        || direct_table(&path),
        |mut tw| {
            match ttl_ms {
                Some(ms) => tw.put_with_ttl(key.as_bytes(), &value[..], Duration::from_millis(ms)),
                None => tw.put(key.as_bytes(), &value[..]),
            }
            .map_err(|e| e.to_string())
        },
        || Ok(via_sidecar(w, "PUT", &url, &value)?.map(|_| ())),
    )
}

/// `podcache del`.
pub fn del(w: &WriteArgs, table: &str, key: &str) -> ToolResult {
    check_name("table", table)?;
    let path = table_path(&w.dir.dir, table);
    let url = format!("/v1/tables/{table}/keys/{}", client::encode_segment(key));
    write_via(
        || direct_table(&path),
        |mut tw| if tw.delete(key.as_bytes()) { Ok(()) } else { Err(format!("no key {key:?} in table {table}")) },
        || Ok(via_sidecar(w, "DELETE", &url, b"")?.map(|_| ())),
    )
}

/// `podcache publish`.
pub fn publish(w: &WriteArgs, ring: &str, message: Option<&str>) -> ToolResult {
    check_name("ring", ring)?;
    let msg = read_input(message)?;
    let path = ring_path(&w.dir.dir, ring);
    let url = format!("/v1/rings/{ring}/messages");
    let seq = write_via(
        || direct_ring(&path),
        |mut p| p.publish(&msg).map_err(|e| e.to_string()),
        || Ok(via_sidecar(w, "POST", &url, &msg)?.and_then(|body| answer_u64(&body, "seq"))),
    )?;
    outln!("{seq}");
    Ok(())
}

/// `podcache load`.
pub fn load(w: &WriteArgs, table: &str, file: Option<&PathBuf>) -> ToolResult {
    check_name("table", table)?;
    let body = match file {
        Some(p) if p.as_os_str() != "-" => std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?,
        _ => read_input(None)?,
    };
    let path = table_path(&w.dir.dir, table);
    let url = format!("/v1/tables/{table}/load");
    let loaded = write_via(
        || direct_table(&path),
        |mut tw| {
            let items = crate::api::parse_ndjson(&body).map_err(|e| e.message)?;
            for (i, (k, v, ttl)) in items.iter().enumerate() {
                let max = tw.max_value(k.len(), ttl.is_some());
                if v.len() > max {
                    return Err(format!(
                        "item {}: value of {} bytes exceeds the limit of {max} (nothing loaded)",
                        i + 1,
                        v.len()
                    ));
                }
            }
            for (n, (k, v, ttl)) in items.iter().enumerate() {
                match ttl {
                    Some(d) => tw.put_with_ttl(k, &v[..], *d),
                    None => tw.put(k, &v[..]),
                }
                .map_err(|e| format!("{e} (after {n} items were loaded)"))?;
            }
            Ok(items.len() as u64)
        },
        || Ok(via_sidecar(w, "POST", &url, &body)?.and_then(|out| answer_u64(&out, "loaded"))),
    )?;
    outln!("{loaded}");
    Ok(())
}

/// One file's figures in `podcache stat`: name, then (label, value) pairs whose rates are shown.
struct StatRow {
    name: String,
    figures: Vec<(&'static str, u64)>,
}

/// The tables and rings of `dir`, in name order (files that cannot be read are listed as such).
fn stat_rows(dir: &Path) -> Result<Vec<Result<StatRow, String>>, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "table" || x == "ring"))
        .collect();
    paths.sort();
    let mut buf = Vec::new();
    Ok(paths
        .iter()
        .map(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if p.extension().is_some_and(|x| x == "table") {
                let s = TableReader::open(p).map_err(|e| format!("{name}: {e}"))?.stats();
                Ok(StatRow {
                    name,
                    figures: vec![
                        ("items", s.items),
                        ("bytes", s.bytes_used),
                        ("capacity", s.bytes_capacity),
                        ("puts", s.puts),
                        ("deletes", s.deletes),
                        ("evictions", s.evictions),
                        ("expirations", s.expirations),
                    ],
                })
            } else {
                let s = ring_stats(p, 0, &mut buf).map_err(|e| format!("{name}: {e}"))?;
                Ok(StatRow {
                    name,
                    figures: vec![
                        ("messages", s.messages_total),
                        ("bytes", s.bytes_total),
                        ("retained", s.messages),
                        ("retained_bytes", s.bytes),
                        ("oldest_seq", s.oldest_seq),
                        ("newest_seq", s.newest_seq),
                    ],
                })
            }
        })
        .collect())
}

/// What the sidecar said about one of its files.
enum SidecarSaw {
    /// A table: hits and misses of the gets it answered over HTTP, and what it mirrors
    /// (`prefix=… mode`) if it is a near cache of Redis.
    Table { hits: u64, misses: u64, mirror: Option<String> },
    /// A ring: each open event-stream subscription's last delivered sequence number, lag
    /// (messages published it has not delivered yet) and messages lost to laps.
    Ring { subscriptions: Vec<(u64, u64, u64)> },
}

/// What the sidecar said: about each file by file name, and its near cache's counters.
struct SidecarView {
    files: std::collections::HashMap<String, SidecarSaw>,
    /// `GET /v1/tables`' `near` object, if the sidecar mirrors a Redis.
    near: Option<serde_json::Value>,
}

/// What the sidecar (`--url`, `--socket`) says about its files; `None` if it cannot be reached
/// or does not answer. Matched by file name: the sidecar may have the volume mounted at another
/// path than this container.
fn sidecar_view(w: &WriteArgs) -> Option<SidecarView> {
    let (t, tok) = (target(w).ok()?, token(w).ok()?);
    let get = |path: &str| -> Option<serde_json::Value> {
        let r = client::request(&t, "GET", path, tok.as_deref(), b"").ok()?;
        (r.status == 200).then(|| serde_json::from_slice(&r.body).ok())?
    };
    let name = |v: &serde_json::Value| -> Option<String> {
        Path::new(v["path"].as_str()?).file_name().map(|n| n.to_string_lossy().into_owned())
    };
    let mut saw = std::collections::HashMap::new();
    let tables = get("/v1/tables")?;
    for t in tables["tables"].as_array()? {
        let (hits, misses) = (t["gets"]["hits"].as_u64().unwrap_or(0), t["gets"]["misses"].as_u64().unwrap_or(0));
        let mirror = t["mirror"]["mode"].as_str().map(|mode| {
            let prefix = t["mirror"]["prefix"].as_str().unwrap_or_default();
            format!("mirror={prefix:?} ({mode})")
        });
        saw.extend(name(t).map(|n| (n, SidecarSaw::Table { hits, misses, mirror })));
    }
    for r in get("/v1/rings")?["rings"].as_array()? {
        let subs = r["subscriptions"].as_array().map(Vec::as_slice).unwrap_or_default();
        let field = |s: &serde_json::Value, f: &str| s[f].as_u64().unwrap_or(0);
        let subscriptions =
            subs.iter().map(|s| (field(s, "delivered_seq"), field(s, "lag"), field(s, "lost"))).collect();
        saw.extend(name(r).map(|n| (n, SidecarSaw::Ring { subscriptions })));
    }
    let near = tables.get("near").filter(|n| n.is_object()).cloned();
    Some(SidecarView { files: saw, near })
}

/// The near cache's line of `podcache stat`: its counters, the mean upstream latency and the
/// time since the last invalidation (`-` when there is none yet).
fn near_line(near: &serde_json::Value) -> String {
    let mut line = String::from("  near cache (Redis)      ");
    for field in [
        "connected",
        "hits",
        "misses",
        "fills",
        "negative_fills",
        "invalidations",
        "flushes",
        "writes",
        "prefetched",
        "topology_changes",
    ] {
        line.push_str(&format!(" {field}={}", near[field].as_u64().unwrap_or(0)));
    }
    let hits = near["hits"].as_u64().unwrap_or(0);
    let gets = hits + near["misses"].as_u64().unwrap_or(0);
    let ratio = if gets == 0 { "-".to_string() } else { format!("{:.3}", hits as f64 / gets as f64) };
    line.push_str(&format!(" hit_ratio={ratio}"));
    match near["upstream_mean_ms"].as_f64() {
        Some(ms) => line.push_str(&format!(" upstream_mean={ms:.3}ms")),
        None => line.push_str(" upstream_mean=-"),
    }
    match near["seconds_since_invalidation"].as_f64() {
        Some(s) => line.push_str(&format!(" since_invalidation={s:.1}s")),
        None => line.push_str(" since_invalidation=-"),
    }
    line
}

/// The counters whose rate per second `podcache stat` shows.
const RATED: [&str; 4] = ["puts", "evictions", "messages", "bytes"];

/// `podcache stat --dir DIR`: every `interval_ms`, a block of lines, one per file, with each
/// counter and, from the second block on, the rate per second of puts, evictions, messages and
/// bytes (ring bytes published, table bytes' change); when the sidecar answers, what it says
/// about each file and, last, its near cache's line.
pub fn stat(w: &WriteArgs, interval_ms: u64, count: Option<u64>) -> ToolResult {
    let dir = &w.dir.dir;
    let interval = Duration::from_millis(interval_ms.max(1));
    // The previous sample of each file, by name.
    let mut last: std::collections::HashMap<String, (Instant, StatRow)> = Default::default();
    let mut n = 0u64;
    while count.is_none_or(|c| n < c) {
        if n > 0 {
            std::thread::sleep(interval);
        }
        n += 1;
        let now = Instant::now();
        let rows = stat_rows(dir)?;
        let view = sidecar_view(w);
        let from = if view.is_some() { ", sidecar answering" } else { "" };
        outln!("{}  ({} files{from})", dir.display(), rows.len());
        for row in rows {
            let row = match row {
                Ok(r) => r,
                Err(e) => {
                    outln!("  {e}");
                    continue;
                }
            };
            let mut line = format!("  {:<24}", row.name);
            let before = last.get(&row.name).map(|(t, r)| (t, &r.figures));
            for (label, v) in &row.figures {
                line.push_str(&format!(" {label}={v}"));
                let prev = before.and_then(|(t, f)| Some((t, f.iter().find(|(l, _)| l == label)?.1)));
                if let (true, Some((t, p))) = (RATED.contains(label), prev) {
                    let secs = now.duration_since(*t).as_secs_f64();
                    if secs > 0.0 {
                        line.push_str(&format!(" ({:.0}/s)", v.saturating_sub(p) as f64 / secs));
                    }
                }
            }
            let seen = view.as_ref().and_then(|v| v.files.get(&row.name));
            match seen {
                // A mirrored table's gets are counted by the near cache (its own line below).
                Some(SidecarSaw::Table { mirror: Some(m), .. }) => line.push_str(&format!(" {m}")),
                Some(SidecarSaw::Table { hits, misses, mirror: None }) => {
                    let ratio = match hits + misses {
                        0 => "-".to_string(),
                        gets => format!("{:.3}", *hits as f64 / gets as f64),
                    };
                    line.push_str(&format!(" http_gets={} hit_ratio={ratio}", hits + misses));
                }
                _ => {}
            }
            outln!("{line}");
            if let Some(SidecarSaw::Ring { subscriptions }) = seen {
                for (i, (delivered, lag, lost)) in subscriptions.iter().enumerate() {
                    outln!("    subscriber {:<3} delivered_seq={delivered} lag={lag} lost={lost}", i + 1);
                }
            }
            last.insert(row.name.clone(), (now, row));
        }
        if let Some(near) = view.as_ref().and_then(|v| v.near.as_ref()) {
            outln!("{}", near_line(near));
        }
    }
    Ok(())
}

//! The command line of `podcache` (clap).

use crate::config::{self, Config, FileConfig};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// podcache: a shared-memory ring and key-value cache for the containers of a Kubernetes Pod.
///
/// `podcache serve` owns the files on the shared memory-backed volume (emptyDir with medium:
/// Memory) and serves an HTTP API, health and metrics. The other commands work on the files
/// directly with the read-only reader library (they work on a read-only mount), or write through
/// the running sidecar.
#[derive(Debug, Parser)]
#[command(name = "podcache", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar: create or attach the files, serve the HTTP API, health and metrics.
    ///
    /// Every flag has a PODCACHE_* environment variable, and --config names a TOML file with the
    /// same settings (flags win over the environment, the environment over the file).
    /// Example: podcache serve --dir /run/podcache --table web=10000:64MiB --ring events=16MiB:64KiB
    Serve(Box<ServeArgs>),
    /// Show a file's header, layout and statistics.
    Inspect {
        /// A `.table` or `.ring` file.
        path: PathBuf,
        /// Print JSON instead of a table for people.
        #[arg(long)]
        json: bool,
    },
    /// Check a file's integrity (header, layout, every record's checksum, the index); exit
    /// status 1 if it is corrupt.
    Verify {
        /// A `.table` or `.ring` file.
        path: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a key's value to stdout (exit status 1 if absent).
    Get {
        /// The directory.
        #[command(flatten)]
        dir: DirArg,
        /// The table.
        table: String,
        /// The key: its bytes as given, UTF-8 or not.
        key: std::ffi::OsString,
    },
    /// List a table's live keys, one per line.
    Keys {
        /// The directory.
        #[command(flatten)]
        dir: DirArg,
        /// The table.
        table: String,
    },
    /// Print a ring's messages as they arrive, like `tail -f` (Ctrl-C to stop).
    Tail {
        /// The directory.
        #[command(flatten)]
        dir: DirArg,
        /// The ring.
        ring: String,
        /// Where to start.
        #[arg(long, value_enum, default_value_t = From::Newest)]
        from: From,
        /// Stop after this many messages.
        #[arg(long, short = 'n')]
        count: Option<u64>,
        /// Stop when no message arrived for this many milliseconds.
        #[arg(long)]
        idle_ms: Option<u64>,
    },
    /// Put a key (through the sidecar if it holds the table, else directly into the file).
    Put {
        /// Where the files and the sidecar are.
        #[command(flatten)]
        w: WriteArgs,
        /// The table.
        table: String,
        /// The key.
        key: String,
        /// The value (`-` or absent: read stdin).
        value: Option<String>,
        /// Expire after this many milliseconds.
        #[arg(long)]
        ttl_ms: Option<u64>,
    },
    /// Delete a key (through the sidecar if it holds the table, else directly).
    Del {
        /// Where the files and the sidecar are.
        #[command(flatten)]
        w: WriteArgs,
        /// The table.
        table: String,
        /// The key.
        key: String,
    },
    /// Publish a message to a ring (through the sidecar if it holds the ring, else directly).
    Publish {
        /// Where the files and the sidecar are.
        #[command(flatten)]
        w: WriteArgs,
        /// The ring.
        ring: String,
        /// The message (`-` or absent: read stdin).
        message: Option<String>,
    },
    /// Print every live item of a table as NDJSON lines `{"key": "...", "value": "...",
    /// "ttl_ms": N}`, the format `load` reads (read-only, from the file): keys and values that
    /// are not UTF-8 as `key_base64` / `value_base64`, `ttl_ms` the time left for items put with
    /// a TTL (rounded up to the next millisecond). Not a snapshot: items put or deleted during
    /// the dump may or may not appear; expired items do not.
    Dump {
        /// The directory.
        #[command(flatten)]
        dir: DirArg,
        /// The table.
        table: String,
    },
    /// Load NDJSON lines `{"key": "...", "value": "...", "ttl_ms": N}` into a table (through the
    /// sidecar if it holds the table, else directly). Keys and values that are not UTF-8 go as
    /// `key_base64` / `value_base64` (what `dump` prints). A bad line loads nothing.
    Load {
        /// Where the files and the sidecar are.
        #[command(flatten)]
        w: WriteArgs,
        /// The table.
        table: String,
        /// The NDJSON file (`-` or absent: read stdin).
        file: Option<PathBuf>,
    },
    /// Show every table and ring of the directory, refreshed: items, bytes, puts, evictions,
    /// expirations, messages, sequence numbers and rates per second (read-only, from the
    /// files); when the sidecar answers (--url, --socket), also the hit ratio of its HTTP gets
    /// per table, the lag of each of its event-stream subscribers per ring and, for a near
    /// cache of Redis, each mirrored table's prefix and the near cache's counters (hits,
    /// misses, fills, invalidations, connection state, upstream latency).
    Stat {
        /// Where the files and the sidecar are.
        #[command(flatten)]
        w: WriteArgs,
        /// Milliseconds between two refreshes.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Stop after this many refreshes (default: until Ctrl-C).
        #[arg(long, short = 'n')]
        count: Option<u64>,
    },
}

/// Where a ring subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum From {
    /// The oldest message still in the ring.
    Oldest,
    /// The next message published.
    Newest,
}

/// The directory of the files.
#[derive(Debug, Args)]
pub struct DirArg {
    /// Directory of the podcache files.
    #[arg(long, env = "PODCACHE_DIR", default_value = "/run/podcache")]
    pub dir: PathBuf,
}

/// Options of the writing commands.
#[derive(Debug, Args)]
pub struct WriteArgs {
    /// The directory.
    #[command(flatten)]
    pub dir: DirArg,
    /// The sidecar's API, used when it holds the file's writer lock (default: its socket in
    /// --dir if --socket is given, else http://127.0.0.1:7070).
    #[arg(long, env = "PODCACHE_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// Talk to the sidecar over this Unix socket in --dir instead of --url.
    #[arg(long, env = "PODCACHE_SOCKET")]
    pub socket: Option<String>,
    /// File holding the sidecar's bearer token.
    #[arg(long, env = "PODCACHE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// Log format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line (for log collectors).
    Json,
}

/// Flags of `podcache serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML file with the same settings as the flags.
    #[arg(long, env = "PODCACHE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of the files (the shared volume's mount path) [default: /run/podcache].
    #[arg(long, env = "PODCACHE_DIR")]
    pub dir: Option<PathBuf>,
    /// A table NAME=ITEMS:BYTES, e.g. web=10000:64Mi (repeatable; env: comma separated; an
    /// empty value means no table, overriding the config file).
    #[arg(long = "table", env = "PODCACHE_TABLES", value_delimiter = ',', value_parser = checked(config::parse_table))]
    pub tables: Option<Vec<String>>,
    /// A ring `NAME=BYTES[:MAX_MESSAGE]` (repeatable).
    #[arg(
        help = "A ring NAME=BYTES[:MAX_MESSAGE], e.g. events=16Mi:64Ki (repeatable; BYTES a power of two; \
                an empty value means no ring)",
        long = "ring",
        env = "PODCACHE_RINGS",
        value_delimiter = ','
    )]
    pub rings: Option<Vec<String>>,
    /// Address of the HTTP API [default: 127.0.0.1:7070] ("none": no TCP listener).
    #[arg(long, env = "PODCACHE_LISTEN")]
    pub listen: Option<String>,
    /// Also serve the API on a Unix socket of this name inside --dir.
    #[arg(long, env = "PODCACHE_SOCKET")]
    pub socket: Option<String>,
    /// Address of /healthz, /readyz and /metrics (default `[::]:7071`, dual-stack: IPv4 and
    /// IPv6, or IPv4 only where the host has no IPv6; "none": off).
    #[arg(
        long,
        env = "PODCACHE_OPS_LISTEN",
        help = "Address of /healthz, /readyz and /metrics [default: [::]:7071, dual-stack: IPv4 and \
                IPv6, or IPv4 only where the host has no IPv6] (\"none\": off)"
    )]
    pub ops_listen: Option<String>,
    /// File holding a bearer token the API requires (ops endpoints are open).
    #[arg(long, env = "PODCACHE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Permission bits of created files, octal [default: 0640].
    #[arg(long, env = "PODCACHE_FILE_MODE")]
    pub file_mode: Option<String>,
    /// Replace a file whose layout differs from the configuration (its data is lost; readers
    /// of the old file see it retired; logged as a warning naming what was replaced). Without
    /// it, start-up fails naming both layouts. `--replace-mismatched false` (or the variable set
    /// to false) overrides a config file's true.
    #[arg(
        long,
        env = "PODCACHE_REPLACE_MISMATCHED",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub replace_mismatched: Option<bool>,
    /// Largest request body (values, messages, loads) [default: 16MiB].
    #[arg(long, env = "PODCACHE_MAX_BODY")]
    pub max_body: Option<String>,
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "PODCACHE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Time for a complete request head, from a connection's start or the end of its previous
    /// response (also the idle keep-alive timeout) [default: 10s].
    #[arg(long, env = "PODCACHE_HEADER_TIMEOUT")]
    pub header_timeout: Option<String>,
    /// Time for a whole request body, from the end of its head (else 408) [default: 30s].
    #[arg(long, env = "PODCACHE_BODY_TIMEOUT")]
    pub body_timeout: Option<String>,
    /// Most connections open at once, per listener [default: 1024].
    #[arg(long, env = "PODCACHE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// On SIGTERM, how long open connections (event streams, uploads) may take to finish
    /// before they are closed [default: 10s]; keep it below the Pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, env = "PODCACHE_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// Upstream Redis of the near cache, `redis://[USER@]HOST:PORT`, a Redis Cluster
    /// `redis+cluster://[USER@]HOST:PORT[,HOST:PORT...]` (seed nodes) or `unix:///PATH`.
    #[arg(
        help = "Upstream Redis of the near cache: redis://[USER@]HOST:PORT, redis+cluster://[USER@]HOST:PORT[,HOST:PORT...] \
                (Redis Cluster seeds) or unix:///PATH (see --mirror)",
        long,
        env = "PODCACHE_UPSTREAM"
    )]
    pub upstream: Option<String>,
    /// File holding the upstream Redis password (the ACL user is the URL's USER, else default).
    #[arg(long, env = "PODCACHE_UPSTREAM_PASSWORD_FILE")]
    pub upstream_password_file: Option<PathBuf>,
    /// A request or PING to the upstream Redis unanswered this long means the connection is
    /// lost: the mirrored tables are cleared and it reconnects [default: 3s].
    #[arg(long, env = "PODCACHE_UPSTREAM_TIMEOUT")]
    pub upstream_timeout: Option<String>,
    /// After the connection to the upstream Redis is lost, keep serving the mirrored tables'
    /// last values this long (reads may be that stale) before clearing them [default: 0s, clear
    /// at once]. One Redis only; a Redis Cluster always clears.
    #[arg(long, env = "PODCACHE_UPSTREAM_MAX_STALE")]
    pub upstream_max_stale: Option<String>,
    /// A table that mirrors the Redis keys under a prefix, TABLE=PREFIX, e.g. users=user:
    /// (repeatable; env: comma separated): GET fills on a miss, PUT/DELETE write through, Redis
    /// invalidations evict.
    #[arg(long = "mirror", env = "PODCACHE_MIRRORS", value_delimiter = ',', value_parser = crate::near::parse_mirror)]
    pub mirrors: Vec<crate::near::MirrorSpec>,
    /// A table that holds every Redis key under a prefix, TABLE=PREFIX (repeatable; env: comma
    /// separated): loaded with SCAN at start (/readyz answers 503 until done) and kept in sync
    /// by a CLIENT TRACKING BCAST connection. One Redis only; prefixes may not overlap.
    #[arg(long = "prefetch", env = "PODCACHE_PREFETCH", value_delimiter = ',', value_parser = crate::near::parse_prefetch)]
    pub prefetch: Vec<crate::near::MirrorSpec>,
    /// Longest a mirrored entry is kept without an invalidation, or "none" [default: 1h].
    #[arg(long, env = "PODCACHE_MIRROR_MAX_TTL")]
    pub mirror_max_ttl: Option<String>,
    /// Log every API request (method, route pattern, status, microseconds; never keys or
    /// bodies) at INFO with target podcache::access [default: off].
    #[arg(
        long,
        env = "PODCACHE_ACCESS_LOG",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub access_log: Option<bool>,
}

/// A clap parser that checks an item of a table or ring list (so a bad one is a usage error)
/// and keeps its text; an empty item passes (it stands for nothing, see `config::parse_list`).
fn checked<T>(parse: fn(&str) -> Result<T, String>) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |s: &str| if s.trim().is_empty() { Ok(String::new()) } else { parse(s).map(|_| s.to_string()) }
}

fn parse_addr(s: &str) -> Result<Option<SocketAddr>, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| format!("{s:?} is not an address such as 127.0.0.1:7070"))
}

impl ServeArgs {
    /// Merge the flags (and environment) over the TOML file and the defaults.
    pub fn to_config(&self) -> Result<(Config, LogFormat), String> {
        let file = match &self.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let mut c = Config::default();
        if let Some(d) = self.dir.clone().or(file.dir) {
            c.dir = d;
        }
        // Field by field: a flag, else its environment variable (clap), else the file, else the
        // default. A list given empty (`PODCACHE_TABLES=`) is "none", not "unset".
        c.tables = config::parse_list(self.tables.as_deref().unwrap_or(&file.tables), config::parse_table)?;
        c.rings = config::parse_list(self.rings.as_deref().unwrap_or(&file.rings), config::parse_ring)?;
        if let Some(l) = self.listen.as_deref().or(file.listen.as_deref()) {
            c.listen = parse_addr(l)?;
        }
        c.socket = self.socket.clone().or(file.socket);
        if let Some(l) = self.ops_listen.as_deref().or(file.ops_listen.as_deref()) {
            c.ops_listen = parse_addr(l)?;
        }
        c.token_file = self.token_file.clone().or(file.token_file);
        if let Some(m) = self.file_mode.as_deref().or(file.file_mode.as_deref()) {
            c.file_mode = config::parse_mode(m)?;
        }
        if let Some(r) = self.replace_mismatched.or(file.replace_mismatched) {
            c.replace_mismatched = r;
        }
        if let Some(b) = self.max_body.as_deref().or(file.max_body.as_deref()) {
            c.max_body = usize::try_from(config::parse_size(b)?).map_err(|_| "max body too large".to_string())?;
        }
        if let Some(d) = self.header_timeout.as_deref().or(file.header_timeout.as_deref()) {
            c.limits.header_timeout = config::parse_duration(d).map_err(|e| format!("header timeout: {e}"))?;
        }
        if let Some(d) = self.body_timeout.as_deref().or(file.body_timeout.as_deref()) {
            c.limits.body_timeout = config::parse_duration(d).map_err(|e| format!("body timeout: {e}"))?;
        }
        if let Some(d) = self.shutdown_grace.as_deref().or(file.shutdown_grace.as_deref()) {
            c.limits.shutdown_grace = config::parse_duration(d).map_err(|e| format!("shutdown grace: {e}"))?;
        }
        if let Some(a) = self.access_log.or(file.access_log) {
            c.access_log = a;
        }
        if let Some(n) = self.max_connections.or(file.max_connections) {
            c.limits.max_connections = n;
        }
        c.near = crate::near::config_from(
            self.upstream.as_deref().or(file.upstream.as_deref()),
            self.upstream_password_file.clone().or(file.upstream_password_file),
            {
                let mut m: Vec<crate::near::MirrorSpec> = if self.mirrors.is_empty() {
                    file.mirrors.iter().map(|m| crate::near::parse_mirror(m)).collect::<Result<_, _>>()?
                } else {
                    self.mirrors.clone()
                };
                if self.prefetch.is_empty() {
                    for p in &file.prefetch {
                        m.push(crate::near::parse_prefetch(p)?);
                    }
                } else {
                    m.extend(self.prefetch.iter().cloned());
                }
                m
            },
            self.mirror_max_ttl.as_deref().or(file.mirror_max_ttl.as_deref()),
            self.upstream_timeout.as_deref().or(file.upstream_timeout.as_deref()),
            self.upstream_max_stale.as_deref().or(file.upstream_max_stale.as_deref()),
        )?;
        let log = match (self.log_format, file.log_format.as_deref()) {
            (Some(l), _) => l,
            (None, Some("json")) => LogFormat::Json,
            (None, Some("plain") | None) => LogFormat::Plain,
            (None, Some(other)) => return Err(format!("log_format {other:?}: use plain or json")),
        };
        c.validate()?;
        Ok((c, log))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_flags_win_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, "dir = \"/from-file\"\ntables = [\"a=10:1MiB\"]\nlisten = \"127.0.0.1:1\"\n").unwrap();
        let cli = Cli::try_parse_from([
            "podcache",
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:2",
            "--ring",
            "e=1MiB",
            "--ops-listen",
            "none",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else { panic!("serve") };
        let (c, _) = args.to_config().unwrap();
        assert_eq!(c.dir, PathBuf::from("/from-file"));
        assert_eq!(c.tables.len(), 1);
        assert_eq!(c.rings[0].capacity, 1 << 20);
        assert_eq!(c.listen, Some("127.0.0.1:2".parse().unwrap()));
        assert_eq!(c.ops_listen, None);
    }
}

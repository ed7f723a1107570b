//! The configuration of `podcache serve`: what files to own, where to listen, limits.
//!
//! Sources, lowest priority first: an optional TOML file, `PODCACHE_*` environment variables,
//! command-line flags (merged in `main`; see [`crate::cli::ServeArgs`]).

use crate::names;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A key-value table to create or attach: `<dir>/<name>.table`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    /// Name (`[A-Za-z0-9_-]{1,64}`).
    pub name: String,
    /// Most items.
    pub max_items: u64,
    /// Bytes of the data region.
    pub data_bytes: u64,
}

/// A broadcast ring to create or attach: `<dir>/<name>.ring`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingSpec {
    /// Name (`[A-Za-z0-9_-]{1,64}`).
    pub name: String,
    /// Bytes of records the ring holds (a power of two).
    pub capacity: u64,
    /// Largest message (default: the largest the ring allows).
    pub max_message: Option<u32>,
}

/// Everything `run` needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Directory of the files (the shared volume's mount path).
    pub dir: PathBuf,
    /// Tables to own.
    pub tables: Vec<TableSpec>,
    /// Rings to own.
    pub rings: Vec<RingSpec>,
    /// Address of the HTTP API (`None`: no TCP listener, e.g. socket only).
    pub listen: Option<SocketAddr>,
    /// Name of a Unix socket for the API, created inside `dir`.
    pub socket: Option<String>,
    /// Address of the health and metrics listener (`None`: none).
    pub ops_listen: Option<SocketAddr>,
    /// File holding the bearer token the API requires (`None`: no token).
    pub token_file: Option<PathBuf>,
    /// Permission bits of created files.
    pub file_mode: u32,
    /// Replace a file whose layout differs from the configuration (else: refuse to start).
    pub replace_mismatched: bool,
    /// Largest request body in bytes (values, messages, NDJSON loads).
    pub max_body: usize,
    /// How often expired items are swept.
    pub sweep_interval: Duration,
    /// Per-connection timeouts and limits of every listener, and the shutdown grace.
    pub limits: crate::http::Limits,
    /// Tables that mirror an upstream Redis (`--upstream`, `--mirror`); `None`: no near cache.
    pub near: Option<crate::near::NearConfig>,
    /// Log every API request at INFO, target `podcache::access` (method, route pattern, status,
    /// microseconds; never the key or the body). Off by default.
    pub access_log: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dir: PathBuf::from("/run/podcache"),
            tables: Vec::new(),
            rings: Vec::new(),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 7070))),
            socket: None,
            // Dual-stack: probes and scrapes reach it on IPv4, IPv6 and dual-stack clusters.
            ops_listen: Some(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 7071))),
            token_file: None,
            file_mode: 0o640,
            replace_mismatched: false,
            max_body: 16 << 20,
            sweep_interval: Duration::from_secs(1),
            limits: crate::http::Limits::default(),
            near: None,
            access_log: false,
        }
    }
}

impl Config {
    /// Check names (valid, no duplicates) and sizes before anything touches the disk.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for t in &self.tables {
            names::check(&t.name).map_err(|e| format!("table {:?}: {e}", t.name))?;
            if !seen.insert(format!("{}.table", t.name)) {
                return Err(format!("table {:?} configured twice", t.name));
            }
        }
        for r in &self.rings {
            names::check(&r.name).map_err(|e| format!("ring {:?}: {e}", r.name))?;
            if !seen.insert(format!("{}.ring", r.name)) {
                return Err(format!("ring {:?} configured twice", r.name));
            }
        }
        if let Some(s) = &self.socket {
            names::check_socket(s).map_err(|e| format!("socket {s:?}: {e}"))?;
        }
        if self.file_mode & !0o777 != 0 {
            return Err(format!("file mode {:o} has bits beyond 0777", self.file_mode));
        }
        if self.limits.max_connections == 0 {
            return Err("max connections must be at least 1".into());
        }
        for (what, d) in [("header timeout", self.limits.header_timeout), ("body timeout", self.limits.body_timeout)] {
            if d.is_zero() {
                return Err(format!("{what} must be more than 0"));
            }
        }
        if self.max_body == 0 {
            return Err("max body must be at least 1 byte".into());
        }
        Ok(())
    }
}

/// Parse a byte size the way Kubernetes writes quantities: a plain number of bytes, a binary
/// suffix `Ki`, `Mi`, `Gi`, `Ti` (powers of 1024; `KiB`, `MiB`, `GiB`, `TiB` and `B` as well) or a
/// decimal suffix `k`, `M`, `G`, `T` (powers of 1000, as in Kubernetes).
///
/// The suffixes that meant powers of 1024 in earlier releases and mean something else (or
/// nothing) to Kubernetes are refused with a message saying what to write: `K`, `m`, `g`, `KB`,
/// `MB`, `GB`, `TB`. A configuration written for the old meaning of `M`, `G` (MiB, GiB) now asks
/// for a different layout: a ring's capacity is then no power of two and refused, a table's
/// layout differs from its file and start-up is refused naming both layouts (nothing is
/// replaced without `--replace-mismatched`); write `Mi`, `Gi` to keep the old files.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size (examples: 4096, 64Ki, 16Mi, 1Gi, 10k)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "Ki" | "KiB" | "kiB" | "kib" => 1 << 10,
        "Mi" | "MiB" | "mib" => 1 << 20,
        "Gi" | "GiB" | "gib" => 1 << 30,
        "Ti" | "TiB" | "tib" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        other => {
            let l = other.to_ascii_lowercase();
            let hint = match l.trim_end_matches('b') {
                "k" => " (write Ki for 1024 or k for 1000)",
                "m" => " (write Mi for 2^20 or M for 10^6; a lower-case m means milli to Kubernetes)",
                "g" => " (write Gi for 2^30 or G for 10^9)",
                "t" => " (write Ti for 2^40 or T for 10^12)",
                _ => " (use Ki, Mi, Gi, Ti for powers of 1024, or k, M, G, T for powers of 1000)",
            };
            return Err(format!("{s:?}: unknown or ambiguous unit {other:?}{hint}"));
        }
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// Parse a duration: `500ms`, `10s`, `2m` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration (examples: 500ms, 10s, 2m)"))?;
    let ms: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use ms, s or m)")),
    };
    n.checked_mul(ms).map(Duration::from_millis).ok_or_else(|| format!("{s:?} is too long"))
}

/// Parse `NAME=ITEMS:BYTES`, e.g. `web=10000:64Mi` (sizes: [`parse_size`]).
pub fn parse_table(s: &str) -> Result<TableSpec, String> {
    let (name, rest) =
        s.split_once('=').ok_or_else(|| format!("{s:?}: expected NAME=ITEMS:BYTES, e.g. web=10000:64MiB"))?;
    let (items, bytes) =
        rest.split_once(':').ok_or_else(|| format!("{s:?}: expected NAME=ITEMS:BYTES, e.g. web=10000:64MiB"))?;
    let max_items = parse_size(items).map_err(|e| format!("table {name}: items: {e}"))?;
    let data_bytes = parse_size(bytes).map_err(|e| format!("table {name}: bytes: {e}"))?;
    names::check(name).map_err(|e| format!("table {name:?}: {e}"))?;
    Ok(TableSpec { name: name.to_string(), max_items, data_bytes })
}

/// Parse `NAME=BYTES[:MAX_MESSAGE]`, e.g. `events=16Mi:64Ki` (sizes: [`parse_size`]).
pub fn parse_ring(s: &str) -> Result<RingSpec, String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=BYTES[:MAX_MESSAGE], e.g. events=16MiB:64KiB"))?;
    let (cap, max) = match rest.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (rest, None),
    };
    let capacity = parse_size(cap).map_err(|e| format!("ring {name}: bytes: {e}"))?;
    if !capacity.is_power_of_two() {
        return Err(format!(
            "ring {name}: {cap:?} is {capacity} bytes, not a power of two (k, M, G are powers of 1000 as in \
             Kubernetes; write Ki, Mi, Gi, e.g. 16Mi)"
        ));
    }
    let max_message = match max {
        Some(m) => {
            let v = parse_size(m).map_err(|e| format!("ring {name}: max message: {e}"))?;
            Some(u32::try_from(v).map_err(|_| format!("ring {name}: max message {v} exceeds 4 GiB"))?)
        }
        None => None,
    };
    names::check(name).map_err(|e| format!("ring {name:?}: {e}"))?;
    Ok(RingSpec { name: name.to_string(), capacity, max_message })
}

/// Parse every non-empty item of a list of tables or rings: an empty item (an empty
/// `PODCACHE_TABLES`, a trailing comma) stands for nothing, so an empty list means none.
pub fn parse_list<T>(items: &[String], parse: fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).map(parse).collect()
}

/// Parse an octal file mode such as `0640` or `640`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim().trim_start_matches("0o");
    u32::from_str_radix(t, 8).map_err(|_| format!("{s:?} is not an octal mode such as 0640"))
}

/// The optional TOML configuration file (`--config`). Every field is optional; flags and
/// environment variables override it.
///
/// ```toml
/// dir = "/run/podcache"
/// listen = "127.0.0.1:7070"
/// ops_listen = "[::]:7071"
/// socket = "podcache.sock"
/// token_file = "/etc/podcache/token"
/// file_mode = "0640"
/// replace_mismatched = false
/// max_body = "16MiB"
/// header_timeout = "10s"
/// body_timeout = "30s"
/// max_connections = 1024
/// shutdown_grace = "10s"
/// access_log = false
/// tables = ["web=10000:64MiB", "geo=100000:64MiB"]
/// rings = ["events=16MiB:64KiB"]
/// upstream = "redis://127.0.0.1:6379"
/// upstream_password_file = "/etc/podcache/redis-password"
/// mirrors = ["web=page:"]
/// prefetch = ["geo=geo:"]
/// mirror_max_ttl = "1h"
/// upstream_timeout = "3s"
/// upstream_max_stale = "0s"
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See `--dir`.
    pub dir: Option<PathBuf>,
    /// See `--table` (same syntax).
    #[serde(default)]
    pub tables: Vec<String>,
    /// See `--ring` (same syntax).
    #[serde(default)]
    pub rings: Vec<String>,
    /// See `--listen`.
    pub listen: Option<String>,
    /// See `--socket`.
    pub socket: Option<String>,
    /// See `--ops-listen`.
    pub ops_listen: Option<String>,
    /// See `--token-file`.
    pub token_file: Option<PathBuf>,
    /// See `--file-mode`.
    pub file_mode: Option<String>,
    /// See `--replace-mismatched`.
    pub replace_mismatched: Option<bool>,
    /// See `--max-body`.
    pub max_body: Option<String>,
    /// See `--log-format`.
    pub log_format: Option<String>,
    /// See `--header-timeout`.
    pub header_timeout: Option<String>,
    /// See `--body-timeout`.
    pub body_timeout: Option<String>,
    /// See `--max-connections`.
    pub max_connections: Option<usize>,
    /// See `--shutdown-grace`.
    pub shutdown_grace: Option<String>,
    /// See `--upstream`.
    pub upstream: Option<String>,
    /// See `--upstream-password-file`.
    pub upstream_password_file: Option<PathBuf>,
    /// See `--mirror` (same syntax).
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// See `--prefetch` (same syntax).
    #[serde(default)]
    pub prefetch: Vec<String>,
    /// See `--mirror-max-ttl`.
    pub mirror_max_ttl: Option<String>,
    /// See `--upstream-timeout`.
    pub upstream_timeout: Option<String>,
    /// See `--upstream-max-stale`.
    pub upstream_max_stale: Option<String>,
    /// See `--access-log`.
    pub access_log: Option<bool>,
}

impl FileConfig {
    /// Read and parse a TOML file.
    pub fn load(path: &std::path::Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1Gi"), Ok(1 << 30));
        assert_eq!(parse_size("1Mi"), Ok(1 << 20));
        assert_eq!(parse_size("64Ki"), Ok(64 << 10));
        // Decimal, as in Kubernetes.
        assert_eq!(parse_size("10k"), Ok(10_000));
        assert_eq!(parse_size("1M"), Ok(1_000_000));
        assert_eq!(parse_size("2G"), Ok(2_000_000_000));
        // The old binary single letters and the B forms are refused, naming what to write.
        for bad in ["1K", "1m", "1g", "1KB", "1MB", "1GB", "1kb"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("ambiguous") && e.contains("i "), "{bad}: {e}");
        }
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn specs() {
        assert_eq!(
            parse_table("web=10000:64MiB"),
            Ok(TableSpec { name: "web".into(), max_items: 10_000, data_bytes: 64 << 20 })
        );
        assert_eq!(
            parse_ring("events=16MiB:64KiB"),
            Ok(RingSpec { name: "events".into(), capacity: 16 << 20, max_message: Some(64 << 10) })
        );
        assert_eq!(parse_ring("e=1MiB").unwrap().max_message, None);
        assert!(parse_table("../x=1:1MiB").is_err());
        assert!(parse_table("web=10").is_err());
        assert!(parse_ring("=1MiB").is_err());
        assert_eq!(parse_mode("0640"), Ok(0o640));
        assert!(parse_mode("0999").is_err());
    }

    #[test]
    fn toml_file() {
        let f: FileConfig =
            toml::from_str("dir = \"/x\"\ntables = [\"a=10:1MiB\"]\nreplace_mismatched = true\n").unwrap();
        assert_eq!(f.dir, Some(PathBuf::from("/x")));
        assert_eq!(f.tables, vec!["a=10:1MiB".to_string()]);
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
    }
}

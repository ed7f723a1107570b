//! Prometheus metrics: HTTP request counts and latencies kept by the server, file statistics read
//! at scrape time.

use crate::server::Shared;
use crate::stats::{ring_stats, RingStats};
use podcache_reader::TableStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The `method` label: a fixed set, so a client cannot add series with made-up methods.
pub(crate) fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Labels of an HTTP request. Every label takes a value from a fixed set: the method through
/// [`method_label`], the route from the router's own patterns (or `unmatched`), the status from
/// the responses the server writes. Requests refused for their token are not labelled at all.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) method: &'static str,
    pub(crate) route: String,
    pub(crate) status: u16,
}

/// Labels of a latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    pub(crate) method: &'static str,
    pub(crate) route: String,
}

/// Labels of a get counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GetLabels {
    pub(crate) table: String,
    pub(crate) result: &'static str,
}

fn new_histogram() -> Histogram {
    // 20 µs to ~1.3 s.
    Histogram::new(exponential_buckets(20e-6, 2.0, 17))
}

/// The server's own metrics.
pub(crate) struct Metrics {
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub(crate) gets: Family<GetLabels, Counter>,
    /// Requests refused for a missing or wrong token (no labels: nothing of an unauthenticated
    /// request reaches a label).
    pub(crate) unauthorized: Counter,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(new_histogram as fn() -> Histogram),
            gets: Family::default(),
            unauthorized: Counter::default(),
        }
    }
}

/// File statistics taken just before a scrape.
#[derive(Debug, Default)]
struct Snapshot {
    tables: Vec<(String, TableStats, u64, u64)>,
    /// Expired items not yet removed, by table (as of the last census).
    expired: Vec<(String, u64)>,
    rings: Vec<(String, RingStats, u64)>,
    ready: bool,
    subscribers: usize,
}

fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    rows: impl Iterator<Item = ([(&'static str, String); 1], M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, v) in rows {
        v.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let g = MetricType::Gauge;
        let c = MetricType::Counter;
        {
            let m = enc.encode_descriptor(
                "ready",
                "1 when every file is created or attached, still at its path, and the API serves",
                None,
                g,
            )?;
            ConstGauge::new(i64::from(self.ready)).encode(m)?;
        }
        {
            let mut m = enc.encode_descriptor(
                "build_info",
                "1, labelled with the podcache version and the file layout version it writes",
                None,
                g,
            )?;
            let labels = [
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("layout_version", podcache_format::header::LAYOUT_VERSION.to_string()),
            ];
            ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
        }
        {
            let m = enc.encode_descriptor("ring_subscriptions", "Open ring subscriptions (SSE)", None, g)?;
            ConstGauge::new(self.subscribers as i64).encode(m)?;
        }
        let t = |f: fn(&TableStats, u64, u64) -> u64| {
            self.tables.iter().map(move |(n, s, mi, fs)| ([("table", n.clone())], f(s, *mi, *fs)))
        };
        family(
            &mut enc,
            "table_items",
            "Items in the table, including expired ones not yet removed (see table_expired_items)",
            g,
            t(|s, _, _| s.items).map(|(l, v)| (l, ConstGauge::new(v as i64))),
        )?;
        family(
            &mut enc,
            "table_expired_items",
            "Items expired but not yet removed, counted in table_items (counted every 10 s or more)",
            g,
            self.expired.iter().map(|(n, v)| ([("table", n.clone())], ConstGauge::new(*v as i64))),
        )?;
        family(
            &mut enc,
            "table_max_items",
            "Most items",
            g,
            t(|_, m, _| m).map(|(l, v)| (l, ConstGauge::new(v as i64))),
        )?;
        family(
            &mut enc,
            "table_bytes_used",
            "Bytes of live records",
            g,
            t(|s, _, _| s.bytes_used).map(|(l, v)| (l, ConstGauge::new(v as i64))),
        )?;
        family(
            &mut enc,
            "table_bytes_capacity",
            "Bytes of the data region",
            g,
            t(|s, _, _| s.bytes_capacity).map(|(l, v)| (l, ConstGauge::new(v as i64))),
        )?;
        family(
            &mut enc,
            "table_file_bytes",
            "Size of the table file (memory on tmpfs)",
            g,
            t(|_, _, f| f).map(|(l, v)| (l, ConstGauge::new(v as i64))),
        )?;
        family(
            &mut enc,
            "table_puts",
            "Puts since the file was created",
            c,
            t(|s, _, _| s.puts).map(|(l, v)| (l, ConstCounter::new(v))),
        )?;
        family(
            &mut enc,
            "table_deletes",
            "Deletes since the file was created",
            c,
            t(|s, _, _| s.deletes).map(|(l, v)| (l, ConstCounter::new(v))),
        )?;
        family(
            &mut enc,
            "table_evictions",
            "Items evicted to make room",
            c,
            t(|s, _, _| s.evictions).map(|(l, v)| (l, ConstCounter::new(v))),
        )?;
        family(
            &mut enc,
            "table_expirations",
            "Expired items swept",
            c,
            t(|s, _, _| s.expirations).map(|(l, v)| (l, ConstCounter::new(v))),
        )?;
        let r =
            |f: fn(&RingStats, u64) -> u64| self.rings.iter().map(move |(n, s, fs)| ([("ring", n.clone())], f(s, *fs)));
        family(
            &mut enc,
            "ring_messages",
            "Messages published since the file was created",
            c,
            r(|s, _| s.messages_total).map(|(l, v)| (l, ConstCounter::new(v))),
        )?;
        family(
            &mut enc,
            "ring_bytes",
            "Bytes of records published since the file was created",
            c,
            r(|s, _| s.bytes_total).map(|(l, v)| (l, ConstCounter::new(v))),
        )?;
        family(
            &mut enc,
            "ring_retained_messages",
            "Messages in the ring now",
            g,
            r(|s, _| s.messages).map(|(l, v)| (l, ConstGauge::new(v as i64))),
        )?;
        family(
            &mut enc,
            "ring_retained_bytes",
            "Bytes of records in the ring now",
            g,
            r(|s, _| s.bytes).map(|(l, v)| (l, ConstGauge::new(v as i64))),
        )?;
        family(
            &mut enc,
            "ring_capacity_bytes",
            "Bytes of records the ring holds",
            g,
            r(|s, _| s.capacity).map(|(l, v)| (l, ConstGauge::new(v as i64))),
        )?;
        family(
            &mut enc,
            "ring_oldest_seq",
            "Sequence number of the oldest message (0: empty)",
            g,
            r(|s, _| s.oldest_seq).map(|(l, v)| (l, ConstGauge::new(v as i64))),
        )?;
        family(
            &mut enc,
            "ring_newest_seq",
            "Sequence number of the newest message (0: none)",
            g,
            r(|s, _| s.newest_seq).map(|(l, v)| (l, ConstGauge::new(v as i64))),
        )?;
        family(
            &mut enc,
            "ring_file_bytes",
            "Size of the ring file (memory on tmpfs)",
            g,
            r(|_, f| f).map(|(l, v)| (l, ConstGauge::new(v as i64))),
        )?;
        Ok(())
    }
}

/// Render every metric in the Prometheus text format.
pub(crate) fn render(shared: &Shared) -> Result<String, std::fmt::Error> {
    let mut snap = Snapshot {
        // SYNC: Acquire, pairs with the Release stores of `ready` in Server::serve (set once
        // start-up is done, cleared on shutdown): ready means the files it names are open.
        ready: shared.ready.load(std::sync::atomic::Ordering::Acquire)
            && !shared.is_shutting_down()
            && shared.lost_files().is_empty(),
        subscribers: shared.subscribers.load(std::sync::atomic::Ordering::Acquire),
        ..Snapshot::default()
    };
    for t in shared.tables.values() {
        if let Ok(r) = t.reader() {
            snap.tables.push((t.name.clone(), r.stats(), t.max_items, t.file_size));
            snap.expired.push((t.name.clone(), t.expired.load(std::sync::atomic::Ordering::Relaxed)));
        }
    }
    let mut buf = Vec::new();
    for r in shared.rings.values() {
        if let Ok(s) = ring_stats(&r.path, r.capacity, &mut buf) {
            snap.rings.push((r.name.clone(), s, r.file_size));
        }
    }
    // The process metrics carry the standard unprefixed names; everything else is podcache_*.
    let mut top = Registry::default();
    top.register_collector(Box::new(crate::process::Process::read()));
    let reg = top.sub_registry_with_prefix("podcache");
    reg.register("http_requests", "HTTP API requests by method, route and status", shared.metrics.requests.clone());
    reg.register("http_request_duration_seconds", "HTTP API request latency", shared.metrics.latency.clone());
    reg.register(
        "http_unauthorized_requests",
        "HTTP API requests refused for a missing or wrong bearer token",
        shared.metrics.unauthorized.clone(),
    );
    reg.register("table_gets", "HTTP gets by table and result (hit, miss)", shared.metrics.gets.clone());
    reg.register_collector(Box::new(snap));
    if let Some(near) = &shared.near {
        reg.register_collector(Box::new(crate::near::metrics::NearCollector(Arc::clone(&near.stats))));
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &top)?;
    Ok(out)
}

//! The near cache's counters on `/metrics` (`podcache_near_*`).

use super::NearStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Reads [`NearStats`] at scrape time.
#[derive(Debug)]
pub(crate) struct NearCollector(pub(crate) Arc<NearStats>);

impl Collector for NearCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        // Relaxed: statistics, read independently of each other.
        let m = enc.encode_descriptor(
            "near_connected",
            "Tracking connections to Redis that are up (1 for one Redis, one per master of a Redis Cluster)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::try_from(s.connected.load(Ordering::Relaxed)).unwrap_or(i64::MAX)).encode(m)?;
        let counters = [
            ("near_connects", "Connections to Redis established (handshake and tracking done)", &s.connects),
            ("near_hits", "Gets on mirrored tables answered from the table (values and negative entries)", &s.hits),
            ("near_misses", "Gets on mirrored tables that asked Redis (started or joined a fill)", &s.misses),
            ("near_fills", "Upstream fills (one per single-flight group)", &s.fills),
            ("near_negative_fills", "Fills stored as negative entries (key absent in Redis)", &s.negative_fills),
            ("near_invalidations", "Keys named by Redis invalidation messages", &s.invalidations),
            ("near_flushes", "Mirrored tables cleared (connect, connection lost, FLUSHALL)", &s.flushes),
            ("near_writes", "Writes through to Redis (SET, DEL)", &s.writes),
            (
                "near_prefetched",
                "Values fetched for prefetched tables (the load at start, and again after each invalidation)",
                &s.prefetched,
            ),
            (
                "near_topology_changes",
                "Redis Cluster topology changes handled (MOVED, a changed slot map, a master lost): tables cleared",
                &s.topology_changes,
            ),
        ];
        for (name, help, c) in counters {
            let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(c.load(Ordering::Relaxed)).encode(m)?;
        }
        let m = enc.encode_descriptor(
            "near_upstream_latency_seconds",
            "Time from sending a request to Redis (fill, write, PING) to reading its answer",
            None,
            MetricType::Histogram,
        )?;
        s.upstream_latency.encode(m)?;
        let m = enc.encode_descriptor(
            "near_last_invalidation_timestamp_seconds",
            "Unix time of the last invalidation message from Redis (0: none yet); time since = time() - this",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(s.last_invalidation_ms.load(Ordering::Relaxed) as f64 / 1000.0).encode(m)?;
        Ok(())
    }
}

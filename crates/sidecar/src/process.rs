//! The standard Prometheus process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_start_time_seconds`), read from `/proc/self` at scrape time.
//!
//! prometheus-client has no process collector of its own, so these few lines read the same
//! `/proc` fields as the Go and Python clients' collectors. A field that cannot be read (no
//! `/proc`, another kernel's format) leaves its metric out rather than report a wrong value.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// What one scrape read about this process.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Process {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<i64>,
    virtual_bytes: Option<i64>,
    open_fds: Option<i64>,
    max_fds: Option<i64>,
    start_time_seconds: Option<f64>,
}

impl Process {
    /// Read `/proc/self` now.
    pub(crate) fn read() -> Process {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = rustix::param::page_size() as i64;
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let fields = stat.as_deref().and_then(stat_fields);
        // Fields counted from 1 as in proc(5): 14 utime, 15 stime, 22 starttime (ticks after
        // boot), 23 vsize (bytes), 24 rss (pages).
        let field = |n: usize| fields.as_ref().and_then(|f| f.get(n - 3)).and_then(|s| s.parse::<u64>().ok());
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|t| t.trim().parse::<u64>().ok()));
        let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        Process {
            cpu_seconds: field(14).zip(field(15)).map(|(u, s)| (u + s) as f64 / ticks),
            resident_bytes: field(24).map(|p| p as i64 * page),
            virtual_bytes: field(23).map(|b| b as i64),
            open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as i64),
            max_fds: max_fds.and_then(|m| i64::try_from(m).ok()),
            start_time_seconds: boot.zip(field(22)).map(|(b, s)| b as f64 + s as f64 / ticks),
        }
    }
}

/// The fields of `/proc/self/stat` after the command name, from field 3 (state) on. The name
/// (field 2) is in parentheses and may itself hold spaces and parentheses: it ends at the last
/// `)`.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_ascii_whitespace().collect())
}

impl Collector for Process {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (g, c) = (MetricType::Gauge, MetricType::Counter);
        if let Some(v) = self.cpu_seconds {
            ConstCounter::new(v).encode(enc.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c,
            )?)?;
        }
        let gauges: [(&str, &str, Option<i64>); 4] = [
            ("process_resident_memory_bytes", "Resident memory size in bytes", self.resident_bytes),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes", self.virtual_bytes),
            ("process_open_fds", "Number of open file descriptors", self.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors", self.max_fds),
        ];
        for (name, help, v) in gauges {
            if let Some(v) = v {
                ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, g)?)?;
            }
        }
        if let Some(v) = self.start_time_seconds {
            ConstGauge::new(v).encode(enc.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                None,
                g,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let f = stat_fields("42 (a b) (c)) S 1 42 42 0 -1").unwrap();
        assert_eq!(f[..3], ["S", "1", "42"]);
        assert_eq!(stat_fields("no parenthesis"), None);
    }

    #[test]
    fn this_process_reads_plausibly() {
        let p = Process::read();
        let rss = p.resident_bytes.expect("rss");
        assert!(rss > 0);
        assert!(p.virtual_bytes.expect("vsize") >= rss);
        assert!(p.open_fds.expect("fds") >= 3, "stdin, stdout, stderr at least");
        assert!(p.max_fds.expect("limit") >= p.open_fds.unwrap());
        assert!(p.cpu_seconds.expect("cpu") >= 0.0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let start = p.start_time_seconds.expect("start");
        // Boot time is whole seconds in /proc/stat: the start can read up to a second late.
        assert!(start > 0.0 && start <= now + 1.0, "start {start} now {now}");
    }
}

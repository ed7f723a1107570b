//! Statistics of rings and tables as the API, the metrics and `inspect` show them.

use podcache_reader::{Start, Subscriber, TableStats};
use serde::Serialize;
use std::path::Path;

/// A ring's statistics (a snapshot).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RingStats {
    /// Messages published since the ring was created.
    pub messages_total: u64,
    /// Messages in the ring now (oldest to newest).
    pub messages: u64,
    /// Bytes of records published since the ring was created.
    pub bytes_total: u64,
    /// Bytes of records in the ring now.
    pub bytes: u64,
    /// Bytes of records the ring holds.
    pub capacity: u64,
    /// Sequence number of the oldest message in the ring (0 if empty).
    pub oldest_seq: u64,
    /// Sequence number of the newest message (0 if none was ever published).
    pub newest_seq: u64,
    /// Largest message accepted.
    pub max_message: u64,
    /// Writer epoch.
    pub epoch: u64,
}

/// Read the statistics of the ring at `path` (read-only; `buf` is scratch of any size).
pub fn ring_stats(path: &Path, capacity: u64, buf: &mut Vec<u8>) -> Result<RingStats, String> {
    let mut sub = Subscriber::builder(path).start(Start::Oldest).open().map_err(|e| e.to_string())?;
    let (head, tail) = sub.writer_span();
    let next = sub.writer_next_seq();
    let newest_seq = next.saturating_sub(1);
    buf.resize(sub.max_message(), 0);
    // The first message from the oldest position tells the oldest sequence number.
    let oldest_seq = match sub.try_recv(buf) {
        Ok(Some(m)) => m.seq,
        _ => 0,
    };
    let messages = if oldest_seq == 0 { 0 } else { next.saturating_sub(oldest_seq) };
    Ok(RingStats {
        messages_total: newest_seq,
        messages,
        bytes_total: tail,
        bytes: tail.saturating_sub(head),
        capacity,
        oldest_seq,
        newest_seq,
        max_message: sub.max_message() as u64,
        epoch: sub.writer_epoch(),
    })
}

/// A table's statistics for JSON: the file's statistics and the table's item limit.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TableStatsJson {
    /// The statistics the writer keeps in the file (flattened into this object).
    #[serde(flatten)]
    pub stats: TableStats,
    /// Most items.
    pub max_items: u64,
}

impl TableStatsJson {
    /// From the file's statistics.
    pub fn new(stats: TableStats, max_items: u64) -> TableStatsJson {
        TableStatsJson { stats, max_items }
    }
}

//! The async API on a single-threaded tokio runtime: a task awaiting ring messages does not
//! hold up the other tasks, and one `TableReader` serves eight tasks.

use podcache_reader::{Subscriber, TableReader};
use podcache_writer::{Publisher, TableWriter};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn shm() -> tempfile::TempDir {
    tempfile::tempdir_in(if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" }).expect("temp dir")
}

/// Fail the test, not hang it, if the runtime deadlocks.
fn watchdog(what: &'static str) -> std::sync::mpsc::Sender<()> {
    let (done, finished) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if finished.recv_timeout(Duration::from_secs(120)).is_err() {
            eprintln!("{what}: no progress for 120 s (the runtime is blocked)");
            std::process::abort();
        }
    });
    done
}

const MESSAGES: u64 = 200;

#[test]
fn an_awaiting_subscriber_lets_other_tasks_run() {
    let done = watchdog("recv_async");
    let dir = shm();
    let path = dir.path().join("events.ring");
    let mut publisher = Publisher::builder(&path).capacity(1 << 20).create().expect("create");
    let ticks = Arc::new(AtomicU64::new(0));
    // The publisher waits for the runtime's other task to make progress before each message:
    // if awaiting a message blocked the runtime's only thread, nothing would be published.
    let producer = {
        let ticks = ticks.clone();
        std::thread::spawn(move || {
            for seq in 0..MESSAGES {
                let seen = ticks.load(Ordering::SeqCst);
                while ticks.load(Ordering::SeqCst) < seen + 3 {
                    std::thread::sleep(Duration::from_micros(200));
                }
                publisher.publish(&seq.to_le_bytes()).expect("publish");
            }
        })
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    rt.block_on(async {
        let ticker = {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                loop {
                    ticks.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_micros(100)).await;
                }
            })
        };
        let mut sub = Subscriber::open(&path).expect("open");
        let mut buf = [0u8; 64];
        for expected in 0..MESSAGES {
            let m = sub.recv_async(&mut buf).await.expect("recv");
            assert_eq!(u64::from_le_bytes(buf[..8].try_into().unwrap()), expected, "{m:?}");
            assert_eq!(m.lost, 0);
        }
        // A bounded wait on an idle ring ends by its timeout, and the subscriber goes on after.
        let idle = tokio::time::timeout(Duration::from_millis(50), sub.recv_async(&mut buf)).await;
        assert!(idle.is_err(), "no message was published: {idle:?}");
        ticker.abort();
    });
    producer.join().expect("producer");
    let _ = done.send(());
}

#[test]
fn one_table_reader_serves_eight_tasks() {
    let done = watchdog("shared TableReader");
    let dir = shm();
    let path = dir.path().join("cache.table");
    let mut w = TableWriter::builder(&path).max_items(1024).data_bytes(1 << 20).create().expect("create");
    for i in 0u64..256 {
        w.put(&i.to_le_bytes(), (i * 3).to_le_bytes()).expect("put");
    }
    let reader = Arc::new(TableReader::open(&path).expect("open"));
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let total: u64 = rt.block_on(async {
        let tasks: Vec<_> = (0u64..8)
            .map(|t| {
                let reader = reader.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 8];
                    for n in 0..1000u64 {
                        let i = (n + t * 31) % 256;
                        assert_eq!(reader.get(&i.to_le_bytes(), &mut buf).expect("get"), Some(8));
                        assert_eq!(u64::from_le_bytes(buf), i * 3);
                        if n % 100 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                    1000u64
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("task");
        }
        total
    });
    assert_eq!(total, 8000);
    assert_eq!(reader.counters().hits, 8000);
    let _ = done.send(());
}

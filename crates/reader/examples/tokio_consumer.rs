//! A tokio app that awaits ring messages and serves table gets from one shared reader, on a
//! single-threaded runtime.
//!
//! ```text
//! cargo run -p podcache-reader --features tokio --example tokio_consumer -- /dev/shm/events.ring /dev/shm/cache.table
//! ```
//!
//! (Create the files first, for example with `podcache serve` or the `producer` example.)

use podcache_reader::{Subscriber, TableReader};
use std::sync::Arc;
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let ring = args.next().ok_or("usage: tokio_consumer RING TABLE")?;
    let table = args.next().ok_or("usage: tokio_consumer RING TABLE")?;
    let mut sub = Subscriber::open(&ring)?;
    // One reader for every task: TableReader is Sync.
    let cache = Arc::new(TableReader::open(&table)?);

    // A task that reads the table now and then, while the subscriber waits.
    let reader = cache.clone();
    tokio::spawn(async move {
        loop {
            let keys = reader.keys().filter_map(Result::ok).count();
            println!("table: {keys} keys, {:?}", reader.counters());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });

    let mut buf = vec![0u8; sub.max_message()];
    loop {
        // Awaiting does not block the runtime: the task above keeps running.
        let msg = match tokio::time::timeout(Duration::from_secs(10), sub.recv_async(&mut buf)).await {
            Ok(msg) => msg?,
            Err(_) => {
                println!("no message for 10 s, stopping");
                return Ok(());
            }
        };
        println!("message {} ({} B, {} lost before it)", msg.seq, msg.len, msg.lost);
    }
}

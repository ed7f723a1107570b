//! Get keys of a table the sidecar mirrors from Redis, filling on a miss, and say where each
//! answer came from (shared memory, filled by the sidecar, or its reply).
//!
//! ```text
//! redis-server --port 6379 --save '' &
//! redis-cli set user:42 gold
//! podcache serve --dir /tmp/pc --socket podcache.sock --table users=1000:8MiB \
//!     --upstream redis://127.0.0.1:6379 --mirror users=user: &
//! cargo run -p podcache-reader --features fill --example near_get -- /tmp/pc users 42 42 43
//! ```
//!
//! The first get of `42` fills (`Filled`), the second is a hit (`Table`); `43` is absent in
//! Redis and cached as absent.

use podcache_reader::{Got, NearTable};

fn main() {
    if let Err(e) = run() {
        eprintln!("near_get: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: near_get DIR TABLE KEY...";
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or(usage)?;
    let table = args.next().ok_or(usage)?;
    let near = NearTable::builder(dir, table).open()?;
    let mut value = Vec::new();
    for key in args {
        match near.get_into(key.as_bytes(), &mut value)? {
            Got::Value(source) => println!("{key}: {:?} ({source:?})", String::from_utf8_lossy(&value)),
            Got::Absent(source) => println!("{key}: absent in Redis ({source:?})"),
        }
    }
    Ok(())
}

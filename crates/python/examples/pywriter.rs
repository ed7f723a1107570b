//! The writer process of the Python tests (crates/python/tests): writes a table or a ring with
//! self-checking contents while the Python readers read it.
//!
//! ```text
//! pywriter table PATH KEYS      create a table of KEYS keys, then rewrite every key again and
//!                               again with a higher version; prints "round N" after each pass
//! pywriter ring PATH CAPACITY   create a ring of CAPACITY bytes, print "ready", then for each
//!                               line "publish N [PAUSE_US]" on stdin publish N messages (pausing
//!                               PAUSE_US microseconds every 64) and print "published LAST"
//! ```
//!
//! Table values: `key | version (u64 LE) | filler | crc32 (u32 LE) of all that precedes`, the
//! filler's length and bytes depending on key and version. Ring messages: `counter (u64 LE) |
//! filler | crc32`, the counter counting 1, 2, ... across publish commands. A torn or mixed
//! read cannot match its checksum (or its key). The process exits on stdin's end (the test
//! closes it or dies) and after a bound of its own, so it never outlives a broken test.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

/// No run of this writer lasts longer (the tests finish in seconds).
const MAX_RUN: Duration = Duration::from_secs(300);

fn table_value(key: &[u8], version: u64, index: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(key.len() + 320);
    v.extend_from_slice(key);
    v.push(b'|');
    v.extend_from_slice(&version.to_le_bytes());
    v.push(b'|');
    let filler = ((index * 31 + version * 17) % 300) as usize;
    v.extend((0..filler).map(|j| (index + version + j as u64) as u8));
    let crc = crc32fast::hash(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

fn ring_message(counter: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + 200 + 4);
    v.extend_from_slice(&counter.to_le_bytes());
    let filler = ((counter * 13) % 200) as usize;
    v.extend((0..filler).map(|j| (counter + j as u64) as u8));
    let crc = crc32fast::hash(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

/// Exit once stdin ends (the test closed it or died) or after `MAX_RUN`.
fn exit_with_parent() {
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
}

fn run_table(path: &str, keys: u64) -> Result<(), Box<dyn std::error::Error>> {
    let mut w = podcache_writer::TableWriter::builder(path).max_items(keys * 2).data_bytes(keys * 4096).create()?;
    exit_with_parent();
    let started = Instant::now();
    let mut out = std::io::stdout();
    for version in 1.. {
        for i in 0..keys {
            let key = format!("k{i:05}");
            w.put(key.as_bytes(), table_value(key.as_bytes(), version, i)).map_err(|e| e.to_string())?;
        }
        writeln!(out, "round {version}")?;
        out.flush()?;
        if started.elapsed() > MAX_RUN {
            break;
        }
    }
    Ok(())
}

fn run_ring(path: &str, capacity: u64) -> Result<(), Box<dyn std::error::Error>> {
    let mut p = podcache_writer::Publisher::builder(path).capacity(capacity).create()?;
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    let started = Instant::now();
    let mut counter = 0u64;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["publish", n, rest @ ..] => {
                let n: u64 = n.parse()?;
                let pause = Duration::from_micros(rest.first().map_or(Ok(0), |s| s.parse())?);
                for _ in 0..n {
                    counter += 1;
                    p.publish(&ring_message(counter))?;
                    if counter.is_multiple_of(64) && !pause.is_zero() {
                        std::thread::sleep(pause);
                    }
                }
                writeln!(out, "published {counter}")?;
                out.flush()?;
            }
            _ => return Err(format!("unknown command {line:?}").into()),
        }
        if started.elapsed() > MAX_RUN {
            break;
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [_, "table", path, keys] => run_table(path, keys.parse()?),
        [_, "ring", path, capacity] => run_ring(path, capacity.parse()?),
        _ => Err("usage: pywriter table PATH KEYS | pywriter ring PATH CAPACITY".into()),
    }
}

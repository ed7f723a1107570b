//! Prefetch mode (`--prefetch TABLE=PREFIX`) against a real `redis-server` (never a mock): every
//! key under the prefix is in the shared-memory table once `/readyz` says ready, before anything
//! reads it, and the table follows every change made in Redis by other clients without any read.
//!
//! Skips with a visible `SKIPPED` line when `redis-server` is not installed; `.ci/redis`
//! installs it and sets `PODCACHE_REQUIRE_REDIS=1`, so CI never skips.

mod common;
#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis;

use common::child::{Sidecar, Watchdog};
use podcache_sidecar::near::resp::Frame;
use redis::{eventually, http, metric, table, Client, Redis};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(30);

type Contents = BTreeMap<Vec<u8>, Vec<u8>>;

fn sidecar(dir: &Path, redis: &Redis, table_spec: &str) -> Sidecar {
    let url = redis.url();
    Sidecar::start(dir, &["--table", table_spec, "--upstream", url.as_str(), "--prefetch", "t=p:"])
}

/// Every key and value in the table (`None`: a read raced the writer; try again).
fn table_contents(t: &podcache_reader::TableReader) -> Option<Contents> {
    let mut out = Contents::new();
    for k in t.keys() {
        let k = k.ok()?;
        if let Some(v) = t.get_vec(&k).ok()? {
            out.insert(k, v);
        }
    }
    Some(out)
}

/// Every string key under `p:` in Redis, without the prefix, with its value.
fn redis_contents(c: &mut Client) -> Contents {
    let Frame::Array(keys) = c.run(&["KEYS", "p:*"]) else { panic!("KEYS") };
    let mut out = Contents::new();
    for k in keys {
        let Frame::Bulk(k) = k else { panic!("KEYS answered {k:?}") };
        if let Frame::Bulk(v) = c.cmd(&[b"GET", &k]) {
            out.insert(k[2..].to_vec(), v);
        }
    }
    out
}

/// Wait until the table holds exactly what Redis holds under the prefix.
fn wait_agree(what: &str, t: &podcache_reader::TableReader, c: &mut Client) -> Contents {
    eventually(what, BOUND, || {
        let want = redis_contents(c);
        (table_contents(t)? == want).then_some(want)
    })
}

fn ready(s: &Sidecar) -> (u16, String) {
    let r = http(s.ops, "GET", "/readyz", b"");
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// Client ids of the prefetch connections (`CLIENT LIST`, name podcache-prefetch).
fn prefetch_clients(c: &mut Client) -> Vec<String> {
    let Frame::Bulk(list) = c.run(&["CLIENT", "LIST"]) else { panic!("CLIENT LIST") };
    let list = String::from_utf8_lossy(&list).into_owned();
    list.lines()
        .filter(|l| l.split_whitespace().any(|w| w == "name=podcache-prefetch"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("id=")).map(str::to_string))
        .collect()
}

/// Keys under the prefix are in the table when `/readyz` turns ready, before any read; keys
/// outside it (and keys that are not strings) are not. Then, without any read: a value changed
/// by another client is replaced, a deleted key goes, a new key appears, `FLUSHALL` empties the
/// table and later keys appear, and a killed prefetch connection reconnects and reloads.
#[test]
fn prefetched_table_holds_the_prefix_and_follows_other_clients() {
    const TEST: &str = "prefetched_table_holds_the_prefix_and_follows_other_clients";
    let Some(redis) = Redis::start_or_skip(TEST) else { return };
    let _wd = Watchdog::arm(std::process::id(), Duration::from_secs(180), TEST);
    let mut c = redis.client();
    for i in 0..200 {
        c.run(&["SET", &format!("p:{i}"), &format!("v0:{i}")]);
    }
    c.run(&["SET", "p:ttl", "short-lived", "PX", "600000"]);
    // Outside the prefix (one of them a prefix of it), and a non-string under it.
    for k in ["q:1", "pp:1", "p", "xp:1", "P:1"] {
        c.run(&["SET", k, "outside"]);
    }
    c.run(&["HSET", "p:hash", "f", "v"]);
    let tmp = tempfile::tempdir().unwrap();
    let s = sidecar(tmp.path(), &redis, "t=4096:8MiB");
    eventually("/readyz 200", BOUND, || (ready(&s).0 == 200).then_some(()));
    let t = table(tmp.path(), "t");
    let loaded = eventually("a consistent read of the table", BOUND, || table_contents(&t));
    let want = redis_contents(&mut c);
    assert_eq!(want.len(), 201, "200 keys and p:ttl in Redis");
    assert_eq!(loaded, want, "exactly the string keys under p:, with their values, once ready");
    assert_eq!(metric(&s, "podcache_near_misses_total"), 0.0, "nothing was read through");
    assert_eq!(metric(&s, "podcache_near_prefetched_total"), 202.0, "201 strings and p:hash fetched, nothing else");

    // Other clients write; nobody reads through the sidecar.
    c.run(&["SET", "p:5", "v1:5"]);
    c.run(&["DEL", "p:6"]);
    c.run(&["SET", "p:new", "created"]);
    c.run(&["APPEND", "p:7", "+appended"]);
    c.run(&["SET", "q:2", "outside"]);
    let now = wait_agree("the table follows the writes", &t, &mut c);
    assert_eq!(now.get(b"5".as_slice()).map(Vec::as_slice), Some(b"v1:5".as_slice()));
    assert!(!now.contains_key(b"6".as_slice()));
    assert_eq!(now.get(b"new".as_slice()).map(Vec::as_slice), Some(b"created".as_slice()));
    assert_eq!(now.get(b"7".as_slice()).map(Vec::as_slice), Some(b"v0:7+appended".as_slice()));
    assert!(metric(&s, "podcache_near_invalidations_total") >= 4.0);
    assert_eq!(metric(&s, "podcache_near_misses_total"), 0.0, "still nothing read through");

    // FLUSHALL: the table is emptied, and keys written afterwards appear.
    c.run(&["FLUSHALL"]);
    eventually("FLUSHALL empties the table", BOUND, || (table_contents(&t)?.is_empty()).then_some(()));
    for i in 0..10 {
        c.run(&["SET", &format!("p:after{i}"), &format!("a{i}")]);
    }
    assert_eq!(wait_agree("keys written after FLUSHALL appear", &t, &mut c).len(), 10);

    // The prefetch connection killed: the sidecar reconnects and loads everything again.
    let fetched = metric(&s, "podcache_near_prefetched_total");
    let ids = prefetch_clients(&mut c);
    assert_eq!(ids.len(), 1, "one prefetch connection");
    assert_eq!(c.run(&["CLIENT", "KILL", "ID", &ids[0]]), Frame::Integer(1));
    eventually("a new prefetch connection", BOUND, || {
        let now = prefetch_clients(&mut c);
        (now.len() == 1 && now != ids).then_some(())
    });
    eventually("reloaded", BOUND, || (metric(&s, "podcache_near_prefetched_total") >= fetched + 10.0).then_some(()));
    assert_eq!(wait_agree("the reloaded table agrees with Redis", &t, &mut c).len(), 10);
    assert_eq!(ready(&s).0, 200, "a reload does not take the Pod out of service");

    // A read-through GET on a prefetched table answers a key the table holds from the table.
    let r = http(s.api, "GET", "/v1/tables/t/keys/after3", b"");
    assert_eq!((r.status, r.body.as_slice()), (200, b"a3".as_slice()));
    // PUT and DELETE write through: the caller's next GET sees the write, and the table gets
    // the new value (fetched again after the write-through evicted it), not a hole.
    assert_eq!(http(s.api, "PUT", "/v1/tables/t/keys/after4", b"put-through").status, 204);
    let r = http(s.api, "GET", "/v1/tables/t/keys/after4", b"");
    assert_eq!((r.status, r.body.as_slice()), (200, b"put-through".as_slice()));
    assert_eq!(http(s.api, "DELETE", "/v1/tables/t/keys/after5", b"").status, 204);
    assert_eq!(http(s.api, "GET", "/v1/tables/t/keys/after5", b"").status, 404);
    let now = wait_agree("the table holds the written value", &t, &mut c);
    assert_eq!(now.get(b"after4".as_slice()).map(Vec::as_slice), Some(b"put-through".as_slice()));
    assert!(!now.contains_key(b"after5".as_slice()));
}

/// A restarted Redis (AOF, so it comes back with its keys): the table is cleared while Redis is
/// down and loaded again once it is back.
#[test]
fn redis_restart_clears_then_reloads_the_prefetched_table() {
    const TEST: &str = "redis_restart_clears_then_reloads_the_prefetched_table";
    let Some(mut redis) = Redis::start_with_or_skip(TEST, &["--appendonly", "yes", "--appendfsync", "always"]) else {
        return;
    };
    let _wd = Watchdog::arm(std::process::id(), Duration::from_secs(180), TEST);
    let mut c = redis.client();
    for i in 0..300 {
        c.run(&["SET", &format!("p:{i}"), &format!("v{i}")]);
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = sidecar(tmp.path(), &redis, "t=4096:8MiB");
    eventually("/readyz 200", BOUND, || (ready(&s).0 == 200).then_some(()));
    let t = table(tmp.path(), "t");
    assert_eq!(wait_agree("loaded", &t, &mut c).len(), 300);
    drop(c);
    redis.kill();
    eventually("cleared while Redis is down", BOUND, || (t.stats().items == 0).then_some(()));
    redis.restart();
    let mut c = redis.client();
    assert_eq!(redis_contents(&mut c).len(), 300, "the AOF brought the keys back");
    assert_eq!(wait_agree("reloaded after the restart", &t, &mut c).len(), 300);
    c.run(&["SET", "p:0", "changed"]);
    let now = wait_agree("following writes again", &t, &mut c);
    assert_eq!(now.get(b"0".as_slice()).map(Vec::as_slice), Some(b"changed".as_slice()));
}

/// `/readyz` answers 503 ("prefetch loading") while 50,000 keys load, and once it answers 200
/// every one of them is in the table; the log reports the load.
#[test]
fn readyz_is_503_until_a_large_prefix_is_loaded() {
    const TEST: &str = "readyz_is_503_until_a_large_prefix_is_loaded";
    const N: usize = 50_000;
    let Some(redis) = Redis::start_or_skip(TEST) else { return };
    let _wd = Watchdog::arm(std::process::id(), Duration::from_secs(240), TEST);
    let mut c = redis.client();
    // Keys p:0 .. p:49999 with values value:0 ...
    assert_eq!(c.run(&["DEBUG", "POPULATE", &N.to_string(), "p"]), Frame::Simple(b"OK".to_vec()));
    let tmp = tempfile::tempdir().unwrap();
    // Redis is stopped while the sidecar starts, so the load cannot be done when /readyz is
    // first asked, however fast this machine loads 50,000 keys (the sidecar logged "ready" for
    // its files and API; the prefetch waits for Redis).
    redis.signal("STOP");
    let s = sidecar(tmp.path(), &redis, "t=131072:64MiB");
    let t = table(tmp.path(), "t");
    let (status, body) = ready(&s);
    assert_eq!((status, body.as_str()), (503, "not ready: prefetch loading\n"));
    redis.signal("CONT");
    let mut partial = None;
    eventually("/readyz 200", Duration::from_secs(120), || {
        let items = t.stats().items;
        match ready(&s).0 {
            200 => Some(()),
            _ => {
                if items > 0 {
                    partial = Some(items);
                }
                None
            }
        }
    });
    println!("prefetch: 503 seen with {partial:?} of {N} keys in the table");
    assert_eq!(t.stats().items, N as u64);
    for i in 0..N {
        let v = t.get_vec(format!("{i}").as_bytes()).unwrap();
        assert_eq!(v, Some(format!("value:{i}").into_bytes()), "key p:{i}");
    }
    let log = s.later_log.lock().unwrap().join("\n");
    let done = log.lines().find(|l| l.contains("prefetch load complete")).expect("load logged");
    assert!(done.contains(&format!("\"keys\":{N}")), "{done}");
    println!("prefetch: {done}");
}

/// Another client writes (SET, SET PX, DEL, PEXPIRE, with increasing versions) while the table
/// loads and for 5,000 writes after: a reader of the table never sees a key's version go back,
/// and once the writes stop the table agrees with Redis.
#[test]
fn writes_during_the_load_never_go_back_and_end_in_agreement() {
    const TEST: &str = "writes_during_the_load_never_go_back_and_end_in_agreement";
    const KEYS: u64 = 20_000;
    const SPAN: u64 = KEYS + KEYS / 10;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    let Some(redis) = Redis::start_or_skip(TEST) else { return };
    let _wd = Watchdog::arm(std::process::id(), Duration::from_secs(300), TEST);
    let mut c = redis.client();
    // p:0 .. p:19999 = value:0 ... (version 0); keys up to SPAN are created during the run.
    assert_eq!(c.run(&["DEBUG", "POPULATE", &KEYS.to_string(), "p"]), Frame::Simple(b"OK".to_vec()));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let writes = std::sync::Arc::new(AtomicU64::new(0));
    let port = redis.port;
    let writer = {
        let (stop, writes) = (std::sync::Arc::clone(&stop), std::sync::Arc::clone(&writes));
        std::thread::spawn(move || {
            let mut w = Client::from(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
            let mut rng = redis::Rng(0x5eed_0002);
            while !stop.load(Relaxed) {
                let version = writes.fetch_add(1, Relaxed) + 1;
                // Half the writes on a few hot keys, so a key changes while it is fetched.
                let k = match rng.below(2) {
                    0 => format!("p:{}", rng.below(16)),
                    _ => format!("p:{}", rng.below(SPAN)),
                };
                redis::random_write(&mut rng, version, &k, &mut |args| w.run(args));
            }
        })
    };
    let tmp = tempfile::tempdir().unwrap();
    let s = sidecar(tmp.path(), &redis, "t=32768:32MiB");
    let t = table(tmp.path(), "t");
    let mut seen = vec![0u64; SPAN as usize];
    let mut reads = 0u64;
    let mut check = |t: &podcache_reader::TableReader| {
        for (i, last) in seen.iter_mut().enumerate() {
            if let Ok(Some(v)) = t.get_vec(i.to_string().as_bytes()) {
                let ver = if v.starts_with(b"value:") { 0 } else { redis::version(&v) };
                assert!(ver >= *last, "key p:{i}: version {ver} read after {last}");
                *last = ver;
                reads += 1;
            }
        }
    };
    let mut during_load = 0;
    while ready(&s).0 != 200 {
        check(&t);
        during_load = writes.load(Relaxed);
    }
    let after = writes.load(Relaxed) + 5000;
    while writes.load(Relaxed) < after {
        check(&t);
    }
    stop.store(true, Relaxed);
    writer.join().unwrap();
    check(&t);
    let writes = writes.load(Relaxed);
    println!("prefetch: {writes} writes ({during_load} before ready), {reads} table reads checked");
    assert!(reads > 0);
    wait_agree("the table agrees with Redis once the writes stop", &t, &mut c);
}

/// `--prefetch` mistakes are refused at start-up with a message: a Redis Cluster upstream,
/// overlapping prefixes (Redis refuses them in one BCAST connection), a table that does not
/// exist; the TOML key `prefetch` is read like the flag.
#[test]
fn prefetch_configuration_mistakes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_podcache"))
            .args(["serve", "--dir", tmp.path().to_str().unwrap(), "--listen", "127.0.0.1:0", "--ops-listen", "none"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let tables = ["--table", "a=10:1MiB", "--table", "b=10:1MiB"];
    let e = run(&[&tables[..], &["--upstream", "redis+cluster://127.0.0.1:1", "--prefetch", "a=p:"]].concat());
    assert!(e.contains("not a Redis Cluster"), "{e}");
    let e =
        run(&[&tables[..], &["--upstream", "redis://127.0.0.1:1", "--prefetch", "a=p:", "--prefetch", "b=p:x"]]
            .concat());
    assert!(e.contains("may not overlap"), "{e}");
    let e = run(&[&tables[..], &["--upstream", "redis://127.0.0.1:1", "--prefetch", "c=p:"]].concat());
    assert!(e.contains("no table"), "{e}");
    let toml = tmp.path().join("podcache.toml");
    std::fs::write(&toml, "upstream = \"redis://127.0.0.1:1\"\nprefetch = [\"a=p:\", \"b=\"]\n").unwrap();
    let e = run(&[&tables[..], &["--config", toml.to_str().unwrap()]].concat());
    assert!(e.contains("may not overlap"), "the TOML list is read: {e}");
}

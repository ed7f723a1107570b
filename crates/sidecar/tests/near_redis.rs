//! The near cache against a real `redis-server` (never a mock): `podcache serve` child processes
//! mirror a key prefix, other processes write to Redis and read the shared-memory tables.
//!
//! Skips with a visible `SKIPPED` line when `redis-server` is not installed; `.ci/redis`
//! installs it and sets `PODCACHE_REQUIRE_REDIS=1`, so CI never skips.

mod common;
#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis;

use common::child::{RawResponse, Sidecar, Watchdog};
use podcache_sidecar::near::{lookup, resp::Frame, Cached};
use redis::{eventually, http, metric, random_write, reader_child, report, self_command, table, Redis, Rng, ROLE};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(20);

fn sidecar(dir: &Path, redis: &Redis, extra: &[&str]) -> Sidecar {
    let url = redis.url();
    let mut args = vec!["--table", "t=4096:8MiB", "--upstream", url.as_str(), "--mirror", "t=k:"];
    args.extend_from_slice(extra);
    Sidecar::start(dir, &args)
}

fn header<'r>(r: &'r RawResponse, name: &str) -> Option<&'r str> {
    r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Wait until `n` tracking connections are up.
fn wait_connected(redis: &Redis, n: usize) -> Vec<String> {
    let mut c = redis.client();
    eventually("tracking connections up", BOUND, || Some(c.near_clients()).filter(|v| v.len() == n))
}

const KEYS: u64 = 40;

fn key(i: u64) -> String {
    format!("{i}")
}

/// Child: random SET / SET PX / DEL / PEXPIRE on Redis, each write a new version.
fn writer_child(port: u16, ops: u64) {
    let mut c = redis::Client::from(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
    let mut rng = Rng(0x5eed_0001 ^ u64::from(std::process::id()));
    for version in 1..=ops {
        let k = format!("k:{}", key(rng.below(KEYS)));
        random_write(&mut rng, version, &k, &mut |args| c.run(args));
    }
    println!("@@WRITER ops={ops}");
}

/// Must-show 1: three sidecars on three directories (three Pods) share one Redis; a writer
/// process does random SET / SET PX / DEL / PEXPIRE with versioned values while three reader
/// processes read all three tables (directly and through HTTP fills). No reader ever sees a
/// version older than one it saw before for the same table and key, and once the writes stop
/// every table agrees with Redis (`MGET`) on every key.
#[test]
fn three_pods_follow_one_writer_and_agree_with_redis() {
    const TEST: &str = "three_pods_follow_one_writer_and_agree_with_redis";
    match std::env::var(ROLE).as_deref() {
        Ok("writer") => {
            return writer_child(std::env::var("PORT").unwrap().parse().unwrap(), 4000);
        }
        Ok("reader") => {
            let dirs: Vec<PathBuf> = std::env::var("DIRS").unwrap().split(',').map(PathBuf::from).collect();
            let apis: Vec<SocketAddr> = std::env::var("APIS").unwrap().split(',').map(|a| a.parse().unwrap()).collect();
            let keys: Vec<String> = (0..KEYS).map(key).collect();
            return reader_child(&dirs, &apis, &keys, Path::new(&std::env::var("STOP").unwrap()), false);
        }
        _ => {}
    }
    let Some(redis) = Redis::start_or_skip(TEST) else { return };
    let _wd = Watchdog::arm(std::process::id(), Duration::from_secs(240), TEST);
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("pod{i}"))).collect();
    let sidecars: Vec<Sidecar> = dirs.iter().map(|d| sidecar(d, &redis, &[])).collect();
    wait_connected(&redis, 3);
    let stop = tmp.path().join("stop");
    let join = |v: Vec<String>| v.join(",");
    let readers: Vec<_> = (0..3)
        .map(|_| {
            self_command(TEST, "reader")
                .env("DIRS", join(dirs.iter().map(|d| d.display().to_string()).collect()))
                .env("APIS", join(sidecars.iter().map(|s| s.api.to_string()).collect()))
                .env("STOP", &stop)
                .spawn()
                .unwrap()
        })
        .collect();
    let writer = self_command(TEST, "writer").env("PORT", redis.port.to_string()).output().unwrap();
    assert!(writer.status.success(), "writer child failed");
    let writes_stopped = Instant::now();
    // Every table agrees with Redis: what a table holds (a value or a negative entry) is what
    // Redis holds, and an HTTP GET on every Pod answers what Redis answers. Polled until true;
    // the time it took is printed, not asserted. Keys with a PX may still expire while one
    // round of checks runs, so a round compares with `MGET` taken before and after it: with no
    // writes, a key only goes from its value to absent, and either answer agrees with Redis.
    // The readers keep reading meanwhile.
    let mut c = redis.client();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("k:{i}")).collect();
    let tables: Vec<_> = dirs.iter().map(|d| table(d, "t")).collect();
    let mut last = String::new();
    let deadline = Instant::now() + BOUND;
    let mut mget = || {
        let mut args: Vec<&[u8]> = vec![b"MGET"];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        let Frame::Array(want) = c.cmd(&args) else { panic!("MGET") };
        want.into_iter().map(|w| if let Frame::Bulk(v) = w { Some(v) } else { None }).collect::<Vec<_>>()
    };
    let mut round_started;
    loop {
        round_started = writes_stopped.elapsed();
        let before = mget();
        let mut got = Vec::new();
        for i in 0..KEYS {
            for (t, r) in tables.iter().enumerate() {
                let cached = lookup(r, key(i).as_bytes()).unwrap();
                let resp = http(sidecars[t].api, "GET", &format!("/v1/tables/t/keys/{i}"), b"");
                got.push((i as usize, t, cached, (resp.status == 200).then_some(resp.body)));
            }
        }
        let after = mget();
        let mut disagree = Vec::new();
        for (i, t, cached, answer) in got {
            let agrees = |w: &Option<Vec<u8>>| {
                let table_ok = match &cached {
                    Cached::Value(v) => w.as_ref() == Some(v),
                    Cached::Absent => w.is_none(),
                    Cached::NotCached => true,
                };
                table_ok && answer == *w
            };
            if !agrees(&before[i]) && !agrees(&after[i]) {
                disagree.push(format!("pod{t} key {i}"));
            }
        }
        if disagree.is_empty() {
            break;
        }
        last = disagree.join(", ");
        assert!(Instant::now() < deadline, "tables never agreed with Redis: {last}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let agreed_after = round_started;
    std::fs::write(&stop, b"").unwrap();
    let (mut values, mut http_gets) = (0, 0);
    for r in readers {
        let out = r.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(report(&out, "READER", "violations"), 0, "a reader saw a version go backwards");
        values += report(&out, "READER", "values");
        http_gets += report(&out, "READER", "http_gets");
    }
    // The readers did read cached values and fill through HTTP (else this tested nothing).
    assert!(values > 0 && http_gets > 0, "values {values}, http gets {http_gets}");
    eprintln!(
        "three pods agreed with Redis in the round of checks that began {agreed_after:?} after the writes stopped ({values} cached values read, \
         {http_gets} HTTP gets; last disagreement seen: {last:?})"
    );
}

fn one_pod(test: &str) -> Option<(Redis, tempfile::TempDir, Sidecar)> {
    let redis = Redis::start_or_skip(test)?;
    let tmp = tempfile::tempdir().unwrap();
    let s = sidecar(tmp.path(), &redis, &[]);
    wait_connected(&redis, 1);
    Some((redis, tmp, s))
}

fn get(s: &Sidecar, k: &str) -> RawResponse {
    http(s.api, "GET", &format!("/v1/tables/t/keys/{k}"), b"")
}

/// A fill stores the value (read back from shared memory), an absent key is cached as absent
/// and answered from the table, a write by another client invalidates both.
#[test]
fn fill_on_miss_negative_entries_and_invalidation() {
    let Some((redis, tmp, s)) = one_pod("fill_on_miss_negative_entries_and_invalidation") else { return };
    let mut c = redis.client();
    let r = table(tmp.path(), "t");
    c.run(&["SET", "k:a", "one"]);
    let resp = get(&s, "a");
    assert_eq!(
        (resp.status, resp.body.as_slice(), header(&resp, "x-podcache-source")),
        (200, b"one".as_slice(), Some("upstream"))
    );
    assert_eq!(lookup(&r, b"a").unwrap(), Cached::Value(b"one".to_vec()));
    let resp = get(&s, "a");
    assert_eq!((resp.status, header(&resp, "x-podcache-source")), (200, Some("table")));

    let resp = get(&s, "nope");
    assert_eq!((resp.status, header(&resp, "x-podcache-source")), (404, Some("upstream")));
    assert_eq!(lookup(&r, b"nope").unwrap(), Cached::Absent);
    assert_eq!(header(&get(&s, "nope"), "x-podcache-source"), Some("table"));
    // The key listing shows the cached key, not the negative entry.
    let keys = http(s.api, "GET", "/v1/tables/t/keys", b"");
    assert_eq!(String::from_utf8_lossy(&keys.body), r#"{"keys":["a"],"next_cursor":null,"truncated":false}"#);

    // Another client changes both keys: the invalidations evict them; the next get refills.
    c.run(&["SET", "k:a", "two"]);
    c.run(&["SET", "k:nope", "now"]);
    eventually("invalidations applied", BOUND, || {
        (lookup(&r, b"a").unwrap() == Cached::NotCached && lookup(&r, b"nope").unwrap() == Cached::NotCached)
            .then_some(())
    });
    assert_eq!(get(&s, "a").body, b"two");
    assert_eq!(get(&s, "nope").body, b"now");
    // A key outside the mirrored prefix is never cached by a write to it.
    c.run(&["SET", "a", "unrelated"]);
    assert_eq!(lookup(&r, b"a").unwrap(), Cached::Value(b"two".to_vec()));
}

/// `GET /v1/tables` and `podcache stat` show the near cache: the mirrored table's prefix and
/// mode, and counters that follow what the gets did (two misses filled, one of them negative,
/// two hits, an invalidation).
#[test]
fn stat_shows_the_near_cache() {
    let Some((redis, tmp, s)) = one_pod("stat_shows_the_near_cache") else { return };
    let mut c = redis.client();
    c.run(&["SET", "k:a", "one"]);
    for k in ["a", "a", "nope", "nope"] {
        get(&s, k);
    }
    c.run(&["SET", "k:a", "two"]);
    let r = table(tmp.path(), "t");
    eventually("invalidation applied", BOUND, || (lookup(&r, b"a").unwrap() == Cached::NotCached).then_some(()));

    let v: serde_json::Value = serde_json::from_slice(&http(s.api, "GET", "/v1/tables", b"").body).unwrap();
    assert_eq!(v["tables"][0]["mirror"], serde_json::json!({ "prefix": "k:", "mode": "read-through" }));
    let near = &v["near"];
    let n = |f: &str| near[f].as_u64().unwrap_or_else(|| panic!("{f} in {near}"));
    assert_eq!((n("connected"), n("hits"), n("misses"), n("fills"), n("negative_fills")), (1, 2, 2, 2, 1), "{near}");
    assert!(n("invalidations") >= 1 && n("upstream_requests") >= 2, "{near}");
    assert!(near["upstream_mean_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{near}");
    assert!(near["seconds_since_invalidation"].as_f64().is_some_and(|s| s >= 0.0), "{near}");

    let out = Command::new(env!("CARGO_BIN_EXE_podcache"))
        .args(["stat", "--dir", tmp.path().to_str().unwrap(), "--url", &format!("http://{}", s.api), "-n", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = String::from_utf8(out.stdout).unwrap();
    let table = out.lines().find(|l| l.contains("t.table")).unwrap_or_else(|| panic!("{out}"));
    assert!(table.contains(r#"mirror="k:" (read-through)"#) && !table.contains("http_gets"), "{table}");
    let line = out.lines().find(|l| l.contains("near cache")).unwrap_or_else(|| panic!("{out}"));
    for want in [" connected=1 ", " hits=2 ", " misses=2 ", " fills=2 ", " negative_fills=1 ", " hit_ratio=0.500"] {
        assert!(line.contains(want), "{want} in {line}");
    }
    assert!(!line.contains("since_invalidation=-") && !line.contains("upstream_mean=-"), "{line}");
}

/// PUT and DELETE write through to Redis and evict before answering: the caller's next GET
/// never returns the old value.
#[test]
fn writes_go_through_to_redis_and_evict_first() {
    let Some((redis, tmp, s)) = one_pod("writes_go_through_to_redis_and_evict_first") else { return };
    let mut c = redis.client();
    let r = table(tmp.path(), "t");
    for round in 0..50 {
        let old = format!("old{round}");
        let new = format!("new{round}");
        assert_eq!(http(s.api, "PUT", "/v1/tables/t/keys/w", old.as_bytes()).status, 204);
        assert_eq!(get(&s, "w").body, old.as_bytes());
        assert_eq!(http(s.api, "PUT", "/v1/tables/t/keys/w?ttl_ms=600000", new.as_bytes()).status, 204);
        assert_ne!(lookup(&r, b"w").unwrap(), Cached::Value(old.clone().into_bytes()), "evicted before the answer");
        assert_eq!(get(&s, "w").body, new.as_bytes());
        assert_eq!(c.get("k:w"), Some(new.into_bytes()));
    }
    let Frame::Integer(pttl) = c.run(&["PTTL", "k:w"]) else { panic!("PTTL") };
    assert!(pttl > 0 && pttl <= 600_000, "PUT ttl_ms became a Redis TTL ({pttl})");
    assert_eq!(http(s.api, "DELETE", "/v1/tables/t/keys/w", b"").status, 204);
    assert_eq!(c.get("k:w"), None);
    assert_eq!(get(&s, "w").status, 404);
    assert_eq!(http(s.api, "DELETE", "/v1/tables/t/keys/w", b"").status, 404);
    // A bulk load would write the table behind Redis's back: refused, nothing stored.
    let load = http(s.api, "POST", "/v1/tables/t/load", b"{\"key\":\"l\",\"value\":\"x\"}\n");
    assert_eq!(load.status, 400, "{}", String::from_utf8_lossy(&load.body));
    assert!(String::from_utf8_lossy(&load.body).contains("mirrors Redis"));
    assert_eq!(lookup(&r, b"l").unwrap(), Cached::NotCached);
}

/// Must-show 3: a key set with PX 300 is gone from the table by its expiry although Redis
/// sent no invalidation (active expiry is off, so Redis still holds the expired key).
#[test]
fn px_expiry_is_local_without_an_invalidation() {
    let Some((redis, tmp, s)) = one_pod("px_expiry_is_local_without_an_invalidation") else { return };
    let mut c = redis.client();
    assert_eq!(c.run(&["DEBUG", "SET-ACTIVE-EXPIRE", "0"]), Frame::Simple(b"OK".to_vec()));
    let r = table(tmp.path(), "t");
    // Set and fill; on a machine so loaded that 300 ms pass before the fill, try again.
    let set_at = eventually("a PX 300 key filled before it expires", BOUND, || {
        c.run(&["SET", "k:px", "short", "PX", "300"]);
        let at = Instant::now();
        (get(&s, "px").body == b"short" && lookup(&r, b"px").unwrap() == Cached::Value(b"short".to_vec())).then_some(at)
    });
    eventually("local expiry", BOUND, || (lookup(&r, b"px").unwrap() == Cached::NotCached).then_some(()));
    // Redis has not removed the key (no invalidation could have been sent): it is still counted.
    assert_eq!(c.run(&["DBSIZE"]), Frame::Integer(1), "the key is still in Redis's keyspace");
    eprintln!("a PX 300 key left the table {:?} after it was set", set_at.elapsed());
}

/// Must-show 4: 100 concurrent misses on one key cause exactly one upstream GET
/// (`INFO commandstats`). Redis is held in `DEBUG SLEEP` while they arrive, so they overlap.
#[test]
fn concurrent_misses_make_one_upstream_get() {
    let Some((redis, _tmp, s)) = one_pod("concurrent_misses_make_one_upstream_get") else { return };
    let mut c = redis.client();
    c.run(&["SET", "k:hot", "value"]);
    c.run(&["CONFIG", "RESETSTAT"]);
    let sleeper = {
        let mut c2 = redis.client();
        std::thread::spawn(move || c2.run(&["DEBUG", "SLEEP", "0.5"]))
    };
    std::thread::sleep(Duration::from_millis(50));
    let api = s.api;
    let gets: Vec<_> = (0..100).map(|_| std::thread::spawn(move || get_at(api, "hot"))).collect();
    let mut from_upstream = 0;
    for g in gets {
        let r = g.join().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, b"value".as_slice()));
        from_upstream += usize::from(header(&r, "x-podcache-source") == Some("upstream"));
    }
    sleeper.join().unwrap();
    assert_eq!(c.calls("get"), 1, "one upstream GET for 100 concurrent misses");
    eprintln!("{from_upstream} of 100 concurrent gets shared the one fill; the rest hit the table");
}

fn get_at(api: SocketAddr, k: &str) -> RawResponse {
    http(api, "GET", &format!("/v1/tables/t/keys/{k}"), b"")
}

/// Must-show 2, CLIENT KILL: the tracking connection is killed, then the key changes (an
/// invalidation nobody receives). The sidecar clears the table before it reconnects, so once
/// the new tracking connection is up the old value is not in the table and GET answers the new
/// one.
#[test]
fn client_kill_of_the_tracking_connection_serves_nothing_stale() {
    let Some((redis, tmp, s)) = one_pod("client_kill_of_the_tracking_connection_serves_nothing_stale") else { return };
    let mut c = redis.client();
    let r = table(tmp.path(), "t");
    for round in 0..5 {
        let old = format!("old{round}");
        c.run(&["SET", "k:x", &old]);
        // The write's invalidation of the previous round's value reaches the sidecar a moment
        // after Redis acknowledged the write to this client.
        eventually("the new value after its invalidation", BOUND, || {
            (get(&s, "x").body == old.as_bytes()).then_some(())
        });
        assert_eq!(get(&s, "missing").status, 404);
        assert_eq!(lookup(&r, b"missing").unwrap(), Cached::Absent);
        let ids = wait_connected(&redis, 1);
        assert_eq!(c.run(&["CLIENT", "KILL", "ID", &ids[0]]), Frame::Integer(1));
        let new = format!("new{round}");
        c.run(&["SET", "k:x", &new]);
        c.run(&["SET", "k:missing", "here"]);
        let reconnected = eventually("a new tracking connection", BOUND, || {
            Some(c.near_clients()).filter(|v| v.len() == 1 && v[0] != ids[0])
        });
        assert_ne!(reconnected, ids);
        assert_eq!(lookup(&r, b"x").unwrap(), Cached::NotCached, "cleared before reconnecting");
        assert_eq!(lookup(&r, b"missing").unwrap(), Cached::NotCached, "negative entry cleared too");
        assert_eq!(get(&s, "x").body, new.as_bytes());
        assert_eq!(get(&s, "missing").body, b"here");
        c.run(&["DEL", "k:missing"]);
    }
}

/// Must-show 2, FLUSHALL: Redis's null invalidation clears values and negative entries.
#[test]
fn flushall_clears_the_table() {
    let Some((redis, tmp, s)) = one_pod("flushall_clears_the_table") else { return };
    let mut c = redis.client();
    let r = table(tmp.path(), "t");
    for i in 0..20 {
        c.run(&["SET", &format!("k:f{i}"), "v"]);
        assert_eq!(get(&s, &format!("f{i}")).status, 200);
        assert_eq!(get(&s, &format!("absent{i}")).status, 404);
    }
    assert_eq!(r.stats().items, 40);
    assert_eq!(c.run(&["FLUSHALL"]), Frame::Simple(b"OK".to_vec()));
    eventually("table cleared by FLUSHALL", BOUND, || (r.stats().items == 0).then_some(()));
    c.run(&["SET", "k:f0", "after"]);
    assert_eq!(get(&s, "f0").body, b"after");
}

/// Must-show 2, restart: redis-server is SIGKILLed (its data is gone). The table is cleared,
/// misses answer 503 `upstream_unavailable` while Redis is down; after the restart the sidecar
/// reconnects and fills from the new (empty) Redis.
#[test]
fn redis_restart_clears_then_refills() {
    let Some((mut redis, tmp, s)) = one_pod("redis_restart_clears_then_refills") else { return };
    let r = table(tmp.path(), "t");
    redis.client().run(&["SET", "k:r", "before"]);
    assert_eq!(get(&s, "r").body, b"before");
    redis.kill();
    eventually("table cleared on connection loss", BOUND, || (r.stats().items == 0).then_some(()));
    let down = get(&s, "r");
    assert_eq!(down.status, 503, "{}", String::from_utf8_lossy(&down.body));
    assert!(String::from_utf8_lossy(&down.body).contains("upstream_unavailable"));
    redis.restart();
    wait_connected(&redis, 1);
    assert_eq!(get(&s, "r").status, 404, "the restarted Redis is empty");
    redis.client().run(&["SET", "k:r", "after"]);
    eventually("refilled", BOUND, || (get(&s, "r").body == b"after").then_some(()));
}

/// Configuration mistakes are refused at start-up with a message that says what to do.
#[test]
fn bad_near_configuration_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_podcache"))
            .args(["serve", "--dir", tmp.path().to_str().unwrap(), "--listen", "127.0.0.1:0", "--ops-listen", "none"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(&["--table", "t=10:1MiB", "--mirror", "t=k:"]).contains("--mirror needs --upstream"));
    assert!(run(&["--table", "t=10:1MiB", "--upstream", "redis://127.0.0.1:1"]).contains("at least one --mirror"));
    assert!(run(&["--table", "t=10:1MiB", "--upstream", "127.0.0.1:1", "--mirror", "t=k:"]).contains("redis://"));
    assert!(
        run(&["--table", "t=10:1MiB", "--upstream", "redis://127.0.0.1:1", "--mirror", "u=k:"]).contains("no table")
    );
    let pw = tmp.path().join("missing-password");
    let e = run(&[
        "--table",
        "t=10:1MiB",
        "--upstream",
        "redis://127.0.0.1:1",
        "--mirror",
        "t=k:",
        "--upstream-password-file",
        pw.to_str().unwrap(),
    ]);
    assert!(e.contains("password file"), "{e}");
    let e = run(&[
        "--table",
        "t=10:1MiB",
        "--upstream",
        "redis+cluster://127.0.0.1:1",
        "--mirror",
        "t=k:",
        "--upstream-max-stale",
        "1s",
    ]);
    assert!(e.contains("not to a Redis Cluster"), "{e}");
}

/// Must-show 2, SIGSTOP: a Redis that stops answering (the process is stopped, the connection
/// stays open) is noticed once a PING goes unanswered for `--upstream-timeout`; the table is
/// cleared, misses answer 503, and after SIGCONT the sidecar reconnects and refills.
#[test]
fn a_silent_redis_is_noticed_within_the_upstream_timeout() {
    let Some(redis) = Redis::start_or_skip("a_silent_redis_is_noticed_within_the_upstream_timeout") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let s = sidecar(tmp.path(), &redis, &["--upstream-timeout", "300ms"]);
    wait_connected(&redis, 1);
    let r = table(tmp.path(), "t");
    redis.client().run(&["SET", "k:s", "v"]);
    assert_eq!(get(&s, "s").body, b"v");
    assert_eq!(r.stats().items, 1);
    redis.signal("STOP");
    let stopped = Instant::now();
    eventually("table cleared after an unanswered PING", BOUND, || (r.stats().items == 0).then_some(()));
    eprintln!(
        "a stopped Redis was noticed and the table cleared {:?} after SIGSTOP (timeout 300ms)",
        stopped.elapsed()
    );
    assert_eq!(get(&s, "s").status, 503);
    redis.signal("CONT");
    eventually("refilled after SIGCONT", BOUND, || (get(&s, "s").body == b"v").then_some(()));
    assert_eq!(lookup(&r, b"s").unwrap(), Cached::Value(b"v".to_vec()));
    let m = http(s.ops, "GET", "/metrics", b"");
    let text = String::from_utf8_lossy(&m.body);
    let metric = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} in /metrics"))
            .parse()
            .unwrap()
    };
    assert_eq!(metric("podcache_near_connected"), 1);
    assert!(metric("podcache_near_connects_total") >= 2, "reconnected");
    assert!(metric("podcache_near_fills_total") >= 2 && metric("podcache_near_hits_total") == 0);
}

/// The upstream is untrusted input: a fake "Redis" that answers the handshake and then sends
/// hostile bytes (a bulk length beyond the limit, nesting too deep, a reply nobody asked for,
/// a good fill followed by garbage) only ever costs a connection: the table is cleared, the
/// sidecar keeps serving, and it reconnects.
#[test]
fn a_hostile_upstream_only_costs_a_connection() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hostile: Vec<Vec<u8>> = vec![
        b"$99999999999999\r\n".to_vec(),
        b"*1\r\n".repeat(100),
        b"+OK\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:-1\r\n$4\r\ngood\r\n\x00garbage\r\n".to_vec(),
        b"+OK\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:-1\r\n$4\r\ngood\r\n+unasked\r\n".to_vec(),
        b":1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n".to_vec(),
    ];
    let modes = hostile.len();
    let server = std::thread::spawn(move || {
        for bytes in hostile.into_iter().cycle().take(modes * 4) {
            let Ok((mut c, _)) = listener.accept() else { return };
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut buf = vec![0u8; 65536];
            // The handshake: HELLO and CLIENT TRACKING, answered OK.
            let mut got = Vec::new();
            while !String::from_utf8_lossy(&got).contains("OPTIN") {
                let Ok(n) = c.read(&mut buf) else { break };
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let _ = c.write_all(b"%0\r\n+OK\r\n");
            // The fill (or a PING): then the hostile answer.
            let _ = c.read(&mut buf);
            let _ = c.write_all(&bytes);
            let _ = c.read(&mut buf);
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let s = Sidecar::start(
        tmp.path(),
        &["--table", "t=64:1MiB", "--upstream", &format!("redis://127.0.0.1:{port}"), "--mirror", "t=k:"],
    );
    let r = table(tmp.path(), "t");
    let mut answers = HashMap::new();
    for _ in 0..modes * 2 {
        let resp = get(&s, "x");
        *answers.entry(resp.status).or_insert(0) += 1;
        assert!(resp.status == 200 || resp.status == 503, "answered {}", resp.status);
        if resp.status == 200 {
            assert_eq!(resp.body, b"good");
        }
        eventually("table cleared after the hostile bytes", BOUND, || (r.stats().items == 0).then_some(()));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(answers.get(&503).is_some_and(|&n| n > 0), "{answers:?}");
    assert_eq!(http(s.ops, "GET", "/healthz", b"").status, 200, "still serving");
    drop(s);
    drop(server);
}

/// The password comes from a file and authenticates an ACL user (`redis://USER@...`); a wrong
/// one never connects (misses answer 503) and says why in the log.
#[test]
fn the_upstream_password_comes_from_a_file() {
    const TEST: &str = "the_upstream_password_comes_from_a_file";
    let Some(redis) = Redis::start_with_or_skip(TEST, &["--requirepass", "admin-secret"]) else { return };
    let mut admin = redis.client();
    assert_eq!(admin.run(&["AUTH", "admin-secret"]), Frame::Simple(b"OK".to_vec()));
    let acl = admin.run(&["ACL", "SETUSER", "cache", "on", ">cache-secret", "~k:*", "+@all"]);
    assert_eq!(acl, Frame::Simple(b"OK".to_vec()));
    admin.run(&["SET", "k:p", "secret value"]);
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("redis://cache@127.0.0.1:{}", redis.port);
    for (pw, ok) in [("wrong\n", false), ("cache-secret\n", true)] {
        let pw_file = tmp.path().join("password");
        std::fs::write(&pw_file, pw).unwrap();
        let dir = tmp.path().join(if ok { "good" } else { "bad" });
        let s = Sidecar::start(
            &dir,
            &[
                "--table",
                "t=64:1MiB",
                "--upstream",
                &url,
                "--mirror",
                "t=k:",
                "--upstream-password-file",
                pw_file.to_str().unwrap(),
            ],
        );
        if ok {
            eventually("authenticated fill", BOUND, || (get(&s, "p").body == b"secret value").then_some(()));
        } else {
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(get(&s, "p").status, 503, "no connection with a wrong password");
            assert!(admin.near_clients().is_empty());
        }
    }
}

/// A sidecar restarted while Redis is down clears what its predecessor filled at once: a
/// linked reader never sees values nobody is tracking any more.
#[test]
fn a_restart_while_redis_is_down_clears_the_table() {
    let Some((mut redis, tmp, s)) = one_pod("a_restart_while_redis_is_down_clears_the_table") else { return };
    redis.client().run(&["SET", "k:old", "filled before"]);
    assert_eq!(get(&s, "old").body, b"filled before");
    drop(s); // SIGKILL: the table keeps the value, no one can clear it
    let r = table(tmp.path(), "t");
    assert_eq!(lookup(&r, b"old").unwrap(), Cached::Value(b"filled before".to_vec()));
    redis.kill();
    let s = sidecar(tmp.path(), &redis, &[]);
    eventually("cleared without a connection", BOUND, || (r.stats().items == 0).then_some(()));
    assert_eq!(get(&s, "old").status, 503);
}

/// Opt-in `--upstream-max-stale`: after Redis dies the table keeps its last values (linked
/// readers and HTTP hits serve them, misses answer 503) until `max_stale` has passed, then it
/// is cleared. Also the upstream latency histogram and the time of the last invalidation.
#[test]
fn max_stale_keeps_the_last_values_for_a_bounded_time() {
    const TEST: &str = "max_stale_keeps_the_last_values_for_a_bounded_time";
    let Some(mut redis) = Redis::start_or_skip(TEST) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let s = sidecar(tmp.path(), &redis, &["--upstream-max-stale", "3s"]);
    wait_connected(&redis, 1);
    let r = table(tmp.path(), "t");
    let mut c = redis.client();
    c.run(&["SET", "k:m", "first"]);
    assert_eq!(get(&s, "m").body, b"first");
    assert_eq!(metric(&s, "podcache_near_last_invalidation_timestamp_seconds"), 0.0);
    c.run(&["SET", "k:m", "kept"]);
    eventually("invalidated", BOUND, || (lookup(&r, b"m").unwrap() == Cached::NotCached).then_some(()));
    assert!(metric(&s, "podcache_near_last_invalidation_timestamp_seconds") > 1.0e9, "a Unix time");
    assert_eq!(get(&s, "m").body, b"kept");
    assert!(metric(&s, "podcache_near_upstream_latency_seconds_count") >= 2.0, "fills timed");
    redis.kill();
    eventually("the loss noticed", BOUND, || (metric(&s, "podcache_near_connected") == 0.0).then_some(()));
    // Within max_stale: the last value is still served, to linked readers and HTTP hits.
    assert_eq!(lookup(&r, b"m").unwrap(), Cached::Value(b"kept".to_vec()), "kept while max_stale runs");
    let hit = get(&s, "m");
    assert_eq!((hit.status, header(&hit, "x-podcache-source")), (200, Some("table")));
    assert_eq!(get(&s, "other").status, 503, "a miss cannot be filled");
    eventually("cleared once max_stale ran out", BOUND, || (r.stats().items == 0).then_some(()));
    assert_eq!(get(&s, "m").status, 503);
    redis.restart();
    wait_connected(&redis, 1);
    assert_eq!(get(&s, "m").status, 404, "the restarted Redis is empty");
}

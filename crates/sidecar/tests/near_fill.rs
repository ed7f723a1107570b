//! Filling the near cache from a container that links `podcache-reader` (feature `fill`): a
//! real `redis-server`, real `podcache serve` child processes, and `NearTable`s in this process
//! and in child processes.
//!
//! Skips with a visible `SKIPPED` line when `redis-server` is not installed; `.ci/redis`
//! installs it and sets `PODCACHE_REQUIRE_REDIS=1`, so CI never skips.

mod common;
#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis;

use common::child::{connect, read_response, send_request, signal, Sidecar, Watchdog};
use podcache_reader::{Cached, FillError, Got, NearTable, Source};
use redis::{eventually, Redis};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::Duration;

const ROLE: &str = "PODCACHE_FILL_ROLE";
const BOUND: Duration = Duration::from_secs(20);
const SOCKET: &str = "podcache.sock";

fn sidecar(dir: &Path, redis: &Redis, extra: &[&str]) -> Sidecar {
    let url = redis.url();
    let mut args = vec!["--table", "t=4096:8MiB", "--upstream", url.as_str(), "--mirror", "t=k:", "--socket", SOCKET];
    args.extend_from_slice(extra);
    Sidecar::start(dir, &args)
}

fn near(dir: &Path) -> NearTable {
    NearTable::builder(dir, "t").socket(SOCKET).open().expect("open the mirrored table")
}

fn wait_connected(redis: &Redis) {
    let mut c = redis.client();
    eventually("tracking connection up", BOUND, || (c.near_clients().len() == 1).then_some(()));
}

/// A counter or gauge of the sidecar's `/metrics`.
fn metric(ops: SocketAddr, name: &str) -> u64 {
    let mut c = connect(ops);
    send_request(&mut c, "GET", "/metrics", "Connection: close\r\n", b"").unwrap();
    let r = read_response(&mut BufReader::new(c)).unwrap();
    let text = String::from_utf8_lossy(&r.body);
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} in /metrics"))
        .parse()
        .unwrap()
}

fn got(n: &NearTable, key: &[u8]) -> (Got, Vec<u8>) {
    let mut out = Vec::new();
    let g = n.get_into(key, &mut out).unwrap_or_else(|e| panic!("get {:?}: {e}", String::from_utf8_lossy(key)));
    (g, out)
}

/// Through the linked reader: a miss fills (the sidecar fetches from Redis and stores, the
/// reader reads the value from shared memory), the next get is a hit that never reaches the
/// sidecar, an absent key is cached as absent, invalidations by another Redis client evict,
/// keys with characters a URL escapes work, and a value larger than the table takes is served
/// from the reply (the table holds nothing newer).
#[test]
fn linked_reader_fills_on_miss_and_follows_invalidations() {
    const TEST: &str = "linked_reader_fills_on_miss_and_follows_invalidations";
    let Some(redis) = Redis::start_or_skip(TEST) else { return };
    let _wd = Watchdog::arm(std::process::id(), Duration::from_secs(120), TEST);
    let tmp = tempfile::tempdir().unwrap();
    let s = sidecar(tmp.path(), &redis, &["--table", "plain=64:1MiB"]);
    wait_connected(&redis);
    let n = near(tmp.path());
    let mut c = redis.client();
    let mut out = Vec::new();

    c.run(&["SET", "k:a", "one"]);
    assert_eq!(n.cached(b"a", &mut out).unwrap(), Cached::NotCached);
    assert_eq!(got(&n, b"a"), (Got::Value(Source::Filled), b"one".to_vec()));
    assert_eq!(n.cached(b"a", &mut out).unwrap(), Cached::Value);
    assert_eq!(metric(s.ops, "podcache_near_misses_total"), 1);
    for _ in 0..100 {
        assert_eq!(got(&n, b"a"), (Got::Value(Source::Table), b"one".to_vec()));
    }
    assert_eq!(metric(s.ops, "podcache_near_misses_total"), 1, "hits never reach the sidecar");
    assert_eq!(metric(s.ops, "podcache_near_hits_total"), 0, "nor its HTTP gets");

    // Absent in Redis: cached as absent, then a hit.
    assert_eq!(got(&n, b"nope"), (Got::Absent(Source::Filled), vec![]));
    assert_eq!(n.cached(b"nope", &mut out).unwrap(), Cached::Absent);
    assert_eq!(n.get(b"nope").unwrap(), None);
    assert_eq!(got(&n, b"nope").0, Got::Absent(Source::Table));

    // Another client writes both keys: the invalidations evict; the next get fills anew.
    c.run(&["SET", "k:a", "two"]);
    c.run(&["SET", "k:nope", "now"]);
    eventually("invalidations applied", BOUND, || {
        let mut o = Vec::new();
        (n.cached(b"a", &mut o).unwrap() == Cached::NotCached
            && n.cached(b"nope", &mut o).unwrap() == Cached::NotCached)
            .then_some(())
    });
    assert_eq!(got(&n, b"a"), (Got::Value(Source::Filled), b"two".to_vec()));
    assert_eq!(n.get(b"nope").unwrap(), Some(b"now".to_vec()));
    c.run(&["DEL", "k:a"]);
    eventually("DEL invalidates", BOUND, || (n.cached(b"a", &mut out).unwrap() == Cached::NotCached).then_some(()));
    assert_eq!(n.get(b"a").unwrap(), None);

    // Keys the URL must escape reach Redis as they are.
    let odd = "x y/z%41?#ü";
    c.run(&["SET", &format!("k:{odd}"), "odd"]);
    assert_eq!(got(&n, odd.as_bytes()), (Got::Value(Source::Filled), b"odd".to_vec()));

    // A value larger than the table takes is answered but not stored: the reply is returned.
    let big = "b".repeat(n.reader().max_value_len() + 1);
    c.run(&["SET", "k:big", &big]);
    assert_eq!(got(&n, b"big"), (Got::Value(Source::Reply), big.into_bytes()));
    assert_eq!(n.cached(b"big", &mut out).unwrap(), Cached::NotCached);

    // A key the HTTP API cannot carry, and a table the sidecar does not mirror.
    assert!(matches!(n.get(&[0xff, 0xfe]), Err(FillError::BadKey(_))));
    let plain = NearTable::builder(tmp.path(), "plain").socket(SOCKET).open().unwrap();
    let e = plain.get(b"a").unwrap_err();
    assert!(matches!(&e, FillError::NotMirrored { table } if table == "plain"), "{e}");
    assert!(e.to_string().contains("--mirror plain="), "{e}");
}

/// Child: open the table, start 25 threads that each miss on `hot` once the parent creates the
/// GO file, print what each got.
fn miss_child(dir: &Path, go: &Path) {
    const THREADS: usize = 25;
    let n = Arc::new(NearTable::builder(dir, "t").socket(SOCKET).timeout(Duration::from_secs(120)).open().unwrap());
    let start = Arc::new(Barrier::new(THREADS + 1));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (n, start) = (Arc::clone(&n), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                let mut out = Vec::new();
                let g = n.get_into(b"hot", &mut out).expect("get through the linked reader");
                (g, out)
            })
        })
        .collect();
    println!("@@READY");
    while !go.exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    start.wait();
    let (mut ok, mut from_table, mut filled, mut reply) = (0, 0, 0, 0);
    for t in threads {
        let (g, v) = t.join().unwrap();
        ok += usize::from(matches!(g, Got::Value(_)) && v == b"value");
        match g.source() {
            Source::Table => from_table += 1,
            Source::Filled => filled += 1,
            Source::Reply => reply += 1,
        }
    }
    println!("@@CHILD ok={ok} table={from_table} filled={filled} reply={reply}");
}

fn field(line: &str, name: &str) -> usize {
    line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}="))).unwrap().parse().unwrap()
}

/// Must-show 4: 100 concurrent misses on one key from four processes (25 threads each, every
/// one through the linked reader's fill) make exactly one upstream GET (`INFO commandstats`).
///
/// redis-server is stopped (SIGSTOP) while the misses arrive, so the first one's fill cannot
/// complete before the others reach the sidecar; the test waits until the sidecar counted all
/// 100 misses (`podcache_near_misses_total`) before it continues Redis. No timing decides the
/// outcome: every miss finds the one fill in flight.
#[test]
fn concurrent_misses_from_four_processes_make_one_upstream_get() {
    const TEST: &str = "concurrent_misses_from_four_processes_make_one_upstream_get";
    const PROCS: usize = 4;
    if std::env::var(ROLE).as_deref() == Ok("misser") {
        let dir = std::env::var("DIR").unwrap();
        return miss_child(Path::new(&dir), Path::new(&std::env::var("GO").unwrap()));
    }
    let Some(redis) = Redis::start_or_skip(TEST) else { return };
    let _wd = Watchdog::arm(std::process::id(), Duration::from_secs(180), TEST);
    let tmp = tempfile::tempdir().unwrap();
    // The fill stays unanswered while Redis is stopped: a long upstream timeout keeps the
    // connection from counting as lost meanwhile.
    let s = sidecar(tmp.path(), &redis, &["--upstream-timeout", "120s"]);
    wait_connected(&redis);
    let mut c = redis.client();
    c.run(&["SET", "k:hot", "value"]);
    c.run(&["CONFIG", "RESETSTAT"]);
    let go = tmp.path().join("go");
    let mut children: Vec<_> = (0..PROCS)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", TEST, "--nocapture", "--test-threads=1", "--quiet"])
                .env(ROLE, "misser")
                .env("DIR", tmp.path())
                .env("GO", &go)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut outputs: Vec<_> = children.iter_mut().map(|ch| BufReader::new(ch.stdout.take().unwrap()).lines()).collect();
    for out in &mut outputs {
        while out.next().expect("child ready").unwrap() != "@@READY" {}
    }
    let misses_before = metric(s.ops, "podcache_near_misses_total");
    let fills_before = metric(s.ops, "podcache_near_fills_total");
    redis.signal("STOP");
    std::fs::write(&go, b"").unwrap();
    eventually("all 100 misses reached the sidecar", Duration::from_secs(120), || {
        (metric(s.ops, "podcache_near_misses_total") - misses_before == 100).then_some(())
    });
    redis.signal("CONT");
    let (mut ok, mut filled, mut reply) = (0, 0, 0);
    for (mut out, mut ch) in outputs.into_iter().zip(children) {
        let line = out.find_map(|l| l.ok().filter(|l| l.starts_with("@@CHILD "))).expect("child report");
        assert!(ch.wait().unwrap().success(), "child failed");
        assert_eq!(field(&line, "table"), 0, "every thread missed: {line}");
        ok += field(&line, "ok");
        filled += field(&line, "filled");
        reply += field(&line, "reply");
    }
    assert_eq!(ok, 100, "every miss got the value");
    assert_eq!(metric(s.ops, "podcache_near_fills_total") - fills_before, 1, "one single-flight group");
    assert_eq!(c.calls("get"), 1, "one upstream GET for 100 concurrent misses from {PROCS} processes");
    eprintln!("100 misses from {PROCS} processes: one GET; {filled} read the value from shared memory, {reply} from the reply");
}

/// A sidecar that is stopped, killed or shut down, and a Redis that is down: each is a clear
/// error at once or at the fill's deadline, never a hang; hits keep working from shared memory
/// whatever the sidecar does.
#[test]
fn a_sidecar_or_redis_that_is_down_is_a_clear_error() {
    const TEST: &str = "a_sidecar_or_redis_that_is_down_is_a_clear_error";
    let Some(mut redis) = Redis::start_or_skip(TEST) else { return };
    let _wd = Watchdog::arm(std::process::id(), Duration::from_secs(120), TEST);
    let tmp = tempfile::tempdir().unwrap();
    let mut s = sidecar(tmp.path(), &redis, &[]);
    wait_connected(&redis);
    redis.client().run(&["SET", "k:a", "one"]);
    let n = near(tmp.path());
    assert_eq!(n.get(b"a").unwrap(), Some(b"one".to_vec()));

    // Stopped: connects (the kernel queues the connection) but never answers.
    let quick = NearTable::builder(tmp.path(), "t").socket(SOCKET).timeout(Duration::from_millis(300)).open().unwrap();
    signal(s.child.id(), "STOP");
    assert_eq!(got(&quick, b"a"), (Got::Value(Source::Table), b"one".to_vec()), "a hit needs no sidecar");
    let e = quick.get(b"b").unwrap_err();
    assert!(matches!(e, FillError::Timeout { after, .. } if after == Duration::from_millis(300)), "{e}");
    assert!(e.to_string().contains(SOCKET), "{e}");
    signal(s.child.id(), "CONT");
    assert_eq!(n.get(b"b").unwrap(), None);

    // Redis down: the sidecar answers 503 upstream_unavailable (and clears the table).
    redis.kill();
    let e = eventually("503 from the sidecar", BOUND, || match n.get(b"c") {
        Err(e @ FillError::UpstreamUnavailable(_)) => Some(e),
        _ => None,
    });
    assert!(e.to_string().contains("cannot reach Redis"), "{e}");
    redis.restart();
    wait_connected(&redis);
    redis.client().run(&["SET", "k:c", "back"]);
    eventually("refilled", BOUND, || n.get(b"c").ok().flatten().filter(|v| v == b"back").map(|_| ()));

    // Killed (SIGKILL): the socket file stays, nobody listens.
    let _ = s.child.kill();
    let _ = s.child.wait();
    assert!(tmp.path().join(SOCKET).exists(), "a killed sidecar leaves its socket file");
    let e = n.get(b"d").unwrap_err();
    assert!(
        matches!(&e, FillError::SidecarDown { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused),
        "{e}"
    );
    assert!(e.to_string().contains("podcache serve --socket"), "{e}");

    // Shut down (SIGTERM): the socket file is removed.
    s = sidecar(tmp.path(), &redis, &[]);
    wait_connected(&redis);
    assert_eq!(n.get(b"c").unwrap(), Some(b"back".to_vec()));
    s.terminate();
    let _ = s.child.wait();
    let e = n.get(b"d").unwrap_err();
    assert!(
        matches!(&e, FillError::SidecarDown { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{e}"
    );
}

/// A sidecar with `--token-file`: a reader without the token gets `Unauthorized`; one with the
/// token file fills, and keeps filling after the Secret is rotated (the file is read again
/// when the sidecar refuses the old token).
#[test]
fn fills_carry_the_bearer_token() {
    const TEST: &str = "fills_carry_the_bearer_token";
    let Some(redis) = Redis::start_or_skip(TEST) else { return };
    let _wd = Watchdog::arm(std::process::id(), Duration::from_secs(120), TEST);
    let tmp = tempfile::tempdir().unwrap();
    let secret = tempfile::tempdir().unwrap();
    let token = secret.path().join("token");
    std::fs::write(&token, "first-token\n").unwrap();
    let s = sidecar(tmp.path(), &redis, &["--token-file", token.to_str().unwrap()]);
    wait_connected(&redis);
    redis.client().run(&["SET", "k:a", "one"]);
    redis.client().run(&["SET", "k:b", "two"]);
    let anonymous = near(tmp.path());
    assert!(matches!(anonymous.get(b"a"), Err(FillError::Unauthorized)));
    let n = NearTable::builder(tmp.path(), "t").socket(SOCKET).token_file(&token).open().unwrap();
    assert_eq!(n.get(b"a").unwrap(), Some(b"one".to_vec()));
    std::fs::write(&token, "second-token\n").unwrap();
    // The sidecar notices the new file within its 1 s check; until then the old token works.
    eventually("the rotated token in force", BOUND, || {
        let mut c = connect(s.api);
        let auth = "Authorization: Bearer first-token\r\nConnection: close\r\n";
        send_request(&mut c, "GET", "/v1/tables/t/keys/x", auth, b"").unwrap();
        (read_response(&mut BufReader::new(c)).unwrap().status == 401).then_some(())
    });
    assert_eq!(n.get(b"b").unwrap(), Some(b"two".to_vec()), "the token file was read again");
    let wrong = NearTable::builder(tmp.path(), "t").socket(SOCKET).token("first-token").open().unwrap();
    assert!(matches!(wrong.get(b"z"), Err(FillError::Unauthorized)));
    assert!(
        NearTable::builder(tmp.path(), "t").token("two words").open().is_err(),
        "a token that would break the header"
    );
    assert!(NearTable::builder(tmp.path(), "t/../x").open().is_err(), "a table name that would break the path");
}

//! A real `redis-server` child process for the near-cache tests, and a small blocking RESP
//! client to drive it (the test's own writes, `CLIENT KILL`, `INFO`, `MGET`).
//!
//! If `redis-server` is not installed the tests print a visible `SKIPPED` line and return,
//! unless `PODCACHE_REQUIRE_REDIS=1` (set by `.ci/redis`, which installs it), where they fail.

use crate::common::child::{connect, read_response, send_request, RawResponse};
use podcache_sidecar::near::resp::{self, Frame, Limits};
use podcache_sidecar::near::{lookup, Cached};
use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that names a test child's role.
pub const ROLE: &str = "PODCACHE_NEAR_ROLE";

/// A running `redis-server` on a loopback port.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Redis {
    /// Start one, or return `None` after printing why the test is skipped.
    pub fn start_or_skip(test: &str) -> Option<Redis> {
        Redis::start_with_or_skip(test, &[])
    }

    /// [`Redis::start_or_skip`] with more `redis-server` arguments (e.g. `--requirepass`).
    pub fn start_with_or_skip(test: &str, extra: &[&str]) -> Option<Redis> {
        let found = Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_ok();
        if !found {
            if std::env::var("PODCACHE_REQUIRE_REDIS").is_ok_and(|v| v == "1") {
                panic!("{test}: redis-server is not installed but PODCACHE_REQUIRE_REDIS=1");
            }
            // Written to the stderr handle, not with eprintln!: libtest captures the macros'
            // output of a passing test, and a skip must show.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: redis-server is not installed (bash .ci/redis installs it and runs this test)"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut r = Redis { child: None, port: free_port(), dir, extra };
        r.spawn();
        Some(r)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "yes", "--dir", self.dir.path().to_str().unwrap()])
            .args(["--logfile", self.dir.path().join("redis.log").to_str().unwrap()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = TcpStream::connect(("127.0.0.1", self.port)).map(Client::from) {
                // PONG, or NOAUTH from a server that wants a password: it is up either way.
                if matches!(c.cmd(&[b"PING"]), Frame::Simple(_) | Frame::Error(_)) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start (see {:?})", self.dir.path());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL the server (its data is gone: no persistence).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send a signal (`STOP`, `CONT`) to the server.
    pub fn signal(&self, sig: &str) {
        crate::common::child::signal(self.child.as_ref().expect("running").id(), sig);
    }

    /// Start it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> Client {
        Client::from(TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis"))
    }

    pub fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("redis.log")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A test that failed between SIGSTOP and SIGCONT leaves it stopped: continue it.
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
        }
        self.kill();
    }
}

/// A blocking RESP2 client (one command at a time).
pub struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl From<TcpStream> for Client {
    fn from(s: TcpStream) -> Client {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.set_nodelay(true).unwrap();
        Client { s, buf: Vec::new() }
    }
}

impl Client {
    pub fn cmd(&mut self, args: &[&[u8]]) -> Frame {
        let mut out = Vec::new();
        resp::encode(&mut out, args);
        self.s.write_all(&out).expect("write to redis");
        loop {
            if let Some((f, used)) = resp::parse(&self.buf, &Limits::default()).expect("RESP from redis") {
                self.buf.drain(..used);
                return f;
            }
            let mut chunk = [0u8; 64 << 10];
            let n = self.s.read(&mut chunk).expect("read from redis");
            assert!(n > 0, "redis closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// `cmd` with string arguments.
    pub fn run(&mut self, args: &[&str]) -> Frame {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        self.cmd(&a)
    }

    pub fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        match self.run(&["GET", key]) {
            Frame::Bulk(v) => Some(v),
            Frame::Null => None,
            other => panic!("GET {key}: {other:?}"),
        }
    }

    /// Client ids of the near cache's tracking connections (`CLIENT LIST`, name podcache-near).
    pub fn near_clients(&mut self) -> Vec<String> {
        let Frame::Bulk(list) = self.run(&["CLIENT", "LIST"]) else { panic!("CLIENT LIST") };
        String::from_utf8_lossy(&list)
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w == "name=podcache-near"))
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("id=")).map(str::to_string))
            .collect()
    }

    /// `calls` of a command in `INFO commandstats` (0 if never called).
    pub fn calls(&mut self, cmd: &str) -> u64 {
        let Frame::Bulk(info) = self.run(&["INFO", "commandstats"]) else { panic!("INFO") };
        let prefix = format!("cmdstat_{cmd}:calls=");
        String::from_utf8_lossy(&info)
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()).map(|r| r.split(',').next().unwrap().parse().unwrap()))
            .unwrap_or(0)
    }
}

/// Poll `f` every few milliseconds until it returns `Some`; panics with `what` after `bound`
/// (a watchdog: it bounds a hang, it does not measure anything).
pub fn eventually<T>(what: &str, bound: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The table file of `name` in `dir`.
pub fn table(dir: &Path, name: &str) -> podcache_reader::TableReader {
    podcache_reader::TableReader::open(dir.join(format!("{name}.table"))).expect("open table")
}

/// A deterministic generator (xorshift), seeded per process.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Value of version `v`: `v<version>:` then filler (lengths vary, so records of many sizes).
pub fn value(v: u64, rng: &mut Rng) -> String {
    format!("v{v}:{}", "x".repeat(rng.below(300) as usize))
}

pub fn version(v: &[u8]) -> u64 {
    let s = std::str::from_utf8(v).expect("utf-8 value");
    let end = s.find(':').expect("versioned value");
    s[1..end].parse().expect("version number")
}

/// The number `field=N` on the `@@TAG ...` line a child printed.
pub fn report(out: &str, tag: &str, field: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("@@{tag} ")))
        .unwrap_or_else(|| panic!("no {tag} report in {out:?}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{field}=")))
        .unwrap_or_else(|| panic!("no {field} in {line}"))
        .parse()
        .unwrap()
}

/// One HTTP/1.1 request on a new connection.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> RawResponse {
    let mut c = connect(addr);
    send_request(&mut c, method, path, "Connection: close\r\n", body).unwrap();
    read_response(&mut BufReader::new(c)).unwrap()
}

/// This test binary running only `test`, as child role `role`.
pub fn self_command(test: &str, role: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", test, "--nocapture", "--test-threads=1", "--quiet"]).env(ROLE, role);
    c.stdout(Stdio::piped()).stderr(Stdio::inherit());
    c
}

/// Child: read every table directly (shared memory) and through HTTP (fills on a miss), and
/// check that no (table, key) ever shows a version older than one seen before. With
/// `unavailable_ok`, a `503` (a fill cut by a Redis Cluster topology change) is counted, not an
/// error.
pub fn reader_child(dirs: &[PathBuf], apis: &[SocketAddr], keys: &[String], stop: &Path, unavailable_ok: bool) {
    let readers: Vec<_> = dirs.iter().map(|d| table(d, "t")).collect();
    let mut rng = Rng(0x5eed_0002 ^ u64::from(std::process::id()));
    let mut seen: HashMap<(usize, usize), u64> = HashMap::new();
    let (mut values, mut http_gets, mut unavailable, mut violations) = (0u64, 0u64, 0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut check = |t: usize, k: usize, v: &[u8], how: &str| {
        let ver = version(v);
        let max = seen.entry((t, k)).or_insert(0);
        if ver < *max {
            eprintln!("VIOLATION: table {t} key {}: version {ver} ({how}) after {}", keys[k], *max);
            violations += 1;
        }
        *max = (*max).max(ver);
    };
    while !stop.exists() && Instant::now() < deadline {
        let k = rng.below(keys.len() as u64) as usize;
        for (t, r) in readers.iter().enumerate() {
            if let Cached::Value(v) = lookup(r, keys[k].as_bytes()).expect("lookup") {
                values += 1;
                check(t, k, &v, "table");
            }
            if rng.below(4) == 0 {
                http_gets += 1;
                let resp = http(apis[t], "GET", &format!("/v1/tables/t/keys/{}", keys[k]), b"");
                match resp.status {
                    200 => check(t, k, &resp.body, "http"),
                    404 => {}
                    503 if unavailable_ok => unavailable += 1,
                    s => panic!("GET answered {s}: {}", String::from_utf8_lossy(&resp.body)),
                }
            }
        }
    }
    println!("@@READER values={values} http_gets={http_gets} unavailable={unavailable} violations={violations}");
}

/// One random write of version `version` to Redis key `k`, sent with `run`: SET, SET PX, DEL or
/// PEXPIRE (the TTLs short enough to expire during a test), then now and then a short pause.
pub fn random_write(rng: &mut Rng, version: u64, k: &str, run: &mut dyn FnMut(&[&str]) -> Frame) {
    let r = match rng.below(10) {
        0..=4 => run(&["SET", k, &value(version, rng)]),
        5 | 6 => run(&["SET", k, &value(version, rng), "PX", &(20 + rng.below(400)).to_string()]),
        7 | 8 => run(&["DEL", k]),
        _ => run(&["PEXPIRE", k, &(10 + rng.below(300)).to_string()]),
    };
    assert!(!matches!(r, Frame::Error(_)), "{r:?}");
    if rng.below(8) == 0 {
        std::thread::sleep(Duration::from_micros(rng.below(2000)));
    }
}

/// The value of the unlabelled sample `name` on the sidecar's `/metrics`.
pub fn metric(s: &crate::common::child::Sidecar, name: &str) -> f64 {
    let m = http(s.ops, "GET", "/metrics", b"");
    let text = String::from_utf8_lossy(&m.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} in /metrics"))
        .parse()
        .unwrap()
}

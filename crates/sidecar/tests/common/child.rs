//! A `podcache serve` child process (to measure its memory and send it signals), a watchdog
//! that kills it, and a raw HTTP/1.1 client for clients that misbehave on purpose.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `podcache serve` process.
pub struct Sidecar {
    pub child: Child,
    pub api: SocketAddr,
    pub ops: SocketAddr,
    /// The JSON log lines written before it listened.
    pub startup_log: Vec<serde_json::Value>,
    /// Every log line written after that.
    pub later_log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Sidecar {
    /// Start `podcache serve --dir DIR ARGS` on ephemeral ports; returns once it logged `ready`.
    pub fn start(dir: &std::path::Path, args: &[&str]) -> Sidecar {
        Sidecar::start_with_env(dir, args, &[])
    }

    /// [`Sidecar::start`] with these environment variables added.
    pub fn start_with_env(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Sidecar {
        let mut child = Command::new(env!("CARGO_BIN_EXE_podcache"))
            .args(["serve", "--dir", dir.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .args(["--ops-listen", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn podcache serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut api, mut ops) = (None, None);
        let mut startup_log = Vec::new();
        let mut ready = false;
        while !ready {
            let line = lines.next().expect("podcache serve exited before it was ready").unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            startup_log.push(v.clone());
            let msg = v["fields"]["message"].as_str().unwrap_or_default();
            let addr = v["fields"]["addr"].as_str().and_then(|a| a.parse().ok());
            if msg.starts_with("HTTP API listening") && addr.is_some() {
                api = addr;
            } else if msg.starts_with("ops listening") {
                ops = addr;
            } else if msg == "ready" {
                ready = true;
            }
        }
        // Keep draining its logs so it never blocks on a full pipe.
        let later_log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&later_log);
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        Sidecar { child, api: api.expect("API listening"), ops: ops.expect("ops listening"), startup_log, later_log }
    }

    /// Resident memory (VmRSS) in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }

    /// Send SIGTERM.
    pub fn terminate(&self) {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill -TERM");
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills process `pid` and aborts the test (a failure) unless disarmed within `bound`.
pub struct Watchdog(Option<mpsc::Sender<()>>);

impl Watchdog {
    pub fn arm(pid: u32, bound: Duration, what: &'static str) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(bound) {
                eprintln!("WATCHDOG: {what} did not finish within {bound:?}; killing {pid} and failing");
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                std::process::abort();
            }
        });
        Watchdog(Some(tx))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.0.take().map(|tx| tx.send(()));
    }
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Write one request (keep-alive) on `s`.
pub fn send_request(s: &mut impl Write, method: &str, path: &str, extra: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n{extra}\r\n", body.len());
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req)
}

/// Read one response with a `Content-Length` body (or none) from `r`.
pub fn read_response(r: &mut impl BufRead) -> std::io::Result<RawResponse> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut headers = Vec::new();
    let mut len = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
            if k == "content-length" {
                len = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(RawResponse { status, headers, body })
}

/// Connect with generous timeouts (a test's watchdog bounds the whole).
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// Send `sig` (a `kill` name: `STOP`, `CONT`, `KILL`...) to `pid`; for `STOP`, return only once
/// every thread of the process is stopped. `kill` returns before that: a multi-threaded
/// process stops when one of its threads next runs and takes the signal, and on a busy machine
/// its other threads go on serving meanwhile (a request sent right after `kill -STOP` was once
/// answered).
pub fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status();
    assert!(ok.expect("run kill").success(), "kill -{sig} {pid}");
    if sig != "STOP" {
        return;
    }
    let all_stopped = || -> Option<bool> {
        let mut any = false;
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
            // The state follows the command name's closing parenthesis.
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            if !matches!(state, 'T' | 't') {
                return Some(false);
            }
            any = true;
        }
        Some(any)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while all_stopped() != Some(true) {
        assert!(std::time::Instant::now() < deadline, "process {pid} not stopped 30 s after SIGSTOP");
        std::thread::sleep(Duration::from_millis(1));
    }
}

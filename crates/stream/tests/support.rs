//! Helpers of the multi-process tests: a test re-executes its own binary as a child process
//! (`PODCACHE_STREAM_ROLE=<role>`, libtest filtered to the one test), children report to the
//! parent with `REPORT ...` lines on stdout, children are killed when their handle drops, and a
//! watchdog aborts a test that hangs (tests never assert durations).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

/// The environment variable that names a child's role.
pub const ROLE: &str = "PODCACHE_STREAM_ROLE";
/// The environment variable that gives a child the data ring's path.
pub const PATH: &str = "PODCACHE_STREAM_PATH";

/// This process's role (`None`: the parent test).
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// Abort the whole test binary (parent or child) if it is still running after `secs`: a hang
/// fails the test instead of blocking CI.
pub struct Watchdog;

impl Watchdog {
    /// Start a watchdog named `what`.
    pub fn new(what: &'static str, secs: u64) -> Watchdog {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(secs));
            eprintln!("watchdog: {what} still running after {secs} s: aborting");
            std::process::abort();
        });
        Watchdog
    }
}

/// A child process of this test binary, killed and reaped when dropped.
pub struct ChildProc {
    child: Child,
    lines: Receiver<String>,
}

impl ChildProc {
    /// Run test `test` of this binary as a child with `role` on the data ring `path`, with
    /// extra environment variables.
    pub fn spawn(test: &str, role: &str, path: &Path, env: &[(&str, String)]) -> ChildProc {
        let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
        cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(PATH, path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn child");
        let out: ChildStdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // libtest may print "test NAME ... " on the same line first.
                if let Some(at) = line.find("REPORT ") {
                    if tx.send(line[at + 7..].to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        ChildProc { child, lines }
    }

    /// The child's next report line (`None`: it exited without one).
    pub fn next_report(&self) -> Option<String> {
        self.lines.recv().ok()
    }

    /// SIGKILL the child and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait for the child to exit; whether it succeeded.
    pub fn wait_success(&mut self) -> bool {
        self.child.wait().expect("wait for child").success()
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Print a report line for the parent.
pub fn report(line: impl std::fmt::Display) {
    println!("REPORT {line}");
}

/// The payload of message `seq`: `len` bytes derived from `seq`, so a consumer checks every
/// byte independently of the ring's crc.
pub fn fill(seq: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (8 * (i % 8))) as u8 ^ i as u8;
    }
}

/// Whether `buf` is the payload of message `seq`.
pub fn check(seq: u64, buf: &[u8]) -> bool {
    let mut want = vec![0u8; buf.len()];
    fill(seq, &mut want);
    want == buf
}

/// The length of message `seq` in a stream whose largest message is `max`: varied, from 1 B
/// to `max`, so records of every size and the padding at the ring's end are exercised.
pub fn len_of(seq: u64, max: usize) -> usize {
    let x = seq.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
    match seq % 8 {
        0 => max,
        1 => 1,
        _ => 1 + (x as usize % max),
    }
}

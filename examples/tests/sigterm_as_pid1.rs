//! The example binaries end on SIGTERM when they are PID 1 of a PID namespace, as a container's
//! entrypoint is: the kernel gives PID 1 no default action for SIGTERM, so without a handler
//! every Pod deletion would wait for SIGKILL.
//!
//! Needs `unshare --pid` (root or user namespaces); where it is refused the test says so and
//! checks nothing.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The PID (in this namespace) of the process `unshare --fork` started, once it exists.
fn forked_child(unshare: u32) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).ok()?;
        if let Some(pid) = children.split_whitespace().next() {
            return pid.parse().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn ends_on_sigterm_as_pid1(bin: &str, args: &[&str]) {
    let probe = Command::new("unshare").args(["--pid", "--fork", "true"]).stderr(Stdio::null()).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("unshare --pid is not permitted here: {bin} not checked as PID 1");
        return;
    }
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", bin])
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn unshare");
    let child = forked_child(unshare.id()).expect("unshare forked the example");
    // It is PID 1 inside: its status file there says NSpid ... 1.
    let status = std::fs::read_to_string(format!("/proc/{child}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.trim_end().ends_with("\t1"), "{bin} is PID 1 of its namespace: {nspid}");
    // Let it install its handler and block (webserve waits for its table).
    std::thread::sleep(Duration::from_millis(500));
    assert!(Command::new("kill").args(["-TERM", &child.to_string()]).status().unwrap().success());
    // Watchdog: if the signal is ignored, kill it and fail (no assertion on how long it took).
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(s) = unshare.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = unshare.kill();
            let _ = unshare.wait();
            panic!("{bin} ignored SIGTERM as PID 1 (killed after the watchdog)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(unshare.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("signal 15"), "{bin} exited ({exit:?}) without saying it got SIGTERM: {err}");
}

#[test]
fn webserve_ends_on_sigterm_as_pid1() {
    let dir = tempfile::tempdir().unwrap();
    ends_on_sigterm_as_pid1(
        env!("CARGO_BIN_EXE_webserve"),
        &["--dir", dir.path().to_str().unwrap(), "--table", "absent", "--wait-secs", "600"],
    );
}

#[test]
fn consumer_ends_on_sigterm_as_pid1() {
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("demo.ring");
    // A ring with no producer: the consumer waits for messages.
    let _p = podcache_writer::Publisher::builder(&ring).capacity(1 << 16).create().unwrap();
    ends_on_sigterm_as_pid1(env!("CARGO_BIN_EXE_consumer"), &["--path", ring.to_str().unwrap(), "--messages", "10"]);
}

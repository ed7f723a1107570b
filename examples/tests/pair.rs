//! The README's quick start: `pair` runs a producer and a consumer process over a ring on tmpfs
//! with flow control, for every message size up to a large one. Each run must end with every
//! message received in order and checked (a hang is caught by a watchdog, not a timed assertion).

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Generous: a run takes well under a second on an idle machine.
const WATCHDOG: Duration = Duration::from_secs(240);

fn run_pair(size: usize, messages: u64) {
    let dir = tempfile::Builder::new().prefix("podcache-pair-").tempdir_in(shm_dir()).expect("temp dir");
    let child = Command::new(env!("CARGO_BIN_EXE_pair"))
        .args(["--dir", dir.path().to_str().unwrap(), "--messages", &messages.to_string()])
        .args(["--size", &size.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pair");
    let pid = child.id();
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(WATCHDOG).is_err() {
            // Kill the pair and its two children (same process group is not guaranteed:
            // kill the parent; its children then fail on their own 30 s timeouts).
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            return true;
        }
        false
    });
    let out = child.wait_with_output().expect("pair output");
    let _ = done.send(());
    let killed = watchdog.join().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!killed, "pair --size {size} hung (killed after {WATCHDOG:?}):\n{text}");
    assert!(out.status.success(), "pair --size {size} failed ({}):\n{text}", out.status);
    assert!(text.contains(&format!("pair: OK: {messages} messages")), "{text}");
    assert!(text.contains(", 0 lost, 0 bad"), "{text}");
}

fn shm_dir() -> &'static str {
    if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    }
}

#[test]
fn pair_with_64_byte_messages() {
    run_pair(64, 200_000);
}

#[test]
fn pair_with_4_kib_messages() {
    run_pair(4096, 20_000);
}

/// More than a ring's worth (the default ring is 64 MiB): flow control must let the producer
/// go on as the consumer acknowledges (it stalled at half a ring before).
#[test]
fn pair_with_64_kib_messages() {
    run_pair(64 << 10, 2_500);
}

#[test]
fn pair_with_1_mib_messages() {
    run_pair(1 << 20, 200);
}

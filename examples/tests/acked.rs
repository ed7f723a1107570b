//! The README's acknowledged-stream example: `acked` publishes to consumer processes through
//! `podcache-stream`, for small and large messages, one or two consumers, a slow one among
//! them. Each run must end with every message received in order by every consumer (a hang is
//! caught by a watchdog, not a timed assertion).

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Generous: a run takes about a second on an idle machine.
const WATCHDOG: Duration = Duration::from_secs(240);

fn run_acked(args: &[&str], messages: u64, consumers: usize) {
    let dir = tempfile::Builder::new().prefix("podcache-acked-").tempdir_in("/dev/shm").expect("temp dir");
    let child = Command::new(env!("CARGO_BIN_EXE_acked"))
        .args(["--dir", dir.path().to_str().unwrap(), "--messages", &messages.to_string()])
        .args(["--consumers", &consumers.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start acked");
    let pid = child.id();
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(WATCHDOG).is_err() {
            // The consumers then fail on their own 30 s timeouts.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            return true;
        }
        false
    });
    let out = child.wait_with_output().expect("acked output");
    let _ = done.send(());
    let killed = watchdog.join().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!killed, "acked {args:?} hung (killed after {WATCHDOG:?}):\n{text}");
    assert!(out.status.success(), "acked {args:?} failed ({}):\n{text}", out.status);
    assert!(text.contains(&format!("acked: OK: {messages} messages")), "{text}");
    for i in 0..consumers {
        assert!(text.contains(&format!("consumer c{i}: {messages} messages in order, 0 lost, 0 bad")), "{text}");
    }
    // Nothing left behind on the volume.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "files left in {}", dir.path().display());
}

#[test]
fn acked_with_64_byte_messages() {
    run_acked(&["--size", "64"], 200_000, 1);
}

/// Several rings' worth of 64 KiB messages through a 1 MiB ring.
#[test]
fn acked_with_64_kib_messages_through_a_small_ring() {
    run_acked(&["--size", "65536", "--capacity-mib", "1"], 500, 1);
}

/// Two consumers, both slow: the publisher waits for the slower and neither loses anything.
#[test]
fn acked_with_two_slow_consumers() {
    run_acked(&["--size", "256", "--capacity-mib", "1", "--slow-us", "500"], 100_000, 2);
}

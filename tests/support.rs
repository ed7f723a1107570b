//! Helpers shared by the multi-process tests.
//!
//! - [`Rng`] / [`test_seed`]: a seeded splitmix64 generator; the seed is printed so a failing
//!   run can be replayed with `PODCACHE_TEST_SEED=<seed>`.
//! - [`payload`] / [`payload_matches`]: message bytes derived from the sequence number alone,
//!   so a reader checks every message independently of the ring's crc.
//! - [`self_command`] / [`child_role`] / [`ChildProc`]: a test re-executes its own binary as
//!   a child process (`PODCACHE_TEST_ROLE=<role>`, libtest filtered to the one test with
//!   `--exact`). Children report to the parent with [`report`] lines on stdout; the handle
//!   kills and reaps the child when dropped, and [`die_with_parent`] makes a child die with
//!   its parent.
//! - [`Watchdog`] / [`bounded`]: abort the test binary when something hangs, so a hung test
//!   fails instead of blocking CI. Tests never assert durations.
//! - [`shm_tempdir`], [`map_perms`], [`MountGuard`]: files on `/dev/shm`, the permissions of
//!   this process's mappings of a file, and tmpfs / read-only bind mounts removed on drop.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Randomness and payloads

/// One step of splitmix64: a good 64-bit mix of `x`.
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small seeded pseudo-random generator (splitmix64): reproducible from its seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix(self.0)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        self.next_u64() % n
    }

    /// A `usize` in `0..n` (`n > 0`).
    pub fn below_usize(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Fill `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// The seed of this run: `PODCACHE_TEST_SEED` if set, else one drawn from the clock. Printed
/// with the test's name so a failure can be replayed.
pub fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var("PODCACHE_TEST_SEED") {
        Ok(s) => s.trim().parse().expect("PODCACHE_TEST_SEED must be a u64"),
        Err(_) => {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            splitmix(t.as_nanos() as u64 ^ u64::from(std::process::id()))
        }
    };
    println!("{test}: seed {seed} (replay with PODCACHE_TEST_SEED={seed})");
    seed
}

/// A `u64` from the environment variable `name`, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("{name} must be a number, got {s:?}")),
        Err(_) => default,
    }
}

/// Length of the payload of message `seq` in a ring whose largest message is `max` bytes:
/// mostly short, one in eight up to `max` (so records of every size wrap around the ring).
pub fn payload_len(seq: u64, max: usize) -> usize {
    let h = splitmix(seq ^ 0x05EE_D5EE_D5EE_D5EE);
    let limit = if h & 7 == 0 { max } else { max.min(64) };
    1 + ((h >> 8) % limit as u64) as usize
}

/// Write the payload of message `seq` into `out` (cleared first).
pub fn payload_into(seq: u64, max: usize, out: &mut Vec<u8>) {
    out.clear();
    out.resize(payload_len(seq, max), 0);
    let mut s = seq;
    for chunk in out.chunks_mut(8) {
        s = splitmix(s);
        chunk.copy_from_slice(&s.to_le_bytes()[..chunk.len()]);
    }
}

/// The payload of message `seq`: length and bytes derive from `seq` alone.
pub fn payload(seq: u64, max: usize) -> Vec<u8> {
    let mut v = Vec::new();
    payload_into(seq, max, &mut v);
    v
}

/// Whether `bytes` are exactly the payload of message `seq` (no allocation).
pub fn payload_matches(seq: u64, max: usize, bytes: &[u8]) -> bool {
    if bytes.len() != payload_len(seq, max) {
        return false;
    }
    let mut s = seq;
    bytes.chunks(8).all(|chunk| {
        s = splitmix(s);
        chunk == &s.to_le_bytes()[..chunk.len()]
    })
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// Environment variable that selects the role of a re-executed test binary.
pub const ROLE_ENV: &str = "PODCACHE_TEST_ROLE";

/// The role this process was started in, if it is a child of a test.
pub fn child_role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// A command that re-executes this test binary running only `test` (the name libtest gives
/// it) in child role `role`. Stdin and stdout are pipes; stderr is inherited so a child's
/// panic message shows in the test output.
pub fn self_command(test: &str, role: &str) -> Command {
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1", "--quiet"])
        .env(ROLE_ENV, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// In a child: be killed (`SIGKILL`) when the parent dies, so an aborted test leaves nothing
/// running.
pub fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    assert_eq!(rc, 0, "prctl(PR_SET_PDEATHSIG): {}", std::io::Error::last_os_error());
}

/// Print a report line for the parent: `@@TAG key=value ...`, flushed at once.
pub fn report(tag: &str, fields: &[(&str, u64)]) {
    let mut line = format!("@@{tag}");
    for (k, v) in fields {
        line.push_str(&format!(" {k}={v}"));
    }
    line.push('\n');
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes()).expect("write report");
    out.flush().expect("flush report");
}

/// A report line received from a child.
#[derive(Clone, Debug)]
pub struct Report {
    /// The tag (first word after `@@`).
    pub tag: String,
    fields: Vec<(String, String)>,
}

impl Report {
    fn parse(line: &str) -> Report {
        let mut words = line.split_whitespace();
        let tag = words.next().unwrap_or_default().to_string();
        let fields = words.filter_map(|w| w.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect();
        Report { tag, fields }
    }

    /// The numeric field `key`; panics (failing the test) if it is missing.
    pub fn get(&self, key: &str) -> u64 {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("report {self:?} has no numeric field {key}"))
    }
}

/// A child process running this test binary in some role; killed and reaped when dropped.
pub struct ChildProc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Report>,
    stdout_thread: Option<JoinHandle<()>>,
}

impl ChildProc {
    /// Spawn `cmd` (from [`self_command`]); `name` is used in failure messages.
    pub fn spawn(mut cmd: Command, name: &str) -> ChildProc {
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        let stdout_thread = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("@@") {
                    if tx.send(Report::parse(rest)).is_err() {
                        break;
                    }
                }
            }
        });
        ChildProc { name: name.to_string(), child, stdin, lines, stdout_thread: Some(stdout_thread) }
    }

    /// The child's process id.
    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Wait for the report tagged `tag` (skipping others); panics if it does not come within
    /// `timeout` or the child exits first.
    pub fn expect(&self, tag: &str, timeout: Duration) -> Report {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(r) if r.tag == tag => return r,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("{}: no {tag} report within {timeout:?}", self.name),
                Err(RecvTimeoutError::Disconnected) => panic!("{}: exited before reporting {tag}", self.name),
            }
        }
    }

    /// Send one line to the child's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is piped");
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).unwrap_or_else(|e| panic!("{}: send: {e}", self.name));
    }

    /// `SIGKILL` the child and reap it. Returns its exit status and every report it printed
    /// that was not yet taken.
    pub fn sigkill(&mut self) -> (ExitStatus, Vec<Report>) {
        // SAFETY: kill(2) with the pid of our own child, which is not reaped yet (so the pid
        // cannot have been reused); it touches no memory.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        assert_eq!(rc, 0, "{}: kill: {}", self.name, std::io::Error::last_os_error());
        let status = self.child.wait().unwrap_or_else(|e| panic!("{}: wait: {e}", self.name));
        (status, self.drain())
    }

    /// Wait for the child to exit on its own, at most `timeout` (then panic). Returns its exit
    /// status and every report not yet taken.
    pub fn wait(&mut self, timeout: Duration) -> (ExitStatus, Vec<Report>) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap_or_else(|e| panic!("{}: wait: {e}", self.name)) {
                break status;
            }
            assert!(Instant::now() < deadline, "{}: still running after {timeout:?}", self.name);
            std::thread::sleep(Duration::from_millis(2));
        };
        (status, self.drain())
    }

    /// After the child exited: every report left in the pipe.
    fn drain(&mut self) -> Vec<Report> {
        if let Some(t) = self.stdout_thread.take() {
            // The child is gone, so its stdout reaches EOF and the thread ends.
            t.join().expect("stdout reader thread");
        }
        self.lines.try_iter().collect()
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether `status` is "killed by SIGKILL".
pub fn killed_by_sigkill(status: &ExitStatus) -> bool {
    status.signal() == Some(libc::SIGKILL)
}

// ---------------------------------------------------------------------------------------------
// Watchdogs

/// Aborts the whole process if it is still alive `secs` seconds after creation: a hung test
/// fails (loudly) instead of hanging CI. Dropping the watchdog disarms it.
pub struct Watchdog {
    _disarm: mpsc::Sender<()>,
}

impl Watchdog {
    /// Arm a watchdog for `what`.
    pub fn new(what: &str, secs: u64) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let what = what.to_string();
        std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs)) {
                eprintln!("WATCHDOG: {what} still running after {secs} s: aborting the test process");
                std::process::abort();
            }
        });
        Watchdog { _disarm: tx }
    }
}

/// Run `f` on another thread and wait for it at most `secs` seconds; abort the process if it
/// does not finish (a library call that loops forever cannot be interrupted otherwise).
/// Panics of `f` propagate.
pub fn bounded<T: Send>(what: &str, secs: u64, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let _watchdog = Watchdog::new(what, secs);
        let handle = s.spawn(f);
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Files, mappings and mounts

/// A temporary directory on `/dev/shm` (tmpfs, like a Pod's `emptyDir: {medium: Memory}`),
/// or in the default temporary directory where there is no `/dev/shm`.
pub fn shm_tempdir() -> tempfile::TempDir {
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("podcache-test-");
        b
    };
    if Path::new("/dev/shm").is_dir() {
        builder.tempdir_in("/dev/shm").expect("tempdir in /dev/shm")
    } else {
        builder.tempdir().expect("tempdir")
    }
}

/// The permission strings (`r--s`, `rw-s`, ...) of this process's mappings of `path`, one per
/// mapping, read from `/proc/self/maps`.
pub fn map_perms(path: &Path) -> Vec<String> {
    let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines()
        .filter_map(|line| {
            // address perms offset dev inode [pathname]
            let mut parts = line.splitn(6, ' ');
            let _addr = parts.next()?;
            let perms = parts.next()?;
            let name = parts.nth(3)?.trim_start();
            (Path::new(name) == want).then(|| perms.to_string())
        })
        .collect()
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// A mount made by a test, detached when dropped (also when the test panics).
pub struct MountGuard {
    target: PathBuf,
}

impl MountGuard {
    /// Mount a tmpfs with `options` (e.g. `size=1m`) on the existing directory `target`.
    pub fn tmpfs(target: &Path, options: &str) -> std::io::Result<MountGuard> {
        let (src, fstype, data, t) = (c"tmpfs", c"tmpfs", CString::new(options).expect("options"), cstr(target));
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let rc = unsafe { libc::mount(src.as_ptr(), t.as_ptr(), fstype.as_ptr(), 0, data.as_ptr().cast()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(MountGuard { target: target.to_path_buf() })
    }

    /// Bind-mount `source` on the existing directory `target`, read-only: like a Kubernetes
    /// `volumeMounts[].readOnly: true`, writes fail with `EROFS` even for root.
    pub fn bind_read_only(source: &Path, target: &Path) -> std::io::Result<MountGuard> {
        let (s, t) = (cstr(source), cstr(target));
        // SAFETY: NUL-terminated strings that outlive the call; null fstype and data are
        // allowed for a bind mount.
        let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let guard = MountGuard { target: target.to_path_buf() };
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        // SAFETY: as above; a remount of the bind mount just made.
        let rc = unsafe { libc::mount(std::ptr::null(), t.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(guard)
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let t = cstr(&self.target);
        // SAFETY: a NUL-terminated path that outlives the call.
        let rc = unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            eprintln!("umount {}: {}", self.target.display(), std::io::Error::last_os_error());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_a_function_of_the_sequence() {
        for seq in 1..2000u64 {
            let p = payload(seq, 1000);
            assert!((1..=1000).contains(&p.len()));
            assert!(payload_matches(seq, 1000, &p));
            assert!(!payload_matches(seq + 1, 1000, &p) || payload(seq + 1, 1000) == p);
            let mut bad = p.clone();
            bad[p.len() / 2] ^= 1;
            assert!(!payload_matches(seq, 1000, &bad));
        }
        assert!((1..5000u64).any(|s| payload_len(s, 1000) > 64), "some messages are long");
    }
}

//! Helpers shared by the benchmarks.
//!
//! - [`criterion()`]: the criterion configuration, short when `PODCACHE_BENCH_QUICK=1`.
//! - [`ShmDir`]: a temporary directory on `/dev/shm`, removed on drop.
//! - [`Child`] / [`child_role`]: a bench binary re-executes itself as a child process
//!   (`PODCACHE_BENCH_CHILD=<role>`); the child is killed and reaped when the handle drops, and
//!   dies with its parent (`PR_SET_PDEATHSIG`) if the parent is killed.
//! - [`SharedLines`]: two 64-bit atomics on separate 128-byte lines of a `MAP_SHARED` file, for
//!   the cache-line ping-pong baseline.
//! - [`Histogram`]: per-operation latency percentiles printed next to criterion's means.
//! - [`start_sidecar`]: a `podcache serve` in this process (the near-cache benches).
//! - The workload harnesses shared by the criterion benches and the `compare` binary:
//!   [`stream`] (cross-process streaming), [`roundtrip`] (64 B round trips), [`kv`] (key-value
//!   gets and puts), [`redis`] (a `redis-server` the bench starts itself, spoken to in RESP),
//!   and `ice` (iceoryx2, with the `iceoryx2` feature). [`run_child`] dispatches every child
//!   role they use.

#[cfg(feature = "iceoryx2")]
#[path = "lib/ice.rs"]
pub mod ice;
#[path = "lib/kv.rs"]
pub mod kv;
#[path = "lib/mode.rs"]
mod mode;
#[path = "lib/redis.rs"]
pub mod redis;
#[path = "lib/roundtrip.rs"]
pub mod roundtrip;
#[path = "lib/stream.rs"]
pub mod stream;

pub use mode::PodMode;

use criterion::Criterion;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

/// Environment variable that selects the child role of a re-executed bench binary.
pub const CHILD_ENV: &str = "PODCACHE_BENCH_CHILD";
/// Environment variable holding the parent's pid (the child checks it after arming
/// `PR_SET_PDEATHSIG`, in case the parent died before that).
const PARENT_ENV: &str = "PODCACHE_BENCH_PARENT";
/// `PODCACHE_BENCH_QUICK=1`: 10 samples, 2 s measurement, 0.5 s warm-up per bench.
pub const QUICK_ENV: &str = "PODCACHE_BENCH_QUICK";
/// `PODCACHE_BENCH_PIN=1`: pin the parent to CPU 0 and children / consumer threads to CPU 1.
pub const PIN_ENV: &str = "PODCACHE_BENCH_PIN";

/// First payload byte of a streamed message: an ordinary message.
pub const FLAG_DATA: u8 = 0;
/// First payload byte: the last message of an iteration; the consumer confirms its count.
pub const FLAG_END: u8 = 1;
/// First payload byte: the consumer exits.
pub const FLAG_EXIT: u8 = 2;

/// How long a parent waits for a child's confirmation before it declares the child hung.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

fn env_is_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Whether quick mode (`PODCACHE_BENCH_QUICK=1`) is on.
pub fn quick() -> bool {
    env_is_set(QUICK_ENV)
}

/// Whether criterion runs in test mode (`-- --test`: each bench once) or only lists benches.
/// Extra passes (latency histograms) are skipped then.
pub fn test_mode() -> bool {
    std::env::args().any(|a| a == "--test" || a == "--list")
}

/// The criterion configuration of every podcache bench. Command-line flags still override it
/// (criterion applies `configure_from_args` after this).
pub fn criterion() -> Criterion {
    let c = Criterion::default().without_plots();
    if quick() {
        c.sample_size(10).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500))
    } else {
        c.sample_size(30).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1))
    }
}

/// A temporary directory on `/dev/shm` (tmpfs, like a Pod's `emptyDir: {medium: Memory}`),
/// removed with everything in it on drop. Falls back to the system temp dir without
/// `/dev/shm`.
pub struct ShmDir {
    dir: tempfile::TempDir,
}

impl ShmDir {
    /// Create a fresh directory, named `podcache-bench-<pid>-…`. Directories left by bench
    /// processes that no longer exist (killed with SIGKILL, so no destructor ran) are removed
    /// first.
    pub fn new() -> ShmDir {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        remove_stale(&base);
        let prefix = format!("{DIR_PREFIX}{}-", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir_in(&base)
            .expect("create a temporary directory for ring files");
        ShmDir { dir }
    }

    /// Path of `name` inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

const DIR_PREFIX: &str = "podcache-bench-";

/// Remove `podcache-bench-<pid>-*` directories in `base` whose process is gone.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Default for ShmDir {
    fn default() -> Self {
        ShmDir::new()
    }
}

/// A child process running this bench binary in another role. Dropping it kills the child
/// (SIGKILL) and reaps it, also while unwinding from a panic.
pub struct Child {
    child: std::process::Child,
    role: String,
}

impl Child {
    /// Re-execute the current bench binary as `role`, with `vars` in its environment. The
    /// child inherits stderr; stdin and stdout are closed.
    pub fn spawn(role: &str, vars: &[(&str, OsString)]) -> Child {
        let exe = std::env::current_exe().expect("path of the bench binary");
        let mut cmd = Command::new(exe);
        cmd.env(CHILD_ENV, role)
            .env(PARENT_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn child {role}: {e}"));
        Child { child, role: role.to_string() }
    }

    /// Panic if the child has exited (it never does while the parent still needs it).
    pub fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("child {} exited early: {status}", self.role);
        }
    }

    /// Wait up to `timeout` for the child to exit by itself, then kill it.
    pub fn finish(mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Drop kills it.
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// In a child process: its role (the value of [`CHILD_ENV`]); `None` in the parent.
///
/// Also arms `PR_SET_PDEATHSIG` so that the child is killed when the parent dies (a spinning
/// consumer must not outlive a killed bench run), and pins the child to CPU 1 when
/// [`PIN_ENV`] is set.
pub fn child_role() -> Option<String> {
    let role = std::env::var(CHILD_ENV).ok()?;
    // SAFETY: prctl(PR_SET_PDEATHSIG, signal) takes plain integers and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };
    assert_eq!(rc, 0, "prctl(PR_SET_PDEATHSIG)");
    let parent: u32 = child_var(PARENT_ENV).parse().expect("parent pid");
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } as u32 != parent {
        // The parent died before the death signal was armed.
        std::process::exit(1);
    }
    if env_is_set(PIN_ENV) {
        pin_to_cpu(1);
    }
    Some(role)
}

/// In a child process: run the child role `role` of any harness of this library. Returns
/// `false` for a role the library does not know (a bench's own role).
pub fn run_child(role: &str) -> bool {
    match role {
        stream::ROLE_POD => stream::pod_consumer(),
        stream::ROLE_UDS => stream::uds_consumer(),
        roundtrip::ROLE_POD => roundtrip::pod_echo(),
        roundtrip::ROLE_LINE => roundtrip::cacheline_echo(),
        roundtrip::ROLE_UDS => roundtrip::uds_echo(),
        kv::ROLE_READER => kv::reader_child(),
        redis::ROLE_SUB => redis::subscriber_child(),
        redis::ROLE_ECHO => redis::echo_child(),
        #[cfg(feature = "iceoryx2")]
        ice::ROLE_SUB => ice::subscriber_child(),
        #[cfg(feature = "iceoryx2")]
        ice::ROLE_ECHO => ice::echo_child(),
        _ => return false,
    }
    true
}

/// In a child process: the value of environment variable `name` (panics if missing).
pub fn child_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child needs environment variable {name}"))
}

/// In the parent: pin the calling thread to CPU 0 when [`PIN_ENV`] is set.
pub fn pin_parent() {
    if env_is_set(PIN_ENV) {
        pin_to_cpu(0);
    }
}

/// In the parent: pin the calling (consumer) thread to CPU 1 when [`PIN_ENV`] is set.
pub fn pin_consumer_thread() {
    if env_is_set(PIN_ENV) {
        pin_to_cpu(1);
    }
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is a plain bit set; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t and `cpu` is far below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 means the calling thread; `set` is valid for the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        eprintln!("warning: could not pin to CPU {cpu}: {}", std::io::Error::last_os_error());
    }
}

/// Spin-wait helper: calls `done` until it returns true; panics after [`CHILD_TIMEOUT`], and
/// every few thousand spins calls `check` (e.g. [`Child::check_alive`]).
pub fn spin_until(mut done: impl FnMut() -> bool, mut check: impl FnMut()) {
    let mut spins = 0u32;
    let mut deadline: Option<Instant> = None;
    while !done() {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(4096) {
            // Let a peer that shares this vCPU run (a busy machine), then check on it.
            std::thread::yield_now();
            check();
            let now = Instant::now();
            let d = *deadline.get_or_insert(now + CHILD_TIMEOUT);
            assert!(now < d, "peer did not answer within {CHILD_TIMEOUT:?}");
        }
        std::hint::spin_loop();
    }
}

/// Two `AtomicU64`s on separate 128-byte lines of a `MAP_SHARED` file mapping: one written by
/// each side of a cache-line ping-pong.
pub struct SharedLines {
    map: memmap2::MmapMut,
}

impl SharedLines {
    /// Map `path` (created at 4 KiB, zero-filled, if absent).
    pub fn open(path: &Path) -> SharedLines {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).expect("open");
        file.set_len(4096).expect("size the shared file");
        // SAFETY: the file lives on tmpfs for the whole bench and is never truncated while
        // mapped; the mapping is only accessed through the atomics handed out by `line`.
        let map = unsafe { memmap2::MmapMut::map_mut(&file) }.expect("map the shared file");
        SharedLines { map }
    }

    /// The atomic at the start of 128-byte line `index` (0 or 1).
    pub fn line(&self, index: usize) -> &AtomicU64 {
        assert!(index < 2, "two lines");
        let ptr = self.map.as_ptr().wrapping_add(index * 128) as *mut u64;
        // SAFETY: the mapping is page-aligned and 4 KiB long, so `ptr` is 8-byte aligned and in
        // bounds; it lives as long as `&self`; both processes access these bytes only through
        // atomics.
        unsafe { AtomicU64::from_ptr(ptr) }
    }
}

/// Individually timed operations; prints percentiles. Each sample includes one clock read,
/// whose own cost is measured and printed alongside.
pub struct Histogram {
    name: String,
    samples: Vec<u64>,
}

impl Histogram {
    /// Time `n` calls of `op` one by one.
    pub fn measure(name: &str, n: usize, mut op: impl FnMut()) -> Histogram {
        let mut samples = Vec::with_capacity(n);
        let mut prev = Instant::now();
        for _ in 0..n {
            op();
            let now = Instant::now();
            samples.push(now.duration_since(prev).as_nanos() as u64);
            prev = now;
        }
        samples.sort_unstable();
        Histogram { name: name.to_string(), samples }
    }

    /// Percentile `p` (0..=100) in ns.
    pub fn percentile(&self, p: f64) -> u64 {
        let i = ((self.samples.len() as f64 - 1.0) * p / 100.0).round() as usize;
        self.samples[i.min(self.samples.len() - 1)]
    }

    /// Print one line: `hist <name>: n=… p50=… p90=… p99=… p99.9=… max=… (clock read ≈ … ns)`.
    pub fn print(&self) {
        let clock = clock_read_ns();
        println!(
            "hist {}: n={} p50={} ns p90={} ns p99={} ns p99.9={} ns max={} ns (one clock read in each ≈ {} ns)",
            self.name,
            self.samples.len(),
            self.percentile(50.0),
            self.percentile(90.0),
            self.percentile(99.0),
            self.percentile(99.9),
            self.samples.last().copied().unwrap_or(0),
            clock
        );
    }
}

/// Median cost of one `Instant::now()` in ns.
pub fn clock_read_ns() -> u64 {
    let mut v: Vec<u64> = (0..1001)
        .map(|_| {
            let t = Instant::now();
            let u = Instant::now();
            u.duration_since(t).as_nanos() as u64
        })
        .collect();
    v.sort_unstable();
    v[v.len() / 2]
}

/// Number of histogram samples: fewer in quick mode.
pub fn histogram_samples() -> usize {
    if quick() {
        20_000
    } else {
        200_000
    }
}

/// Accept the connection of `child` on `listener` (bound before the child was spawned),
/// giving up after [`CHILD_TIMEOUT`] or when the child dies. Returns a blocking stream.
pub fn accept_child(listener: &std::os::unix::net::UnixListener, child: &mut Child) -> std::os::unix::net::UnixStream {
    listener.set_nonblocking(true).expect("non-blocking listener");
    let deadline = Instant::now() + CHILD_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking stream");
                return stream;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                child.check_alive();
                assert!(Instant::now() < deadline, "child did not connect within {CHILD_TIMEOUT:?}");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Start the sidecar of `config` in this process, on a one-worker tokio runtime of its own
/// thread, serving until the process exits; returns its API's TCP address.
pub fn start_sidecar(config: podcache_sidecar::Config) -> std::net::SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async move {
            let server = podcache_sidecar::Server::start(config).await.expect("sidecar starts");
            tx.send(server.api_addr().expect("the config listens on TCP")).unwrap();
            server.serve(std::future::pending()).await.unwrap();
        });
    });
    rx.recv().expect("the sidecar thread reports its address")
}

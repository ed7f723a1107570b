//! The C ABI seen from C: compiles tests/c/podcache_test.c and the examples in examples/c
//! with the system C compiler (`cc`, or `$CC`) against include/podcache.h, links the
//! libpodcache.so cargo built for this test run, and runs them against the test vectors and
//! against files a Rust writer (this process) writes while the C program reads.
//!
//! Each C run is under a watchdog: a child still running after `WATCHDOG` is killed and the
//! test fails.

use podcache_writer::{Publisher, TableWriter};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const WATCHDOG: Duration = Duration::from_secs(120);

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn vectors_dir() -> PathBuf {
    crate_dir().join("../../tests/vectors")
}

/// The directory of a libpodcache.so built from the current sources (target/<profile>).
///
/// `cargo test` links this test with the rlib of the crate and does not build its cdylib, so
/// the test builds it: `cargo build -p podcache-ffi --lib` in the same profile and target
/// directory (a no-op when it is up to date).
fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf();
        let target = dir.parent().expect("target/<profile>");
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "--quiet", "-p", "podcache-ffi", "--lib"]).env("CARGO_TARGET_DIR", target);
        match dir.file_name().and_then(|p| p.to_str()) {
            Some("debug") => {}
            Some("release") => {
                cargo.arg("--release");
            }
            Some(other) => {
                cargo.args(["--profile", other]);
            }
            None => panic!("no profile directory in {}", dir.display()),
        }
        let status = cargo.status().expect("run cargo to build libpodcache.so");
        assert!(status.success(), "cargo build -p podcache-ffi --lib failed");
        assert!(dir.join("libpodcache.so").exists(), "{} has no libpodcache.so", dir.display());
        dir
    })
}

/// Compile `source` into `CARGO_TARGET_TMPDIR/name` with warnings as errors.
fn compile(source: &Path, name: &str) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let lib = lib_dir();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-g"])
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(source)
        .arg("-o")
        .arg(&out)
        .arg("-L")
        .arg(lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lpodcache")
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}` (install gcc: apt-get install -y gcc): {e}"));
    assert!(status.success(), "{cc} failed to compile {}", source.display());
    out
}

fn test_program() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| compile(&crate_dir().join("tests/c/podcache_test.c"), "podcache_test"))
}

/// Wait for `child`, killing it (and failing) after [`WATCHDOG`].
fn wait_watched(mut child: Child, what: &str) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > WATCHDOG {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what}: still running after {WATCHDOG:?}, killed; output so far:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Assert that the C program succeeded and printed `ok MODE`; returns its output.
fn assert_ok(out: &Output, mode: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.lines().any(|l| l == format!("ok {mode}")),
        "C test `{mode}` failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    println!("{stdout}");
    stdout
}

fn spawn(args: &[&str]) -> Child {
    Command::new(test_program())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Read one line the C program printed (a handshake), failing on EOF.
fn expect_line(out: &mut BufReader<ChildStdout>, want: &str) {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim_end(), want, "the C program said something else (it failed?)");
}

fn take_io(child: &mut Child) -> (ChildStdin, BufReader<ChildStdout>) {
    (child.stdin.take().unwrap(), BufReader::new(child.stdout.take().unwrap()))
}

/// The commands of the C program's `vectors` mode for every entry of expected.json.
fn vector_commands() -> String {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(vectors_dir().join("expected.json")).unwrap()).unwrap();
    let mut cmds = String::new();
    for v in expected["vectors"].as_array().unwrap() {
        let (file, open) = (v["file"].as_str().unwrap(), v["open"].as_str().unwrap());
        if v["open_as"] == "table" {
            cmds += &format!("table {file} {open}\n");
            for g in v["gets"].as_array().into_iter().flatten() {
                let key = g["key_hex"].as_str().unwrap();
                if g["error"] == "corrupt" {
                    cmds += &format!("getcorrupt {key}\n");
                } else {
                    // "=HEX" (possibly empty) for a value, "-" for absent.
                    let value = g["value_hex"].as_str().map_or("-".to_string(), |v| format!("={v}"));
                    cmds += &format!("get {key} {value}\n");
                }
            }
        } else {
            cmds += &format!("ring {file} {} {open}\n", v["start"].as_str().unwrap_or("oldest"));
            for m in v["messages"].as_array().into_iter().flatten() {
                cmds += &format!("msg {} {} ={}\n", m["seq"], m["lost"], m["payload_hex"].as_str().unwrap());
            }
            if let Some(then) = v["then"].as_str() {
                cmds += &format!("then {then}\n");
            }
        }
    }
    cmds
}

#[test]
fn c_reads_every_test_vector_as_expected() {
    let dir = vectors_dir();
    let mut child = spawn(&["vectors", dir.to_str().unwrap()]);
    let cmds = vector_commands();
    child.stdin.take().unwrap().write_all(cmds.as_bytes()).unwrap();
    let out = wait_watched(child, "vectors");
    let stdout = assert_ok(&out, "vectors");
    assert!(stdout.contains(&format!("vectors: {} checks", cmds.lines().count())), "every command ran");
}

#[test]
fn c_careless_caller_gets_errors_not_crashes() {
    let dir = vectors_dir();
    let (table, ring) = (dir.join("table.podcache"), dir.join("ring.podcache"));
    let child = spawn(&["careless", table.to_str().unwrap(), ring.to_str().unwrap()]);
    assert_ok(&wait_watched(child, "careless"), "careless");
}

/// The self-checking table value of key `k<i>` at version `v` (see podcache_test.c, "live").
fn live_value(i: u32, v: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(216);
    out.extend_from_slice(&i.to_le_bytes());
    out.extend_from_slice(&v.to_le_bytes());
    let n = (v.wrapping_mul(7).wrapping_add(i) % 200) as usize;
    out.extend((0..n as u32).map(|j| i.wrapping_mul(31).wrapping_add(v.wrapping_mul(17)).wrapping_add(j) as u8));
    out
}

/// The self-checking payload of message `seq`.
fn live_message(seq: u64) -> Vec<u8> {
    let mut out = seq.to_le_bytes().to_vec();
    out.extend((0..seq % 40).map(|j| seq.wrapping_mul(13).wrapping_add(j) as u8));
    out
}

#[test]
fn c_reads_a_table_and_a_ring_while_a_rust_writer_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (tpath, rpath) = (dir.path().join("live.table"), dir.path().join("live.ring"));
    // A small table, so that the writer recycles segments under the reader's gets; a small
    // ring, so that the reader is lapped now and then.
    let mut table =
        TableWriter::builder(&tpath).max_items(64).data_bytes(16 << 10).segment_size(4096).create().unwrap();
    let mut ring = Publisher::builder(&rpath).capacity(4096).create().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut seq = 0u64;
            let mut version = 0u32;
            // Relaxed: a stop flag; nothing else is published through it.
            while !stop.load(Ordering::Relaxed) {
                version += 1;
                for i in 0..64 {
                    table.put(format!("k{i}").as_bytes(), live_value(i, version)).unwrap();
                    seq += 1;
                    assert_eq!(ring.publish(&live_message(seq)).unwrap(), seq);
                }
                std::thread::yield_now();
            }
            (version, seq)
        })
    };
    let child = spawn(&["live", tpath.to_str().unwrap(), rpath.to_str().unwrap(), "20000"]);
    let out = wait_watched(child, "live");
    // Relaxed: see above.
    stop.store(true, Ordering::Relaxed);
    let (versions, messages) = writer.join().unwrap();
    assert_ok(&out, "live");
    println!("writer: {versions} versions of 64 keys, {messages} messages");
}

#[test]
fn c_subscriber_lapped_by_the_writer_is_told_how_many_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lapped.ring");
    let mut ring = Publisher::builder(&path).capacity(1024).create().unwrap();
    ring.publish(b"message 1").unwrap();
    let mut child = spawn(&["lapped", path.to_str().unwrap()]);
    let (mut stdin, mut stdout) = take_io(&mut child);
    expect_line(&mut stdout, "read 1");
    // Ten rings' worth: the subscriber, which reads nothing meanwhile, is lapped.
    let mut last = 1;
    while ring.capacity() * 10 > last * 24 {
        last = ring.publish(format!("message {}", last + 1).as_bytes()).unwrap();
    }
    writeln!(stdin, "go {last}").unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let out = wait_watched(child, "lapped");
    assert!(out.status.success() && rest.contains("ok lapped"), "C test `lapped` failed:\n{rest}");
    println!("{rest}");
}

#[test]
fn c_blocking_receive_times_out_and_wakes_on_publish() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blocking.ring");
    let mut ring = Publisher::builder(&path).capacity(1024).create().unwrap();
    let mut child = spawn(&["blocking", path.to_str().unwrap()]);
    let (stdin, mut stdout) = take_io(&mut child);
    expect_line(&mut stdout, "waiting");
    // Give the reader time to go to sleep in the futex (not needed for correctness: a publish
    // before it sleeps makes the kernel refuse the sleep).
    std::thread::sleep(Duration::from_millis(100));
    ring.publish(b"wake").unwrap();
    expect_line(&mut stdout, "waiting again");
    std::thread::sleep(Duration::from_millis(20));
    ring.publish(b"again").unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let out = wait_watched(child, "blocking");
    assert!(out.status.success() && rest.contains("ok blocking"), "C test `blocking` failed:\n{rest}");
}

#[test]
fn c_examples_compile_and_read_the_vectors() {
    let dir = vectors_dir();
    let get = compile(&crate_dir().join("examples/c/table_get.c"), "table_get");
    let tail = compile(&crate_dir().join("examples/c/ring_tail.c"), "ring_tail");
    let table = dir.join("table.podcache");
    let out = Command::new(&get).arg(&table).arg("alpha").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"one\n");
    let out = Command::new(&get).arg(&table).arg("nobody").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = Command::new(&get).arg(dir.join("foreign.bin")).arg("alpha").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a podcache file"), "{out:?}");
    let child = Command::new(&tail)
        .arg(dir.join("ring.podcache"))
        .args(["oldest", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_watched(child, "ring_tail");
    assert!(out.status.success(), "{out:?}");
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(lines, 5, "the ring vector holds 5 messages: {out:?}");
}

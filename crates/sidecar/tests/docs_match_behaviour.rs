//! What the README says the command-line tools do, done.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;

#[test]
fn get_reads_a_key_that_is_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = podcache_writer::TableWriter::builder(dir.path().join("web.table"))
        .max_items(100)
        .data_bytes(1 << 20)
        .create()
        .unwrap();
    w.put(b"k\xff\x00z", b"binary key").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_podcache"))
        .args(["get", "--dir", dir.path().to_str().unwrap(), "web"])
        .arg(OsStr::from_bytes(b"k\xff\x00z".split(|&b| b == 0).next().unwrap()))
        .output()
        .unwrap();
    // A NUL cannot be in an argument: the key without it is absent, and said so.
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    w.put(b"k\xff", b"binary key").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_podcache"))
        .args(["get", "--dir", dir.path().to_str().unwrap(), "web"])
        .arg(OsStr::from_bytes(b"k\xff"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"binary key");
}

#[test]
fn verify_says_a_missing_file_is_missing_not_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.table");
    let (code, stdout, stderr) = common::podcache(&["verify", missing.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty(), "{}", String::from_utf8_lossy(&stdout));
    assert!(!stderr.contains("CORRUPT") && stderr.contains("No such file"), "{stderr}");
}

#[test]
fn stat_shows_every_table_and_ring_with_rates() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = podcache_writer::TableWriter::builder(dir.path().join("web.table"))
        .max_items(100)
        .data_bytes(1 << 20)
        .create()
        .unwrap();
    for k in [&b"a"[..], b"b", b"c"] {
        w.put(k, b"v").unwrap();
    }
    let mut p = podcache_writer::Publisher::builder(dir.path().join("events.ring")).capacity(1 << 16).create().unwrap();
    p.publish(b"one").unwrap();
    p.publish(b"two").unwrap();
    let d = dir.path().to_str().unwrap();
    // No sidecar: --url names a port nothing listens on (a sidecar of another test could).
    let (code, out, err) =
        common::podcache(&["stat", "--dir", d, "--url", "http://127.0.0.1:1", "-n", "2", "--interval-ms", "100"]);
    assert_eq!(code, 0, "{err}");
    let out = String::from_utf8(out).unwrap();
    let blocks: Vec<&str> = out.split(&format!("{d}  (2 files)")).filter(|b| !b.trim().is_empty()).collect();
    assert_eq!(blocks.len(), 2, "{out}");
    let ring = blocks[0].lines().find(|l| l.contains("events.ring")).unwrap_or_else(|| panic!("{out}"));
    assert!(ring.contains("messages=2") && ring.contains("newest_seq=2") && ring.contains("oldest_seq=1"), "{ring}");
    let table = blocks[0].lines().find(|l| l.contains("web.table")).unwrap_or_else(|| panic!("{out}"));
    assert!(table.contains("items=3") && table.contains("puts=3"), "{table}");
    assert!(!blocks[0].contains("/s)"), "no rate before a second sample: {out}");
    let table2 = blocks[1].lines().find(|l| l.contains("web.table")).unwrap();
    assert!(table2.contains("puts=3 (0/s)"), "{table2}");
}

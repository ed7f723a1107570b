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

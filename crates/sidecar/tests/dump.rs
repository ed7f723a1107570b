//! `podcache dump` as a user runs it: a separate process reading a real table file, its output
//! fed to `podcache load` into another table.

mod common;

use common::podcache;
use podcache_format::table::now_ms;
use podcache_reader::{Expiry, TableReader};
use podcache_writer::TableWriter;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Every live item of the table at `path`: key -> (value, expiry).
fn contents(path: &Path) -> HashMap<Vec<u8>, (Vec<u8>, Expiry)> {
    let r = TableReader::open(path).unwrap();
    let mut items = HashMap::new();
    for k in r.keys() {
        let k = k.unwrap();
        let mut v = Vec::new();
        if let Some(e) = r.get_into_with_expiry(&k, &mut v).unwrap() {
            items.insert(k, (v, e));
        }
    }
    items
}

/// A table with text and binary keys and values, items with and without a TTL, a deleted item
/// and an expired one.
fn fill(path: &Path) {
    let mut w = TableWriter::builder(path).max_items(1000).data_bytes(4 << 20).create().unwrap();
    for i in 0..200u32 {
        w.put(format!("text:{i}").as_bytes(), format!("value {i} \"quoted\"\n").as_bytes()).unwrap();
    }
    for i in 0..50u32 {
        let key = [&[0xff, 0x00][..], &i.to_le_bytes()].concat();
        let value: Vec<u8> = (0..=255u8).map(|b| b.wrapping_add(i as u8)).collect();
        w.put_with_ttl(&key, &value, Duration::from_secs(3600 + u64::from(i))).unwrap();
    }
    w.put_with_ttl(b"ttl:text", b"session", Duration::from_secs(600)).unwrap();
    w.put(b"deleted", b"gone").unwrap();
    assert!(w.delete(b"deleted"));
    w.put_with_ttl(b"expired", b"soon gone", Duration::from_millis(1)).unwrap();
    // Until a reader no longer sees it (bounded: a watchdog, not a duration being tested).
    let r = TableReader::open(path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while r.contains(b"expired").unwrap() {
        assert!(Instant::now() < deadline, "a 1 ms TTL never expired");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// dump -> load into another table: the same keys (binary ones too) and values, expired and
/// deleted items left out, and every TTL carried over. A loaded item's expiry `E'` lies between
/// its original expiry `E` and `E` plus the wall-clock time from just before the dump to just
/// after the load: the dump writes the time left, the load adds it to its own clock.
#[test]
fn dump_then_load_round_trips_keys_values_and_ttls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let src = dir.path().join("src.table");
    fill(&src);
    // The destination exists (created by its writer, then released) and is written directly.
    drop(TableWriter::builder(dir.path().join("dst.table")).max_items(1000).data_bytes(4 << 20).create().unwrap());
    let before = contents(&src);
    assert_eq!(before.len(), 251);
    assert!(!before.contains_key(&b"expired"[..]) && !before.contains_key(&b"deleted"[..]));

    let t0 = now_ms();
    let (code, out, err) = podcache(&["dump", "--dir", d, "src"]);
    assert_eq!(code, 0, "{err}");
    let nd = dir.path().join("dump.ndjson");
    std::fs::write(&nd, &out).unwrap();
    let (code, loaded, err) =
        podcache(&["load", "--dir", d, "--url", "http://127.0.0.1:1", "dst", nd.to_str().unwrap()]);
    let t1 = now_ms();
    assert_eq!(code, 0, "{err}");
    assert_eq!(String::from_utf8(loaded).unwrap().trim(), "251");

    let text = String::from_utf8(out).expect("a dump is UTF-8 text");
    assert_eq!(text.lines().count(), 251);
    assert!(!text.contains("soon gone") && !text.contains("\"gone\""), "expired or deleted item dumped");
    assert!(text.contains("\"key_base64\":") && text.contains("\"value_base64\":"), "binary items: {text}");
    let after = contents(&dir.path().join("dst.table"));
    assert_eq!(after.len(), before.len());
    for (k, (v, e)) in &before {
        let (v2, e2) = after.get(k).unwrap_or_else(|| panic!("key {k:?} lost"));
        assert_eq!(v2, v, "value of {k:?}");
        match (e, e2) {
            (Expiry::Never, Expiry::Never) => {}
            (Expiry::AtMs(e), Expiry::AtMs(e2)) => {
                assert!(e <= e2 && *e2 <= e + (t1 - t0), "{k:?}: expiry {e} became {e2} (dump..load {t0}..{t1})")
            }
            _ => panic!("{k:?}: expiry {e:?} became {e2:?}"),
        }
    }
}

/// An empty table dumps nothing; a missing one is an error naming it.
#[test]
fn dump_of_an_empty_or_missing_table() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    drop(TableWriter::builder(dir.path().join("empty.table")).max_items(10).create().unwrap());
    assert_eq!(podcache(&["dump", "--dir", d, "empty"]), (0, Vec::new(), String::new()));
    let (code, out, err) = podcache(&["dump", "--dir", d, "nosuch"]);
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert!(err.contains("nosuch.table"), "{err}");
}

/// On a read-only mount of the directory (an app container's `readOnly: true`) the dump is the
/// same as on the writable one. Needs root to bind-mount read-only; without it the test says
/// so and passes.
#[test]
fn dump_works_on_a_read_only_mount() {
    let dir = tempfile::tempdir().unwrap();
    let (rw, ro) = (dir.path().join("rw"), dir.path().join("ro"));
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    let mut w = TableWriter::builder(rw.join("web.table")).max_items(100).create().unwrap();
    for i in 0..20 {
        w.put(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    let mount = |args: &[&str]| std::process::Command::new("mount").args(args).status().is_ok_and(|st| st.success());
    let (rws, ros) = (rw.to_str().unwrap(), ro.to_str().unwrap());
    if !(mount(&["--bind", rws, ros]) && mount(&["-o", "remount,bind,ro", ros])) {
        eprintln!("skipped: cannot bind-mount read-only here (not root?)");
        let _ = std::process::Command::new("umount").arg(ros).status();
        return;
    }
    let on_ro = podcache(&["dump", "--dir", ros, "web"]);
    let on_rw = podcache(&["dump", "--dir", rws, "web"]);
    let _ = std::process::Command::new("umount").arg(ros).status();
    assert_eq!(on_ro.0, 0, "{}", on_ro.2);
    assert_eq!(String::from_utf8_lossy(&on_ro.1).lines().count(), 20);
    assert_eq!(on_ro, on_rw);
    // The writer was not disturbed: it still holds the file and writes.
    w.put(b"after", b"x").unwrap();
}

//! The test vectors in tests/vectors/: small podcache files and their expected reads
//! (tests/vectors/expected.json, schema in docs/format.md, "Test vectors").
//!
//! `vectors_are_reproducible` regenerates every file with the Rust writer and compares it with
//! the committed bytes; `PODCACHE_BLESS=1 cargo test -p podcache-ffi --test vectors` writes them
//! instead. `reader_reads_every_vector_as_expected` reads every committed vector with
//! podcache-reader and checks expected.json. The C test (tests/c_abi.rs) and the Python tests
//! check the same files.

use podcache_format::hash::hash;
use podcache_format::header::{CREATING, MAGIC};
use podcache_reader::{OpenError, RecvError, Start, Subscriber, TableReader};
use podcache_writer::{Publisher, TableWriter};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The hash seed of the table vectors (any fixed value: a real writer picks a random one).
const SEED: u64 = 0x0123_4567_89ab_cdef;
/// The creation time stored in every vector (2025-01-01T00:00:00Z in unix nanoseconds) instead
/// of the wall clock, so that the files are reproducible.
const CREATED_NS: u64 = 1_735_689_600_000_000_000;

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn word(bytes: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap())
}

fn set_word(bytes: &mut [u8], i: usize, v: u64) {
    bytes[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
}

/// The header checksum (word 5): crc32 of words 0..5 (word 0 as the final MAGIC) and the eight
/// parameter words 8..16, each as 8 little-endian bytes.
fn header_crc(bytes: &[u8]) -> u64 {
    let mut h = crc32fast::Hasher::new();
    h.update(&MAGIC.to_le_bytes());
    for i in (1..5).chain(8..16) {
        h.update(&bytes[i * 8..i * 8 + 8]);
    }
    u64::from(h.finalize())
}

/// Replace the creation time (wall clock) by [`CREATED_NS`] and fix the header checksum.
fn pin_creation_time(bytes: &mut [u8]) {
    assert_eq!(word(bytes, 0), MAGIC);
    assert_eq!(word(bytes, 5), header_crc(bytes), "the documented header checksum");
    set_word(bytes, 4, CREATED_NS);
    let crc = header_crc(bytes);
    set_word(bytes, 5, crc);
}

/// The value of the table vector's key `gamma`: 300 bytes.
fn gamma() -> Vec<u8> {
    (0..300u32).map(|i| (i * 7 + 3) as u8).collect()
}

/// The ring vector's messages: 12 of lengths 1 to 34 bytes, so that the 256-byte ring wraps,
/// pads, and has overwritten the first ones.
fn ring_messages() -> Vec<Vec<u8>> {
    (1..=12u8).map(|i| (0..(i * 3 - 2)).map(|j| i.wrapping_mul(16).wrapping_add(j)).collect()).collect()
}

/// Build every vector in `dir` and return expected.json.
fn generate(dir: &Path) -> Value {
    let work = tempfile::tempdir().unwrap();

    // The table: every case a reader meets in a get.
    let tpath = work.path().join("t");
    let mut w = TableWriter::builder(&tpath)
        .max_items(16)
        .data_bytes(8192)
        .segment_size(4096)
        .hash_seed(SEED)
        .create()
        .unwrap();
    w.put(b"alpha", b"one").unwrap();
    w.put(b"empty", b"").unwrap();
    w.put(b"gamma", gamma()).unwrap();
    w.put(b"deleted", b"gone").unwrap();
    assert!(w.delete(b"deleted"));
    w.put(b"overwritten", b"old").unwrap();
    w.put(b"overwritten", b"new value").unwrap();
    w.put(&[0u8, 0xff, 0x80], [0xde, 0xad, 0xbe, 0xef]).unwrap();
    drop(w);
    let mut table = std::fs::read(&tpath).unwrap();
    pin_creation_time(&mut table);
    let present: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![
        (b"alpha".to_vec(), Some(b"one".to_vec())),
        (b"empty".to_vec(), Some(Vec::new())),
        (b"gamma".to_vec(), Some(gamma())),
        (b"deleted".to_vec(), None),
        (b"overwritten".to_vec(), Some(b"new value".to_vec())),
        (vec![0, 0xff, 0x80], Some(vec![0xde, 0xad, 0xbe, 0xef])),
        (b"never-written".to_vec(), None),
    ];
    let gets: Vec<Value> = present
        .iter()
        .map(|(k, v)| {
            json!({
                "key_hex": hex(k),
                "hash_hex": format!("{:016x}", hash(SEED, k)),
                "value_hex": v.as_ref().map(|v| hex(v)),
            })
        })
        .collect();

    // A ring that wrapped: the oldest messages are overwritten, a padding marker sits before
    // the wrap.
    let rpath = work.path().join("r");
    let mut p = Publisher::builder(&rpath).capacity(256).create().unwrap();
    for m in ring_messages() {
        p.publish(&m).unwrap();
    }
    drop(p);
    let mut ring = std::fs::read(&rpath).unwrap();
    pin_creation_time(&mut ring);
    let sub = Subscriber::builder(&rpath).start(Start::Oldest).open().unwrap();
    let (head, _) = sub.writer_span();
    drop(sub);
    let oldest_seq = {
        // Which message is the oldest still there: the reader's answer, checked below against
        // the expectation that the first ones were overwritten.
        let mut s = Subscriber::open(&rpath).unwrap();
        let mut buf = [0u8; 64];
        s.try_recv(&mut buf).unwrap().unwrap().seq
    };
    assert!(oldest_seq > 1 && head > 0, "the ring vector must have wrapped");
    let messages: Vec<Value> = ring_messages()
        .iter()
        .enumerate()
        .skip(oldest_seq as usize - 1)
        .map(|(i, m)| json!({"seq": i + 1, "lost": 0, "payload_hex": hex(m)}))
        .collect();

    // Damaged and foreign files, each from a copy of the good ones.
    let mut files: Vec<(&str, Vec<u8>)> = vec![("table.podcache", table.clone()), ("ring.podcache", ring.clone())];
    let gamma_at = table.windows(300).position(|w| w == gamma()).expect("gamma's value in the file");
    let mut corrupt_value = table.clone();
    corrupt_value[gamma_at + 100] ^= 0x01;
    files.push(("table-corrupt-value.podcache", corrupt_value));
    let mut bad_crc = table.clone();
    set_word(&mut bad_crc, 4, CREATED_NS + 1);
    files.push(("table-bad-header-crc.podcache", bad_crc));
    let mut creating = table.clone();
    set_word(&mut creating, 0, CREATING);
    files.push(("table-not-ready.podcache", creating));
    let mut version = table.clone();
    set_word(&mut version, 1, (word(&table, 1) & !0xffff_ffff) | 99);
    files.push(("table-version-99.podcache", version));
    files.push(("table-truncated.podcache", table[..8192].to_vec()));
    let mut ring_corrupt = ring.clone();
    let third = &ring_messages()[oldest_seq as usize + 1];
    let at = ring.windows(third.len()).rposition(|w| w == &third[..]).expect("a message in the ring");
    ring_corrupt[at] ^= 0x80;
    files.push(("ring-corrupt-record.podcache", ring_corrupt));
    files.push(("foreign.bin", b"This is not a podcache file. ".repeat(16)));

    for (name, bytes) in &files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let corrupt_gets: Vec<Value> = gets
        .iter()
        .map(|g| {
            let mut g = g.clone();
            if g["key_hex"] == hex(b"gamma") {
                g["value_hex"] = Value::Null;
                g["error"] = json!("corrupt");
            }
            g
        })
        .collect();
    let mut corrupt_msgs: Vec<Value> = messages[..2].to_vec();
    corrupt_msgs.iter_mut().for_each(|m| m["lost"] = json!(0));

    json!({
        "about": "podcache test vectors: files in this directory and what a reader must read from them. \
                  Schema and meaning: docs/format.md, section 'Test vectors'. Regenerate: \
                  PODCACHE_BLESS=1 cargo test -p podcache-ffi --test vectors",
        "layout_version": 4,
        "vectors": [
            {"file": "table.podcache", "open_as": "table", "open": "ok", "hash_seed_hex": format!("{SEED:016x}"),
             "stats": {"items": 5, "puts": 7, "deletes": 1}, "gets": gets},
            {"file": "table-corrupt-value.podcache", "open_as": "table", "open": "ok", "gets": corrupt_gets},
            {"file": "table-bad-header-crc.podcache", "open_as": "table", "open": "corrupt"},
            {"file": "table-not-ready.podcache", "open_as": "table", "open": "not_ready"},
            {"file": "table-version-99.podcache", "open_as": "table", "open": "version_mismatch"},
            {"file": "table-truncated.podcache", "open_as": "table", "open": "truncated"},
            {"file": "ring.podcache", "open_as": "table", "open": "wrong_kind"},
            {"file": "foreign.bin", "open_as": "table", "open": "foreign"},
            {"file": "missing.podcache", "open_as": "table", "open": "no_file"},
            {"file": "ring.podcache", "open_as": "ring", "open": "ok", "start": "oldest",
             "messages": messages, "then": "empty"},
            {"file": "ring.podcache", "open_as": "ring", "open": "ok", "start": "newest", "messages": [], "then": "empty"},
            {"file": "ring-corrupt-record.podcache", "open_as": "ring", "open": "ok", "start": "oldest",
             "messages": corrupt_msgs, "then": "corrupt"},
            {"file": "table.podcache", "open_as": "ring", "open": "wrong_kind"},
            {"file": "foreign.bin", "open_as": "ring", "open": "foreign"},
        ]
    })
}

fn expected_json_text(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap() + "\n"
}

#[test]
fn vectors_are_reproducible() {
    let out = tempfile::tempdir().unwrap();
    let expected = generate(out.path());
    std::fs::write(out.path().join("expected.json"), expected_json_text(&expected)).unwrap();
    let dir = vectors_dir();
    if std::env::var_os("PODCACHE_BLESS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(out.path()).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        return;
    }
    for e in std::fs::read_dir(out.path()).unwrap() {
        let e = e.unwrap();
        let committed = std::fs::read(dir.join(e.file_name())).unwrap_or_default();
        assert!(
            committed == std::fs::read(e.path()).unwrap(),
            "tests/vectors/{} differs from what the writer makes now. If the format changed on purpose, \
             regenerate and commit: PODCACHE_BLESS=1 cargo test -p podcache-ffi --test vectors",
            e.file_name().to_string_lossy()
        );
    }
}

/// The expected.json name of an open error.
fn open_error_name(e: &OpenError) -> &'static str {
    match e {
        OpenError::NotFound { .. } => "no_file",
        OpenError::NotReady { .. } => "not_ready",
        OpenError::VersionMismatch { .. } => "version_mismatch",
        OpenError::WrongKind { .. } => "wrong_kind",
        OpenError::Truncated { .. } => "truncated",
        OpenError::Foreign { .. } => "foreign",
        OpenError::Corrupt { .. } => "corrupt",
        _ => "io",
    }
}

#[test]
fn reader_reads_every_vector_as_expected() {
    let dir = vectors_dir();
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let mut checked = 0;
    for v in expected["vectors"].as_array().unwrap() {
        let path = dir.join(v["file"].as_str().unwrap());
        let what = format!("{} opened as a {}", v["file"], v["open_as"]);
        match v["open_as"].as_str().unwrap() {
            "table" => {
                let t = match TableReader::open(&path) {
                    Ok(t) => t,
                    Err(e) => {
                        assert_eq!(open_error_name(&e), v["open"], "{what}: {e}");
                        checked += 1;
                        continue;
                    }
                };
                assert_eq!(v["open"], "ok", "{what}");
                for g in v["gets"].as_array().unwrap() {
                    let key = unhex(g["key_hex"].as_str().unwrap());
                    if let Some(h) = g["hash_hex"].as_str() {
                        assert_eq!(u64::from_str_radix(h, 16).unwrap(), hash(SEED, &key), "{what}: hash of {key:?}");
                    }
                    let got = t.get_vec(&key);
                    match g["error"].as_str() {
                        Some("corrupt") => {
                            assert!(matches!(got, Err(podcache_reader::GetError::Corrupt { .. })), "{what}: {got:?}")
                        }
                        Some(other) => panic!("unknown expected error {other}"),
                        None => {
                            let want = g["value_hex"].as_str().map(unhex);
                            assert_eq!(got.unwrap(), want, "{what}: key {key:?}");
                        }
                    }
                }
                if let Some(s) = v.get("stats") {
                    let st = t.stats();
                    assert_eq!(
                        (st.items, st.puts, st.deletes),
                        (s["items"].as_u64().unwrap(), s["puts"].as_u64().unwrap(), s["deletes"].as_u64().unwrap())
                    );
                }
            }
            "ring" => {
                let start = if v["start"] == "newest" { Start::Newest } else { Start::Oldest };
                let mut s = match Subscriber::builder(&path).start(start).open() {
                    Ok(s) => s,
                    Err(e) => {
                        assert_eq!(open_error_name(&e), v["open"], "{what}: {e}");
                        checked += 1;
                        continue;
                    }
                };
                assert_eq!(v["open"], "ok", "{what}");
                let mut buf = vec![0u8; s.max_message()];
                for m in v["messages"].as_array().unwrap() {
                    let got = s.try_recv(&mut buf).unwrap().unwrap_or_else(|| panic!("{what}: missing {m}"));
                    assert_eq!((got.seq, got.lost), (m["seq"].as_u64().unwrap(), m["lost"].as_u64().unwrap()));
                    assert_eq!(hex(&buf[..got.len]), m["payload_hex"].as_str().unwrap(), "{what}: seq {}", got.seq);
                }
                let end = s.try_recv(&mut buf);
                match v["then"].as_str().unwrap() {
                    "empty" => assert_eq!(end, Ok(None), "{what}"),
                    "corrupt" => assert!(matches!(end, Err(RecvError::Corrupt { .. })), "{what}: {end:?}"),
                    other => panic!("unknown end {other}"),
                }
            }
            other => panic!("unknown open_as {other}"),
        }
        checked += 1;
    }
    assert_eq!(checked, expected["vectors"].as_array().unwrap().len());
}

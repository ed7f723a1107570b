//! Rings with and without payload checksums (`PublisherBuilder::checksums`): the choice is
//! recorded in the header, subscribers follow it, and each choice detects what the docs say:
//! both never return a message the publisher overwrote while it was read; only a ring with
//! checksums detects payload bytes damaged in place by something else. Plus the checksum-less
//! ring's test vector (tests/vectors/ring-no-checksums.*).

use podcache_format::header::{CHECKSUM_CRC32, CHECKSUM_NONE, PARAM_CHECKSUM};
use podcache_format::layout::PARAMS_OFFSET;
use podcache_reader::{RecvError, Subscriber};
use podcache_tests::{bounded, lapped_reader, payload_into, publish_loans, shm_tempdir};
use podcache_writer::{CreateError, Publisher};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CAPACITY: u64 = 1 << 14;
const MAX_MSG: usize = 1000;
/// First payload byte of the first record: data region at 4096, after the 16-byte header.
const FIRST_PAYLOAD: u64 = 4096 + 16;

fn publisher(path: &Path, checksums: bool) -> Publisher {
    Publisher::builder(path)
        .capacity(CAPACITY)
        .max_message(MAX_MSG as u32)
        .checksums(checksums)
        .create()
        .expect("create ring")
}

fn word_at(path: &Path, offset: u64) -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open(path).unwrap().read_exact_at(&mut b, offset).unwrap();
    u64::from_le_bytes(b)
}

#[test]
fn the_choice_is_in_the_header_and_subscribers_follow_it() {
    let dir = shm_tempdir();
    for (on, word) in [(true, CHECKSUM_CRC32), (false, CHECKSUM_NONE)] {
        let path = dir.path().join(format!("r-{on}.ring"));
        let mut p = publisher(&path, on);
        assert_eq!(p.checksums(), on);
        assert_eq!(word_at(&path, PARAMS_OFFSET + 8 * PARAM_CHECKSUM as u64), word);
        let sub = Subscriber::open(&path).expect("open");
        assert_eq!(sub.checksums(), on);
        p.publish(&[9u8; 24]).expect("publish");
        // The record's crc field (high half of its first word): zero exactly without checksums.
        let crc = word_at(&path, 4096) >> 32;
        assert_eq!(crc == 0, !on, "crc field {crc:#x} with checksums {on}");
        drop(p);
        // A publisher asking for the other choice finds a different layout.
        let other = Publisher::builder(&path).capacity(CAPACITY).max_message(MAX_MSG as u32).checksums(!on).create();
        assert!(matches!(other, Err(CreateError::LayoutMismatch { .. })), "{:?}", other.err());
    }
}

#[test]
fn every_way_to_publish_and_receive_works_without_checksums() {
    bounded("no checksums", 120, || {
        let dir = shm_tempdir();
        let path = dir.path().join("r.ring");
        let mut p = publisher(&path, false);
        let mut sub = Subscriber::open(&path).expect("open");
        let mut buf = vec![0u8; MAX_MSG];
        let mut scratch = Vec::new();
        for round in 0..5_000u64 {
            let seq = p.next_seq();
            payload_into(seq, MAX_MSG, &mut scratch);
            match round % 3 {
                0 => assert_eq!(p.publish(&scratch).unwrap(), seq),
                1 => {
                    let mut claim = p.claim(MAX_MSG).unwrap();
                    claim.write(&scratch);
                    assert_eq!(claim.commit().unwrap(), seq);
                }
                _ => {
                    let mut loan = p.loan(scratch.len()).unwrap();
                    loan.copy_from_slice(&scratch);
                    assert_eq!(loan.commit(), seq);
                }
            }
            if round % 2 == 0 {
                let m = sub.try_recv(&mut buf).unwrap().expect("a message");
                assert_eq!(m.seq, seq);
                assert_eq!(&buf[..m.len], &scratch[..]);
            } else {
                let (m, v) = sub.try_recv_in_place(|b| b.to_vec()).unwrap().expect("a message");
                assert_eq!(m.seq, seq);
                assert_eq!(v, scratch);
            }
        }
        // A publisher attaching again recovers every record (no checksum to verify them by).
        let next = p.next_seq();
        drop(p);
        let p = publisher(&path, false);
        let rec = p.recovery().expect("attached");
        assert!(!rec.discarded);
        assert!(rec.intact > 0);
        assert_eq!(p.next_seq(), next);
    });
}

#[test]
fn only_checksums_detect_a_payload_damaged_in_place() {
    let dir = shm_tempdir();
    for on in [true, false] {
        let path = dir.path().join(format!("r-{on}.ring"));
        let mut p = publisher(&path, on);
        p.publish(&[1u8; 40]).expect("publish");
        // Something other than the publisher changes a payload byte.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[2u8], FIRST_PAYLOAD + 5).unwrap();
        let mut sub = Subscriber::open(&path).expect("open");
        let mut buf = vec![0u8; MAX_MSG];
        let got = sub.try_recv(&mut buf);
        if on {
            assert!(matches!(got, Err(RecvError::Corrupt { reason: "checksum mismatch", .. })), "{got:?}");
        } else {
            // Documented: without checksums the damaged bytes are returned.
            let m = got.expect("read").expect("a message");
            assert_eq!(buf[5], 2);
            assert_eq!(m.len, 40);
        }
    }
}

#[test]
fn without_checksums_a_lapped_reader_still_never_returns_a_torn_message() {
    bounded("lapped without checksums", 300, || {
        let dir = shm_tempdir();
        let path = dir.path().join("r.ring");
        let mut p = publisher(&path, false);
        let done = Arc::new(AtomicBool::new(false));
        let (mut buf, mut reads) = (vec![0u8; MAX_MSG], 0u64);
        let reader = lapped_reader(&path, MAX_MSG, &done, move |sub| {
            // Alternate copies and in-place reads.
            reads += 1;
            if reads % 2 == 0 {
                let m = sub.recv_spin(&mut buf, Duration::from_millis(10)).expect("read")?;
                Some((m, buf[..m.len].to_vec()))
            } else {
                sub.recv_spin_in_place(Duration::from_millis(10), |b| b.to_vec()).expect("read")
            }
        });
        let total = 300_000u64;
        publish_loans(&mut p, total, MAX_MSG, 0x3C);
        done.store(true, Ordering::Release);
        let (received, lost, last) = reader.join().expect("reader thread");
        assert_eq!(last, total);
        assert!(received > 0 && received + lost <= total, "received {received} lost {lost}");
    });
}

// ---------------------------------------------------------------------------------------------
// The test vector

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

/// The messages of the vector: lengths 1, 7, 8, 64 and 300, bytes derived from the sequence.
fn vector_messages() -> Vec<Vec<u8>> {
    [1usize, 7, 8, 64, 300]
        .iter()
        .enumerate()
        .map(|(i, &len)| (0..len).map(|j| (i * 37 + j * 11 + 3) as u8).collect())
        .collect()
}

/// `tests/vectors/ring-no-checksums.podcache`: a ring of 4 KiB without checksums holding
/// the messages above (sequence 1..=5), and `ring-no-checksums.json`: what a reader must
/// read from it. `PODCACHE_BLESS=1` writes them again (the creation time and hash seed make
/// the header differ from run to run).
#[test]
fn the_checksum_less_ring_vector_reads_as_expected() {
    let file = vectors().join("ring-no-checksums.podcache");
    let expected = vectors().join("ring-no-checksums.json");
    let msgs = vector_messages();
    if std::env::var_os("PODCACHE_BLESS").is_some() {
        let dir = shm_tempdir();
        let path = dir.path().join("v.ring");
        let mut p = Publisher::builder(&path).capacity(4096).max_message(512).checksums(false).create().unwrap();
        for m in &msgs {
            p.publish(m).unwrap();
        }
        drop(p);
        std::fs::copy(&path, &file).unwrap();
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let body = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| format!("    {{\"seq\": {}, \"payload_hex\": \"{}\"}}", i + 1, hex(m)))
            .collect::<Vec<_>>()
            .join(",\n");
        std::fs::write(
            &expected,
            format!(
                "{{\n  \"about\": \"A ring without payload checksums (params[7] = CHECKSUM_NONE, the ASCII bytes 'nocrc' little-endian = 0x6372636f6e; every record's crc field 0). \
                 Schema as the ring entries of expected.json; regenerate: PODCACHE_BLESS=1 cargo test -p \
                 podcache-tests --test ring_checksums\",\n  \"file\": \"ring-no-checksums.podcache\",\n  \
                 \"checksum_hex\": \"{:x}\",\n  \"messages\": [\n{body}\n  ]\n}}\n",
                CHECKSUM_NONE
            ),
        )
        .unwrap();
    }
    // The header says "no checksums", and every record's crc field is zero.
    assert_eq!(word_at(&file, PARAMS_OFFSET + 8 * PARAM_CHECKSUM as u64), CHECKSUM_NONE);
    let json = std::fs::read_to_string(&expected).unwrap();
    let mut sub = Subscriber::open(&file).expect("open the vector");
    assert!(!sub.checksums());
    let mut buf = vec![0u8; 512];
    let mut pos = 4096u64;
    for (i, m) in msgs.iter().enumerate() {
        let got = sub.try_recv(&mut buf).unwrap().expect("a message");
        assert_eq!((got.seq, got.lost), (i as u64 + 1, 0));
        assert_eq!(&buf[..got.len], &m[..]);
        let hex: String = m.iter().map(|x| format!("{x:02x}")).collect();
        assert!(
            json.contains(&format!("\"seq\": {}, \"payload_hex\": \"{hex}\"", i + 1)),
            "json lists message {}",
            i + 1
        );
        assert_eq!(word_at(&file, pos) >> 32, 0, "crc field of message {}", i + 1);
        pos += podcache_reader::ring_record_size(m.len());
    }
    assert!(sub.try_recv(&mut buf).unwrap().is_none());
}

//! What is at an ack ring's path is untrusted: a foreign file, a ring that is not an ack ring,
//! or acks beyond what was published give typed errors or are ignored, never a hang or a
//! publisher that runs past a consumer.

use podcache_stream::{ack_path, CreateError, OpenError, PublishError, StreamConsumer, StreamPublisher};
use podcache_writer::Publisher;
use std::time::Duration;

const CAPACITY: u64 = 64 << 10;

#[test]
fn a_foreign_file_at_the_ack_path_is_an_error_on_both_sides() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = dir.path().join("data.ring");
    std::fs::write(ack_path(&path, "c"), b"not a podcache file at all, just some bytes").unwrap();
    let err = StreamPublisher::builder(&path).capacity(CAPACITY).consumers(["c"]).create().err().unwrap();
    assert!(matches!(&err, CreateError::AckRing { id, .. } if id == "c"), "{err}");
    // The consumer refuses to take it over (the writer crate never touches a foreign file).
    let _data = Publisher::builder(&path).capacity(CAPACITY).create().unwrap();
    let err = StreamConsumer::builder(&path, "c").open().err().unwrap();
    assert!(matches!(err, OpenError::AckRing(podcache_writer::CreateError::Foreign { .. })), "{err}");
    assert_eq!(
        std::fs::read(ack_path(&path, "c")).unwrap(),
        b"not a podcache file at all, just some bytes",
        "the foreign file was changed"
    );
}

#[test]
fn a_ring_that_is_not_an_ack_ring_is_refused() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = dir.path().join("data.ring");
    let mut publisher = StreamPublisher::builder(&path).capacity(CAPACITY).consumers(["c"]).create().unwrap();
    // Someone else's ring (messages up to 1 KiB) at the ack path, with a live writer.
    let _other = Publisher::builder(ack_path(&path, "c")).capacity(CAPACITY).max_message(1024).create().unwrap();
    let msg = [1u8; 512];
    let err = loop {
        if let Err(e) = publisher.publish(&msg, Duration::from_secs(30)) {
            break e;
        }
    };
    assert!(
        matches!(&err, PublishError::AckRing { id, reason } if id == "c" && reason.contains("not an ack ring")),
        "{err}"
    );
}

#[test]
fn acks_beyond_what_was_published_are_ignored() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = dir.path().join("data.ring");
    // A hostile (or stale) "consumer" that acknowledges messages not published yet.
    let mut liar = Publisher::builder(ack_path(&path, "c")).capacity(4096).max_message(8).create().unwrap();
    liar.publish(&u64::MAX.to_le_bytes()).unwrap();
    let mut publisher = StreamPublisher::builder(&path).capacity(CAPACITY).consumers(["c"]).create().unwrap();
    assert_eq!(publisher.acked("c"), Some(0));
    let msg = [2u8; 64];
    let mut published = 0;
    let err = loop {
        match publisher.publish(&msg, Duration::ZERO) {
            Ok(_) => published += 1,
            Err(e) => break e,
        }
        liar.publish(&(published + 1_000_000u64).to_le_bytes()).unwrap();
    };
    // It got exactly one window, as if nothing had been acknowledged.
    assert!(matches!(&err, PublishError::Timeout { id, registered: true } if id == "c"), "{err}");
    assert_eq!(published, publisher.window() / podcache_reader::ring_record_size(64));
    assert_eq!(publisher.acked("c"), Some(0));
}

#[test]
fn a_consumer_that_cannot_open_the_data_ring_does_not_register() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = dir.path().join("missing.ring");
    let err = StreamConsumer::builder(&path, "c").open().err().unwrap();
    assert!(matches!(err, OpenError::Data(podcache_reader::OpenError::NotFound { .. })), "{err}");
    // No ack ring left behind for a publisher to take for a consumer that came and went.
    assert!(!ack_path(&path, "c").exists());
}

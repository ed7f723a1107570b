//! # podcache-stream
//!
//! An acknowledged stream over a podcache ring, for users who need every message delivered.
//!
//! A plain podcache ring is a broadcast ring: its `Publisher` never waits and a reader that
//! falls a ring behind is lapped and told how many messages it lost. Here, a
//! [`StreamPublisher`] is created with a fixed set of consumer ids, and each
//! [`StreamConsumer`] reports how far it got on a small ring of its own (`NAME.ack.ID`, beside
//! the data ring `NAME`). The publisher publishes at memory speed while the bytes the slowest
//! consumer has not acknowledged fit a [`window`] (a little less than the ring), and otherwise
//! sleeps on that consumer's ack ring (a futex in the shared mapping, never a sleep loop) until
//! it acknowledges. So no consumer of the set is ever lapped: every message reaches every
//! consumer, in order.
//!
//! * **Who writes what.** The publisher writes the data ring only; each consumer writes its own
//!   ack ring only (it is that ring's single `flock`ed writer) and maps the data ring
//!   read-only. A consumer therefore links `podcache-writer` and needs a writable volume; plain
//!   `podcache-reader` subscribers of the same data ring still work and may be lapped.
//! * **When the consumer acknowledges.** Asking for the next message acknowledges the one
//!   before; acks are published every quarter window and before the consumer sleeps on an empty
//!   ring. A consumer that crashes and re-opens with the same id resumes after its last
//!   acknowledgement (at-least-once across consumer restarts).
//! * **A consumer that is gone.** A consumer is there while it holds its ack ring's writer lock;
//!   the kernel releases the lock however the process ends. A publisher waiting for a consumer
//!   checks the lock every [`LIVENESS_SLICE`] and fails with [`PublishError::ConsumerGone`];
//!   the caller then removes it ([`StreamPublisher::remove_consumer`]) or waits for it to come
//!   back. Every wait takes a timeout ([`PublishError::Timeout`]).
//!
//! The protocol and the window's margin are explained in `docs/design.md` §9.
//!
//! ```
//! use podcache_stream::{StreamConsumer, StreamPublisher};
//! use std::time::Duration;
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("jobs.ring");
//! let mut publisher = StreamPublisher::builder(&path)
//!     .capacity(1 << 20)
//!     .max_message(4096)
//!     .consumers(["worker"])      // never outrun this consumer
//!     .create()?;
//! // Usually another process (or container) sharing the volume:
//! let mut consumer = StreamConsumer::builder(&path, "worker").open()?;
//!
//! for job in [&b"resize"[..], b"encode", b"upload"] {
//!     // Waits (up to the timeout) only when the worker is a window behind.
//!     publisher.publish(job, Duration::from_secs(5))?;
//! }
//! let mut buf = vec![0u8; consumer.max_message()];
//! let m = consumer.recv(&mut buf, Duration::from_secs(5))?.expect("a job");
//! assert_eq!((m.seq, &buf[..m.len], m.lost), (1, &b"resize"[..], 0));
//!
//! // A consumer that goes away is reported to a publisher that waits for it.
//! drop(consumer);
//! let err = publisher.wait_acked(Duration::from_secs(5)).unwrap_err();
//! assert!(matches!(err, podcache_stream::WaitAckedError::ConsumerGone { .. }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod ack;
mod consumer;
mod publisher;

pub use ack::{ack_path, valid_id, window, MAX_ID_LEN};
pub use consumer::{OpenError, StreamConsumer, StreamConsumerBuilder, LOCK_GRACE};
pub use podcache_reader::Msg;
pub use publisher::{
    CreateError, PublishError, StreamPublisher, StreamPublisherBuilder, WaitAckedError, LIVENESS_SLICE,
    REGISTRATION_POLL,
};

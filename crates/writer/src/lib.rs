//! # podcache-writer
//!
//! The writer side of podcache: creates a file on a shared memory-backed volume (Kubernetes
//! `emptyDir: {medium: Memory}`, or `/dev/shm`) and publishes into it. Readers in other
//! processes and containers use `podcache-reader`.
//!
//! ## The broadcast ring
//!
//! A [`Publisher`] appends messages (1 byte up to a configured maximum) to a ring of fixed
//! size. It never waits for readers: each reader keeps its own cursor in its own memory, and a
//! reader that falls more than a ring behind is *lapped* and told how many messages it lost.
//! There is exactly one publisher per file, enforced with `flock`; a second one gets
//! [`CreateError::Locked`]. The file is preallocated at creation (a volume too small fails
//! here, not in a reader later) and never shrunk. A publisher that attaches to a file left by
//! a killed one drops the record that was being written, verifies the rest, bumps the
//! epoch and goes on.
//!
//! ```
//! use podcache_writer::Publisher;
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("events.ring");
//! let mut publisher = Publisher::builder(&path)
//!     .capacity(1 << 20)      // bytes of messages the ring holds
//!     .max_message(4096)      // largest message
//!     .create()?;
//! let seq = publisher.publish(b"hello")?;
//! assert_eq!(seq, 1);
//!
//! // Write a large message in place, once, without staging it.
//! let mut claim = publisher.claim(3)?;
//! claim.write(b"abc");
//! claim.commit()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod publisher;

pub use podcache_format::codec::{Codec, CodecError, Postcard};
pub use podcache_format::file::CreateOptions;
pub use podcache_format::ring::{Claim, PublishError, Recovery, WakePolicy};
pub use podcache_format::{CreateError, Kind};
pub use publisher::{Publisher, PublisherBuilder, TypedPublishError};

#[cfg(feature = "bincode")]
pub use podcache_format::codec::Bincode1;

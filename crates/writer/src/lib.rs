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

//!
//! ## The key-value table
//!
//! A [`TableWriter`] puts and deletes keys (1 to 255 bytes) with values (0 bytes up to a
//! segment); readers in other processes get them without locks and without writing. Items can
//! carry a TTL: an expired item is invisible to readers at once. When the table is full (items
//! or bytes) the writer evicts a whole segment: by default one whose items all expired, else the
//! oldest ([`EvictionPolicy`]).
//!
//! ```
//! use podcache_writer::TableWriter;
//! use std::time::Duration;
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("features.table");
//! let mut table = TableWriter::builder(&path)
//!     .max_items(10_000)          // most items
//!     .data_bytes(4 << 20)        // bytes of records (see `record_size`)
//!     .create()?;
//! table.put(b"user:42", b"{\"tier\":\"gold\"}")?;
//! table.put_with_ttl(b"session:9", b"token", Duration::from_secs(30))?;
//! table.put_typed(b"limits", &(100u32, 2.5f64))?;
//! assert!(table.delete(b"session:9"));
//!
//! // A value that cannot fit is refused and handed back.
//! let huge = vec![0u8; 8 << 20];
//! let err = table.put(b"big", huge).unwrap_err();
//! assert_eq!(err.into_value().len(), 8 << 20);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod publisher;
mod table;

pub use podcache_format::codec::{Codec, CodecError, Postcard};
pub use podcache_format::file::CreateOptions;
pub use podcache_format::ring::{
    record_size as ring_record_size, Claim, Loan, PublishError, Recovery, WakePolicy, MAX_WAKE_WINDOW,
};
pub use podcache_format::table::{
    record_size, EvictionPolicy, PutError, TableParams, TableParamsError, TableRecovery, TableStats, MAX_KEY,
};
pub use podcache_format::{CreateError, Kind, OpenError};
pub use publisher::{Publisher, PublisherBuilder, TypedPublishError};
pub use table::{TableWriter, TableWriterBuilder, TypedPutError};

#[cfg(feature = "bincode")]
pub use podcache_format::codec::Bincode1;

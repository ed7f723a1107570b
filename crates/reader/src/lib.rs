//! # podcache-reader
//!
//! The read-only side of podcache. Opens a file on the shared volume with `O_RDONLY`, maps it
//! `PROT_READ`, validates it, and reads at memory speed: no syscalls, no sockets, no writes to
//! shared memory at all — so a consumer container can mount the volume `readOnly: true`.
//!
//! ## Subscribing to a ring
//!
//! A [`Subscriber`] reads a broadcast ring in order with its own cursor (kept in process
//! memory). The publisher never waits for it: a subscriber that falls more than a ring behind
//! is *lapped*, jumps to the oldest intact message, and the next [`Msg`] tells how many it
//! lost ([`Msg::lost`]). Every message is copied out with atomic word loads, then validated
//! (lapping check, sequence number, crc32) before it is returned: a torn, partial or
//! corrupted message is never handed out.
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("events.ring");
//! # let mut publisher = podcache_writer::Publisher::builder(&path).capacity(1 << 16).create()?;
//! use podcache_reader::{Start, Subscriber};
//! use std::time::Duration;
//!
//! let mut sub = Subscriber::builder(&path).start(Start::Oldest).open()?;
//! publisher.publish(b"hello")?;
//!
//! let mut buf = vec![0u8; sub.max_message()];
//! // Poll (never blocks) ...
//! let msg = sub.try_recv(&mut buf)?.expect("one message");
//! assert_eq!(&buf[..msg.len], b"hello");
//! // ... or block up to a timeout (spins briefly, then sleeps on a futex).
//! assert!(sub.recv_timeout(&mut buf, Duration::from_millis(1))?.is_none());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

//!
//! ## Getting from a key-value table
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("features.table");
//! # let mut writer = podcache_writer::TableWriter::builder(&path).max_items(1000).create()?;
//! # writer.put(b"user:42", b"gold")?;
//! # writer.put_typed(b"limits", &(100u32, 2.5f64))?;
//! use podcache_reader::TableReader;
//!
//! let table = TableReader::open(&path)?;
//! let mut buf = [0u8; 256];
//! let len = table.get(b"user:42", &mut buf)?.expect("present"); // no allocation
//! assert_eq!(&buf[..len], b"gold");
//! assert_eq!(table.get_typed::<(u32, f64)>(b"limits")?, Some((100, 2.5)));
//! assert!(!table.contains(b"nobody")?);
//! let first_byte = table.get_with(b"user:42", |v| { let mut b = [0u8]; v.copy_to(0, &mut b); b[0] })?;
//! assert_eq!(first_byte, Some(b'g'));
//! assert_eq!(table.keys().count(), 2);
//!
//! // Many keys at once: their cache misses overlap (see `TableReader::get_many`).
//! let mut found = Vec::new();
//! table.get_many(&[&b"user:42"[..], b"nobody"], &mut buf, |i, value| {
//!     found.push((i, value.map(|v| v.map(<[u8]>::to_vec))));
//! });
//! assert_eq!(found, [(0, Ok(Some(b"gold".to_vec()))), (1, Ok(None))]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

//!
//! ## A near cache over Redis (feature `fill`)
//!
//! A table the sidecar mirrors from Redis (`podcache serve --upstream … --mirror TABLE=PREFIX`)
//! is read like any other; with the `fill` feature, `NearTable` also fills it on a miss: it
//! asks the sidecar over its Unix socket, which fetches the key from Redis once however many
//! containers miss at once, then reads the value from shared memory. See the `fill` module's
//! documentation for the contract, timeouts and errors.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "fill")]
pub mod fill;
mod subscriber;
mod table;

pub use podcache_format::codec::{Codec, CodecError, Postcard};
pub use podcache_format::ring::{record_size as ring_record_size, Msg, MsgBytes, ReadError as RecvError, Start};
pub use podcache_format::table::{
    Expiry, GetError, KeyIter, ReaderCounters, SharedBytes, TableStats, BATCH as GET_MANY_BATCH, MAX_RETRIES,
};
pub use podcache_format::{Kind, OpenError};
#[cfg(feature = "tokio")]
pub use subscriber::ASYNC_WAIT_SLICE;
pub use subscriber::{Subscriber, SubscriberBuilder, TypedRecvError};
pub use table::{TableReader, TypedGetError};

#[cfg(feature = "fill")]
pub use fill::{Cached, FillError, Got, NearOpenError, NearTable, NearTableBuilder, Source};

#[cfg(feature = "bincode")]
pub use podcache_format::codec::Bincode1;

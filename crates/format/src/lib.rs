//! # podcache-format
//!
//! The byte layout and lock-free protocols of podcache files, shared by the writer library
//! (`podcache-writer`) and the read-only reader library (`podcache-reader`). All of podcache's
//! `unsafe` code and atomics live in this crate.
//!
//! * [`header`]: the header every file starts with, and the attach protocol.
//! * [`layout`]: the byte map of every file, each offset chained from the one before it and
//!   pinned by `const` assertions.
//! * [`ring`]: the broadcast ring — one writer, many readers that never write, lapping.
//! * [`table`]: the key-value table — lock-free gets from read-only readers, TTL, eviction.
//! * [`mod@file`]: opening and mapping files read-only; with the `write` feature (on by
//!   default, off in `podcache-reader`) also creating, locking, preallocating and replacing them
//!   (not under loom).
//! * [`codec`]: the serde codec trait for typed messages.
//!
//! Everything in shared memory is accessed as 64-bit atomic words ([`region::Region`]); no
//! reference is ever formed over bytes another process may be changing. Under `--cfg loom` the
//! atomics are loom's, and the protocols run on a heap region (see `tests/loom_ring.rs`).

#![deny(missing_docs)]
// Word indices are values here (slot addresses are compared and stored), not just indices.
#![allow(clippy::needless_range_loop)]

mod checksum;
// The wake clock is the writer's; readers use only its stopwatch.
#[cfg_attr(not(feature = "write"), allow(dead_code))]
mod clock;
pub mod codec;
mod error;
#[cfg(not(loom))]
pub mod file;
#[cfg(not(loom))]
mod futex;
pub mod hash;
pub mod header;
pub mod layout;
pub mod region;
pub mod ring;
mod sync;
// Helpers the writer shares with recovery are dead in a build without the write path.
#[cfg_attr(not(feature = "write"), allow(dead_code))]
pub mod table;

#[cfg(feature = "write")]
pub use error::CreateError;
pub use error::OpenError;
pub use header::Kind;
/// Loom models only: make the writer "crash" at a chosen store (see `tests/loom_table.rs`).
#[cfg(loom)]
pub use sync::crash_after_stores;
/// Loom models only: the type of a shared word (loom's atomic with the crash switch).
#[cfg(loom)]
pub use sync::AtomicU64 as LoomWord;

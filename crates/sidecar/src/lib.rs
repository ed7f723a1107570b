//! # podcache-sidecar
//!
//! The `podcache` binary: the sidecar that owns podcache files on a Pod's shared memory-backed
//! volume, and the command-line tools that inspect and change them.
//!
//! **Who writes.** `podcache serve` is the single writer of every file it is configured with
//! (the writer libraries take a `flock` on each file; the server also locks the directory, so a
//! second `serve` on it fails at once). Writes that arrive over HTTP are serialised per file by a
//! mutex around the file's writer; gets over HTTP go through a lock-free reader per worker
//! thread and never wait for a write. App containers read the same files with the
//! `podcache-reader` library at memory speed, or use the HTTP API.
//!
//! **Lifecycle.** Start-up validates the configuration, checks the volume has room for every
//! file (`statvfs`) before creating any, creates or re-attaches the files (recovering what a
//! killed writer left), and only then opens the listeners. `/readyz` answers 200 from then until
//! shutdown. Shutdown (SIGTERM, Ctrl-C, or the future given to [`run`]) stops accepting, ends
//! subscriptions, finishes requests in flight, closes the connections still open when the
//! shutdown grace ends ([`http::Limits`]) and marks every file cleanly closed.
//!
//! **Bounded clients.** Slow, idle and stalled clients hold bounded memory for a bounded time:
//! see [`http`] for the per-connection timeouts and limits, and [`api::SSE_QUEUE_BYTES`] for
//! what an event-stream subscriber that stops reading can hold.
//!
//! ```no_run
//! # async fn demo() -> Result<(), podcache_sidecar::Error> {
//! use podcache_sidecar::{run, Config, TableSpec};
//! let config = Config {
//!     dir: "/run/podcache".into(),
//!     tables: vec![TableSpec { name: "web".into(), max_items: 10_000, data_bytes: 64 << 20 }],
//!     ..Config::default()
//! };
//! run(config, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
mod filecheck;
pub mod http;
mod metrics;
pub mod names;
pub mod near;
pub mod ops;
mod process;
mod server;
pub mod stats;
pub mod token;
pub mod tools;

pub use config::{Config, RingSpec, TableSpec};
pub use error::{ApiError, Code, Error};
pub use server::{ring_path, run, table_path, Server, LOCK_FILE};

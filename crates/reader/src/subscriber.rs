//! [`Subscriber`]: a read-only cursor over a ring file.

use podcache_format::codec::{Codec, CodecError, Postcard};
use podcache_format::file;
use podcache_format::header::RETIRED;
use podcache_format::region::Region;
use podcache_format::ring::{Msg, MsgBytes, ReadError, RingParams, RingReader, Start};
use podcache_format::{Kind, OpenError};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest single wait [`Subscriber::recv_async`] runs on a blocking thread before it looks
/// again (so a dropped future's thread is free within this).
#[cfg(feature = "tokio")]
pub const ASYNC_WAIT_SLICE: Duration = Duration::from_millis(100);

/// Empty polls between two clock reads of [`Subscriber::recv_spin`].
const SPIN_POLLS_PER_CLOCK: u32 = 256;

/// Builds a [`Subscriber`]: see [`Subscriber::builder`].
#[derive(Clone, Debug)]
pub struct SubscriberBuilder {
    path: PathBuf,
    start: Start,
    wait_ready: Duration,
}

impl SubscriberBuilder {
    /// Where to start (default [`Start::Oldest`]).
    pub fn start(mut self, start: Start) -> Self {
        self.start = start;
        self
    }

    /// Wait up to `timeout` for the file to exist and be ready (default: do not wait).
    pub fn wait_ready(mut self, timeout: Duration) -> Self {
        self.wait_ready = timeout;
        self
    }

    /// Open the file read-only and validate it.
    pub fn open(self) -> Result<Subscriber, OpenError> {
        let (region, view) = file::open_read_wait(&self.path, Kind::Ring, self.wait_ready)?;
        let params = RingParams::from_header(&view)
            .map_err(|e| OpenError::Corrupt { path: self.path.clone(), reason: format!("ring layout: {e}") })?;
        let reader = RingReader::new(Arc::clone(&region), &params, self.start);
        let epoch = reader.writer_epoch();
        Ok(Subscriber {
            path: self.path,
            _region: region,
            reader,
            max_msg: params.max_msg as usize,
            checksums: params.checksums,
            epoch,
            scratch: Vec::new(),
        })
    }
}

/// A read-only subscriber of a broadcast ring.
///
/// Three ways to wait for the next message: [`try_recv`](Self::try_recv) polls and never
/// blocks; [`recv_spin`](Self::recv_spin) busy-waits (lowest latency, burns a core);
/// [`recv_timeout`](Self::recv_timeout) spins briefly then sleeps on a futex in the shared
/// mapping until the publisher wakes it or the timeout passes. Timeouts may be as long as
/// `Duration::MAX` (wait forever).
pub struct Subscriber {
    path: PathBuf,
    /// The mapping (the reader holds it too; kept for the subscriber's lifetime).
    _region: Arc<Region>,
    reader: RingReader,
    max_msg: usize,
    checksums: bool,
    epoch: u64,
    scratch: Vec<u8>,
}

/// A typed receive failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum TypedRecvError {
    /// Reading the ring failed.
    Recv(ReadError),
    /// The message did not decode (message consumed).
    Decode(CodecError),
}

impl std::fmt::Display for TypedRecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TypedRecvError::Recv(e) => write!(f, "receive failed: {e}"),
            TypedRecvError::Decode(e) => write!(f, "decoding failed: {e}"),
        }
    }
}

impl std::error::Error for TypedRecvError {}

impl Subscriber {
    /// Start building a subscriber for the ring file at `path`.
    pub fn builder(path: impl AsRef<Path>) -> SubscriberBuilder {
        SubscriberBuilder { path: path.as_ref().to_path_buf(), start: Start::Oldest, wait_ready: Duration::ZERO }
    }

    /// Open the ring at `path` from its oldest message.
    pub fn open(path: impl AsRef<Path>) -> Result<Subscriber, OpenError> {
        Self::builder(path).open()
    }

    /// Copy the next message into `buf` (at least [`max_message`](Self::max_message) bytes
    /// never fails for size). `Ok(None)` if there is none yet. Never blocks.
    #[inline]
    pub fn try_recv(&mut self, buf: &mut [u8]) -> Result<Option<Msg>, ReadError> {
        self.reader.read(buf)
    }

    /// Busy-wait for the next message, up to `timeout` (`Duration::MAX`: no limit).
    ///
    /// A message that is already there is read without a clock read or a function call beyond
    /// the read itself. When the ring is empty, the poll loop reloads only the shared `tail`
    /// word (one cache line the publisher writes once per commit), with a CPU spin hint
    /// between loads, and reads the clock only every 256 polls; the timeout therefore starts
    /// at the first clock read, some microseconds after the call.
    #[inline]
    pub fn recv_spin(&mut self, buf: &mut [u8], timeout: Duration) -> Result<Option<Msg>, ReadError> {
        match self.reader.read(buf)? {
            Some(m) => Ok(Some(m)),
            None => self.spin_until_message(buf, timeout),
        }
    }

    /// [`recv_spin`](Self::recv_spin) once the ring was found empty.
    #[inline(never)]
    fn spin_until_message(&mut self, buf: &mut [u8], timeout: Duration) -> Result<Option<Msg>, ReadError> {
        // `None`: not read yet; `Some(None)`: no deadline (a timeout too long to add).
        let mut deadline: Option<Option<Instant>> = None;
        let mut polls = 0u32;
        loop {
            // Wait before the load: the last one found the ring empty, and a load right after
            // it would only take the line away from the publisher again.
            std::hint::spin_loop();
            if self.reader.has_data() {
                if let Some(m) = self.reader.read(buf)? {
                    return Ok(Some(m));
                }
            }
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(SPIN_POLLS_PER_CLOCK) {
                let now = Instant::now();
                let d = *deadline.get_or_insert_with(|| now.checked_add(timeout));
                if d.is_some_and(|d| now >= d) {
                    return Ok(None);
                }
            }
        }
    }

    /// Zero-copy receive: call `f` on the next message while it is still in the ring, then
    /// validate it; `Ok(None)` if there is none yet. Never blocks.
    ///
    /// [`MsgBytes`] reads the bytes in place (word loads from the mapping, no copy of the
    /// message unless `f` makes one). The publisher may be overwriting them while `f` runs,
    /// if this subscriber is being lapped, so `f` may see **torn bytes**: it must not trust
    /// them (check lengths it reads from them, do no `unsafe` based on them). Such a call
    /// never becomes a result: after `f` returns, the subscriber checks that the publisher did
    /// not reach the message (and, on a ring with checksums, the checksum); if it did, `f`'s
    /// result is dropped, the subscriber moves on as after any lap (the next message's
    /// [`Msg::lost`] counts what it missed) and calls `f` on that next message. So `f` may run
    /// more than once per call, and only the result of a validated call is returned.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("in-place.ring");
    /// # let mut publisher = podcache_writer::Publisher::builder(&path).capacity(1 << 16).create()?;
    /// # publisher.publish(&[7u8; 32])?;
    /// use podcache_reader::Subscriber;
    ///
    /// let mut sub = Subscriber::open(&path)?;
    /// // Look at the first and last 8 bytes without copying the message.
    /// if let Some((msg, (first, last))) = sub.try_recv_in_place(|b| (b.u64_le_at(0), b.u64_le_at(b.len() - 8)))? {
    ///     assert_eq!(msg.len, 32);
    ///     assert_eq!(first, u64::from_le_bytes([7; 8]));
    ///     assert_eq!(last, first);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn try_recv_in_place<R>(&mut self, f: impl FnMut(&MsgBytes<'_>) -> R) -> Result<Option<(Msg, R)>, ReadError> {
        self.reader.read_with(f)
    }

    /// [`try_recv_in_place`](Self::try_recv_in_place), busy-waiting up to `timeout` for a
    /// message as [`recv_spin`](Self::recv_spin) does.
    pub fn recv_spin_in_place<R>(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&MsgBytes<'_>) -> R,
    ) -> Result<Option<(Msg, R)>, ReadError> {
        let mut deadline: Option<Option<Instant>> = None;
        let mut polls = 0u32;
        loop {
            if self.reader.has_data() {
                if let Some(got) = self.reader.read_with(&mut f)? {
                    return Ok(Some(got));
                }
            }
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(SPIN_POLLS_PER_CLOCK) {
                let now = Instant::now();
                let d = *deadline.get_or_insert_with(|| now.checked_add(timeout));
                if d.is_some_and(|d| now >= d) {
                    return Ok(None);
                }
            }
            std::hint::spin_loop();
        }
    }

    /// [`try_recv_in_place`](Self::try_recv_in_place), waiting up to `timeout` as
    /// [`recv_timeout`](Self::recv_timeout) does (spin briefly, then sleep on the futex).
    pub fn recv_timeout_in_place<R>(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&MsgBytes<'_>) -> R,
    ) -> Result<Option<(Msg, R)>, ReadError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if let Some(got) = self.reader.read_with(&mut f)? {
                return Ok(Some(got));
            }
            if !self.reader.wait(deadline) {
                return self.reader.read_with(&mut f);
            }
        }
    }

    /// Wait for the next message up to `timeout` (`Duration::MAX`: no limit): spin briefly,
    /// then sleep on the futex.
    pub fn recv_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> Result<Option<Msg>, ReadError> {
        if let Some(m) = self.reader.read(buf)? {
            return Ok(Some(m));
        }
        // A timeout too long to add (`Duration::MAX`) has no deadline.
        self.recv_until(buf, Instant::now().checked_add(timeout))
    }

    /// [`recv_timeout`](Self::recv_timeout) with a deadline (`None`: none).
    fn recv_until(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> Result<Option<Msg>, ReadError> {
        loop {
            if let Some(m) = self.reader.read(buf)? {
                return Ok(Some(m));
            }
            if !self.reader.wait(deadline) {
                return self.reader.read(buf);
            }
        }
    }

    /// Wait for the next message without blocking the async runtime, then copy it into `buf`
    /// (as [`try_recv`](Self::try_recv) does). The wait (a brief spin, then the futex) runs on
    /// tokio's blocking pool in slices of at most [`ASYNC_WAIT_SLICE`], so the runtime's
    /// workers (even a single-threaded runtime's one) go on with other tasks, and a future
    /// dropped while waiting (a `select!`, a `timeout`) frees its blocking thread within a
    /// slice. Waits as long as it takes; wrap it in `tokio::time::timeout` for a bound.
    #[cfg(feature = "tokio")]
    pub async fn recv_async(&mut self, buf: &mut [u8]) -> Result<Msg, ReadError> {
        loop {
            if let Some(m) = self.reader.read(buf)? {
                return Ok(m);
            }
            // A cursor of its own for the blocking thread: it only waits, and this one reads.
            let mut waiter = self.reader.clone();
            let slice = tokio::task::spawn_blocking(move || {
                waiter.wait(Instant::now().checked_add(ASYNC_WAIT_SLICE));
            });
            if slice.await.is_err() {
                // The runtime is shutting down (or the pool refused the task): let it drop us.
                tokio::task::yield_now().await;
            }
        }
    }

    /// Receive the next message into a new `Vec` of its length (blocking up to `timeout`).
    pub fn recv_vec(&mut self, timeout: Duration) -> Result<Option<(Msg, Vec<u8>)>, ReadError> {
        Ok(self.recv_scratch(timeout)?.map(|m| (m, self.scratch[..m.len].to_vec())))
    }

    /// Receive the next message into the scratch buffer, which grows to the size of the
    /// messages received, never to what the file claims as the largest message.
    fn recv_scratch(&mut self, timeout: Duration) -> Result<Option<Msg>, ReadError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut buf = std::mem::take(&mut self.scratch);
        let got = loop {
            match self.recv_until(&mut buf, deadline) {
                // `needed` is at most the ring's `max_msg` (checked against the format limit).
                Err(ReadError::BufferTooSmall { needed }) => buf.resize(needed, 0),
                other => break other,
            }
        };
        self.scratch = buf;
        got
    }

    /// Receive and decode the next message with postcard (blocking up to `timeout`).
    pub fn recv_typed<T: DeserializeOwned>(&mut self, timeout: Duration) -> Result<Option<(Msg, T)>, TypedRecvError> {
        self.recv_with(&Postcard, timeout)
    }

    /// Receive and decode the next message with `codec` (blocking up to `timeout`).
    pub fn recv_with<C: Codec, T: DeserializeOwned>(
        &mut self,
        codec: &C,
        timeout: Duration,
    ) -> Result<Option<(Msg, T)>, TypedRecvError> {
        match self.recv_scratch(timeout) {
            Ok(Some(m)) => codec.decode(&self.scratch[..m.len]).map(|v| Some((m, v))).map_err(TypedRecvError::Decode),
            Ok(None) => Ok(None),
            Err(e) => Err(TypedRecvError::Recv(e)),
        }
    }

    /// Skip everything not yet read: the next message is the next one published.
    pub fn skip_to_newest(&mut self) {
        self.reader.skip_to_newest();
    }

    /// Whether the ring's records carry payload checksums, which this subscriber verifies (the
    /// publisher's choice, recorded in the file). Without them a subscriber still never
    /// returns a message the publisher overwrote while it was read, but would return payload
    /// bytes damaged in place by something other than the publisher.
    pub fn checksums(&self) -> bool {
        self.checksums
    }

    /// Largest message the ring carries: a buffer this big always fits.
    pub fn max_message(&self) -> usize {
        self.max_msg
    }

    /// Bytes of the ring's data region: the backlog this subscriber may have before the
    /// publisher laps it. A message of `len` bytes takes [`ring_record_size`](crate::ring_record_size)`(len)`
    /// of it.
    pub fn capacity(&self) -> u64 {
        self.reader.capacity()
    }

    /// Messages lost to laps since this subscriber opened.
    pub fn lost(&self) -> u64 {
        self.reader.lost()
    }

    /// Times this subscriber was lapped.
    pub fn laps(&self) -> u64 {
        self.reader.laps()
    }

    /// Bytes of records published and not yet read by this subscriber (a snapshot; more than
    /// the ring's capacity means this subscriber will be lapped).
    pub fn backlog_bytes(&self) -> u64 {
        self.reader.writer_tail().saturating_sub(self.reader.position())
    }

    /// The writer's oldest intact position and committed end position (bytes since the ring
    /// was created; a snapshot for statistics: `end - oldest` bytes are in the ring, `end`
    /// bytes were ever published).
    pub fn writer_span(&self) -> (u64, u64) {
        (self.reader.writer_head(), self.reader.writer_tail())
    }

    /// Sequence number the publisher will give its next message.
    pub fn writer_next_seq(&self) -> u64 {
        self.reader.writer_next_seq()
    }

    /// The writer epoch now (1 for the creator, +1 per restarted publisher).
    pub fn writer_epoch(&self) -> u64 {
        self.reader.writer_epoch()
    }

    /// Whether a publisher restarted since this subscriber opened (or last called this).
    /// Messages are not lost by a restart: the new publisher continues the sequence.
    pub fn take_restarted(&mut self) -> bool {
        // An acquire load (RingReader::writer_epoch): after seeing the new epoch, this
        // subscriber sees the ring as the new publisher's attach left it.
        let now = self.writer_epoch();
        let changed = now != self.epoch;
        self.epoch = now;
        changed
    }

    /// Whether the file was replaced by a new one at the same path (re-open to follow it).
    pub fn is_retired(&self) -> bool {
        self.reader.writer_state() == RETIRED
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

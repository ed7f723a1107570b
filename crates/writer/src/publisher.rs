//! [`Publisher`]: the single writer of a ring file.

use podcache_format::codec::{Codec, CodecError, Postcard};
use podcache_format::file::{self, CreateOptions, WriterFile};
use podcache_format::ring::{Claim, Loan, PublishError, Recovery, RingParams, RingWriter, WakePolicy};
use podcache_format::{CreateError, Kind};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Builds a [`Publisher`]: see [`Publisher::builder`].
#[derive(Clone, Debug)]
pub struct PublisherBuilder {
    path: PathBuf,
    capacity: u64,
    max_msg: Option<u32>,
    wake: WakePolicy,
    checksums: bool,
    opts: CreateOptions,
}

impl PublisherBuilder {
    /// Bytes of records the ring holds (a power of two; default 16 MiB). Each message takes
    /// its length plus 16 bytes, rounded up to 8.
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }

    /// Largest message in bytes (default and upper bound: a quarter of the capacity minus 16).
    pub fn max_message(mut self, bytes: u32) -> Self {
        self.max_msg = Some(bytes);
        self
    }

    /// When blocked readers are woken (default [`WakePolicy::DEFAULT`]).
    pub fn wake(mut self, policy: WakePolicy) -> Self {
        self.wake = policy;
        self
    }

    /// Whether records carry a payload checksum (crc32) that subscribers verify (default: on).
    ///
    /// With checksums, a subscriber detects a message overwritten while it read it (the lease
    /// and sequence checks) **and** payload bytes changed by anything else: a bit flip, a
    /// stray write to the file, a bug. Without them, it still never returns a message the
    /// publisher overwrote while it was read (the lease check does not depend on the
    /// checksum), and still checks sequence numbers and lengths, but it would return payload
    /// bytes damaged in place by something other than the publisher. Turning them off saves
    /// computing crc32 over every message on both sides: worth it for large messages where a
    /// user prefers speed. Recorded in the file; subscribers follow what the file says
    /// (subscribers of releases before this option refuse a ring without checksums).
    pub fn checksums(mut self, on: bool) -> Self {
        self.checksums = on;
        self
    }

    /// Permission bits of a newly created file (default `0o640`).
    pub fn mode(mut self, mode: u32) -> Self {
        self.opts.mode = mode;
        self
    }

    /// Replace an existing file whose layout differs instead of failing (default: fail).
    pub fn replace_mismatched(mut self, yes: bool) -> Self {
        self.opts.replace_mismatched = yes;
        self
    }

    /// Create the file, or attach to the one a previous publisher left (recovering it).
    pub fn create(self) -> Result<Publisher, CreateError> {
        let max_msg =
            self.max_msg.unwrap_or_else(|| RingParams::max_msg_limit(self.capacity).min(u32::MAX.into()) as u32);
        let params = RingParams::new(self.capacity, max_msg)
            .map_err(|e| CreateError::InvalidOptions(e.to_string()))?
            .with_checksums(self.checksums);
        let mut file =
            file::create_or_attach(&self.path, Kind::Ring, &params.to_words(), params.file_size(), &self.opts)?;
        let region = file.region().clone();
        let (ring, recovery) = if file.is_fresh() {
            (RingWriter::create(region, &params, self.wake), None)
        } else {
            let (ring, rec) = RingWriter::attach(region, &params, self.wake);
            (ring, Some(rec))
        };
        let epoch = file.finish().map_err(|source| CreateError::Io { path: self.path.clone(), source })?;
        Ok(Publisher {
            file,
            ring,
            recovery,
            epoch,
            scratch: Vec::new(),
            capacity: params.capacity,
            checksums: params.checksums,
        })
    }
}

/// The single writer of a broadcast ring file.
///
/// Publishing never blocks and never waits for a reader. Dropping the publisher marks the file
/// cleanly closed, wakes blocked subscribers and releases the writer lock; readers keep
/// reading what is there. A publisher that attaches to a file a previous one left wakes every
/// blocked subscriber (the previous one may have died between a commit and its wake).
pub struct Publisher {
    file: WriterFile,
    ring: RingWriter,
    recovery: Option<Recovery>,
    epoch: u64,
    scratch: Vec<u8>,
    capacity: u64,
    checksums: bool,
}

/// A typed publish failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum TypedPublishError {
    /// The value could not be encoded.
    Encode(CodecError),
    /// The encoded value was refused.
    Publish(PublishError),
}

impl std::fmt::Display for TypedPublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TypedPublishError::Encode(e) => write!(f, "encoding failed: {e}"),
            TypedPublishError::Publish(e) => write!(f, "publish failed: {e}"),
        }
    }
}

impl std::error::Error for TypedPublishError {}

impl Publisher {
    /// Start building a publisher for the ring file at `path`.
    pub fn builder(path: impl AsRef<Path>) -> PublisherBuilder {
        PublisherBuilder {
            path: path.as_ref().to_path_buf(),
            capacity: 16 << 20,
            max_msg: None,
            wake: WakePolicy::DEFAULT,
            checksums: true,
            opts: CreateOptions::default(),
        }
    }

    /// Publish one message; returns its sequence number.
    #[inline]
    pub fn publish(&mut self, msg: &[u8]) -> Result<u64, PublishError> {
        self.ring.publish(msg)
    }

    /// Publish several messages with one commit and at most one wake. All are checked first:
    /// on error nothing is published. Returns the last sequence number (`None` if empty).
    pub fn publish_batch<'m, I>(&mut self, msgs: I) -> Result<Option<u64>, PublishError>
    where
        I: IntoIterator<Item = &'m [u8]>,
        I::IntoIter: Clone,
    {
        self.ring.publish_batch(msgs)
    }

    /// Claim room for a message of up to `max_len` bytes to write in place (see [`Claim`]).
    pub fn claim(&mut self, max_len: usize) -> Result<Claim<'_>, PublishError> {
        self.ring.claim(max_len)
    }

    /// Lend `len` bytes of the ring itself to write a message in place, with no copy: the
    /// [`Loan`] stores into the ring through its methods ([`Loan::write_at`],
    /// [`Loan::copy_from_slice`], [`Loan::fill`], [`Loan::put_u64_le`], or `std::io::Write`
    /// from a cursor, so `write!` or a serde serialiser encodes straight into the ring), never
    /// through a `&mut [u8]` over the shared mapping. [`Loan::commit`] publishes the message
    /// (computing its checksum then). Dropping the loan publishes nothing, and neither does a
    /// publisher killed while it holds one: subscribers never see the bytes of a loan that was
    /// not committed. The loan holds exactly `len` bytes (1 up to
    /// [`max_message`](Self::max_message)); it starts with whatever the ring held there, so
    /// write all of it. An offset past the loan's end panics (see [`Loan`]); the `io::Write`
    /// form returns `WriteZero` instead.
    ///
    /// Making room for the loan may lap a slow subscriber, as a publish of `len` bytes would,
    /// even if the loan is dropped.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("loan.ring");
    /// use podcache_writer::Publisher;
    /// use std::io::Write;
    ///
    /// let mut publisher = Publisher::builder(&path).capacity(1 << 16).create()?;
    /// let mut loan = publisher.loan(16)?;
    /// loan.put_u64_le(0, 7);
    /// loan.fill_at(8, 8, 0xab);
    /// assert_eq!(loan.commit(), 1);
    ///
    /// // Encode in place: write! through io::Write, at most the loan's length.
    /// let mut loan = publisher.loan(11)?;
    /// write!(loan, "hello {:05}", 42)?;
    /// assert_eq!(loan.remaining(), 0);
    /// assert!(write!(loan, "!").is_err(), "past the end: WriteZero, not a panic");
    /// assert_eq!(loan.commit(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn loan(&mut self, len: usize) -> Result<Loan<'_>, PublishError> {
        self.ring.loan(len)
    }

    /// Encode `value` with postcard and publish it.
    pub fn publish_typed<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<u64, TypedPublishError> {
        self.publish_with(&Postcard, value)
    }

    /// Encode `value` with `codec` and publish it.
    pub fn publish_with<C: Codec, T: Serialize + ?Sized>(
        &mut self,
        codec: &C,
        value: &T,
    ) -> Result<u64, TypedPublishError> {
        codec.encode(value, &mut self.scratch).map_err(TypedPublishError::Encode)?;
        self.ring.publish(&self.scratch).map_err(TypedPublishError::Publish)
    }

    /// Wake every blocked reader now (normally done by the wake policy).
    pub fn wake(&self) {
        self.ring.wake();
    }

    /// Sequence number the next message gets.
    pub fn next_seq(&self) -> u64 {
        self.ring.next_seq()
    }

    /// Largest message accepted.
    pub fn max_message(&self) -> u32 {
        self.ring.max_msg()
    }

    /// Bytes of records the ring holds.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether records carry payload checksums (see [`PublisherBuilder::checksums`]).
    pub fn checksums(&self) -> bool {
        self.checksums
    }

    /// Writer epoch: 1 for the creator, +1 for each publisher that attached after it.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// What attaching found, if this publisher attached to an existing file.
    pub fn recovery(&self) -> Option<Recovery> {
        self.recovery
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.file.close();
        // Blocked subscribers re-check the ring (and can see the file closed).
        self.ring.wake();
    }
}

//! [`StreamConsumer`]: reads the data ring and acknowledges on a ring of its own.

use crate::ack::{self, ACK_CAPACITY, ACK_LEN};
use podcache_reader::{ring_record_size, Msg, RecvError, Subscriber};
use podcache_writer::Publisher;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Least time [`StreamConsumerBuilder::open`] retries the ack ring's writer lock: a publisher's
/// liveness probe holds a shared lock on it for two system calls.
pub const LOCK_GRACE: Duration = Duration::from_millis(100);

/// Builds a [`StreamConsumer`]: see [`StreamConsumer::builder`].
#[derive(Clone, Debug)]
pub struct StreamConsumerBuilder {
    data: PathBuf,
    id: String,
    wait_ready: Duration,
    mode: u32,
}

impl StreamConsumerBuilder {
    /// Wait up to `timeout` for the data ring to exist and be ready, and for a previous
    /// holder of this id's ack ring to let go of it (default: do not wait beyond
    /// [`LOCK_GRACE`]).
    pub fn wait_ready(mut self, timeout: Duration) -> Self {
        self.wait_ready = timeout;
        self
    }

    /// Permission bits of a newly created ack ring (default `0o640`).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Open the data ring, then register: create (or take over) this consumer's ack ring and
    /// read the last acknowledgement it holds, to resume after it.
    pub fn open(self) -> Result<StreamConsumer, OpenError> {
        if !ack::valid_id(&self.id) {
            return Err(OpenError::InvalidId { id: self.id });
        }
        // The data ring first: a consumer that cannot read it does not register (a publisher
        // would take the ack ring it leaves behind for a consumer that is gone).
        let sub = Subscriber::builder(&self.data).wait_ready(self.wait_ready).open().map_err(OpenError::Data)?;
        let ack_path = ack::ack_path(&self.data, &self.id);
        let lock_deadline = Instant::now().checked_add(self.wait_ready.max(LOCK_GRACE));
        let acks = loop {
            let made = Publisher::builder(&ack_path)
                .capacity(ACK_CAPACITY)
                .max_message(ACK_LEN as u32)
                .mode(self.mode)
                .create();
            match made {
                Ok(p) => break p,
                Err(podcache_writer::CreateError::Locked { .. })
                    if lock_deadline.is_none_or(|d| Instant::now() < d) =>
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(OpenError::AckRing(e)),
            }
        };
        // Our own last acknowledgement (readers never write, so reading the ring we write is
        // fine): a restarted consumer resumes after it.
        let mut last = read_last_ack(&ack_path)?;
        if last >= sub.writer_next_seq() {
            // Left from an older ring of the same name.
            last = 0;
        }
        let window = ack::window(sub.capacity(), sub.max_message());
        Ok(StreamConsumer {
            ack_every: (window / 4).max(1),
            sub,
            acks,
            id: self.id,
            ack_path,
            resumed_after: last,
            expected: if last > 0 { last + 1 } else { 0 },
            delivered: last,
            acked: last,
            unacked_bytes: 0,
        })
    }
}

/// The newest acknowledgement in the ack ring at `path` (0: none).
fn read_last_ack(path: &Path) -> Result<u64, OpenError> {
    let bad = |reason: String| OpenError::AckRead { path: path.to_path_buf(), reason };
    let mut sub = Subscriber::open(path).map_err(|e| bad(e.to_string()))?;
    let mut buf = [0u8; 64];
    let mut last = 0;
    loop {
        match sub.try_recv(&mut buf) {
            Ok(Some(m)) if m.len == ACK_LEN => last = u64::from_le_bytes(buf[..ACK_LEN].try_into().expect("8 bytes")),
            Ok(Some(_)) => {}
            Ok(None) => return Ok(last),
            Err(e) => return Err(bad(e.to_string())),
        }
    }
}

/// Opening a [`StreamConsumer`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// The id is not 1 to 64 bytes of `[A-Za-z0-9_-]`.
    InvalidId {
        /// The id.
        id: String,
    },
    /// The ack ring could not be created or taken over (`Locked`: another live consumer has
    /// this id).
    AckRing(podcache_writer::CreateError),
    /// The ack ring's earlier acknowledgements could not be read.
    AckRead {
        /// The ack ring.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The data ring could not be opened.
    Data(podcache_reader::OpenError),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::InvalidId { id } => write!(f, "consumer id {id:?} is not 1 to 64 of [A-Za-z0-9_-]"),
            OpenError::AckRing(e) => write!(f, "ack ring: {e}"),
            OpenError::AckRead { path, reason } => write!(f, "{}: reading earlier acks: {reason}", path.display()),
            OpenError::Data(e) => write!(f, "data ring: {e}"),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::AckRing(e) => Some(e),
            OpenError::Data(e) => Some(e),
            _ => None,
        }
    }
}

/// A consumer of an acknowledged stream: reads the data ring like a
/// [`Subscriber`] and reports its progress on its own ack ring (`NAME.ack.ID`), so the
/// [`StreamPublisher`](crate::StreamPublisher) never overwrites a message it has not finished.
///
/// **Acknowledgement.** Asking for the next message ([`recv`](Self::recv),
/// [`try_recv`](Self::try_recv), [`recv_vec`](Self::recv_vec)) acknowledges the one received
/// before it; dropping the consumer, or [`ack`](Self::ack), acknowledges everything received
/// (a drop while the thread panics leaves out the message in hand).
/// So a consumer that crashes while handling a message gets it again when it re-opens with
/// the same id (at least once across restarts; exactly once and in order otherwise). Acks are
/// published every quarter of the publisher's window and whenever the data ring is found
/// empty (before sleeping), which is what keeps a waiting publisher from waiting forever.
///
/// The consumer writes only its ack ring; the data ring is mapped read-only. It is the single
/// writer of its ack ring (`flock`): a second live consumer with the same id fails to open, and
/// the lock's release is how the publisher learns that the consumer is gone.
pub struct StreamConsumer {
    sub: Subscriber,
    acks: Publisher,
    id: String,
    ack_path: PathBuf,
    resumed_after: u64,
    /// Sequence number expected next (0: whatever the oldest is).
    expected: u64,
    /// Last message handed out.
    delivered: u64,
    /// Last acknowledgement published.
    acked: u64,
    /// Record bytes handed out since the last acknowledgement.
    unacked_bytes: u64,
    ack_every: u64,
}

impl StreamConsumer {
    /// Start building consumer `id` (1 to 64 bytes of `[A-Za-z0-9_-]`, named in the
    /// publisher's set) of the data ring at `data`.
    pub fn builder(data: impl AsRef<Path>, id: impl Into<String>) -> StreamConsumerBuilder {
        StreamConsumerBuilder {
            data: data.as_ref().to_path_buf(),
            id: id.into(),
            wait_ready: Duration::ZERO,
            mode: 0o640,
        }
    }

    /// Wait up to `timeout` (`Duration::MAX`: no limit) for the next message and copy it into
    /// `buf` (at least [`max_message`](Self::max_message) bytes never fails for size).
    /// `Ok(None)` if none came. Acknowledges the message received before.
    /// [`Msg::lost`] is 0 unless the publisher does not count this consumer (another set, a
    /// plain publisher) and lapped it.
    pub fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> Result<Option<Msg>, RecvError> {
        self.settle();
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let m = match self.sub.try_recv(buf)? {
                Some(m) => m,
                None => {
                    // About to sleep: acknowledge everything first (a publisher may be waiting).
                    self.ack();
                    let left = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()));
                    match self.sub.recv_timeout(buf, left)? {
                        Some(m) => m,
                        None => return Ok(None),
                    }
                }
            };
            if let Some(m) = self.deliver(m) {
                return Ok(Some(m));
            }
        }
    }

    /// Copy the next message into `buf` if there is one; never blocks. Acknowledges the
    /// message received before, and everything when the ring is empty.
    pub fn try_recv(&mut self, buf: &mut [u8]) -> Result<Option<Msg>, RecvError> {
        self.settle();
        loop {
            let Some(m) = self.sub.try_recv(buf)? else {
                self.ack();
                return Ok(None);
            };
            if let Some(m) = self.deliver(m) {
                return Ok(Some(m));
            }
        }
    }

    /// [`recv`](Self::recv) into a new `Vec` of the message's length.
    pub fn recv_vec(&mut self, timeout: Duration) -> Result<Option<(Msg, Vec<u8>)>, RecvError> {
        let mut buf = vec![0u8; 256.min(self.max_message())];
        loop {
            match self.recv(&mut buf, timeout) {
                // `needed` is at most the ring's largest message (checked against the format limit).
                Err(RecvError::BufferTooSmall { needed }) => buf.resize(needed, 0),
                Ok(Some(m)) => {
                    buf.truncate(m.len);
                    return Ok(Some((m, buf)));
                }
                Ok(None) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Acknowledge every message received so far now.
    pub fn ack(&mut self) {
        if self.delivered > self.acked {
            // 8 bytes always fit the ack ring (its largest message), so this cannot fail.
            let _ = self.acks.publish(&self.delivered.to_le_bytes());
            self.acked = self.delivered;
            self.unacked_bytes = 0;
        }
    }

    /// The previous message is done: acknowledge once a quarter window has collected.
    #[inline]
    fn settle(&mut self) {
        if self.unacked_bytes >= self.ack_every {
            self.ack();
        }
    }

    /// Account for `m` (`None`: skipped, at or before the acknowledgement resumed after).
    #[inline]
    fn deliver(&mut self, mut m: Msg) -> Option<Msg> {
        if m.seq <= self.resumed_after {
            return None;
        }
        if self.expected != 0 {
            m.lost = m.seq.saturating_sub(self.expected);
        }
        self.expected = m.seq + 1;
        self.delivered = m.seq;
        self.unacked_bytes += ring_record_size(m.len);
        Some(m)
    }

    /// The acknowledgement this consumer resumed after when it opened (0: it started at the
    /// oldest message of the ring).
    pub fn resumed_after(&self) -> u64 {
        self.resumed_after
    }

    /// The last acknowledgement published (every message up to it is done).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Largest message of the data ring: a buffer this big always fits.
    pub fn max_message(&self) -> usize {
        self.sub.max_message()
    }

    /// This consumer's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The data ring's path.
    pub fn path(&self) -> &Path {
        self.sub.path()
    }

    /// This consumer's ack ring.
    pub fn ack_path(&self) -> &Path {
        &self.ack_path
    }
}

impl Drop for StreamConsumer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Unwinding from a panic: the message in hand may not have been handled.
            self.delivered = self.delivered.saturating_sub(1).max(self.acked);
        }
        // Everything received is done; then the ack ring's lock goes (the publisher sees it).
        self.ack();
    }
}

//! [`StreamPublisher`]: publishes into a ring and never outruns the consumers of its set.

use crate::ack::{self, Probe, ACK_LEN};
use podcache_reader::{ring_record_size, RecvError, Subscriber};
use podcache_writer::{Publisher, PublisherBuilder, WakePolicy};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest the publisher sleeps on a consumer's ack ring before it checks that the consumer is
/// still there (so a consumer that dies is reported within about this long).
pub const LIVENESS_SLICE: Duration = Duration::from_millis(100);

/// How often the publisher looks for the ack ring of a consumer that has not registered yet
/// and holds it back (a file that does not exist has no futex word to sleep on).
pub const REGISTRATION_POLL: Duration = Duration::from_millis(10);

/// Most acks read from one ack ring in one go (it holds 170; more means a hostile writer).
const MAX_DRAIN: usize = 1024;

/// Builds a [`StreamPublisher`]: see [`StreamPublisher::builder`].
#[derive(Clone, Debug)]
pub struct StreamPublisherBuilder {
    path: PathBuf,
    ring: PublisherBuilder,
    consumers: Vec<String>,
}

impl StreamPublisherBuilder {
    /// The consumers the publisher must not outrun, by id (1 to 64 bytes of
    /// `[A-Za-z0-9_-]`). Replaces any set given before. Default: none (then the publisher
    /// never waits, like a plain `Publisher`).
    pub fn consumers<I, S>(mut self, ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.consumers = ids.into_iter().map(Into::into).collect();
        self
    }

    /// Bytes of records the data ring holds (a power of two; default 16 MiB).
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.ring = self.ring.capacity(bytes);
        self
    }

    /// Largest message in bytes (default and upper bound: a quarter of the capacity minus 16).
    pub fn max_message(mut self, bytes: u32) -> Self {
        self.ring = self.ring.max_message(bytes);
        self
    }

    /// When consumers blocked on the data ring are woken (default [`WakePolicy::DEFAULT`]).
    pub fn wake(mut self, policy: WakePolicy) -> Self {
        self.ring = self.ring.wake(policy);
        self
    }

    /// Permission bits of a newly created data ring (default `0o640`).
    pub fn mode(mut self, mode: u32) -> Self {
        self.ring = self.ring.mode(mode);
        self
    }

    /// Replace an existing data ring whose layout differs instead of failing (default: fail).
    pub fn replace_mismatched(mut self, yes: bool) -> Self {
        self.ring = self.ring.replace_mismatched(yes);
        self
    }

    /// Create the data ring (or attach to the one a previous publisher left) and look for the
    /// consumers' ack rings (consumers that have not registered yet are waited for when the
    /// publisher needs their acknowledgements, not here).
    pub fn create(self) -> Result<StreamPublisher, CreateError> {
        for (i, id) in self.consumers.iter().enumerate() {
            if !ack::valid_id(id) {
                return Err(CreateError::InvalidConsumer { id: id.clone(), reason: "not 1 to 64 of [A-Za-z0-9_-]" });
            }
            if self.consumers[..i].contains(id) {
                return Err(CreateError::InvalidConsumer { id: id.clone(), reason: "named twice" });
            }
        }
        let inner = self.ring.create().map_err(CreateError::Ring)?;
        let capacity = inner.capacity();
        let max_message = inner.max_message() as usize;
        let window = ack::window(capacity, max_message);
        // Positions count from `capacity`, so a consumer whose acknowledgement predates this
        // publisher (position unknown, taken as 0) is a whole ring behind.
        let first = inner.next_seq();
        let mut ckpts = VecDeque::new();
        ckpts.push_back((first - 1, capacity));
        let peers = self
            .consumers
            .into_iter()
            .map(|id| Peer { ack_path: ack::ack_path(&self.path, &id), id, link: None, acked: 0, suspect: false })
            .collect();
        let mut publisher = StreamPublisher {
            inner,
            peers,
            window,
            max_message,
            cum: capacity,
            ckpts,
            ckpt_step: (capacity / 64).max(1),
            limit: 0,
            waits: 0,
        };
        let next = publisher.inner.next_seq();
        for p in &mut publisher.peers {
            // Acknowledgements already there (a restarted publisher, consumers started first).
            p.refresh(next).map_err(|reason| CreateError::AckRing { id: p.id.clone(), reason })?;
        }
        publisher.refresh_limit();
        Ok(publisher)
    }
}

/// Creating a [`StreamPublisher`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum CreateError {
    /// A consumer id is not valid.
    InvalidConsumer {
        /// The id.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The data ring could not be created or attached.
    Ring(podcache_writer::CreateError),
    /// A consumer's ack ring is there but cannot be read as one.
    AckRing {
        /// The consumer.
        id: String,
        /// What is wrong.
        reason: String,
    },
}

impl std::fmt::Display for CreateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreateError::InvalidConsumer { id, reason } => write!(f, "consumer id {id:?}: {reason}"),
            CreateError::Ring(e) => write!(f, "data ring: {e}"),
            CreateError::AckRing { id, reason } => write!(f, "ack ring of consumer {id:?}: {reason}"),
        }
    }
}

impl std::error::Error for CreateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CreateError::Ring(e) => Some(e),
            _ => None,
        }
    }
}

/// [`StreamPublisher::publish`] failed; the message was not published.
#[derive(Debug)]
#[non_exhaustive]
pub enum PublishError {
    /// The ring refuses the message (empty, or longer than its largest message).
    Publish(podcache_writer::PublishError),
    /// Consumer `id` holds the publisher back and is gone: its ack ring has no writer (the
    /// process died or dropped its `StreamConsumer`). Remove it
    /// ([`StreamPublisher::remove_consumer`]) or wait for it to re-register and call again.
    ConsumerGone {
        /// The consumer.
        id: String,
    },
    /// The timeout passed while the publisher waited for consumer `id` to acknowledge.
    Timeout {
        /// The consumer it waited for.
        id: String,
        /// Whether that consumer has registered (its ack ring exists) at all.
        registered: bool,
    },
    /// A consumer's ack ring cannot be read as one (corrupt, or not an ack ring).
    AckRing {
        /// The consumer.
        id: String,
        /// What is wrong.
        reason: String,
    },
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Publish(e) => write!(f, "{e}"),
            PublishError::ConsumerGone { id } => gone(f, id),
            PublishError::Timeout { id, registered } => timeout(f, id, *registered),
            PublishError::AckRing { id, reason } => write!(f, "ack ring of consumer {id:?}: {reason}"),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PublishError::Publish(e) => Some(e),
            _ => None,
        }
    }
}

/// [`StreamPublisher::wait_acked`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum WaitAckedError {
    /// Consumer `id` has not acknowledged everything and is gone (its ack ring has no writer).
    ConsumerGone {
        /// The consumer.
        id: String,
    },
    /// The timeout passed while the publisher waited for consumer `id`.
    Timeout {
        /// The consumer it waited for.
        id: String,
        /// Whether that consumer has registered (its ack ring exists) at all.
        registered: bool,
    },
    /// A consumer's ack ring cannot be read as one (corrupt, or not an ack ring).
    AckRing {
        /// The consumer.
        id: String,
        /// What is wrong.
        reason: String,
    },
}

impl std::fmt::Display for WaitAckedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitAckedError::ConsumerGone { id } => gone(f, id),
            WaitAckedError::Timeout { id, registered } => timeout(f, id, *registered),
            WaitAckedError::AckRing { id, reason } => write!(f, "ack ring of consumer {id:?}: {reason}"),
        }
    }
}

impl std::error::Error for WaitAckedError {}

fn gone(f: &mut std::fmt::Formatter<'_>, id: &str) -> std::fmt::Result {
    write!(f, "consumer {id:?} is gone (its ack ring has no writer): remove it from the set or restart it")
}

fn timeout(f: &mut std::fmt::Formatter<'_>, id: &str, registered: bool) -> std::fmt::Result {
    if registered {
        write!(f, "timed out waiting for consumer {id:?} to acknowledge")
    } else {
        write!(f, "timed out waiting for consumer {id:?}, which has not registered (no ack ring yet)")
    }
}

/// Why a wait stopped (what both operations' errors share).
enum Halt {
    Gone { id: String },
    Timeout { id: String, registered: bool },
    AckRing { id: String, reason: String },
}

impl From<Halt> for PublishError {
    fn from(h: Halt) -> Self {
        match h {
            Halt::Gone { id } => PublishError::ConsumerGone { id },
            Halt::Timeout { id, registered } => PublishError::Timeout { id, registered },
            Halt::AckRing { id, reason } => PublishError::AckRing { id, reason },
        }
    }
}

impl From<Halt> for WaitAckedError {
    fn from(h: Halt) -> Self {
        match h {
            Halt::Gone { id } => WaitAckedError::ConsumerGone { id },
            Halt::Timeout { id, registered } => WaitAckedError::Timeout { id, registered },
            Halt::AckRing { id, reason } => WaitAckedError::AckRing { id, reason },
        }
    }
}

/// What a consumer of the set looks like from the publisher.
struct Peer {
    id: String,
    ack_path: PathBuf,
    /// Its ack ring, once it exists.
    link: Option<Link>,
    /// The newest acknowledgement read that is not beyond what this ring published (0: none).
    acked: u64,
    /// Probe its writer lock before trusting that it is there.
    suspect: bool,
}

/// An open ack ring: the subscriber reading it and a descriptor of the same file to probe.
struct Link {
    sub: Subscriber,
    probe: Probe,
}

impl Peer {
    /// Open the ack ring if it is not open yet, and read every acknowledgement in it.
    fn refresh(&mut self, next_seq: u64) -> Result<(), String> {
        if self.link.is_none() {
            self.link = self.open_link()?;
        }
        let Some(link) = self.link.as_mut() else { return Ok(()) };
        let mut buf = [0u8; 64];
        for _ in 0..MAX_DRAIN {
            match link.sub.try_recv(&mut buf) {
                Ok(Some(m)) => Peer::take(&mut self.acked, &buf, m.len, next_seq),
                Ok(None) => return Ok(()),
                // Lapped on every retry (only a writer far faster than any consumer acks).
                Err(RecvError::Overrun) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// Record in `acked` one acknowledgement of `len` bytes in `buf`.
    fn take(acked: &mut u64, buf: &[u8], len: usize, next_seq: u64) {
        if len == ACK_LEN {
            let a = u64::from_le_bytes(buf[..ACK_LEN].try_into().expect("8 bytes"));
            // Beyond what this ring published: left from an older ring of the same name.
            if a < next_seq {
                *acked = a;
            }
        }
    }

    /// Open the ack ring (`None`: it does not exist or is not ready yet, or the path changed
    /// while opening it).
    fn open_link(&self) -> Result<Option<Link>, String> {
        let probe = match Probe::open(&self.ack_path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", self.ack_path.display())),
        };
        let sub = match Subscriber::open(&self.ack_path) {
            Ok(s) => s,
            Err(e) if e.is_transient() => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        if sub.max_message() != ACK_LEN {
            return Err(format!("{}: not an ack ring (messages of {} B)", self.ack_path.display(), sub.max_message()));
        }
        // Both name the same file unless the path was replaced in between: look again later.
        Ok((probe.is_at(&self.ack_path) == Some(true)).then_some(Link { sub, probe }))
    }

    /// Whether the consumer is gone: its ack ring exists and nobody holds its writer lock.
    fn is_gone(&self) -> bool {
        self.link.as_ref().is_some_and(|l| !l.probe.writer_alive())
    }
}

/// What a wait waits for.
#[derive(Clone, Copy)]
enum Need {
    /// Room for a record of this many bytes within the window.
    Room(u64),
    /// Every message published acknowledged by every consumer.
    All,
}

/// The publisher of an acknowledged stream: a ring whose publisher waits for the slowest
/// consumer of a fixed set, so no consumer of the set ever loses a message.
///
/// It publishes into an ordinary ring (any subscriber can read it too, as a broadcast reader
/// that may be lapped). Consumers report how far they got on rings of their own
/// (`NAME.ack.ID`, written by [`StreamConsumer`](crate::StreamConsumer)); `publish` goes ahead
/// at memory speed while the bytes not yet acknowledged by the slowest consumer fit the
/// [`window`](Self::window), and otherwise sleeps on that consumer's ack ring (a futex) until it
/// acknowledges, the timeout passes, or the consumer is found gone. Nothing is written to the
/// data ring by consumers, and the publisher writes nothing to the ack rings.
pub struct StreamPublisher {
    inner: Publisher,
    peers: Vec<Peer>,
    window: u64,
    max_message: usize,
    /// Record bytes published, counted from the ring's capacity (so 0 is a ring behind).
    cum: u64,
    /// `(seq, cum after seq)`, one every `ckpt_step` bytes, oldest first; the first is at or
    /// below every consumer's acknowledgement unless one predates this publisher.
    ckpts: VecDeque<(u64, u64)>,
    ckpt_step: u64,
    /// `cum` may grow up to this without waiting (slowest position + window).
    limit: u64,
    /// Calls that had to wait for acknowledgements.
    waits: u64,
}

impl StreamPublisher {
    /// Start building a publisher for the data ring at `path`.
    pub fn builder(path: impl AsRef<Path>) -> StreamPublisherBuilder {
        let path = path.as_ref().to_path_buf();
        StreamPublisherBuilder { ring: Publisher::builder(&path), path, consumers: Vec::new() }
    }

    /// Publish one message, first waiting up to `timeout` (`Duration::MAX`: no limit;
    /// `Duration::ZERO`: do not wait) until every consumer of the set has acknowledged enough
    /// that the message fits the window. Returns its sequence number. On error the message is
    /// not published and nothing changed.
    #[inline]
    pub fn publish(&mut self, msg: &[u8], timeout: Duration) -> Result<u64, PublishError> {
        let r = ring_record_size(msg.len());
        if self.cum + r > self.limit && !msg.is_empty() && msg.len() <= self.max_message {
            self.wait(Need::Room(r), Instant::now().checked_add(timeout))?;
        }
        let seq = self.inner.publish(msg).map_err(PublishError::Publish)?;
        self.cum += r;
        if self.cum - self.ckpts.back().map_or(0, |c| c.1) >= self.ckpt_step {
            self.ckpts.push_back((seq, self.cum));
        }
        Ok(seq)
    }

    /// Wait up to `timeout` until every consumer of the set has acknowledged every message
    /// published so far (for example before exiting). A consumer acknowledges the last message
    /// it received when it asks for the next one or drops its `StreamConsumer`.
    pub fn wait_acked(&mut self, timeout: Duration) -> Result<(), WaitAckedError> {
        Ok(self.wait(Need::All, Instant::now().checked_add(timeout))?)
    }

    /// Wait until `need` holds, a consumer holding the publisher back is gone, or `deadline`.
    #[cold]
    fn wait(&mut self, need: Need, deadline: Option<Instant>) -> Result<(), Halt> {
        let mut counted = false;
        // Probe every consumer once per wait, and again after every quiet slice.
        for p in &mut self.peers {
            p.suspect = true;
        }
        let mut buf = [0u8; 64];
        loop {
            // Probe first: a consumer found gone wrote all its acks before, so the reads below
            // see them and a consumer that finished before dying is not reported.
            let mut gone = vec![false; self.peers.len()];
            for (p, g) in self.peers.iter_mut().zip(gone.iter_mut()) {
                if p.suspect {
                    *g = p.is_gone();
                    p.suspect = false;
                }
            }
            let next = self.inner.next_seq();
            for p in &mut self.peers {
                p.refresh(next).map_err(|reason| Halt::AckRing { id: p.id.clone(), reason })?;
            }
            self.refresh_limit();
            let Some(b) = self.blocker(need) else { return Ok(()) };
            if !counted {
                counted = true;
                self.waits += 1;
            }
            let peer = &mut self.peers[b];
            if gone[b] {
                return Err(Halt::Gone { id: peer.id.clone() });
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(Halt::Timeout { id: peer.id.clone(), registered: peer.link.is_some() });
            }
            let left = deadline.map_or(Duration::MAX, |d| d - now);
            let Some(link) = peer.link.as_mut() else {
                // Not registered yet: no futex word to sleep on; look for its file again soon.
                std::thread::sleep(left.min(REGISTRATION_POLL));
                continue;
            };
            match link.sub.recv_timeout(&mut buf, left.min(LIVENESS_SLICE)) {
                Ok(Some(m)) => Peer::take(&mut peer.acked, &buf, m.len, next),
                Ok(None) => {
                    // A quiet slice: is it still there, and still at this path?
                    if link.probe.is_at(&peer.ack_path) == Some(false) {
                        peer.link = None;
                    }
                    peer.suspect = true;
                }
                Err(RecvError::Overrun) => {}
                Err(e) => return Err(Halt::AckRing { id: peer.id.clone(), reason: e.to_string() }),
            }
        }
    }

    /// The consumer that keeps `need` from holding (the slowest), if any.
    fn blocker(&self, need: Need) -> Option<usize> {
        let ids = 0..self.peers.len();
        match need {
            Need::Room(r) if self.cum + r > self.limit => ids.min_by_key(|&i| self.position(self.peers[i].acked)),
            Need::Room(_) => None,
            Need::All => {
                let last = self.inner.next_seq() - 1;
                ids.filter(|&i| self.peers[i].acked < last).min_by_key(|&i| self.peers[i].acked)
            }
        }
    }

    /// Position (in `cum` terms) of the first message after `acked`, never after the true one.
    fn position(&self, acked: u64) -> u64 {
        match self.ckpts.partition_point(|c| c.0 <= acked) {
            0 => 0, // before this publisher's first message: a ring behind
            i => self.ckpts[i - 1].1,
        }
    }

    /// Recompute how far `cum` may go, and drop checkpoints every consumer has passed.
    fn refresh_limit(&mut self) {
        let Some(min_acked) = self.peers.iter().map(|p| p.acked).min() else {
            self.limit = u64::MAX;
            return;
        };
        while self.ckpts.len() >= 2 && self.ckpts[1].0 <= min_acked {
            self.ckpts.pop_front();
        }
        self.limit = self.position(min_acked).saturating_add(self.window);
    }

    /// Ids of the consumers that registered and are gone now (their ack rings have no writer).
    /// Two system calls per consumer. A gone consumer only makes `publish` fail once the
    /// publisher has to wait for it.
    pub fn gone_consumers(&mut self) -> Vec<&str> {
        let next = self.inner.next_seq();
        for p in &mut self.peers {
            // An unreadable ack ring is reported by `publish`; here it only is not gone.
            let _ = p.refresh(next);
        }
        self.peers.iter().filter(|p| p.is_gone()).map(|p| p.id.as_str()).collect()
    }

    /// Stop waiting for consumer `id` (for one found gone). Returns whether it was in the set.
    pub fn remove_consumer(&mut self, id: &str) -> bool {
        let before = self.peers.len();
        self.peers.retain(|p| p.id != id);
        self.refresh_limit();
        self.peers.len() != before
    }

    /// How many calls so far found the slowest consumer too far behind and waited for its
    /// acknowledgements (a publisher faster than its consumers waits often; statistics).
    pub fn waits(&self) -> u64 {
        self.waits
    }

    /// The ids of the consumer set.
    pub fn consumers(&self) -> impl Iterator<Item = &str> {
        self.peers.iter().map(|p| p.id.as_str())
    }

    /// The newest acknowledgement read from consumer `id` (every message up to this sequence
    /// number is done; 0: none yet), or `None` if `id` is not in the set.
    pub fn acked(&self, id: &str) -> Option<u64> {
        self.peers.iter().find(|p| p.id == id).map(|p| p.acked)
    }

    /// Bytes of records that may be published beyond the slowest acknowledgement:
    /// [`window`](crate::window) of this ring.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Sequence number the next message gets.
    pub fn next_seq(&self) -> u64 {
        self.inner.next_seq()
    }

    /// Largest message accepted.
    pub fn max_message(&self) -> u32 {
        self.inner.max_message()
    }

    /// Bytes of records the data ring holds.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity()
    }

    /// Writer epoch of the data ring: 1 for the creator, +1 for each publisher that attached.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch()
    }

    /// The data ring's path.
    pub fn path(&self) -> &Path {
        self.inner.path()
    }
}

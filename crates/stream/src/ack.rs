//! What both sides agree on: the ack ring's name and shape, consumer ids, the window, and the
//! liveness probe (docs/design.md §9).

use podcache_reader::ring_record_size;
use rustix::fs::{FlockOperation, Mode, OFlags};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Bytes of an ack ring (it holds the newest acks only; 4 KiB is 170 of them).
pub(crate) const ACK_CAPACITY: u64 = 4096;
/// Bytes of an ack: the little-endian sequence number acknowledged.
pub(crate) const ACK_LEN: usize = 8;
/// Longest an id may be, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// The acknowledgement ring of consumer `id` of the data ring at `data`: `NAME.ack.ID` in the
/// same directory.
pub fn ack_path(data: &Path, id: &str) -> PathBuf {
    let mut name = data.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".ack.");
    name.push(id);
    data.with_file_name(name)
}

/// Whether `id` is a valid consumer id: 1 to [`MAX_ID_LEN`] bytes of `[A-Za-z0-9_-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Bytes of records a publisher may have in flight beyond the slowest acknowledgement of a
/// ring of `capacity` bytes whose largest message is `max_message` bytes (docs/design.md §9):
/// `capacity − capacity/16 − 2·ring_record_size(max_message)`. Within it, the publisher never
/// overwrites a record a consumer of its set has not acknowledged.
pub fn window(capacity: u64, max_message: usize) -> u64 {
    capacity.saturating_sub(capacity / 16).saturating_sub(2 * ring_record_size(max_message))
}

/// A descriptor of an ack ring, kept to probe its writer lock and to notice the path naming
/// another file.
pub(crate) struct Probe {
    fd: OwnedFd,
}

impl Probe {
    /// Open `path` read-only (following links, as readers do).
    pub(crate) fn open(path: &Path) -> std::io::Result<Probe> {
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK, Mode::empty())?;
        Ok(Probe { fd })
    }

    /// Whether a process holds the file's writer lock (the consumer is alive). Takes a shared
    /// lock without blocking and releases it at once: it can only be had when no exclusive lock
    /// is held. An error other than "would block" counts as alive (never a false "gone").
    pub(crate) fn writer_alive(&self) -> bool {
        match rustix::fs::flock(&self.fd, FlockOperation::NonBlockingLockShared) {
            Ok(()) => {
                let _ = rustix::fs::flock(&self.fd, FlockOperation::Unlock);
                false
            }
            Err(_) => true,
        }
    }

    /// Whether `path` names this very file (device and inode); `None` if `path` names nothing.
    pub(crate) fn is_at(&self, path: &Path) -> Option<bool> {
        let mine = rustix::fs::fstat(&self.fd).ok()?;
        let there = rustix::fs::stat(path).ok()?;
        Some(mine.st_dev == there.st_dev && mine.st_ino == there.st_ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_file_names() {
        assert!(valid_id("a"));
        assert!(valid_id("worker-1_B"));
        assert!(valid_id(&"x".repeat(MAX_ID_LEN)));
        for bad in ["", "a/b", "..", "a.b", "é", " a", &"x".repeat(MAX_ID_LEN + 1)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn ack_path_is_beside_the_data_ring() {
        assert_eq!(ack_path(Path::new("/dev/shm/events.ring"), "w1"), Path::new("/dev/shm/events.ring.ack.w1"));
    }

    #[test]
    fn the_window_leaves_the_lease_step_and_two_paddings() {
        let cap = 1 << 20;
        assert_eq!(window(cap, 64), cap - cap / 16 - 2 * 80);
        // The largest message a ring allows (a quarter of it) still leaves a window.
        assert!(window(cap, (cap / 4 - 16) as usize) > cap / 4);
    }
}

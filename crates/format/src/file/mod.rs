//! Files on the shared volume: the read-only open side ([`open_read`]) and, with the `write`
//! feature, the create side (`create_or_attach`): `O_NOFOLLOW`, preallocation, the writer
//! lock and the inode re-check, the "creating" magic, replacement by rename.
//!
//! Mapping a file that another process changes is what podcache is for; it is sound here
//! because the mapping is held as a raw [`memmap2::MmapRaw`] and only ever seen as atomic words
//! through [`Region`](crate::region::Region), and the file is never shrunk while mapped (rule 5),
//! so no access can hit a page past its end.
//!
//! ## Symbolic links
//!
//! A writer never follows one: it opens with `O_NOFOLLOW` (and `O_EXCL` for its temporary
//! files), so a link planted at `NAME.table` fails the writer with `CreateError::Foreign`
//! instead of making it overwrite the link's target. A reader follows links: it opens `O_RDONLY`, maps `PROT_READ` and validates
//! everything it reads as untrusted input, so a link can at worst point it at a file it cannot
//! use (a typed error), and a link is a legitimate way to show a consumer a file under another
//! name. [`is_replaced`] follows links too, like the open it is compared with. Only the last
//! component of a path is protected: the directories leading to it are the deployment's.

#[cfg(feature = "write")]
mod create;
mod open;

pub use crate::region::FileId;
#[cfg(feature = "write")]
pub use create::{
    create_or_attach, create_or_attach_seeded, lock_opened, remove_stale_temps, CreateOptions, ExclusiveLock,
    WriterFile,
};
pub use open::{is_replaced, open_read, open_read_wait, path_id};

use std::time::{Duration, Instant};

/// The identity of an open file, from `fstat`.
fn stat_id(st: &rustix::fs::Stat) -> FileId {
    // The casts only widen: `st_dev` and `st_ino` are u64 on the 64-bit Linux targets podcache
    // supports (docs/design.md §5).
    #[allow(clippy::unnecessary_cast)]
    FileId { dev: st.st_dev as u64, ino: st.st_ino as u64 }
}

/// `now + timeout`, or `None` (wait forever) when that is not representable
/// (`Duration::MAX`).
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

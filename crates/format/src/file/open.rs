//! The open-read side: `O_RDONLY`, validate the header with `pread`, then map `PROT_READ`.

use super::{deadline_after, stat_id, FileId};
use crate::error::OpenError;
use crate::header::{self, HeaderView, Kind, CREATING, HEADER_BYTES};
use crate::region::Region;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The identity (device, inode) of the file `path` names now. `follow`: follow a symbolic link
/// at the last component (readers) or not (writers).
pub fn path_id(path: &Path, follow: bool) -> io::Result<FileId> {
    let flags = if follow { AtFlags::empty() } else { AtFlags::SYMLINK_NOFOLLOW };
    Ok(stat_id(&rustix::fs::statat(CWD, path, flags)?))
}

/// Whether `path` no longer names the file mapped by `region`: it was renamed over (a writer
/// replaced it) or removed. One `stat` system call: for an occasional check, not a hot path.
/// A heap region is never replaced.
pub fn is_replaced(region: &Region, path: &Path) -> bool {
    match region.file_id() {
        Some(id) => path_id(path, true).map_or(true, |now| now != id),
        None => false,
    }
}

/// Open `path` read-only (`O_RDONLY`, `PROT_READ`) after validating its header and size.
///
/// Follows a symbolic link (see the module doc). `O_NONBLOCK`, so a FIFO planted at the path
/// cannot block the open (it is then refused as not a regular file).
pub fn open_read(path: &Path, kind: Kind) -> Result<(Arc<Region>, HeaderView), OpenError> {
    let io_err = |e: io::Error| OpenError::io(path.to_path_buf(), e);
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| io_err(e.into()))?;
    let file = File::from(fd);
    let st = rustix::fs::fstat(&file).map_err(|e| io_err(e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(OpenError::Foreign { path: path.to_path_buf(), reason: "not a regular file".into() });
    }
    let len = u64::try_from(st.st_size).unwrap_or(0);
    if len < HEADER_BYTES {
        // Empty, or holding only the creator's first word: a creation under way.
        let mut first = [0u8; 8];
        let creating = len >= 8 && file.read_exact_at(&mut first, 0).is_ok() && u64::from_le_bytes(first) == CREATING;
        return Err(if len == 0 || creating {
            OpenError::NotReady { path: path.to_path_buf() }
        } else {
            OpenError::Truncated { path: path.to_path_buf(), expected: HEADER_BYTES, actual: len }
        });
    }
    let mut bytes = vec![0u8; HEADER_BYTES as usize];
    file.read_exact_at(&mut bytes, 0).map_err(io_err)?;
    let view = header::validate_bytes(&bytes, len, kind).map_err(|e| OpenError::from_header(path.to_path_buf(), e))?;
    let map_len = usize::try_from(view.file_size)
        .map_err(|_| OpenError::Corrupt { path: path.to_path_buf(), reason: "file size too large".into() })?;
    // Creating an `MmapRaw` is safe (no reference to the bytes exists). Accessing it is sound
    // because it is a read-only shared mapping of `map_len <= len` bytes (checked by
    // `validate_bytes`), podcache writers never shrink a file that was ever published, and the
    // region exposes it only as atomic words (Relaxed loads and fences: valid on PROT_READ
    // memory), never as a reference to bytes.
    let map = memmap2::MmapOptions::new().len(map_len).map_raw_read_only(&file).map_err(io_err)?;
    let region = Arc::new(Region::from_raw_map(map, false, stat_id(&st)));
    // The mapped header must say what the bytes we checked said. This validation's acquire
    // load of the magic is the one every later read of the mapping is ordered after.
    let again =
        header::validate(region.words(), len, kind).map_err(|e| OpenError::from_header(path.to_path_buf(), e))?;
    if again != view {
        return Err(OpenError::Corrupt { path: path.to_path_buf(), reason: "header changed while opening".into() });
    }
    Ok((region, view))
}

/// [`open_read`], retrying `NotFound` and `NotReady` until `timeout` has passed
/// (`Duration::MAX`: wait forever).
pub fn open_read_wait(path: &Path, kind: Kind, timeout: Duration) -> Result<(Arc<Region>, HeaderView), OpenError> {
    let deadline = deadline_after(timeout);
    let mut nap = Duration::from_micros(100);
    loop {
        match open_read(path, kind) {
            Err(e) if e.is_transient() && deadline.is_none_or(|d| Instant::now() < d) => {
                let left = deadline.map_or(nap, |d| d.saturating_duration_since(Instant::now()));
                std::thread::sleep(nap.min(left));
                nap = (nap * 2).min(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

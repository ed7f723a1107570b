//! Files on the shared volume: create with preallocation and the writer lock, attach, and
//! read-only open with validation before mapping.
//!
//! Mapping a file that another process changes is what podcache is for; it is sound here
//! because the mapping is only ever seen as atomic words through [`Region`], and the file is
//! never shrunk while mapped (rule 5), so no access can hit a page past its end.

use crate::error::{CreateError, OpenError};
use crate::header::{self, HeaderView, Kind, HEADER_BYTES, PARAM_WORDS, RETIRED, WRITER_CLOSED, WRITER_RUNNING};
use crate::region::Region;
use rustix::fs::{FallocateFlags, FlockOperation};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How a writer creates its file.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Permission bits of a new file (default `0o640`: the writer's user writes, its group
    /// reads; with Kubernetes `fsGroup` every container of the Pod is in that group).
    pub mode: u32,
    /// Replace an existing file whose layout differs (new file, atomic rename; readers of the
    /// old file see it retired). Default: refuse with [`CreateError::LayoutMismatch`].
    pub replace_mismatched: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions { mode: 0o640, replace_mismatched: false }
    }
}

/// An open file holding an exclusive `flock`, released explicitly when dropped.
///
/// A `flock` belongs to the open file description, which every copy of the descriptor shares.
/// A child process forked at the wrong moment holds such copies (any `Command::spawn` does until
/// its `exec` closes them), and a lock released only by closing our descriptor would stay held
/// by theirs. `LOCK_UN` on drop releases it for every copy at once.
#[derive(Debug)]
pub struct ExclusiveLock(File);

impl ExclusiveLock {
    /// Take the lock without waiting; `Err(WOULDBLOCK)` when another open file holds it.
    pub fn try_lock(file: File) -> Result<ExclusiveLock, rustix::io::Errno> {
        rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive)?;
        Ok(ExclusiveLock(file))
    }

    /// The locked file.
    pub fn file(&self) -> &File {
        &self.0
    }
}

impl Drop for ExclusiveLock {
    fn drop(&mut self) {
        // Nothing to do on failure: closing the descriptor next releases the lock anyway once
        // no copy remains.
        let _ = rustix::fs::flock(&self.0, FlockOperation::Unlock);
    }
}

/// A file held by its single writer: the open descriptor carries the `flock`.
pub struct WriterFile {
    path: PathBuf,
    _lock: ExclusiveLock,
    region: Arc<Region>,
    fresh: bool,
    /// For a replacement: the temporary path to rename over `path`, and the old file.
    pending: Option<(PathBuf, WriterFileOld)>,
}

struct WriterFileOld {
    _lock: ExclusiveLock,
    region: Arc<Region>,
}

impl WriterFile {
    /// The mapped region (read-write).
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// The path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file was created (true) or an existing one attached (false).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Finish: bump the epoch, mark the writer running and — for a fresh file — publish the
    /// ready flag (last) and, for a replacement, rename it into place and retire the old one.
    /// Returns the new epoch.
    pub fn finish(&mut self) -> io::Result<u64> {
        let w = self.region.words();
        let epoch = header::bump_epoch(w);
        header::set_writer_state(w, WRITER_RUNNING);
        if self.fresh {
            header::publish_ready(w);
        }
        if let Some((tmp, old)) = self.pending.take() {
            std::fs::rename(&tmp, &self.path)?;
            header::set_writer_state(old.region.words(), RETIRED);
        }
        Ok(epoch)
    }

    /// Mark the file cleanly closed (the writer lock is released when `self` drops).
    pub fn close(&self) {
        header::set_writer_state(self.region.words(), WRITER_CLOSED);
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn free_bytes(path: &Path) -> Option<u64> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    rustix::fs::statvfs(dir).ok().map(|s| s.f_bavail * s.f_frsize)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CreateError + '_ {
    move |source| CreateError::Io { path: path.to_path_buf(), source }
}

/// Open (creating if needed) `path` read-write and take its writer lock.
fn open_locked(path: &Path, mode: u32) -> Result<ExclusiveLock, CreateError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    ExclusiveLock::try_lock(file).map_err(|e| match e {
        rustix::io::Errno::WOULDBLOCK => CreateError::Locked { path: path.to_path_buf() },
        e => CreateError::Io { path: path.to_path_buf(), source: e.into() },
    })
}

/// Preallocate `size` bytes (never shrinks), map read-write and write the header fields.
fn init_fresh(
    path: &Path,
    file: &File,
    kind: Kind,
    params: &[u64; PARAM_WORDS],
    size: u64,
    mode: u32,
) -> Result<Arc<Region>, CreateError> {
    let had_bytes = file.metadata().map_err(io_err(path))?.len() > 0;
    file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
    match rustix::fs::fallocate(file, FallocateFlags::empty(), 0, size) {
        Ok(()) => {}
        Err(rustix::io::Errno::NOSPC) => {
            return Err(CreateError::NoSpace { path: path.to_path_buf(), needed: size, available: free_bytes(path) })
        }
        Err(rustix::io::Errno::OPNOTSUPP) => {
            // Filesystems without fallocate: extend (never shrink) and touch nothing.
            if file.metadata().map_err(io_err(path))?.len() < size {
                file.set_len(size).map_err(io_err(path))?;
            }
        }
        Err(e) => return Err(CreateError::Io { path: path.to_path_buf(), source: e.into() }),
    }
    let region = map_rw(path, file, size)?;
    if had_bytes {
        // A creation that died half-way (or a foreign file): structures assume a zeroed file.
        // No reader maps a file that is not ready, so plain stores are enough.
        for w in region.words() {
            w.store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }
    header::write_fields(region.words(), kind, size, params, now_ns());
    Ok(region)
}

fn map_rw(path: &Path, file: &File, size: u64) -> Result<Arc<Region>, CreateError> {
    let len = usize::try_from(size).map_err(|_| CreateError::InvalidOptions(format!("file size {size} too large")))?;
    // SAFETY: the file is ours (we hold its writer lock) and is at least `size` bytes long,
    // and podcache never shrinks a file. Other processes change it only through atomics.
    let map = unsafe { memmap2::MmapOptions::new().len(len).map_mut(file) }.map_err(io_err(path))?;
    Ok(Arc::new(Region::from_map_mut(map)))
}

/// Create `path` for a structure of `kind` with the given layout, or attach to the file a
/// previous writer left there. The caller initialises (fresh) or recovers (existing) its
/// structure in [`WriterFile::region`], then calls [`WriterFile::finish`].
pub fn create_or_attach(
    path: &Path,
    kind: Kind,
    params: &[u64; PARAM_WORDS],
    size: u64,
    opts: &CreateOptions,
) -> Result<WriterFile, CreateError> {
    let lock = open_locked(path, opts.mode)?;
    let file = lock.file();
    let len = file.metadata().map_err(io_err(path))?.len();
    let existing = if len >= HEADER_BYTES {
        let mut bytes = vec![0u8; HEADER_BYTES as usize];
        file.read_exact_at(&mut bytes, 0).map_err(io_err(path))?;
        match header::validate_bytes(&bytes, len, kind) {
            Err(header::HeaderError::NotReady) => None,
            other => Some(other),
        }
    } else {
        None
    };
    let wanted_hash = header::params_hash(kind, params);
    match existing {
        // Nothing there, or a creation that never finished: (re)initialise in place. No
        // reader maps a file before it is ready, so rewriting it is safe.
        None => {
            let region = init_fresh(path, file, kind, params, size, opts.mode)?;
            Ok(WriterFile { path: path.to_path_buf(), _lock: lock, region, fresh: true, pending: None })
        }
        Some(Ok(view)) if view.params_hash == wanted_hash && view.file_size == size => {
            let region = map_rw(path, file, size)?;
            Ok(WriterFile { path: path.to_path_buf(), _lock: lock, region, fresh: false, pending: None })
        }
        Some(Ok(view)) if opts.replace_mismatched => replace(path, lock, kind, params, size, opts, view.file_size),
        Some(Ok(view)) => Err(CreateError::LayoutMismatch {
            path: path.to_path_buf(),
            found: describe(kind, &view.params, view.file_size),
            wanted: describe(kind, params, size),
        }),
        Some(Err(e)) => {
            let err = OpenError::from_header(path.to_path_buf(), e);
            if opts.replace_mismatched {
                replace(path, lock, kind, params, size, opts, len)
            } else {
                Err(CreateError::Existing(err))
            }
        }
    }
}

fn describe(kind: Kind, params: &[u64; PARAM_WORDS], size: u64) -> String {
    format!("{kind} {size} B {params:?}")
}

/// Build a new file beside `path`; [`WriterFile::finish`] renames it into place.
fn replace(
    path: &Path,
    old: ExclusiveLock,
    kind: Kind,
    params: &[u64; PARAM_WORDS],
    size: u64,
    opts: &CreateOptions,
    old_size: u64,
) -> Result<WriterFile, CreateError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.new-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let lock = open_locked(&tmp, opts.mode)?;
    let region = init_fresh(&tmp, lock.file(), kind, params, size, opts.mode)?;
    // Keep the old file mapped (to mark it retired) and locked until the rename.
    let old_len = old.file().metadata().map_err(io_err(path))?.len();
    let old_region = map_rw(path, old.file(), old_size.max(HEADER_BYTES).min(old_len) & !7)?;
    Ok(WriterFile {
        path: path.to_path_buf(),
        _lock: lock,
        region,
        fresh: true,
        pending: Some((tmp, WriterFileOld { _lock: old, region: old_region })),
    })
}

/// Open `path` read-only (`O_RDONLY`, `PROT_READ`) after validating its header and size.
pub fn open_read(path: &Path, kind: Kind) -> Result<(Arc<Region>, HeaderView), OpenError> {
    let file = File::open(path).map_err(|e| OpenError::io(path.to_path_buf(), e))?;
    let len = file.metadata().map_err(|e| OpenError::io(path.to_path_buf(), e))?.len();
    if len < HEADER_BYTES {
        return Err(if len == 0 {
            OpenError::NotReady { path: path.to_path_buf() }
        } else {
            OpenError::Truncated { path: path.to_path_buf(), expected: HEADER_BYTES, actual: len }
        });
    }
    let mut bytes = vec![0u8; HEADER_BYTES as usize];
    file.read_exact_at(&mut bytes, 0).map_err(|e| OpenError::io(path.to_path_buf(), e))?;
    let view = header::validate_bytes(&bytes, len, kind).map_err(|e| OpenError::from_header(path.to_path_buf(), e))?;
    let map_len = usize::try_from(view.file_size)
        .map_err(|_| OpenError::Corrupt { path: path.to_path_buf(), reason: "file size too large".into() })?;
    // SAFETY: read-only shared mapping of `map_len <= len` bytes (checked by `validate_bytes`);
    // podcache writers never shrink files, and the region exposes the bytes only as atomics.
    let map = unsafe { memmap2::MmapOptions::new().len(map_len).map(&file) }
        .map_err(|e| OpenError::io(path.to_path_buf(), e))?;
    let region = Arc::new(Region::from_map(map));
    // The mapped header must say what the bytes we checked said.
    let again =
        header::validate(region.words(), len, kind).map_err(|e| OpenError::from_header(path.to_path_buf(), e))?;
    if again != view {
        return Err(OpenError::Corrupt { path: path.to_path_buf(), reason: "header changed while opening".into() });
    }
    Ok((region, view))
}

/// [`open_read`], retrying `NotFound` and `NotReady` until `timeout` has passed.
pub fn open_read_wait(path: &Path, kind: Kind, timeout: Duration) -> Result<(Arc<Region>, HeaderView), OpenError> {
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_micros(100);
    loop {
        match open_read(path, kind) {
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                std::thread::sleep(nap.min(deadline.saturating_duration_since(Instant::now())));
                nap = (nap * 2).min(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

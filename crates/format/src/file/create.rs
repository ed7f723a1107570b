//! The create side: open without following links, lock, re-check the inode, then create
//! (empty file or a creation that died), attach (a complete podcache file of this layout) or
//! replace (another layout, when allowed) — and refuse anything else, untouched.

use super::{path_id, stat_id, FileId};
use crate::error::{CreateError, OpenError};
use crate::header::{
    self, HeaderError, HeaderView, Kind, CREATING, HEADER_BYTES, MAGIC, PARAM_WORDS, RETIRED, WRITER_CLOSED,
    WRITER_RUNNING,
};
use crate::region::Region;
use rustix::fs::{FallocateFlags, FileType, FlockOperation, Mode, OFlags};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// How many times a writer re-opens a path that was replaced between its open and its lock
/// before giving up with [`CreateError::Replaced`].
const LOCK_ATTEMPTS: usize = 8;

/// How a writer creates its file.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Permission bits of a new file (default `0o640`: the writer's user writes, its group
    /// reads; with Kubernetes `fsGroup` every container of the Pod is in that group).
    pub mode: u32,
    /// Replace an existing podcache file whose layout or version differs, or whose header is
    /// unusable (new file, atomic rename; readers of the old file see it retired). Default:
    /// refuse with [`CreateError::LayoutMismatch`] / [`CreateError::VersionMismatch`] /
    /// [`CreateError::Existing`]. Never applies to a file that is not podcache's own
    /// ([`CreateError::Foreign`]) nor to a complete file whose ready word was lost.
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
    ///
    /// This proves nothing about a path the file was opened from: use [`lock_opened`] for that.
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

/// Lock `file`, which was opened from `path`, and check that `path` still names the locked
/// inode (not following a link).
///
/// A lock proves nothing about a path that can be renamed over: a writer that opened the path
/// just before another replaced the file (rename of a new file over it) and released the old
/// inode's lock would otherwise lock the retired inode and write into a file no reader will
/// ever open again. `Err(Replaced)` when the path names another file now (or none): open the
/// path again. `Err(Locked)` when another writer holds the lock.
pub fn lock_opened(file: File, path: &Path) -> Result<ExclusiveLock, CreateError> {
    let lock = ExclusiveLock::try_lock(file).map_err(|e| match e {
        rustix::io::Errno::WOULDBLOCK => CreateError::Locked { path: path.to_path_buf() },
        e => CreateError::Io { path: path.to_path_buf(), source: e.into() },
    })?;
    let locked = stat_id(&rustix::fs::fstat(lock.file()).map_err(|e| io_err(path)(e.into()))?);
    match path_id(path, false) {
        Ok(now) if now == locked => Ok(lock),
        Ok(_) => Err(CreateError::Replaced { path: path.to_path_buf() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CreateError::Replaced { path: path.to_path_buf() }),
        Err(e) => Err(CreateError::Io { path: path.to_path_buf(), source: e }),
    }
}

/// A file held by its single writer: the open descriptor carries the `flock`.
pub struct WriterFile {
    path: PathBuf,
    _lock: ExclusiveLock,
    region: Arc<Region>,
    fresh: bool,
    header: HeaderView,
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

    /// The file's header: for an attached file what it holds, for a fresh one what was
    /// written (with the random words of [`create_or_attach_seeded`] filled in).
    pub fn header(&self) -> &HeaderView {
        &self.header
    }

    /// Finish: bump the epoch, mark the writer running and — for a fresh file — publish it
    /// (ready, then the real magic, last) and, for a replacement, rename it into place and
    /// retire the old one. Returns the new epoch.
    pub fn finish(&mut self) -> io::Result<u64> {
        let w = self.region.words();
        let epoch = header::bump_epoch(w);
        header::set_writer_state(w, WRITER_RUNNING);
        if self.fresh {
            header::publish_ready(w);
        }
        if let Some((tmp, old)) = self.pending.take() {
            if let Err(e) = std::fs::rename(&tmp, &self.path) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            header::set_writer_state(old.region.words(), RETIRED);
            // Subscribers asleep on the old ring wake and see it retired (a futex wake on any
            // other kind's word wakes nobody).
            crate::ring::wake_readers(&old.region);
        }
        Ok(epoch)
    }

    /// Mark the file cleanly closed (the writer lock is released when `self` drops).
    pub fn close(&self) {
        header::set_writer_state(self.region.words(), WRITER_CLOSED);
    }
}

impl Drop for WriterFile {
    fn drop(&mut self) {
        // A replacement never finished: its temporary file is ours (locked) and nobody else
        // will use it.
        if let Some((tmp, _)) = self.pending.take() {
            let _ = std::fs::remove_file(tmp);
        }
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

/// A random word for a new file (the table's hash seed): `getrandom`, else `/dev/urandom`,
/// else a mix of the time, the process id and an address (unpredictable enough for a seed
/// that only spreads keys; it is never a secret on its own).
pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(8) = rustix::rand::getrandom(&mut b[..], rustix::rand::GetRandomFlags::empty()) {
        return u64::from_le_bytes(b);
    }
    if let Ok(()) = File::open("/dev/urandom").and_then(|f| f.read_exact_at(&mut b, 0)) {
        return u64::from_le_bytes(b);
    }
    let x = now_ns() ^ (u64::from(std::process::id()) << 32) ^ (&b as *const _ as u64);
    crate::hash::hash(x, &x.to_le_bytes())
}

/// Open `path` as a writer: read-write, creating it if missing, never following a link
/// (`O_NOFOLLOW`), never blocking on a FIFO; refuse anything but a regular file.
fn open_rw(path: &Path, mode: u32, exclusive: bool) -> Result<File, CreateError> {
    let mut flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    if exclusive {
        flags |= OFlags::EXCL;
    }
    let fd = rustix::fs::open(path, flags, Mode::from_bits_truncate(mode)).map_err(|e| match e {
        rustix::io::Errno::LOOP => CreateError::Foreign { path: path.to_path_buf(), reason: "a symbolic link".into() },
        rustix::io::Errno::ISDIR => CreateError::Foreign { path: path.to_path_buf(), reason: "a directory".into() },
        e => CreateError::Io { path: path.to_path_buf(), source: e.into() },
    })?;
    let file = File::from(fd);
    let st = rustix::fs::fstat(&file).map_err(|e| io_err(path)(e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(CreateError::Foreign { path: path.to_path_buf(), reason: "not a regular file".into() });
    }
    Ok(file)
}

/// Open (creating if needed) `path` and take its writer lock, on the inode the path names.
fn open_locked(path: &Path, mode: u32) -> Result<ExclusiveLock, CreateError> {
    let mut attempts = 0;
    loop {
        let file = open_rw(path, mode, false)?;
        match lock_opened(file, path) {
            Err(CreateError::Replaced { .. }) if attempts + 1 < LOCK_ATTEMPTS => attempts += 1,
            other => return other,
        }
    }
}

/// What a writer found at its path (after locking it).
enum Found {
    /// Size 0: create.
    Empty,
    /// Starts with [`CREATING`]: a creation that died; create again.
    Creating,
    /// Not podcache's: refuse, untouched.
    Foreign(String),
    /// A podcache file (real magic): attach, replace or refuse.
    Podcache(Result<HeaderView, HeaderError>),
}

fn inspect(path: &Path, file: &File, len: u64, kind: Kind) -> Result<Found, CreateError> {
    if len == 0 {
        return Ok(Found::Empty);
    }
    if len < 8 {
        return Ok(Found::Foreign(format!("{len} bytes")));
    }
    let mut bytes = vec![0u8; len.min(HEADER_BYTES) as usize];
    file.read_exact_at(&mut bytes, 0).map_err(io_err(path))?;
    let magic = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    Ok(match magic {
        CREATING => Found::Creating,
        MAGIC if len < HEADER_BYTES => {
            Found::Podcache(Err(HeaderError::Truncated { expected: HEADER_BYTES, actual: len }))
        }
        MAGIC => Found::Podcache(header::validate_bytes(&bytes, len, kind)),
        _ => Found::Foreign(format!("{len} bytes that do not start with a podcache magic")),
    })
}

/// Make `file` (empty, or a creation that died: never a published file, so no reader maps it)
/// a fresh file of `size` bytes with every header field but the ready word and the real
/// magic. The creating magic is the first thing written, into the empty file.
fn init_fresh(
    path: &Path,
    file: &File,
    kind: Kind,
    params: &[u64; PARAM_WORDS],
    size: u64,
    mode: u32,
    created_ns: u64,
) -> Result<Arc<Region>, CreateError> {
    let len = file.metadata().map_err(io_err(path))?.len();
    if len != 0 {
        // A creation that died: its magic is CREATING, so it was never published and no
        // reader maps it; emptying it is the only way to also drop pages past `size`.
        file.set_len(0).map_err(io_err(path))?;
    }
    file.write_all_at(&CREATING.to_le_bytes(), 0).map_err(io_err(path))?;
    rustix::fs::fchmod(file, Mode::from_bits_truncate(mode)).map_err(|e| io_err(path)(e.into()))?;
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
    header::write_fields(region.words(), kind, size, params, created_ns);
    Ok(region)
}

fn map_rw(path: &Path, file: &File, size: u64) -> Result<Arc<Region>, CreateError> {
    let len = usize::try_from(size).map_err(|_| CreateError::InvalidOptions(format!("file size {size} too large")))?;
    let id = stat_id(&rustix::fs::fstat(file).map_err(|e| io_err(path)(e.into()))?);
    // Creating an `MmapRaw` is safe (no reference to the bytes exists). Accessing it is sound
    // because the file is ours (we hold its writer lock), at least `size` bytes long, never
    // shrunk once published, and only ever accessed as atomic words through the region (see
    // `Region::words`); other processes change it only through atomics too.
    let map = memmap2::MmapOptions::new().len(len).map_raw(file).map_err(io_err(path))?;
    Ok(Arc::new(Region::from_raw_map(map, true, id)))
}

/// Create `path` for a structure of `kind` with the given layout, or attach to the file a
/// previous writer left there. The caller initialises (fresh) or recovers (existing) its
/// structure in [`WriterFile::region`], then calls [`WriterFile::finish`].
///
/// What is at the path decides (docs/design.md §2): nothing or an empty file → create; a file
/// starting with the "creating" magic (a creation that died) → create again; a complete
/// podcache file of this layout → attach; of another layout or version → replace if allowed,
/// else an error; a complete file whose ready word was lost → [`CreateError::Existing`]
/// (`Corrupt`), never wiped; anything else (a link, a non-regular or a foreign file) →
/// [`CreateError::Foreign`], untouched.
pub fn create_or_attach(
    path: &Path,
    kind: Kind,
    params: &[u64; PARAM_WORDS],
    size: u64,
    opts: &CreateOptions,
) -> Result<WriterFile, CreateError> {
    create(path, kind, params, None, size, opts)
}

/// [`create_or_attach`] for a layout whose parameter word `random_word` is chosen for each new
/// file (the table's hash seed): at random when `params[random_word]` is 0, else that value (a
/// fixed seed for reproducible tests and benchmarks). An existing file attaches when every
/// other parameter word and the size match: its own word is kept. Read the file's actual
/// parameters from [`WriterFile::header`].
pub fn create_or_attach_seeded(
    path: &Path,
    kind: Kind,
    params: &[u64; PARAM_WORDS],
    random_word: usize,
    size: u64,
    opts: &CreateOptions,
) -> Result<WriterFile, CreateError> {
    assert!(random_word < PARAM_WORDS, "random word {random_word} is not a parameter word");
    create(path, kind, params, Some(random_word), size, opts)
}

fn create(
    path: &Path,
    kind: Kind,
    params: &[u64; PARAM_WORDS],
    random_word: Option<usize>,
    size: u64,
    opts: &CreateOptions,
) -> Result<WriterFile, CreateError> {
    let lock = open_locked(path, opts.mode)?;
    // We hold the lock of the file at the path, so no replacement of it is under way: any
    // temporary file of one is left over by a replacer that died.
    remove_stale_temps(path);
    let file = lock.file();
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut fresh_params = *params;
    if let Some(i) = random_word.filter(|&i| params[i] == 0) {
        fresh_params[i] = random_u64();
    }
    let same_layout = |view: &HeaderView| {
        let masked = |p: &[u64; PARAM_WORDS]| {
            let mut p = *p;
            if let Some(i) = random_word {
                p[i] = 0;
            }
            p
        };
        masked(&view.params) == masked(params) && view.file_size == size
    };
    match inspect(path, file, len, kind)? {
        Found::Empty | Found::Creating => {
            let header = fresh_view(kind, &fresh_params, size);
            let region = init_fresh(path, file, kind, &fresh_params, size, opts.mode, header.created_ns)?;
            Ok(WriterFile { path: path.to_path_buf(), _lock: lock, region, fresh: true, header, pending: None })
        }
        Found::Foreign(reason) => Err(CreateError::Foreign { path: path.to_path_buf(), reason }),
        Found::Podcache(Ok(view)) if same_layout(&view) => {
            let region = map_rw(path, file, size)?;
            if header::writer_state(region.words()) == RETIRED {
                // A retired file is never written again (its readers are leaving it); one at
                // the path was moved back by something that is not podcache.
                return Err(CreateError::Existing(OpenError::Corrupt {
                    path: path.to_path_buf(),
                    reason: "a retired (replaced) file is at the path: remove it".into(),
                }));
            }
            Ok(WriterFile { path: path.to_path_buf(), _lock: lock, region, fresh: false, header: view, pending: None })
        }
        Found::Podcache(Ok(view)) if opts.replace_mismatched => {
            replace(path, lock, kind, &fresh_params, size, opts, view.file_size)
        }
        Found::Podcache(Ok(view)) => Err(CreateError::LayoutMismatch {
            path: path.to_path_buf(),
            found: describe(kind, &view.params, view.file_size),
            wanted: describe(kind, params, size),
        }),
        Found::Podcache(Err(HeaderError::ReadyLost)) => {
            Err(CreateError::Existing(OpenError::from_header(path.to_path_buf(), HeaderError::ReadyLost)))
        }
        Found::Podcache(Err(_)) if opts.replace_mismatched => replace(path, lock, kind, &fresh_params, size, opts, len),
        Found::Podcache(Err(HeaderError::VersionMismatch { found, expected })) => {
            Err(CreateError::VersionMismatch { path: path.to_path_buf(), found, expected })
        }
        Found::Podcache(Err(e)) => Err(CreateError::Existing(OpenError::from_header(path.to_path_buf(), e))),
    }
}

/// The header a fresh file gets (created now).
fn fresh_view(kind: Kind, params: &[u64; PARAM_WORDS], size: u64) -> HeaderView {
    let params_hash = header::params_hash(kind, params);
    HeaderView { kind, file_size: size, params_hash, created_ns: now_ns(), params: *params }
}

fn describe(kind: Kind, params: &[u64; PARAM_WORDS], size: u64) -> String {
    format!("{kind} {size} B {params:?}")
}

/// The prefix of the temporary files that replace `path`: `.NAME.new-`.
fn temp_prefix(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!(".{name}.new-")
}

/// Remove the temporary files a replacer of `path` left when it died (`.NAME.new-PID-XXXXXXXX`,
/// full size and in tmpfs memory). Only podcache's own are touched (that name, and empty or
/// starting with the creating magic); one is removed only if its `flock` can be taken (nobody
/// is building it) and the name still names the locked inode. Returns how many were removed.
/// Best effort: a file that cannot be opened or locked is left alone.
///
/// [`create_or_attach`] calls it while holding the lock of `path`'s file, so no replacement of
/// `path` can be under way (a replacer holds that lock until its rename).
pub fn remove_stale_temps(path: &Path) -> usize {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let prefix = temp_prefix(path);
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.strip_prefix(&prefix).is_some_and(is_temp_suffix) {
            continue;
        }
        let tmp = entry.path();
        let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let Ok(fd) = rustix::fs::open(&tmp, flags, Mode::empty()) else { continue };
        let file = File::from(fd);
        match rustix::fs::fstat(&file) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {}
            _ => continue,
        }
        // Only a file podcache left: empty (its creator died right after `O_EXCL`) or starting
        // with the creating magic (a temporary file is never published before its rename).
        let mut first = [0u8; 8];
        let ours = match file.metadata() {
            Ok(m) if m.len() == 0 => true,
            Ok(m) if m.len() >= 8 => file.read_exact_at(&mut first, 0).is_ok() && u64::from_le_bytes(first) == CREATING,
            _ => false,
        };
        if !ours {
            continue;
        }
        if let Ok(_lock) = lock_opened(file, &tmp) {
            if std::fs::remove_file(&tmp).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Whether `s` is what [`replace`] puts after the prefix: `PID-XXXXXXXX` (decimal, 8 hex digits).
fn is_temp_suffix(s: &str) -> bool {
    match s.split_once('-') {
        Some((pid, rand)) => {
            !pid.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
                && rand.len() == 8
                && rand.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
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
    // The process id alone may repeat across the containers of a Pod (each has a PID 1): a
    // random suffix, and `O_EXCL`, so a temporary file is always one this writer created.
    let tmp = path.with_file_name(format!("{}{}-{:08x}", temp_prefix(path), std::process::id(), random_u64() as u32));
    let file = open_rw(&tmp, opts.mode, true)?;
    let lock = match ExclusiveLock::try_lock(file) {
        Ok(lock) => lock,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(CreateError::Io { path: tmp, source: e.into() });
        }
    };
    let header = fresh_view(kind, params, size);
    let built = init_fresh(&tmp, lock.file(), kind, params, size, opts.mode, header.created_ns).and_then(|region| {
        // Keep the old file mapped (to mark it retired) and locked until the rename.
        let old_len = old.file().metadata().map_err(io_err(path))?.len();
        let old_region = map_rw(path, old.file(), old_size.max(HEADER_BYTES).min(old_len) & !7)?;
        Ok((region, old_region))
    });
    let (region, old_region) = match built {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    Ok(WriterFile {
        path: path.to_path_buf(),
        _lock: lock,
        region,
        fresh: true,
        header,
        pending: Some((tmp, WriterFileOld { _lock: old, region: old_region })),
    })
}

/// The identity of the file a writer holds (for tests and tools).
impl WriterFile {
    /// Device and inode of the file this writer holds.
    pub fn file_id(&self) -> Option<FileId> {
        self.region.file_id()
    }
}

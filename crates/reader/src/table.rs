//! [`TableReader`]: read-only gets from a key-value table file.

use podcache_format::codec::{Codec, CodecError, Postcard};
use podcache_format::file;
use podcache_format::header::{self, RETIRED};
use podcache_format::region::Region;
use podcache_format::table::{self, Expiry, GetError, KeyIter, ReaderCounters, SharedBytes, TableParams, TableStats};
use podcache_format::{Kind, OpenError};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A typed get failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum TypedGetError {
    /// The get failed.
    Get(GetError),
    /// The value did not decode.
    Decode(CodecError),
}

impl std::fmt::Display for TypedGetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TypedGetError::Get(e) => write!(f, "get failed: {e}"),
            TypedGetError::Decode(e) => write!(f, "decoding failed: {e}"),
        }
    }
}

impl std::error::Error for TypedGetError {}

/// A read-only view of a key-value table.
///
/// Gets are lock-free and never write shared memory: the reader hashes the key, reads the
/// bucket's slots, copies the record out with atomic word loads and validates it afterwards
/// (the segment was not recycled meanwhile, the key matches, the crc matches, the entry has not
/// expired against `CLOCK_REALTIME`). A get racing with the writer returns the old or the new
/// value, never a mix; it retries at most [`MAX_RETRIES`](crate::MAX_RETRIES)
/// times if the writer recycles the very record it reads, then fails with
/// [`GetError::Contended`]. `Send` and `Sync`: one reader (in an `Arc`) serves any number of
/// threads or tasks; its hit/miss counters are kept per thread, so sharing costs no contention.
///
/// A writer that changes the table's layout builds a new file and renames it over the path;
/// this reader keeps reading the old file (still valid, no longer written). Check now and then
/// (not on every get: [`file_replaced`](Self::file_replaced) is a system call) and
/// [`reopen`](Self::reopen).
pub struct TableReader {
    path: PathBuf,
    region: Arc<Region>,
    inner: table::RawTableReader,
}

// One reader shared across threads and tasks is part of the API.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<TableReader>();
};

impl TableReader {
    /// Open the table at `path` read-only.
    pub fn open(path: impl AsRef<Path>) -> Result<TableReader, OpenError> {
        Self::open_wait(path, Duration::ZERO)
    }

    /// Open the table at `path`, waiting up to `timeout` for the writer to create it
    /// (`Duration::MAX`: as long as it takes).
    pub fn open_wait(path: impl AsRef<Path>, timeout: Duration) -> Result<TableReader, OpenError> {
        let path = path.as_ref().to_path_buf();
        let (region, view) = file::open_read_wait(&path, Kind::Table, timeout)?;
        let params = TableParams::from_header(&view)
            .map_err(|e| OpenError::Corrupt { path: path.clone(), reason: e.to_string() })?;
        let inner = table::RawTableReader::new(Arc::clone(&region), &params);
        Ok(TableReader { path, region, inner })
    }

    /// Copy the value of `key` into `buf`: `Ok(Some(len))` if present. No allocation.
    #[inline]
    pub fn get(&self, key: &[u8], buf: &mut [u8]) -> Result<Option<usize>, GetError> {
        self.inner.get(key, buf)
    }

    /// Get every key of `keys`, calling `f(i, result)` for `keys[i]` in order, with the value
    /// in `buf` (valid until `f` returns; a buffer of [`max_value_len`](Self::max_value_len)
    /// bytes fits every value). Each result is what [`get`](Self::get) returns, but the keys
    /// are looked up [`GET_MANY_BATCH`](crate::GET_MANY_BATCH) at a time with their cache
    /// misses overlapped: on a table larger than the CPU caches a batch costs less than as many
    /// `get`s (benches/RESULTS.md has the measurement); on one that fits the caches, a little
    /// more.
    pub fn get_many<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        buf: &mut [u8],
        f: impl FnMut(usize, Result<Option<&[u8]>, GetError>),
    ) {
        self.inner.get_many(keys, buf, f)
    }

    /// The value of `key` in a new `Vec`. In a loop, [`get_into`](Self::get_into) reuses one.
    pub fn get_vec(&self, key: &[u8]) -> Result<Option<Vec<u8>>, GetError> {
        self.inner.get_vec(key)
    }

    /// Copy the value of `key` into `out`, resized to the value's length; `out`'s capacity is
    /// reused, so a loop over one `Vec` stops allocating once it held the largest value.
    /// `Ok(false)`, with `out` emptied, if `key` is absent or expired.
    pub fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, GetError> {
        self.inner.get_into(key, out)
    }

    /// [`get_into`](Self::get_into), and when the value found expires: [`Expiry::Never`] for a
    /// value put without a TTL, else [`Expiry::AtMs`] with its Unix time in milliseconds
    /// ([`Expiry::remaining`] is the TTL left). `Ok(None)`, with `out` emptied, if `key` is
    /// absent or expired.
    ///
    /// The value and the expiry are read from the same record and validated together (the
    /// record's checksum covers both), so a get racing with a put of the same key returns the
    /// old value with the old expiry or the new value with the new one, never a mix.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("t.table");
    /// # let mut w = podcache_writer::TableWriter::builder(&path).max_items(16).create().unwrap();
    /// # w.put(b"plain", b"1").unwrap();
    /// # w.put_with_ttl(b"session", b"2", std::time::Duration::from_secs(60)).unwrap();
    /// use podcache_reader::{Expiry, TableReader};
    /// let reader = TableReader::open(&path)?;
    /// let mut value = Vec::new();
    /// assert_eq!(reader.get_into_with_expiry(b"plain", &mut value)?, Some(Expiry::Never));
    /// let expiry = reader.get_into_with_expiry(b"session", &mut value)?.expect("present");
    /// let left = expiry.remaining().expect("put with a TTL");
    /// assert!(left <= std::time::Duration::from_secs(60));
    /// assert_eq!(reader.get_into_with_expiry(b"absent", &mut value)?, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_into_with_expiry(&self, key: &[u8], out: &mut Vec<u8>) -> Result<Option<Expiry>, GetError> {
        self.inner.get_into_with_expiry(key, out)
    }

    /// The largest value this table can hold: a buffer of this many bytes never gets
    /// [`GetError::BufferTooSmall`].
    pub fn max_value_len(&self) -> usize {
        self.inner.max_value_len()
    }

    /// Whether `key` is present and not expired.
    pub fn contains(&self, key: &[u8]) -> Result<bool, GetError> {
        self.inner.contains(key)
    }

    /// Zero-copy get: `f` looks at the value in shared memory; the get validates afterwards
    /// and calls `f` again if the bytes changed under it. `f` may see bytes that turn out
    /// invalid: only the result of a validated call is returned.
    pub fn get_with<R>(&self, key: &[u8], f: impl FnMut(&SharedBytes<'_>) -> R) -> Result<Option<R>, GetError> {
        self.inner.get_with(key, f)
    }

    /// Get and decode a value written with `put_typed` (postcard).
    pub fn get_typed<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, TypedGetError> {
        self.get_with_codec(&Postcard, key)
    }

    /// Get and decode a value with `codec`.
    pub fn get_with_codec<C: Codec, T: DeserializeOwned>(
        &self,
        codec: &C,
        key: &[u8],
    ) -> Result<Option<T>, TypedGetError> {
        match self.inner.get_vec(key).map_err(TypedGetError::Get)? {
            Some(bytes) => codec.decode(&bytes).map(Some).map_err(TypedGetError::Decode),
            None => Ok(None),
        }
    }

    /// Iterate over the live keys.
    pub fn keys(&self) -> KeyIter<'_> {
        self.inner.keys()
    }

    /// The writer's statistics (items, bytes, puts, deletes, evictions, expirations).
    pub fn stats(&self) -> TableStats {
        self.inner.stats()
    }

    /// This reader's own counters (hits, misses, retries).
    pub fn counters(&self) -> ReaderCounters {
        self.inner.counters()
    }

    /// The writer epoch now (1 for the creator, +1 per restarted writer).
    pub fn writer_epoch(&self) -> u64 {
        header::epoch(self.region.words())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the writer marked this file retired: it was replaced by a new file at the same
    /// path, and will not change again. One load from shared memory.
    pub fn is_retired(&self) -> bool {
        header::writer_state(self.region.words()) == RETIRED
    }

    /// Whether the path now names another file than the one this reader maps (it was replaced,
    /// or removed): one `stat` system call, for a periodic check rather than every get. Also
    /// true when the file is [retired](Self::is_retired).
    pub fn file_replaced(&self) -> bool {
        self.is_retired() || file::is_replaced(&self.region, &self.path)
    }

    /// Open the path again (waiting up to `timeout` for a file being created), replacing this
    /// reader's view with the file the path names now. This reader's counters start again.
    /// On error the reader keeps its current file.
    pub fn reopen(&mut self, timeout: Duration) -> Result<(), OpenError> {
        *self = Self::open_wait(&self.path, timeout)?;
        Ok(())
    }
}

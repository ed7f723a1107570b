//! [`TableWriter`]: the single writer of a key-value table file.

use podcache_format::codec::{Codec, CodecError, Postcard};
use podcache_format::file::{self, CreateOptions, WriterFile};
use podcache_format::table::{self, now_ms, EvictionPolicy, PutError, TableParams, TableRecovery, TableStats};
use podcache_format::{CreateError, Kind, OpenError};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The parameter word of `TableParams::to_words` that holds the hash seed.
const SEED_WORD: usize = 4;

/// Builds a [`TableWriter`]: see [`TableWriter::builder`].
#[derive(Clone, Debug)]
pub struct TableWriterBuilder {
    path: PathBuf,
    max_items: u64,
    data_bytes: Option<u64>,
    segment_size: u64,
    policy: EvictionPolicy,
    opts: CreateOptions,
    hash_seed: u64,
}

impl TableWriterBuilder {
    /// Most items the table holds (default 100,000). Putting a new key into a full table
    /// evicts (see [`EvictionPolicy`]).
    pub fn max_items(mut self, n: u64) -> Self {
        self.max_items = n;
        self
    }

    /// Bytes of the data region (default: `max_items × 256`). Each item takes
    /// [`record_size`](crate::record_size) bytes: `8 + key + value` rounded up to 4 (8 more
    /// with a TTL).
    pub fn data_bytes(mut self, bytes: u64) -> Self {
        self.data_bytes = Some(bytes);
        self
    }

    /// Bytes per segment, the unit of eviction, rounded up to a power of two; the largest value
    /// is a segment minus the record header and the key (default: the power of two at or below
    /// a 64th of the data, between 64 KiB and 4 MiB).
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Which segment to empty when the table is full (default [`EvictionPolicy::ExpiredFirst`]).
    pub fn eviction(mut self, policy: EvictionPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Fix the key hash seed of a newly created file instead of choosing one at random (the
    /// default); 0 means random. For reproducible tests and benchmarks only: whoever knows the
    /// seed can choose keys that collide. A writer attaching to an existing file keeps the
    /// file's seed whatever this says.
    pub fn hash_seed(mut self, seed: u64) -> Self {
        self.hash_seed = seed;
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

    /// Create the file, or attach to the one a previous writer left (recovering it).
    pub fn create(self) -> Result<TableWriter, CreateError> {
        let data = self.data_bytes.unwrap_or(self.max_items.saturating_mul(256));
        // The hash seed is random for each new file (chosen by `create_or_attach_seeded`), so
        // nobody can predict which keys collide in a file. It is not part of the configuration:
        // a writer restarted with the same sizes attaches to the file whatever its seed, and
        // uses the file's seed (read back from its header below).
        let wanted = TableParams::new(self.max_items, data, self.segment_size, self.hash_seed)
            .map_err(|e| CreateError::InvalidOptions(e.to_string()))?;
        let mut file = file::create_or_attach_seeded(
            &self.path,
            Kind::Table,
            &wanted.to_words(),
            SEED_WORD,
            wanted.file_size(),
            &self.opts,
        )?;
        let params = TableParams::from_header(file.header()).map_err(|e| {
            CreateError::Existing(OpenError::Corrupt { path: self.path.clone(), reason: e.to_string() })
        })?;
        debug_assert_eq!(
            TableParams { hash_seed: wanted.hash_seed, ..params },
            wanted,
            "the file has the configured layout"
        );
        let region = file.region().clone();
        let (table, recovery) = if file.is_fresh() {
            (table::RawTableWriter::create(region, &params, self.policy), None)
        } else {
            let (t, r) = table::RawTableWriter::attach(region, &params, self.policy);
            (t, Some(r))
        };
        let epoch = file.finish().map_err(|source| CreateError::Io { path: self.path.clone(), source })?;
        Ok(TableWriter { file, table, recovery, epoch, scratch: Vec::new(), file_size: params.file_size(), params })
    }
}

/// A typed put failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum TypedPutError {
    /// The value could not be encoded.
    Encode(CodecError),
    /// The encoded value was refused.
    Put(PutError<()>),
}

impl std::fmt::Display for TypedPutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TypedPutError::Encode(e) => write!(f, "encoding failed: {e}"),
            TypedPutError::Put(e) => write!(f, "put failed: {e}"),
        }
    }
}

impl std::error::Error for TypedPutError {}

fn forget_value<V>(e: PutError<V>) -> PutError<()> {
    match e {
        PutError::BadKey { len, .. } => PutError::BadKey { len, value: () },
        PutError::TooLarge { len, max, .. } => PutError::TooLarge { len, max, value: () },
        PutError::IndexFull { .. } => PutError::IndexFull { value: () },
        _ => PutError::IndexFull { value: () },
    }
}

/// The single writer of a key-value table.
///
/// Readers in other processes (`podcache_reader::TableReader`) see a put as soon as it returns;
/// a get never waits for the writer. When the table is full (items or bytes), the writer evicts
/// a whole segment: one whose items all expired if there is one, else the oldest. Dropping the
/// writer marks the file cleanly closed.
pub struct TableWriter {
    file: WriterFile,
    table: table::RawTableWriter,
    recovery: Option<TableRecovery>,
    epoch: u64,
    scratch: Vec<u8>,
    file_size: u64,
    params: TableParams,
}

impl TableWriter {
    /// Start building a writer for the table file at `path`.
    pub fn builder(path: impl AsRef<Path>) -> TableWriterBuilder {
        TableWriterBuilder {
            path: path.as_ref().to_path_buf(),
            max_items: 100_000,
            data_bytes: None,
            segment_size: 0,
            policy: EvictionPolicy::default(),
            opts: CreateOptions::default(),
            hash_seed: 0,
        }
    }

    /// Put `key` → `value` (no expiry). A refused value is handed back in the error.
    #[inline]
    pub fn put<V: AsRef<[u8]>>(&mut self, key: &[u8], value: V) -> Result<(), PutError<V>> {
        self.table.put(key, value, None)
    }

    /// Put `key` → `value`, invisible to readers once `ttl` has passed (wall clock, ms).
    pub fn put_with_ttl<V: AsRef<[u8]>>(&mut self, key: &[u8], value: V, ttl: Duration) -> Result<(), PutError<V>> {
        let expiry = now_ms().saturating_add(ttl.as_millis().min(u128::from(u64::MAX)) as u64);
        self.table.put(key, value, Some(expiry))
    }

    /// Put many pairs; stops at the first refused one and returns how many went in before it.
    pub fn put_batch<'a, I>(&mut self, pairs: I) -> Result<usize, (usize, PutError<&'a [u8]>)>
    where
        I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
    {
        let mut n = 0;
        for (k, v) in pairs {
            self.table.put(k, v, None).map_err(|e| (n, e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Encode `value` with postcard and put it.
    pub fn put_typed<T: Serialize + ?Sized>(&mut self, key: &[u8], value: &T) -> Result<(), TypedPutError> {
        self.put_with_codec(&Postcard, key, value)
    }

    /// Encode `value` with `codec` and put it.
    pub fn put_with_codec<C: Codec, T: Serialize + ?Sized>(
        &mut self,
        codec: &C,
        key: &[u8],
        value: &T,
    ) -> Result<(), TypedPutError> {
        codec.encode(value, &mut self.scratch).map_err(TypedPutError::Encode)?;
        self.table.put(key, &self.scratch[..], None).map_err(|e| TypedPutError::Put(forget_value(e)))
    }

    /// Delete `key`; returns whether it was present.
    pub fn delete(&mut self, key: &[u8]) -> bool {
        self.table.delete(key)
    }

    /// Remove every item.
    pub fn clear(&mut self) {
        self.table.clear();
    }

    /// Remove segments whose items have all expired (the sidecar calls this periodically);
    /// returns the number of items removed. Expired items are invisible to readers anyway.
    pub fn expire(&mut self) -> u64 {
        self.table.expire()
    }

    /// Statistics (also visible to readers).
    pub fn stats(&self) -> TableStats {
        self.table.stats()
    }

    /// Largest value accepted with a key of `klen` bytes (without / with a TTL).
    pub fn max_value(&self, klen: usize, with_ttl: bool) -> usize {
        self.table.max_value(klen, with_ttl)
    }

    /// Size of the file in bytes (all of it is memory on tmpfs).
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// Writer epoch: 1 for the creator, +1 for each writer that attached after it.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// What attaching found, if this writer attached to an existing file.
    pub fn recovery(&self) -> Option<TableRecovery> {
        self.recovery
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The file's table layout (sizes, and the hash seed chosen at random when it was created).
    pub fn table_params(&self) -> TableParams {
        self.params
    }
}

impl Drop for TableWriter {
    fn drop(&mut self) {
        self.file.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_word_is_the_hash_seed() {
        let p = TableParams::new(1000, 1 << 20, 0, 0x5EED).unwrap();
        assert_eq!(p.to_words()[SEED_WORD], 0x5EED);
    }

    #[test]
    fn each_new_file_has_its_own_seed_and_a_restart_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let seed = |name: &str| {
            let w = TableWriter::builder(dir.path().join(name)).max_items(100).create().unwrap();
            let seed = w.table_params().hash_seed;
            drop(w);
            seed
        };
        let (a, b) = (seed("a.table"), seed("b.table"));
        assert_ne!(a, b, "two files of one configuration have different seeds");
        assert_eq!(seed("a.table"), a, "a restarted writer attaches and keeps the file's seed");
        let w = TableWriter::builder(dir.path().join("a.table")).max_items(100).hash_seed(5).create().unwrap();
        assert_eq!(w.table_params().hash_seed, a, "an attaching writer keeps the file's seed");
        drop(w);
        let w = TableWriter::builder(dir.path().join("c.table")).max_items(100).hash_seed(5).create().unwrap();
        assert_eq!(w.table_params().hash_seed, 5, "a fixed seed for a new file");
    }
}

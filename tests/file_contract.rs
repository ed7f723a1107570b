//! The file contract of the create and open sides (docs/design.md §2), on real files in a
//! tmpfs directory and with real processes where it matters: a writer never touches a file that
//! is not empty and not podcache's own, never follows a link, never locks a file that was
//! replaced under it, cleans up after a replacer that was killed, never wipes a complete file
//! whose ready word was lost; a v3 file gives `VersionMismatch` with advice; waits without a
//! bound do not panic; a table reader notices that its file was replaced.

use podcache_format::file::{self, CreateOptions, ExclusiveLock};
use podcache_format::header::{self, HEADER_BYTES, LAYOUT_VERSION, MAGIC, PARAM_WORDS, READY};
use podcache_format::table::TableParams;
use podcache_reader::{Kind, OpenError, Subscriber, TableReader};
use podcache_tests::{
    child_role, die_with_parent, kv_key, kv_value, report, self_command, shm_tempdir, watched, ChildProc, Rng, Watchdog,
};
use podcache_writer::{CreateError, Publisher, TableWriter};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

const MAX_VALUE: usize = 200;
const PATH_ENV: &str = "PODCACHE_CONTRACT_PATH";

fn table(path: &Path) -> Result<TableWriter, CreateError> {
    TableWriter::builder(path).max_items(1000).data_bytes(1 << 18).segment_size(4096).create()
}

/// Another table layout (more items), replacing when allowed.
fn other_table(path: &Path, replace: bool) -> Result<TableWriter, CreateError> {
    TableWriter::builder(path)
        .max_items(3000)
        .data_bytes(1 << 18)
        .segment_size(4096)
        .replace_mismatched(replace)
        .create()
}

fn ring(path: &Path) -> Result<Publisher, CreateError> {
    Publisher::builder(path).capacity(1 << 16).max_message(256).create()
}

fn put_file(path: &Path, bytes: &[u8], mode: u32) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Bytes and permission bits of `path`.
fn snapshot(path: &Path) -> (Vec<u8>, u32) {
    (std::fs::read(path).unwrap(), std::fs::metadata(path).unwrap().permissions().mode())
}

fn temps_of(path: &Path) -> Vec<PathBuf> {
    let prefix = format!(".{}.new-", path.file_name().unwrap().to_string_lossy());
    let mut v: Vec<PathBuf> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

fn populated_table(path: &Path, n: u64) {
    let mut w = table(path).unwrap();
    for id in 0..n {
        w.put(&kv_key(id), kv_value(id, 1, MAX_VALUE)).unwrap();
    }
}

fn count_present(path: &Path, n: u64) -> u64 {
    let rd = TableReader::open(path).unwrap();
    (0..n).filter(|&id| rd.get_vec(&kv_key(id)).unwrap().is_some()).count() as u64
}

// ---------------------------------------------------------------------------------------------
// Foreign files and links

#[test]
fn a_writer_refuses_a_foreign_file_and_leaves_it_untouched() {
    let dir = shm_tempdir();
    let mut rng = Rng::new(0xF0_4E16);
    let mut noise = vec![0u8; 4096];
    rng.fill(&mut noise);
    noise[0] = b'#'; // never a podcache magic
    let mut zero_prefixed = vec![0u8; 8];
    zero_prefixed.extend_from_slice(b"important data after eight zero bytes");
    let cases: [(&str, Vec<u8>); 5] = [
        ("short", b"abc".to_vec()),
        ("short-zeros", vec![0u8; 100]),
        ("zero-prefixed", zero_prefixed),
        ("zero-prefixed-long", [vec![0u8; 8], noise.clone()].concat()),
        ("noise", noise),
    ];
    for (name, bytes) in cases {
        for kind in [Kind::Table, Kind::Ring] {
            let path = dir.path().join(format!("{name}.{kind}"));
            put_file(&path, &bytes, 0o600);
            let before = snapshot(&path);
            let err = match kind {
                Kind::Table => table(&path).err(),
                _ => ring(&path).err(),
            };
            match &err {
                Some(CreateError::Foreign { path: p, .. }) => assert_eq!(p, &path),
                other => panic!("{name} ({kind}): expected Foreign, got {other:?}"),
            }
            let shown = err.unwrap().to_string();
            assert!(shown.contains(&path.display().to_string()), "{shown}");
            assert_eq!(snapshot(&path), before, "{name} ({kind}): bytes and mode untouched");
            // Refused with replacing allowed too: replacing is for podcache's own files.
            assert!(matches!(other_table(&path, true), Err(CreateError::Foreign { .. })), "{name}");
            assert_eq!(snapshot(&path), before, "{name}: untouched when replacing is allowed");
            assert!(temps_of(&path).is_empty(), "{name}: no temporary file left");
        }
    }
    // A short file with podcache's magic is podcache's (truncated): refused untouched, and
    // replaced (not wiped in place) when replacing is allowed.
    let short = dir.path().join("short-podcache.table");
    put_file(&short, &[&MAGIC.to_le_bytes()[..], &[7u8; 92]].concat(), 0o600);
    let before = snapshot(&short);
    assert!(matches!(table(&short), Err(CreateError::Existing(OpenError::Truncated { .. }))));
    assert_eq!(snapshot(&short), before);
    let old = File::open(&short).unwrap();
    drop(other_table(&short, true).expect("replaced"));
    let mut kept = vec![0u8; 100];
    old.read_exact_at(&mut kept, 0).unwrap();
    assert_eq!(kept, before.0, "the old inode is not rewritten");
    assert!(TableReader::open(&short).is_ok());
    // An empty file is the one existing file a writer may initialise.
    let empty = dir.path().join("empty.table");
    put_file(&empty, &[], 0o600);
    let w = table(&empty).expect("an empty file is initialised");
    assert!(w.recovery().is_none());
}

#[test]
fn a_writer_never_follows_a_symlink_and_a_reader_does() {
    let dir = shm_tempdir();
    // A link to an empty file (which a writer would initialise if it followed the link) and a
    // dangling link (which it would create).
    let victim = dir.path().join("victim");
    put_file(&victim, &[], 0o600);
    let link = dir.path().join("planted.table");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let dangling = dir.path().join("dangling.table");
    let nowhere = dir.path().join("nowhere");
    std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();
    for path in [&link, &dangling] {
        match table(path) {
            Err(CreateError::Foreign { path: p, reason }) => assert!(p == *path && reason.contains("link"), "{reason}"),
            Err(e) => panic!("{}: expected Foreign, got {e:?}", path.display()),
            Ok(_) => panic!("{}: a writer followed a symlink", path.display()),
        }
        assert!(matches!(ring(path), Err(CreateError::Foreign { .. })));
        assert!(std::fs::symlink_metadata(path).unwrap().file_type().is_symlink(), "the link stays");
    }
    assert_eq!(snapshot(&victim), (Vec::new(), 0o100600), "the link's target is untouched");
    assert!(!nowhere.exists(), "a dangling link's target is not created");

    // A link to a real table: readers follow it (docs: file module, "Symbolic links").
    let real = dir.path().join("real.table");
    populated_table(&real, 10);
    let alias = dir.path().join("alias.table");
    std::os::unix::fs::symlink(&real, &alias).unwrap();
    assert_eq!(count_present(&alias, 10), 10);
    assert!(matches!(table(&alias), Err(CreateError::Foreign { .. })), "but writers do not");
}

// ---------------------------------------------------------------------------------------------
// The lock and the path

/// W2 opens the path; W3 replaces the file (a new file renamed over the path) and lets go of
/// the old inode's lock; W2 then locks what it opened. The lock succeeds — on a retired inode
/// nobody will open again — so locking alone must not be taken as owning the path.
#[test]
fn a_writer_never_locks_a_file_replaced_between_its_open_and_its_lock() {
    let dir = shm_tempdir();
    let path = dir.path().join("raced.table");
    drop(table(&path).unwrap());
    // W2: open (the old inode).
    let opened = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let old_ino = std::os::unix::fs::MetadataExt::ino(&opened.metadata().unwrap());
    // W3: replace it (another layout), finish, and keep writing the new file.
    let w3 = other_table(&path, true).expect("W3 replaces the file");
    assert_ne!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap()), old_ino);
    // The flock on the retired inode is free: a bare lock would succeed ...
    let dup = opened.try_clone().unwrap();
    let bare = ExclusiveLock::try_lock(dup).expect("the retired inode's lock is free");
    drop(bare);
    // ... the writer's lock refuses it.
    match file::lock_opened(opened, &path) {
        Err(CreateError::Replaced { path: p }) => assert_eq!(p, path),
        Err(e) => panic!("expected Replaced, got {e:?}"),
        Ok(_) => panic!("a writer locked the retired inode of a replaced path"),
    }
    // A writer of the path meets W3's lock, not the retired file.
    assert!(matches!(table(&path), Err(CreateError::Locked { .. })));
    drop(w3);
    // The retired file stays retired (never marked running again).
    let old = TableReader::open(&path).map(|r| r.is_retired());
    assert_eq!(old.ok(), Some(false), "the path holds W3's file");
}

// ---------------------------------------------------------------------------------------------
// Temporary files of a replacer

#[test]
fn temporary_files_of_a_killed_replacer_are_removed_by_the_next_writer() {
    if let Some(role) = child_role() {
        assert_eq!(role, "replacer");
        die_with_parent();
        let path = PathBuf::from(std::env::var(PATH_ENV).unwrap());
        // Start replacing the table with another layout, and stop before the rename.
        let p = TableParams::new(3000, 1 << 18, 4096, 7).unwrap();
        let opts = CreateOptions { replace_mismatched: true, ..CreateOptions::default() };
        let _f = file::create_or_attach(&path, Kind::Table, &p.to_words(), p.file_size(), &opts).unwrap();
        report("built", &[]);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let _watchdog = Watchdog::new("temporary files of a killed replacer", 120);
    let dir = shm_tempdir();
    let path = dir.path().join("replaced.table");
    populated_table(&path, 20);
    let mut cmd = self_command("temporary_files_of_a_killed_replacer_are_removed_by_the_next_writer", "replacer");
    cmd.env(PATH_ENV, &path);
    let mut child = ChildProc::spawn(cmd, "replacer");
    child.expect("built", Duration::from_secs(60));
    let temps = temps_of(&path);
    assert_eq!(temps.len(), 1, "the replacer built its file beside the table: {temps:?}");
    let size = std::fs::metadata(&temps[0]).unwrap().len();
    let (status, _) = child.sigkill();
    assert!(podcache_tests::killed_by_sigkill(&status), "{status:?}");
    assert_eq!(temps_of(&path), temps, "a killed replacer leaves its temporary file ({size} bytes)");

    // A temporary file some live process is building (it holds its lock) is left alone.
    let live = dir.path().join(".replaced.table.new-4242-0123abcd");
    put_file(&live, b"PODCREAT", 0o600);
    let held = ExclusiveLock::try_lock(File::open(&live).unwrap()).unwrap();
    // Files that only look like temporary files (another name pattern, or not podcache's
    // bytes) are not podcache's: never removed.
    let lookalikes = [
        (dir.path().join(".replaced.table.new-notes"), &b"PODCREAT"[..]),
        (dir.path().join(".replaced.table.new-1-deadbeef"), &b"someone's data"[..]),
    ];
    for (p, bytes) in &lookalikes {
        put_file(p, bytes, 0o600);
    }

    let w = table(&path).expect("the next writer attaches");
    assert_eq!(w.stats().items, 20, "it attached to the table the replacer never replaced");
    let mut left = vec![live.clone(), lookalikes[0].0.clone(), lookalikes[1].0.clone()];
    left.sort();
    assert_eq!(temps_of(&path), left, "the dead replacer's file is gone, the live one and the lookalikes stay");
    drop(w);
    drop(held);
    drop(table(&path).unwrap());
    left.retain(|p| p != &live);
    assert_eq!(temps_of(&path), left, "once its lock is free, the live one is removed too");
    for (p, bytes) in &lookalikes {
        assert_eq!(std::fs::read(p).unwrap(), *bytes, "{} untouched", p.display());
    }
}

// ---------------------------------------------------------------------------------------------
// The ready word

#[test]
fn a_complete_table_whose_ready_word_was_lost_is_refused_not_wiped() {
    let dir = shm_tempdir();
    let path = dir.path().join("flipped.table");
    populated_table(&path, 50);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&0u64.to_le_bytes(), 0x38).unwrap();
    let before = snapshot(&path);
    for replace in [false, true] {
        let err = TableWriter::builder(&path)
            .max_items(1000)
            .data_bytes(1 << 18)
            .segment_size(4096)
            .replace_mismatched(replace)
            .create()
            .err();
        match &err {
            Some(CreateError::Existing(OpenError::Corrupt { path: p, reason })) => {
                assert!(p == &path && reason.contains("ready"), "{reason}")
            }
            other => panic!("replace={replace}: expected Existing(Corrupt), got {other:?}"),
        }
        assert_eq!(snapshot(&path), before, "replace={replace}: the table is not wiped");
        assert!(temps_of(&path).is_empty());
    }
    // Readers report it corrupt too (no writer will ever make it ready).
    assert!(matches!(TableReader::open(&path), Err(OpenError::Corrupt { .. })));
    // Put the word back: every key is still there.
    f.write_all_at(&READY.to_le_bytes(), 0x38).unwrap();
    let w = table(&path).expect("attach");
    assert_eq!(w.stats().items, 50);
    drop(w);
    assert_eq!(count_present(&path, 50), 50);

    // Only the creating magic means "a creation that died": that file is initialised again.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&header::CREATING.to_le_bytes(), 0).unwrap();
    assert!(matches!(TableReader::open(&path), Err(OpenError::NotReady { .. })));
    let w = table(&path).expect("a creation that died is initialised again");
    assert!(w.recovery().is_none() && w.stats().items == 0);
}

// ---------------------------------------------------------------------------------------------
// Versions

/// A complete layout-3 header (as v3 code wrote it) for `kind` with `params`, then zeros.
fn v3_file(path: &Path, kind: Kind, params: &[u64; PARAM_WORDS], size: u64) {
    let vk = 3u64 | ((kind as u64) << 32);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in [kind as u64, 3].iter().chain(params.iter()) {
        for b in w.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    let fixed = [MAGIC, vk, size, h, 1_700_000_000_000_000_000];
    let mut crc = crc32fast::Hasher::new();
    fixed.iter().chain(params.iter()).for_each(|w| crc.update(&w.to_le_bytes()));
    let mut words = vec![0u64; (HEADER_BYTES / 8) as usize];
    words[..5].copy_from_slice(&fixed);
    words[5] = u64::from(crc.finalize());
    words[6] = 1; // epoch
    words[7] = READY;
    words[8..16].copy_from_slice(params);
    words[16] = 2; // closed cleanly
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes.resize(size as usize, 0);
    put_file(path, &bytes, 0o640);
}

#[test]
fn a_layout_3_file_gives_version_mismatch_with_what_to_do() {
    assert_eq!(LAYOUT_VERSION, 4);
    let dir = shm_tempdir();
    let tp = TableParams::new(1000, 1 << 18, 4096, 0x1234).unwrap();
    let table_path = dir.path().join("old.table");
    v3_file(&table_path, Kind::Table, &tp.to_words(), tp.file_size());
    let ring_path = dir.path().join("old.ring");
    v3_file(&ring_path, Kind::Ring, &[1 << 16, 256, 0, 0, 0, 0, 0, 0], HEADER_BYTES + (1 << 16) + 4096);

    let errors = [
        TableReader::open(&table_path).err().expect("a v3 table"),
        TableReader::open_wait(&table_path, Duration::from_secs(60)).err().expect("not transient"),
        Subscriber::open(&ring_path).err().expect("a v3 ring"),
    ];
    for err in errors {
        match &err {
            OpenError::VersionMismatch { found: 3, expected: 4, .. } => {}
            other => panic!("expected VersionMismatch {{ found: 3, expected: 4 }}, got {other:?}"),
        }
        assert!(!err.is_transient());
        let shown = err.to_string();
        for part in ["older podcache (layout version 3)", "reads layout version 4", "upgrade the writer", "HTTP API"] {
            assert!(shown.contains(part), "{shown:?} lacks {part:?}");
        }
    }
    let before = snapshot(&table_path);
    match table(&table_path) {
        Err(e @ CreateError::VersionMismatch { found: 3, expected: 4, .. }) => {
            let shown = e.to_string();
            assert!(
                shown.contains("older podcache (layout version 3)")
                    && shown.contains(&table_path.display().to_string())
            );
            assert!(shown.contains("replace"), "{shown}");
        }
        other => panic!("expected CreateError::VersionMismatch, got {:?}", other.err()),
    }
    assert_eq!(snapshot(&table_path), before, "untouched");
    // Allowed to replace: a new v4 file takes its place.
    drop(
        TableWriter::builder(&table_path)
            .max_items(1000)
            .data_bytes(1 << 18)
            .replace_mismatched(true)
            .create()
            .unwrap(),
    );
    assert!(TableReader::open(&table_path).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Waits without a bound

#[test]
fn waits_for_a_file_accept_duration_max() {
    let dir = shm_tempdir();
    let table_path = dir.path().join("later.table");
    let ring_path = dir.path().join("later.ring");
    let (go, wait_go) = std::sync::mpsc::channel::<()>();
    let creator = {
        let (t, r) = (table_path.clone(), ring_path.clone());
        std::thread::spawn(move || {
            wait_go.recv().unwrap();
            std::thread::sleep(Duration::from_millis(20));
            let mut w = table(&t).unwrap();
            w.put(b"k", b"v").unwrap();
            let p = ring(&r).unwrap();
            (w, p)
        })
    };
    watched("waits with Duration::MAX", 120, || {
        go.send(()).unwrap();
        let rd = TableReader::open_wait(&table_path, Duration::MAX).expect("waited until created");
        let sub = Subscriber::builder(&ring_path).wait_ready(Duration::MAX).open().expect("waited until created");
        assert!(sub.max_message() > 0);
        let _keep = creator.join().unwrap();
        assert_eq!(rd.get_vec(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    });
}

// ---------------------------------------------------------------------------------------------
// A table reader and a replaced file

#[test]
fn a_table_reader_notices_that_its_file_was_replaced() {
    let dir = shm_tempdir();
    let path = dir.path().join("moving.table");
    populated_table(&path, 5);
    let mut rd = TableReader::open(&path).unwrap();
    assert!(!rd.is_retired() && !rd.file_replaced());
    let mut w = other_table(&path, true).expect("replace");
    w.put(b"new", b"file").unwrap();
    assert!(rd.is_retired() && rd.file_replaced(), "retired and replaced");
    assert!(rd.get_vec(&kv_key(1)).unwrap().is_some(), "the old file still reads");
    rd.reopen(Duration::ZERO).unwrap();
    assert!(!rd.is_retired() && !rd.file_replaced());
    assert_eq!(rd.get_vec(b"new").unwrap().as_deref(), Some(&b"file"[..]));
    // Removed: replaced too (not retired: nobody said so).
    drop(w);
    std::fs::remove_file(&path).unwrap();
    assert!(rd.file_replaced() && !rd.is_retired());
}

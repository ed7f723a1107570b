//! Table readers never need write access (rule 1), there is one table writer per file (rule 3),
//! and opening gives typed errors for a missing, unfinished or foreign file (rule 6).

use podcache_reader::{Kind, OpenError, TableReader};
use podcache_tests::{
    child_role, die_with_parent, is_root, kv_check, kv_key, kv_value, map_perms, report, self_command, shm_tempdir,
    ChildProc, MountGuard, Watchdog,
};
use podcache_writer::{CreateError, Publisher, TableWriter};
use std::fs::OpenOptions;
use std::io::{BufRead, ErrorKind};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const MAX_VALUE: usize = 400;
const PATH_ENV: &str = "PODCACHE_RO_TABLE";
/// `nobody`/`nogroup`.
const NOBODY: u32 = 65534;
/// The typed value put under [`TYPED_KEY`].
const TYPED_KEY: &[u8] = b"typed";

fn writer(path: &Path) -> Result<TableWriter, CreateError> {
    TableWriter::builder(path).max_items(1000).data_bytes(1 << 18).segment_size(4096).create()
}

fn put_range(w: &mut TableWriter, ids: std::ops::Range<u64>, version: u64) {
    for id in ids {
        w.put(&kv_key(id), kv_value(id, version, MAX_VALUE)).expect("put");
    }
}

/// Every key of `ids` has exactly its value at `version`.
fn expect_range(rd: &TableReader, ids: std::ops::Range<u64>, version: u64) {
    let mut buf = vec![0u8; MAX_VALUE];
    for id in ids {
        let len = rd.get(&kv_key(id), &mut buf).expect("get").unwrap_or_else(|| panic!("key {id} is missing"));
        assert_eq!(kv_check(id, MAX_VALUE, &buf[..len]), Ok(version), "key {id}");
        assert_eq!(rd.get_vec(&kv_key(id)).unwrap().as_deref(), Some(&buf[..len]));
    }
}

const UNPRIVILEGED_TEST: &str = "a_table_reader_reads_a_0444_file_it_cannot_open_for_writing";

/// The file is chmod 0444 after creation. The reader runs in a child process that cannot open
/// it for writing: as root, the child first drops to `nobody` (root could write a 0444 file
/// anyway); as another user, 0444 already denies writing. The child checks that a write open
/// really fails, reads every key (plain, typed, zero-copy, `keys()`), then reads again after the
/// parent wrote more.
#[test]
fn a_table_reader_reads_a_0444_file_it_cannot_open_for_writing() {
    if child_role().as_deref() == Some("unprivileged-reader") {
        return unprivileged_reader();
    }
    let _watchdog = Watchdog::new(UNPRIVILEGED_TEST, 300);
    let dir = shm_tempdir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("ro.table");
    let mut w = writer(&path).unwrap();
    put_range(&mut w, 0..100, 1);
    w.put_typed(TYPED_KEY, &(7u32, "seven".to_string())).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();

    let mut cmd = self_command(UNPRIVILEGED_TEST, "unprivileged-reader");
    cmd.env(PATH_ENV, &path);
    let mut child = ChildProc::spawn(cmd, "unprivileged reader");
    let first = child.expect("READ1", Duration::from_secs(60));
    assert_eq!(first.get("write_open_denied"), 1);
    assert_eq!(first.get("maps_read_only"), 1, "the reader's mapping is r--s: {first:?}");
    assert_eq!(first.get("keys"), 101, "{first:?}");
    // More writes, then tell the child to look again.
    put_range(&mut w, 100..200, 1);
    put_range(&mut w, 50..60, 2);
    for id in 0..10 {
        assert!(w.delete(&kv_key(id)));
    }
    child.send("go");
    let done = child.expect("READ2", Duration::from_secs(60));
    assert_eq!((done.get("items"), done.get("epoch")), (191, 1), "{done:?}");
    let (status, _) = child.wait(Duration::from_secs(60));
    assert!(status.success(), "unprivileged reader: {status}");
}

fn unprivileged_reader() {
    die_with_parent();
    let _watchdog = Watchdog::new("unprivileged table reader", 300);
    let path = std::env::var_os(PATH_ENV).expect("table path");
    let path = Path::new(&path);
    if is_root() {
        // SAFETY: setgroups/setgid/setuid take plain values (and a null list of length 0);
        // this child process is single-threaded apart from the watchdog, which is idle.
        unsafe {
            assert_eq!(libc::setgroups(0, std::ptr::null()), 0, "setgroups");
            assert_eq!(libc::setgid(NOBODY), 0, "setgid");
            assert_eq!(libc::setuid(NOBODY), 0, "setuid");
        }
        assert!(!is_root());
    }
    let denied = OpenOptions::new().read(true).write(true).open(path).map(|_| ()).unwrap_err();
    assert_eq!(denied.kind(), ErrorKind::PermissionDenied, "{denied}");

    let rd = TableReader::open(path).expect("a table reader needs no write access");
    expect_range(&rd, 0..100, 1);
    assert_eq!(rd.get_typed::<(u32, String)>(TYPED_KEY).unwrap(), Some((7, "seven".to_string())));
    let first = rd.get_with(&kv_key(3), |v| {
        let mut b = [0u8; 8];
        v.copy_to(0, &mut b);
        u64::from_le_bytes(b)
    });
    assert_eq!(first, Ok(Some(3)), "a value starts with its key id");
    assert!(rd.contains(&kv_key(99)).unwrap() && !rd.contains(&kv_key(100)).unwrap());
    let keys: Vec<Vec<u8>> = rd.keys().collect::<Result<_, _>>().expect("keys");
    let keys = keys.len() as u64;
    assert_eq!(map_perms(path), ["r--s"], "exactly one mapping, read-only and shared");
    report("READ1", &[("write_open_denied", 1), ("maps_read_only", 1), ("keys", keys)]);

    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).expect("go");
    expect_range(&rd, 10..50, 1);
    expect_range(&rd, 50..60, 2);
    expect_range(&rd, 60..200, 1);
    for id in 0..10 {
        assert_eq!(rd.get_vec(&kv_key(id)).unwrap(), None, "deleted key {id}");
    }
    let c = rd.counters();
    assert!(c.hits >= 400 && c.misses >= 11, "{c:?}");
    report("READ2", &[("items", rd.stats().items), ("epoch", rd.writer_epoch())]);
}

/// In-process: the writer's mapping is `rw-s`; opening a reader adds exactly one `r--s`
/// mapping of the file, and dropping it removes it.
#[test]
fn the_table_reader_maps_the_file_read_only() {
    let dir = shm_tempdir();
    let path = dir.path().join("maps.table");
    let mut w = writer(&path).unwrap();
    put_range(&mut w, 0..10, 1);
    assert_eq!(map_perms(&path), ["rw-s"], "the writer's mapping");
    let rd = TableReader::open(&path).unwrap();
    let mut perms = map_perms(&path);
    perms.sort();
    assert_eq!(perms, ["r--s", "rw-s"], "one more mapping, read-only");
    expect_range(&rd, 0..10, 1);
    drop(w);
    assert_eq!(map_perms(&path), ["r--s"], "only the reader's mapping is left");
    expect_range(&rd, 0..10, 1);
    drop(rd);
    assert!(map_perms(&path).is_empty());
}

/// Like a Kubernetes `volumeMounts[].readOnly: true`: through a read-only bind mount, writes
/// fail with `EROFS` even for root, and a table reader still works (a writer does not).
#[test]
fn a_table_reader_reads_through_a_read_only_mount() {
    let dir = shm_tempdir();
    let (rw, ro) = (dir.path().join("rw"), dir.path().join("ro"));
    std::fs::create_dir(&rw).unwrap();
    std::fs::create_dir(&ro).unwrap();
    let _mount = match MountGuard::bind_read_only(&rw, &ro) {
        Ok(m) => m,
        Err(e) if !is_root() || e.kind() == ErrorKind::PermissionDenied => {
            println!("SKIP a_table_reader_reads_through_a_read_only_mount: cannot bind-mount ({e}); needs root");
            return;
        }
        Err(e) => panic!("bind mount: {e}"),
    };
    let mut w = writer(&rw.join("kv.table")).unwrap();
    put_range(&mut w, 0..50, 1);
    let ro_path = ro.join("kv.table");
    let denied = OpenOptions::new().read(true).write(true).open(&ro_path).map(|_| ()).unwrap_err();
    assert_eq!(denied.raw_os_error(), Some(libc::EROFS), "{denied}");

    let rd = TableReader::open(&ro_path).expect("reader on a read-only mount");
    expect_range(&rd, 0..50, 1);
    put_range(&mut w, 0..50, 2);
    expect_range(&rd, 0..50, 2);
    assert_eq!(map_perms(&ro_path), ["r--s"]);

    match writer(&ro_path) {
        Err(CreateError::Io { path, source }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EROFS));
            assert_eq!(path, ro_path);
        }
        Err(e) => panic!("a writer on a read-only mount: expected an I/O error, got {e}"),
        Ok(_) => panic!("a writer on a read-only mount must fail"),
    }
}

const LOCK_TEST: &str = "a_second_table_writer_is_refused_with_an_error_naming_the_file";

/// `flock` allows one writer per file: a second one, in this process or another, gets
/// `CreateError::Locked` naming the path and changes nothing; once the first is gone, the next
/// one attaches (epoch 2) and finds the data.
#[test]
fn a_second_table_writer_is_refused_with_an_error_naming_the_file() {
    if child_role().as_deref() == Some("second-writer") {
        let path = std::env::var_os(PATH_ENV).expect("table path");
        let locked = matches!(writer(Path::new(&path)), Err(CreateError::Locked { .. }));
        return report("SECOND", &[("locked", u64::from(locked))]);
    }
    let _watchdog = Watchdog::new(LOCK_TEST, 300);
    let dir = shm_tempdir();
    let path = dir.path().join("locked.table");
    let mut first = writer(&path).unwrap();
    put_range(&mut first, 0..20, 1);
    let before = std::fs::read(&path).unwrap();

    let err = writer(&path).err().expect("a second writer in this process must be refused");
    match &err {
        CreateError::Locked { path: p } => assert_eq!(p, &path),
        other => panic!("expected Locked, got {other:?}"),
    }
    let shown = err.to_string();
    assert!(shown.contains(&path.display().to_string()), "the message names the file: {shown}");

    let mut cmd = self_command(LOCK_TEST, "second-writer");
    cmd.env(PATH_ENV, &path);
    let mut child = ChildProc::spawn(cmd, "second writer");
    assert_eq!(child.expect("SECOND", Duration::from_secs(60)).get("locked"), 1, "refused in another process");
    assert!(child.wait(Duration::from_secs(60)).0.success());
    assert!(std::fs::read(&path).unwrap() == before, "the refused writers changed the file");

    let rd = TableReader::open(&path).unwrap();
    expect_range(&rd, 0..20, 1);
    assert_eq!(rd.writer_epoch(), 1);
    drop(first);
    let mut next = writer(&path).unwrap();
    assert_eq!(next.epoch(), 2);
    let rec = next.recovery().expect("attached");
    assert_eq!((rec.items, rec.cleared_slots, rec.damaged_segments), (20, 0, 0));
    put_range(&mut next, 20..30, 1);
    expect_range(&rd, 0..30, 1);
    assert_eq!(rd.writer_epoch(), 2);
}

#[test]
fn open_wait_waits_for_a_table_created_later() {
    let dir = shm_tempdir();
    let path = dir.path().join("later.table");
    assert!(!path.exists());
    let (go, wait_go) = std::sync::mpsc::channel::<()>();
    let (done, wait_done) = std::sync::mpsc::channel::<()>();
    let creator = {
        let path = path.clone();
        std::thread::spawn(move || {
            wait_go.recv().unwrap();
            let mut w = writer(&path).unwrap();
            put_range(&mut w, 0..3, 1);
            // Keep the writer until the reader has read.
            wait_done.recv().unwrap();
        })
    };
    go.send(()).unwrap();
    let rd = TableReader::open_wait(&path, Duration::from_secs(60)).expect("waited for the file");
    // The reader may have opened the file before the first put: poll for the keys.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !rd.contains(&kv_key(2)).unwrap() {
        assert!(std::time::Instant::now() < deadline, "the keys never appeared");
        std::thread::yield_now();
    }
    expect_range(&rd, 0..3, 1);
    done.send(()).unwrap();
    creator.join().unwrap();
}

#[test]
fn open_wait_waits_for_an_empty_file_to_be_initialised() {
    let dir = shm_tempdir();
    let path = dir.path().join("empty-then-ready.table");
    std::fs::File::create(&path).unwrap();
    assert!(matches!(TableReader::open(&path), Err(OpenError::NotReady { .. })));
    let (go, wait_go) = std::sync::mpsc::channel::<()>();
    let (done, wait_done) = std::sync::mpsc::channel::<()>();
    let creator = {
        let path = path.clone();
        std::thread::spawn(move || {
            wait_go.recv().unwrap();
            let mut w = writer(&path).unwrap();
            assert!(w.recovery().is_none(), "an empty file is initialised, not recovered");
            put_range(&mut w, 0..3, 1);
            wait_done.recv().unwrap();
        })
    };
    go.send(()).unwrap();
    let rd = TableReader::open_wait(&path, Duration::from_secs(60)).expect("waited until ready");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !rd.contains(&kv_key(2)).unwrap() {
        assert!(std::time::Instant::now() < deadline, "the keys never appeared");
        std::thread::yield_now();
    }
    expect_range(&rd, 0..3, 1);
    done.send(()).unwrap();
    creator.join().unwrap();
}

#[test]
fn opening_a_missing_unfinished_or_foreign_table_gives_typed_errors() {
    let dir = shm_tempdir();
    let missing = dir.path().join("missing.table");
    for result in [TableReader::open(&missing), TableReader::open_wait(&missing, Duration::from_millis(30))] {
        let err = result.err().expect("no file");
        match &err {
            OpenError::NotFound { path } => assert_eq!(path, &missing),
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert!(err.is_transient());
        assert!(err.to_string().contains(&missing.display().to_string()), "{err}");
    }

    let empty = dir.path().join("empty.table");
    std::fs::File::create(&empty).unwrap();
    for result in [TableReader::open(&empty), TableReader::open_wait(&empty, Duration::from_millis(30))] {
        let err = result.err().expect("empty file");
        assert!(matches!(&err, OpenError::NotReady { path } if path == &empty), "{err:?}");
        assert!(err.is_transient());
        assert!(err.to_string().contains(&empty.display().to_string()), "{err}");
    }

    // The creating magic still in place: the creator died half-way (v4: a complete magic
    // without the ready word is damage, see tests/file_contract.rs).
    let unfinished = dir.path().join("unfinished.table");
    let mut w = writer(&unfinished).unwrap();
    put_range(&mut w, 0..3, 1);
    drop(w);
    let mut bytes = std::fs::read(&unfinished).unwrap();
    bytes[..8].copy_from_slice(b"PODCREAT");
    std::fs::write(&unfinished, &bytes).unwrap();
    let err = TableReader::open(&unfinished).err().expect("not ready");
    assert!(matches!(&err, OpenError::NotReady { path } if path == &unfinished), "{err:?}");

    // A ring is not a table: WrongKind at once, also when waiting (it is not transient).
    let ring = dir.path().join("events.ring");
    let mut p = Publisher::builder(&ring).capacity(1 << 16).create().unwrap();
    p.publish(b"not a table").unwrap();
    for result in [TableReader::open(&ring), TableReader::open_wait(&ring, Duration::from_secs(60))] {
        let err = result.err().expect("a ring is not a table");
        match &err {
            OpenError::WrongKind { path, found, expected } => {
                assert_eq!((path, *found, *expected), (&ring, 1, Kind::Table));
            }
            other => panic!("expected WrongKind, got {other:?}"),
        }
        assert!(!err.is_transient());
    }

    // A directory is not a table: an error, not a panic.
    let err = TableReader::open(dir.path()).err().expect("a directory is not a table");
    assert!(!err.is_transient(), "{err:?}");
}

//! Subscribers never need write access (rule 1), there is one publisher per file (rule 3),
//! and opening gives typed errors for a missing or unfinished file (rule 6).

use podcache_reader::{OpenError, Subscriber};
use podcache_tests::{
    child_role, die_with_parent, is_root, map_perms, payload_into, payload_matches, report, self_command, shm_tempdir,
    ChildProc, MountGuard, Watchdog,
};
use podcache_writer::{CreateError, Publisher};
use std::fs::OpenOptions;
use std::io::{BufRead, ErrorKind};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const MAX_MSG: usize = 500;

fn publisher(path: &Path) -> Publisher {
    Publisher::builder(path).capacity(1 << 16).max_message(MAX_MSG as u32).create().expect("create ring")
}

fn publish_range(p: &mut Publisher, seqs: std::ops::RangeInclusive<u64>) {
    let mut buf = Vec::new();
    for seq in seqs {
        payload_into(seq, MAX_MSG, &mut buf);
        assert_eq!(p.publish(&buf).expect("publish"), seq);
    }
}

/// Receive messages `seqs` in order, checking their bytes.
fn expect_range(sub: &mut Subscriber, seqs: std::ops::RangeInclusive<u64>) {
    let mut buf = vec![0u8; sub.max_message()];
    for seq in seqs {
        let m = sub.recv_timeout(&mut buf, Duration::from_secs(30)).unwrap().expect("a message within 30 s");
        assert_eq!((m.seq, m.lost), (seq, 0));
        assert!(payload_matches(seq, MAX_MSG, &buf[..m.len]), "message {seq} has the wrong bytes");
    }
}

const UNPRIVILEGED_TEST: &str = "a_subscriber_reads_a_0444_file_it_cannot_open_for_writing";
const PATH_ENV: &str = "PODCACHE_RO_RING";
/// `nobody`/`nogroup`.
const NOBODY: u32 = 65534;

/// The file is chmod 0444 after creation. The subscriber runs in a child process that cannot
/// open the file for writing: as root, the child first drops to `nobody` (root could write a
/// 0444 file anyway, so a plain chmod would prove nothing); as another user, 0444 already
/// denies writing. The child checks that a write open really fails, then subscribes, reads,
/// and sleeps on the futex in its read-only mapping while the parent publishes more.
#[test]
fn a_subscriber_reads_a_0444_file_it_cannot_open_for_writing() {
    if child_role().as_deref() == Some("unprivileged-subscriber") {
        return unprivileged_subscriber();
    }
    let _watchdog = Watchdog::new(UNPRIVILEGED_TEST, 300);
    let dir = shm_tempdir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("ro.ring");
    let mut p = publisher(&path);
    publish_range(&mut p, 1..=100);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();

    let mut cmd = self_command(UNPRIVILEGED_TEST, "unprivileged-subscriber");
    cmd.env(PATH_ENV, &path);
    let mut child = ChildProc::spawn(cmd, "unprivileged subscriber");
    let first = child.expect("READ100", Duration::from_secs(60));
    assert_eq!(first.get("write_open_denied"), 1);
    assert_eq!(first.get("maps_read_only"), 1, "the subscriber's mapping is r--s: {first:?}");
    child.send("go");
    // The child is (or soon will be) asleep in recv_timeout: these wake it.
    publish_range(&mut p, 101..=200);
    let done = child.expect("READ200", Duration::from_secs(60));
    assert_eq!(done.get("lost"), 0);
    let (status, _) = child.wait(Duration::from_secs(60));
    assert!(status.success(), "unprivileged subscriber: {status}");
}

fn unprivileged_subscriber() {
    die_with_parent();
    let _watchdog = Watchdog::new("unprivileged subscriber", 300);
    let path = std::env::var_os(PATH_ENV).expect("ring path");
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

    let mut sub = Subscriber::open(path).expect("a subscriber needs no write access");
    expect_range(&mut sub, 1..=100);
    let perms = map_perms(path);
    assert_eq!(perms, ["r--s"], "exactly one mapping, read-only and shared");
    report("READ100", &[("write_open_denied", 1), ("maps_read_only", 1)]);
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).expect("go");
    expect_range(&mut sub, 101..=200);
    report("READ200", &[("lost", sub.lost())]);
}

/// In-process: the publisher's mapping is `rw-s`; opening a subscriber adds exactly one `r--s`
/// mapping of the file (`PROT_READ`, shared), and dropping it removes it.
#[test]
fn the_subscriber_maps_the_file_read_only() {
    let dir = shm_tempdir();
    let path = dir.path().join("maps.ring");
    let mut p = publisher(&path);
    publish_range(&mut p, 1..=10);
    assert_eq!(map_perms(&path), ["rw-s"], "the publisher's mapping");
    let mut sub = Subscriber::open(&path).unwrap();
    let mut perms = map_perms(&path);
    perms.sort();
    assert_eq!(perms, ["r--s", "rw-s"], "one more mapping, read-only");
    expect_range(&mut sub, 1..=10);
    drop(p);
    assert_eq!(map_perms(&path), ["r--s"], "only the subscriber's mapping is left");
    drop(sub);
    assert!(map_perms(&path).is_empty());
}

/// Like a Kubernetes `volumeMounts[].readOnly: true`: through a read-only bind mount, writes
/// fail with `EROFS` even for root, and a subscriber still works (a publisher does not).
#[test]
fn a_subscriber_reads_through_a_read_only_mount() {
    let dir = shm_tempdir();
    let (rw, ro) = (dir.path().join("rw"), dir.path().join("ro"));
    std::fs::create_dir(&rw).unwrap();
    std::fs::create_dir(&ro).unwrap();
    let _mount = match MountGuard::bind_read_only(&rw, &ro) {
        Ok(m) => m,
        Err(e) if !is_root() || e.kind() == ErrorKind::PermissionDenied => {
            println!("SKIP a_subscriber_reads_through_a_read_only_mount: cannot bind-mount ({e}); needs root");
            return;
        }
        Err(e) => panic!("bind mount: {e}"),
    };
    let mut p = publisher(&rw.join("events.ring"));
    publish_range(&mut p, 1..=50);
    let ro_path = ro.join("events.ring");
    let denied = OpenOptions::new().read(true).write(true).open(&ro_path).map(|_| ()).unwrap_err();
    assert_eq!(denied.raw_os_error(), Some(libc::EROFS), "{denied}");

    let mut sub = Subscriber::open(&ro_path).expect("subscriber on a read-only mount");
    expect_range(&mut sub, 1..=50);
    publish_range(&mut p, 51..=60);
    expect_range(&mut sub, 51..=60);
    assert_eq!(map_perms(&ro_path), ["r--s"]);

    match Publisher::builder(&ro_path).capacity(1 << 16).max_message(MAX_MSG as u32).create() {
        Err(CreateError::Io { path, source }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EROFS));
            assert_eq!(path, ro_path);
        }
        Err(e) => panic!("a publisher on a read-only mount: expected an I/O error, got {e}"),
        Ok(_) => panic!("a publisher on a read-only mount must fail"),
    }
}

const LOCK_TEST: &str = "a_second_publisher_is_refused_with_an_error_naming_the_file";

/// `flock` allows one publisher per file: a second one, in this process or another, gets
/// `CreateError::Locked` naming the path; once the first is gone, the next one attaches.
#[test]
fn a_second_publisher_is_refused_with_an_error_naming_the_file() {
    if child_role().as_deref() == Some("second-publisher") {
        let path = std::env::var_os(PATH_ENV).expect("ring path");
        let locked = matches!(publisher_result(Path::new(&path)), Err(CreateError::Locked { .. }));
        return report("SECOND", &[("locked", u64::from(locked))]);
    }
    let _watchdog = Watchdog::new(LOCK_TEST, 300);
    let dir = shm_tempdir();
    let path = dir.path().join("locked.ring");
    let mut first = publisher(&path);
    publish_range(&mut first, 1..=5);

    let err = publisher_result(&path).err().expect("a second publisher in this process must be refused");
    match &err {
        CreateError::Locked { path: p } => assert_eq!(p, &path),
        other => panic!("expected Locked, got {other:?}"),
    }
    let shown = err.to_string();
    assert!(shown.contains(&path.display().to_string()), "the message names the file: {shown}");

    let mut cmd = self_command(LOCK_TEST, "second-publisher");
    cmd.env(PATH_ENV, &path);
    let mut child = ChildProc::spawn(cmd, "second publisher");
    assert_eq!(child.expect("SECOND", Duration::from_secs(60)).get("locked"), 1, "refused in another process");
    assert!(child.wait(Duration::from_secs(60)).0.success());

    // The refused attempts changed nothing.
    let mut sub = Subscriber::open(&path).unwrap();
    expect_range(&mut sub, 1..=5);
    assert_eq!(sub.writer_epoch(), 1);
    drop(first);
    let mut next = publisher(&path);
    assert_eq!((next.epoch(), next.next_seq()), (2, 6));
    publish_range(&mut next, 6..=6);
    expect_range(&mut sub, 6..=6);
    assert!(sub.take_restarted());
}

/// Dropping a publisher releases the lock even while a forked child still holds a copy of its
/// descriptor (as any `Command::spawn` does until its `exec`): the lock belongs to the open file
/// description, so closing our copy alone would leave it held.
#[test]
fn a_dropped_publisher_releases_the_lock_while_a_forked_child_holds_its_descriptor() {
    let dir = shm_tempdir();
    let path = dir.path().join("forked.ring");
    let first = publisher(&path);
    // SAFETY: the child calls only async-signal-safe functions (`pause`, `_exit`) and is killed
    // below; the parent keeps running as before.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
    if child == 0 {
        // SAFETY: see above.
        unsafe {
            libc::pause();
            libc::_exit(0);
        }
    }
    drop(first);
    let second = publisher_result(&path);
    // SAFETY: `child` is our own child's pid; reaping it leaves no zombie.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    let second = second.expect("the lock is free once the first publisher is dropped");
    assert_eq!(second.epoch(), 2);
}

fn publisher_result(path: &Path) -> Result<Publisher, CreateError> {
    Publisher::builder(path).capacity(1 << 16).max_message(MAX_MSG as u32).create()
}

#[test]
fn wait_ready_waits_for_a_file_created_later() {
    let dir = shm_tempdir();
    let path = dir.path().join("later.ring");
    assert!(!path.exists());
    let (go, wait_go) = std::sync::mpsc::channel::<()>();
    let (done, wait_done) = std::sync::mpsc::channel::<()>();
    let creator = {
        let path = path.clone();
        std::thread::spawn(move || {
            wait_go.recv().unwrap();
            let mut p = publisher(&path);
            publish_range(&mut p, 1..=3);
            // Keep the publisher until the subscriber has read.
            wait_done.recv().unwrap();
        })
    };
    go.send(()).unwrap();
    let mut sub = Subscriber::builder(&path).wait_ready(Duration::from_secs(60)).open().expect("waited for the file");
    expect_range(&mut sub, 1..=3);
    done.send(()).unwrap();
    creator.join().unwrap();
}

#[test]
fn wait_ready_waits_for_an_empty_file_to_be_initialised() {
    let dir = shm_tempdir();
    let path = dir.path().join("empty-then-ready.ring");
    std::fs::File::create(&path).unwrap();
    assert!(matches!(Subscriber::open(&path), Err(OpenError::NotReady { .. })));
    let (go, wait_go) = std::sync::mpsc::channel::<()>();
    let (done, wait_done) = std::sync::mpsc::channel::<()>();
    let creator = {
        let path = path.clone();
        std::thread::spawn(move || {
            wait_go.recv().unwrap();
            let mut p = publisher(&path);
            assert!(p.recovery().is_none(), "an empty file is initialised, not recovered");
            publish_range(&mut p, 1..=3);
            wait_done.recv().unwrap();
        })
    };
    go.send(()).unwrap();
    let mut sub = Subscriber::builder(&path).wait_ready(Duration::from_secs(60)).open().expect("waited until ready");
    expect_range(&mut sub, 1..=3);
    done.send(()).unwrap();
    creator.join().unwrap();
}

#[test]
fn opening_a_missing_or_unfinished_file_gives_not_found_or_not_ready() {
    let dir = shm_tempdir();
    let missing = dir.path().join("missing.ring");
    for result in
        [Subscriber::open(&missing), Subscriber::builder(&missing).wait_ready(Duration::from_millis(30)).open()]
    {
        let err = result.err().expect("no file");
        match &err {
            OpenError::NotFound { path } => assert_eq!(path, &missing),
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert!(err.is_transient());
        assert!(err.to_string().contains(&missing.display().to_string()), "{err}");
    }

    let empty = dir.path().join("empty.ring");
    std::fs::File::create(&empty).unwrap();
    for result in [Subscriber::open(&empty), Subscriber::builder(&empty).wait_ready(Duration::from_millis(30)).open()] {
        let err = result.err().expect("empty file");
        assert!(matches!(&err, OpenError::NotReady { path } if path == &empty), "{err:?}");
        assert!(err.to_string().contains(&empty.display().to_string()), "{err}");
    }

    // The creating magic still in place: the creator died half-way (v4: a complete magic
    // without the ready word is damage, see tests/file_contract.rs).
    let unfinished = dir.path().join("unfinished.ring");
    let mut p = publisher(&unfinished);
    publish_range(&mut p, 1..=3);
    drop(p);
    let mut bytes = std::fs::read(&unfinished).unwrap();
    bytes[..8].copy_from_slice(b"PODCREAT");
    std::fs::write(&unfinished, &bytes).unwrap();
    let err = Subscriber::open(&unfinished).err().expect("not ready");
    assert!(matches!(&err, OpenError::NotReady { path } if path == &unfinished), "{err:?}");

    // A directory is not a ring: an I/O or corruption error, not a panic.
    let err = Subscriber::open(dir.path()).err().expect("a directory is not a ring");
    println!("opening a directory: {err}");
}

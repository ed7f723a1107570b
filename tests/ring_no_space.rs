//! A volume too small for a ring fails the creator at once with `CreateError::NoSpace`
//! (the file is preallocated), never a reader later (rule 5).

use podcache_reader::Subscriber;
use podcache_tests::{is_root, shm_tempdir, MountGuard};
use podcache_writer::{CreateError, Publisher};
use std::io::ErrorKind;

#[test]
fn creating_a_ring_larger_than_the_volume_fails_with_no_space() {
    let dir = shm_tempdir();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    // A 1 MiB tmpfs: like an `emptyDir: {medium: Memory, sizeLimit: 1Mi}`.
    let _mount = match MountGuard::tmpfs(&mnt, "size=1m") {
        Ok(m) => m,
        Err(e) if !is_root() || e.kind() == ErrorKind::PermissionDenied => {
            println!("SKIP creating_a_ring_larger_than_the_volume_fails_with_no_space: cannot mount a tmpfs ({e}); needs root");
            return;
        }
        Err(e) => panic!("mount tmpfs: {e}"),
    };
    let path = mnt.join("big.ring");
    let capacity = 16u64 << 20;
    let err = Publisher::builder(&path).capacity(capacity).create().err().expect("16 MiB do not fit in 1 MiB");
    let shown = err.to_string();
    println!("{shown}");
    match &err {
        CreateError::NoSpace { path: p, needed, available } => {
            assert_eq!(p, &path);
            assert_eq!(*needed, capacity + 4096, "the whole file: header page plus ring");
            let available = available.expect("statvfs of a tmpfs works");
            assert!(available <= 1 << 20, "at most the volume's size is free: {available}");
            assert!(shown.contains(&needed.to_string()), "the message gives the size needed: {shown}");
            assert!(shown.contains(&available.to_string()), "the message gives the space free: {shown}");
            assert!(shown.contains(&path.display().to_string()), "the message names the file: {shown}");
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    // Nothing a reader could take for a ring is left behind.
    assert!(Subscriber::open(&path).is_err());

    // The volume itself works: a ring that fits is created, and the failed path can be reused.
    let mut small = Publisher::builder(&path).capacity(256 << 10).create().expect("a 256 KiB ring fits in 1 MiB");
    small.publish(b"fits").unwrap();
    let mut sub = Subscriber::open(&path).unwrap();
    let (m, bytes) = sub.recv_vec(std::time::Duration::from_secs(1)).unwrap().unwrap();
    assert_eq!((m.seq, &bytes[..]), (1, &b"fits"[..]));
}

//! A hostile ring file: open it with `Subscriber` from the oldest and from the newest message
//! and receive a bounded number of times. Any `Err` is fine; a panic, an out-of-bounds access,
//! a hang or a huge allocation is a bug.

#![no_main]

use libfuzzer_sys::fuzz_target;
use podcache_format::Kind;
use podcache_fuzz::{build_file, scratch_path, write_fresh, MAX_INPUT};
use podcache_reader::{Start, Subscriber};
use podcache_writer::Publisher;
use std::sync::OnceLock;
use std::time::Duration;

/// Receives per subscriber: more than the valid ring holds, so the end of the ring is reached.
const RECEIVES: usize = 64;

/// A real ring file, written once per process: messages of many sizes, wrapped around the ring
/// several times (so it holds padding markers and a head past zero).
fn valid_ring() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = scratch_path("valid.ring");
        let _ = std::fs::remove_file(&path);
        {
            let mut p =
                Publisher::builder(&path).capacity(4096).max_message(512).create().expect("create the valid ring");
            for i in 0..100u32 {
                let len = 1 + (i as usize * 37) % 300;
                let msg: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
                p.publish(&msg).expect("publish");
            }
        }
        let bytes = std::fs::read(&path).expect("read the valid ring");
        let _ = std::fs::remove_file(&path);
        bytes
    })
}

fuzz_target!(|input: &[u8]| {
    if input.len() > MAX_INPUT {
        return;
    }
    let file = build_file(input, valid_ring(), Kind::Ring);
    let path = scratch_path("fuzz.ring");
    write_fresh(&path, &file);
    for start in [Start::Oldest, Start::Newest] {
        let Ok(mut sub) = Subscriber::builder(&path).start(start).open() else {
            return;
        };
        // A buffer of max_message is what the docs tell users to allocate: the file must not
        // be able to make that larger than the file itself.
        let max = sub.max_message();
        assert!(max <= file.len(), "max_message {max} claims more than the {} B file", file.len());
        let mut buf = vec![0u8; max];
        let mut small = [0u8; 8];
        for i in 0..RECEIVES {
            let got = if i % 7 == 3 { sub.try_recv(&mut small) } else { sub.try_recv(&mut buf) };
            match got {
                Ok(Some(m)) => assert!(m.len <= max, "a message longer than max_message"),
                Ok(None) => break,
                Err(_) => {}
            }
        }
        // The waiting receives must return at once with a zero timeout whatever the file says
        // (its wake policy included).
        let _ = sub.recv_timeout(&mut buf, Duration::ZERO);
        let _ = sub.recv_spin(&mut buf, Duration::ZERO);
        let _ = sub.recv_vec(Duration::ZERO);
        let _ = sub.lost();
        let _ = sub.laps();
        let _ = sub.backlog_bytes();
        let _ = sub.writer_span();
        let _ = sub.writer_next_seq();
        let _ = sub.writer_epoch();
        let _ = sub.take_restarted();
        let _ = sub.is_retired();
        sub.skip_to_newest();
        let _ = sub.try_recv(&mut buf);
    }
});

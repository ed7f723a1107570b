//! A seeded random schedule of publishes and receives in one thread, on tiny rings where every
//! message size up to the largest (a quarter of the ring) and the padding at the ring's end
//! come up constantly: the consumer never loses a message, whatever the schedule, and the
//! publisher only ever stops at the window.

use podcache_stream::{PublishError, StreamConsumer, StreamPublisher};
use std::time::Duration;

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn run(capacity: u64, max: usize, seed: u64) {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = dir.path().join("model.ring");
    let mut publisher =
        StreamPublisher::builder(&path).capacity(capacity).max_message(max as u32).consumers(["c"]).create().unwrap();
    let mut consumer = StreamConsumer::builder(&path, "c").open().unwrap();
    let mut rng = seed;
    let len_of = |seq: u64| 1 + (splitmix(&mut seq.clone()) % max as u64) as usize;
    let mut msg = vec![0u8; max];
    let mut buf = vec![0u8; max];
    let (total, mut received) = (10_000u64, 0u64);
    while received < total {
        // Publish a random number of messages, stopping early at the window.
        for _ in 0..splitmix(&mut rng) % 16 {
            let seq = publisher.next_seq();
            if seq > total {
                break;
            }
            let len = len_of(seq);
            msg[..len].fill(seq as u8);
            msg[0..8.min(len)].copy_from_slice(&seq.to_le_bytes()[..8.min(len)]);
            match publisher.publish(&msg[..len], Duration::ZERO) {
                Ok(s) => assert_eq!(s, seq),
                Err(PublishError::Timeout { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        // Receive a random number of messages.
        for _ in 0..splitmix(&mut rng) % 16 {
            let Some(m) = consumer.try_recv(&mut buf).unwrap() else { break };
            received += 1;
            assert_eq!((m.seq, m.lost), (received, 0), "seed {seed}, capacity {capacity}, max {max}");
            assert_eq!(m.len, len_of(m.seq));
            let mut want = vec![m.seq as u8; m.len];
            want[0..8.min(m.len)].copy_from_slice(&m.seq.to_le_bytes()[..8.min(m.len)]);
            assert_eq!(&buf[..m.len], &want[..], "message {} damaged", m.seq);
        }
    }
    assert_eq!(publisher.next_seq(), total + 1);
}

#[test]
fn no_schedule_of_publishes_and_receives_loses_a_message() {
    let base = std::env::var("PODCACHE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED_u64);
    eprintln!("seed base {base} (PODCACHE_TEST_SEED)");
    let mut n = 0;
    for capacity in [256u64, 1024, 4096, 65536] {
        // The largest message a ring allows (the padding margin dominates), and small ones
        // (the lease step dominates).
        let largest = (capacity / 4 - 16) as usize;
        for max in [largest, 64.min(largest), 8] {
            for _ in 0..3 {
                n += 1;
                run(capacity, max, base.wrapping_add(n));
            }
        }
    }
}

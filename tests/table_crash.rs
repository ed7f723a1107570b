//! Real crash test of the key-value table: writer processes are `SIGKILL`ed at random points
//! while two reader processes get keys.
//!
//! The test binary re-executes itself: one child writer at a time creates (first) or attaches
//! to (every later one) the table on `/dev/shm` and runs a seeded mix of `put`,
//! `put_with_ttl` (an hour, already expired, or tens of milliseconds), `delete`, `put_batch`,
//! `expire` and (rarely) `clear`, with values that carry their key, a version (writer epoch,
//! counter, TTL class) and their own checksum. The parent kills each writer after a random
//! delay (0..3 ms after it reported being attached; one in six is killed at a random point of
//! its start-up instead, possibly inside the recovery) and starts the next, which must attach,
//! find nothing to repair that a crash cannot leave, and bump the epoch by exactly one per
//! writer that got that far. Two reader processes get random keys the whole time with `get`,
//! `get_vec`, `get_with`, `contains`, `get_many` (random batches) and now and then `keys`, and
//! check every value: a whole value of that key (never torn or mixed), never one put already
//! expired, and a key's versions never go back. At the end the parent attaches a last writer and checks that the statistics
//! agree with what a reader finds.
//!
//! `PODCACHE_CRASH_KILLS` sets the number of kills (default 400; the ring crash test reads it
//! too); `PODCACHE_TEST_SEED` replays a run.

use podcache_reader::TableReader;
use podcache_tests::{
    child_role, die_with_parent, env_u64, killed_by_sigkill, kv_check, kv_key, kv_key_id, kv_value, kv_value_into,
    random_get, report, self_command, test_seed, ChildProc, Report, Rng, Watchdog,
};
use podcache_writer::TableWriter;
use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TEST: &str = "killed_table_writers_never_hand_readers_a_torn_value";
const PATH_ENV: &str = "PODCACHE_CRASH_TABLE";
const SEED_ENV: &str = "PODCACHE_CRASH_CHILD_SEED";
const NKEYS: u64 = 3000;
const MAX_ITEMS: u64 = 2000;
const SEGMENT: u64 = 4096;
/// 64 segments of 4 KiB: the writer evicts and recycles segments all the time.
const DATA_BYTES: u64 = 64 * SEGMENT;
const MAX_VALUE: usize = 600;
const WATCHDOG_SECS: u64 = 600;

/// Versions are `epoch << 32 | counter << 2 | class`: unique across writers, increasing.
const CLASS_PLAIN: u64 = 0;
const CLASS_LONG_TTL: u64 = 1;
/// Put with a TTL of 0: expired when put; no reader may ever get it.
const CLASS_EXPIRED: u64 = 2;
const CLASS_SHORT_TTL: u64 = 3;

fn builder(path: &Path) -> podcache_writer::TableWriterBuilder {
    TableWriter::builder(path).max_items(MAX_ITEMS).data_bytes(DATA_BYTES).segment_size(SEGMENT)
}

#[test]
fn killed_table_writers_never_hand_readers_a_torn_value() {
    match child_role().as_deref() {
        Some("writer") => return writer_child(),
        Some("reader") => return reader_child(),
        Some(other) => panic!("unknown role {other}"),
        None => {}
    }
    let seed = test_seed(TEST);
    let kills = env_u64("PODCACHE_CRASH_KILLS", 400);
    assert!(kills >= 1, "PODCACHE_CRASH_KILLS must be at least 1");
    let _watchdog = Watchdog::new(TEST, WATCHDOG_SECS);
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let dir = podcache_tests::shm_tempdir();
    let path = dir.path().join("crash.table");

    // Readers first: they wait for the file to be created.
    let mut readers: Vec<ChildProc> = (0..2)
        .map(|i| {
            let mut cmd = self_command(TEST, "reader");
            cmd.env(PATH_ENV, &path).env(SEED_ENV, rng.next_u64().to_string());
            ChildProc::spawn(cmd, &format!("reader {i}"))
        })
        .collect();

    let mut restarts = Restarts::default();
    let (mut early_kills, mut reported) = (0u64, 0u64);
    let mut ready_latency = Duration::from_millis(5);
    for i in 0..kills {
        let mut cmd = self_command(TEST, "writer");
        cmd.env(PATH_ENV, &path).env(SEED_ENV, rng.next_u64().to_string());
        let spawned = Instant::now();
        let mut child = ChildProc::spawn(cmd, &format!("writer {i}"));
        let early = i > 0 && rng.below(6) == 0;
        let (status, rest) = if early {
            // Somewhere in the start-up (exec, open, flock, recovery, epoch bump).
            let l = ready_latency.as_micros() as u64;
            let delay = if rng.below(2) == 0 { rng.below(l * 5 / 4 + 1) } else { l * 3 / 4 + rng.below(l / 2 + 1) };
            std::thread::sleep(Duration::from_micros(delay));
            early_kills += 1;
            child.sigkill()
        } else {
            let ready = child.expect("READY", Duration::from_secs(60));
            ready_latency = spawned.elapsed();
            restarts.check(&ready, i == 0);
            reported += 1;
            std::thread::sleep(Duration::from_micros(rng.below(3000)));
            child.sigkill()
        };
        assert!(killed_by_sigkill(&status), "writer {i} died before it was killed: {status}");
        match rest.iter().find(|r| r.tag == "READY") {
            Some(r) => {
                restarts.check(r, false);
                reported += 1;
            }
            None if early => restarts.unreported += 1,
            None => {}
        }
    }

    // A last writer, in this process: it attaches, removes what may expire or has expired,
    // writes a little, and checks that the statistics agree with what a reader finds.
    let mut w = builder(&path).create().expect("the last writer attaches");
    let rec = w.recovery().expect("the last writer attaches, it does not create");
    let last = restarts.last_epoch;
    assert!(
        (last + 1..=last + 1 + restarts.unreported).contains(&w.epoch()),
        "epoch {} after {last} with {} unreported writers",
        w.epoch(),
        restarts.unreported
    );
    assert_eq!((rec.cleared_slots, rec.damaged_segments), (0, 0), "a crash leaves nothing to repair: {rec:?}");
    let rd = TableReader::open(&path).expect("open");
    for id in 0..NKEYS {
        let key = kv_key(id);
        match rd.get_vec(&key).unwrap_or_else(|e| panic!("get key {id} after recovery: {e:?}")) {
            // Absent or expired: delete removes an expired item the index still holds.
            None => {
                w.delete(&key);
            }
            Some(v) => {
                let version = kv_check(id, MAX_VALUE, &v).expect("a whole value");
                if version & 3 == CLASS_SHORT_TTL {
                    assert!(w.delete(&key), "key {id} was visible, delete must find it");
                }
            }
        }
    }
    let mut value = Vec::new();
    for n in 0..1000u64 {
        let id = rng.below(NKEYS);
        kv_value_into(id, w.epoch() << 32 | n << 2 | CLASS_PLAIN, MAX_VALUE, &mut value);
        w.put(&kv_key(id), &value).expect("put");
        assert_eq!(rd.get_vec(&kv_key(id)).expect("get"), Some(value.clone()), "key {id} after the last put");
    }
    let s = w.stats();
    assert_eq!(rd.stats(), s, "readers see the writer's statistics");
    let listed: Vec<Vec<u8>> = rd.keys().map(|k| k.expect("keys() on a recovered table")).collect();
    let unique: HashSet<&Vec<u8>> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "keys() lists each key once");
    assert_eq!(s.items, listed.len() as u64, "items == keys listed: {s:?}");
    for k in &listed {
        let id = kv_key_id(k).unwrap_or_else(|| panic!("foreign key {k:?}"));
        let v = rd.get_vec(k).expect("get").unwrap_or_else(|| panic!("listed key {id} is missing"));
        kv_check(id, MAX_VALUE, &v).unwrap_or_else(|e| panic!("listed key {id}: {e}"));
    }
    let found = (0..NKEYS)
        .filter(|&id| rd.get_vec(&kv_key(id)).unwrap_or_else(|e| panic!("get key {id}: {e:?}")).is_some())
        .count();
    assert_eq!(found as u64, s.items, "items == keys found by get");
    assert!(s.bytes_used <= s.bytes_capacity && s.items <= MAX_ITEMS, "{s:?}");
    let final_epoch = w.epoch();
    drop(w);

    for r in &mut readers {
        r.send("stop");
    }
    let (mut gets, mut hits, mut epochs_seen) = (0, 0, 0);
    for (i, r) in readers.iter_mut().enumerate() {
        let res = r.expect("RESULT", Duration::from_secs(120));
        let (status, _) = r.wait(Duration::from_secs(60));
        assert!(status.success(), "reader {i}: {status}");
        println!("reader {i}: {res:?}");
        assert_eq!(res.get("bad"), 0, "reader {i} got values that are not whole values of their key: {res:?}");
        assert_eq!(res.get("backwards"), 0, "reader {i} saw a key's version go back: {res:?}");
        assert_eq!(res.get("expired"), 0, "reader {i} got values put already expired: {res:?}");
        assert_eq!(res.get("errors"), 0, "reader {i} got errors: {res:?}");
        assert_eq!(res.get("key_errors"), 0, "reader {i}: keys() failed: {res:?}");
        assert!(res.get("gets") >= 10_000 && res.get("hits") > 0, "reader {i} did too little: {res:?}");
        assert!(res.get("keys_calls") > 0, "reader {i} never listed keys: {res:?}");
        gets += res.get("gets");
        hits += res.get("hits");
        epochs_seen = epochs_seen.max(res.get("epoch_changes"));
    }
    assert!(epochs_seen > 0, "no reader noticed a writer restart");
    println!(
        "{TEST}: {kills} kills ({early_kills} during start-up, {} of them after the epoch bump), {reported} \
         recoveries reported, final epoch {}, {gets} gets ({hits} hits) checked by 2 readers, \
         final {s:?}, {:.1} s",
        restarts.killed_after_bump,
        final_epoch,
        started.elapsed().as_secs_f64()
    );
}

/// What the writers reported so far, checked at each report.
#[derive(Debug, Default)]
struct Restarts {
    last_epoch: u64,
    /// Writers killed before they reported: each may or may not have bumped the epoch.
    unreported: u64,
    /// Unreported writers that had bumped the epoch.
    killed_after_bump: u64,
}

impl Restarts {
    fn check(&mut self, r: &Report, first: bool) {
        let epoch = r.get("epoch");
        if first {
            assert_eq!((r.get("fresh"), epoch), (1, 1), "the first writer creates the table: {r:?}");
        } else {
            assert_eq!(r.get("fresh"), 0, "a restarted writer attaches (recovery() is Some): {r:?}");
            let last = self.last_epoch;
            assert!(
                (last + 1..=last + 1 + self.unreported).contains(&epoch),
                "epoch {epoch} after {last} with {} unreported writers in between: {r:?}",
                self.unreported
            );
            if self.unreported == 0 {
                assert_eq!(epoch, last + 1, "the epoch goes up by one per restart");
            }
            self.killed_after_bump += epoch - last - 1;
            // A kill leaves records beyond `fill` (invisible), records not pointed to, overflow
            // counts too high, half-evicted or half-cleared segments: never a slot that points
            // at something other than a whole record of its key, never a bad record below fill.
            assert_eq!(r.get("cleared_slots"), 0, "a crash left a bad slot: {r:?}");
            assert_eq!(r.get("damaged_segments"), 0, "a crash left a bad record below fill: {r:?}");
            assert!(r.get("items") <= MAX_ITEMS, "{r:?}");
        }
        self.last_epoch = epoch;
        self.unreported = 0;
    }
}

/// A writer: attach (or create), report, then write until killed.
fn writer_child() {
    die_with_parent();
    let _watchdog = Watchdog::new("crash table writer", WATCHDOG_SECS);
    let path = std::env::var_os(PATH_ENV).expect("table path");
    let mut rng = Rng::new(env_u64(SEED_ENV, 0));
    let mut w = builder(Path::new(&path)).create().expect("a writer attaches to the table its killed predecessor left");
    let rec = w.recovery();
    report(
        "READY",
        &[
            ("epoch", w.epoch()),
            ("fresh", u64::from(rec.is_none())),
            ("items", rec.map_or(0, |r| r.items)),
            ("cleared_slots", rec.map_or(0, |r| r.cleared_slots)),
            ("damaged_segments", rec.map_or(0, |r| r.damaged_segments)),
        ],
    );
    let epoch = w.epoch();
    let mut counter = 0u64;
    let mut version = |class: u64| {
        counter += 1;
        epoch << 32 | counter << 2 | class
    };
    let mut value = Vec::new();
    loop {
        let id = rng.below(NKEYS);
        let key = kv_key(id);
        match rng.below(1000) {
            0..=549 => {
                kv_value_into(id, version(CLASS_PLAIN), MAX_VALUE, &mut value);
                w.put(&key, &value).expect("put");
            }
            550..=699 => {
                let (class, ttl) = match rng.below(3) {
                    0 => (CLASS_LONG_TTL, 3_600_000),
                    1 => (CLASS_EXPIRED, 0),
                    _ => (CLASS_SHORT_TTL, 5 + rng.below(45)),
                };
                kv_value_into(id, version(class), MAX_VALUE, &mut value);
                w.put_with_ttl(&key, &value, Duration::from_millis(ttl)).expect("put_with_ttl");
            }
            700..=849 => {
                w.delete(&key);
            }
            850..=989 => {
                let n = 2 + rng.below(7);
                let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
                    .map(|_| {
                        let id = rng.below(NKEYS);
                        (kv_key(id), kv_value(id, version(CLASS_PLAIN), MAX_VALUE))
                    })
                    .collect();
                let done = w.put_batch(pairs.iter().map(|(k, v)| (&k[..], &v[..]))).expect("put_batch");
                assert_eq!(done, pairs.len());
            }
            990..=998 => {
                w.expire();
            }
            _ => {
                if rng.below(20) == 0 {
                    w.clear();
                }
            }
        }
    }
}

/// A reader: get random keys until told to stop (a line on stdin), checking every value.
fn reader_child() {
    die_with_parent();
    let _watchdog = Watchdog::new("crash table reader", WATCHDOG_SECS);
    let path = std::env::var_os(PATH_ENV).expect("table path");
    let mut rng = Rng::new(env_u64(SEED_ENV, 0));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).expect("read stop line");
            stop.store(true, Ordering::Release);
        });
    }
    let rd = TableReader::open_wait(Path::new(&path), Duration::from_secs(120)).expect("open the table once created");
    let mut last = vec![0u64; NKEYS as usize];
    let mut buf = vec![0u8; MAX_VALUE];
    let (mut gets, mut hits, mut bad, mut backwards, mut expired, mut errors) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut keys_calls, mut keys_listed, mut key_errors) = (0u64, 0u64, 0u64);
    let mut epoch = rd.writer_epoch();
    let mut epoch_changes = 0u64;
    let complain = |what: String, count: &mut u64| {
        *count += 1;
        if *count <= 10 {
            eprintln!("crash table reader: {what}");
        }
    };
    while !stop.load(Ordering::Acquire) {
        let id = rng.below(NKEYS);
        gets += 1;
        let got = random_get(&rd, &mut rng, id, NKEYS, &mut buf);
        // Any error (`Corrupt` on a file only crashed writers touched, `Contended`) is counted
        // and must stay at zero.
        for (id, got) in got {
            match got {
                Ok(Some(v)) => {
                    hits += 1;
                    match kv_check(id, MAX_VALUE, &v) {
                        Ok(version) => {
                            if version & 3 == CLASS_EXPIRED {
                                let what = format!("key {id}: version {version:#x} was put already expired");
                                complain(what, &mut expired);
                            }
                            if version < last[id as usize] {
                                let before = last[id as usize];
                                complain(format!("key {id}: version {version:#x} after {before:#x}"), &mut backwards);
                            }
                            last[id as usize] = last[id as usize].max(version);
                        }
                        Err(why) => complain(format!("key {id}: {why}: {} bytes", v.len()), &mut bad),
                    }
                }
                Ok(None) => {}
                Err(e) => complain(format!("get key {id}: {e}"), &mut errors),
            }
        }
        if gets % 4096 == 0 {
            keys_calls += 1;
            for k in rd.keys() {
                match k {
                    Ok(k) if kv_key_id(&k).is_some() => keys_listed += 1,
                    Ok(k) => complain(format!("keys() listed a foreign key {k:?}"), &mut key_errors),
                    Err(e) => complain(format!("keys(): {e}"), &mut key_errors),
                }
            }
        }
        let now = rd.writer_epoch();
        assert!(now >= epoch, "the epoch went back from {epoch} to {now}");
        if now != epoch {
            epoch_changes += 1;
            epoch = now;
        }
        if gets % 64 == 0 {
            std::thread::yield_now();
        }
    }
    report(
        "RESULT",
        &[
            ("gets", gets),
            ("hits", hits),
            ("bad", bad),
            ("backwards", backwards),
            ("expired", expired),
            ("errors", errors),
            ("keys_calls", keys_calls),
            ("keys_listed", keys_listed),
            ("key_errors", key_errors),
            ("epoch_changes", epoch_changes),
            ("epoch", epoch),
        ],
    );
}

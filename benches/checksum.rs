//! Record checksums: CRC-32 (`crc32fast`) next to CRC-32C (the `crc32c` crate) in one run, at
//! the sizes the format checksums (issue 13's checksum decision; design rule 9).
//!
//! - `checksum/crc32fast/<size>`: clone one prototype `crc32fast::Hasher` made once, update,
//!   finalize — exactly what `crates/format/src/checksum.rs` does per record (making a hasher
//!   picks the implementation, which costs about as much as a 64-byte checksum, so the format
//!   never makes one on a hot path).
//! - `checksum/crc32c/<size>`: `crc32c::crc32c` (SSE4.2 / ARMv8 CRC instructions, software
//!   fallback), one call over the bytes.
//! - `checksum/crc32c_append/<size>`: `crc32c::crc32c_append` from a running value, the form a
//!   checksum seeded with (or continued from) a header word would take.
//!
//! Sizes: 8 and 16 B (a table key or a small value), 32, 64, 100 (the KV workload's value),
//! 128, 256 B, 1 KiB, 4 KiB (a page) and 64 KiB (the largest ring message the other benches
//! use). The bytes start 8-aligned, as records do. Each row's throughput is in bytes; the
//! decision compares the medians of the two algorithms per size, as a ratio, from one run.
//!
//! Timed in the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time: each
//! measurement is one thread computing, so the two are the same on an idle machine, and on a
//! busy one (CI, a shared VM) the time other processes take the CPU is not charged to whichever
//! algorithm happened to be running.
//!
//! A short run: `cargo bench -p podcache-benches --bench checksum -- --warm-up-time 1
//! --measurement-time 2`.

use criterion::{black_box, Bencher, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

const SIZES: [usize; 10] = [8, 16, 32, 64, 100, 128, 256, 1024, 4096, 65536];

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Run `f` `iters` times, timed in this thread's CPU time.
fn cpu_iter<R>(b: &mut Bencher<'_>, mut f: impl FnMut() -> R) {
    b.iter_custom(|iters| {
        let start = thread_cpu_time();
        for _ in 0..iters {
            black_box(f());
        }
        thread_cpu_time() - start
    });
}

fn checksums(c: &mut Criterion) {
    // u64 words so the bytes start 8-aligned, as a record's do.
    let words: Vec<u64> = (0..65536u64 / 8).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let proto = crc32fast::Hasher::new();
    let mut group = c.benchmark_group("checksum");
    for size in SIZES {
        let data = &bytes[..size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("crc32fast", size), data, |b, data| {
            cpu_iter(b, || {
                let mut h = proto.clone();
                h.update(black_box(data));
                h.finalize()
            });
        });
        group.bench_with_input(BenchmarkId::new("crc32c", size), data, |b, data| {
            cpu_iter(b, || crc32c::crc32c(black_box(data)));
        });
        group.bench_with_input(BenchmarkId::new("crc32c_append", size), data, |b, data| {
            cpu_iter(b, || crc32c::crc32c_append(black_box(0x5EED_1234), black_box(data)));
        });
    }
    group.finish();
}

fn main() {
    let mut c = podcache_benches::criterion().configure_from_args();
    checksums(&mut c);
    c.final_summary();
}

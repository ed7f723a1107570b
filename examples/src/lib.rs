//! Shared bits of the example producer and consumer: the message format and file names.
//!
//! Message `seq` (1-based) is `size` bytes: its sequence number as 8 little-endian bytes, then
//! bytes that derive from `seq`, so the consumer checks every byte on top of podcache's crc.

use clap::Parser;
use podcache_reader::{ring_record_size, Subscriber};
use podcache_writer::{Publisher, WakePolicy};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Fill `buf` with the payload of message `seq`.
pub fn fill(seq: u64, buf: &mut [u8]) {
    let head = seq.to_le_bytes();
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&head[..n]);
    // One loop without a branch per byte, so the compiler vectorises it.
    for (i, b) in buf.iter_mut().enumerate().skip(8) {
        *b = (seq as usize).wrapping_add(i) as u8;
    }
}

/// Whether `buf` is the payload of message `seq`.
pub fn check(seq: u64, buf: &[u8]) -> bool {
    let head = seq.to_le_bytes();
    let n = buf.len().min(8);
    // Every byte is compared; differences are OR-ed together rather than tested one by one,
    // so the compiler vectorises the loop.
    let diff = buf.iter().enumerate().skip(8).fold(0u8, |d, (i, &b)| d | (b ^ (seq as usize).wrapping_add(i) as u8));
    buf[..n] == head[..n] && diff == 0
}

/// The ring the consumer uses to tell the producer how far it got (flow control: the
/// producer never runs more than half a ring ahead, so nothing is lost).
pub fn ack_path(data: &Path) -> PathBuf {
    let mut name = data.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".ack");
    data.with_file_name(name)
}

/// Arguments of the producer.
#[derive(Parser)]
#[command(name = "producer", about = "Publish numbered messages into a podcache ring (the consumer checks them)")]
pub struct ProducerArgs {
    /// Ring file (a tmpfs path: /dev/shm or a Kubernetes emptyDir with medium: Memory).
    #[arg(long, default_value = "/dev/shm/podcache-demo.ring")]
    pub path: PathBuf,
    /// Messages to publish.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Bytes per message (8 or more).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Ring capacity in MiB.
    #[arg(long, default_value_t = 64)]
    pub capacity_mib: u64,
    /// Do not wait for the consumer's acknowledgements (it may then be lapped and lose messages).
    #[arg(long)]
    pub no_flow_control: bool,
}

/// Run the producer: publish `messages` numbered messages, paced by the consumer's acks.
pub fn run_producer(args: ProducerArgs) -> Outcome<ExitCode> {
    let size = args.size.max(8);
    let mut publisher = Publisher::builder(&args.path)
        .capacity(args.capacity_mib << 20)
        .max_message(size.max(64) as u32)
        .replace_mismatched(true)
        .create()?;
    eprintln!(
        "producer: {} ({} MiB, epoch {}), {} messages of {size} B",
        args.path.display(),
        args.capacity_mib,
        publisher.epoch(),
        args.messages
    );
    // At most half a ring of messages in flight, so the consumer is never lapped.
    let window = (publisher.capacity() / 2 / ring_record_size(size)).max(1);
    let mut acks = if args.no_flow_control {
        None
    } else {
        Some(Subscriber::builder(ack_path(&args.path)).wait_ready(Duration::from_secs(30)).open()?)
    };
    let first = publisher.next_seq();
    let mut acked = first - 1;
    let mut ack_buf = [0u8; 64];
    let mut buf = vec![0u8; size];
    let start = Instant::now();
    for i in 0..args.messages {
        let seq = first + i;
        if let Some(acks) = acks.as_mut() {
            while seq - acked > window {
                if let Some(m) = acks.recv_spin(&mut ack_buf, Duration::from_secs(30))? {
                    acked = u64::from_le_bytes(ack_buf[..8].try_into()?);
                    debug_assert!(m.len == 8);
                } else {
                    return Err("consumer stopped acknowledging for 30 s".into());
                }
            }
        }
        fill(seq, &mut buf);
        publisher.publish(&buf)?;
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "producer: published {} messages in {secs:.2} s ({:.1} M msgs/s)",
        args.messages,
        args.messages as f64 / secs / 1e6
    );
    Ok(ExitCode::SUCCESS)
}

/// Arguments of the consumer.
#[derive(Parser)]
#[command(name = "consumer", about = "Read numbered messages from a podcache ring and check every one")]
pub struct ConsumerArgs {
    /// Ring file written by the producer.
    #[arg(long, default_value = "/dev/shm/podcache-demo.ring")]
    pub path: PathBuf,
    /// Messages to read before exiting.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Do not acknowledge progress to the producer.
    #[arg(long)]
    pub no_flow_control: bool,
    /// Block on the futex when idle instead of spinning.
    #[arg(long)]
    pub block: bool,
}

/// Run the consumer: read and check `messages` messages; failure if any was lost or bad.
pub fn run_consumer(args: ConsumerArgs) -> Outcome<ExitCode> {
    // Our own small ring back to the producer: a reader never writes the file it reads.
    let mut acks = if args.no_flow_control {
        None
    } else {
        Some(
            Publisher::builder(ack_path(&args.path))
                .capacity(1 << 16)
                .max_message(8)
                .wake(WakePolicy::Never)
                .replace_mismatched(true)
                .create()?,
        )
    };
    let mut sub = Subscriber::builder(&args.path).wait_ready(Duration::from_secs(30)).open()?;
    let mut buf = vec![0u8; sub.max_message()];
    let (mut got, mut lost, mut bad) = (0u64, 0u64, 0u64);
    let mut expected: Option<u64> = None;
    let mut start = None;
    while got + lost < args.messages {
        let msg = if args.block {
            sub.recv_timeout(&mut buf, Duration::from_secs(30))?
        } else {
            sub.recv_spin(&mut buf, Duration::from_secs(30))?
        };
        let Some(m) = msg else {
            eprintln!("consumer: nothing for 30 s after {got} messages");
            return Ok(ExitCode::FAILURE);
        };
        start.get_or_insert_with(Instant::now);
        lost += m.lost;
        if expected.is_some_and(|e| e + m.lost != m.seq) || !check(m.seq, &buf[..m.len]) {
            bad += 1;
        }
        expected = Some(m.seq + 1);
        got += 1;
        // Acknowledge at least four times per window the producer allows in flight (half the
        // ring), so it never waits for an acknowledgement that is not coming.
        let ack_every = (sub.capacity() / 8 / ring_record_size(m.len)).clamp(1, 1024);
        if got % ack_every == 0 || got + lost == args.messages {
            if let Some(acks) = acks.as_mut() {
                acks.publish(&m.seq.to_le_bytes())?;
            }
        }
    }
    let secs = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
    println!(
        "consumer: received {got} messages in {secs:.2} s ({:.1} M msgs/s), in order, {lost} lost, {bad} bad",
        got as f64 / secs.max(1e-9) / 1e6
    );
    Ok(if bad == 0 && lost == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What a process of the example returns: the exit code, or an error to print (with its
/// `Display` text, which says what to do).
pub type Outcome<T> = Result<T, Box<dyn std::error::Error>>;

/// Turn an [`Outcome`] into an exit code, printing the error as `role: message`.
pub fn report<T: Into<ExitCode>>(role: &str, outcome: Outcome<T>) -> ExitCode {
    match outcome {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("{role}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// End the process (exit status 128 + the signal's number) when SIGTERM or SIGINT arrives.
///
/// A container's entrypoint is PID 1 of its PID namespace, and the kernel gives PID 1 no default
/// action for SIGTERM: without a handler the signal is ignored and every Pod deletion waits for
/// the SIGKILL at the end of `terminationGracePeriodSeconds`. Call it first in `main`.
pub fn exit_on_termination(name: &'static str) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{name}: cannot handle SIGTERM ({e}); it will be ignored as PID 1");
            return;
        }
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!("{name}: signal {sig}, exiting");
            std::process::exit(128 + sig);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_check() {
        let mut b = vec![0u8; 100];
        fill(77, &mut b);
        assert!(check(77, &b));
        assert!(!check(78, &b));
        b[50] ^= 1;
        assert!(!check(77, &b));
    }
}

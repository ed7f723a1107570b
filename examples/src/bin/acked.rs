//! The acknowledged stream (`podcache-stream`): one publisher, N consumer processes, nothing
//! lost. The publisher waits for the slowest consumer instead of lapping it; compare `pair`,
//! which does the same flow control by hand with a second ring.
//!
//! ```text
//! cargo run --release -p podcache-examples --bin acked -- --messages 1000000 --consumers 2
//! ```

use clap::Parser;
use podcache_examples::{check, fill};
use podcache_stream::{StreamConsumer, StreamPublisher};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

const ROLE: &str = "PODCACHE_ACKED_ROLE";
/// How long either side waits for the other before giving up.
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(
    about = "Publish numbered messages to N consumer processes over an acknowledged podcache stream; none is lost"
)]
struct Args {
    /// Directory on tmpfs for the ring files.
    #[arg(long, default_value = "/dev/shm")]
    dir: PathBuf,
    /// Messages to publish.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Bytes per message (8 or more).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Consumer processes.
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Ring capacity in MiB.
    #[arg(long, default_value_t = 16)]
    capacity_mib: u64,
    /// Microseconds each consumer sleeps every 1000 messages (a slow consumer).
    #[arg(long, default_value_t = 0)]
    slow_us: u64,
    /// The data ring (set by the publisher for its consumer processes).
    #[arg(long, hide = true)]
    path: Option<PathBuf>,
}

/// One consumer process: read and check `messages` messages as consumer `id`.
fn consume(path: PathBuf, id: String, messages: u64, slow_us: u64) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut consumer = StreamConsumer::builder(&path, &id).wait_ready(PATIENCE).open()?;
    let mut buf = vec![0u8; consumer.max_message()];
    let (mut lost, mut bad, mut last) = (0u64, 0u64, 0u64);
    let mut start = None;
    while last < messages {
        let Some(m) = consumer.recv(&mut buf, PATIENCE)? else {
            eprintln!("consumer {id}: nothing for {} s after message {last}", PATIENCE.as_secs());
            return Ok(ExitCode::FAILURE);
        };
        start.get_or_insert_with(Instant::now);
        lost += m.lost;
        if m.seq != last + 1 + m.lost || !check(m.seq, &buf[..m.len]) {
            bad += 1;
        }
        last = m.seq;
        if slow_us > 0 && last % 1000 == 0 {
            std::thread::sleep(Duration::from_micros(slow_us));
        }
    }
    let secs = start.map_or(0.0, |s| s.elapsed().as_secs_f64()).max(1e-9);
    println!(
        "consumer {id}: {last} messages in order, {lost} lost, {bad} bad; {secs:.2} s from its first message \
         ({:.3} M msgs/s)",
        last as f64 / secs / 1e6
    );
    Ok(if lost == 0 && bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Ok(id) = std::env::var(ROLE) {
        return consume(args.path.ok_or("--path is required")?, id, args.messages, args.slow_us);
    }
    let path = args.dir.join(format!("podcache-acked-{}.ring", std::process::id()));
    let ids: Vec<String> = (0..args.consumers).map(|i| format!("c{i}")).collect();
    let size = args.size.max(8);
    let mut publisher = StreamPublisher::builder(&path)
        .capacity(args.capacity_mib << 20)
        .max_message(size as u32)
        .consumers(&ids)
        .create()?;
    // The consumers are this same binary in another role.
    let me = std::env::current_exe()?;
    let mut children = Vec::new();
    for id in &ids {
        children.push(
            Command::new(&me)
                .env(ROLE, id)
                .args(["--path", path.to_str().ok_or("non-UTF-8 path")?])
                .args(["--messages", &args.messages.to_string(), "--slow-us", &args.slow_us.to_string()])
                .spawn()?,
        );
    }
    let mut buf = vec![0u8; size];
    let start = Instant::now();
    let mut outcome = Ok(());
    for seq in 1..=args.messages {
        fill(seq, &mut buf);
        if let Err(e) = publisher.publish(&buf, PATIENCE) {
            outcome = Err(e.to_string());
            break;
        }
    }
    if outcome.is_ok() {
        outcome = publisher.wait_acked(PATIENCE).map_err(|e| e.to_string());
    }
    let secs = start.elapsed().as_secs_f64();
    let mut ok = outcome.is_ok();
    for mut child in children {
        if outcome.is_err() {
            let _ = child.kill();
        }
        ok &= child.wait()?.success();
    }
    for id in &ids {
        let _ = std::fs::remove_file(podcache_stream::ack_path(&path, id));
    }
    let _ = std::fs::remove_file(&path);
    match outcome {
        Ok(()) if ok => {
            println!(
                "acked: OK: {} messages of {size} B to {} consumer(s), acknowledged by all, in {secs:.2} s \
                 ({:.1} M msgs/s); the publisher waited {} times",
                args.messages,
                ids.len(),
                args.messages as f64 / secs / 1e6,
                publisher.waits()
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(()) => {
            eprintln!("acked: FAILED: a consumer reported a loss or a bad message");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("acked: FAILED: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

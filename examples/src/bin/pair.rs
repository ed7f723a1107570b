//! Run the producer and the consumer as two processes sharing a ring on tmpfs, and report.
//!
//! ```text
//! cargo run --release -p podcache-examples --bin pair -- --messages 10000000
//! ```

use clap::Parser;
use podcache_examples::{report, run_consumer, run_producer, ConsumerArgs, ProducerArgs};

const ROLE: &str = "PODCACHE_PAIR_ROLE";
use std::path::PathBuf;
use std::process::{Command, ExitCode};

#[derive(Parser)]
#[command(about = "Start a producer and a consumer process on one podcache ring and check the exchange")]
struct Args {
    /// Directory on tmpfs for the ring files.
    #[arg(long, default_value = "/dev/shm")]
    dir: PathBuf,
    /// Messages to exchange.
    #[arg(long, default_value_t = 10_000_000)]
    messages: u64,
    /// Bytes per message.
    #[arg(long, default_value_t = 64)]
    size: usize,
}

fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    podcache_examples::exit_on_termination("pair");
    // The two children are this same binary in another role (so one `cargo run` builds all).
    match std::env::var(ROLE).as_deref() {
        Ok("producer") => return Ok(report("producer", run_producer(ProducerArgs::parse()))),
        Ok("consumer") => return Ok(report("consumer", run_consumer(ConsumerArgs::parse()))),
        _ => {}
    }
    let args = Args::parse();
    let me = std::env::current_exe()?;
    let path = args.dir.join(format!("podcache-demo-{}.ring", std::process::id()));
    let ack = podcache_examples::ack_path(&path);
    let n = args.messages.to_string();
    let common = ["--path", path.to_str().ok_or("non-UTF-8 path")?, "--messages", &n];
    let mut consumer = Command::new(&me).env(ROLE, "consumer").args(common).spawn()?;
    let mut producer =
        Command::new(&me).env(ROLE, "producer").args(common).args(["--size", &args.size.to_string()]).spawn()?;
    let p = producer.wait()?;
    let c = consumer.wait()?;
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&ack);
    if p.success() && c.success() {
        println!("pair: OK: {} messages through {}, none lost, every one checked", args.messages, path.display());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("pair: FAILED (producer: {p}, consumer: {c})");
        Ok(ExitCode::FAILURE)
    }
}

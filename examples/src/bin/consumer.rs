//! Read and check numbered messages from a podcache ring (read-only mapping).
//!
//! ```text
//! consumer --path /dev/shm/podcache-demo.ring --messages 10000000
//! ```

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    podcache_examples::exit_on_termination("consumer");
    podcache_examples::report("consumer", podcache_examples::run_consumer(podcache_examples::ConsumerArgs::parse()))
}

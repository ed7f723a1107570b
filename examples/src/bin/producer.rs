//! Publish numbered messages into a podcache ring on tmpfs.
//!
//! ```text
//! producer --path /dev/shm/podcache-demo.ring --messages 10000000 --size 64
//! ```

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    podcache_examples::exit_on_termination("producer");
    podcache_examples::report("producer", podcache_examples::run_producer(podcache_examples::ProducerArgs::parse()))
}

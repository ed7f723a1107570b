//! `podcache`: parse the command line and dispatch (see `podcache --help`).

use clap::Parser;
use podcache_sidecar::cli::{Cli, Command, LogFormat};
use podcache_sidecar::tools;
use std::process::ExitCode;

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Plain => b.init(),
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn serve(args: &podcache_sidecar::cli::ServeArgs) -> Result<(), String> {
    let (config, log) = args.to_config()?;
    init_logs(log);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let r = rt.block_on(podcache_sidecar::run(config, shutdown_signal()));
    // `run` has closed every connection and file; do not wait for stray blocking threads.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    r.map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match &cli.command {
        Command::Serve(args) => serve(args),
        Command::Inspect { path, json } => tools::inspect(path, *json),
        Command::Verify { path, json } => tools::verify(path, *json),
        Command::Get { dir, table, key } => tools::get(&dir.dir, table, key),
        Command::Keys { dir, table } => tools::keys(&dir.dir, table),
        Command::Dump { dir, table } => tools::dump(&dir.dir, table),
        Command::Tail { dir, ring, from, count, idle_ms } => tools::tail(&dir.dir, ring, *from, *count, *idle_ms),
        Command::Put { w, table, key, value, ttl_ms } => tools::put(w, table, key, value.as_deref(), *ttl_ms),
        Command::Del { w, table, key } => tools::del(w, table, key),
        Command::Publish { w, ring, message } => tools::publish(w, ring, message.as_deref()),
        Command::Load { w, table, file } => tools::load(w, table, file.as_ref()),
        Command::Stat { w, interval_ms, count } => tools::stat(w, *interval_ms, *count),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("podcache: {msg}");
            ExitCode::FAILURE
        }
    }
}

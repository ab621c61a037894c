//! `tethernet-bench`: compares Tethernet's echo example with a hand-written
//! tokio echo server under one load generator (throughput, latency, ratio),
//! and measures per-connection fairness with thousands of busy connections.

mod bench;
mod child;
mod json;
mod load;
mod server;
mod stats;
mod sys;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tethernet-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the hand-written tokio echo server (the baseline) until killed.
    HandwrittenServer {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// I/O threads (current-per-core) or tokio workers (multi).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Threading model.
        #[arg(long, value_enum, default_value_t = server::RuntimeKind::CurrentPerCore)]
        runtime: server::RuntimeKind,
        /// Per-connection read buffer in bytes (grown to fit a larger frame).
        #[arg(long, default_value_t = server::DEFAULT_READ_BUF)]
        read_buf: usize,
    },
    /// Framework echo vs hand-written echo: frames/s, latency and their ratio.
    Echo(bench::EchoArgs),
    /// Thousands of busy connections: latency and per-connection spread.
    Fairness(bench::FairnessArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = sys::raise_nofile_limit() {
        eprintln!("warning: cannot raise RLIMIT_NOFILE: {e}");
    }
    let result = match cli.cmd {
        Cmd::HandwrittenServer {
            listen,
            threads,
            runtime,
            read_buf,
        } => server::run(listen, threads, runtime, read_buf)
            .map(|()| true)
            .map_err(|e| format!("handwritten-server: {e}")),
        Cmd::Echo(args) => bench::echo(&args),
        Cmd::Fairness(args) => bench::fairness(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: some connections failed (see errors above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

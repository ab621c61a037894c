//! `tethernet-soak`: drive a Tethernet server, then check it came back to its memory
//! baseline. Exit code 0 only when every check holds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tethernet_soak::{
    check_fd_limit, raise_fd_limit, run, summary, Config, FanoutSettings, Protocol, Scenario,
};

#[derive(Parser, Debug)]
#[command(
    about = "The leak hunt, automated: load a Tethernet server over loopback, then check its live counters, leak reports and memory came back to baseline"
)]
struct Args {
    /// The server's address (loopback).
    #[arg(long, default_value = "127.0.0.1:7000")]
    target: SocketAddr,
    /// Its admin server: http://HOST:PORT or HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:9100")]
    admin: String,
    /// The server's protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Echo)]
    protocol: Protocol,
    /// What the clients do.
    #[arg(long, value_enum, default_value_t = Scenario::Churn)]
    scenario: Scenario,
    /// Concurrent clients.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// At most this many seconds for counters to come back after the load.
    #[arg(long, default_value_t = 30)]
    settle: u64,
    /// Seconds of warm-up load before the baseline (0: a few exchanges only). Memory a
    /// first load brings in for good (caches, allocator slabs) is then part of the
    /// baseline, and the verdict asks whether more load grows it further.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Directory for report.json and chart.svg.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Spread connections over this many loopback source addresses (127.0.0.1, .2, ...)
    /// for more than ~28,000 concurrent connections.
    #[arg(long, default_value_t = 1)]
    source_addresses: u8,
    /// The gateway's token secret (gateway protocol).
    #[arg(long, env = "TETHERNET_GATEWAY_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Fanout: how many of the members also send (one message in flight each).
    #[arg(long, default_value_t = FanoutSettings::default().senders)]
    senders: usize,
    /// Fanout: messages per second, all senders together; 0: as fast as acks allow.
    #[arg(long, default_value_t = FanoutSettings::default().rate)]
    rate: u32,
    /// Fanout: at most this many messages in all.
    #[arg(long, default_value_t = FanoutSettings::default().max_messages)]
    messages: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match raise_fd_limit() {
        Ok(limit) => {
            println!("{}", limit.describe());
            if let Err(message) = check_fd_limit(&limit, args.clients) {
                eprintln!("error: {message}");
                return ExitCode::from(2);
            }
        }
        Err(e) => eprintln!("warning: cannot read or raise the open files limit: {e}"),
    }
    let admin = args
        .admin
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let admin: SocketAddr = match admin.parse() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("error: --admin `{}`: {e}", args.admin);
            return ExitCode::from(2);
        }
    };
    if !args.target.ip().is_loopback() || !admin.ip().is_loopback() {
        eprintln!("error: tethernet-soak drives loopback servers only");
        return ExitCode::from(2);
    }
    let config = Config {
        target: args.target,
        admin,
        protocol: args.protocol,
        scenario: args.scenario,
        clients: args.clients.max(1),
        duration: Duration::from_secs(args.duration.clamp(1, 3600)),
        settle: Duration::from_secs(args.settle.clamp(1, 600)),
        warmup: Duration::from_secs(args.warmup.min(3600)),
        report: args.report.clone(),
        secret: args.secret,
        progress: true,
        source_addresses: args.source_addresses.max(1),
        fanout: FanoutSettings {
            senders: args.senders.max(1),
            rate: args.rate,
            max_messages: args.messages.clamp(1, 10_000_000),
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(report) => {
            print!("{}", summary(&report));
            if let Some(dir) = &args.report {
                println!(
                    "report: {}/report.json, chart: {}/chart.svg",
                    dir.display(),
                    dir.display()
                );
            }
            if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

//! `tethernet-gateway`: run a node, mint a login token, or chat from a terminal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tethernet_gateway::config::Settings;
use tethernet_gateway::gateway::Gateway;
use tethernet_gateway::token::{self, Claims, Signer};

#[global_allocator]
static ALLOCATOR: tethernet_admin::Jemalloc = tethernet_admin::Jemalloc;

#[derive(Parser)]
#[command(
    name = "tethernet-gateway",
    about = "A chat/push gateway on Tethernet: TCP and WebSocket clients, SQLite or PostgreSQL, in-process bus or Redis pub/sub across nodes",
    after_help = "Run with no subcommand to serve on the embedded defaults (SQLite and the in-process bus under ./tethernet-data).\nEvery setting is also an environment variable (TETHERNET_GATEWAY_*) and a key of the --config TOML file; flags win over the environment, which wins over the file. Secrets (--secret, --admin-token, URLs with passwords) are best given in the environment or the file: flags show in `ps`; their values are never printed or logged."
)]
struct Cli {
    /// A TOML file of settings (keys as the flags, with underscores)
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Mint a login token from the configured secret.
    Token {
        /// The user name.
        #[arg(long)]
        user: String,
        /// Rooms allowed, comma-separated; `*` for all.
        #[arg(long, default_value = "*")]
        rooms: String,
        /// Validity in hours.
        #[arg(long, default_value_t = 24)]
        hours: i64,
    },
    /// Chat from a terminal over TCP: type a line to send it, `/join ROOM`, `/history`,
    /// `/quit`.
    Client {
        /// The gateway's TCP address.
        #[arg(long, default_value = "127.0.0.1:7000")]
        addr: SocketAddr,
        /// A login token.
        #[arg(long, env = "TETHERNET_GATEWAY_TOKEN", hide_env_values = true)]
        token: String,
        /// The room to join first.
        #[arg(long, default_value = "lobby")]
        room: String,
    },
}

fn settings(cli: &Cli) -> Result<Settings, String> {
    let file = match &cli.config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    Ok(cli.settings.clone().or_file(file))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = settings(&cli).and_then(|settings| match &cli.command {
        None | Some(Command::Serve) => serve(settings),
        Some(Command::Token { user, rooms, hours }) => mint(&settings, user, rooms, *hours),
        Some(Command::Client { addr, token, room }) => {
            tethernet_gateway::client::run(*addr, token, room).map_err(|e| e.to_string())
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn mint(settings: &Settings, user: &str, rooms: &str, hours: i64) -> Result<(), String> {
    let signer = Signer::new(&settings.secret()?)?;
    let claims = Claims {
        user: user.to_owned(),
        exp: token::now() + hours * 3600,
        rooms: rooms
            .split(',')
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .collect(),
    };
    println!("{}", signer.sign(&claims));
    Ok(())
}

fn serve(settings: Settings) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let gateway = Gateway::bind(&settings).await?;
        let addresses = gateway.addresses();
        let node = gateway.node();
        println!("tethernet-gateway is up");
        let (tls, ws, http) = if settings.tls_cert.is_some() { (" over TLS", "wss", "https") } else { ("", "ws", "http") };
        println!("  TCP frames  {}  (4-byte big-endian length + JSON{tls}; docs/PROTOCOL.md)", addresses.tcp);
        println!("  WebSocket   {ws}://{}{}  (chat page: {http}://{}/)", addresses.ws, settings.ws_path.as_deref().unwrap_or("/ws"), addresses.ws);
        if let Some(admin) = addresses.admin {
            println!("  admin       http://{admin}/  (dashboard; /metrics)");
        }
        println!("  storage     {}  bus {}", node.store.backend(), node.bus.kind());
        println!("  data dir    {}", settings.data_dir().display());
        println!("get a login token:  cargo run --release -p tethernet-gateway -- token --user alice");
        println!("chat from a terminal:  cargo run --release -p tethernet-gateway -- client --token TOKEN");
        gateway
            .serve(async {
                let _ = tokio::signal::ctrl_c().await;
                println!("shutting down");
            })
            .await
    })
}

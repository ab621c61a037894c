//! Configuration: flags, environment (`TETHERNET_GATEWAY_*`) and an optional TOML file,
//! in that order of precedence, over safe defaults (loopback addresses, SQLite and the
//! in-process bus under `./tethernet-data`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;
use tethernet::Overflow;

/// Every setting, as flags (and environment variables); also the TOML file's keys
/// (`tcp = "127.0.0.1:7000"`, `max_body = 4096`, ...). `Debug` hides the secrets and
/// URL passwords.
#[derive(Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// TCP listener: 4-byte big-endian length-prefixed JSON frames [default: 127.0.0.1:7000]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_TCP")]
    pub tcp: Option<SocketAddr>,
    /// WebSocket listener (upgrades on --ws-path; GET / serves a chat page) [default: 127.0.0.1:7001]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_WS")]
    pub ws: Option<SocketAddr>,
    /// Path of the WebSocket endpoint [default: /ws]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_WS_PATH")]
    pub ws_path: Option<String>,
    /// Admin server (metrics, /debug/*, dashboard); "off" to disable. Any address other
    /// than loopback needs --admin-token [default: 127.0.0.1:9100]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_ADMIN")]
    pub admin: Option<String>,
    /// Bearer token (16+ bytes) the admin server then requires (`Authorization: Bearer
    /// TOKEN`); needed when --admin is not a loopback address. Prefer the environment or
    /// the config file: flags show in `ps` [default: none]
    #[arg(
        long,
        global = true,
        env = "TETHERNET_GATEWAY_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Where the SQLite database and the token secret live [default: ./tethernet-data]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB [default: SQLite in the data directory]
    #[arg(
        long,
        global = true,
        env = "TETHERNET_GATEWAY_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Bus URL: redis://HOST:PORT for a cluster of nodes [default: the in-process bus]
    #[arg(
        long,
        global = true,
        env = "TETHERNET_GATEWAY_BUS_URL",
        hide_env_values = true
    )]
    pub bus_url: Option<String>,
    /// Token secret (at least 16 bytes); every node of a cluster needs the same one
    /// [default: generated once into DATA_DIR/secret]
    #[arg(
        long,
        global = true,
        env = "TETHERNET_GATEWAY_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,
    /// I/O threads [default: the number of cores]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_IO_THREADS")]
    pub io_threads: Option<usize>,
    /// Threads of the business executor that runs sessions and database calls [default: 2]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_EXECUTOR_THREADS")]
    pub executor_threads: Option<usize>,
    /// Most open connections per listener [default: 10000]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Largest TCP frame or WebSocket message, in bytes [default: 65536]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_MAX_FRAME")]
    pub max_frame: Option<usize>,
    /// Largest message body, in bytes [default: 4096]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_MAX_BODY")]
    pub max_body: Option<usize>,
    /// Rooms one connection may be in at once [default: 64]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_MAX_ROOMS")]
    pub max_rooms: Option<usize>,
    /// Messages kept per room; older ones are pruned [default: 10000]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_HISTORY_KEEP")]
    pub history_keep: Option<i64>,
    /// Days messages are kept (0: no limit) [default: 30]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_HISTORY_DAYS")]
    pub history_days: Option<i64>,
    /// Database pool size [default: 8]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_DB_POOL")]
    pub db_pool: Option<u32>,
    /// Bound of each database call in ms (waiting for a connection, then the queries; on
    /// PostgreSQL the server cancels statements at 3/4 of it); past it the client gets
    /// `unavailable` [default: 5000]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_DB_TIMEOUT_MS")]
    pub db_timeout_ms: Option<u64>,
    /// SQLite quota: at most this many database pages (4 KiB each); writes past it get
    /// `storage_full`, reads go on [default: no quota]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_SQLITE_MAX_PAGES")]
    pub sqlite_max_pages: Option<u64>,
    /// Failed logins allowed per client address (IPv6: per /64) per minute; then logins
    /// from it get `rate_limited` and are closed; 0 for no limit [default: 10]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_LOGIN_FAILURES")]
    pub login_failures: Option<u32>,
    /// A connection that has not logged in this many ms after connecting is closed
    /// (`login_timeout`); 0 for no deadline [default: 10000]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_LOGIN_TIMEOUT_MS")]
    pub login_timeout_ms: Option<u64>,
    /// A member whose outbound queue is full: "close" (it reconnects and recovers from
    /// history) or "drop-oldest" [default: close]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_SLOW_MEMBER")]
    pub slow_member: Option<String>,
    /// TLS certificate chain (PEM, leaf first): with --tls-key, both listeners serve TLS
    /// (TCP frames over TLS, and wss://) [default: no TLS]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert [default: no TLS]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// A TLS handshake not finished within this many ms is dropped [default: 10000]
    #[arg(
        long,
        global = true,
        env = "TETHERNET_GATEWAY_TLS_HANDSHAKE_TIMEOUT_MS"
    )]
    pub tls_handshake_timeout_ms: Option<u64>,
    /// TLS handshakes in progress at once, per listener; others wait their turn within
    /// the handshake timeout [default: 256]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_TLS_MAX_HANDSHAKES")]
    pub tls_max_handshakes: Option<usize>,
    /// A peer that starts a frame (or the WebSocket upgrade request) and does not finish
    /// it within this many ms is closed (slowloris); 0 for no limit [default: 10000]
    #[arg(long, global = true, env = "TETHERNET_GATEWAY_FRAME_TIMEOUT_MS")]
    pub frame_timeout_ms: Option<u64>,
    /// Most open connections from one IP address, per listener (clients behind one NAT or
    /// proxy share an address) [default: 1000]
    #[arg(
        long,
        global = true,
        env = "TETHERNET_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS"
    )]
    pub max_connections_per_address: Option<usize>,
}

/// Calls `$then!(args..., every field)`.
macro_rules! fields {
    ($then:ident!($($args:tt)*)) => {
        $then!($($args)* tcp, ws, ws_path, admin, admin_token, data_dir, database_url, bus_url,
            secret, io_threads, executor_threads, max_connections, max_frame, max_body, max_rooms,
            history_keep, history_days, db_pool, db_timeout_ms, sqlite_max_pages, login_failures,
            login_timeout_ms, slow_member, tls_cert, tls_key, tls_handshake_timeout_ms,
            tls_max_handshakes, frame_timeout_ms, max_connections_per_address)
    };
}

macro_rules! merge {
    ($flags:expr, $file:expr, $($field:ident),*) => {
        Settings { $($field: $flags.$field.or($file.$field)),* }
    };
}

macro_rules! debug_fields {
    ($f:expr, $shown:expr, $($field:ident),*) => {
        $f.debug_struct("Settings")$(.field(stringify!($field), &$shown.$field))*.finish()
    };
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.clone();
        for secret in [&mut shown.secret, &mut shown.admin_token] {
            *secret = secret.as_ref().map(|_| "<hidden>".to_owned());
        }
        for url in [&mut shown.database_url, &mut shown.bus_url] {
            *url = url.as_deref().map(crate::store::redact);
        }
        fields!(debug_fields!(f, shown,))
    }
}

impl Settings {
    /// Flags and environment first, then the file.
    pub fn or_file(self, file: Settings) -> Settings {
        fields!(merge!(self, file,))
    }

    /// Reads a TOML file of settings.
    pub fn from_file(path: &Path) -> Result<Settings, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./tethernet-data"))
    }

    /// The admin address, or `None` when turned off.
    pub fn admin(&self) -> Result<Option<SocketAddr>, String> {
        match self.admin.as_deref() {
            None => Ok(Some("127.0.0.1:9100".parse().expect("a valid address"))),
            Some("off" | "none" | "") => Ok(None),
            Some(addr) => addr
                .parse()
                .map(Some)
                .map_err(|e| format!("--admin `{addr}`: {e} (an address, or `off`)")),
        }
    }

    /// TLS for both listeners, when a certificate and key are set.
    pub fn tls(&self) -> Result<Option<tethernet::tls::TlsSettings>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => {
                let mut tls = tethernet::tls::TlsSettings::from_pem_files(cert, key)
                    .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
                if let Some(ms) = self.tls_handshake_timeout_ms {
                    tls = tls.handshake_timeout(std::time::Duration::from_millis(ms.max(1)));
                }
                if let Some(handshakes) = self.tls_max_handshakes {
                    tls = tls.max_concurrent_handshakes(handshakes);
                }
                Ok(Some(tls))
            }
            _ => Err("TLS needs both --tls-cert and --tls-key (PEM files)".into()),
        }
    }

    /// The slow-member policy.
    pub fn slow_member(&self) -> Result<Overflow, String> {
        match self.slow_member.as_deref().unwrap_or("close") {
            "close" => Ok(Overflow::CloseSlowConsumer),
            "drop-oldest" => Ok(Overflow::DropOldest),
            other => Err(format!(
                "--slow-member `{other}`: expected close or drop-oldest"
            )),
        }
    }

    /// The token secret: as configured, or read from (first created in) the data
    /// directory.
    pub fn secret(&self) -> Result<Vec<u8>, String> {
        if let Some(secret) = &self.secret {
            return Ok(secret.as_bytes().to_vec());
        }
        let dir = self.data_dir();
        let path = dir.join("secret");
        match std::fs::read_to_string(&path) {
            Ok(secret) if !secret.trim().is_empty() => Ok(secret.trim().as_bytes().to_vec()),
            Ok(_) => Err(format!(
                "{} is empty: delete it to generate a new secret (tokens minted before stop working)",
                path.display()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                // From the operating system's CSPRNG: the secret signs every login.
                let mut bytes = [0u8; 32];
                getrandom::fill(&mut bytes)
                    .map_err(|e| format!("cannot get random bytes for the secret: {e}"))?;
                let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                write_private(&path, &secret)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                tracing::info!(path = %path.display(), "generated a token secret");
                Ok(secret.into_bytes())
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_in() {
        let file: Settings =
            toml::from_str("tcp = \"127.0.0.1:1\"\nmax_body = 10\nadmin = \"off\"").unwrap();
        let flags = Settings {
            tcp: Some("127.0.0.1:2".parse().unwrap()),
            ..Settings::default()
        };
        let merged = flags.or_file(file);
        assert_eq!(merged.tcp.unwrap().port(), 2);
        assert_eq!(merged.max_body, Some(10));
        assert_eq!(merged.admin().unwrap(), None);
        assert!(toml::from_str::<Settings>("nonsense = 1").is_err());
        assert!(Settings {
            slow_member: Some("x".into()),
            ..Settings::default()
        }
        .slow_member()
        .is_err());
    }

    #[test]
    fn debug_hides_secrets_and_passwords() {
        let settings = Settings {
            secret: Some("s3cret-s3cret-s3cret".into()),
            admin_token: Some("admin-t0ken-admin-t0ken".into()),
            database_url: Some("postgres://u:pw-in-url@h/db".into()),
            max_body: Some(7),
            ..Settings::default()
        };
        let shown = format!("{settings:?}");
        for hidden in ["s3cret", "admin-t0ken", "pw-in-url"] {
            assert!(!shown.contains(hidden), "{shown}");
        }
        assert!(
            shown.contains("max_body: Some(7)") && shown.contains("<hidden>"),
            "{shown}"
        );
    }

    #[test]
    fn the_secret_is_generated_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            data_dir: Some(dir.path().to_owned()),
            ..Settings::default()
        };
        let first = settings.secret().unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(settings.secret().unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("secret"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}

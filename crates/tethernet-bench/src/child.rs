//! Server child processes: finding the binaries, picking free loopback ports,
//! starting a server (optionally pinned with `taskset`), waiting until it
//! accepts connections, and a guard that kills it on every exit path.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a server gets to start accepting connections.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start one server.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    /// Label used in reports ("framework", "hand-written", ...).
    pub name: String,
    /// Executable.
    pub program: PathBuf,
    /// Arguments; the literal `{addr}` is replaced by the listen address.
    pub args: Vec<String>,
    /// CPU list for `taskset -c`, or `None` to leave the server unpinned.
    pub cpus: Option<String>,
}

/// A running server; killing and reaping it happens on drop.
pub struct ServerGuard {
    child: Child,
    name: String,
    /// Where the server listens.
    pub addr: SocketAddr,
}

impl ServerGuard {
    /// The server's process id (the server itself: `taskset` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the server accepts a TCP connection, failing if it exits
    /// first or does not accept within `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} server exited ({status}) before accepting connections on {}",
                    self.name, self.addr
                ));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} server did not accept connections on {} within {:?}",
                    self.name, self.addr, timeout
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns a loopback port that was free a moment ago.
pub fn free_port() -> io::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

/// Whether `taskset` is on `PATH` (checked once).
fn taskset_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let found = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| dir.join("taskset").is_file())
        });
        if !found {
            eprintln!("warning: taskset not found; servers will not be pinned");
        }
        found
    })
}

/// Starts the server described by `spec` on a free loopback port and waits
/// until it accepts connections.
pub fn start(spec: &ServerSpec) -> Result<ServerGuard, String> {
    let port = free_port().map_err(|e| format!("find a free port: {e}"))?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let args = spec
        .args
        .iter()
        .map(|a| a.replace("{addr}", &addr.to_string()));
    let mut cmd = match &spec.cpus {
        Some(cpus) if taskset_available() => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(&spec.program);
            c
        }
        _ => Command::new(&spec.program),
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: prctl is async-signal-safe and touches no memory of ours. It
    // makes the kernel kill the server if this process dies (e.g. Ctrl-C).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("start {} ({}): {e}", spec.name, spec.program.display()))?;
    let mut guard = ServerGuard {
        child,
        name: spec.name.clone(),
        addr,
    };
    guard.wait_ready(READY_TIMEOUT)?;
    Ok(guard)
}

/// Finds the workspace root by walking up from the executable's and the
/// current directory's ancestors, looking for a `Cargo.toml` with `[workspace]`.
pub fn workspace_root() -> Option<PathBuf> {
    let mut starts = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    starts.iter().find_map(|s| {
        s.ancestors()
            .find(|dir| is_workspace_root(dir))
            .map(Path::to_path_buf)
    })
}

fn is_workspace_root(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|s| s.contains("[workspace]"))
}

/// The framework's echo example: `explicit` if given, else
/// `<workspace>/target/release/examples/echo`. It must exist.
pub fn echo_bin(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => workspace_root()
            .ok_or("cannot find the workspace root; pass --echo-bin")?
            .join("target/release/examples/echo"),
    };
    if !path.is_file() {
        return Err(format!(
            "echo example not found at {} (build it with `cargo build --release -p tethernet --example echo` or pass --echo-bin)",
            path.display()
        ));
    }
    Ok(path)
}

/// This executable, re-run as `handwritten-server`.
pub fn self_exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("locate own executable: {e}"))
}

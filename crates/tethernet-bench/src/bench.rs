//! The `echo` and `fairness` benchmarks: start each server as a child process,
//! run the same load generator against it, and report tables (and JSON).

use std::path::PathBuf;
use std::time::Duration;

use crate::child::{self, ServerSpec};
use crate::json::Json;
use crate::load::{self, LoadConfig, LoadResult};
use crate::stats::{self, Latency, Spread};
use crate::sys;

/// Pause between two runs so sockets of the previous one drain.
const SETTLE: Duration = Duration::from_millis(500);

/// Options of the `echo` benchmark.
#[derive(Debug, clap::Args)]
pub struct EchoArgs {
    /// The framework's echo example [default: target/release/examples/echo under the workspace root].
    #[arg(long)]
    pub echo_bin: Option<PathBuf>,
    /// Frame payload sizes in bytes (each at least 12).
    #[arg(long, value_delimiter = ',', default_value = "64,4096")]
    pub sizes: Vec<usize>,
    /// Client connections.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Frames in flight per connection.
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// Measured seconds per server and size.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Unrecorded warm-up seconds before each measurement.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// I/O threads of each server.
    #[arg(long, default_value_t = 1)]
    pub server_threads: usize,
    /// Pairs of runs per size (the order alternates every round); the ratios
    /// use the median over rounds.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// CPUs the servers are pinned to with `taskset -c` ("none" to not pin).
    #[arg(long, default_value = "0")]
    pub server_cpus: String,
    /// CPUs the load generator's threads are pinned to ("none" to not pin).
    #[arg(long, default_value = "1")]
    pub client_cpus: String,
    /// Load generator threads [default: one per client CPU, else 1].
    #[arg(long)]
    pub client_threads: Option<usize>,
    /// `--max-frame` passed to the framework's echo example.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_frame: usize,
    /// Read buffer of the hand-written server(s), in bytes.
    #[arg(long, default_value_t = crate::server::DEFAULT_READ_BUF)]
    pub hand_read_buf: usize,
    /// Extra argument for the framework's echo example (repeatable).
    #[arg(long = "echo-arg", allow_hyphen_values = true)]
    pub echo_args: Vec<String>,
    /// Also write the results to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Options of the `fairness` benchmark.
#[derive(Debug, clap::Args)]
pub struct FairnessArgs {
    /// The framework's echo example [default: target/release/examples/echo under the workspace root].
    #[arg(long)]
    pub echo_bin: Option<PathBuf>,
    /// Busy client connections.
    #[arg(long, default_value_t = 2000)]
    pub connections: usize,
    /// Frames in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// Measured seconds per server.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Unrecorded warm-up seconds before each measurement.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// I/O threads (or tokio workers) of each server.
    #[arg(long, default_value_t = 2)]
    pub server_threads: usize,
    /// Frame payload size in bytes (at least 12).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// CPUs the servers are pinned to with `taskset -c` [default: not pinned].
    #[arg(long)]
    pub server_cpus: Option<String>,
    /// CPUs the load generator's threads are pinned to [default: not pinned].
    #[arg(long)]
    pub client_cpus: Option<String>,
    /// Load generator threads.
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// `--max-frame` passed to the framework's echo example.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_frame: usize,
    /// Read buffer of the hand-written server(s), in bytes.
    #[arg(long, default_value_t = crate::server::DEFAULT_READ_BUF)]
    pub hand_read_buf: usize,
    /// Extra argument for the framework's echo example (repeatable).
    #[arg(long = "echo-arg", allow_hyphen_values = true)]
    pub echo_args: Vec<String>,
    /// Also write the results to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One server's run, summarised.
struct Run {
    server: String,
    /// Round number, from 1.
    round: usize,
    size: usize,
    fps: f64,
    latency: Latency,
    spread: Spread,
    /// Frames served per connection, by connection id.
    per_conn: Vec<u64>,
    errors: u64,
    server_cpu_pct: Option<f64>,
    client_cpu_pct: Option<f64>,
    other_cpu_pct: Option<f64>,
}

impl Run {
    fn new(server: &str, size: usize, r: &LoadResult) -> Self {
        let pct = |cpu: Option<f64>| cpu.map(|c| 100.0 * c / r.measured_secs);
        Run {
            server: server.to_string(),
            round: 1,
            size,
            fps: r.frames_per_sec(),
            latency: stats::latency(&r.latency),
            spread: stats::spread(&r.per_conn),
            per_conn: r.per_conn.clone(),
            errors: r.errors,
            server_cpu_pct: pct(r.server_cpu_secs),
            client_cpu_pct: pct(r.client_cpu_secs),
            other_cpu_pct: pct(r.other_cpu_secs),
        }
    }

    /// Frames served per second of server CPU time: server efficiency, which
    /// stays comparable when the load generator is the bottleneck.
    fn frames_per_cpu_sec(&self) -> Option<f64> {
        self.server_cpu_pct
            .filter(|&p| p >= 1.0)
            .map(|p| self.fps / (p / 100.0))
    }

    /// [`Run::to_json`] plus the frames served by every connection.
    fn to_json_with_counts(&self) -> Json {
        let mut v = self.to_json();
        if let Json::Obj(fields) = &mut v {
            let counts = self.per_conn.iter().map(|&n| Json::Int(n)).collect();
            fields.push(("frames_by_connection".into(), Json::Arr(counts)));
        }
        v
    }

    fn to_json(&self) -> Json {
        let l = &self.latency;
        let s = &self.spread;
        Json::obj([
            ("server", Json::Str(self.server.clone())),
            ("round", Json::Int(self.round as u64)),
            ("size", Json::Int(self.size as u64)),
            ("frames_per_sec", Json::Num(self.fps.round())),
            (
                "frames_per_server_cpu_sec",
                Json::opt_num(self.frames_per_cpu_sec().map(f64::round)),
            ),
            (
                "latency_us",
                Json::obj([
                    ("p50", Json::Num(l.p50_us)),
                    ("p99", Json::Num(l.p99_us)),
                    ("p999", Json::Num(l.p999_us)),
                    ("max", Json::Num(l.max_us)),
                    ("mean", Json::Num(round2(l.mean_us))),
                ]),
            ),
            (
                "frames_per_connection",
                Json::obj([
                    ("min", Json::Int(s.min)),
                    ("p1", Json::Int(s.p1)),
                    ("median", Json::Int(s.median)),
                    ("max", Json::Int(s.max)),
                    ("max_over_min", Json::opt_num(s.max_over_min.map(round2))),
                    ("cv", Json::Num(round4(s.cv))),
                ]),
            ),
            ("errors", Json::Int(self.errors)),
            (
                "server_cpu_pct",
                Json::opt_num(self.server_cpu_pct.map(round2)),
            ),
            (
                "client_cpu_pct",
                Json::opt_num(self.client_cpu_pct.map(round2)),
            ),
            (
                "other_cpu_pct",
                Json::opt_num(self.other_cpu_pct.map(round2)),
            ),
        ])
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn secs(s: f64, what: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|_| format!("invalid {what}: {s}"))
}

/// `None` for "none"/empty, else a validated CPU list.
fn cpu_opt(s: Option<&str>) -> Result<Option<String>, String> {
    match s.map(str::trim) {
        None | Some("") | Some("none") => Ok(None),
        Some(list) => {
            let cpus = sys::parse_cpu_list(list)?;
            let online = sys::online_cpus();
            if let Some(bad) = cpus.iter().find(|&&c| c >= online) {
                return Err(format!(
                    "CPU {bad} in {list:?} does not exist ({online} CPUs)"
                ));
            }
            Ok(Some(list.to_string()))
        }
    }
}

fn handwritten_spec(
    name: &str,
    threads: usize,
    runtime: &str,
    read_buf: usize,
    cpus: Option<String>,
) -> Result<ServerSpec, String> {
    Ok(ServerSpec {
        name: name.to_string(),
        program: child::self_exe()?,
        args: [
            "handwritten-server",
            "--listen",
            "{addr}",
            "--threads",
            &threads.to_string(),
            "--runtime",
            runtime,
            "--read-buf",
            &read_buf.to_string(),
        ]
        .map(String::from)
        .to_vec(),
        cpus,
    })
}

fn framework_spec(
    bin: PathBuf,
    threads: usize,
    max_frame: usize,
    extra: &[String],
    cpus: Option<String>,
) -> ServerSpec {
    let mut args: Vec<String> = [
        "--listen",
        "{addr}",
        "--threads",
        &threads.to_string(),
        "--max-frame",
        &max_frame.to_string(),
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().cloned());
    ServerSpec {
        name: "framework".to_string(),
        program: bin,
        args,
        cpus,
    }
}

/// Rejects load parameters the generator cannot run.
fn check_load(sizes: &[usize], connections: usize, in_flight: usize) -> Result<(), String> {
    if sizes.is_empty() {
        return Err("no frame sizes given".into());
    }
    if let Some(s) = sizes.iter().find(|&&s| s < load::HEADER) {
        return Err(format!(
            "frame size {s} is too small: the payload carries a {}-byte id and sequence number",
            load::HEADER
        ));
    }
    if connections == 0 || in_flight == 0 {
        return Err("--connections and --in-flight must be at least 1".into());
    }
    Ok(())
}

/// Starts `spec`, runs the load against it, and stops it.
fn measure(spec: &ServerSpec, cfg: &LoadConfig) -> Result<Run, String> {
    eprintln!(
        "-- {} B frames: {} ({} conns x {} in flight, {:.1}s warm-up + {:.1}s)",
        cfg.size,
        spec.name,
        cfg.connections,
        cfg.in_flight,
        cfg.warmup.as_secs_f64(),
        cfg.duration.as_secs_f64()
    );
    let server = child::start(spec)?;
    let cfg = LoadConfig {
        addr: server.addr,
        ..cfg.clone()
    };
    let result = load::run(&cfg, Some(server.pid()));
    drop(server);
    let result = result.map_err(|e| format!("{}: {e}", spec.name))?;
    for e in &result.error_samples {
        eprintln!("   error: {e}");
    }
    let run = Run::new(&spec.name, cfg.size, &result);
    eprintln!(
        "   {:.0} frames/s, p50 {:.0} us, p99 {:.0} us, errors {}",
        run.fps, run.latency.p50_us, run.latency.p99_us, run.errors
    );
    std::thread::sleep(SETTLE);
    Ok(run)
}

/// Formats an integer with thousands separators.
fn grouped(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |p| format!("{p:.0}%"))
}

fn write_json(path: &Option<PathBuf>, value: Json) -> Result<(), String> {
    if let Some(path) = path {
        std::fs::write(path, value.render())
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        println!("results written to {}", path.display());
    }
    Ok(())
}

/// Runs the `echo` benchmark. Returns `Ok(false)` if a run saw errors.
pub fn echo(a: &EchoArgs) -> Result<bool, String> {
    check_load(&a.sizes, a.connections, a.in_flight)?;
    let echo_bin = child::echo_bin(a.echo_bin.as_deref())?;
    let server_cpus = cpu_opt(Some(&a.server_cpus))?;
    let client_cpus = cpu_opt(Some(&a.client_cpus))?
        .map(|l| sys::parse_cpu_list(&l))
        .transpose()?;
    let client_threads = a
        .client_threads
        .unwrap_or_else(|| client_cpus.as_ref().map_or(1, Vec::len));
    let hand = handwritten_spec(
        "hand-written",
        a.server_threads,
        "current-per-core",
        a.hand_read_buf,
        server_cpus.clone(),
    )?;
    let fw = framework_spec(
        echo_bin.clone(),
        a.server_threads,
        a.max_frame,
        &a.echo_args,
        server_cpus.clone(),
    );
    let base = LoadConfig {
        addr: ([127, 0, 0, 1], 0).into(),
        connections: a.connections,
        in_flight: a.in_flight,
        size: 0,
        warmup: secs(a.warmup_secs, "--warmup-secs")?,
        duration: secs(a.duration_secs, "--duration-secs")?,
        client_threads,
        client_cpus: client_cpus.clone(),
    };
    println!(
        "echo benchmark: framework {} vs hand-written tokio (read buffer {} B); {} conns x {} \
         in flight; server threads {}, server CPUs {}, client threads {} on CPUs {}",
        echo_bin.display(),
        a.hand_read_buf,
        a.connections,
        a.in_flight,
        a.server_threads,
        server_cpus.as_deref().unwrap_or("any"),
        client_threads,
        a.client_cpus,
    );

    let mut runs: Vec<Run> = Vec::new();
    let mut failure = None;
    let rounds = a.rounds.max(1);
    'sizes: for (i, &size) in a.sizes.iter().enumerate() {
        let cfg = LoadConfig {
            size,
            ..base.clone()
        };
        for round in 0..rounds {
            // Alternate which server goes first so neither always gets the
            // warmer (or the more disturbed) machine.
            let order = if (i + round) % 2 == 0 {
                [&hand, &fw]
            } else {
                [&fw, &hand]
            };
            for spec in order {
                match measure(spec, &cfg) {
                    Ok(run) => runs.push(Run {
                        round: round + 1,
                        ..run
                    }),
                    Err(e) => {
                        failure = Some(e);
                        break 'sizes;
                    }
                }
            }
        }
    }

    println!();
    println!(
        "{:>6} {:>2}  {:<13} {:>12} {:>12} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>6}",
        "size",
        "#",
        "server",
        "frames/s",
        "frames/cpu-s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "srv cpu",
        "cli cpu",
        "other",
        "errors"
    );
    for r in &runs {
        println!(
            "{:>6} {:>2}  {:<13} {:>12} {:>12} {:>9.0} {:>9.0} {:>9.0} {:>8} {:>8} {:>8} {:>6}",
            r.size,
            r.round,
            r.server,
            grouped(r.fps),
            r.frames_per_cpu_sec().map_or("-".into(), grouped),
            r.latency.p50_us,
            r.latency.p99_us,
            r.latency.p999_us,
            pct(r.server_cpu_pct),
            pct(r.client_cpu_pct),
            pct(r.other_cpu_pct),
            r.errors
        );
    }
    print_cpu_legend(&runs);
    println!();
    let mut ratios = Vec::new();
    if runs
        .iter()
        .any(|r| r.client_cpu_pct.is_some_and(|c| c >= 95.0))
    {
        println!(
            "note: the load generator used >= 95% of its core in some runs, so frames/s may be \
             capped by the client; frames/cpu-s (per second of server CPU) compares server \
             efficiency regardless"
        );
    }
    if rounds > 1 {
        println!("ratios below use the median over {rounds} rounds");
    }
    // Runs come in groups of 2 x rounds, one group per entry of --sizes.
    for group in runs.chunks(2 * rounds) {
        let median_of = |name: &str, f: &dyn Fn(&Run) -> Option<f64>| {
            stats::median(group.iter().filter(|r| r.server == name).filter_map(f))
        };
        let ratio = |f: &dyn Fn(&Run) -> Option<f64>| {
            median_of("framework", f)
                .zip(median_of("hand-written", f))
                .map(|(fw, hw)| fw / hw)
        };
        let Some(fps_ratio) = ratio(&|r| Some(r.fps)) else {
            continue;
        };
        let p99_ratio = ratio(&|r| Some(r.latency.p99_us));
        let eff_ratio = ratio(&Run::frames_per_cpu_sec);
        let size = group[0].size;
        let fmt = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.3}"));
        println!(
            "{size:>6} B  framework/hand-written: frames/s {fps_ratio:.3} ({}, target >= 0.95), \
             p99 {}, frames/cpu-s {}",
            if fps_ratio >= 0.95 {
                "ok"
            } else {
                "BELOW TARGET"
            },
            fmt(p99_ratio),
            fmt(eff_ratio),
        );
        ratios.push(Json::obj([
            ("size", Json::Int(size as u64)),
            ("frames_per_sec", Json::Num(round4(fps_ratio))),
            ("p99", Json::opt_num(p99_ratio.map(round4))),
            (
                "frames_per_server_cpu_sec",
                Json::opt_num(eff_ratio.map(round4)),
            ),
            ("meets_target", Json::Bool(fps_ratio >= 0.95)),
        ]));
    }

    let ok = runs.iter().all(|r| r.errors == 0);
    write_json(
        &a.json,
        Json::obj([
            ("benchmark", Json::Str("echo".into())),
            (
                "config",
                Json::obj([
                    ("echo_bin", Json::Str(echo_bin.display().to_string())),
                    ("connections", Json::Int(a.connections as u64)),
                    ("in_flight", Json::Int(a.in_flight as u64)),
                    ("duration_secs", Json::Num(a.duration_secs)),
                    ("warmup_secs", Json::Num(a.warmup_secs)),
                    ("server_threads", Json::Int(a.server_threads as u64)),
                    ("rounds", Json::Int(rounds as u64)),
                    ("hand_read_buf", Json::Int(a.hand_read_buf as u64)),
                    ("server_cpus", server_cpus.map_or(Json::Null, Json::Str)),
                    ("client_cpus", Json::Str(a.client_cpus.clone())),
                    ("client_threads", Json::Int(client_threads as u64)),
                ]),
            ),
            (
                "results",
                Json::Arr(runs.iter().map(Run::to_json).collect()),
            ),
            ("ratios", Json::Arr(ratios)),
            ("ok", Json::Bool(ok && failure.is_none())),
            ("error", failure.clone().map_or(Json::Null, Json::Str)),
        ]),
    )?;
    failure.map_or(Ok(ok), Err)
}

/// Share of one core that other processes may use before a run is flagged.
const NOISY_PCT: f64 = 25.0;

/// Explains the CPU columns and flags runs disturbed by other processes.
fn print_cpu_legend(runs: &[Run]) {
    println!(
        "(cpu: % of one core in the measured window; other = all other processes, i.e. noise)"
    );
    for r in runs {
        if let Some(other) = r.other_cpu_pct.filter(|&o| o > NOISY_PCT) {
            println!(
                "warning: {} B / {}: other processes used {other:.0}% of a core; this run is noisy",
                r.size, r.server
            );
        }
    }
}

/// Runs the `fairness` benchmark. Returns `Ok(false)` if a run saw errors.
pub fn fairness(a: &FairnessArgs) -> Result<bool, String> {
    check_load(&[a.size], a.connections, a.in_flight)?;
    let echo_bin = child::echo_bin(a.echo_bin.as_deref())?;
    let server_cpus = cpu_opt(a.server_cpus.as_deref())?;
    let client_cpus = cpu_opt(a.client_cpus.as_deref())?
        .map(|l| sys::parse_cpu_list(&l))
        .transpose()?;
    let t = a.server_threads;
    let specs = [
        framework_spec(
            echo_bin.clone(),
            t,
            a.max_frame,
            &a.echo_args,
            server_cpus.clone(),
        ),
        handwritten_spec(
            "hand-per-core",
            t,
            "current-per-core",
            a.hand_read_buf,
            server_cpus.clone(),
        )?,
        handwritten_spec(
            "hand-multi",
            t,
            "multi",
            a.hand_read_buf,
            server_cpus.clone(),
        )?,
    ];
    let cfg = LoadConfig {
        addr: ([127, 0, 0, 1], 0).into(),
        connections: a.connections,
        in_flight: a.in_flight,
        size: a.size,
        warmup: secs(a.warmup_secs, "--warmup-secs")?,
        duration: secs(a.duration_secs, "--duration-secs")?,
        client_threads: a.client_threads,
        client_cpus,
    };
    println!(
        "fairness benchmark: {} busy conns x {} in flight, {} B frames; server threads {}, \
         server CPUs {}, client threads {} on CPUs {}",
        a.connections,
        a.in_flight,
        a.size,
        t,
        server_cpus.as_deref().unwrap_or("any"),
        a.client_threads,
        a.client_cpus.as_deref().unwrap_or("any"),
    );
    let mut runs = Vec::new();
    let mut failure = None;
    for spec in &specs {
        match measure(spec, &cfg) {
            Ok(run) => runs.push(run),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }

    println!();
    println!(
        "{:<13} {:>10} {:>8} {:>8} {:>8} | {:>7} {:>7} {:>7} {:>7} {:>7} {:>6} | {:>7} {:>7} {:>7} {:>6}",
        "server",
        "frames/s",
        "p50 us",
        "p99 us",
        "max us",
        "min",
        "p1",
        "median",
        "max",
        "max/min",
        "CV",
        "srv cpu",
        "cli cpu",
        "other",
        "errors"
    );
    for r in &runs {
        let s = &r.spread;
        println!(
            "{:<13} {:>10} {:>8.0} {:>8.0} {:>8.0} | {:>7} {:>7} {:>7} {:>7} {:>7} {:>6.3} | {:>7} {:>7} {:>7} {:>6}",
            r.server,
            grouped(r.fps),
            r.latency.p50_us,
            r.latency.p99_us,
            r.latency.max_us,
            s.min,
            s.p1,
            s.median,
            s.max,
            s.max_over_min.map_or("inf".into(), |x| format!("{x:.2}")),
            s.cv,
            pct(r.server_cpu_pct),
            pct(r.client_cpu_pct),
            pct(r.other_cpu_pct),
            r.errors
        );
    }
    println!("(min/p1/median/max: frames served per connection in the measured window)");
    print_cpu_legend(&runs);

    let ok = runs.iter().all(|r| r.errors == 0);
    write_json(
        &a.json,
        Json::obj([
            ("benchmark", Json::Str("fairness".into())),
            (
                "config",
                Json::obj([
                    ("echo_bin", Json::Str(echo_bin.display().to_string())),
                    ("connections", Json::Int(a.connections as u64)),
                    ("in_flight", Json::Int(a.in_flight as u64)),
                    ("size", Json::Int(a.size as u64)),
                    ("duration_secs", Json::Num(a.duration_secs)),
                    ("warmup_secs", Json::Num(a.warmup_secs)),
                    ("server_threads", Json::Int(t as u64)),
                    ("server_cpus", server_cpus.map_or(Json::Null, Json::Str)),
                    (
                        "client_cpus",
                        a.client_cpus.clone().map_or(Json::Null, Json::Str),
                    ),
                    ("client_threads", Json::Int(a.client_threads as u64)),
                    ("hand_read_buf", Json::Int(a.hand_read_buf as u64)),
                ]),
            ),
            (
                "results",
                Json::Arr(runs.iter().map(Run::to_json_with_counts).collect()),
            ),
            ("ok", Json::Bool(ok && failure.is_none())),
            ("error", failure.clone().map_or(Json::Null, Json::Str)),
        ]),
    )?;
    failure.map_or(Ok(ok), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping() {
        assert_eq!(grouped(0.0), "0");
        assert_eq!(grouped(999.0), "999");
        assert_eq!(grouped(1000.0), "1,000");
        assert_eq!(grouped(2_345_678.4), "2,345,678");
    }
}

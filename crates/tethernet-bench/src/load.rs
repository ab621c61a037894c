//! The load generator: C connections, each keeping K verified echo frames in
//! flight, driven by one current-thread runtime per client thread, with
//! latency recorded in an HDR histogram and replies counted per connection.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::sys;

/// Bytes of the payload that carry the connection id (u32) and sequence
/// number (u64); the rest is a per-connection filler pattern.
pub const HEADER: usize = 12;
/// Largest latency the histograms track exactly (60 s, in nanoseconds).
const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// Time allowed for one connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for all client threads to open all their connections.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Server address.
    pub addr: SocketAddr,
    /// Number of connections.
    pub connections: usize,
    /// Frames kept in flight per connection.
    pub in_flight: usize,
    /// Payload size of every frame (at least [`HEADER`]).
    pub size: usize,
    /// Unrecorded warm-up.
    pub warmup: Duration,
    /// Measured period after the warm-up.
    pub duration: Duration,
    /// Number of client threads (one current-thread runtime each).
    pub client_threads: usize,
    /// CPUs to pin client threads to, round-robin; `None` leaves them unpinned.
    pub client_cpus: Option<Vec<usize>>,
}

/// What a run measured.
#[derive(Debug)]
pub struct LoadResult {
    /// Round-trip latency of replies received in the measured window, in ns.
    pub latency: Histogram<u64>,
    /// Replies received in the measured window, per connection.
    pub per_conn: Vec<u64>,
    /// Total replies received in the measured window.
    pub replies: u64,
    /// Length of the measured window in seconds.
    pub measured_secs: f64,
    /// Connections that failed (I/O error, EOF or a reply that did not verify).
    pub errors: u64,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// CPU seconds the server process used in the measured window.
    pub server_cpu_secs: Option<f64>,
    /// CPU seconds this (client) process used in the measured window.
    pub client_cpu_secs: Option<f64>,
    /// CPU seconds used by everything else on the machine in the measured
    /// window (noise from other processes).
    pub other_cpu_secs: Option<f64>,
}

impl LoadResult {
    /// Replies per second over the measured window.
    pub fn frames_per_sec(&self) -> f64 {
        self.replies as f64 / self.measured_secs
    }
}

/// Timing shared by every connection of a run.
#[derive(Clone, Copy)]
struct Window {
    warmup_end: Instant,
    end: Instant,
}

/// What one client thread returns.
struct ThreadOutput {
    latency: Histogram<u64>,
    per_conn: Vec<(usize, u64)>,
    errors: Vec<String>,
}

/// Runs the load against `cfg.addr`. `server_pid` (if known) is sampled for
/// CPU time over the measured window. Returns an error only if the run could
/// not be set up; connection failures during the run are counted in
/// [`LoadResult::errors`].
pub fn run(cfg: &LoadConfig, server_pid: Option<u32>) -> Result<LoadResult, String> {
    if cfg.size < HEADER {
        return Err(format!("frame size must be at least {HEADER} bytes"));
    }
    if cfg.size > u32::MAX as usize || cfg.connections > u32::MAX as usize {
        return Err("frame size or connection count too large".into());
    }
    let threads = cfg.client_threads.clamp(1, cfg.connections.max(1));
    let setup_deadline = Instant::now() + SETUP_TIMEOUT;
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut start_txs = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let (start_tx, start_rx) = mpsc::channel::<Option<Window>>();
        start_txs.push(start_tx);
        let ready_tx = ready_tx.clone();
        let cfg = cfg.clone();
        let ids: Vec<usize> = (t..cfg.connections).step_by(threads).collect();
        let cpu = cfg.client_cpus.as_ref().map(|c| c[t % c.len()]);
        let handle = thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || client_thread(&cfg, cpu, ids, setup_deadline, &ready_tx, &start_rx))
            .map_err(|e| format!("spawn client thread: {e}"))?;
        handles.push(handle);
    }
    drop(ready_tx);

    // Wait until every thread has connected everything.
    let mut setup_error = None;
    for _ in 0..threads {
        // A little slack so a thread's own, more precise error arrives first.
        let left =
            (setup_deadline + Duration::from_secs(1)).saturating_duration_since(Instant::now());
        match ready_rx.recv_timeout(left) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                setup_error = Some(e);
                break;
            }
            Err(_) => {
                setup_error = Some("timed out opening connections".into());
                break;
            }
        }
    }
    if let Some(e) = setup_error {
        for tx in &start_txs {
            let _ = tx.send(None);
        }
        for h in handles {
            let _ = h.join();
        }
        return Err(e);
    }

    let start = Instant::now();
    let window = Window {
        warmup_end: start + cfg.warmup,
        end: start + cfg.warmup + cfg.duration,
    };
    for tx in &start_txs {
        let _ = tx.send(Some(window));
    }

    // Sample CPU time at the edges of the measured window.
    thread::sleep(window.warmup_end.saturating_duration_since(Instant::now()));
    let self_pid = std::process::id();
    let server0 = server_pid.and_then(sys::process_cpu_secs);
    let client0 = sys::process_cpu_secs(self_pid);
    let machine0 = sys::machine_busy_cpu_secs();
    thread::sleep(window.end.saturating_duration_since(Instant::now()));
    let server1 = server_pid.and_then(sys::process_cpu_secs);
    let client1 = sys::process_cpu_secs(self_pid);
    let machine1 = sys::machine_busy_cpu_secs();

    let mut latency = new_histogram();
    let mut per_conn = vec![0u64; cfg.connections];
    let mut errors = 0u64;
    let mut error_samples = Vec::new();
    for h in handles {
        let out = h.join().map_err(|_| "client thread panicked".to_string())?;
        latency
            .add(&out.latency)
            .map_err(|e| format!("merge histograms: {e:?}"))?;
        for (id, n) in out.per_conn {
            per_conn[id] = n;
        }
        errors += out.errors.len() as u64;
        for e in out.errors {
            if error_samples.len() < 5 {
                error_samples.push(e);
            }
        }
    }
    let delta = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| b - a);
    let server_cpu_secs = delta(server0, server1);
    let client_cpu_secs = delta(client0, client1);
    let other_cpu_secs = delta(machine0, machine1)
        .map(|m| (m - server_cpu_secs.unwrap_or(0.0) - client_cpu_secs.unwrap_or(0.0)).max(0.0));
    Ok(LoadResult {
        latency,
        replies: per_conn.iter().sum(),
        per_conn,
        measured_secs: cfg.duration.as_secs_f64(),
        errors,
        error_samples,
        server_cpu_secs,
        client_cpu_secs,
        other_cpu_secs,
    })
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

/// Body of one client thread: pin, connect its share of connections, report
/// readiness, wait for the start signal, then drive all connections.
fn client_thread(
    cfg: &LoadConfig,
    cpu: Option<usize>,
    ids: Vec<usize>,
    setup_deadline: Instant,
    ready_tx: &mpsc::Sender<Result<(), String>>,
    start_rx: &mpsc::Receiver<Option<Window>>,
) -> ThreadOutput {
    let mut out = ThreadOutput {
        latency: new_histogram(),
        per_conn: Vec::new(),
        errors: Vec::new(),
    };
    let setup = (|| {
        if let Some(cpu) = cpu {
            sys::pin_current_thread(&[cpu]).map_err(|e| format!("pin to CPU {cpu}: {e}"))?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("build runtime: {e}"))?;
        let streams = rt.block_on(connect_all(cfg.addr, &ids, setup_deadline))?;
        Ok((rt, streams))
    })();
    let (rt, streams) = match setup {
        Ok(v) => {
            let _ = ready_tx.send(Ok(()));
            v
        }
        Err(e) => {
            let _ = ready_tx.send(Err(e));
            return out;
        }
    };
    let Ok(Some(window)) = start_rx.recv() else {
        return out;
    };

    let hist = Rc::new(RefCell::new(new_histogram()));
    let local = tokio::task::LocalSet::new();
    let results = local.block_on(&rt, async {
        let mut tasks = Vec::with_capacity(streams.len());
        for (stream, &id) in streams.into_iter().zip(&ids) {
            let conn = Conn::new(id as u32, cfg.size, cfg.in_flight);
            tasks.push(tokio::task::spawn_local(conn.drive(
                stream,
                window,
                Rc::clone(&hist),
            )));
        }
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(task.await);
        }
        results
    });
    for (res, &id) in results.into_iter().zip(&ids) {
        match res {
            Ok((count, err)) => {
                out.per_conn.push((id, count));
                if let Some(e) = err {
                    out.errors.push(e);
                }
            }
            Err(e) => out
                .errors
                .push(format!("connection {id}: task failed: {e}")),
        }
    }
    out.latency = hist.borrow().clone();
    out
}

/// Opens the connections one after another (so the server's backlog never
/// overflows), each bounded by [`CONNECT_TIMEOUT`] and all by `deadline`.
async fn connect_all(
    addr: SocketAddr,
    ids: &[usize],
    deadline: Instant,
) -> Result<Vec<TcpStream>, String> {
    let mut streams = Vec::with_capacity(ids.len());
    for &id in ids {
        let limit = deadline.min(Instant::now() + CONNECT_TIMEOUT);
        let stream = tokio::time::timeout_at(limit.into(), TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connection {id}: connect to {addr} timed out"))?
            .map_err(|e| format!("connection {id}: connect to {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("connection {id}: set_nodelay: {e}"))?;
        streams.push(stream);
    }
    Ok(streams)
}

/// One client connection's state.
struct Conn {
    id: u32,
    size: usize,
    in_flight: usize,
    /// Expected payload bytes after the header (a per-connection pattern).
    filler: Vec<u8>,
}

impl Conn {
    fn new(id: u32, size: usize, in_flight: usize) -> Self {
        // xorshift64 seeded by the connection id: different per connection.
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (u64::from(id) + 1).wrapping_mul(0xA24B_AED4);
        let filler = (HEADER..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Conn {
            id,
            size,
            in_flight: in_flight.max(1),
            filler,
        }
    }

    /// Appends frame number `seq` to `buf`.
    fn push_frame(&self, buf: &mut Vec<u8>, seq: u64) {
        buf.extend_from_slice(&(self.size as u32).to_be_bytes());
        buf.extend_from_slice(&self.id.to_be_bytes());
        buf.extend_from_slice(&seq.to_be_bytes());
        buf.extend_from_slice(&self.filler);
    }

    /// Checks that `frame` (header included) is reply number `seq`.
    fn verify(&self, frame: &[u8], seq: u64) -> Result<(), String> {
        let p = &frame[4..];
        let id = u32::from_be_bytes(p[0..4].try_into().expect("4 bytes"));
        let got = u64::from_be_bytes(p[4..12].try_into().expect("8 bytes"));
        if id != self.id {
            return Err(format!(
                "connection {}: reply {seq} carries connection id {id}",
                self.id
            ));
        }
        if got != seq {
            return Err(format!(
                "connection {}: expected reply {seq}, got {got} (out of order)",
                self.id
            ));
        }
        if p[HEADER..] != self.filler[..] {
            return Err(format!(
                "connection {}: reply {seq} payload corrupted",
                self.id
            ));
        }
        Ok(())
    }

    /// Runs the connection until the window ends. Returns the replies received
    /// inside the measured window and the error that stopped it, if any.
    async fn drive(
        self,
        stream: TcpStream,
        window: Window,
        hist: Rc<RefCell<Histogram<u64>>>,
    ) -> (u64, Option<String>) {
        let mut count = 0;
        let err = self
            .drive_inner(&stream, window, &hist, &mut count)
            .await
            .err();
        (count, err)
    }

    async fn drive_inner(
        &self,
        stream: &TcpStream,
        window: Window,
        hist: &RefCell<Histogram<u64>>,
        count: &mut u64,
    ) -> Result<(), String> {
        let id = self.id;
        let io_err = |what: &str, e: io::Error| format!("connection {id}: {what}: {e}");
        let frame_len = 4 + self.size;
        let mut wbuf: Vec<u8> = Vec::with_capacity(self.in_flight * frame_len);
        let mut wpos = 0usize;
        let read_cap = (self.in_flight * frame_len).clamp(8 * 1024, 256 * 1024);
        let mut rbuf = BytesMut::with_capacity(read_cap);
        let mut sent: VecDeque<Instant> = VecDeque::with_capacity(self.in_flight);
        let mut next_send = 0u64;
        let mut next_recv = 0u64;

        for _ in 0..self.in_flight {
            self.push_frame(&mut wbuf, next_send);
            next_send += 1;
        }
        let now = Instant::now();
        sent.extend(std::iter::repeat_n(now, self.in_flight));

        let deadline = tokio::time::sleep_until(window.end.into());
        tokio::pin!(deadline);
        loop {
            // Write whatever is pending; the rest waits for writability.
            if wpos < wbuf.len() {
                match stream.try_write(&wbuf[wpos..]) {
                    Ok(n) => wpos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(io_err("write", e)),
                }
                if wpos == wbuf.len() {
                    wbuf.clear();
                    wpos = 0;
                }
            }
            let interest = if wpos < wbuf.len() {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let ready = tokio::select! {
                biased;
                _ = &mut deadline => return Ok(()),
                r = stream.ready(interest) => r.map_err(|e| io_err("poll", e))?,
            };
            if !ready.is_readable() && !ready.is_read_closed() {
                continue;
            }
            if rbuf.capacity() - rbuf.len() < frame_len.min(read_cap) {
                rbuf.reserve(read_cap);
            }
            match read_some(stream, &mut rbuf) {
                Ok(0) => return Err(format!("connection {id}: server closed the connection")),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(io_err("read", e)),
            }

            let now = Instant::now();
            if now >= window.end {
                return Ok(());
            }
            let record = now >= window.warmup_end;
            let mut replies = 0usize;
            {
                let mut h = hist.borrow_mut();
                while rbuf.len() >= 4 {
                    let len = u32::from_be_bytes([rbuf[0], rbuf[1], rbuf[2], rbuf[3]]) as usize;
                    if len != self.size {
                        return Err(format!(
                            "connection {id}: reply {next_recv} has length {len}, expected {}",
                            self.size
                        ));
                    }
                    if rbuf.len() < frame_len {
                        break;
                    }
                    self.verify(&rbuf[..frame_len], next_recv)?;
                    let t0 = sent.pop_front().ok_or_else(|| {
                        format!("connection {id}: reply {next_recv} was never sent")
                    })?;
                    if record {
                        h.saturating_record(now.duration_since(t0).as_nanos() as u64);
                        *count += 1;
                    }
                    rbuf.advance(frame_len);
                    next_recv += 1;
                    replies += 1;
                }
            }
            for _ in 0..replies {
                self.push_frame(&mut wbuf, next_send);
                next_send += 1;
            }
            let t_send = Instant::now();
            sent.extend(std::iter::repeat_n(t_send, replies));
        }
    }
}

/// Reads once into the spare capacity of `buf`. A short read means the
/// socket's receive queue was drained, so the cached read readiness is cleared
/// right away instead of paying for one more `read` that returns `EAGAIN`
/// (tokio keeps the readiness if a new event arrived in the meantime). This
/// keeps the load generator cheaper per frame than the servers it measures.
fn read_some(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.capacity() - buf.len();
    let mut got = 0;
    let res = stream.try_io(Interest::READABLE, || {
        got = stream.try_read_buf(buf)?;
        if got > 0 && got < spare {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(got)
        }
    });
    match res {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn config(addr: SocketAddr, connections: usize) -> LoadConfig {
        LoadConfig {
            addr,
            connections,
            in_flight: 4,
            size: 100,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(300),
            client_threads: 2,
            client_cpus: None,
        }
    }

    #[test]
    fn against_handwritten_server() {
        let port = crate::child::free_port().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        thread::spawn(move || {
            crate::server::run(addr, 2, crate::server::RuntimeKind::CurrentPerCore, 8192)
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "server did not start");
            thread::sleep(Duration::from_millis(10));
        }
        let r = run(&config(addr, 5), None).unwrap();
        assert_eq!(r.errors, 0, "{:?}", r.error_samples);
        assert!(r.per_conn.iter().all(|&n| n > 0), "{:?}", r.per_conn);
        assert_eq!(r.replies, r.latency.len());
    }

    #[test]
    fn corrupted_reply_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut frame = [0u8; 104];
            while s.read_exact(&mut frame).is_ok() {
                frame[103] ^= 0xff;
                if s.write_all(&frame).is_err() {
                    break;
                }
            }
        });
        let r = run(&config(addr, 1), None).unwrap();
        assert_eq!(r.errors, 1);
        assert!(
            r.error_samples[0].contains("corrupted"),
            "{:?}",
            r.error_samples
        );
    }

    #[test]
    fn frames_verify() {
        let c = Conn::new(7, 64, 4);
        let mut buf = Vec::new();
        c.push_frame(&mut buf, 3);
        assert_eq!(buf.len(), 68);
        assert!(c.verify(&buf, 3).is_ok());
        assert!(c.verify(&buf, 4).is_err());
        let other = Conn::new(8, 64, 4);
        assert!(other.verify(&buf, 3).is_err());
        buf[40] ^= 1;
        assert!(c.verify(&buf, 3).is_err());
    }
}

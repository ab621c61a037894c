//! The hand-written tokio echo server used as the baseline: no framework, just
//! the length-prefixed echo protocol written the way a competent tokio
//! programmer would (one read buffer, one write per read batch).

use std::io;
use std::net::SocketAddr;
use std::thread;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// Default capacity of a connection's read buffer.
pub const DEFAULT_READ_BUF: usize = 8 * 1024;
/// Largest accepted frame payload; a bigger length prefix closes the connection.
const MAX_FRAME: usize = 1024 * 1024;
/// Listen backlog, large enough for thousands of connections arriving at once.
const BACKLOG: u32 = 4096;

/// How the server spreads connections over threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// N threads, each with its own current-thread runtime; the acceptor
    /// hands sockets to them round-robin.
    CurrentPerCore,
    /// One tokio multi-thread runtime with N workers, one task per connection.
    Multi,
}

/// Runs the hand-written echo server until the process is killed. Each
/// connection reads into a buffer of `read_buf` bytes (grown to fit a frame).
pub fn run(
    listen: SocketAddr,
    threads: usize,
    kind: RuntimeKind,
    read_buf: usize,
) -> io::Result<()> {
    let threads = threads.max(1);
    let read_buf = read_buf.max(64);
    match kind {
        RuntimeKind::CurrentPerCore => run_current_per_core(listen, threads, read_buf),
        RuntimeKind::Multi => run_multi(listen, threads, read_buf),
    }
}

fn bind(listen: SocketAddr) -> io::Result<TcpListener> {
    let socket = if listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    socket.listen(BACKLOG)
}

fn run_current_per_core(listen: SocketAddr, threads: usize, read_buf: usize) -> io::Result<()> {
    let mut workers = Vec::with_capacity(threads);
    for i in 0..threads {
        let (tx, mut rx) = mpsc::unbounded_channel::<std::net::TcpStream>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        thread::Builder::new()
            .name(format!("echo-io-{i}"))
            .spawn(move || {
                rt.block_on(async move {
                    while let Some(std_stream) = rx.recv().await {
                        match TcpStream::from_std(std_stream) {
                            Ok(stream) => {
                                tokio::spawn(serve(stream, read_buf));
                            }
                            Err(e) => eprintln!("handwritten-server: register socket: {e}"),
                        }
                    }
                })
            })?;
        workers.push(tx);
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = bind(listen)?;
        let mut next = 0usize;
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            };
            let std_stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("handwritten-server: into_std: {e}");
                    continue;
                }
            };
            if workers[next].send(std_stream).is_err() {
                return Err(io::Error::other("I/O thread exited"));
            }
            next = (next + 1) % workers.len();
        }
    })
}

fn run_multi(listen: SocketAddr, threads: usize, read_buf: usize) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = bind(listen)?;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream, read_buf));
                }
                Err(e) => accept_error(e).await,
            }
        }
    })
}

/// Logs an accept error and backs off briefly (e.g. on EMFILE).
async fn accept_error(e: io::Error) {
    eprintln!("handwritten-server: accept: {e}");
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
}

/// Serves one connection; errors just close it.
async fn serve(stream: TcpStream, read_buf: usize) {
    let _ = echo_connection(stream, read_buf).await;
}

async fn echo_connection(mut stream: TcpStream, read_buf: usize) -> io::Result<()> {
    stream.set_nodelay(true)?;
    // Free space guaranteed before each read.
    let min_read = read_buf / 2;
    let mut rbuf = BytesMut::with_capacity(read_buf);
    let mut wbuf = BytesMut::with_capacity(read_buf);
    // Total size (header + payload) of the incomplete frame at the head of
    // `rbuf`, if its header has been seen.
    let mut want = 0usize;
    loop {
        rbuf.reserve(want.saturating_sub(rbuf.len()).max(min_read));
        if stream.read_buf(&mut rbuf).await? == 0 {
            return Ok(());
        }
        want = 0;
        while rbuf.len() >= 4 {
            let len = u32::from_be_bytes([rbuf[0], rbuf[1], rbuf[2], rbuf[3]]) as usize;
            if len > MAX_FRAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "frame too large",
                ));
            }
            if rbuf.len() < 4 + len {
                want = 4 + len;
                break;
            }
            wbuf.extend_from_slice(&rbuf[..4 + len]);
            rbuf.advance(4 + len);
        }
        if !wbuf.is_empty() {
            stream.write_all(&wbuf).await?;
            wbuf.clear();
        }
    }
}

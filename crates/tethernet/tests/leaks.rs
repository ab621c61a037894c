//! G5 leak reports: a catalogue of deliberate leaks, each reported with the right
//! connection, kind and creation site a grace period after its connection closed; and a
//! clean workload of many connections that produces no report at all.
//!
//! Tests in this file run in one process and share the leak registry, so each looks only
//! at reports for the connections it opened.

mod common;

use std::collections::HashSet;
use std::panic::Location;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{default_server, eventually, frame, read_frame, start};
use tethernet::codec::LengthFieldCodec;
use tethernet::leak::{self, LeakDetection, LeakKind, LeakReport};
use tethernet::{ChannelId, Context, Frame, Handler, Pipeline, Result, Tracked};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What the leaky handler does with each frame it reads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Leak {
    /// Keep the frame in a global map.
    GlobalMap,
    /// Keep a piece of it cut by the handler (creation site: the handler).
    SplitPiece,
    /// Track a session value for the connection, then move it into a global map.
    TrackedMovedOut,
    /// `mem::forget` the frame.
    Forget,
    /// `mem::forget` a tracked value.
    ForgetTracked,
    /// Hand the frame to a plain `tokio::spawn` task that never ends.
    DetachedTask,
}

struct Session {
    _user: String,
}

static KEPT_FRAMES: Mutex<Vec<Frame>> = Mutex::new(Vec::new());
static KEPT_SESSIONS: Mutex<Vec<Tracked<Session>>> = Mutex::new(Vec::new());
/// Where the handler creates what it leaks, for the creation-site checks.
static SITES: Mutex<Vec<(Leak, &'static Location<'static>)>> = Mutex::new(Vec::new());

/// The location of the call to this function.
#[track_caller]
fn here() -> &'static Location<'static> {
    Location::caller()
}

struct Leaky {
    leak: Leak,
    ids: Arc<Mutex<Vec<ChannelId>>>,
}

impl Handler<Frame, Frame> for Leaky {
    type Next = Frame;

    async fn active(&mut self, ctx: &mut Context<'_, Frame, Frame>) -> Result<()> {
        self.ids.lock().unwrap().push(ctx.channel().id());
        Ok(())
    }

    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, mut f: Frame) -> Result<()> {
        match self.leak {
            Leak::GlobalMap => KEPT_FRAMES.lock().unwrap().push(f),
            Leak::SplitPiece => {
                let (site, piece) = (here(), f.split_to(2));
                SITES.lock().unwrap().push((Leak::SplitPiece, site));
                KEPT_FRAMES.lock().unwrap().push(piece);
            }
            Leak::TrackedMovedOut => {
                let value = Session {
                    _user: "ada".into(),
                };
                // The creation site is the `track` call, on the line after `here()`.
                let site = here();
                let session = ctx.channel().track(value)?;
                SITES.lock().unwrap().push((Leak::TrackedMovedOut, site));
                KEPT_SESSIONS.lock().unwrap().push(session);
            }
            Leak::Forget => std::mem::forget(f),
            Leak::ForgetTracked => {
                let (site, session) = (here(), ctx.channel().track(42u64)?);
                SITES.lock().unwrap().push((Leak::ForgetTracked, site));
                std::mem::forget(session);
            }
            Leak::DetachedTask => {
                // What G2 forbids, done on purpose: the task outlives the connection.
                drop(tokio::spawn(async move {
                    let _kept = f;
                    std::future::pending::<()>().await;
                }));
            }
        }
        ctx.write(Frame::from(&b"ok"[..])).await
    }
}

fn setup() {
    leak::set_level(LeakDetection::Paranoid);
    leak::set_grace(Duration::from_millis(200));
}

fn reports_for(ids: &[ChannelId]) -> Vec<LeakReport> {
    let ids: HashSet<ChannelId> = ids.iter().copied().collect();
    leak::reports()
        .into_iter()
        .filter(|report| ids.contains(&report.channel))
        .collect()
}

/// Runs one connection through a leaky handler: connect, one frame, close.
async fn leak_once(leak: Leak) -> (ChannelId, Vec<LeakReport>) {
    setup();
    let ids = Arc::new(Mutex::new(Vec::new()));
    let handler_ids = ids.clone();
    let server = start(default_server(), move || {
        Pipeline::builder(LengthFieldCodec::new(1024))
            .handler(Leaky {
                leak,
                ids: handler_ids.clone(),
            })
            .build()
    })
    .await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client.write_all(&frame(b"leak me please")).await.unwrap();
    assert_eq!(read_frame(&mut client).await.as_deref(), Some(&b"ok"[..]));
    drop(client);
    let id = ids.lock().unwrap()[0];
    let mut reports = Vec::new();
    eventually(
        &format!("a leak report for {leak:?}"),
        || {
            reports = reports_for(&[id]);
            !reports.is_empty()
        },
        || tokio::time::sleep(Duration::from_millis(50)),
    )
    .await;
    // Stopped only now: stopping drops the event loops, and with them the detached
    // task of `Leak::DetachedTask` (in a real server they live on).
    server.stop().await;
    (id, reports)
}

fn site_of(leak: Leak) -> &'static Location<'static> {
    SITES
        .lock()
        .unwrap()
        .iter()
        .find(|(l, _)| *l == leak)
        .map(|(_, site)| *site)
        .expect("the handler recorded its site")
}

fn assert_one(reports: &[LeakReport], id: ChannelId, kind: LeakKind) -> &LeakReport {
    assert_eq!(reports.len(), 1, "exactly one report: {reports:#?}");
    let report = &reports[0];
    assert_eq!(report.channel, id);
    assert_eq!(report.kind, kind);
    assert!(report.closed_for >= Duration::from_millis(200), "{report}");
    assert!(report.age >= report.closed_for, "{report}");
    report
}

/// Frames are created by the decoder: that is their creation site.
fn assert_decoder_site(report: &LeakReport) {
    assert!(
        report
            .created_at
            .unwrap()
            .file()
            .ends_with("codec/length_field.rs"),
        "created at {:?}",
        report.created_at
    );
}

#[tokio::test]
async fn a_frame_kept_in_a_global_map_is_reported() {
    let (id, reports) = leak_once(Leak::GlobalMap).await;
    let report = assert_one(&reports, id, LeakKind::Frame);
    assert_decoder_site(report);
    assert_eq!(report.bytes, b"leak me please".len());
    // The frame pins its whole read buffer, and that is what the report says it holds.
    assert!(report.retained >= 1024, "{report}");
    assert!(report.peer.ip().is_loopback());
}

#[tokio::test]
async fn a_piece_cut_by_the_handler_is_reported_at_the_handlers_line() {
    let (id, reports) = leak_once(Leak::SplitPiece).await;
    let report = assert_one(&reports, id, LeakKind::Frame);
    let site = site_of(Leak::SplitPiece);
    assert_eq!(report.created_at.unwrap().file(), site.file());
    assert_eq!(report.created_at.unwrap().line(), site.line());
    assert_eq!(report.bytes, 2);
}

#[tokio::test]
async fn a_tracked_value_moved_out_and_kept_is_reported() {
    let (id, reports) = leak_once(Leak::TrackedMovedOut).await;
    let report = assert_one(&reports, id, LeakKind::Tracked);
    let site = site_of(Leak::TrackedMovedOut);
    assert_eq!(report.created_at.unwrap().file(), site.file());
    assert_eq!(report.created_at.unwrap().line(), site.line() + 1);
    assert!(report.type_name.ends_with("Session"), "{report}");
    assert_eq!(report.bytes, std::mem::size_of::<Session>());
}

#[tokio::test]
async fn a_forgotten_frame_is_reported() {
    let (id, reports) = leak_once(Leak::Forget).await;
    let report = assert_one(&reports, id, LeakKind::Frame);
    assert_decoder_site(report);
}

#[tokio::test]
async fn a_forgotten_tracked_value_is_reported() {
    let (id, reports) = leak_once(Leak::ForgetTracked).await;
    let report = assert_one(&reports, id, LeakKind::Tracked);
    assert_eq!(
        report.created_at.unwrap().line(),
        site_of(Leak::ForgetTracked).line()
    );
    assert_eq!(report.type_name, "u64");
}

#[tokio::test]
async fn a_frame_held_by_a_plain_tokio_spawn_is_reported_with_the_task() {
    let (id, reports) = leak_once(Leak::DetachedTask).await;
    assert_eq!(reports.len(), 2, "the frame and the task: {reports:#?}");
    let frame = reports
        .iter()
        .find(|r| r.kind == LeakKind::Frame)
        .expect("a frame report");
    assert_eq!(frame.channel, id);
    assert_decoder_site(frame);
    // The frame names the last handler it was handed to.
    assert!(
        frame.handler.is_some_and(|h| h.ends_with("Leaky")),
        "{frame}"
    );
    let task = reports
        .iter()
        .find(|r| r.kind == LeakKind::UnownedTask)
        .expect("an unowned-task report");
    assert_eq!(task.channel, id);
    assert_eq!(task.count, 1, "{task}");
    assert!(task.handler.is_some_and(|h| h.ends_with("Leaky")), "{task}");
}

/// Holds frames the right way: in its own state (dropped with the pipeline), in owned
/// tasks (cancelled at close) and tracked values kept by the handler.
struct Clean {
    ids: Arc<Mutex<Vec<ChannelId>>>,
    last: Option<Frame>,
    session: Option<Tracked<Session>>,
}

impl Handler<Frame, Frame> for Clean {
    type Next = Frame;

    async fn active(&mut self, ctx: &mut Context<'_, Frame, Frame>) -> Result<()> {
        self.ids.lock().unwrap().push(ctx.channel().id());
        self.session = Some(ctx.channel().track(Session {
            _user: "grace".into(),
        })?);
        Ok(())
    }

    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, mut f: Frame) -> Result<()> {
        let piece = f.split_to(1);
        ctx.spawn(async move {
            let _piece = piece;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        })?;
        let reply = f.clone();
        self.last = Some(f);
        ctx.write(reply).await
    }
}

#[tokio::test]
async fn a_clean_workload_of_many_connections_produces_no_report() {
    setup();
    let ids = Arc::new(Mutex::new(Vec::new()));
    let handler_ids = ids.clone();
    let server = start(default_server(), move || {
        Pipeline::builder(LengthFieldCodec::new(1024))
            .handler(Clean {
                ids: handler_ids.clone(),
                last: None,
                session: None,
            })
            .build()
    })
    .await;
    let mut clients = Vec::new();
    for c in 0..200u32 {
        let addr = server.addr;
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            for i in 0..20u32 {
                let payload = common::numbered(c, i, 16);
                stream.write_all(&frame(&payload)).await.unwrap();
                assert_eq!(read_frame(&mut stream).await.unwrap(), payload[1..]);
            }
            if c % 3 == 0 {
                // An abrupt close (RST).
                stream.set_zero_linger().unwrap();
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    server.stop().await;
    let ids = ids.lock().unwrap().clone();
    assert_eq!(ids.len(), 200);
    // Past the grace period of every connection, and checked.
    tokio::time::sleep(Duration::from_millis(600)).await;
    leak::check();
    let reports = reports_for(&ids);
    assert!(reports.is_empty(), "no leak expected: {reports:#?}");
}

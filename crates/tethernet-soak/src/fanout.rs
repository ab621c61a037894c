//! The gateway fan-out benchmark: `--clients` members log in and join one room; the first
//! `--senders` of them send messages (at `--rate` messages per second in all, or each as
//! soon as its previous message is acknowledged) for `--duration`; every body carries the
//! sender, a per-sender number and the send time, so every member measures delivery
//! latency and checks it received each acknowledged message exactly once.
//!
//! Bounded: joining has a time limit, sending stops at the duration or after
//! `--messages` messages, each send waits at most [`ACK_TIMEOUT`] for its ack, and the
//! drain (waiting for the last deliveries) is bounded too.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::{connect, frame, Config};

/// The room every member joins.
pub const ROOM: &str = "soak-fanout";
/// A send whose ack has not come after this long stops its sender (and fails the run).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Logins and joins in progress at once.
const JOIN_CONCURRENCY: usize = 64;
/// Largest frame a member accepts.
const MAX_FRAME: usize = 1 << 20;

/// Settings of the fan-out scenario.
#[derive(Debug, Clone)]
pub struct FanoutSettings {
    /// Members that also send (the first ones), one message in flight each.
    pub senders: usize,
    /// Messages per second, all senders together; 0: each sender sends as soon as its
    /// previous message is acknowledged.
    pub rate: u32,
    /// At most this many messages in all.
    pub max_messages: u64,
}

impl Default for FanoutSettings {
    fn default() -> Self {
        FanoutSettings {
            senders: 4,
            rate: 100,
            max_messages: 100_000,
        }
    }
}

/// Delivery latency, send to receipt by a member, in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
    /// Mean.
    pub mean_us: u64,
}

/// What the fan-out run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FanoutReport {
    /// Members asked for.
    pub members: usize,
    /// Members that logged in and joined.
    pub joined: usize,
    /// Senders (members that also send).
    pub senders: usize,
    /// Messages per second asked for (0: as fast as acks allow).
    pub rate: u32,
    /// Milliseconds to log in and join every member.
    pub join_ms: u64,
    /// Milliseconds from the first send to the last.
    pub send_ms: u64,
    /// Messages sent and acknowledged.
    pub sent: u64,
    /// Sends refused (an `error` reply) or not acknowledged in time.
    pub send_failures: u64,
    /// Deliveries expected: joined members × messages sent.
    pub expected: u64,
    /// Acknowledged messages received, each counted once per member.
    pub deliveries: u64,
    /// Expected deliveries that did not arrive.
    pub missing: u64,
    /// Deliveries of a message a member had already received.
    pub duplicates: u64,
    /// Messages in the room that this run did not send (or whose ack never came).
    pub unexpected: u64,
    /// Members whose connection ended before the run did.
    pub members_lost: u64,
    /// Sent messages per second over the sending window.
    pub messages_per_sec: f64,
    /// Deliveries per second, from the first send to the last delivery.
    pub deliveries_per_sec: f64,
    /// Delivery latency.
    pub latency: Latency,
}

impl FanoutReport {
    /// Whether every member joined, every send was acknowledged, and every member got every
    /// message exactly once.
    pub fn complete(&self) -> bool {
        self.joined == self.members
            && self.sent > 0
            && self.send_failures == 0
            && self.deliveries == self.expected
            && self.missing == 0
            && self.duplicates == 0
            && self.members_lost == 0
    }
}

/// Where a fan-out run is, for progress lines.
#[derive(Debug, Default)]
pub struct FanoutProgress {
    /// 0 joining, 1 sending, 2 draining, 3 done.
    pub phase: AtomicU8,
    /// Members joined.
    pub joined: AtomicU64,
    /// Messages acknowledged.
    pub sent: AtomicU64,
    /// Deliveries received (each once per member).
    pub deliveries: AtomicU64,
    /// Client errors (failed joins, lost members, failed sends).
    pub errors: AtomicU64,
}

impl FanoutProgress {
    /// The phase's name.
    pub fn phase_name(&self) -> &'static str {
        match self.phase.load(Ordering::Relaxed) {
            0 => "joining",
            1 => "sending",
            2 => "draining",
            _ => "done",
        }
    }
}

/// State shared by every member of one run.
struct Shared {
    /// Distinguishes this run's messages from anything else in the room.
    run_id: u64,
    /// Send times and receipt times are microseconds since this instant.
    epoch: Instant,
    senders: usize,
    max_messages: u64,
    /// Per sender: messages acknowledged (numbered 0.. without gaps).
    acked: Vec<AtomicU64>,
    /// Sends started (for `max_messages`).
    started: AtomicU64,
    first_send_us: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    progress: Arc<FanoutProgress>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// Length-prefixed frames off a read half, buffered; [`Frames::fill`] is cancel-safe.
struct Frames {
    read: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
}

impl Frames {
    fn new(read: OwnedReadHalf) -> Frames {
        Frames {
            read,
            buf: Vec::with_capacity(8192),
            start: 0,
        }
    }

    /// The next buffered frame's payload.
    fn next(&mut self) -> std::io::Result<Option<&[u8]>> {
        let available = &self.buf[self.start..];
        if available.len() < 4 {
            return Ok(None);
        }
        let len =
            u32::from_be_bytes([available[0], available[1], available[2], available[3]]) as usize;
        if len > MAX_FRAME {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a {len}-byte frame"),
            ));
        }
        if available.len() < 4 + len {
            return Ok(None);
        }
        let body = self.start + 4..self.start + 4 + len;
        self.start = body.end;
        Ok(Some(&self.buf[body]))
    }

    /// Reads more; `false` at the end of the stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.reserve(8192);
        Ok(self.read.read_buf(&mut self.buf).await? > 0)
    }
}

/// The fields of a gateway reply or push that the scenario looks at.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    body: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<i64>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

fn parse(payload: &[u8]) -> std::io::Result<Incoming<'_>> {
    serde_json::from_slice(payload).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{e}: {}", String::from_utf8_lossy(payload)),
        )
    })
}

/// A message body: run id (hex), sender, number, send time (µs since the run's epoch).
fn body(run_id: u64, sender: usize, n: u64, sent_us: u64) -> String {
    format!("{run_id:x} {sender} {n} {sent_us}")
}

/// Reads a body back: (run id, sender, number, send time).
fn parse_body(body: &str) -> Option<(u64, usize, u64, u64)> {
    let mut parts = body.split(' ');
    let run_id = u64::from_str_radix(parts.next()?, 16).ok()?;
    let sender = parts.next()?.parse().ok()?;
    let n = parts.next()?.parse().ok()?;
    let sent_us = parts.next()?.parse().ok()?;
    match parts.next() {
        None => Some((run_id, sender, n, sent_us)),
        Some(_) => None,
    }
}

/// Which messages of each sender one member has received: one bit per message number.
#[derive(Debug, Default)]
struct Seen {
    bits: Vec<Vec<u64>>,
}

impl Seen {
    fn new(senders: usize) -> Seen {
        Seen {
            bits: vec![Vec::new(); senders],
        }
    }

    /// Marks message `n` of `sender`; false if it was already marked.
    fn mark(&mut self, sender: usize, n: u64) -> bool {
        let words = &mut self.bits[sender];
        let (word, bit) = ((n / 64) as usize, n % 64);
        if words.len() <= word {
            words.resize(word + 1, 0);
        }
        let fresh = words[word] & (1 << bit) == 0;
        words[word] |= 1 << bit;
        fresh
    }

    /// Of messages `0..acked` of `sender`: how many were received; and how many numbers
    /// at or above `acked` were.
    fn count(&self, sender: usize, acked: u64) -> (u64, u64) {
        let mut below = 0u64;
        let mut above = 0u64;
        for (i, word) in self.bits[sender].iter().enumerate() {
            let first = i as u64 * 64;
            let mask = if acked >= first + 64 {
                u64::MAX
            } else if acked <= first {
                0
            } else {
                (1u64 << (acked - first)) - 1
            };
            below += u64::from((word & mask).count_ones());
            above += u64::from((word & !mask).count_ones());
        }
        (below, above)
    }
}

/// What one member saw.
#[derive(Debug, Default)]
struct MemberOutcome {
    /// Acknowledged messages received (once each).
    delivered: u64,
    missing: u64,
    duplicates: u64,
    unexpected: u64,
    lost: bool,
    errors: u64,
    last_delivery_us: u64,
}

/// A sender's replies, from its member's reader: the ack's sequence number, or the
/// error's code.
type Reply = Result<i64, String>;

/// Room for a sender's pending replies (it has one request in flight at a time).
const REPLIES_BOUND: usize = 4;

/// One member: reads until told to stop (or the connection ends), counting deliveries;
/// passes acks and errors to its sender, if it is one.
async fn member(
    shared: Arc<Shared>,
    mut frames: Frames,
    replies: Option<mpsc::Sender<Reply>>,
    mut stop: watch::Receiver<bool>,
) -> MemberOutcome {
    let mut seen = Seen::new(shared.senders);
    let mut outcome = MemberOutcome::default();
    let mut latencies: Vec<u64> = Vec::with_capacity(256);
    let flush = |latencies: &mut Vec<u64>| {
        if latencies.is_empty() {
            return;
        }
        let mut histogram = shared.latency.lock().unwrap_or_else(|e| e.into_inner());
        for &us in latencies.iter() {
            histogram.saturating_record(us.max(1));
        }
        latencies.clear();
    };
    'reading: loop {
        let mut fresh = 0u64;
        loop {
            let payload = match frames.next() {
                Ok(Some(payload)) => payload,
                Ok(None) => break,
                Err(_) => {
                    outcome.errors += 1;
                    outcome.lost = true;
                    break 'reading;
                }
            };
            let Ok(incoming) = parse(payload) else {
                outcome.errors += 1;
                continue;
            };
            match incoming.kind.as_ref() {
                "message" => {
                    let now_us = shared.now_us();
                    match incoming.body.as_deref().and_then(parse_body) {
                        Some((run_id, sender, n, sent_us))
                            if run_id == shared.run_id
                                && sender < shared.senders
                                && n < shared.max_messages =>
                        {
                            if seen.mark(sender, n) {
                                fresh += 1;
                                latencies.push(now_us.saturating_sub(sent_us));
                                if latencies.len() >= 256 {
                                    flush(&mut latencies);
                                }
                            } else {
                                outcome.duplicates += 1;
                            }
                            outcome.last_delivery_us = now_us;
                        }
                        _ => outcome.unexpected += 1,
                    }
                }
                "ack" => match &replies {
                    Some(replies) => {
                        let _ = replies.try_send(Ok(incoming.seq.unwrap_or(0)));
                    }
                    None => outcome.errors += 1,
                },
                "error" => {
                    let code = format!(
                        "{}: {}",
                        incoming.code.as_deref().unwrap_or("?"),
                        incoming.message.as_deref().unwrap_or("")
                    );
                    match &replies {
                        Some(replies) => {
                            let _ = replies.try_send(Err(code));
                        }
                        None => outcome.errors += 1,
                    }
                }
                // `gap` cannot happen on the in-process bus; anything else is not ours.
                _ => {}
            }
        }
        if fresh > 0 {
            shared
                .progress
                .deliveries
                .fetch_add(fresh, Ordering::Relaxed);
        }
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            _ = stop.changed() => break,
            more = frames.fill() => match more {
                Ok(true) => {}
                Ok(false) | Err(_) => {
                    outcome.lost = true;
                    break;
                }
            },
        }
    }
    flush(&mut latencies);
    for sender in 0..shared.senders {
        let acked = shared.acked[sender].load(Ordering::Relaxed);
        let (got, beyond) = seen.count(sender, acked);
        outcome.delivered += got;
        outcome.missing += acked - got;
        outcome.unexpected += beyond;
    }
    if outcome.lost {
        outcome.errors += 1;
    }
    outcome
}

/// One sender: sends until `deadline` (or the message cap), one message in flight,
/// paced by `interval` if set. Returns its write half (kept open until the run ends, so
/// the gateway keeps delivering to this member) and its failures.
async fn sender(
    shared: Arc<Shared>,
    index: usize,
    mut writer: OwnedWriteHalf,
    mut replies: mpsc::Receiver<Reply>,
    interval: Option<Duration>,
    deadline: Instant,
) -> (OwnedWriteHalf, u64) {
    let mut next_at = Instant::now()
        + interval.map_or(Duration::ZERO, |every| {
            every.mul_f64(index as f64 / shared.senders.max(1) as f64)
        });
    let mut n = 0u64;
    let mut failures = 0u64;
    loop {
        if let Some(every) = interval {
            tokio::time::sleep_until(next_at.into()).await;
            // No catching up in bursts after a slow ack.
            next_at = (next_at + every).max(Instant::now());
        }
        if Instant::now() >= deadline
            || shared.started.fetch_add(1, Ordering::Relaxed) >= shared.max_messages
        {
            break;
        }
        let sent_us = shared.now_us();
        shared.first_send_us.fetch_min(sent_us, Ordering::Relaxed);
        let request = serde_json::json!({
            "type": "send",
            "room": ROOM,
            "body": body(shared.run_id, index, n, sent_us),
        });
        if writer
            .write_all(&frame(request.to_string().as_bytes()))
            .await
            .is_err()
        {
            failures += 1;
            break;
        }
        match tokio::time::timeout(ACK_TIMEOUT, replies.recv()).await {
            Ok(Some(Ok(_seq))) => {
                n += 1;
                shared.acked[index].store(n, Ordering::Relaxed);
                shared.progress.sent.fetch_add(1, Ordering::Relaxed);
            }
            // Refused, not acknowledged in time, or the connection ended: this sender
            // stops (a message it did not see acknowledged counts as unexpected).
            Ok(Some(Err(_))) | Ok(None) | Err(_) => {
                failures += 1;
                break;
            }
        }
    }
    (writer, failures)
}

/// Connects member `index`, logs in and joins [`ROOM`].
async fn join(
    config: &Config,
    index: usize,
    token: &str,
) -> std::io::Result<(Frames, OwnedWriteHalf)> {
    let stream = connect(config, index).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut request = frame(
        serde_json::json!({"type": "login", "token": token})
            .to_string()
            .as_bytes(),
    );
    request.extend(frame(
        serde_json::json!({"type": "join", "room": ROOM})
            .to_string()
            .as_bytes(),
    ));
    write.write_all(&request).await?;
    let mut frames = Frames::new(read);
    for expected in ["welcome", "joined"] {
        loop {
            if let Some(payload) = frames.next()? {
                let reply = parse(payload)?;
                if reply.kind != expected {
                    return Err(std::io::Error::other(format!(
                        "expected `{expected}`, got `{}` {} {}",
                        reply.kind,
                        reply.code.as_deref().unwrap_or(""),
                        reply.message.as_deref().unwrap_or("")
                    )));
                }
                break;
            }
            if !frames.fill().await? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
    Ok((frames, write))
}

/// Runs the fan-out scenario against the gateway at `config.target`; every connection is
/// closed when it returns.
pub async fn run_fanout(
    config: Arc<Config>,
    token: Arc<str>,
    progress: Arc<FanoutProgress>,
) -> FanoutReport {
    let settings = config.fanout.clone();
    let members = config.clients;
    let senders = settings.senders.clamp(1, members);
    let max_messages = settings.max_messages.max(1);
    let shared = Arc::new(Shared {
        run_id: fastrand::u64(..),
        epoch: Instant::now(),
        senders,
        max_messages,
        acked: (0..senders).map(|_| AtomicU64::new(0)).collect(),
        started: AtomicU64::new(0),
        first_send_us: AtomicU64::new(u64::MAX),
        latency: Mutex::new(
            Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
        ),
        progress: progress.clone(),
    });
    let mut report = FanoutReport {
        members,
        senders,
        rate: settings.rate,
        ..FanoutReport::default()
    };
    let (stop, stopped) = watch::channel(false);

    // Join: every member logs in and joins before anyone sends (bounded in time).
    let join_started = Instant::now();
    let join_deadline = join_started + Duration::from_secs((20 + members as u64 / 100).min(120));
    let permits = Arc::new(Semaphore::new(JOIN_CONCURRENCY));
    let mut joining = JoinSet::new();
    for index in 0..members {
        let config = config.clone();
        let token = token.clone();
        let permits = permits.clone();
        joining.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (index, join(&config, index, &token).await)
        });
    }
    let mut readers = JoinSet::new();
    let mut writers: Vec<OwnedWriteHalf> = Vec::with_capacity(members);
    let mut sender_halves = Vec::with_capacity(senders);
    loop {
        let next = tokio::time::timeout_at(join_deadline.into(), joining.join_next()).await;
        match next {
            Ok(Some(Ok((index, Ok((frames, write)))))) => {
                report.joined += 1;
                progress.joined.fetch_add(1, Ordering::Relaxed);
                let replies = if index < senders {
                    // A sender waits for each reply before it sends again: one is
                    // pending at most, so a small bound never drops one.
                    let (to_sender, from_reader) = mpsc::channel(REPLIES_BOUND);
                    sender_halves.push((index, write, from_reader));
                    Some(to_sender)
                } else {
                    writers.push(write);
                    None
                };
                readers.spawn(member(shared.clone(), frames, replies, stopped.clone()));
            }
            Ok(Some(_)) => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
            }
            Ok(None) => break,
            Err(_) => {
                // Out of time: the rest count as not joined.
                joining.shutdown().await;
                break;
            }
        }
    }
    report.join_ms = join_started.elapsed().as_millis() as u64;

    // Send: only if every sender joined (a missing sender would skew the rate).
    progress.phase.store(1, Ordering::Relaxed);
    let send_started = Instant::now();
    let deadline = send_started + config.duration;
    let interval = (settings.rate > 0)
        .then(|| Duration::from_secs_f64(senders as f64 / f64::from(settings.rate)));
    let mut sending = JoinSet::new();
    if sender_halves.len() == senders {
        for (index, write, replies) in sender_halves {
            sending.spawn(sender(
                shared.clone(),
                index,
                write,
                replies,
                interval,
                deadline,
            ));
        }
    } else {
        report.send_failures += (senders - sender_halves.len()) as u64;
        writers.extend(sender_halves.into_iter().map(|(_, write, _)| write));
    }
    while let Some(done) = sending.join_next().await {
        match done {
            Ok((write, failures)) => {
                report.send_failures += failures;
                writers.push(write);
            }
            Err(_) => report.send_failures += 1,
        }
    }
    report.send_ms = send_started.elapsed().as_millis() as u64;
    report.sent = shared
        .acked
        .iter()
        .map(|acked| acked.load(Ordering::Relaxed))
        .sum();
    report.expected = report.joined as u64 * report.sent;

    // Drain: wait (bounded) for the last deliveries; stop early if they stop coming.
    progress.phase.store(2, Ordering::Relaxed);
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (progress.deliveries.load(Ordering::Relaxed), Instant::now());
    loop {
        let now = progress.deliveries.load(Ordering::Relaxed);
        if now >= report.expected || Instant::now() >= drain_deadline {
            break;
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(true);
    let mut last_delivery_us = 0;
    while let Some(done) = readers.join_next().await {
        match done {
            Ok(outcome) => {
                report.deliveries += outcome.delivered;
                report.missing += outcome.missing;
                report.duplicates += outcome.duplicates;
                report.unexpected += outcome.unexpected;
                report.members_lost += u64::from(outcome.lost);
                progress.errors.fetch_add(outcome.errors, Ordering::Relaxed);
                last_delivery_us = last_delivery_us.max(outcome.last_delivery_us);
            }
            Err(_) => {
                report.members_lost += 1;
                report.missing += report.sent;
            }
        }
    }
    drop(writers);
    progress
        .errors
        .fetch_add(report.send_failures, Ordering::Relaxed);

    if report.send_ms > 0 {
        report.messages_per_sec = report.sent as f64 / (report.send_ms as f64 / 1000.0);
    }
    let first_send_us = shared.first_send_us.load(Ordering::Relaxed);
    if last_delivery_us > first_send_us {
        report.deliveries_per_sec =
            report.deliveries as f64 / ((last_delivery_us - first_send_us) as f64 / 1e6);
    }
    let histogram = shared.latency.lock().unwrap_or_else(|e| e.into_inner());
    if !histogram.is_empty() {
        report.latency = Latency {
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
            mean_us: histogram.mean() as u64,
        };
    }
    progress.phase.store(3, Ordering::Relaxed);
    report
}

/// Milliseconds, from microseconds, for the summary.
fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// The summary's fan-out lines.
pub fn fanout_summary(report: &FanoutReport) -> String {
    format!(
        "fanout: {} members ({} joined in {} ms), {} senders at {}: {} messages sent in {:.1} s ({:.0}/s)\n\
         fanout: {} deliveries of {} expected ({:.0} deliveries/s), {} missing, {} duplicated, {} unexpected, {} members lost, {} send failures\n\
         fanout: latency p50 {}, p90 {}, p99 {}, p99.9 {}, max {} (mean {})\n",
        report.members,
        report.joined,
        report.join_ms,
        report.senders,
        if report.rate == 0 {
            "the pace of their acks".to_owned()
        } else {
            format!("{} messages/s", report.rate)
        },
        report.sent,
        report.send_ms as f64 / 1000.0,
        report.messages_per_sec,
        report.deliveries,
        report.expected,
        report.deliveries_per_sec,
        report.missing,
        report.duplicates,
        report.unexpected,
        report.members_lost,
        report.send_failures,
        ms(report.latency.p50_us),
        ms(report.latency.p90_us),
        ms(report.latency.p99_us),
        ms(report.latency.p999_us),
        ms(report.latency.max_us),
        ms(report.latency.mean_us),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_foreign_ones_do_not_parse() {
        let text = body(0xdead_beef, 3, 42, 1_234_567);
        assert_eq!(parse_body(&text), Some((0xdead_beef, 3, 42, 1_234_567)));
        assert_eq!(parse_body("hello"), None);
        assert_eq!(parse_body("ab 1 2 3 4"), None);
        assert_eq!(parse_body("zz 1 2 3"), None);
    }

    #[test]
    fn seen_counts_received_duplicates_and_beyond_the_acked() {
        let mut seen = Seen::new(2);
        for n in [0, 1, 2, 63, 64, 65, 130] {
            assert!(seen.mark(0, n));
        }
        assert!(!seen.mark(0, 64), "a duplicate");
        assert!(seen.mark(1, 5));
        // Sender 0 had 131 messages acknowledged: 7 received, none beyond.
        assert_eq!(seen.count(0, 131), (7, 0));
        // With only 64 acknowledged: 0, 1, 2, 63 below; 64, 65, 130 beyond.
        assert_eq!(seen.count(0, 64), (4, 3));
        assert_eq!(seen.count(0, 0), (0, 7));
        assert_eq!(seen.count(1, 6), (1, 0));
        assert_eq!(seen.count(1, 3), (0, 1));
    }
}

//! The syslog input (`agent.syslog[]`): listens on UDP and/or TCP and ships each message as a
//! record.
//!
//! ```text
//!  UDP socket ─┐
//!  TCP accept ─┼─ connection tasks (Framer) ─▶ (bounded) ─▶ batching task ─▶ (bounded) ─▶ ship_batches
//!              └ permit per connection (max_connections), taken before accept
//! ```
//!
//! Framing: a UDP datagram is one message; on TCP a frame starting with a digit is octet
//! counted (`LEN SP MSG`, RFC 6587 3.4.1), any other is newline terminated (RFC 6587 3.4.2),
//! decided per frame as rsyslog does. A message longer than `max_message_bytes` is cut there,
//! flagged truncated, and counted; the rest of it is skipped. Messages are parsed by
//! [`ferry_core::syslog`] (RFC 5424 and RFC 3164, the processor's parser): the record's line is
//! the MSG part; `host`, `app`, `severity`, `facility` (and `procid`, `msgid` when present) are
//! fields; a 5424 timestamp is the event time. A message that is not syslog is shipped as it
//! came, without fields, and counted (`ferry_agent_syslog_unparsed_total`).
//!
//! Guarantees: records carry a per-run stream origin (the agent id, a random stream id, the
//! byte count so far), so a collector that crashes mid-request neither loses nor duplicates a
//! message. A socket cannot be read twice: messages received but not yet acknowledged when the
//! agent itself dies are lost, UDP datagrams the kernel drops when the agent falls behind are
//! lost (UDP's own terms), and a TCP sender is slowed by back-pressure (the channels are
//! bounded, so a connection is not read while the shipper is behind).

use crate::batcher::{BatchLimits, Batcher, BuilderPool, Line, SealedBatch};
use crate::config::SyslogInputConfig;
use crate::output::Output;
use crate::{AgentError, AgentStats};
use ferry_core::record::{Field, FileId};
use ferry_core::shutdown::Shutdown;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// Messages between the sockets and the batching task.
const MESSAGE_QUEUE: usize = 1024;
/// Sealed batches waiting for the shipper.
const BATCH_QUEUE: usize = 4;
/// Most digits of an octet count (a count past `max_message_bytes` is cut anyway).
const MAX_COUNT_DIGITS: usize = 10;

/// One message off the wire, cut to `max_message_bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub bytes: Vec<u8>,
    /// Bytes it took on the wire (framing included): the record's span in the stream.
    pub wire_len: u64,
    pub truncated: bool,
}

/// Splits a TCP byte stream into syslog frames (octet counting or newline framing, decided per
/// frame). A plain struct fed with whatever each read returned; between reads it keeps at most
/// one unfinished frame (`max_message_bytes` and its count).
#[derive(Debug)]
pub struct Framer {
    max: usize,
    buf: Vec<u8>,
    skip: Skip,
    /// Wire bytes skipped (the cut-off rest of an over-long message, empty lines) not yet
    /// counted in a frame's `wire_len`: added to the next frame's.
    carry: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    No,
    /// This many more bytes of an octet-counted frame.
    Count(u64),
    /// Up to and including the next newline.
    Newline,
}

/// Why a TCP stream cannot be framed any further (the connection is closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("syslog framing: {0}")]
pub struct FramingError(String);

impl Framer {
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            max: max_message_bytes,
            buf: Vec::new(),
            skip: Skip::No,
            carry: 0,
        }
    }

    /// Takes `data` and appends the frames it completes to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Frame>) -> Result<(), FramingError> {
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        let result = self.frames(&mut pos, out);
        self.buf.drain(..pos);
        result
    }

    fn frames(&mut self, pos: &mut usize, out: &mut Vec<Frame>) -> Result<(), FramingError> {
        loop {
            let rest = &self.buf[*pos..];
            match self.skip {
                Skip::Count(n) => {
                    let k = (n as usize).min(rest.len());
                    *pos += k;
                    self.carry += k as u64;
                    let left = n - k as u64;
                    if left > 0 {
                        self.skip = Skip::Count(left);
                        return Ok(());
                    }
                    self.skip = Skip::No;
                    continue;
                }
                Skip::Newline => {
                    let (k, done) = match memchr::memchr(b'\n', rest) {
                        Some(i) => (i + 1, true),
                        None => (rest.len(), false),
                    };
                    *pos += k;
                    self.carry += k as u64;
                    if !done {
                        return Ok(());
                    }
                    self.skip = Skip::No;
                    continue;
                }
                Skip::No => {}
            }
            let Some(&first) = rest.first() else {
                return Ok(());
            };
            let (frame, used, skip) = if first.is_ascii_digit() {
                let Some(sp) = rest.iter().position(|b| !b.is_ascii_digit()) else {
                    if rest.len() > MAX_COUNT_DIGITS {
                        return Err(FramingError(format!(
                            "an octet count of more than {MAX_COUNT_DIGITS} digits"
                        )));
                    }
                    return Ok(());
                };
                if sp > MAX_COUNT_DIGITS || rest[sp] != b' ' {
                    return Err(FramingError(format!(
                        "octet count {:?} is not followed by a space",
                        String::from_utf8_lossy(&rest[..sp.min(16)])
                    )));
                }
                let len: u64 = std::str::from_utf8(&rest[..sp])
                    .ok()
                    .and_then(|d| d.parse().ok())
                    .ok_or_else(|| FramingError("octet count does not parse".into()))?;
                let start = sp + 1;
                let kept = len.min(self.max as u64) as usize;
                if rest.len() < start + kept {
                    return Ok(());
                }
                let skip = if len > kept as u64 {
                    Skip::Count(len - kept as u64)
                } else {
                    Skip::No
                };
                (&rest[start..start + kept], start + kept, skip)
            } else {
                match memchr::memchr(b'\n', rest) {
                    Some(i) if i <= self.max => (&rest[..i], i + 1, Skip::No),
                    _ if rest.len() > self.max => (&rest[..self.max], self.max, Skip::Newline),
                    _ => return Ok(()),
                }
            };
            let bytes = trim_newline(frame.to_vec());
            let wire_len = used as u64 + std::mem::take(&mut self.carry);
            *pos += used;
            self.skip = skip;
            if bytes.is_empty() && skip == Skip::No {
                // An empty line (a keep-alive some senders write) is no message.
                self.carry = wire_len;
                continue;
            }
            out.push(Frame {
                bytes,
                wire_len,
                truncated: skip != Skip::No,
            });
        }
    }

    /// At the end of the stream: a last message without its newline.
    pub fn finish(&mut self) -> Option<Frame> {
        if self.buf.is_empty() || self.skip != Skip::No || self.buf[0].is_ascii_digit() {
            return None;
        }
        let bytes = std::mem::take(&mut self.buf);
        let wire_len = bytes.len() as u64 + std::mem::take(&mut self.carry);
        Some(Frame {
            bytes: trim_newline(bytes),
            wire_len,
            truncated: false,
        })
    }
}

/// Drops a trailing `\n` / `\r\n` (some senders end octet-counted frames and datagrams with one).
fn trim_newline(mut b: Vec<u8>) -> Vec<u8> {
    if b.last() == Some(&b'\n') {
        b.pop();
    }
    if b.last() == Some(&b'\r') {
        b.pop();
    }
    b
}

/// A message as it becomes a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub line: Vec<u8>,
    pub fields: Vec<Field>,
    pub event_time_ms: Option<i64>,
    pub truncated: bool,
    pub wire_len: u64,
}

/// Parses a frame into a record: the MSG part as the line, the header as fields. `None` for
/// the fields when it is not syslog (the frame is then the line, as it came).
pub fn to_message(frame: Frame, statics: &[Field]) -> (Message, bool) {
    let parsed = std::str::from_utf8(&frame.bytes)
        .ok()
        .and_then(|s| ferry_core::syslog::parse(s).ok())
        .map(|m| {
            let mut fields: Vec<Field> = statics.to_vec();
            let named = [
                ("host", m.hostname),
                ("app", m.appname),
                ("severity", m.severity),
                ("facility", m.facility),
                ("procid", m.procid),
                ("msgid", m.msgid),
            ];
            for (k, v) in named {
                if let Some(v) = v {
                    fields.push(Field::new(k, v));
                }
            }
            (m.message.as_bytes().to_vec(), fields, m.time_ms)
        });
    let ok = parsed.is_some();
    let (line, fields, event_time_ms) =
        parsed.unwrap_or_else(|| (frame.bytes, statics.to_vec(), None));
    (
        Message {
            line,
            fields,
            event_time_ms,
            truncated: frame.truncated,
            wire_len: frame.wire_len,
        },
        ok,
    )
}

/// What a listener shipped, at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyslogReport {
    pub messages: u64,
    pub acknowledged: u64,
    pub dropped: u64,
}

/// The sockets of a listener, bound (so a bad address fails the agent's start).
pub struct SyslogInput {
    config: SyslogInputConfig,
    udp: Option<tokio::net::UdpSocket>,
    tcp: Option<tokio::net::TcpListener>,
}

impl SyslogInput {
    /// Binds the configured sockets.
    pub async fn bind(config: SyslogInputConfig) -> Result<Self, AgentError> {
        let bind_error = |what: &str, addr: &str, e: std::io::Error| AgentError::Thread {
            what: "syslog bind",
            message: format!("input {:?}: {what} {addr}: {e}", config.name),
        };
        let udp = match &config.udp {
            Some(a) => Some(
                tokio::net::UdpSocket::bind(a)
                    .await
                    .map_err(|e| bind_error("udp", a, e))?,
            ),
            None => None,
        };
        let tcp = match &config.tcp {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .map_err(|e| bind_error("tcp", a, e))?,
            ),
            None => None,
        };
        Ok(Self { config, udp, tcp })
    }

    /// The bound addresses (UDP, TCP): with port 0 in the config, the ports the OS chose.
    pub fn local_addrs(&self) -> (Option<std::net::SocketAddr>, Option<std::net::SocketAddr>) {
        (
            self.udp.as_ref().and_then(|s| s.local_addr().ok()),
            self.tcp.as_ref().and_then(|s| s.local_addr().ok()),
        )
    }

    /// Receives and ships until `shutdown`; then ships what was received, for at most
    /// `drain_timeout`.
    #[allow(clippy::too_many_arguments)]
    pub async fn run<O: Output>(
        self,
        agent_id: String,
        limits: BatchLimits,
        codec: ferry_core::batch::Codec,
        level: u32,
        output: Arc<O>,
        stats: Arc<AgentStats>,
        shutdown: Shutdown,
        drain_timeout: Duration,
    ) -> Result<SyslogReport, AgentError> {
        let name = self.config.name.clone();
        let topic = self.config.topic.clone();
        let statics: Arc<[Field]> = self
            .config
            .fields
            .iter()
            .map(|(k, v)| Field::new(k.as_str(), v.as_str()))
            .collect();
        let max = self.config.max_message_bytes.as_usize();
        let (msg_tx, msg_rx) = mpsc::channel::<Message>(MESSAGE_QUEUE);
        let (batch_tx, mut batch_rx) = mpsc::channel::<SealedBatch>(BATCH_QUEUE);
        let stream = FileId {
            dev: 0,
            inode: 0,
            fingerprint: rand::random::<u64>() | 1,
            generation: 0,
        };
        tracing::info!(input = name, topic, udp = ?self.config.udp, tcp = ?self.config.tcp, stream = %stream, "syslog input listening");
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(sock) = self.udp {
            let (tx, statics, sd, name) = (
                msg_tx.clone(),
                statics.clone(),
                shutdown.clone(),
                name.clone(),
            );
            tasks.spawn(receive_udp(sock, max, tx, statics, sd, name));
        }
        if let Some(listener) = self.tcp {
            let (tx, statics, sd, name) = (
                msg_tx.clone(),
                statics.clone(),
                shutdown.clone(),
                name.clone(),
            );
            let permits = Arc::new(tokio::sync::Semaphore::new(self.config.max_connections));
            tasks.spawn(accept_tcp(listener, max, permits, tx, statics, sd, name));
        }
        drop(msg_tx);
        let batching = tokio::spawn(batch_messages(
            msg_rx,
            batch_tx,
            agent_id,
            stream,
            limits,
            stats.clone(),
            name.clone(),
        ));
        let shipping = crate::stdin::ship_batches(
            output.as_ref(),
            &topic,
            &name,
            &mut batch_rx,
            codec,
            level,
            &stats,
        );
        tokio::pin!(shipping);
        let shipped = tokio::select! {
            r = &mut shipping => Some(r),
            _ = shutdown.wait() => None,
        };
        let shipped = match shipped {
            Some(r) => r?,
            // The listeners stop on the same signal, so the channels close: what was
            // received is shipped, for as long as the drain may take.
            None => match tokio::time::timeout(drain_timeout, &mut shipping).await {
                Ok(r) => r?,
                Err(_) => {
                    tracing::warn!(
                        input = name,
                        "syslog input: messages not acknowledged by the shutdown deadline are lost"
                    );
                    // It may be waiting for room in the channel the shipper no longer reads.
                    batching.abort();
                    Default::default()
                }
            },
        };
        while tasks.join_next().await.is_some() {}
        let messages = batching.await.unwrap_or(0);
        Ok(SyslogReport {
            messages,
            acknowledged: shipped.acknowledged,
            dropped: shipped.dropped,
        })
    }
}

fn count_parse(ok: bool, input: &str) {
    if !ok {
        metrics::counter!("ferry_agent_syslog_unparsed_total", "input" => input.to_owned())
            .increment(1);
    }
}

async fn receive_udp(
    sock: tokio::net::UdpSocket,
    max: usize,
    tx: mpsc::Sender<Message>,
    statics: Arc<[Field]>,
    shutdown: Shutdown,
    name: String,
) {
    // One byte more than allowed tells a datagram that was cut.
    let mut buf = vec![0u8; max + 1];
    loop {
        let n = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, _)) => n,
                Err(e) => {
                    tracing::warn!(input = name, error = %e, "syslog udp receive failed");
                    // Not a busy loop if the error persists.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => return,
        };
        let frame = Frame {
            bytes: trim_newline(buf[..n.min(max)].to_vec()),
            wire_len: n as u64,
            truncated: n > max,
        };
        let (msg, ok) = to_message(frame, &statics);
        count_parse(ok, &name);
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

async fn accept_tcp(
    listener: tokio::net::TcpListener,
    max: usize,
    permits: Arc<tokio::sync::Semaphore>,
    tx: mpsc::Sender<Message>,
    statics: Arc<[Field]>,
    shutdown: Shutdown,
    name: String,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        // The permit is taken before accepting: past max_connections, clients wait in the
        // backlog instead of holding memory here.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.wait() => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(input = name, error = %e, "syslog tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        let (tx, statics, sd, name) = (tx.clone(), statics.clone(), shutdown.clone(), name.clone());
        conns.spawn(async move {
            let _permit = permit;
            read_connection(stream, max, tx, statics, sd, name).await;
        });
        // Reap finished connections so the set stays as small as the open ones.
        while conns.try_join_next().is_some() {}
    }
    while conns.join_next().await.is_some() {}
}

async fn read_connection(
    mut stream: tokio::net::TcpStream,
    max: usize,
    tx: mpsc::Sender<Message>,
    statics: Arc<[Field]>,
    shutdown: Shutdown,
    name: String,
) {
    let mut framer = Framer::new(max);
    let mut buf = vec![0u8; 64 << 10];
    let mut frames = Vec::new();
    loop {
        let n = tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(input = name, error = %e, "syslog tcp read failed");
                    0
                }
            },
            _ = shutdown.wait() => return,
        };
        if n == 0 {
            frames.extend(framer.finish());
        } else if let Err(e) = framer.push(&buf[..n], &mut frames) {
            tracing::warn!(input = name, error = %e, "syslog tcp connection closed");
            metrics::counter!("ferry_agent_syslog_framing_errors_total", "input" => name.clone())
                .increment(1);
        }
        for f in frames.drain(..) {
            let (msg, ok) = to_message(f, &statics);
            count_parse(ok, &name);
            if tx.send(msg).await.is_err() {
                return;
            }
        }
        if n == 0 {
            return;
        }
    }
}

/// Messages into batches; a batch is sealed by size, count, or `linger` after its first record.
/// Returns the messages taken.
async fn batch_messages(
    mut rx: mpsc::Receiver<Message>,
    tx: mpsc::Sender<SealedBatch>,
    agent_id: String,
    stream: FileId,
    limits: BatchLimits,
    stats: Arc<AgentStats>,
    name: String,
) -> u64 {
    let mut batcher = Batcher::new(limits, BuilderPool::default());
    let mut sealed = Vec::new();
    let (mut offset, mut messages) = (0u64, 0u64);
    loop {
        let deadline = batcher.deadline();
        let msg = match deadline {
            Some(d) => tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep_until(d.into()) => {
                    sealed.extend(batcher.poll(Instant::now()));
                    for b in sealed.drain(..) {
                        if tx.send(b).await.is_err() {
                            return messages;
                        }
                    }
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(m) = msg else { break };
        if m.truncated {
            stats.lines_truncated.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("ferry_agent_truncated_lines_total", "input" => name.clone())
                .increment(1);
        }
        // A span of at least 1, so every record moves the stream offset (dedup needs it).
        let span = m.wire_len.max(1);
        let rec = Line {
            line: &m.line,
            span,
            event_time_ms: m.event_time_ms,
            truncated: m.truncated,
            fields: &m.fields,
        };
        batcher.push_line(&agent_id, stream, offset, rec, Instant::now(), &mut sealed);
        offset += span;
        messages += 1;
        stats.lines_read.fetch_add(1, Ordering::Relaxed);
        for b in sealed.drain(..) {
            if tx.send(b).await.is_err() {
                return messages;
            }
        }
    }
    sealed.extend(batcher.flush());
    for b in sealed.drain(..) {
        if tx.send(b).await.is_err() {
            break;
        }
    }
    messages
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(max: usize, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut f = Framer::new(max);
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, &mut out).unwrap();
        }
        out.extend(f.finish());
        out
    }

    fn texts(fs: &[Frame]) -> Vec<String> {
        fs.iter()
            .map(|f| String::from_utf8_lossy(&f.bytes).into_owned())
            .collect()
    }

    #[test]
    fn octet_counted_and_newline_frames_mix() {
        let fs = frames(100, &[b"5 hello3 abc", b"plain line\n", b"4 x\ny\nlast"]);
        assert_eq!(texts(&fs), ["hello", "abc", "plain line", "x\ny", "last"]);
        let wire: u64 = fs.iter().map(|f| f.wire_len).sum();
        assert_eq!(wire, 12 + 11 + 10);
    }

    #[test]
    fn long_messages_are_cut_and_the_rest_skipped() {
        let long = format!("20 {}", "a".repeat(20));
        let fs = frames(
            8,
            &[long.as_bytes(), b"2 ok", b"bbbbbbbbbbbbbbbbbbbb\nnext\n"],
        );
        assert_eq!(texts(&fs), ["aaaaaaaa", "ok", "bbbbbbbb", "next"]);
        assert_eq!(
            fs.iter().map(|f| f.truncated).collect::<Vec<_>>(),
            [true, false, true, false]
        );
        // The skipped rest of a cut message counts with the next frame.
        assert_eq!(fs[0].wire_len, 11);
        assert_eq!(fs[1].wire_len, 12 + 4);
        let wire: u64 = fs.iter().map(|f| f.wire_len).sum();
        assert_eq!(wire, long.len() as u64 + 4 + 21 + 5);
    }

    #[test]
    fn a_bad_octet_count_is_an_error() {
        let mut f = Framer::new(100);
        let mut out = Vec::new();
        assert!(f.push(b"12x hello", &mut out).is_err());
        let mut f = Framer::new(100);
        assert!(f.push(b"123456789012345 x", &mut out).is_err());
    }

    #[test]
    fn messages_get_fields_and_time() {
        let frame = |s: &str| Frame {
            bytes: s.as_bytes().to_vec(),
            wire_len: s.len() as u64,
            truncated: false,
        };
        let (m, ok) = to_message(
            frame("<165>1 2003-10-11T22:14:15.003Z web-1 shop 42 ID7 - paid"),
            &[Field::new("env", "prod")],
        );
        assert!(ok);
        assert_eq!(m.line, b"paid");
        assert_eq!(m.event_time_ms, Some(1_065_910_455_003));
        let f: Vec<(&str, &str)> = m.fields.iter().map(|f| (&*f.key, &*f.value)).collect();
        assert_eq!(
            f,
            [
                ("env", "prod"),
                ("host", "web-1"),
                ("app", "shop"),
                ("severity", "notice"),
                ("facility", "local4"),
                ("procid", "42"),
                ("msgid", "ID7")
            ]
        );
        let (m, ok) = to_message(frame("not syslog at all"), &[]);
        assert!(!ok);
        assert_eq!(m.line, b"not syslog at all");
        assert!(m.fields.is_empty());
    }

    proptest! {
        /// Any mix of octet-counted and newline frames, cut into arbitrary reads, comes back
        /// as the same messages, and the wire lengths add up to the stream's length.
        #[test]
        fn any_split_gives_the_same_frames(
            msgs in proptest::collection::vec(("[a-z <>0-9]{1,40}", any::<bool>()), 1..20),
            cuts in proptest::collection::vec(0usize..2000, 0..10),
        ) {
            let mut wire = Vec::new();
            let mut want = Vec::new();
            for (m, counted) in &msgs {
                // A newline-framed message must not start with a digit (it would read as a count).
                let m = if *counted { m.clone() } else { format!("x{m}") };
                if *counted {
                    wire.extend_from_slice(format!("{} {m}", m.len()).as_bytes());
                } else {
                    wire.extend_from_slice(format!("{m}\n").as_bytes());
                }
                want.push(m);
            }
            let mut cuts = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect::<Vec<_>>();
            cuts.push(0);
            cuts.push(wire.len());
            cuts.sort();
            let chunks: Vec<&[u8]> = cuts.windows(2).map(|w| &wire[w[0]..w[1]]).collect();
            let fs = frames(100, &chunks);
            prop_assert_eq!(texts(&fs), want);
            prop_assert_eq!(fs.iter().map(|f| f.wire_len).sum::<u64>(), wire.len() as u64);
        }
    }
}

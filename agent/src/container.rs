//! Container runtime log files: CRI (containerd, CRI-O) and Docker's json-file, with the pieces
//! of long lines merged back, and Kubernetes metadata from the file's path.
//!
//! | format | a line of the file | partial piece |
//! | --- | --- | --- |
//! | `cri` | `2026-12-03T10:00:00.123456789Z stdout F message` | tag `P` (the runtime cut a line, at 16 KiB), the last piece `F` |
//! | `docker` | `{"log":"message\n","stream":"stdout","time":"2026-12-03T10:00:00.123456789Z"}` | a `log` without its trailing newline |
//! | `auto` | either, per line: `{` starts a docker line | |
//!
//! A [`Merger`] (one per file, pure: time passed in) joins the pieces of each stream into one
//! record, cut at `max_line_bytes` (flagged truncated, the rest skipped but counted), with
//! `stream` as a field and the runtime's timestamp (of the first piece) as the event time.
//! Offsets stay exact and contiguous: a record's span runs from the end of the previous record to
//! the end of its last piece, so the checkpoint never passes bytes that were not shipped. (When
//! stdout and stderr interleave the pieces of unfinished lines, a record of one stream may span
//! pieces of the other that are still pending; those are shipped with their own record.) A line
//! that is not in the format is shipped as it is, flagged by the field `format_error`.
//!
//! [`kubernetes_fields`] reads `namespace`, `pod`, `pod_uid` and `container` from the kubelet's
//! layout: `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log` (and its rotations
//! `<n>.log.<timestamp>`), or a `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`
//! symlink, which is resolved to the file under `/var/log/pods` it points to (the tailer knows a
//! file by device and inode, so the two paths are one file, read once).

use crate::lines::Line;
use crate::multiline::Multiline;
use ferry_core::record::Field;
use std::path::Path;
use std::time::{Duration, Instant};

/// How a file's lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerFormat {
    Cri,
    Docker,
    /// Per line: `{` starts a docker line, anything else is CRI.
    Auto,
}

/// Which output stream of the container a piece came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn parse(s: &[u8]) -> Option<Self> {
        match s {
            b"stdout" => Some(Stream::Stdout),
            b"stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// One line of a runtime's file, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub stream: Stream,
    /// The runtime's timestamp, Unix ms.
    pub time_ms: Option<i64>,
    /// More pieces of the same line follow.
    pub partial: bool,
    pub text: Vec<u8>,
}

/// Why a line is not in the configured format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

/// Decodes one line (without its newline) of a file in `format`.
pub fn parse(format: ContainerFormat, line: &[u8]) -> Result<Piece, FormatError> {
    match format {
        ContainerFormat::Cri => parse_cri(line),
        ContainerFormat::Docker => parse_docker(line),
        ContainerFormat::Auto if line.first() == Some(&b'{') => parse_docker(line),
        ContainerFormat::Auto => parse_cri(line),
    }
}

/// `TIMESTAMP SP STREAM SP TAGS SP MESSAGE`; TAGS is `P` or `F`, optionally followed by
/// `:`-separated flags. The message may be empty (and its space missing).
pub fn parse_cri(line: &[u8]) -> Result<Piece, FormatError> {
    let bad = |what: &str| FormatError(format!("not a CRI log line: {what}"));
    let mut parts = line.splitn(4, |&b| b == b' ');
    let ts = parts.next().ok_or_else(|| bad("no timestamp"))?;
    let stream = parts.next().ok_or_else(|| bad("no stream"))?;
    let tags = parts.next().ok_or_else(|| bad("no P/F tag"))?;
    let text = parts.next().unwrap_or_default();
    let time_ms = std::str::from_utf8(ts)
        .ok()
        .and_then(ferry_core::time::parse_rfc3339)
        .ok_or_else(|| bad("the timestamp is not RFC 3339"))?;
    let stream = Stream::parse(stream).ok_or_else(|| bad("the stream is not stdout or stderr"))?;
    let partial = match tags.split(|&b| b == b':').next() {
        Some(b"P") => true,
        Some(b"F") => false,
        _ => return Err(bad("the tag is not P or F")),
    };
    Ok(Piece {
        stream,
        time_ms: Some(time_ms),
        partial,
        text: text.to_vec(),
    })
}

#[derive(serde::Deserialize)]
struct DockerLine {
    log: String,
    stream: String,
    #[serde(default)]
    time: Option<String>,
}

/// `{"log":"...\n","stream":"stdout","time":"..."}`; a `log` without its newline is partial.
pub fn parse_docker(line: &[u8]) -> Result<Piece, FormatError> {
    let d: DockerLine = serde_json::from_slice(line)
        .map_err(|e| FormatError(format!("not a docker json-file line: {e}")))?;
    let stream = Stream::parse(d.stream.as_bytes()).ok_or_else(|| {
        FormatError(format!(
            "not a docker json-file line: stream {:?} is not stdout or stderr",
            d.stream
        ))
    })?;
    let mut text = d.log.into_bytes();
    let partial = text.last() != Some(&b'\n');
    if !partial {
        text.pop();
    }
    Ok(Piece {
        stream,
        time_ms: d.time.as_deref().and_then(ferry_core::time::parse_rfc3339),
        partial,
        text,
    })
}

/// A whole line of the container, ready to batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// File offset of the record (the end of the previous one).
    pub offset: u64,
    /// File bytes up to the end of its last piece.
    pub span: u64,
    pub text: Vec<u8>,
    pub truncated: bool,
    pub time_ms: Option<i64>,
    /// `stream`, or `format_error` for a line that is not in the format.
    pub field: Field,
}

#[derive(Debug)]
struct Pending {
    text: Vec<u8>,
    truncated: bool,
    time_ms: Option<i64>,
    last_at: Instant,
}

/// Merges one file's pieces into lines. Pure: time is passed in.
#[derive(Debug)]
pub struct Merger {
    format: ContainerFormat,
    max_bytes: usize,
    /// A line whose last piece has not come yet, per stream.
    pending: [Option<Pending>; 2],
    /// Where the next record starts: the end of the last one handed out.
    emitted_end: Option<u64>,
    /// File bytes read (end of the last piece pushed).
    read_end: u64,
    /// A pending line is handed out as it is after this long without a piece.
    timeout: Duration,
}

impl Merger {
    pub fn new(format: ContainerFormat, max_bytes: usize, timeout: Duration) -> Self {
        Self {
            format,
            max_bytes: max_bytes.max(1),
            pending: [None, None],
            emitted_end: None,
            read_end: 0,
            timeout,
        }
    }

    /// Bytes held in memory for pending lines.
    pub fn held_bytes(&self) -> u64 {
        self.pending
            .iter()
            .flatten()
            .map(|p| p.text.len() as u64)
            .sum()
    }

    /// File bytes read but not yet in a record.
    pub fn pending_bytes(&self) -> u64 {
        self.read_end
            .saturating_sub(self.emitted_end.unwrap_or(self.read_end))
    }

    /// When a pending line times out.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending
            .iter()
            .flatten()
            .map(|p| p.last_at + self.timeout)
            .min()
    }

    /// Takes the line at `offset` (`span` file bytes, newline included) and hands out the
    /// records it completes.
    pub fn push(
        &mut self,
        offset: u64,
        line: &[u8],
        span: u64,
        line_truncated: bool,
        now: Instant,
        emit: &mut impl FnMut(Merged),
    ) {
        if self.emitted_end.is_some() && offset != self.read_end {
            // Reading goes on elsewhere (a truncation restarts at 0, a copy is read on): what
            // is pending belongs to what was read before.
            self.flush(emit);
            self.emitted_end = None;
        }
        if self.emitted_end.is_none() {
            self.emitted_end = Some(offset);
        }
        self.read_end = offset + span;
        let piece = match parse(self.format, line) {
            Ok(p) => p,
            Err(e) => {
                let record = Merged {
                    offset: 0,
                    span: 0,
                    text: line.to_vec(),
                    truncated: line_truncated,
                    time_ms: None,
                    field: Field::new("format_error", e.0),
                };
                self.hand_out(record, emit);
                return;
            }
        };
        let slot = &mut self.pending[piece.stream as usize];
        let p = slot.get_or_insert_with(|| Pending {
            text: Vec::new(),
            truncated: false,
            time_ms: piece.time_ms,
            last_at: now,
        });
        p.last_at = now;
        let room = self.max_bytes.saturating_sub(p.text.len());
        if piece.text.len() > room || line_truncated {
            p.truncated = true;
        }
        p.text
            .extend_from_slice(&piece.text[..piece.text.len().min(room)]);
        if !piece.partial {
            self.finish(piece.stream, emit);
        }
    }

    fn finish(&mut self, stream: Stream, emit: &mut impl FnMut(Merged)) {
        if let Some(p) = self.pending[stream as usize].take() {
            let record = Merged {
                offset: 0,
                span: 0,
                text: p.text,
                truncated: p.truncated,
                time_ms: p.time_ms,
                field: Field::new("stream", stream.name()),
            };
            self.hand_out(record, emit);
        }
    }

    /// Gives `record` the bytes from the last record's end to what was read.
    fn hand_out(&mut self, mut record: Merged, emit: &mut impl FnMut(Merged)) {
        let start = self.emitted_end.unwrap_or(self.read_end);
        record.offset = start;
        record.span = self.read_end.saturating_sub(start);
        self.emitted_end = Some(self.read_end);
        emit(record);
    }

    /// Counts the pending lines' timeout from `now` (reading was paused: their last piece may
    /// be in the file already).
    pub fn defer(&mut self, now: Instant) {
        for p in self.pending.iter_mut().flatten() {
            p.last_at = now;
        }
    }

    /// Hands out the lines whose last piece has not come for `timeout`.
    pub fn poll(&mut self, now: Instant, emit: &mut impl FnMut(Merged)) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            if self.pending[stream as usize]
                .as_ref()
                .is_some_and(|p| now >= p.last_at + self.timeout)
            {
                self.finish(stream, emit);
            }
        }
    }

    /// Hands out every pending line (the file is done: rotated away, truncated, deleted).
    pub fn flush(&mut self, emit: &mut impl FnMut(Merged)) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            self.finish(stream, emit);
        }
    }
}

/// `namespace`, `pod`, `pod_uid` and `container` of a file the kubelet laid out; empty for
/// another path. A `/var/log/containers/` symlink is followed to its target first.
pub fn kubernetes_fields(path: &Path) -> Vec<Field> {
    let resolved = std::fs::canonicalize(path).ok();
    let path = resolved.as_deref().unwrap_or(path);
    if let Some(f) = pods_path_fields(path) {
        return f;
    }
    containers_path_fields(path).unwrap_or_default()
}

/// `.../pods/<namespace>_<pod>_<uid>/<container>/<n>.log[.<rotation>]`.
fn pods_path_fields(path: &Path) -> Option<Vec<Field>> {
    let mut comps = path.components().rev().map(|c| c.as_os_str().to_str());
    let file = comps.next()??;
    let container = comps.next()??;
    let pod_dir = comps.next()??;
    if comps.next()?? != "pods" {
        return None;
    }
    let (n, _) = file.split_once(".log")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Namespaces and pod names cannot hold `_`; the uid is last.
    let (namespace, rest) = pod_dir.split_once('_')?;
    let (pod, uid) = rest.rsplit_once('_')?;
    if [namespace, pod, uid, container]
        .iter()
        .any(|s| s.is_empty())
    {
        return None;
    }
    Some(vec![
        Field::new("namespace", namespace),
        Field::new("pod", pod),
        Field::new("pod_uid", uid),
        Field::new("container", container),
    ])
}

/// `.../containers/<pod>_<namespace>_<container>-<id>.log` (a link that could not be followed).
fn containers_path_fields(path: &Path) -> Option<Vec<Field>> {
    let name = path.file_name()?.to_str()?.strip_suffix(".log")?;
    let (pod, rest) = name.split_once('_')?;
    let (namespace, rest) = rest.split_once('_')?;
    let (container, id) = rest.rsplit_once('-')?;
    if [pod, namespace, container, id].iter().any(|s| s.is_empty()) {
        return None;
    }
    Some(vec![
        Field::new("namespace", namespace),
        Field::new("pod", pod),
        Field::new("container", container),
    ])
}

/// What a joined record carries beyond its line: its event time and fields of its own.
#[derive(Debug, Default, Clone, Copy)]
pub struct Extra<'a> {
    pub event_time_ms: Option<i64>,
    pub fields: &'a [Field],
}

/// What turns one file's lines into records, when lines are not records as they are: a
/// [`Multiline`] rule, or a container format. Sits between the line splitter and the batcher
/// (`tail`'s `route_line`); time is passed in.
#[derive(Debug)]
pub enum Joiner {
    Multiline(Multiline),
    Container {
        merger: Merger,
        /// Kubernetes metadata of the file, added to each of its records.
        file_fields: Vec<Field>,
    },
}

impl Joiner {
    /// The joiner an input asks for on the file at `path`, if any.
    pub fn for_input(input: &crate::config::CompiledInput, path: &Path) -> Option<Self> {
        if let Some(format) = input.format {
            let file_fields = if input.kubernetes {
                kubernetes_fields(path)
            } else {
                Vec::new()
            };
            return Some(Joiner::Container {
                merger: Merger::new(format, input.max_line_bytes, input.line_flush_timeout),
                file_fields,
            });
        }
        input
            .multiline
            .clone()
            .map(|rule| Joiner::Multiline(Multiline::new(rule, input.max_line_bytes)))
    }

    pub fn push(
        &mut self,
        offset: u64,
        line: Line<'_>,
        now: Instant,
        emit: &mut impl FnMut(u64, Line<'_>, Extra<'_>),
    ) {
        match self {
            Joiner::Multiline(ml) => {
                ml.push(offset, line, now, &mut |o, l| emit(o, l, Extra::default()))
            }
            Joiner::Container {
                merger,
                file_fields,
            } => merger.push(
                offset,
                line.bytes,
                line.span,
                line.truncated,
                now,
                &mut |m| hand_out(m, file_fields, emit),
            ),
        }
    }

    /// Hands out what timed out.
    pub fn poll(&mut self, now: Instant, emit: &mut impl FnMut(u64, Line<'_>, Extra<'_>)) {
        match self {
            Joiner::Multiline(ml) => ml.poll(now, &mut |o, l| emit(o, l, Extra::default())),
            Joiner::Container {
                merger,
                file_fields,
            } => merger.poll(now, &mut |m| hand_out(m, file_fields, emit)),
        }
    }

    /// Hands out everything pending (the file is done).
    pub fn flush(&mut self, emit: &mut impl FnMut(u64, Line<'_>, Extra<'_>)) {
        match self {
            Joiner::Multiline(ml) => ml.flush(&mut |o, l| emit(o, l, Extra::default())),
            Joiner::Container {
                merger,
                file_fields,
            } => merger.flush(&mut |m| hand_out(m, file_fields, emit)),
        }
    }

    /// The timeout is due but the file may still hold what continues the pending record:
    /// count it from `now`.
    pub fn defer(&mut self, now: Instant) {
        match self {
            Joiner::Multiline(ml) => ml.defer(now),
            Joiner::Container { merger, .. } => merger.defer(now),
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Joiner::Multiline(ml) => ml.deadline(),
            Joiner::Container { merger, .. } => merger.deadline(),
        }
    }

    /// Bytes held in memory for pending records.
    pub fn held_bytes(&self) -> u64 {
        match self {
            Joiner::Multiline(ml) => ml.held_bytes(),
            Joiner::Container { merger, .. } => merger.held_bytes(),
        }
    }
}

fn hand_out(m: Merged, file_fields: &[Field], emit: &mut impl FnMut(u64, Line<'_>, Extra<'_>)) {
    let mut fields = Vec::with_capacity(1 + file_fields.len());
    fields.push(m.field);
    fields.extend_from_slice(file_fields);
    emit(
        m.offset,
        Line {
            bytes: &m.text,
            span: m.span,
            truncated: m.truncated,
        },
        Extra {
            event_time_ms: m.time_ms,
            fields: &fields,
        },
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(m: &mut Merger, lines: &[String]) -> Vec<Merged> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut off = 0u64;
        for l in lines {
            let span = l.len() as u64 + 1;
            m.push(off, l.as_bytes(), span, false, now, &mut |r| out.push(r));
            off += span;
        }
        m.flush(&mut |r| out.push(r));
        out
    }

    #[test]
    fn cri_pieces_merge_per_stream_with_time_and_stream() {
        let lines: Vec<String> = [
            "2026-12-03T10:00:00.123456789Z stdout P hel",
            "2026-12-03T10:00:01Z stderr F oops",
            "2026-12-03T10:00:02Z stdout F lo",
            "2026-12-03T10:00:03Z stdout F",
        ]
        .map(String::from)
        .to_vec();
        let mut m = Merger::new(ContainerFormat::Cri, 1024, Duration::from_secs(1));
        let out = run(&mut m, &lines);
        let texts: Vec<&[u8]> = out.iter().map(|r| &r.text[..]).collect();
        assert_eq!(texts, [&b"oops"[..], b"hello", b""]);
        assert_eq!(out[1].time_ms, Some(1_796_292_000_123));
        assert_eq!(&*out[1].field.value, "stdout");
        assert_eq!(&*out[0].field.value, "stderr");
        // Contiguous spans covering the file.
        let total: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
        assert_eq!(out.iter().map(|r| r.span).sum::<u64>(), total);
        assert_eq!(out[0].offset, 0);
        assert_eq!(out[1].offset, out[0].span);
    }

    #[test]
    fn docker_lines_without_newline_are_partial() {
        let lines: Vec<String> = [
            r#"{"log":"a long ","stream":"stdout","time":"2026-12-03T10:00:00.5Z"}"#,
            r#"{"log":"line\n","stream":"stdout","time":"2026-12-03T10:00:01Z"}"#,
            r#"{"log":"x\n","stream":"stderr","time":"2026-12-03T10:00:02Z"}"#,
        ]
        .map(String::from)
        .to_vec();
        let mut m = Merger::new(ContainerFormat::Auto, 1024, Duration::from_secs(1));
        let out = run(&mut m, &lines);
        let texts: Vec<&[u8]> = out.iter().map(|r| &r.text[..]).collect();
        assert_eq!(texts, [&b"a long line"[..], b"x"]);
        assert_eq!(out[0].time_ms, Some(1_796_292_000_500));
    }

    #[test]
    fn long_lines_are_cut_and_bad_lines_flagged() {
        let lines: Vec<String> = [
            "2026-12-03T10:00:00Z stdout P 0123456789",
            "2026-12-03T10:00:00Z stdout F abcdef",
            "garbage",
        ]
        .map(String::from)
        .to_vec();
        let mut m = Merger::new(ContainerFormat::Cri, 12, Duration::from_secs(1));
        let out = run(&mut m, &lines);
        assert_eq!(out[0].text, b"0123456789ab");
        assert!(out[0].truncated);
        assert_eq!(out[1].text, b"garbage");
        assert_eq!(&*out[1].field.key, "format_error");
    }

    #[test]
    fn reading_elsewhere_hands_out_what_is_pending_and_starts_over() {
        let now = Instant::now();
        let mut m = Merger::new(ContainerFormat::Cri, 100, Duration::from_secs(1));
        let mut out = Vec::new();
        let p = b"2026-12-03T10:00:00Z stdout P old";
        let f = b"2026-12-03T10:00:00Z stdout F new";
        m.push(100, p, p.len() as u64 + 1, false, now, &mut |r| out.push(r));
        // Truncated: reading starts over at 0.
        m.push(0, f, f.len() as u64 + 1, false, now, &mut |r| out.push(r));
        let got: Vec<(u64, u64, &[u8])> = out
            .iter()
            .map(|r| (r.offset, r.span, &r.text[..]))
            .collect();
        let (np, nf) = (p.len() as u64 + 1, f.len() as u64 + 1);
        assert_eq!(got, [(100, np, &b"old"[..]), (0, nf, &b"new"[..])]);
        assert!(out[0].field.value.as_ref() == "stdout" && !out[0].truncated);
    }

    #[test]
    fn a_pending_piece_times_out() {
        let t0 = Instant::now();
        let mut m = Merger::new(ContainerFormat::Cri, 100, Duration::from_secs(1));
        let mut out = Vec::new();
        let l = b"2026-12-03T10:00:00Z stdout P half";
        m.push(0, l, l.len() as u64 + 1, false, t0, &mut |r| out.push(r));
        assert_eq!(m.deadline(), Some(t0 + Duration::from_secs(1)));
        m.poll(t0 + Duration::from_millis(999), &mut |r| out.push(r));
        assert!(out.is_empty());
        m.poll(t0 + Duration::from_secs(1), &mut |r| out.push(r));
        assert_eq!(out[0].text, b"half");
        assert_eq!(m.pending_bytes(), 0);
    }

    #[test]
    fn kubelet_paths_give_pod_metadata() {
        let f = pods_path_fields(Path::new(
            "/var/log/pods/shop_checkout-7d9f_0b9c1e2a-1111-2222/app/0.log.20261203-100000",
        ))
        .unwrap();
        let kv: Vec<(&str, &str)> = f.iter().map(|f| (&*f.key, &*f.value)).collect();
        assert_eq!(
            kv,
            [
                ("namespace", "shop"),
                ("pod", "checkout-7d9f"),
                ("pod_uid", "0b9c1e2a-1111-2222"),
                ("container", "app")
            ]
        );
        let f = containers_path_fields(Path::new(
            "/var/log/containers/checkout-7d9f_shop_app-0123abcd.log",
        ))
        .unwrap();
        assert_eq!(&*f[0].value, "shop");
        assert_eq!(&*f[2].value, "app");
        assert!(pods_path_fields(Path::new("/var/log/app/0.log")).is_none());
    }

    /// A line split into random pieces the way a runtime would write it.
    fn pieces(line: &str, cuts: &[usize], stream: &str, docker: bool) -> Vec<String> {
        let mut at: Vec<usize> = cuts
            .iter()
            .map(|c| c % (line.len() + 1))
            .filter(|&c| line.is_char_boundary(c))
            .collect();
        at.push(0);
        at.push(line.len());
        at.sort();
        at.dedup();
        let n = at.len() - 1;
        (0..n.max(1))
            .map(|i| {
                let (a, b) = if n == 0 { (0, 0) } else { (at[i], at[i + 1]) };
                let last = i + 1 >= n;
                let text = &line[a..b];
                if docker {
                    let log = if last { format!("{text}\n") } else { text.to_owned() };
                    serde_json::json!({"log": log, "stream": stream, "time": "2026-12-03T10:00:00Z"})
                        .to_string()
                } else {
                    let tag = if last { "F" } else { "P" };
                    format!("2026-12-03T10:00:00.000000001Z {stream} {tag} {text}")
                }
            })
            .collect()
    }

    proptest! {
        /// Lines cut at random into partial pieces (per stream, both streams interleaved as
        /// whole lines) merge back into the original lines, and the spans add up to the file.
        #[test]
        fn random_splits_merge_back(
            lines in proptest::collection::vec(
                ("[a-zA-Z0-9 {}\"é]{0,60}", any::<bool>(), proptest::collection::vec(0usize..64, 0..4)),
                1..20,
            ),
            docker in any::<bool>(),
        ) {
            let mut file = Vec::new();
            let mut want = Vec::new();
            for (text, err, cuts) in &lines {
                let stream = if *err { "stderr" } else { "stdout" };
                file.extend(pieces(text, cuts, stream, docker));
                want.push((text.clone(), stream));
            }
            let mut m = Merger::new(ContainerFormat::Auto, 1 << 20, Duration::from_secs(1));
            let out = run(&mut m, &file);
            let got: Vec<(String, &str)> = out
                .iter()
                .map(|r| {
                    let stream = if &*r.field.value == "stderr" { "stderr" } else { "stdout" };
                    (String::from_utf8(r.text.clone()).unwrap(), stream)
                })
                .collect();
            prop_assert!(out.iter().all(|r| &*r.field.key == "stream"));
            prop_assert_eq!(got, want);
            let total: u64 = file.iter().map(|l| l.len() as u64 + 1).sum();
            prop_assert_eq!(out.iter().map(|r| r.span).sum::<u64>(), total);
        }
    }
}

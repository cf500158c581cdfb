//! Joining lines into one record: a stack trace arrives as one record, not thirty.
//!
//! Two rules, as in Filebeat and Fluent Bit: with a *start* pattern, a matching line begins a
//! record and the lines that do not match continue it; with a *continuation* pattern, matching
//! lines continue the current record and any other line begins a new one. A record is shipped
//! when the next one begins, when it reaches `max_lines`, or when no line has continued it for
//! `timeout` (the writer may be done). The joined record is the lines separated by `\n`, cut at
//! `max_bytes` (flagged truncated); its span is the sum of its lines' spans, so offsets stay
//! exact. The joiner works on lines, so a record split across reads joins the same way.

use crate::config::{MultilineMode, MultilineRule};
use crate::lines::Line;
use std::time::Instant;

/// Joins one file's lines. Pure: time is passed in.
#[derive(Debug)]
pub struct Multiline {
    rule: MultilineRule,
    max_bytes: usize,
    /// The record being built (already cut at `max_bytes`).
    buf: Vec<u8>,
    /// Lines in `buf`; 0 means no record is pending.
    lines: usize,
    span: u64,
    truncated: bool,
    /// File offset of the pending record's first line.
    offset: u64,
    /// When the last line was added (the timeout counts from there).
    last_at: Option<Instant>,
}

impl Multiline {
    pub fn new(rule: MultilineRule, max_bytes: usize) -> Self {
        Self {
            rule,
            max_bytes: max_bytes.max(1),
            buf: Vec::new(),
            lines: 0,
            span: 0,
            truncated: false,
            offset: 0,
            last_at: None,
        }
    }

    /// Bytes of the file held in the pending record.
    pub fn pending_bytes(&self) -> u64 {
        self.span
    }

    /// Bytes held in memory for the pending record (at most `max_bytes`).
    pub fn held_bytes(&self) -> u64 {
        self.buf.len() as u64
    }

    /// When the pending record times out.
    pub fn deadline(&self) -> Option<Instant> {
        self.last_at.map(|t| t + self.rule.timeout)
    }

    /// Takes one line at file offset `offset`; calls `emit(offset, record)` for each record it
    /// completes.
    pub fn push(
        &mut self,
        offset: u64,
        line: Line<'_>,
        now: Instant,
        emit: &mut impl FnMut(u64, Line<'_>),
    ) {
        let continues = match &self.rule.mode {
            MultilineMode::Start(re) => !re.is_match(line.bytes),
            MultilineMode::Continuation(re) => re.is_match(line.bytes),
        };
        if self.lines > 0 && !continues {
            self.flush(emit);
        }
        if self.lines == 0 {
            self.offset = offset;
        } else {
            self.append(b"\n");
        }
        self.append(line.bytes);
        self.truncated |= line.truncated;
        self.span += line.span;
        self.lines += 1;
        self.last_at = Some(now);
        if self.lines >= self.rule.max_lines {
            self.flush(emit);
        }
    }

    /// Ships the pending record if it timed out.
    pub fn poll(&mut self, now: Instant, emit: &mut impl FnMut(u64, Line<'_>)) {
        if self.deadline().is_some_and(|d| now >= d) {
            self.flush(emit);
        }
    }

    /// The pending record's timeout is due but its file may still hold lines that continue it
    /// (reading was paused by a full buffer or the read budget): count the timeout from `now`.
    pub fn defer(&mut self, now: Instant) {
        if self.lines > 0 {
            self.last_at = Some(now);
        }
    }

    /// Ships the pending record now.
    pub fn flush(&mut self, emit: &mut impl FnMut(u64, Line<'_>)) {
        if self.lines == 0 {
            return;
        }
        emit(
            self.offset,
            Line {
                bytes: &self.buf,
                span: self.span,
                truncated: self.truncated,
            },
        );
        self.clear();
    }

    /// Forgets the pending record (reading restarts elsewhere).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.lines = 0;
        self.span = 0;
        self.truncated = false;
        self.last_at = None;
    }

    fn append(&mut self, bytes: &[u8]) {
        let room = self.max_bytes.saturating_sub(self.buf.len());
        if bytes.len() > room {
            self.truncated = true;
        }
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::lines::LineSplitter;
    use regex::bytes::Regex;
    use std::time::Duration;

    fn rule(mode: MultilineMode, max_lines: usize) -> MultilineRule {
        MultilineRule {
            mode,
            max_lines,
            timeout: Duration::from_secs(1),
        }
    }

    /// Feeds `chunks` through a line splitter and the joiner, as the watcher does.
    fn join(ml: &mut Multiline, chunks: &[&[u8]], now: Instant) -> Vec<(u64, String, u64)> {
        let mut out = Vec::new();
        let mut splitter = LineSplitter::new(1 << 20);
        let mut offset = 0u64;
        for c in chunks {
            splitter.feed(c, &mut |l| {
                let at = offset;
                offset += l.span;
                ml.push(at, l, now, &mut |o, r| {
                    out.push((o, String::from_utf8_lossy(r.bytes).into_owned(), r.span))
                });
            });
        }
        out
    }

    #[test]
    fn stack_trace_split_across_reads_is_one_record() {
        let start = Regex::new(r"^\d{4}-").unwrap();
        let mut ml = Multiline::new(rule(MultilineMode::Start(start), 100), 1 << 20);
        let t0 = Instant::now();
        let out = join(
            &mut ml,
            &[
                b"2026-01-01 ERROR boom\njava.lang.Ill",
                b"egalState\n\tat a.b(C.java:1)\n\tat d",
                b".e(F.java:2)\n2026-01-01 INFO next\n",
            ],
            t0,
        );
        assert_eq!(
            out,
            vec![(
                0,
                "2026-01-01 ERROR boom\njava.lang.IllegalState\n\tat a.b(C.java:1)\n\tat d.e(F.java:2)"
                    .to_owned(),
                81
            )]
        );
        // The last record waits for its timeout, then ships with its exact offset and span.
        let mut late = Vec::new();
        ml.poll(t0 + Duration::from_millis(999), &mut |o, r| {
            late.push((o, r.span))
        });
        assert!(late.is_empty());
        ml.poll(t0 + Duration::from_secs(1), &mut |o, r| {
            late.push((o, r.span))
        });
        assert_eq!(late, vec![(81, 21)]);
    }

    #[test]
    fn continuation_pattern_and_max_lines() {
        let cont = Regex::new(r"^\s").unwrap();
        let mut ml = Multiline::new(rule(MultilineMode::Continuation(cont), 3), 1 << 20);
        let out = join(&mut ml, &[b"a\n b\n c\n d\ne\n"], Instant::now());
        // "a b c" reach max_lines; " d" then starts its own record; "e" ends it.
        let texts: Vec<_> = out.iter().map(|o| o.1.as_str()).collect();
        assert_eq!(texts, vec!["a\n b\n c", " d"]);
        assert_eq!(out[1].0, 8);
    }

    #[test]
    fn oversized_record_is_cut_and_flagged() {
        let start = Regex::new("^S").unwrap();
        let mut ml = Multiline::new(rule(MultilineMode::Start(start), 100), 8);
        let mut out = Vec::new();
        let now = Instant::now();
        let mut emit = |o: u64, r: Line<'_>| out.push((o, r.bytes.to_vec(), r.span, r.truncated));
        for (i, l) in [&b"S12345"[..], b"6789", b"S"].iter().enumerate() {
            let line = Line {
                bytes: l,
                span: l.len() as u64 + 1,
                truncated: false,
            };
            ml.push(i as u64, line, now, &mut emit);
        }
        assert_eq!(out, vec![(0, b"S12345\n6".to_vec(), 12, true)]);
    }
}

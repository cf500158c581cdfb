//! Splitting a file's bytes into lines.
//!
//! The splitter is fed whatever a read returned (64-256 KiB at a time) and finds newlines with
//! `memchr`. A line wholly inside one chunk is handed out as a slice of that chunk: no copy, no
//! allocation. Only the incomplete tail of a chunk is copied, into a per-file buffer that waits
//! for the rest of its line. A line longer than `max_line_bytes` keeps its first
//! `max_line_bytes` bytes, is flagged truncated, and the rest of it is skipped but counted in
//! its span, so the file keeps flowing and offsets stay exact. Lines are bytes: invalid UTF-8 is
//! kept as written.

/// One line, as handed to the next stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    /// The line without its newline (cut to `max_line_bytes` if `truncated`).
    pub bytes: &'a [u8],
    /// Bytes of the file this line consumed: the whole line, skipped part and newline included.
    pub span: u64,
    pub truncated: bool,
}

/// Splits a stream of chunks into lines. One per file.
#[derive(Debug)]
pub struct LineSplitter {
    max_line_bytes: usize,
    /// Start of a line whose newline has not been read yet (at most `max_line_bytes`).
    partial: Vec<u8>,
    /// Bytes of the current line beyond `max_line_bytes`, dropped but counted.
    skipped: u64,
}

impl LineSplitter {
    pub fn new(max_line_bytes: usize) -> Self {
        Self {
            max_line_bytes: max_line_bytes.max(1),
            partial: Vec::new(),
            skipped: 0,
        }
    }

    /// Bytes read but not yet handed out as a line.
    pub fn pending_bytes(&self) -> u64 {
        self.partial.len() as u64 + self.skipped
    }

    /// Bytes held in memory for the incomplete line (at most `max_line_bytes`; the skipped part
    /// of an over-long line is counted in [`Self::pending_bytes`] but not kept).
    pub fn held_bytes(&self) -> u64 {
        self.partial.len() as u64
    }

    /// Feeds one chunk; calls `emit` for every line it completes, in order.
    pub fn feed(&mut self, chunk: &[u8], emit: &mut impl FnMut(Line<'_>)) {
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', chunk) {
            let piece = &chunk[start..nl];
            if self.pending_bytes() == 0 {
                if piece.len() <= self.max_line_bytes {
                    emit(Line {
                        bytes: piece,
                        span: piece.len() as u64 + 1,
                        truncated: false,
                    });
                } else {
                    emit(Line {
                        bytes: &piece[..self.max_line_bytes],
                        span: piece.len() as u64 + 1,
                        truncated: true,
                    });
                }
            } else {
                self.append(piece);
                self.emit_pending(1, emit);
            }
            start = nl + 1;
        }
        self.append(&chunk[start..]);
    }

    /// Hands out the pending incomplete line, if any, as a line without newline (after its flush
    /// timeout, or because the file was truncated or released). Returns whether it did.
    pub fn flush(&mut self, emit: &mut impl FnMut(Line<'_>)) -> bool {
        if self.pending_bytes() == 0 {
            return false;
        }
        self.emit_pending(0, emit);
        true
    }

    /// Forgets the pending incomplete line (reading restarts elsewhere).
    pub fn clear(&mut self) {
        self.partial.clear();
        self.skipped = 0;
    }

    fn append(&mut self, piece: &[u8]) {
        let room = self.max_line_bytes - self.partial.len();
        if piece.len() <= room {
            self.partial.extend_from_slice(piece);
        } else {
            self.partial.extend_from_slice(&piece[..room]);
            self.skipped += (piece.len() - room) as u64;
        }
    }

    fn emit_pending(&mut self, newline: u64, emit: &mut impl FnMut(Line<'_>)) {
        let span = self.partial.len() as u64 + self.skipped + newline;
        let truncated = self.skipped > 0;
        emit(Line {
            bytes: &self.partial,
            span,
            truncated,
        });
        self.partial.clear();
        self.skipped = 0;
        // A rare huge line should not pin its buffer forever.
        if self.partial.capacity() > 64 << 10 {
            self.partial.shrink_to(4 << 10);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(max: usize, chunks: &[&[u8]], flush: bool) -> Vec<(Vec<u8>, u64, bool)> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        let mut emit = |l: Line<'_>| out.push((l.bytes.to_vec(), l.span, l.truncated));
        for c in chunks {
            s.feed(c, &mut emit);
        }
        if flush {
            s.flush(&mut emit);
        }
        out
    }

    #[test]
    fn lines_across_chunks_and_partial_tail() {
        let out = run(100, &[b"ab\ncd", b"ef\n\ngh"], false);
        assert_eq!(
            out,
            vec![
                (b"ab".to_vec(), 3, false),
                (b"cdef".to_vec(), 5, false),
                (b"".to_vec(), 1, false)
            ]
        );
        let out = run(100, &[b"ab\ncd", b"ef\n\ngh"], true);
        assert_eq!(out.last(), Some(&(b"gh".to_vec(), 2, false)));
    }

    #[test]
    fn long_line_is_truncated_counted_and_the_file_keeps_flowing() {
        let long = vec![b'x'; 50];
        let mut chunk = long.clone();
        chunk.extend_from_slice(b"\nok\n");
        let out = run(10, &[&chunk], false);
        assert_eq!(out[0], (vec![b'x'; 10], 51, true));
        assert_eq!(out[1], (b"ok".to_vec(), 3, false));
        // The same line arriving in pieces, over several chunks.
        let out = run(
            10,
            &[&long[..7], &long[7..30], &long[30..], b"\nok\n"],
            false,
        );
        assert_eq!(out[0], (vec![b'x'; 10], 51, true));
        assert_eq!(out[1], (b"ok".to_vec(), 3, false));
    }

    #[test]
    fn invalid_utf8_is_kept() {
        let out = run(100, &[b"\xff\xfe\n"], false);
        assert_eq!(out[0].0, b"\xff\xfe".to_vec());
    }

    proptest! {
        /// However the bytes are chunked, the spans add up to the bytes consumed and the lines
        /// are what `split` gives.
        #[test]
        fn chunking_does_not_matter(data in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'a'), Just(b'b')], 0..200), cuts in proptest::collection::vec(0usize..200, 0..6), max in 1usize..20) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for c in cuts { chunks.push(&data[prev..c]); prev = c; }
            chunks.push(&data[prev..]);
            let out = run(max, &chunks, true);
            let total: u64 = out.iter().map(|l| l.1).sum();
            prop_assert_eq!(total, data.len() as u64);
            let mut want: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
            if data.last() == Some(&b'\n') || data.is_empty() { want.pop(); }
            prop_assert_eq!(out.len(), want.len());
            for (got, w) in out.iter().zip(want) {
                prop_assert_eq!(&got.0[..], &w[..w.len().min(max)]);
                prop_assert_eq!(got.2, w.len() > max);
            }
        }
    }
}

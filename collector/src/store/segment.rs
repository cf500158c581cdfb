//! Segment files: the batches of one partition, framed, in offset order.
//!
//! A partition directory holds segments named by their zero-padded base offset
//! (`00000000000000000000.log`), so that order by name is order by offset. Only the newest
//! segment (the active one) is appended to; the others are sealed and were fsynced when they
//! were rolled.
//!
//! # Segment file layout (integers little-endian)
//!
//! | offset | size | field                                   |
//! |-------:|-----:|-----------------------------------------|
//! | 0      | 4    | magic `FRYS`                            |
//! | 4      | 1    | version, currently 1                    |
//! | 5      | 3    | reserved, zero                          |
//! | 8      | 8    | base offset (same as in the file name)  |
//! | 16     | ...  | frames, back to back                    |
//!
//! # Frame layout (one stored batch)
//!
//! | offset | size | field                                                         |
//! |-------:|-----:|---------------------------------------------------------------|
//! | 0      | 4    | `len`: length of the batch bytes that follow the frame header |
//! | 4      | 4    | CRC32C of frame bytes `[8, 28)` followed by the batch bytes    |
//! | 8      | 8    | base offset: offset of the batch's first record                |
//! | 16     | 8    | append time, Unix ms (non-decreasing within a partition)      |
//! | 24     | 4    | record count (offsets `base .. base + count`)                 |
//! | 28     | len  | the ferry batch exactly as stored (see `ferry_core::batch`)   |
//!
//! The frame CRC covers everything a reader relies on, so a flipped bit anywhere in a frame is
//! caught without decompressing; the batch keeps its own CRC for the consumer.

use super::fs::ReadableFile;
use std::io;
use std::path::{Path, PathBuf};

pub const SEGMENT_MAGIC: [u8; 4] = *b"FRYS";
/// Version of every file header the store writes.
pub const FILE_VERSION: u8 = 1;
/// Length of the header of segment and index files.
pub const FILE_HEADER_LEN: u64 = 16;
/// Length of a frame header.
pub const FRAME_HEADER_LEN: usize = 28;
/// Smallest possible batch (its fixed header).
const MIN_BATCH_LEN: u32 = ferry_core::batch::FIXED_HEADER_LEN as u32;
/// Largest batch a frame may hold (as `Store::append` accepts); a longer length field is
/// corruption, and is refused before anything is allocated for it.
const MAX_FRAME_DATA: u32 = 256 << 20;
/// Most bytes one read of `read_frames` asks for at once.
const MAX_READ_CHUNK: u64 = 16 << 20;
/// Read size of sequential scans.
const SCAN_CHUNK: usize = 4 << 20;

pub const LOG_EXT: &str = "log";
pub const INDEX_EXT: &str = "index";
pub const TIME_INDEX_EXT: &str = "timeindex";
pub const SNAPSHOT_EXT: &str = "snapshot";

/// `dir/{base:020}.{ext}`
pub fn file_path(dir: &Path, base: u64, ext: &str) -> PathBuf {
    dir.join(format!("{base:020}.{ext}"))
}

/// The base offset in a file name like `00000000000000000042.log`, if it has extension `ext`.
pub fn parse_base(path: &Path, ext: &str) -> Option<u64> {
    if path.extension()? != ext {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// The 16-byte header shared by segment and index files.
pub fn file_header(magic: [u8; 4], base: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&magic);
    h[4] = FILE_VERSION;
    h[8..].copy_from_slice(&base.to_le_bytes());
    h
}

/// Checks a file header; the reason on failure.
pub fn check_file_header(buf: &[u8], magic: [u8; 4], base: u64) -> Result<(), String> {
    if buf.len() < FILE_HEADER_LEN as usize {
        return Err(format!("header truncated ({} bytes)", buf.len()));
    }
    if buf[..4] != magic {
        return Err(format!("bad magic {:02x?}", &buf[..4]));
    }
    if buf[4] != FILE_VERSION {
        return Err(format!("unsupported version {}", buf[4]));
    }
    let found = u64_at(buf, 8);
    if found != base {
        return Err(format!(
            "header names base offset {found}, file name {base}"
        ));
    }
    Ok(())
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub crc: u32,
    pub base_offset: u64,
    pub append_time_ms: i64,
    pub record_count: u32,
}

impl FrameHeader {
    pub fn parse(buf: &[u8]) -> Option<Self> {
        if buf.len() < FRAME_HEADER_LEN {
            return None;
        }
        Some(Self {
            len: u32_at(buf, 0),
            crc: u32_at(buf, 4),
            base_offset: u64_at(buf, 8),
            append_time_ms: u64_at(buf, 16) as i64,
            record_count: u32_at(buf, 24),
        })
    }

    /// Total bytes of the frame, header included.
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.len)
    }

    /// Offset just past the last record of the batch.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

/// Appends one frame (header + batch) to `out` (the store stages frames with [`frame_header`]
/// and writes them with their batches; this builds whole segments for tests).
#[cfg(test)]
pub fn encode_frame(
    out: &mut Vec<u8>,
    base_offset: u64,
    append_time_ms: i64,
    count: u32,
    batch: &[u8],
) {
    out.extend_from_slice(&frame_header(
        base_offset,
        append_time_ms,
        count,
        batch.len(),
        crc32c::crc32c(batch),
    ));
    out.extend_from_slice(batch);
}

/// The header of the frame of a batch of `batch_len` bytes whose CRC32C is `batch_crc`: what
/// precedes the batch in a segment.
pub fn frame_header(
    base_offset: u64,
    append_time_ms: i64,
    count: u32,
    batch_len: usize,
    batch_crc: u32,
) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[0..4].copy_from_slice(&(batch_len as u32).to_le_bytes());
    h[8..16].copy_from_slice(&base_offset.to_le_bytes());
    h[16..24].copy_from_slice(&append_time_ms.to_le_bytes());
    h[24..28].copy_from_slice(&count.to_le_bytes());
    let crc = ferry_core::crc::crc32c_combine(crc32c::crc32c(&h[8..28]), batch_crc, batch_len);
    h[4..8].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Verifies a whole frame (`buf` = header + batch); the reason on failure.
pub fn verify_frame(buf: &[u8]) -> Result<FrameHeader, &'static str> {
    let h = FrameHeader::parse(buf).ok_or("frame header truncated")?;
    if h.len < MIN_BATCH_LEN {
        return Err("frame shorter than a batch header");
    }
    if (buf.len() as u64) < h.frame_len() {
        return Err("frame truncated");
    }
    let data = &buf[FRAME_HEADER_LEN..h.frame_len() as usize];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[8..FRAME_HEADER_LEN]), data);
    if crc != h.crc {
        return Err("frame checksum mismatch");
    }
    if h.record_count == 0 {
        return Err("frame with no records");
    }
    Ok(h)
}

/// A valid frame found by a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    /// Position of the frame header in the segment file.
    pub pos: u64,
    pub header: FrameHeader,
}

/// A range of a sealed segment that holds no valid frame and was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRange {
    pub path: PathBuf,
    pub position: u64,
    pub length: u64,
    pub reason: String,
}

/// What to do at the first invalid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanMode {
    /// Active segment: everything from the first invalid frame on is a torn tail.
    TruncateTail,
    /// Sealed segment (fsynced when rolled): an invalid frame is corruption; skip to the next
    /// valid frame and keep the rest.
    SkipCorrupt,
}

/// The result of scanning a segment.
#[derive(Debug, Default)]
pub struct ScanOutcome {
    /// Where the valid data ends (the file length, unless a torn tail was found).
    pub valid_len: u64,
    /// Offset after the last valid frame (the expected offset if there was none).
    pub next_offset: u64,
    /// Append time of the last valid frame.
    pub last_time_ms: Option<i64>,
    /// The reason the tail at `valid_len` was judged torn, if it was.
    pub torn: Option<String>,
    pub corrupt: Vec<CorruptRange>,
}

/// A sliding read window over a file for sequential scans.
struct Window<'a> {
    file: &'a dyn ReadableFile,
    file_len: u64,
    start: u64,
    buf: Vec<u8>,
}

impl<'a> Window<'a> {
    fn new(file: &'a dyn ReadableFile, file_len: u64) -> Self {
        Self {
            file,
            file_len,
            start: 0,
            buf: Vec::new(),
        }
    }

    /// The bytes `[pos, pos + n)`, or `None` if the file is shorter.
    fn get(&mut self, pos: u64, n: usize) -> io::Result<Option<&[u8]>> {
        let end = pos.saturating_add(n as u64);
        if end > self.file_len {
            return Ok(None);
        }
        if pos < self.start || end > self.start + self.buf.len() as u64 {
            let want = n.max(SCAN_CHUNK).min((self.file_len - pos) as usize);
            self.buf.resize(want, 0);
            self.file.read_exact_at(&mut self.buf, pos)?;
            self.start = pos;
        }
        let at = (pos - self.start) as usize;
        Ok(Some(&self.buf[at..at + n]))
    }
}

/// Scans the frames of a segment from `from` (a frame boundary), expecting the first one to
/// start at `expect_offset`. Calls `on_frame` with each valid frame and its batch bytes.
pub fn scan(
    file: &dyn ReadableFile,
    path: &Path,
    file_len: u64,
    from: u64,
    expect_offset: u64,
    mode: ScanMode,
    mut on_frame: impl FnMut(&FrameMeta, &[u8]),
) -> io::Result<ScanOutcome> {
    let mut w = Window::new(file, file_len);
    let mut pos = from;
    let mut expect = expect_offset;
    let mut out = ScanOutcome {
        valid_len: from,
        next_offset: expect_offset,
        ..ScanOutcome::default()
    };
    while pos < file_len {
        match frame_at(&mut w, pos, expect, true)? {
            Ok(h) => {
                let frame_len = h.frame_len() as usize;
                if let Some(buf) = w.get(pos, frame_len)? {
                    on_frame(&FrameMeta { pos, header: h }, &buf[FRAME_HEADER_LEN..]);
                }
                pos += h.frame_len();
                expect = h.next_offset();
                out.valid_len = pos;
                out.next_offset = expect;
                out.last_time_ms = Some(h.append_time_ms);
            }
            Err(reason) => match mode {
                ScanMode::TruncateTail => {
                    out.torn = Some(reason.to_owned());
                    return Ok(out);
                }
                ScanMode::SkipCorrupt => {
                    let next = resync(&mut w, pos + 1, expect)?;
                    let end = next.map_or(file_len, |(p, _)| p);
                    if let Some((_, h)) = next {
                        expect = h.base_offset;
                    }
                    out.corrupt.push(CorruptRange {
                        path: path.to_owned(),
                        position: pos,
                        length: end - pos,
                        reason: reason.to_owned(),
                    });
                    pos = end;
                    out.valid_len = end;
                }
            },
        }
    }
    Ok(out)
}

/// Checks the frame at `pos`: plausible header and (if `check_crc`) a matching checksum, and a
/// base offset equal to `expect` (or, when resyncing, at least `expect`).
fn frame_at(
    w: &mut Window<'_>,
    pos: u64,
    expect: u64,
    exact: bool,
) -> io::Result<Result<FrameHeader, &'static str>> {
    let Some(hb) = w.get(pos, FRAME_HEADER_LEN)? else {
        return Ok(Err("frame header truncated"));
    };
    let Some(h) = FrameHeader::parse(hb) else {
        return Ok(Err("frame header truncated"));
    };
    if h.len < MIN_BATCH_LEN {
        return Ok(Err("frame shorter than a batch header"));
    }
    if h.len > MAX_FRAME_DATA {
        return Ok(Err("frame length larger than any batch"));
    }
    if exact && h.base_offset != expect {
        return Ok(Err("frame base offset out of sequence"));
    }
    if !exact && (h.base_offset < expect || h.base_offset - expect > 1 << 40) {
        return Ok(Err("frame base offset out of sequence"));
    }
    let Some(buf) = w.get(pos, h.frame_len() as usize)? else {
        return Ok(Err("frame truncated"));
    };
    Ok(verify_frame(buf))
}

/// Finds the first position at or after `from` holding a valid frame, if any.
fn resync(w: &mut Window<'_>, from: u64, expect: u64) -> io::Result<Option<(u64, FrameHeader)>> {
    let mut pos = from;
    while pos + FRAME_HEADER_LEN as u64 <= w.file_len {
        if let Ok(h) = frame_at(w, pos, expect, false)? {
            return Ok(Some((pos, h)));
        }
        pos += 1;
    }
    Ok(None)
}

/// Reads and verifies the frames of `[from, to)` of a segment, for serving a read. Frames that
/// end at or before `min_offset` are skipped; the others are pushed to `out` as (meta, whole
/// frame bytes) until `max_bytes` would be exceeded (at least one frame is returned). An invalid
/// frame is reported in `corrupt` and skipped. `slack` is extra read-ahead for skipped frames.
/// Returns the bytes pushed and whether the budget stopped the read before `to`.
#[allow(clippy::too_many_arguments)]
pub fn read_frames(
    file: &dyn ReadableFile,
    path: &Path,
    from: u64,
    to: u64,
    min_offset: u64,
    max_bytes: usize,
    slack: u64,
    out: &mut Vec<(FrameMeta, bytes::Bytes)>,
    corrupt: &mut Vec<CorruptRange>,
) -> io::Result<(usize, bool)> {
    let mut taken = 0usize;
    let mut pos = from;
    let mut expect = 0u64;
    let mut min_read = 0u64;
    'outer: while pos < to {
        let want = (max_bytes.saturating_sub(taken) as u64)
            .saturating_add(slack)
            .clamp(64 << 10, MAX_READ_CHUNK)
            .max(min_read);
        let len = want.min(to - pos) as usize;
        let mut raw = vec![0u8; len];
        file.read_exact_at(&mut raw, pos)?;
        let buf = bytes::Bytes::from(raw);
        let mut at = 0usize;
        while at < buf.len() {
            if taken > 0 && taken >= max_bytes {
                return Ok((taken, true));
            }
            let rest = &buf[at..];
            let Some(h) = FrameHeader::parse(rest) else {
                break;
            };
            let here = pos + at as u64;
            let plausible = h.len >= MIN_BATCH_LEN
                && h.len <= MAX_FRAME_DATA
                && h.base_offset >= expect
                && here + h.frame_len() <= to;
            if plausible && h.frame_len() > rest.len() as u64 {
                if at == 0 {
                    min_read = h.frame_len();
                    continue 'outer;
                }
                break;
            }
            match verify_frame(rest) {
                Ok(h) if h.base_offset >= expect => {
                    let flen = h.frame_len() as usize;
                    if h.next_offset() > min_offset {
                        if taken > 0 && taken + flen > max_bytes {
                            return Ok((taken, true));
                        }
                        out.push((
                            FrameMeta {
                                pos: here,
                                header: h,
                            },
                            buf.slice(at..at + flen),
                        ));
                        taken += flen;
                    }
                    expect = h.next_offset();
                    at += flen;
                }
                Ok(_) | Err(_) => {
                    let mut w = Window::new(file, to);
                    let next = resync(&mut w, here + 1, expect)?.map_or(to, |(p, _)| p);
                    corrupt.push(CorruptRange {
                        path: path.to_owned(),
                        position: here,
                        length: next - here,
                        reason: "frame checksum or header invalid".into(),
                    });
                    pos = next;
                    min_read = 0;
                    continue 'outer;
                }
            }
        }
        if at == 0 {
            // Not even a frame header fitted: the range ends inside a header.
            break;
        }
        pos += at as u64;
        min_read = 0;
        if taken >= max_bytes {
            return Ok((taken, pos < to));
        }
    }
    Ok((taken, false))
}

/// Reads the frame header at `pos` (no checksum check): for walking frames cheaply.
pub fn header_at(file: &dyn ReadableFile, pos: u64) -> io::Result<Option<FrameHeader>> {
    let mut b = [0u8; FRAME_HEADER_LEN];
    match file.read_exact_at(&mut b, pos) {
        Ok(()) => Ok(FrameHeader::parse(&b)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::fs::{FileSystem, StdFs};

    fn batch(n: u8) -> Vec<u8> {
        let mut b = ferry_core::batch::BatchBuilder::new();
        b.push_line(&[b'a' + n; 10], 11);
        b.finish(ferry_core::batch::Codec::None, 0, 0)
            .unwrap_or_default()
    }

    #[test]
    fn frames_round_trip_and_flips_are_skipped_in_sealed_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.log");
        let mut data = file_header(SEGMENT_MAGIC, 0).to_vec();
        for i in 0..5u8 {
            encode_frame(
                &mut data,
                u64::from(i) * 2,
                100 + i64::from(i),
                2,
                &batch(i),
            );
        }
        let frame_len = (data.len() - 16) / 5;
        data[16 + frame_len * 2 + 40] ^= 0x10;
        std::fs::write(&path, &data).unwrap();
        let f = StdFs.open_read(&path).unwrap();
        let mut seen = Vec::new();
        let out = scan(
            &*f,
            &path,
            data.len() as u64,
            16,
            0,
            ScanMode::SkipCorrupt,
            |m, _| seen.push(m.header.base_offset),
        )
        .unwrap();
        assert_eq!(seen, vec![0, 2, 6, 8]);
        assert_eq!(out.corrupt.len(), 1);
        assert_eq!(out.corrupt[0].length as usize, frame_len);
        assert_eq!(out.next_offset, 10);

        let mut seen = Vec::new();
        let out = scan(
            &*f,
            &path,
            data.len() as u64,
            16,
            0,
            ScanMode::TruncateTail,
            |m, _| seen.push(m.header.base_offset),
        )
        .unwrap();
        assert_eq!(seen, vec![0, 2]);
        assert_eq!(out.valid_len as usize, 16 + 2 * frame_len);
        assert!(out.torn.is_some());

        let mut frames = Vec::new();
        let mut corrupt = Vec::new();
        read_frames(
            &*f,
            &path,
            16,
            data.len() as u64,
            3,
            1,
            0,
            &mut frames,
            &mut corrupt,
        )
        .unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].0.header.base_offset, 2);
        frames.clear();
        read_frames(
            &*f,
            &path,
            16,
            data.len() as u64,
            0,
            1 << 20,
            0,
            &mut frames,
            &mut corrupt,
        )
        .unwrap();
        let bases: Vec<u64> = frames.iter().map(|f| f.0.header.base_offset).collect();
        assert_eq!(bases, vec![0, 2, 6, 8]);
        assert_eq!(corrupt.len(), 1);
    }

    #[test]
    fn names_sort_by_offset() {
        let p = file_path(Path::new("/x"), 42, LOG_EXT);
        assert_eq!(p, Path::new("/x/00000000000000000042.log"));
        assert_eq!(parse_base(&p, LOG_EXT), Some(42));
        assert_eq!(parse_base(&p, INDEX_EXT), None);
        assert_eq!(parse_base(Path::new("/x/42.log"), LOG_EXT), None);
    }
}

//! File identity: device + inode, confirmed by a checksum of the file's first bytes.
//!
//! dev+inode alone name a file only while it exists: once deleted, its inode may be given to a
//! new file, whose lines would then be read from the old file's offset. A checksum of the first
//! bytes tells the two apart.
//!
//! # The window, and why it is the same whenever it is taken
//!
//! The checksum covers the file's first line, newline included, or its first
//! `FINGERPRINT_WINDOW` bytes if the first line is longer: `len = min(first newline + 1,
//! FINGERPRINT_WINDOW)`. Until the file holds a whole first line (or a full window) it has no
//! fingerprint yet. `len` is stored with the checksum, in memory and in the checkpoint, and the
//! file is later recognised by hashing exactly its first `len` bytes again. So:
//!
//! - an empty file, or one whose first line has no newline yet, has no fingerprint (it is known
//!   by dev+inode until it has one); if a part of its first line is shipped after the flush
//!   timeout, that batch's origin carries [`unfixed_id`], a checksum of the birth time alone
//!   (0 without birth times), so that a new file on the inode of a deleted one that was in the
//!   same state is not taken for a replay of it;
//! - a file smaller than the window works: its fingerprint covers its first line, and stays
//!   valid as the file grows, because appending does not change the first `len` bytes;
//! - the fingerprint is part of every shipped batch's origin ([`ferry_core::record::FileId`]),
//!   and the collector deduplicates on that origin, so it must be the same value every time it
//!   is taken: by this run of the agent when it first reads the file, or by the next run
//!   re-reading the file after a crash that came before the file's checkpoint was written. A
//!   window that depended on the file's size at the first read (the first version did that)
//!   gave the second run another origin, and the collector stored every re-read line again;
//! - a truncation (copytruncate) starts a new generation and fixes a new fingerprint on the new
//!   content.
//!
//! The checksum also covers the file's birth time where the file system records one (ext4,
//! xfs, btrfs, tmpfs), so a reused inode is a new identity even when the new file begins with
//! the same bytes. Limits, stated plainly: where there is no birth time, a reused inode whose
//! new content begins with the same `len` bytes as the old one is taken for the old file (the
//! smaller `len`, the likelier). Two distinct files with the same first line are always
//! different files: they have different inodes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes at the start of a file that its fingerprint covers, at most.
pub const FINGERPRINT_WINDOW: u64 = 1024;

/// A fixed fingerprint: a checksum of the first `len` bytes (and of the file's birth time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    /// How many leading bytes the checksum covers (1..=FINGERPRINT_WINDOW).
    pub len: u64,
    /// FNV-1a 64 of those bytes, mixed with `len` and the birth time.
    pub checksum: u64,
}

impl Fingerprint {
    /// The checksum of `bytes`, a file's first `bytes.len()` bytes, for a file born at
    /// `birth_ns` (0 where the file system does not record birth times).
    ///
    /// Why the birth time: the collector deduplicates on (agent, dev, inode, fingerprint,
    /// generation) for good, so a deleted file's inode reused by a new file that happens to
    /// begin with the same bytes (a CSV header, a start-up banner) must still get another
    /// identity, or the new file's first lines would be dropped as replays. The birth time
    /// (statx `btime`) differs between the two and never changes during a file's life (renames
    /// and truncations keep it). Where it is not available the content alone decides.
    pub fn of(bytes: &[u8], birth_ns: u64) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mix = |h: &mut u64, b: u8| {
            *h ^= u64::from(b);
            *h = h.wrapping_mul(0x0000_0100_0000_01b3);
        };
        for &b in bytes {
            mix(&mut h, b);
        }
        for b in (bytes.len() as u64).to_le_bytes() {
            mix(&mut h, b);
        }
        if birth_ns != 0 {
            for b in birth_ns.to_le_bytes() {
                mix(&mut h, b);
            }
        }
        Self {
            len: bytes.len() as u64,
            checksum: h,
        }
    }

    /// Fixes a fingerprint for `file`, whose size is `size`: over its first line (or full
    /// window), or `None` while it has neither (empty, or a first line without its newline).
    pub fn take(file: &File, size: u64) -> io::Result<Option<Self>> {
        Self::take_as(file, size, birth_ns(file))
    }

    /// [`Self::take`] for a file born at `birth_ns`, with its head ([`head_of`] over the same
    /// bytes), from one read of the file's start.
    pub fn take_with_head(
        file: &File,
        size: u64,
        birth_ns: u64,
    ) -> io::Result<Option<(Self, u64)>> {
        let len = size.min(FINGERPRINT_WINDOW);
        if len == 0 {
            return Ok(None);
        }
        let mut buf = [0u8; FINGERPRINT_WINDOW as usize];
        let got = read_full_at(file, &mut buf[..len as usize])?;
        let len = match memchr::memchr(b'\n', &buf[..got]) {
            Some(nl) => nl + 1,
            None if got as u64 == FINGERPRINT_WINDOW => got,
            None => return Ok(None),
        };
        Ok(Some((
            Self::of(&buf[..len], birth_ns),
            Self::of(&buf[..len], 0).checksum,
        )))
    }

    /// [`Self::take`] for a file born at `birth_ns` (a copy taken for its original).
    pub fn take_as(file: &File, size: u64, birth_ns: u64) -> io::Result<Option<Self>> {
        Ok(Self::take_with_head(file, size, birth_ns)?.map(|(fp, _)| fp))
    }

    /// A checksum of whatever the file begins with, up to the window: not an identity (it
    /// depends on the size when it is taken), only a way to notice that a file whose first line
    /// is still incomplete was truncated and rewritten.
    /// With it, the hash of the same bytes alone (no birth time, as [`head_of`] takes it): what a
    /// copy of the file begins with, should it be copied and truncated before its first line is
    /// whole.
    /// `birth_ns` is the file's birth time (a tracked file's, looked up once).
    pub fn probe(file: &File, size: u64, birth_ns: u64) -> io::Result<Option<(Self, u64)>> {
        let len = size.min(FINGERPRINT_WINDOW);
        if len == 0 {
            return Ok(None);
        }
        let mut buf = [0u8; FINGERPRINT_WINDOW as usize];
        let got = read_full_at(file, &mut buf[..len as usize])?;
        if got == 0 {
            return Ok(None);
        }
        Ok(Some((
            Self::of(&buf[..got], birth_ns),
            Self::of(&buf[..got], 0).checksum,
        )))
    }

    /// Whether `file` still begins with the bytes this fingerprint was taken over. A file now
    /// shorter than `len` does not.
    pub fn matches(&self, file: &File) -> io::Result<bool> {
        self.matches_as(file, birth_ns(file))
    }

    /// [`Self::matches`] for a file born at `birth_ns` (known already: a file's birth time
    /// never changes, so a tracked file's is looked up once, not by a `statx` per check).
    pub fn matches_as(&self, file: &File, birth_ns: u64) -> io::Result<bool> {
        let mut buf = [0u8; FINGERPRINT_WINDOW as usize];
        let len = self.len.min(FINGERPRINT_WINDOW) as usize;
        let got = read_full_at(file, &mut buf[..len])?;
        Ok(got == len && Self::of(&buf[..len], birth_ns) == *self)
    }
}

/// `Fingerprint::of(&[], 0).checksum`, computed at compile time.
const EMPTY_CHECKSUM: u64 = {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < 8 {
        h ^= 0;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
};

/// Most bytes a [`TailPrint`] covers.
pub const TAIL_WINDOW: u64 = 4096;

/// A hash of the last bytes before an offset of a file (at most [`TAIL_WINDOW`]): the part of
/// a copy's identity that distinguishes it from another file with the same first line. A file
/// whose bytes before `offset` hash the same holds what the original held there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TailPrint {
    /// The position the hashed bytes end at.
    pub offset: u64,
    /// How many bytes before `offset` are hashed.
    pub len: u64,
    pub checksum: u64,
}

impl TailPrint {
    /// The print of no bytes (before offset 0): every file holds them.
    pub const EMPTY: Self = Self {
        offset: 0,
        len: 0,
        // FNV-1a 64 of nothing, mixed with the length 0 (as `Fingerprint::of(&[], 0)`).
        checksum: EMPTY_CHECKSUM,
    };

    /// The print of `file`'s bytes before `offset`; `None` if the file is shorter.
    pub fn take(file: &File, offset: u64) -> io::Result<Option<Self>> {
        let len = offset.min(TAIL_WINDOW);
        let mut buf = [0u8; TAIL_WINDOW as usize];
        let got = read_full_at_from(file, &mut buf[..len as usize], offset - len)?;
        if got as u64 != len {
            return Ok(None);
        }
        Ok(Some(Self::of(&buf[..got], offset)))
    }

    /// The print of `bytes`, the last ones before `offset` (at most [`TAIL_WINDOW`] of them,
    /// all of them where `offset` is smaller): what [`TailPrint::take`] gives for a file that
    /// holds them there.
    pub fn of(bytes: &[u8], offset: u64) -> Self {
        debug_assert_eq!(bytes.len() as u64, offset.min(TAIL_WINDOW));
        Self {
            offset,
            len: bytes.len() as u64,
            checksum: Fingerprint::of(bytes, 0).checksum,
        }
    }

    /// The print of fewer bytes before `offset` than [`TailPrint::take`] covers: all that a
    /// read still held when the file could no longer be read again (truncated just after).
    pub fn of_part(bytes: &[u8], offset: u64) -> Self {
        debug_assert!((bytes.len() as u64) < offset.min(TAIL_WINDOW));
        Self {
            offset,
            len: bytes.len() as u64,
            checksum: Fingerprint::of(bytes, 0).checksum,
        }
    }

    /// A print of fewer bytes than the window (see [`TailPrint::of_part`]).
    pub fn is_part(&self) -> bool {
        self.len < self.offset.min(TAIL_WINDOW)
    }

    /// Whether `file` holds the same bytes before `self.offset`.
    pub fn matches(&self, file: &File) -> io::Result<bool> {
        if !self.is_part() {
            return Ok(Self::take(file, self.offset)? == Some(*self));
        }
        let len = self.len as usize;
        let mut buf = [0u8; TAIL_WINDOW as usize];
        let got = read_full_at_from(file, &mut buf[..len], self.offset - self.len)?;
        Ok(got == len && Fingerprint::of(&buf[..len], 0).checksum == self.checksum)
    }
}

/// A hash of the file's first `len` bytes alone (no birth time): equal for a file and its copy.
pub fn head_of(file: &File, len: u64) -> io::Result<Option<u64>> {
    let len = len.min(FINGERPRINT_WINDOW) as usize;
    let mut buf = [0u8; FINGERPRINT_WINDOW as usize];
    let got = read_full_at(file, &mut buf[..len])?;
    Ok((got == len && len > 0).then(|| Fingerprint::of(&buf[..len], 0).checksum))
}

/// The fingerprint field of the origin of a file that has no fingerprint yet (its first line
/// is not complete, but a part of it was shipped after the flush timeout): a checksum of its
/// birth time alone, so that a reused inode is still another identity; 0 where the file system
/// keeps no birth time. It never changes during the file's life, so an agent that re-reads the
/// file after a crash ships under the same origin. `birth_ns` as [`birth_ns`] gives it.
pub fn unfixed_id(birth_ns: u64) -> u64 {
    match birth_ns {
        0 => 0,
        birth => Fingerprint::of(&[], birth).checksum,
    }
}

/// The file's birth time in ns since the epoch, or 0 if the file system does not keep it.
pub(crate) fn birth_ns(file: &File) -> u64 {
    file.metadata().map_or(0, |m| birth_of(&m))
}

/// The birth time in `meta` (a `statx` brings it along with the size), as [`birth_ns`].
pub(crate) fn birth_of(meta: &std::fs::Metadata) -> u64 {
    meta.created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

pub(crate) fn read_full_at(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    read_full_at_from(file, buf, 0)
}

fn read_full_at_from(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    fn write(path: &std::path::Path, bytes: &[u8]) -> File {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(bytes).unwrap();
        File::open(path).unwrap()
    }

    #[test]
    fn empty_file_has_no_fingerprint_yet() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(&dir.path().join("a"), b"");
        assert_eq!(Fingerprint::take(&f, 0).unwrap(), None);
        let g = write(&dir.path().join("b"), b"x");
        assert_eq!(
            Fingerprint::take(&g, 1).unwrap(),
            None,
            "first line incomplete"
        );
    }

    #[test]
    fn tiny_file_fingerprint_survives_growth() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        let f = write(&p, b"hi\n");
        let fp = Fingerprint::take(&f, 3).unwrap().unwrap();
        assert_eq!(fp.len, 3);
        write(&p, &vec![b'x'; 5000]);
        assert!(
            fp.matches(&f).unwrap(),
            "appending must not change identity"
        );
    }

    /// Regression: the window used to be `min(size, 1 KiB)` at the first read, so an agent
    /// killed before it checkpointed a young file re-read it under another fingerprint (the
    /// file had grown), i.e. another origin, and the collector stored its lines twice.
    #[test]
    fn fingerprint_is_the_same_whenever_it_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        let f = write(&p, b"first line\nsecond li");
        let young = Fingerprint::take(&f, 21).unwrap().unwrap();
        write(&p, &b"ne\nthird line\n".repeat(200));
        let size = f.metadata().unwrap().len();
        assert_eq!(Fingerprint::take(&f, size).unwrap(), Some(young));
        assert_eq!(young.len, 11, "the first line");
        // A first line longer than the window: the window, once it is full.
        let q = dir.path().join("b");
        let g = write(&q, &[b'y'; 700]);
        assert_eq!(Fingerprint::take(&g, 700).unwrap(), None, "no newline yet");
        write(&q, &[b'y'; 700]);
        let a = Fingerprint::take(&g, 1400).unwrap().unwrap();
        write(&q, b"\nmore\n");
        assert_eq!(Fingerprint::take(&g, 1406).unwrap(), Some(a));
        assert_eq!(a.len, FINGERPRINT_WINDOW);
    }

    #[test]
    fn truncated_or_rewritten_file_no_longer_matches() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        let f = write(&p, b"first line\nsecond\n");
        let fp = Fingerprint::take(&f, 18).unwrap().unwrap();
        std::fs::write(&p, b"first").unwrap();
        assert!(!fp.matches(&f).unwrap(), "shorter than the window");
        std::fs::write(&p, b"other line\nsecond\n").unwrap();
        assert!(!fp.matches(&f).unwrap(), "same length, other bytes");
    }

    #[test]
    fn inode_reuse_is_caught_by_the_checksum() {
        // Delete a file and create another until the kernel hands out the same inode (tmpfs and
        // ext4 both reuse freed inodes promptly); then its fingerprint must differ.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        let f = write(&p, b"old content\n");
        let ino = f.metadata().unwrap().ino();
        let fp = Fingerprint::take(&f, 12).unwrap().unwrap();
        drop(f);
        std::fs::remove_file(&p).unwrap();
        let mut reused = None;
        for i in 0..50 {
            let q = dir.path().join(format!("b{i}"));
            let g = write(&q, b"new content\n");
            if g.metadata().unwrap().ino() == ino {
                reused = Some(g);
                break;
            }
        }
        // The checksum decides regardless of whether this file system reused the inode.
        let g = reused.unwrap_or_else(|| write(&dir.path().join("c"), b"new content\n"));
        assert!(!fp.matches(&g).unwrap());
    }

    #[test]
    fn same_first_line_is_still_two_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(&dir.path().join("a"), b"header\n");
        let b = write(&dir.path().join("b"), b"header\n");
        let id = |f: &File| {
            let m = f.metadata().unwrap();
            (m.dev(), m.ino(), Fingerprint::take(f, 7).unwrap())
        };
        assert_ne!(id(&a), id(&b));
        // Without birth times the checksums are equal, and dev+inode tell the files apart.
        assert_eq!(
            Fingerprint::of(b"header\n", 0),
            Fingerprint::of(b"header\n", 0)
        );
    }

    /// Regression guard for the collector's dedup: a new file on a (likely) reused inode that
    /// begins with the very same bytes must not take over the old file's identity.
    #[test]
    fn reused_inode_with_the_same_first_bytes_is_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        let f = write(&p, b"id,name\n");
        let fp = Fingerprint::take(&f, 8).unwrap().unwrap();
        let has_birth_times = birth_ns(&f) != 0;
        drop(f);
        std::fs::remove_file(&p).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let g = write(&dir.path().join("b"), b"id,name\n");
        if has_birth_times {
            assert!(!fp.matches(&g).unwrap());
        } else {
            // Documented limit: content alone cannot tell these apart.
            assert!(fp.matches(&g).unwrap());
        }
    }

    #[test]
    fn empty_tail_print_is_what_take_gives_before_offset_0() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(&dir.path().join("a"), b"x\n");
        assert_eq!(TailPrint::take(&f, 0).unwrap(), Some(TailPrint::EMPTY));
        assert!(TailPrint::EMPTY.matches(&f).unwrap());
    }

    #[test]
    fn birth_time_separates_equal_content() {
        assert_ne!(
            Fingerprint::of(b"header\n", 1),
            Fingerprint::of(b"header\n", 2)
        );
        assert_ne!(Fingerprint::of(b"ab", 0), Fingerprint::of(b"ab\0", 0));
    }
}

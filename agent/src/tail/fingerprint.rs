//! File identity: device + inode, confirmed by a checksum of the file's first bytes.
//!
//! dev+inode alone name a file only while it exists: once deleted, its inode may be given to a
//! new file, whose lines would then be read from the old file's offset. A checksum of the first
//! bytes tells the two apart.
//!
//! # The window, and why it never changes once fixed
//!
//! The checksum covers the first `len = min(FINGERPRINT_WINDOW, size)` bytes, where `size` is
//! the file's size when the agent first reads data from it (or when a checkpoint was written for
//! it). `len` is stored with the checksum, in memory and in the checkpoint, and the file is
//! later recognised by hashing exactly its first `len` bytes again. So:
//!
//! - an empty file has no fingerprint yet (it is known by dev+inode until it has bytes);
//! - a file smaller than the window works: its fingerprint covers what it had, and stays valid
//!   as the file grows, because appending does not change the first `len` bytes;
//! - the fingerprint is part of every shipped batch's origin ([`ferry_core::record::FileId`]),
//!   and the collector deduplicates on that origin, so it must not change while lines of the
//!   file are being shipped: it is not recomputed over a larger window as the file grows;
//! - a truncation (copytruncate) starts a new generation and fixes a new fingerprint on the new
//!   content.
//!
//! Limits, stated plainly: a reused inode whose new content begins with the same `len` bytes as
//! the old one is taken for the old file (the smaller `len`, the likelier; with a full 1 KiB
//! window it needs identical first kilobytes). Two distinct files with the same first line are
//! always different files: they have different inodes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes at the start of a file that its fingerprint covers, at most.
pub const FINGERPRINT_WINDOW: u64 = 1024;

/// A fixed fingerprint: a checksum of the first `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    /// How many leading bytes the checksum covers (1..=FINGERPRINT_WINDOW).
    pub len: u64,
    /// FNV-1a 64 of those bytes, mixed with `len`.
    pub checksum: u64,
}

impl Fingerprint {
    /// The checksum of `bytes`, which are a file's first `bytes.len()` bytes.
    pub fn of(bytes: &[u8]) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= bytes.len() as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        Self {
            len: bytes.len() as u64,
            checksum: h,
        }
    }

    /// Fixes a fingerprint for `file`, whose size is `size`: `None` if it is empty.
    pub fn take(file: &File, size: u64) -> io::Result<Option<Self>> {
        let len = size.min(FINGERPRINT_WINDOW);
        if len == 0 {
            return Ok(None);
        }
        let mut buf = [0u8; FINGERPRINT_WINDOW as usize];
        let got = read_full_at(file, &mut buf[..len as usize])?;
        if got == 0 {
            return Ok(None);
        }
        Ok(Some(Self::of(&buf[..got])))
    }

    /// Whether `file` still begins with the bytes this fingerprint was taken over. A file now
    /// shorter than `len` does not.
    pub fn matches(&self, file: &File) -> io::Result<bool> {
        let mut buf = [0u8; FINGERPRINT_WINDOW as usize];
        let len = self.len.min(FINGERPRINT_WINDOW) as usize;
        let got = read_full_at(file, &mut buf[..len])?;
        Ok(got == len && Self::of(&buf[..len]) == *self)
    }
}

fn read_full_at(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64) {
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
        // A fingerprint over the full window of the grown file is a different value, which is
        // exactly why the window is fixed once taken.
        let grown = Fingerprint::take(&f, 5003).unwrap().unwrap();
        assert_eq!(grown.len, FINGERPRINT_WINDOW);
        assert_ne!(grown, fp);
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
    fn same_first_line_same_fingerprint_but_different_inodes() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(&dir.path().join("a"), b"header\n");
        let b = write(&dir.path().join("b"), b"header\n");
        assert_eq!(
            Fingerprint::take(&a, 7).unwrap(),
            Fingerprint::take(&b, 7).unwrap()
        );
        assert_ne!(a.metadata().unwrap().ino(), b.metadata().unwrap().ino());
    }
}

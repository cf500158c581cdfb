//! The file-system seam: every byte the store reads or writes goes through [`FileSystem`].
//!
//! As in tikv/raft-engine's `env`, the real implementation ([`StdFs`]) is a thin layer over
//! `std::fs`, and [`FaultyFs`] wraps it to inject failing writes and fsyncs and a low free-disk
//! reading, so tests can check that an I/O error reaches `append`'s caller with nothing that was
//! acknowledged lost. `FaultyFs` does real I/O; it only adds failures on demand.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A file opened for appending (segments). Writes always go to the end of the file.
pub trait WritableFile: Send {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Writes `bufs` one after another, as one `write_all` of their concatenation would.
    fn write_all_vectored(&mut self, bufs: &[&[u8]]) -> io::Result<()> {
        for b in bufs {
            self.write_all(b)?;
        }
        Ok(())
    }
    /// fsync of the file's data (and the metadata needed to read it back, i.e. its length).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes; later writes append after it.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

/// A file opened for positioned reads; shared by concurrent readers.
pub trait ReadableFile: Send + Sync {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// Current length of the file.
    fn size(&self) -> io::Result<u64>;

    /// Reads exactly `buf.len()` bytes at `pos`, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, pos) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Everything the store asks of the file system.
pub trait FileSystem: Send + Sync + 'static {
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Paths of the entries of a directory, in no particular order.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
    /// Opens (creating it if asked) a file for appending.
    fn open_append(&self, path: &Path, create: bool) -> io::Result<Box<dyn WritableFile>>;
    /// Creates or empties a file and opens it for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadableFile>>;
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Bytes available to an unprivileged user on the file system holding `path`.
    fn free_bytes(&self, path: &Path) -> io::Result<u64>;
}

/// Writes `data` to `path` so that a crash leaves either the old or the new content:
/// temp file, fsync, rename over, fsync of the directory.
pub fn write_file_atomic(fs: &dyn FileSystem, path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = fs.create(&tmp)?;
    f.write_all(data)?;
    f.sync_data()?;
    drop(f);
    fs.rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs.sync_dir(dir)?;
    }
    Ok(())
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

struct StdWritable(File);

impl WritableFile for StdWritable {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }
    /// `writev`, as many buffers a call as the kernel takes, until all are written: the store
    /// writes a group's frames from the buffers the batches arrived in, without copying them
    /// into one first.
    fn write_all_vectored(&mut self, bufs: &[&[u8]]) -> io::Result<()> {
        /// Linux's IOV_MAX.
        const MAX_SLICES: usize = 1024;
        let mut slices: Vec<io::IoSlice<'_>> = bufs
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| io::IoSlice::new(b))
            .collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let n = rest.len().min(MAX_SLICES);
            match self.0.write_vectored(&rest[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => io::IoSlice::advance_slices(&mut rest, written),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        // The file is opened with O_APPEND, so the next write lands at the new end.
        self.0.set_len(len)
    }
}

struct StdReadable(File);

impl ReadableFile for StdReadable {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.0.read_at(buf, pos)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl FileSystem for StdFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(path)? {
            out.push(entry?.path());
        }
        Ok(out)
    }
    fn open_append(&self, path: &Path, create: bool) -> io::Result<Box<dyn WritableFile>> {
        let f = OpenOptions::new().append(true).create(create).open(path)?;
        Ok(Box::new(StdWritable(f)))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(StdWritable(f)))
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadableFile>> {
        Ok(Arc::new(StdReadable(File::open(path)?)))
    }
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
    fn free_bytes(&self, path: &Path) -> io::Result<u64> {
        let st = rustix::fs::statvfs(path)?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }
}

/// Switches for [`FaultyFs`], shared with the test that flips them.
#[derive(Debug, Default)]
pub struct Faults {
    /// Every write writes half its buffer, then fails.
    pub fail_writes: AtomicBool,
    /// Every fsync (of a file or a directory) fails.
    pub fail_syncs: AtomicBool,
    /// When non-zero, `free_bytes` reports this value instead of the real one.
    pub free_bytes: AtomicU64,
}

/// [`StdFs`] with failures injected on demand (see [`Faults`]).
#[derive(Clone, Default)]
pub struct FaultyFs {
    pub faults: Arc<Faults>,
}

impl FaultyFs {
    pub fn new() -> Self {
        Self::default()
    }
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} failure"))
}

struct FaultyWritable {
    inner: StdWritable,
    faults: Arc<Faults>,
}

impl WritableFile for FaultyWritable {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.faults.fail_writes.load(Ordering::SeqCst) {
            self.inner.write_all(&buf[..buf.len() / 2])?;
            return Err(injected("write"));
        }
        self.inner.write_all(buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        if self.faults.fail_syncs.load(Ordering::SeqCst) {
            return Err(injected("fsync"));
        }
        self.inner.sync_data()
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.inner.truncate(len)
    }
}

impl FileSystem for FaultyFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        StdFs.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        StdFs.list_dir(path)
    }
    fn open_append(&self, path: &Path, create: bool) -> io::Result<Box<dyn WritableFile>> {
        let f = OpenOptions::new().append(true).create(create).open(path)?;
        Ok(Box::new(FaultyWritable {
            inner: StdWritable(f),
            faults: self.faults.clone(),
        }))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(FaultyWritable {
            inner: StdWritable(f),
            faults: self.faults.clone(),
        }))
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadableFile>> {
        StdFs.open_read(path)
    }
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        StdFs.read_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdFs.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        if self.faults.fail_syncs.load(Ordering::SeqCst) {
            return Err(injected("directory fsync"));
        }
        StdFs.sync_dir(path)
    }
    fn free_bytes(&self, path: &Path) -> io::Result<u64> {
        match self.faults.free_bytes.load(Ordering::SeqCst) {
            0 => StdFs.free_bytes(path),
            n => Ok(n),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// More buffers than one `writev` takes, of every size from empty up: the file holds their
    /// concatenation, after what was there, and the next write follows it.
    #[test]
    fn vectored_writes_append_every_buffer_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let mut w = StdFs.open_append(&path, true).unwrap();
        w.write_all(b"head:").unwrap();
        let owned: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| vec![(i % 251) as u8; (i % 7) as usize])
            .collect();
        let bufs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        w.write_all_vectored(&bufs).unwrap();
        w.write_all(b":tail").unwrap();
        let mut expect = b"head:".to_vec();
        expect.extend(owned.concat());
        expect.extend_from_slice(b":tail");
        assert_eq!(std::fs::read(&path).unwrap(), expect);
    }
}

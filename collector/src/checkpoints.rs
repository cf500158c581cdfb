//! Processor checkpoints kept by the collector.
//!
//! A processor's exactly-once promise rests on saving, in one atomic write, the state it built
//! from a partition and the input offset that state reflects. The collector keeps those writes so
//! that whichever group member is assigned the partition next — on this host or another — can
//! restore them: one file per (group, topic, partition), replaced atomically (temp file, fsync,
//! rename, fsync of the directory). A write is accepted only from the member that owns the
//! partition (the API checks), which fences off a member that lost the partition and does not
//! know it yet.
//!
//! # File layout (`checkpoints/{group}/{topic}/{partition}.ckpt`, integers little-endian)
//!
//! (Earlier releases wrote `checkpoints/{group}/{topic}.{partition}.ckpt`, which does not fit
//! a 249-byte topic name; such files are still read, and replaced by the new layout at the
//! next write.)
//!
//! | offset | size | field                                         |
//! |-------:|-----:|-----------------------------------------------|
//! | 0      | 4    | magic `FRYK`                                  |
//! | 4      | 1    | version, currently 1                          |
//! | 5      | 3    | reserved, zero                                |
//! | 8      | 8    | input offset the state reflects (next to read)|
//! | 16     | 4    | state length `n`                              |
//! | 20     | 4    | CRC32C of bytes `[0, 20)` and the state       |
//! | 24     | n    | the processor's state, opaque here            |

use bytes::Bytes;
use std::path::{Path, PathBuf};

const MAGIC: [u8; 4] = *b"FRYK";
const HEADER: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: &'static str },
}

/// Where the checkpoints live: `DATA_DIR/checkpoints`.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
}

/// A stored checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub offset: u64,
    pub state: Bytes,
}

/// A checkpoint being written ([`Checkpoints::writer`]): its state goes to a temporary file
/// as it comes; `finish` writes the header, fsyncs and renames it over the old one.
pub struct CheckpointWriter {
    path: PathBuf,
    /// The temporary file, removed on drop unless `finish` renamed it.
    tmp: Option<PathBuf>,
    file: std::fs::File,
    offset: u64,
    /// State bytes written so far, and their CRC32C.
    len: u64,
    crc: u32,
}

impl CheckpointWriter {
    fn io(&self, source: std::io::Error) -> CheckpointError {
        CheckpointError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends `data` to the state. Blocking.
    pub fn write(&mut self, data: &[u8]) -> Result<(), CheckpointError> {
        std::io::Write::write_all(&mut self.file, data).map_err(|e| self.io(e))?;
        self.crc = crc32c::crc32c_append(self.crc, data);
        self.len += data.len() as u64;
        Ok(())
    }

    /// State bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes the header, fsyncs, and replaces the checkpoint (rename, fsync of the
    /// directory). Blocking.
    pub fn finish(mut self) -> Result<(), CheckpointError> {
        use std::io::{Seek, Write};
        let len = u32::try_from(self.len)
            .map_err(|_| self.io(std::io::Error::other("state larger than 4 GiB")))?;
        let mut head = [0u8; HEADER];
        head[..4].copy_from_slice(&MAGIC);
        head[4] = 1;
        head[8..16].copy_from_slice(&self.offset.to_le_bytes());
        head[16..20].copy_from_slice(&len.to_le_bytes());
        // The CRC covers the header's first 20 bytes, then the state: combined from the
        // state's CRC, computed as it came.
        let crc = crc32c::crc32c_combine(crc32c::crc32c(&head[..20]), self.crc, self.len as usize);
        head[20..].copy_from_slice(&crc.to_le_bytes());
        let written = self
            .file
            .seek(std::io::SeekFrom::Start(0))
            .and_then(|_| self.file.write_all(&head))
            .and_then(|()| self.file.sync_data());
        written.map_err(|e| self.io(e))?;
        let Some(tmp) = self.tmp.take() else {
            return Ok(());
        };
        let renamed = std::fs::rename(&tmp, &self.path).and_then(|()| match self.path.parent() {
            Some(dir) => std::fs::File::open(dir)?.sync_all(),
            None => Ok(()),
        });
        if renamed.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        renamed.map_err(|e| self.io(e))
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

impl Checkpoints {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("checkpoints"),
        }
    }

    fn path(&self, group: &str, topic: &str, partition: u32) -> PathBuf {
        // Group and topic names are validated ([A-Za-z0-9._-], at most 249 bytes), so each is
        // a safe file name on its own; `{topic}.{partition}.ckpt.tmp` would not be (a 249-byte
        // topic makes it longer than the 255 bytes a file name may have), hence a directory
        // per topic.
        self.dir
            .join(group)
            .join(topic)
            .join(format!("{partition}.ckpt"))
    }

    /// Where releases before the per-topic directories kept a checkpoint; still read.
    fn legacy_path(&self, group: &str, topic: &str, partition: u32) -> PathBuf {
        self.dir
            .join(group)
            .join(format!("{topic}.{partition}.ckpt"))
    }

    /// Replaces the checkpoint of `group` for `topic/partition`. Blocking: call from the
    /// blocking pool.
    pub fn put(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
        state: &[u8],
    ) -> Result<(), CheckpointError> {
        let mut w = self.writer(group, topic, partition, offset)?;
        w.write(state)?;
        w.finish()
    }

    /// Starts replacing the checkpoint of `group` for `topic/partition` with a state written
    /// piece by piece (a request body streamed to disk, never held whole): the old checkpoint
    /// stays until [`CheckpointWriter::finish`]; a writer dropped before that leaves nothing.
    /// Blocking: call from the blocking pool.
    pub fn writer(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<CheckpointWriter, CheckpointError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = self.path(group, topic, partition);
        // One temporary file per writer: two writes of one checkpoint never share it.
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("ckpt.{}.{n}.tmp", std::process::id()));
        let io = |source| CheckpointError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        // The header is written again by `finish`, once the state's length and CRC are known.
        std::io::Write::write_all(&mut file, &[0u8; HEADER]).map_err(io)?;
        Ok(CheckpointWriter {
            path,
            tmp: Some(tmp),
            file,
            offset,
            len: 0,
            crc: 0,
        })
    }

    /// The checkpoint of `group` for `topic/partition`, if one was written. Blocking.
    pub fn get(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<Checkpoint>, CheckpointError> {
        let mut path = self.path(group, topic, partition);
        let mut read = std::fs::read(&path);
        if read
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        {
            let legacy = self.legacy_path(group, topic, partition);
            match std::fs::read(&legacy) {
                // A name too long for the old layout cannot have a checkpoint there.
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        || e.kind() == std::io::ErrorKind::InvalidFilename =>
                {
                    return Ok(None);
                }
                r => {
                    path = legacy;
                    read = r;
                }
            }
        }
        let buf = match read {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CheckpointError::Io { path, source }),
        };
        let corrupt = |reason| CheckpointError::Corrupt {
            path: path.clone(),
            reason,
        };
        if buf.len() < HEADER {
            return Err(corrupt("shorter than its header"));
        }
        if buf[..4] != MAGIC {
            return Err(corrupt("bad magic"));
        }
        if buf[4] != 1 {
            return Err(corrupt("unknown version"));
        }
        let mut b8 = [0u8; 8];
        b8.copy_from_slice(&buf[8..16]);
        let offset = u64::from_le_bytes(b8);
        let mut b4 = [0u8; 4];
        b4.copy_from_slice(&buf[16..20]);
        let len = u32::from_le_bytes(b4) as usize;
        b4.copy_from_slice(&buf[20..24]);
        let crc = u32::from_le_bytes(b4);
        if buf.len() != HEADER + len {
            return Err(corrupt("length does not match its header"));
        }
        if crc32c::crc32c_append(crc32c::crc32c(&buf[..20]), &buf[HEADER..]) != crc {
            return Err(corrupt("checksum mismatch"));
        }
        let state = Bytes::from(buf).slice(HEADER..);
        Ok(Some(Checkpoint { offset, state }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_replace_and_detect_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::new(dir.path());
        assert_eq!(c.get("g", "t", 0).unwrap(), None);
        c.put("g", "t", 0, 10, b"state-1").unwrap();
        c.put("g", "t", 0, 25, b"state-2").unwrap();
        c.put("g", "t", 1, 3, b"").unwrap();
        assert_eq!(
            c.get("g", "t", 0).unwrap(),
            Some(Checkpoint {
                offset: 25,
                state: Bytes::from_static(b"state-2")
            })
        );
        assert_eq!(c.get("g", "t", 1).unwrap().unwrap().offset, 3);
        let path = dir.path().join("checkpoints/g/t/0.ckpt");
        let mut raw = std::fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&path, &raw).unwrap();
        assert!(matches!(
            c.get("g", "t", 0),
            Err(CheckpointError::Corrupt { .. })
        ));
        std::fs::write(&path, &raw[..10]).unwrap();
        assert!(matches!(
            c.get("g", "t", 0),
            Err(CheckpointError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_streamed_state_reads_back_and_an_unfinished_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::new(dir.path());
        c.put("g", "t", 0, 1, b"old").unwrap();
        let mut w = c.writer("g", "t", 0, 42).unwrap();
        let mut want = Vec::new();
        for i in 0..100u32 {
            let piece = format!("piece {i};").repeat(i as usize % 7);
            w.write(piece.as_bytes()).unwrap();
            want.extend_from_slice(piece.as_bytes());
        }
        // Not finished: the old checkpoint is still the one.
        assert_eq!(c.get("g", "t", 0).unwrap().unwrap().offset, 1);
        w.finish().unwrap();
        let got = c.get("g", "t", 0).unwrap().unwrap();
        assert_eq!((got.offset, &got.state[..]), (42, &want[..]));
        let mut w = c.writer("g", "t", 0, 99).unwrap();
        w.write(b"abandoned").unwrap();
        drop(w);
        assert_eq!(c.get("g", "t", 0).unwrap().unwrap().offset, 42);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("checkpoints/g/t"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["0.ckpt"]);
    }

    #[test]
    fn longest_topic_name_checkpoints_and_legacy_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::new(dir.path());
        let long = "t".repeat(ferry_core::topic::MAX_TOPIC_LEN);
        let group = "g".repeat(ferry_core::topic::MAX_TOPIC_LEN);
        c.put(&group, &long, 4_000_000_000, 7, b"s").unwrap();
        assert_eq!(
            c.get(&group, &long, 4_000_000_000).unwrap().unwrap().offset,
            7
        );
        assert_eq!(c.get(&group, &long, 1).unwrap(), None);
        // A checkpoint in the old layout is still found, and a new write takes precedence.
        c.put("g", "old", 0, 3, b"x").unwrap();
        let new_path = dir.path().join("checkpoints/g/old/0.ckpt");
        std::fs::rename(&new_path, dir.path().join("checkpoints/g/old.0.ckpt")).unwrap();
        assert_eq!(c.get("g", "old", 0).unwrap().unwrap().offset, 3);
        c.put("g", "old", 0, 9, b"y").unwrap();
        assert_eq!(c.get("g", "old", 0).unwrap().unwrap().offset, 9);
    }
}

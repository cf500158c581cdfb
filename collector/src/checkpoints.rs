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

use crate::store::fs::{FileSystem, StdFs, write_file_atomic};
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
        let path = self.path(group, topic, partition);
        let io = |source| CheckpointError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut buf = Vec::with_capacity(HEADER + state.len());
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&[1, 0, 0, 0]);
        buf.extend_from_slice(&offset.to_le_bytes());
        let len = u32::try_from(state.len())
            .map_err(|_| io(std::io::Error::other("state larger than 4 GiB")))?;
        buf.extend_from_slice(&len.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[..20]), state);
        buf.extend_from_slice(&crc.to_le_bytes());
        buf.extend_from_slice(state);
        write_file_atomic(&StdFs as &dyn FileSystem, &path, &buf).map_err(io)
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

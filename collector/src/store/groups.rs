//! Consumer-group committed offsets, stored durably beside the topics.
//!
//! All groups live in one small checksummed file, `groups.offsets`, rewritten whole on every
//! commit with temp file + fsync + rename + fsync of the directory, so a crash leaves either the
//! previous or the new content, never a mix. A commit returns only after that. This is simple
//! and fine for the expected scale (tens of groups, hundreds of partitions, commits every
//! second or so); a store with far more would want an internal compacted topic instead.
//!
//! # File layout (integers little-endian)
//!
//! | offset | size | field                                   |
//! |-------:|-----:|-----------------------------------------|
//! | 0      | 4    | magic `FRYG`                            |
//! | 4      | 1    | version, currently 1                    |
//! | 5      | 3    | reserved, zero                          |
//! | 8      | 8    | entry count                             |
//! | 16     | ...  | entries (below)                         |
//! | end-4  | 4    | CRC32C of every byte before it          |
//!
//! Entry: group length u16, group (UTF-8), topic length u16, topic (UTF-8), partition u32,
//! committed offset u64 (the next offset the group will read).

use super::error::{IoContext, StoreError};
use super::fs::{FileSystem, write_file_atomic};
use super::segment::{u32_at, u64_at};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const GROUPS_MAGIC: [u8; 4] = *b"FRYG";
pub const GROUPS_FILE: &str = "groups.offsets";

type Offsets = BTreeMap<String, BTreeMap<(String, u32), u64>>;

/// The committed offsets of every group.
pub(crate) struct GroupOffsets {
    path: PathBuf,
    fs: Arc<dyn FileSystem>,
    /// The content of the file as last written. Held while a commit writes, so commits are
    /// applied one at a time in the order they take the lock (never held across an await: the
    /// commit runs on the blocking pool).
    state: Mutex<Offsets>,
}

impl GroupOffsets {
    /// Loads `dir/groups.offsets`. A corrupt file is moved aside to `groups.offsets.corrupt`
    /// and reported in the returned note; the groups then start with no committed offsets.
    pub fn open(fs: Arc<dyn FileSystem>, dir: &Path) -> Result<(Self, Option<String>), StoreError> {
        let path = dir.join(GROUPS_FILE);
        let mut note = None;
        let state = match fs.read_file(&path) {
            Ok(buf) => match decode(&buf) {
                Ok(s) => s,
                Err(reason) => {
                    let aside = dir.join(format!("{GROUPS_FILE}.corrupt"));
                    let _ = fs.rename(&path, &aside);
                    let msg = format!(
                        "{}: {reason}; moved to {} and starting with no committed offsets",
                        path.display(),
                        aside.display()
                    );
                    tracing::error!("{msg}");
                    note = Some(msg);
                    Offsets::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Offsets::new(),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        Ok((
            Self {
                path,
                fs,
                state: Mutex::new(state),
            },
            note,
        ))
    }

    /// Applies and persists a commit (blocking).
    pub fn commit(&self, group: &str, offsets: &[(String, u32, u64)]) -> Result<(), StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = state.clone();
        let g = next.entry(group.to_owned()).or_default();
        for (topic, partition, offset) in offsets {
            g.insert((topic.clone(), *partition), *offset);
        }
        write_file_atomic(&*self.fs, &self.path, &encode(&next)).at(&self.path)?;
        *state = next;
        Ok(())
    }

    pub fn committed(&self, group: &str) -> Vec<(String, u32, u64)> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .get(group)
            .map(|g| g.iter().map(|((t, p), o)| (t.clone(), *p, *o)).collect())
            .unwrap_or_default()
    }

    pub fn groups(&self) -> Vec<String> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.keys().cloned().collect()
    }
}

fn encode(state: &Offsets) -> Vec<u8> {
    let count: usize = state.values().map(BTreeMap::len).sum();
    let mut out = super::segment::file_header(GROUPS_MAGIC, count as u64).to_vec();
    for (group, offsets) in state {
        for ((topic, partition), offset) in offsets {
            out.extend_from_slice(&(group.len() as u16).to_le_bytes());
            out.extend_from_slice(group.as_bytes());
            out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
            out.extend_from_slice(topic.as_bytes());
            out.extend_from_slice(&partition.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode(buf: &[u8]) -> Result<Offsets, String> {
    if buf.len() < 20 {
        return Err("file truncated".into());
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    if crc32c::crc32c(body) != u32_at(crc, 0) {
        return Err("checksum mismatch".into());
    }
    if body[..4] != GROUPS_MAGIC || body[4] != super::segment::FILE_VERSION {
        return Err("bad magic or version".into());
    }
    let count = u64_at(body, 8);
    let mut p = 16usize;
    let mut out = Offsets::new();
    let string = |p: &mut usize| -> Result<String, String> {
        let len = body
            .get(*p..*p + 2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
            .ok_or("entry truncated")?;
        let s = body.get(*p + 2..*p + 2 + len).ok_or("entry truncated")?;
        *p += 2 + len;
        String::from_utf8(s.to_vec()).map_err(|_| "name is not UTF-8".to_string())
    };
    for _ in 0..count {
        let group = string(&mut p)?;
        let topic = string(&mut p)?;
        let rest = body.get(p..p + 12).ok_or("entry truncated")?;
        out.entry(group)
            .or_default()
            .insert((topic, u32_at(rest, 0)), u64_at(rest, 4));
        p += 12;
    }
    if p != body.len() {
        return Err("trailing bytes".into());
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::fs::StdFs;

    #[test]
    fn commits_survive_reopen_and_corruption_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<dyn FileSystem> = Arc::new(StdFs);
        let (g, note) = GroupOffsets::open(fs.clone(), dir.path()).unwrap();
        assert!(note.is_none());
        g.commit("errors", &[("logs".into(), 0, 10), ("logs".into(), 1, 20)])
            .unwrap();
        g.commit("errors", &[("logs".into(), 0, 15)]).unwrap();
        g.commit("latency", &[("logs".into(), 3, 1)]).unwrap();
        drop(g);
        let (g, _) = GroupOffsets::open(fs.clone(), dir.path()).unwrap();
        assert_eq!(
            g.committed("errors"),
            vec![("logs".into(), 0, 15), ("logs".into(), 1, 20)]
        );
        assert_eq!(
            g.groups(),
            vec!["errors".to_string(), "latency".to_string()]
        );
        let path = dir.path().join(GROUPS_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let (g, note) = GroupOffsets::open(fs, dir.path()).unwrap();
        assert!(note.unwrap().contains("checksum"));
        assert!(g.groups().is_empty());
    }
}

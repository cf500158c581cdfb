//! Checkpoints: for each file identity, the offset up to which its lines were acknowledged.
//!
//! The offset advances only when the output acknowledges a batch (durable at the collector),
//! never when lines are read: after a crash the agent re-reads from the checkpoint and the
//! collector's dedup by origin drops what it already stored. So nothing is lost and nothing is
//! duplicated.
//!
//! # File
//!
//! `DATA_DIR/checkpoints.json`, a versioned serde enum (tag `"version"`), written to
//! `checkpoints.json.tmp`, fsync'ed, renamed over the old file, then the directory fsync'ed, so
//! a crash at any point leaves either the old or the new file whole. A format change adds a
//! variant and keeps reading the old ones: version `"3"` is written, `"2"` and `"1"` still read
//! (version 2 entries have no `pending`; version 1 entries no `origin`, `tail` or `head`
//! either); golden tests pin the bytes of each.
//!
//! | field          | meaning                                                         |
//! |----------------|-----------------------------------------------------------------|
//! | `agent_id`     | the id batches were shipped under, reused when none is configured |
//! | `files[]`      | one entry per file identity (dev, inode) being tailed            |
//! | `.path`        | where the file was last seen (for logs, and to recognise a file recreated at the same path while the agent was stopped) |
//! | `.dev`, `.inode` | the file's device and inode                                    |
//! | `.fingerprint` | `{len, checksum}` of its first bytes, or null while it was empty |
//! | `.generation`  | truncations seen so far (part of the batches' origin)            |
//! | `.offset`      | acknowledged byte offset: reading resumes here                   |
//! | `.updated_ms`  | when this entry last advanced, Unix ms                           |
//! | `.origin` (v2) | `{dev, inode, fingerprint, generation}` its lines ship under when not its own (a copytruncate copy read on under the original's origin); absent otherwise |
//! | `.tail` (v2)   | `{offset, len, checksum}`: hash of the `len` bytes before `offset` (≤ 4 KiB), to recognise a copy of this file after it was truncated |
//! | `.head` (v2)   | hash of the first line's content alone (no birth time)          |
//! | `.birth` (v3) | the file's birth time in ns, where the file system keeps one: a file found on the inode with another birth time is another file (the inode was reused while the agent was stopped) |
//! | `waiting` (v3, optional) | copies still waited for of files released since, each `{path, dev, inode, print}` (`print` as in `.pending`): waited for on after a restart, and counted as unread if none appears |
//! | `.probe` (v3, optional) | `{len, checksum, head}` of what a file recorded before its first line was whole began with: a restart that finds it beginning otherwise reads its old content's copy |
//! | `.pending` (v3) | the contents this file had before its truncations whose copy (copytruncate) has not been found yet, each `{origin, head, head_len, tail, from, lost, until_ms}` — the copy is read on from `from` under `origin` if it appears before `until_ms`; else `lost` bytes are counted as unread |

use crate::tail::FileState;
use crate::tail::fingerprint::{Fingerprint, TailPrint};
use ferry_core::record::FileId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// What can go wrong reading or writing checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "checkpoint {path} is not valid ({message}); move it aside to start over (files are then read per `read_from`)"
    )]
    Corruption { path: PathBuf, message: String },
}

/// One file's acknowledged position (the in-memory form, and version 2 on disk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCheckpoint {
    pub path: String,
    pub dev: u64,
    pub inode: u64,
    pub fingerprint: Option<Fingerprint>,
    pub generation: u32,
    pub offset: u64,
    pub updated_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<OriginV2>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<TailPrint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingCopy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birth: Option<u64>,
    /// Recorded before its first line was whole (no fingerprint): what it began with then. A
    /// restart that finds it beginning otherwise knows it was truncated while the agent was
    /// stopped, and looks for the copy of what it held (copytruncate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
}

/// What a file without a whole first line began with: `len` bytes, their checksum with the
/// file's birth time (as a fingerprint takes it) and without (as a copy's head is compared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub len: u64,
    pub checksum: u64,
    pub head: u64,
}

/// A truncated file's previous content, waiting (up to `rotate_wait`) for its copy to appear:
/// what recognises the copy, where to read it on from, and what is lost if none appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingCopy {
    /// The identity the previous content's lines shipped under (the copy's lines ship under it).
    pub origin: OriginV2,
    /// Hash of the previous content's first line, and its length.
    pub head: u64,
    pub head_len: u64,
    /// Hash of the bytes before where it was last read to its end.
    pub tail: TailPrint,
    /// The first byte of the previous content not handed out: the copy is read on from here.
    pub from: u64,
    /// Bytes past `from` a stat saw in it: lost if no copy holds them.
    pub lost: u64,
    /// Wall-clock deadline (Unix ms) for the copy to appear.
    pub until_ms: i64,
    /// Set when the content was recorded before its first line was whole (a probe, no
    /// fingerprint): the original's birth time. Its lines, if any shipped, shipped under the
    /// fingerprint of the first line they completed, which only the copy tells: the copy is
    /// read under the fingerprint of its own first line taken with this birth time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birth: Option<u64>,
}

/// The origin a copy's lines ship under (the original's identity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginV2 {
    pub dev: u64,
    pub inode: u64,
    pub fingerprint: u64,
    pub generation: u32,
}

impl From<FileId> for OriginV2 {
    fn from(f: FileId) -> Self {
        Self {
            dev: f.dev,
            inode: f.inode,
            fingerprint: f.fingerprint,
            generation: f.generation,
        }
    }
}

impl From<OriginV2> for FileId {
    fn from(o: OriginV2) -> Self {
        Self {
            dev: o.dev,
            inode: o.inode,
            fingerprint: o.fingerprint,
            generation: o.generation,
        }
    }
}

impl FileCheckpoint {
    /// The entry for `state` acknowledged up to `offset`. The tail print is kept only if it
    /// was taken at or before `offset` (bytes a restart would read again are not vouched for).
    pub fn of(state: &FileState, offset: u64) -> Self {
        Self {
            path: state.path.to_string(),
            dev: state.key.0,
            inode: state.key.1,
            fingerprint: state.fingerprint,
            generation: state.generation,
            offset,
            updated_ms: ferry_core::now_ms(),
            origin: state.origin.map(OriginV2::from),
            tail: state.tail.filter(|t| t.offset <= offset),
            head: state.head,
            pending: state.pending.clone(),
            birth: (state.birth != 0).then_some(state.birth),
            probe: state.probe.map(|(p, head)| Probe {
                len: p.len,
                checksum: p.checksum,
                head,
            }),
        }
    }
}

impl FileCheckpoint {
    /// Without a tail print of its own (the latest one lies past the acknowledged offset),
    /// the previous entry's, if it is of the same content and generation.
    pub fn keeping_tail_of(mut self, prev: Option<&FileCheckpoint>) -> Self {
        if self.tail.is_none()
            && let Some(p) = prev
            && p.generation == self.generation
            && p.fingerprint == self.fingerprint
            && p.origin == self.origin
        {
            self.tail = p.tail.filter(|t| t.offset <= self.offset);
        }
        self
    }
}

/// Version 1 of an entry: no origin, tail or head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCheckpointV1 {
    path: String,
    dev: u64,
    inode: u64,
    fingerprint: Option<Fingerprint>,
    generation: u32,
    offset: u64,
    updated_ms: i64,
}

/// The checkpoint file, versioned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "version")]
enum CheckpointFile {
    #[serde(rename = "1")]
    V1(CheckpointsV1),
    #[serde(rename = "2")]
    V2(CheckpointsV2),
    #[serde(rename = "3")]
    V3(CheckpointsV2),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointsV1 {
    agent_id: Option<String>,
    files: Vec<FileCheckpointV1>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointsV2 {
    agent_id: Option<String>,
    files: Vec<FileCheckpoint>,
    /// See [`Checkpoints::unread_bytes`] (absent before 2026-12-05, and while 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    unread_bytes: u64,
    /// See [`Checkpoints::waiting`] (absent before 2026-12-05, and while empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    waiting: Vec<WaitedCopy>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Checkpoints in memory, keyed by (dev, inode): at most one live file per inode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoints {
    pub agent_id: Option<String>,
    pub files: BTreeMap<(u64, u64), FileCheckpoint>,
    /// Bytes counted unread (destroyed before they were read) when a copy waited for through
    /// the checkpoint was resolved, over the agent's life: written in the same checkpoint that
    /// forgets the wait, so a kill right after that write cannot lose the count (it is logged,
    /// and added to `ferry_agent_unread_bytes_total`, only after the write; rotation model,
    /// wide seed 162).
    pub unread_bytes: u64,
    /// Copies still waited for of files released since (read to their end and gone, or gone
    /// while the agent was stopped): kept until their wait is over, so that a kill before then
    /// neither forgets the copy nor the bytes to count if none appears (rotation model, wide
    /// seed 540: a truncated file deleted while its copy was waited for, then a kill).
    pub waiting: Vec<WaitedCopy>,
}

/// A copy waited for of a file no longer tracked: the file's last path and key, and the print.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitedCopy {
    pub path: String,
    pub dev: u64,
    pub inode: u64,
    pub print: PendingCopy,
}

impl Checkpoints {
    /// `state`'s file is acknowledged up to `offset`.
    pub fn advance(&mut self, state: &FileState, offset: u64) {
        let cp = FileCheckpoint::of(state, offset).keeping_tail_of(self.files.get(&state.key));
        self.files.insert(state.key, cp);
    }

    /// The file `key` is no longer tracked; copies its earlier contents still wait for are
    /// waited for on without it.
    pub fn release(&mut self, key: (u64, u64)) {
        if let Some(cp) = self.files.remove(&key) {
            for print in cp.pending {
                self.waiting.push(WaitedCopy {
                    path: cp.path.clone(),
                    dev: cp.dev,
                    inode: cp.inode,
                    print,
                });
            }
        }
    }

    /// The wait for the copy of `key`'s content shipped under `origin` is over; `lost` bytes
    /// were never read.
    pub fn copy_resolved(&mut self, key: (u64, u64), origin: FileId, lost: u64) {
        if let Some(cp) = self.files.get_mut(&key) {
            cp.pending.retain(|p| FileId::from(p.origin) != origin);
        }
        self.waiting
            .retain(|w| (w.dev, w.inode) != key || FileId::from(w.print.origin) != origin);
        self.unread_bytes = self.unread_bytes.saturating_add(lost);
    }

    /// The entry whose last seen path is `path`.
    pub fn by_path(&self, path: &str) -> Option<&FileCheckpoint> {
        self.files.values().find(|c| c.path == path)
    }

    fn to_file(&self) -> CheckpointFile {
        CheckpointFile::V3(CheckpointsV2 {
            agent_id: self.agent_id.clone(),
            files: self.files.values().cloned().collect(),
            unread_bytes: self.unread_bytes,
            waiting: self.waiting.clone(),
        })
    }

    fn from_file(f: CheckpointFile) -> Self {
        match f {
            CheckpointFile::V1(v1) => Self {
                agent_id: v1.agent_id,
                files: v1
                    .files
                    .into_iter()
                    .map(|c| {
                        let c = FileCheckpoint {
                            path: c.path,
                            dev: c.dev,
                            inode: c.inode,
                            fingerprint: c.fingerprint,
                            generation: c.generation,
                            offset: c.offset,
                            updated_ms: c.updated_ms,
                            origin: None,
                            tail: None,
                            head: None,
                            pending: Vec::new(),
                            birth: None,
                            probe: None,
                        };
                        ((c.dev, c.inode), c)
                    })
                    .collect(),
                unread_bytes: 0,
                waiting: Vec::new(),
            },
            CheckpointFile::V2(v2) | CheckpointFile::V3(v2) => Self {
                unread_bytes: v2.unread_bytes,
                waiting: v2.waiting,
                agent_id: v2.agent_id,
                files: v2
                    .files
                    .into_iter()
                    .map(|c| ((c.dev, c.inode), c))
                    .collect(),
            },
        }
    }

    /// The bytes written to disk.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain structs of strings and integers into a Vec cannot fail.
        serde_json::to_vec_pretty(&self.to_file()).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice::<CheckpointFile>(bytes)
            .map(Self::from_file)
            .map_err(|e| e.to_string())
    }
}

/// Reads and atomically writes the checkpoint file of one data dir.
#[derive(Debug, Clone)]
pub struct Checkpointer {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
}

impl Checkpointer {
    pub const FILE_NAME: &'static str = "checkpoints.json";

    /// Creates the data dir if needed.
    pub fn new(dir: &Path) -> Result<Self, CheckpointError> {
        fs::create_dir_all(dir).map_err(|source| CheckpointError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            path: dir.join(Self::FILE_NAME),
            tmp: dir.join(format!("{}.tmp", Self::FILE_NAME)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored checkpoints; empty if there are none yet. A leftover temp file (a crash
    /// mid-write) is ignored: the renamed file is the last complete one.
    pub fn load(&self) -> Result<Checkpoints, CheckpointError> {
        match fs::read(&self.path) {
            Ok(bytes) => {
                Checkpoints::decode(&bytes).map_err(|message| CheckpointError::Corruption {
                    path: self.path.clone(),
                    message,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Checkpoints::default()),
            Err(source) => Err(CheckpointError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Writes `cps`: temp file, fsync, rename, fsync of the directory.
    pub fn store(&self, cps: &Checkpoints) -> Result<(), CheckpointError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| CheckpointError::Io { path, source }
        };
        let mut f = File::create(&self.tmp).map_err(io_err(&self.tmp))?;
        f.write_all(&cps.encode()).map_err(io_err(&self.tmp))?;
        f.sync_all().map_err(io_err(&self.tmp))?;
        drop(f);
        fs::rename(&self.tmp, &self.path).map_err(io_err(&self.path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Checkpoints {
        let mut c = Checkpoints {
            agent_id: Some("host-a".into()),
            ..Default::default()
        };
        c.files.insert(
            (2049, 77),
            FileCheckpoint {
                path: "/var/log/app.log".into(),
                dev: 2049,
                inode: 77,
                fingerprint: Some(Fingerprint {
                    len: 1024,
                    checksum: 0x0123_4567_89ab_cdef,
                }),
                generation: 2,
                offset: 4096,
                updated_ms: 1_700_000_000_000,
                origin: None,
                tail: None,
                head: None,
                pending: Vec::new(),
                birth: None,
                probe: None,
            },
        );
        c.files.insert(
            (2049, 78),
            FileCheckpoint {
                path: "/var/log/empty.log".into(),
                dev: 2049,
                inode: 78,
                fingerprint: None,
                generation: 0,
                offset: 0,
                updated_ms: 1_700_000_000_001,
                origin: None,
                tail: None,
                head: None,
                pending: Vec::new(),
                birth: None,
                probe: None,
            },
        );
        c
    }

    const GOLDEN_V1: &str = r#"{
  "version": "1",
  "agent_id": "host-a",
  "files": [
    {
      "path": "/var/log/app.log",
      "dev": 2049,
      "inode": 77,
      "fingerprint": {
        "len": 1024,
        "checksum": 81985529216486895
      },
      "generation": 2,
      "offset": 4096,
      "updated_ms": 1700000000000
    },
    {
      "path": "/var/log/empty.log",
      "dev": 2049,
      "inode": 78,
      "fingerprint": null,
      "generation": 0,
      "offset": 0,
      "updated_ms": 1700000000001
    }
  ]
}"#;

    /// Version 1, as the previous agent wrote it, must still load: an agent upgraded in place
    /// reads the checkpoints its previous version wrote (it now writes version 3).
    #[test]
    fn golden_v1_format_still_loads() {
        assert_eq!(Checkpoints::decode(GOLDEN_V1.as_bytes()).unwrap(), sample());
    }

    /// A copy read on under its original's origin, with the tail and head prints.
    fn sample_v2() -> Checkpoints {
        let mut c = sample();
        c.files.insert(
            (2049, 79),
            FileCheckpoint {
                path: "/var/log/app.log.1".into(),
                dev: 2049,
                inode: 79,
                fingerprint: Some(Fingerprint {
                    len: 12,
                    checksum: 42,
                }),
                generation: 0,
                offset: 8192,
                updated_ms: 1_700_000_000_002,
                origin: Some(OriginV2 {
                    dev: 2049,
                    inode: 77,
                    fingerprint: 81985529216486895,
                    generation: 2,
                }),
                tail: Some(TailPrint {
                    offset: 8192,
                    len: 4096,
                    checksum: 7,
                }),
                head: Some(9),
                pending: Vec::new(),
                birth: None,
                probe: None,
            },
        );
        c
    }

    const GOLDEN_V2: &str = r#"{
  "version": "2",
  "agent_id": "host-a",
  "files": [
    {
      "path": "/var/log/app.log",
      "dev": 2049,
      "inode": 77,
      "fingerprint": {
        "len": 1024,
        "checksum": 81985529216486895
      },
      "generation": 2,
      "offset": 4096,
      "updated_ms": 1700000000000
    },
    {
      "path": "/var/log/empty.log",
      "dev": 2049,
      "inode": 78,
      "fingerprint": null,
      "generation": 0,
      "offset": 0,
      "updated_ms": 1700000000001
    },
    {
      "path": "/var/log/app.log.1",
      "dev": 2049,
      "inode": 79,
      "fingerprint": {
        "len": 12,
        "checksum": 42
      },
      "generation": 0,
      "offset": 8192,
      "updated_ms": 1700000000002,
      "origin": {
        "dev": 2049,
        "inode": 77,
        "fingerprint": 81985529216486895,
        "generation": 2
      },
      "tail": {
        "offset": 8192,
        "len": 4096,
        "checksum": 7
      },
      "head": 9
    }
  ]
}"#;

    /// Version 2, as the previous agent wrote it, must still load.
    #[test]
    fn golden_v2_format_still_loads() {
        assert_eq!(
            Checkpoints::decode(GOLDEN_V2.as_bytes()).unwrap(),
            sample_v2()
        );
    }

    /// A truncated file whose copy has not appeared yet.
    fn sample_v3() -> Checkpoints {
        let mut c = sample_v2();
        if let Some(e) = c.files.get_mut(&(2049, 77)) {
            e.birth = Some(1_699_999_999_123_456_789);
            e.pending = vec![PendingCopy {
                origin: OriginV2 {
                    dev: 2049,
                    inode: 77,
                    fingerprint: 5,
                    generation: 1,
                },
                head: 9,
                head_len: 12,
                tail: TailPrint {
                    offset: 6000,
                    len: 4096,
                    checksum: 11,
                },
                from: 6100,
                lost: 300,
                until_ms: 1_700_000_030_000,
                birth: None,
            }];
        }
        c
    }

    const GOLDEN_V3: &str = r#"{
  "version": "3",
  "agent_id": "host-a",
  "files": [
    {
      "path": "/var/log/app.log",
      "dev": 2049,
      "inode": 77,
      "fingerprint": {
        "len": 1024,
        "checksum": 81985529216486895
      },
      "generation": 2,
      "offset": 4096,
      "updated_ms": 1700000000000,
      "pending": [
        {
          "origin": {
            "dev": 2049,
            "inode": 77,
            "fingerprint": 5,
            "generation": 1
          },
          "head": 9,
          "head_len": 12,
          "tail": {
            "offset": 6000,
            "len": 4096,
            "checksum": 11
          },
          "from": 6100,
          "lost": 300,
          "until_ms": 1700000030000
        }
      ],
      "birth": 1699999999123456789
    },
    {
      "path": "/var/log/empty.log",
      "dev": 2049,
      "inode": 78,
      "fingerprint": null,
      "generation": 0,
      "offset": 0,
      "updated_ms": 1700000000001
    },
    {
      "path": "/var/log/app.log.1",
      "dev": 2049,
      "inode": 79,
      "fingerprint": {
        "len": 12,
        "checksum": 42
      },
      "generation": 0,
      "offset": 8192,
      "updated_ms": 1700000000002,
      "origin": {
        "dev": 2049,
        "inode": 77,
        "fingerprint": 81985529216486895,
        "generation": 2
      },
      "tail": {
        "offset": 8192,
        "len": 4096,
        "checksum": 7
      },
      "head": 9
    }
  ]
}"#;

    /// The on-disk format of version 3 must not change.
    #[test]
    fn golden_v3_format() {
        assert_eq!(String::from_utf8(sample_v3().encode()).unwrap(), GOLDEN_V3);
        assert_eq!(
            Checkpoints::decode(GOLDEN_V3.as_bytes()).unwrap(),
            sample_v3()
        );
    }

    /// The lifetime count of unread bytes rides along in version 3 (written only when not 0, so
    /// the golden file above, written before it existed, is still what an agent writes).
    #[test]
    fn unread_bytes_total_round_trips_and_is_absent_while_zero() {
        let mut c = sample_v3();
        c.unread_bytes = 893;
        let text = String::from_utf8(c.encode()).unwrap();
        assert!(text.contains("\"unread_bytes\": 893"), "{text}");
        assert_eq!(Checkpoints::decode(text.as_bytes()).unwrap(), c);
        assert_eq!(
            Checkpoints::decode(GOLDEN_V3.as_bytes())
                .unwrap()
                .unread_bytes,
            0
        );
    }

    #[test]
    fn probe_of_a_half_first_line_round_trips_and_is_absent_without_one() {
        let mut c = sample_v3();
        let key = *c.files.keys().next().unwrap();
        let text = String::from_utf8(c.encode()).unwrap();
        assert!(!text.contains("probe"), "{text}");
        c.files.get_mut(&key).unwrap().probe = Some(Probe {
            len: 15,
            checksum: 7,
            head: 9,
        });
        let text = String::from_utf8(c.encode()).unwrap();
        assert!(text.contains("\"probe\""), "{text}");
        assert_eq!(Checkpoints::decode(text.as_bytes()).unwrap(), c);
    }

    #[test]
    fn unknown_version_and_garbage_are_refused() {
        assert!(Checkpoints::decode(br#"{"version":"9","files":[]}"#).is_err());
        // Version 1 entries do not take version 2 fields.
        assert!(
            Checkpoints::decode(
                br#"{"version":"1","agent_id":null,"files":[{"path":"a","dev":1,"inode":2,"fingerprint":null,"generation":0,"offset":0,"updated_ms":0,"head":1}]}"#
            )
            .is_err()
        );
        assert!(Checkpoints::decode(b"{\"version\":\"1\",\"agent_id\":null,\"fil").is_err());
    }

    #[test]
    fn store_then_load_and_no_temp_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpointer::new(&dir.path().join("sub")).unwrap();
        assert_eq!(cp.load().unwrap(), Checkpoints::default());
        cp.store(&sample()).unwrap();
        assert_eq!(cp.load().unwrap(), sample());
        let names: Vec<_> = fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![Checkpointer::FILE_NAME.to_owned()]);
    }

    #[test]
    fn torn_temp_file_from_a_crash_does_not_replace_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpointer::new(dir.path()).unwrap();
        cp.store(&sample()).unwrap();
        // A crash after writing part of the temp file, before the rename.
        fs::write(
            dir.path().join("checkpoints.json.tmp"),
            &GOLDEN_V1.as_bytes()[..40],
        )
        .unwrap();
        assert_eq!(cp.load().unwrap(), sample());
        // The next store overwrites the torn temp file.
        let mut next = sample();
        next.agent_id = Some("host-b".into());
        cp.store(&next).unwrap();
        assert_eq!(cp.load().unwrap(), next);
    }

    #[test]
    fn corrupt_checkpoint_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpointer::new(dir.path()).unwrap();
        fs::write(cp.path(), b"not json").unwrap();
        let err = cp.load().unwrap_err().to_string();
        assert!(
            err.contains("checkpoints.json") && err.contains("move it aside"),
            "{err}"
        );
    }
}

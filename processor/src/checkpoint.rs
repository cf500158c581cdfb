//! Where a pipeline's snapshot is kept between runs: one file per pipeline,
//! `<dir>/<pipeline>.state`, replaced atomically (write temp, fsync, rename, fsync the directory),
//! so a crash leaves either the old or the new checkpoint, never a torn one.

use crate::config::PipelineConfig;
use crate::pipeline::Pipeline;
use crate::state::StateError;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: StateError,
    },
}

/// Loads and stores one pipeline's checkpoint file.
#[derive(Debug, Clone)]
pub struct Checkpointer {
    path: PathBuf,
}

impl Checkpointer {
    /// The checkpoint of pipeline `name` in `dir` (which must exist).
    pub fn new(dir: &Path, name: &str) -> Self {
        // Pipeline names are free text; keep the file name safe.
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Self {
            path: dir.join(format!("{safe}.state")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> CheckpointError {
        CheckpointError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// The stored snapshot, if there is one.
    pub fn load(&self) -> Result<Option<Vec<u8>>, CheckpointError> {
        match std::fs::read(&self.path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(e)),
        }
    }

    /// A pipeline restored from the checkpoint, or a new one if there is none.
    pub fn open_pipeline(&self, cfg: PipelineConfig) -> Result<Pipeline, CheckpointError> {
        match self.load()? {
            None => Ok(Pipeline::new(cfg)),
            Some(bytes) => {
                Pipeline::restore(cfg, &bytes).map_err(|source| CheckpointError::State {
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }

    /// Replaces the checkpoint with `bytes`, durably. Blocking: call from a blocking thread.
    pub fn store(&self, bytes: &[u8]) -> Result<(), CheckpointError> {
        let tmp = self.path.with_extension("state.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(|e| self.io(e))?;
        f.write_all(bytes).map_err(|e| self.io(e))?;
        f.sync_all().map_err(|e| self.io(e))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        if let Some(dir) = self.path.parent() {
            let d = std::fs::File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })
            .map_err(|e| self.io(e))?;
            d.sync_all().map_err(|e| self.io(e))?;
        }
        Ok(())
    }
}

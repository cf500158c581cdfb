//! Finding the files to tail: glob expansion, and the directories to watch for events.
//!
//! Each include glob is split into a literal base directory and a pattern below it
//! (`/var/log/app/*.log` → `/var/log/app`, depth 1; `/srv/**/x.log` → `/srv`, any depth). A
//! scan walks each base directory to that depth and keeps the regular files the input's globs
//! match. The same base directories are what the reader watches with inotify (a directory
//! watch, since a watch on a file goes silent after a rename). A scan costs one `readdir` per
//! directory and one `stat` per entry, so it runs rarely (`rescan_interval`) or for one path
//! when an event names it.

use crate::config::CompiledInput;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// Where one glob's matches can be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobRoot {
    /// The literal directory before the first component with a glob character.
    pub dir: PathBuf,
    /// How many directory levels below `dir` a match may be; `None` for any (`**`).
    pub depth: Option<usize>,
}

impl GlobRoot {
    pub fn of(pattern: &str) -> Self {
        let is_glob = |s: &str| s.contains(['*', '?', '[', '{']);
        let mut dir = PathBuf::new();
        let mut rest: Vec<String> = Vec::new();
        for c in Path::new(pattern).components() {
            let s = c.as_os_str().to_string_lossy().into_owned();
            if rest.is_empty() && !is_glob(&s) {
                dir.push(c.as_os_str());
            } else {
                rest.push(s);
            }
        }
        if rest.is_empty() {
            // A literal file path: its directory, depth 0.
            let parent = dir
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/"));
            return Self {
                dir: parent,
                depth: Some(0),
            };
        }
        let depth = if rest.iter().any(|s| s.contains("**")) {
            None
        } else {
            Some(rest.len() - 1)
        };
        if matches!(
            Path::new(pattern).components().next(),
            Some(Component::RootDir)
        ) && dir.as_os_str().is_empty()
        {
            dir.push("/");
        }
        Self { dir, depth }
    }

    /// Whether events below this root need a recursive watch.
    pub fn recursive(&self) -> bool {
        self.depth != Some(0)
    }
}

/// Every root of every input, deduplicated (a root inside another recursive one is kept: the
/// watcher tolerates a directory watched twice).
pub fn roots(inputs: &[CompiledInput]) -> Vec<GlobRoot> {
    let mut out: Vec<GlobRoot> = Vec::new();
    for input in inputs {
        for p in &input.include_patterns {
            let r = GlobRoot::of(p);
            if let Some(existing) = out.iter_mut().find(|e| e.dir == r.dir) {
                existing.depth = match (existing.depth, r.depth) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            } else {
                out.push(r);
            }
        }
    }
    out
}

/// A file a scan found: which input it belongs to and its metadata.
#[derive(Debug)]
pub struct Found {
    pub input: usize,
    pub meta: fs::Metadata,
}

/// Walks every root and returns the regular files that some input matches (the first input
/// that matches a path owns it).
pub fn scan(inputs: &[CompiledInput], roots: &[GlobRoot]) -> BTreeMap<PathBuf, Found> {
    let mut out = BTreeMap::new();
    for root in roots {
        walk(&root.dir, root.depth, inputs, &mut out);
    }
    out
}

/// Which input owns `path`, if any.
pub fn owner(inputs: &[CompiledInput], path: &Path) -> Option<usize> {
    inputs.iter().position(|i| i.matches(path))
}

fn walk(
    dir: &Path,
    depth: Option<usize>,
    inputs: &[CompiledInput],
    out: &mut BTreeMap<PathBuf, Found>,
) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // Follow symlinks: a link to a log file is tailed as that file.
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            match depth {
                Some(0) => {}
                Some(d) => walk(&path, Some(d - 1), inputs, out),
                None => walk(&path, None, inputs, out),
            }
        } else if meta.is_file()
            && let Some(input) = owner(inputs, &path)
        {
            out.insert(path, Found { input, meta });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{AgentConfig, InputConfig};

    #[test]
    fn roots_of_globs() {
        assert_eq!(
            GlobRoot::of("/var/log/app/*.log"),
            GlobRoot {
                dir: "/var/log/app".into(),
                depth: Some(0)
            }
        );
        assert_eq!(
            GlobRoot::of("/var/log/*/app.log"),
            GlobRoot {
                dir: "/var/log".into(),
                depth: Some(1)
            }
        );
        assert_eq!(
            GlobRoot::of("/srv/**/x.log"),
            GlobRoot {
                dir: "/srv".into(),
                depth: None
            }
        );
        assert_eq!(
            GlobRoot::of("/var/log/syslog"),
            GlobRoot {
                dir: "/var/log".into(),
                depth: Some(0)
            }
        );
    }

    #[test]
    fn scan_finds_matches_at_the_right_depth_and_skips_excluded() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("sub/deeper")).unwrap();
        for f in [
            "a.log",
            "b.txt",
            "skip.log",
            "sub/c.log",
            "sub/deeper/d.log",
        ] {
            std::fs::write(d.join(f), b"x\n").unwrap();
        }
        let cfg = AgentConfig {
            inputs: vec![InputConfig {
                name: "i".into(),
                include: vec![
                    format!("{}/*.log", d.display()),
                    format!("{}/*/*.log", d.display()),
                ],
                exclude: vec![format!("{}/skip.log", d.display())],
                read_from: Default::default(),
                topic: "t".into(),
                fields: Default::default(),
                multiline: None,
                max_line_bytes: ferry_core::config::ByteSize(100),
                line_flush_timeout: ferry_core::config::Duration::from_secs(1),
                format: None,
                kubernetes: false,
                rotate_wait: ferry_core::config::Duration::from_secs(30),
            }],
            ..Default::default()
        };
        let inputs = cfg.validate().unwrap();
        let found = scan(&inputs, &roots(&inputs));
        let names: Vec<_> = found
            .keys()
            .map(|p| p.strip_prefix(d).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["a.log", "sub/c.log"]);
    }
}

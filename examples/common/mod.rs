//! What every example shares: connecting to the collector, consumer settings, child processes
//! that die with the example, and small file helpers.
#![allow(dead_code)]

use anyhow::Context;
use ferry_core::client::CollectorClient;
use ferry_core::consumer::{Consumer, ConsumerConfig, StartPosition};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

/// A client for the collector at `url`, checked with a first request so a wrong URL fails with
/// a clear message instead of a timeout later.
pub async fn connect(url: &str) -> anyhow::Result<CollectorClient> {
    let client = CollectorClient::new(url)?;
    client.topics().await.with_context(|| {
        format!("no ferry collector answers at {url}; start one with `cargo run -- collector`")
    })?;
    Ok(client)
}

/// An id for this run of an example. Events carry it, so a second run on the same collector
/// ignores what an earlier run left in a topic (it still reads and commits past it).
pub fn run_id() -> String {
    format!("{}-{}", ferry_core::now_ms(), std::process::id())
}

/// A consumer in `group` on `topic`. A group that has never committed starts at the beginning
/// of the topic, so nothing published before the consumer first joined is missed.
pub async fn group_consumer(
    client: &CollectorClient,
    topic: &str,
    group: &str,
    session_timeout: Duration,
) -> anyhow::Result<Consumer> {
    let mut config = ConsumerConfig::new(vec![topic.to_owned()]);
    config.group = Some(group.to_owned());
    config.start = StartPosition::Earliest;
    config.session_timeout = session_timeout;
    config.poll_wait = Duration::from_millis(200);
    Consumer::connect(client.clone(), config)
        .await
        .with_context(|| format!("joining group {group} on topic {topic}"))
}

/// Creates `topic` with `partitions` unless it exists (then it is left as it is).
pub async fn ensure_topic(
    client: &CollectorClient,
    topic: &str,
    partitions: u32,
) -> anyhow::Result<()> {
    client
        .create_topic(topic, partitions)
        .await
        .with_context(|| format!("creating topic {topic}"))?;
    Ok(())
}

/// A child process killed (SIGKILL) and reaped when dropped, so an example that fails or is
/// interrupted leaves nothing running.
pub struct ChildGuard {
    pub name: String,
    pub child: Option<Child>,
}

impl ChildGuard {
    pub fn new(name: &str, child: Child) -> Self {
        Self {
            name: name.to_owned(),
            child: Some(child),
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it exited already (it should not have).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The `ferry` binary: `--ferry` if given, else the one built next to this example.
pub fn ferry_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating this example")?;
    let sibling = exe
        .parent()
        .map(|d| d.join("ferry"))
        .context("this example has no directory")?;
    anyhow::ensure!(
        sibling.exists(),
        "no ferry binary at {}: run `cargo build` first, or pass --ferry PATH",
        sibling.display()
    );
    Ok(sibling)
}

/// Creates `dir` afresh (removing what an earlier run left there).
pub fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Appends one line to a file and flushes it to disk.
pub fn append_line(path: &Path, line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{line}").with_context(|| format!("writing {}", path.display()))?;
    f.sync_data()
        .with_context(|| format!("syncing {}", path.display()))
}

/// Milliseconds with one decimal, for the printed summaries.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Runs `work` until it finishes or the process gets SIGINT/SIGTERM; on a signal `work` is
/// dropped, so the [`ChildGuard`]s it owns kill their processes before the example exits.
pub async fn interruptible<T>(
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted (SIGINT); child processes stopped"),
        _ = term.recv() => anyhow::bail!("terminated (SIGTERM); child processes stopped"),
    }
}

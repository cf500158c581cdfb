//! A real Kafka-protocol broker for tests: `tansu` with memory storage on a free port.
//!
//! The binary comes from `$FERRY_TANSU_BIN`, or else from `scripts/install-tansu` (idempotent;
//! it downloads the broker once into `.tools/bin`). [`Tansu::start`] waits until a metadata
//! request succeeds; dropping the handle kills the broker, and prints its log if the test is
//! failing. Memory storage: a restarted broker starts empty.
#![allow(clippy::unwrap_used)]

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
    /// Holds the log file's directory for the broker's lifetime.
    _dir: tempfile::TempDir,
}

/// The tansu binary: `$FERRY_TANSU_BIN`, or what `scripts/install-tansu` installs.
pub fn tansu_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("FERRY_TANSU_BIN").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-tansu");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed: {}", script.display(), out.status));
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(PathBuf::from(path))
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind port 0")
}

impl Tansu {
    /// Starts a broker on a free port and waits until it answers metadata requests.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts a broker on `port`, retrying for a while if the port is still held (a broker
    /// restarted on its old port can meet AddrInUse while old connections linger).
    pub fn start_on(port: u16) -> Self {
        let bin = tansu_bin().unwrap_or_else(|e| panic!("no tansu broker: {e}"));
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("tansu.log");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let file = std::fs::File::create(&log).expect("log file");
            let err = file.try_clone().expect("log file");
            let url = format!("tcp://127.0.0.1:{port}");
            let child = Command::new(&bin)
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                    "--storage-engine",
                    "memory://tansu/",
                ])
                .env_remove("LISTENER_URL")
                .env_remove("ADVERTISED_LISTENER_URL")
                .env_remove("STORAGE_ENGINE")
                .stdin(Stdio::null())
                .stdout(file)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            let mut t = Tansu {
                child: Some(child),
                port,
                log: log.clone(),
                _dir: tempfile::tempdir().expect("temp dir"),
            };
            match t.wait_ready(Duration::from_secs(20)) {
                Ok(()) => {
                    t._dir = dir;
                    return t;
                }
                Err(e) if Instant::now() < deadline && t.log().contains("AddrInUse") => {
                    t.kill();
                    eprintln!("tansu: port {port} still in use ({e}); retrying");
                    std::thread::sleep(Duration::from_millis(300));
                }
                Err(e) => panic!("tansu did not start: {e}\n--- tansu log\n{}", t.log()),
            }
        }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("log_level", "0")
            .create()
            .map_err(|e| e.to_string())?;
        let mut last = String::new();
        while start.elapsed() < timeout {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("tansu exited with {status}"));
            }
            match consumer.fetch_metadata(None, Duration::from_millis(500)) {
                Ok(md) if !md.brokers().is_empty() => return Ok(()),
                Ok(_) => last = "metadata without brokers".into(),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("no metadata after {timeout:?}: {last}"))
    }

    /// SIGKILL: the broker and (memory storage) everything it held are gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- tansu log (port {})\n{}", self.port, self.log());
        }
    }
}

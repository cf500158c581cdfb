//! The sample-log generator behind `ferry up`: realistic web-service logs written to real files,
//! rotated by rename as logrotate would, so the agent has something true to tail.
//!
//! `app.log` gets one JSON line per request (timestamp, level, service, endpoint, status, latency,
//! user); about one request in fifty fails. `worker.log` gets plain-text lines and, now and then, a
//! multi-line Java-style stack trace (what the agent's multiline rule exists for). When a file
//! passes `rotate_bytes` it is renamed to `NAME.1` (older ones shift up to `keep`) and a new one is
//! started, exactly the rename/create rotation the agent must follow without losing a line.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The `generator:` part of `ferry up`'s config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Folder the sample logs are written to.
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// Requests logged per second (`app.log`).
    #[serde(default = "default_rate")]
    pub lines_per_second: u32,
    /// Rotate a file when it grows past this.
    #[serde(default = "default_rotate")]
    pub rotate_bytes: ferry_core::config::ByteSize,
    /// Rotated files kept (`app.log.1` .. `app.log.N`).
    #[serde(default = "default_keep")]
    pub keep: u32,
    /// Seed of the pseudo-random stream (the same seed writes the same lines).
    #[serde(default)]
    pub seed: u64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            dir: default_dir(),
            lines_per_second: default_rate(),
            rotate_bytes: default_rotate(),
            keep: default_keep(),
            seed: 0,
        }
    }
}

fn default_dir() -> PathBuf {
    PathBuf::from("sample-logs")
}
fn default_rate() -> u32 {
    2000
}
fn default_rotate() -> ferry_core::config::ByteSize {
    ferry_core::config::ByteSize::mib(16)
}
fn default_keep() -> u32 {
    2
}

const SERVICES: [(&str, &[&str]); 4] = [
    ("checkout", &["/api/cart", "/api/pay", "/api/order"]),
    ("search", &["/api/search", "/api/suggest"]),
    ("auth", &["/api/login", "/api/token"]),
    ("catalog", &["/api/item", "/api/list", "/api/price"]),
];

/// One log file being written and rotated.
struct RotatingFile {
    path: PathBuf,
    file: std::fs::File,
    written: u64,
    rotate_bytes: u64,
    keep: u32,
}

impl RotatingFile {
    fn open(path: PathBuf, rotate_bytes: u64, keep: u32) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let written = file.metadata()?.len();
        Ok(Self {
            path,
            file,
            written,
            rotate_bytes,
            keep,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        if self.written >= self.rotate_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let name = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
        let _ = std::fs::remove_file(name(self.keep));
        for i in (1..self.keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        std::fs::rename(&self.path, name(1))?;
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

/// Writes sample logs into `config.dir` until `stop` is set. Returns the number of requests
/// logged. Runs on its own thread (plain blocking file I/O).
pub fn run(config: &GeneratorConfig, stop: &std::sync::atomic::AtomicBool) -> std::io::Result<u64> {
    std::fs::create_dir_all(&config.dir)?;
    let mut app = RotatingFile::open(
        config.dir.join("app.log"),
        config.rotate_bytes.get(),
        config.keep,
    )?;
    let mut worker = RotatingFile::open(
        config.dir.join("worker.log"),
        config.rotate_bytes.get(),
        config.keep,
    )?;
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let tick = Duration::from_millis(50);
    let per_tick = (u64::from(config.lines_per_second) * tick.as_millis() as u64 / 1000).max(1);
    let mut n = 0u64;
    let mut buf = Vec::with_capacity(64 * 1024);
    let started = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        buf.clear();
        let now = time::now_rfc3339_ms();
        for _ in 0..per_tick {
            write_request(&mut buf, &mut rng, &now);
            n += 1;
        }
        app.write(&buf)?;
        if rng.random_range(0..10) == 0 {
            buf.clear();
            write_worker(&mut buf, &mut rng, &now);
            worker.write(&buf)?;
        }
        // Pace by the wall clock so a slow tick is made up for.
        let due = tick * (n / per_tick) as u32;
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(n)
}

fn write_request(buf: &mut Vec<u8>, rng: &mut SmallRng, now: &str) {
    let (service, endpoints) = SERVICES[rng.random_range(0..SERVICES.len())];
    let endpoint = endpoints[rng.random_range(0..endpoints.len())];
    let failed = rng.random_range(0..50) == 0;
    let (level, status) = if failed {
        ("error", [500, 502, 503][rng.random_range(0..3)])
    } else if rng.random_range(0..20) == 0 {
        ("warn", 429)
    } else {
        ("info", 200)
    };
    // A long-tailed latency: mostly tens of ms, sometimes seconds.
    let base: f64 = rng.random_range(5.0..60.0);
    let tail = if rng.random_range(0..100) == 0 {
        rng.random_range(500.0..3000.0)
    } else {
        0.0
    };
    let latency = base + tail;
    let user = rng.random_range(0..5000);
    let _ = writeln!(
        buf,
        r#"{{"ts":"{now}","level":"{level}","service":"{service}","endpoint":"{endpoint}","status":{status},"latency_ms":{latency:.1},"user":"u{user}","msg":"request handled"}}"#
    );
}

fn write_worker(buf: &mut Vec<u8>, rng: &mut SmallRng, now: &str) {
    if rng.random_range(0..5) == 0 {
        let _ = writeln!(
            buf,
            "{now} ERROR worker job {} failed",
            rng.random_range(1000..9999)
        );
        let _ = writeln!(buf, "java.lang.IllegalStateException: queue closed");
        for (class, line) in [("Queue.take", 88), ("Worker.run", 42), ("Thread.run", 829)] {
            let _ = writeln!(
                buf,
                "    at com.example.{class}({}.java:{line})",
                class.split('.').next().unwrap_or("X")
            );
        }
    } else {
        let _ = writeln!(
            buf,
            "{now} INFO worker job {} done",
            rng.random_range(1000..9999)
        );
    }
}

/// Whether `dir` looks like a generator folder (used to refuse writing into a real log dir).
pub fn is_sample_dir(dir: &Path) -> bool {
    !dir.exists()
        || dir.join("app.log").exists()
        || std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
}

/// RFC 3339 timestamps without a date-time dependency.
pub mod time {
    /// Now, as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    pub fn now_rfc3339_ms() -> String {
        format_ms(ferry_core::now_ms())
    }

    /// Unix milliseconds as RFC 3339 UTC with milliseconds.
    pub fn format_ms(ms: i64) -> String {
        let secs = ms.div_euclid(1000);
        let milli = ms.rem_euclid(1000);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60
        )
    }

    /// Howard Hinnant's days → civil date algorithm.
    fn civil_from_days(z: i64) -> (i64, u32, u32) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        (if m <= 2 { y + 1 } else { y }, m, d)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn formats_known_instants() {
            assert_eq!(super::format_ms(0), "1970-01-01T00:00:00.000Z");
            assert_eq!(
                super::format_ms(951_782_400_123),
                "2000-02-29T00:00:00.123Z"
            );
            assert_eq!(
                super::format_ms(1_795_500_000_000),
                "2026-11-24T06:00:00.000Z"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn writes_json_lines_and_rotates_without_losing_any() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = GeneratorConfig {
            dir: dir.path().to_owned(),
            lines_per_second: 20_000,
            rotate_bytes: ferry_core::config::ByteSize::kib(64),
            keep: 50,
            seed: 7,
        };
        let stop = AtomicBool::new(false);
        let n = std::thread::scope(|s| {
            let h = s.spawn(|| run(&config, &stop));
            std::thread::sleep(Duration::from_millis(400));
            stop.store(true, Ordering::Relaxed);
            h.join().expect("join")
        })
        .expect("run");
        let mut lines = 0u64;
        let mut files = 0;
        for e in std::fs::read_dir(dir.path()).expect("dir") {
            let p = e.expect("entry").path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("app.log") {
                files += 1;
                for l in std::fs::read_to_string(&p).expect("read").lines() {
                    let v: serde_json::Value = serde_json::from_str(l).expect("valid JSON line");
                    assert!(v["latency_ms"].as_f64().is_some());
                    lines += 1;
                }
            }
        }
        assert!(files > 1, "no rotation happened");
        assert_eq!(lines, n);
    }
}

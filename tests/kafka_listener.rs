//! The collector's Kafka listener (`ferry collector --kafka-listen ADDR`, issue 17) driven by
//! real, independent Kafka clients. Each test starts its own collector on the embedded store.
//!
//! | client | protocol code | what is checked |
//! | --- | --- | --- |
//! | Debian's `kcat` | librdkafka 2.0.2 | `-L` metadata, `-P`, `-C -o beginning -e`, offsets = ferry's |
//! | `ferry collector --kafka`, `ferry consume --kafka` | librdkafka 2.12 (rdkafka crate) | idempotent `acks=all` produce; a group of 3 with one member SIGKILLed |
//! | confluent-kafka (PyPI) | librdkafka's wheel | 100,000 records produced and consumed in a group; commits survive a collector SIGKILL |
//! | kafka-python (PyPI) | pure Python | the same |
//! | `ferry produce` / `ferry consume --collector`, `ferry agent --stdin --kafka` | HTTP and Kafka | one model of the data: the mapping both ways |
//! | a raw `TcpStream` | none | garbage, oversized and truncated frames, unknown keys and versions |
//!
//! Every client runs as a child process under a deadline and is killed past it, so a hung
//! client fails its test instead of hanging CI. Each test prints its collector's addresses (and
//! the raw test its seed) first: nextest shows them with a failure.
//!
//! kcat must be on PATH and the Python clients in the venv scripts/test makes
//! (`target/py-kafka`; `FERRY_KAFKA_PYTHON` names another Python that has them): a missing
//! client fails the test, it does not skip it.

mod util;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use util::{Dir, Proc, consume_json, ferry, http_get, wait_until};

// ---------------------------------------------------------------------------------------------
// Processes

/// A `ferry collector` with a Kafka listener: started on port 0 for both, the addresses read
/// from what it prints; restarted on the same addresses and data dir.
struct Collector {
    proc: Proc,
    name: String,
    http: SocketAddr,
    kafka: SocketAddr,
    data: PathBuf,
    config: Option<PathBuf>,
}

impl Collector {
    fn start(dir: &Dir, name: &str, yaml: Option<&str>) -> Self {
        let data = dir.join(format!("{name}-data"));
        let config = yaml.map(|y| dir.write(&format!("{name}.yaml"), y));
        let args = collector_args("127.0.0.1:0", "127.0.0.1:0", &data, config.as_deref());
        let mut proc = Proc::start(
            name,
            dir,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let (http, kafka) = wait_printed(&mut proc, 0, Duration::from_secs(30))
            .unwrap_or_else(|log| panic!("collector {name} did not start: {log}"));
        let c = Collector {
            proc,
            name: name.to_owned(),
            http,
            kafka,
            data,
            config,
        };
        eprintln!(
            "collector {}: http://{} kafka {} data {}",
            c.name,
            c.http,
            c.kafka,
            c.data.display()
        );
        c
    }

    fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    fn bootstrap(&self) -> String {
        self.kafka.to_string()
    }

    /// SIGKILL, then the same command on the same addresses and data dir (retried while the
    /// ports are still held).
    fn kill9_and_restart(&mut self, dir: &Dir) {
        self.proc.kill9();
        let args = collector_args(
            &self.http.to_string(),
            &self.kafka.to_string(),
            &self.data,
            self.config.as_deref(),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let from = std::fs::metadata(&self.proc.stderr_path).map_or(0, |m| m.len());
            let mut proc = Proc::start(&self.name, dir, &args);
            match wait_printed(&mut proc, from, Duration::from_secs(20)) {
                Ok(_) => {
                    self.proc = proc;
                    eprintln!("collector {} restarted on the same addresses", self.name);
                    return;
                }
                Err(log) if log.contains("in use") && Instant::now() < deadline => {
                    drop(proc);
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(log) => panic!("collector {} did not restart:\n{log}", self.name),
            }
        }
    }

    fn assert_alive(&mut self, after: &str) {
        if let Some(status) = self.proc.exited() {
            panic!(
                "the collector exited ({status}) after {after}:\n{}",
                self.proc.stderr()
            );
        }
    }
}

fn collector_args(http: &str, kafka: &str, data: &Path, config: Option<&Path>) -> Vec<String> {
    let mut args: Vec<String> = [
        "collector",
        "--listen",
        http,
        "--data-dir",
        &data.display().to_string(),
        "--kafka-listen",
        kafka,
    ]
    .map(String::from)
    .to_vec();
    if let Some(c) = config {
        args.extend(["--config".into(), c.display().to_string()]);
    }
    args
}

/// What a collector printed on stderr after byte `from`: its HTTP and Kafka addresses, once
/// both are printed and `/healthz` answers. `Err(stderr)` if it exited or took over `timeout`.
fn wait_printed(
    proc: &mut Proc,
    from: u64,
    timeout: Duration,
) -> Result<(SocketAddr, SocketAddr), String> {
    let start = Instant::now();
    loop {
        let all = proc.stderr();
        let log = all.get(from as usize..).unwrap_or("");
        let addr_after = |prefix: &str| {
            log.lines()
                .find_map(|l| l.split_once(prefix).map(|(_, a)| a.trim().to_owned()))
                .and_then(|a| a.parse::<SocketAddr>().ok())
        };
        let http = addr_after("ferry collector listening on http://");
        let kafka = addr_after("ferry kafka listener on ");
        // 400: a collector with `tls:` answers plain HTTP so (it is up).
        if let (Some(h), Some(k)) = (http, kafka)
            && matches!(http_get(h, "/healthz"), Ok((200 | 400, _)))
        {
            return Ok((h, k));
        }
        if let Some(status) = proc.exited() {
            return Err(format!("exited with {status}:\n{all}"));
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "no `ferry collector listening on` and `ferry kafka listener on` lines with a \
                 healthy /healthz within {timeout:?}:\n{all}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` with `stdin` and returns its output, killing it after `timeout`; panics with the
/// command and everything it printed if it timed out or exited other than 0.
fn run_ok(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> Output {
    let (desc, out) = run_within(cmd, stdin, timeout);
    if !out.status.success() {
        panic!(
            "\n{desc}\nexited with {:?}\n--- stdout (first 4000 bytes)\n{}\n--- stderr\n{}\n",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(4000)]),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs `cmd` to completion or `timeout` (then kills it and panics with what it printed).
fn run_within(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> (String, Output) {
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout")));
    let err = reader(Box::new(child.stderr.take().expect("stderr")));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let Some(status) = status else {
        panic!(
            "\n{desc}\ndid not finish within {timeout:?}: killed\n--- stdout (first 4000 bytes)\n{}\n--- stderr\n{}\n",
            String::from_utf8_lossy(&stdout[..stdout.len().min(4000)]),
            String::from_utf8_lossy(&stderr)
        );
    };
    (
        desc,
        Output {
            status,
            stdout,
            stderr,
        },
    )
}

fn kcat() -> Command {
    let ok = Command::new("kcat")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "kcat is not installed: scripts/test installs it (apt-get install kcat); the Kafka \
         listener's tests drive it as a real client"
    );
    Command::new("kcat")
}

fn python() -> PathBuf {
    let python = std::env::var_os("FERRY_KAFKA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py-kafka/bin/python")
        });
    let ok = Command::new(&python)
        .args(["-c", "import confluent_kafka, kafka"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} lacks confluent-kafka or kafka-python: run scripts/test (it makes the venv), or \
         python3 -m venv target/py-kafka && target/py-kafka/bin/pip install confluent-kafka \
         kafka-python",
        python.display()
    );
    python
}

/// The Python client scripts, one per library (tests/kafka_clients/*.py; commands in common.py).
#[derive(Clone, Copy, Debug)]
enum PyClient {
    Confluent,
    KafkaPython,
}

impl PyClient {
    fn script(self) -> &'static str {
        match self {
            PyClient::Confluent => concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/kafka_clients/confluent_client.py"
            ),
            PyClient::KafkaPython => concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/kafka_clients/kafka_python_client.py"
            ),
        }
    }

    fn cmd(self, args: &[&str]) -> Command {
        let mut c = Command::new(python());
        c.arg(self.script()).args(args);
        c
    }

    /// Produces `records` (acks=all) and returns once every one is acknowledged.
    fn produce(self, bootstrap: &str, topic: &str, records: &[Produced]) {
        self.produce_with(bootstrap, topic, records, "{}");
    }

    /// [`PyClient::produce`] with producer settings over the script's (a JSON object).
    fn produce_with(self, bootstrap: &str, topic: &str, records: &[Produced], config: &str) {
        let stdin: String = records
            .iter()
            .map(|r| {
                let mut line = serde_json::to_string(&serde_json::json!({
                    "value": r.value,
                    "key": r.key,
                    "headers": r.headers,
                    "timestamp_ms": r.timestamp_ms,
                }))
                .expect("json");
                line.push('\n');
                line
            })
            .collect();
        let out = run_ok(
            &mut self.cmd(&["produce", bootstrap, topic, config]),
            stdin.as_bytes(),
            Duration::from_secs(60),
        );
        let summary: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("produce summary");
        assert_eq!(
            summary["acked"].as_u64(),
            Some(records.len() as u64),
            "{self:?} ({config}): acknowledged {summary}"
        );
    }

    /// The confluent script's `admin` command: its JSON answer.
    fn admin(self, bootstrap: &str, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["admin", bootstrap];
        all.extend(args);
        let out = run_ok(&mut self.cmd(&all), b"", Duration::from_secs(30));
        serde_json::from_slice(&out.stdout).expect("admin json")
    }

    /// Joins `group`, reads until `expect` records came and `idle_s` more seconds, commits.
    fn consume(
        self,
        bootstrap: &str,
        topic: &str,
        group: &str,
        expect: usize,
        idle_s: u32,
    ) -> Vec<Consumed> {
        let out = run_ok(
            &mut self.cmd(&[
                "consume",
                bootstrap,
                topic,
                group,
                &expect.to_string(),
                &idle_s.to_string(),
                "45",
            ]),
            b"",
            Duration::from_secs(55),
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    /// `group`'s committed offsets for partitions `0..partitions`, by OffsetFetch (-1: none).
    fn committed(
        self,
        bootstrap: &str,
        topic: &str,
        group: &str,
        partitions: u32,
    ) -> BTreeMap<u32, i64> {
        let out = run_ok(
            &mut self.cmd(&[
                "committed",
                bootstrap,
                topic,
                group,
                &partitions.to_string(),
            ]),
            b"",
            Duration::from_secs(30),
        );
        let m: BTreeMap<String, i64> = serde_json::from_slice(&out.stdout).expect("offsets");
        m.into_iter()
            .map(|(p, o)| (p.parse().expect("partition"), o))
            .collect()
    }
}

/// A record for a Python producer.
#[derive(Debug, Clone, Default)]
struct Produced {
    value: String,
    key: Option<String>,
    headers: BTreeMap<String, String>,
    timestamp_ms: Option<i64>,
}

impl Produced {
    fn value(v: String) -> Self {
        Produced {
            value: v,
            ..Default::default()
        }
    }
}

/// A record as a Python consumer printed it.
#[derive(Debug, Clone, serde::Deserialize)]
struct Consumed {
    partition: i32,
    offset: i64,
    key: Option<String>,
    value: Option<String>,
    headers: Vec<(String, Option<String>)>,
    timestamp_ms: i64,
}

/// `ferry groups --json`: per partition of `topic`, (committed, lag) of `group`; None if the
/// group is not listed.
fn group_offsets(url: &str, group: &str, topic: &str) -> Option<BTreeMap<u32, (u64, u64)>> {
    let out = run_ok(
        ferry().args(["groups", "--collector", url, "--json"]),
        b"",
        Duration::from_secs(20),
    );
    let groups: serde_json::Value = serde_json::from_slice(&out.stdout).expect("groups json");
    let g = groups
        .as_array()?
        .iter()
        .find(|g| g["group"] == group)?
        .clone();
    Some(
        g["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["topic"] == topic)
            .map(|p| {
                (
                    p["partition"].as_u64().expect("partition") as u32,
                    (
                        p["committed"].as_u64().expect("committed"),
                        p["lag_records"].as_u64().expect("lag"),
                    ),
                )
            })
            .collect(),
    )
}

/// Lines of `ferry consume --collector URL TOPIC --from-beginning --max N` (raw).
fn http_consume_lines(url: &str, topic: &str, max: usize) -> Vec<String> {
    let out = run_ok(
        ferry().args([
            "consume",
            "--collector",
            url,
            topic,
            "--from-beginning",
            "--max",
            &max.to_string(),
            "--idle-timeout",
            "10s",
        ]),
        b"",
        Duration::from_secs(30),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort();
    v
}

/// The first few elements of `a` not in `b`, for failure messages.
fn first_missing<'a>(a: &'a BTreeSet<String>, b: &'a BTreeSet<String>) -> Vec<&'a String> {
    a.difference(b).take(5).collect()
}

// ---------------------------------------------------------------------------------------------
// kcat (librdkafka 2.0.2)

#[test]
fn kcat_lists_the_broker_and_topic_produces_and_consumes_every_line() {
    let dir = Dir::new("kl-kcat");
    let c = Collector::start(&dir, "c", None);
    let addr = c.bootstrap();
    let lines: Vec<String> = (0..1000).map(|i| format!("kcat {i:04} é")).collect();
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    run_ok(
        kcat().args(["-b", &addr, "-P", "-t", "kc", "-X", "acks=all"]),
        input.as_bytes(),
        Duration::from_secs(30),
    );

    // -L: one broker, id 0, at the listener's address; the auto-created topic with 4
    // partitions, each led by broker 0.
    let out = run_ok(
        kcat().args(["-b", &addr, "-L", "-J", "-m", "10"]),
        b"",
        Duration::from_secs(30),
    );
    let md: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("kcat -L -J: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(
        md["brokers"],
        serde_json::json!([{"id": 0, "name": addr}]),
        "brokers of {md}"
    );
    let topic = md["topics"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["topic"] == "kc"))
        .unwrap_or_else(|| panic!("topic kc not in {md}"));
    assert!(topic.get("error").is_none(), "{topic}");
    let parts = topic["partitions"].as_array().expect("partitions");
    let ids: BTreeSet<u64> = parts
        .iter()
        .map(|p| p["partition"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids, BTreeSet::from([0, 1, 2, 3]), "{topic}");
    for p in parts {
        assert!(p.get("error").is_none(), "{p}");
        assert_eq!(p["leader"], 0, "{p}");
        assert_eq!(p["replicas"], serde_json::json!([{"id": 0}]), "{p}");
        assert_eq!(p["isrs"], serde_json::json!([{"id": 0}]), "{p}");
    }

    // -C from the beginning to the end: exactly the lines, in order within each partition.
    let out = run_ok(
        kcat().args([
            "-b",
            &addr,
            "-C",
            "-t",
            "kc",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%p %o %s\n",
        ]),
        b"",
        Duration::from_secs(30),
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 values");
    let mut got: Vec<(u32, u64, String)> = Vec::new();
    for l in text.lines() {
        let mut it = l.splitn(3, ' ');
        let (p, o, s) = (it.next(), it.next(), it.next());
        let (Some(p), Some(o), Some(s)) = (p, o, s) else {
            panic!("kcat printed {l:?}");
        };
        got.push((
            p.parse().expect("partition"),
            o.parse().expect("offset"),
            s.to_owned(),
        ));
    }
    let values: Vec<String> = got.iter().map(|g| g.2.clone()).collect();
    assert_eq!(
        sorted(&values),
        sorted(&lines),
        "kcat -C got {} records, produced {}",
        values.len(),
        lines.len()
    );
    let mut last: HashMap<u32, (u64, String)> = HashMap::new();
    for (p, o, s) in &got {
        if let Some((lo, ls)) = last.get(p) {
            assert!(
                o > lo && s > ls,
                "partition {p}: {s:?} at {o} after {ls:?} at {lo}"
            );
        }
        last.insert(*p, (*o, s.clone()));
    }

    // The same records over HTTP, at the same partitions and offsets.
    let http: BTreeMap<String, (u64, u64)> = consume_json(&c.url(), "kc")
        .iter()
        .map(|r| {
            (
                r["line"].as_str().expect("line").to_owned(),
                (
                    r["partition"].as_u64().expect("partition"),
                    r["offset"].as_u64().expect("offset"),
                ),
            )
        })
        .collect();
    assert_eq!(http.len(), lines.len(), "every line over HTTP too");
    for (p, o, s) in &got {
        assert_eq!(
            http.get(s),
            Some(&(u64::from(*p), *o)),
            "{s:?}: Kafka says partition {p} offset {o}"
        );
    }

    // acks=1 and acks=0 (no answer at all: the records are there once the listener read them).
    for acks in ["1", "0"] {
        let topic = format!("kc-acks{acks}");
        let lines: Vec<String> = (0..200).map(|i| format!("acks={acks} {i:03}")).collect();
        let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
        run_ok(
            kcat().args([
                "-b",
                &addr,
                "-P",
                "-t",
                &topic,
                "-X",
                &format!("acks={acks}"),
            ]),
            input.as_bytes(),
            Duration::from_secs(30),
        );
        let mut got = Vec::new();
        wait_until(
            Duration::from_secs(10),
            &format!("200 records produced with acks={acks}"),
            || {
                got = http_lines(&c.url(), &topic);
                got.len() >= lines.len()
            },
        );
        assert_eq!(sorted(&got), lines, "acks={acks}");
    }
}

/// Every line of `topic` over HTTP (`ferry consume --collector --format json`).
fn http_lines(url: &str, topic: &str) -> Vec<String> {
    consume_json(url, topic)
        .iter()
        .map(|r| r["line"].as_str().expect("line").to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// librdkafka 2.12 through ferry's own commands: a group of three, one killed

/// A `ferry consume --kafka --group --format json` process: stdout collected by a thread,
/// stderr (JSON logs) in a file for its assignments.
struct Member {
    name: String,
    child: Option<Child>,
    stderr: PathBuf,
    /// (partition, offset, line) in the order printed.
    printed: Arc<Mutex<Vec<(u64, u64, String)>>>,
}

impl Member {
    fn start(dir: &Dir, name: &str, bootstrap: &str, topic: &str, group: &str) -> Self {
        let stderr = dir.join(format!("{name}.stderr"));
        let mut child = ferry()
            .args([
                "--log-format",
                "json",
                "consume",
                "--kafka",
                bootstrap,
                topic,
                "--group",
                group,
                "--from-beginning",
                "--idle-timeout",
                "120s",
                "--format",
                "json",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn ferry consume");
        let printed = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let sink = printed.clone();
        std::thread::spawn(move || {
            for l in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&l).expect("json record");
                sink.lock().expect("printed").push((
                    v["partition"].as_u64().expect("partition"),
                    v["offset"].as_u64().expect("offset"),
                    v["line"].as_str().expect("line").to_owned(),
                ));
            }
        });
        Member {
            name: name.to_owned(),
            child: Some(child),
            stderr,
            printed,
        }
    }

    fn printed(&self) -> Vec<(u64, u64, String)> {
        self.printed.lock().expect("printed").clone()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Every assignment this member logged, in order: the partitions of each.
    fn assignments(&self) -> Vec<BTreeSet<u64>> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "kafka partitions assigned")
            .map(|v| {
                v["partitions"]
                    .as_str()
                    .unwrap_or("")
                    .split(',')
                    .filter_map(|tp| tp.rsplit_once('/')?.1.parse().ok())
                    .collect()
            })
            .collect()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- log of member {}\n{}", self.name, self.log());
        }
    }
}

/// The last assignment of each member, if every one has had one.
fn settled(members: &[&Member]) -> Option<Vec<BTreeSet<u64>>> {
    members.iter().map(|m| m.assignments().pop()).collect()
}

fn describe(members: &[&Member]) -> String {
    members
        .iter()
        .map(|m| {
            format!(
                "{}: assignments {:?}, printed {}",
                m.name,
                m.assignments(),
                m.printed().len()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn rdkafka_idempotent_produce_and_a_group_of_three_that_loses_a_member_to_sigkill() {
    let dir = Dir::new("kl-group");
    let a = Collector::start(&dir, "a", Some("collector:\n  topics:\n    split: {}\n"));
    // A second collector with the Kafka backend, pointed at the first one's listener: its
    // producer is ferry's KafkaSink (librdkafka 2.12, idempotent, acks=all), and it keys each
    // JSON line by `user`, so 50 keys spread over the 4 partitions.
    let b_yaml = dir.write(
        "b.yaml",
        "collector:\n  backend: kafka\n  kafka: { brokers: unused }\n  topics: { split: { key_field: user } }\n",
    );
    let b_data = dir.join("b-data");
    let mut b = Proc::start(
        "b",
        &dir,
        &[
            "collector",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &b_data.display().to_string(),
            "--kafka",
            &a.bootstrap(),
            "--config",
            &b_yaml.display().to_string(),
        ],
    );
    let b_url = {
        let start = Instant::now();
        loop {
            let log = b.stderr();
            if let Some(addr) = log.lines().find_map(|l| {
                l.split_once("ferry collector listening on http://")
                    .and_then(|(_, a)| a.trim().parse::<SocketAddr>().ok())
            }) && matches!(http_get(addr, "/healthz"), Ok((200, _)))
            {
                break format!("http://{addr}");
            }
            assert!(b.exited().is_none(), "collector b exited:\n{log}");
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "collector b not ready:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    eprintln!("collector b (kafka backend into a): {b_url}");

    let n = 20_000usize;
    let record = |i: usize| format!("{{\"user\":\"u{}\",\"n\":{i}}}", i % 50);
    let half = |r: std::ops::Range<usize>| -> String { r.map(|i| record(i) + "\n").collect() };

    let m0 = Member::start(&dir, "m0", &a.bootstrap(), "split", "g3");
    let m1 = Member::start(&dir, "m1", &a.bootstrap(), "split", "g3");
    let m2 = Member::start(&dir, "m2", &a.bootstrap(), "split", "g3");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let members = [&m0, &m1, &m2];
        if let Some(s) = settled(&members)
            && s.iter().all(|p| !p.is_empty())
            && s.iter().map(BTreeSet::len).sum::<usize>() == 4
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group of 3 did not settle on the 4 partitions: {}",
            describe(&members)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The first half, read by the settled group.
    run_ok(
        ferry().args(["produce", "--collector", &b_url, "split"]),
        half(0..n / 2).as_bytes(),
        Duration::from_secs(30),
    );
    let total = |ms: &[&Member]| ms.iter().map(|m| m.printed().len()).sum::<usize>();
    wait_until(
        Duration::from_secs(30),
        "the group to print the first half",
        || total(&[&m0, &m1, &m2]) >= n / 2,
    );
    // Commits follow each print: give the last ones a moment, then kill the member holding
    // the most partitions.
    std::thread::sleep(Duration::from_millis(500));
    let mut members = [m0, m1, m2];
    let (victim_index, victim_parts) = {
        let last = settled(&members.iter().collect::<Vec<_>>()).expect("settled");
        let i = (0..3).max_by_key(|&i| last[i].len()).expect("a member");
        (i, last[i].clone())
    };
    let victim_printed = members[victim_index].printed();
    assert!(
        !victim_printed.is_empty(),
        "the member to kill printed nothing before: {}",
        describe(&members.iter().collect::<Vec<_>>())
    );
    let assigned_before: Vec<usize> = members.iter().map(|m| m.assignments().len()).collect();
    members[victim_index].kill9();
    eprintln!(
        "killed {} (partitions {victim_parts:?}, {} records printed)",
        members[victim_index].name,
        victim_printed.len()
    );
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim_index).collect();

    // Its partitions move to the survivors (after the session timeout, 6 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let moved = survivors
            .iter()
            .all(|&i| members[i].assignments().len() > assigned_before[i])
            && survivors
                .iter()
                .map(|&i| members[i].assignments().pop().unwrap_or_default().len())
                .sum::<usize>()
                == 4;
        if moved {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the survivors did not take over all 4 partitions: {}",
            describe(&members.iter().collect::<Vec<_>>())
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The second half, read by the two survivors.
    run_ok(
        ferry().args(["produce", "--collector", &b_url, "split"]),
        half(n / 2..n).as_bytes(),
        Duration::from_secs(30),
    );
    let want: BTreeSet<String> = (0..n).map(record).collect();
    let union = |ms: &[Member]| -> BTreeSet<String> {
        ms.iter()
            .flat_map(|m| m.printed().into_iter().map(|r| r.2))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while union(&members).len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Anything printed twice would show now.
    std::thread::sleep(Duration::from_secs(1));

    let all: Vec<(usize, (u64, u64, String))> = members
        .iter()
        .enumerate()
        .flat_map(|(i, m)| m.printed().into_iter().map(move |r| (i, r)))
        .collect();
    let got: BTreeSet<String> = all.iter().map(|(_, r)| r.2.clone()).collect();
    assert!(
        got.len() == n && got == want,
        "every record produced is printed by the group: distinct {} of {n}, missing (first 5) \
         {:?}, unexpected (first 5) {:?}; {}",
        got.len(),
        first_missing(&want, &got),
        first_missing(&got, &want),
        describe(&members.iter().collect::<Vec<_>>())
    );
    // A record is where it is: one (partition, offset) per line, wherever printed.
    let mut place: HashMap<&str, (u64, u64)> = HashMap::new();
    for (_, (p, o, l)) in &all {
        if let Some(prev) = place.insert(l, (*p, *o)) {
            assert_eq!(prev, (*p, *o), "{l} printed at two places");
        }
    }
    // At-least-once across the kill: a record printed twice is one the killed member printed
    // (and may not have committed) before it died.
    // (All it printed: lines still in the pipe when it died were read after the kill.)
    let victim_all = members[victim_index].printed();
    let victim_lines: BTreeSet<&str> = victim_all.iter().map(|r| r.2.as_str()).collect();
    let mut times: HashMap<&str, usize> = HashMap::new();
    for (_, r) in &all {
        *times.entry(r.2.as_str()).or_default() += 1;
    }
    let wrong_dups: Vec<&&str> = times
        .iter()
        .filter(|(l, c)| **c > 1 && !victim_lines.contains(**l))
        .map(|(l, _)| l)
        .take(5)
        .collect();
    assert!(
        wrong_dups.is_empty(),
        "records printed twice that the killed member never printed (first 5): {wrong_dups:?}"
    );
    let dups = times.values().filter(|c| **c > 1).count();
    eprintln!(
        "printed {} records, {} distinct, {dups} printed twice",
        all.len(),
        got.len()
    );
    // The partitions moved: the survivors printed second-half records of the killed
    // member's partitions.
    let second_half: BTreeSet<String> = (n / 2..n).map(record).collect();
    let taken_over = all
        .iter()
        .filter(|(i, (p, _, l))| {
            *i != victim_index && victim_parts.contains(p) && second_half.contains(l)
        })
        .count();
    assert!(
        taken_over > 0,
        "no survivor printed a second-half record of partitions {victim_parts:?}"
    );
    drop(b);
}

// ---------------------------------------------------------------------------------------------
// Python clients: confluent-kafka and kafka-python

/// Value `i` of a Python client's run: ASCII, UTF-8 and lengths that vary.
fn py_value(lib: &str, i: usize) -> String {
    format!("{lib} {i:06} {}{}", "é".repeat(i % 5), "x".repeat(i % 40))
}

/// 100,000 records produced (acks=all) and consumed in a group by one library, commits
/// checked by OffsetFetch and `ferry groups`; the collector SIGKILLed and restarted on the same
/// data dir and ports; the group's commits are still there: it resumes with only what came
/// after.
fn python_client_produces_consumes_and_its_commits_survive_a_collector_kill(client: PyClient) {
    let lib = match client {
        PyClient::Confluent => "confluent",
        PyClient::KafkaPython => "kafka-python",
    };
    let dir = Dir::new(&format!("kl-{lib}"));
    let mut c = Collector::start(&dir, "c", None);
    let topic = format!("py-{lib}");
    let group = format!("g-{lib}");
    let n = 100_000;
    let records: Vec<Produced> = (0..n)
        .map(|i| Produced {
            value: py_value(lib, i),
            // A third of the records keyed (same key, same partition), the rest spread.
            key: (i % 3 == 0).then(|| format!("k{}", i % 11)),
            // Every tenth with a header (a field in the store, a header again when fetched).
            headers: if i % 10 == 0 {
                BTreeMap::from([("h".to_owned(), format!("v{}", i % 7))])
            } else {
                BTreeMap::new()
            },
            ..Default::default()
        })
        .collect();
    let started = Instant::now();
    client.produce(&c.bootstrap(), &topic, &records);
    eprintln!("{lib}: produced {n} in {:?}", started.elapsed());

    let started = Instant::now();
    let got = client.consume(&c.bootstrap(), &topic, &group, n, 2);
    eprintln!("{lib}: consumed {} in {:?}", got.len(), started.elapsed());
    let values: Vec<String> = got
        .iter()
        .map(|r| r.value.clone().unwrap_or_default())
        .collect();
    let distinct: BTreeSet<String> = values.iter().cloned().collect();
    let want: BTreeSet<String> = records.iter().map(|r| r.value.clone()).collect();
    assert!(
        got.len() == n && distinct == want,
        "{lib}: consumed {} records, {} distinct, of {n}; missing (first 5) {:?}, unexpected \
         (first 5) {:?}",
        got.len(),
        distinct.len(),
        first_missing(&want, &distinct),
        first_missing(&distinct, &want)
    );
    // Keys come back as produced, and one key lives in one partition.
    let key_of: HashMap<&str, Option<&str>> = records
        .iter()
        .map(|r| (r.value.as_str(), r.key.as_deref()))
        .collect();
    let headers_of: HashMap<&str, &BTreeMap<String, String>> = records
        .iter()
        .map(|r| (r.value.as_str(), &r.headers))
        .collect();
    let mut key_partition: HashMap<String, i32> = HashMap::new();
    for r in &got {
        let v = r.value.as_deref().unwrap_or_default();
        assert_eq!(r.key.as_deref(), key_of[v], "{lib}: key of {v:?}");
        for (h, hv) in headers_of[v] {
            assert!(
                r.headers
                    .iter()
                    .any(|(k, x)| k == h && x.as_deref() == Some(hv.as_str())),
                "{lib}: header {h}={hv} of {v:?} came back as {:?}",
                r.headers
            );
        }
        if let Some(k) = &r.key
            && let Some(p) = key_partition.insert(k.clone(), r.partition)
        {
            assert_eq!(
                p, r.partition,
                "{lib}: key {k} in partitions {p} and {}",
                r.partition
            );
        }
    }
    // (partition, offset) unique and the partition's offsets ascending as read.
    let mut last: HashMap<i32, i64> = HashMap::new();
    for r in &got {
        if let Some(prev) = last.insert(r.partition, r.offset) {
            assert!(
                r.offset > prev,
                "{lib}: partition {} offset {} after {prev}",
                r.partition,
                r.offset
            );
        }
    }
    // Committed: the end of each partition, by OffsetFetch and by `ferry groups`.
    let ends: BTreeMap<u32, i64> = (0..4)
        .map(|p| (p, last.get(&(p as i32)).map_or(-1, |o| o + 1)))
        .collect();
    let fetched = client.committed(&c.bootstrap(), &topic, &group, 4);
    let by_ferry = group_offsets(&c.url(), &group, &topic)
        .unwrap_or_else(|| panic!("{lib}: group {group} not in `ferry groups`"));
    eprintln!("{lib}: ends {ends:?}, OffsetFetch {fetched:?}, ferry groups {by_ferry:?}");
    for (p, end) in &ends {
        if *end < 0 {
            continue;
        }
        assert_eq!(
            fetched.get(p),
            Some(end),
            "{lib}: OffsetFetch of partition {p}"
        );
        assert_eq!(
            by_ferry.get(p),
            Some(&(*end as u64, 0)),
            "{lib}: `ferry groups` (committed, lag) of partition {p}"
        );
    }

    c.kill9_and_restart(&dir);
    // The commits survived: OffsetFetch and `ferry groups` say the same as before.
    assert_eq!(
        client.committed(&c.bootstrap(), &topic, &group, 4),
        fetched,
        "{lib}: OffsetFetch after the collector was killed and restarted"
    );
    assert_eq!(
        group_offsets(&c.url(), &group, &topic).as_ref(),
        Some(&by_ferry),
        "{lib}: `ferry groups` after the restart"
    );
    // The group resumes where it committed: only the records produced since come.
    let after: Vec<Produced> = (0..10)
        .map(|i| Produced::value(format!("{lib} after restart {i}")))
        .collect();
    client.produce(&c.bootstrap(), &topic, &after);
    let got = client.consume(&c.bootstrap(), &topic, &group, after.len(), 3);
    let got: Vec<String> = got.into_iter().filter_map(|r| r.value).collect();
    assert_eq!(
        sorted(&got),
        sorted(&after.iter().map(|r| r.value.clone()).collect::<Vec<_>>()),
        "{lib}: the group resumed from its commits"
    );
    let lag: u64 = group_offsets(&c.url(), &group, &topic)
        .expect("group listed")
        .values()
        .map(|(_, lag)| lag)
        .sum();
    assert_eq!(lag, 0, "{lib}: the group's lag after it read everything");
}

#[test]
fn confluent_kafka_produces_consumes_and_its_commits_survive_a_collector_kill() {
    python_client_produces_consumes_and_its_commits_survive_a_collector_kill(PyClient::Confluent);
}

#[test]
fn kafka_python_produces_consumes_and_its_commits_survive_a_collector_kill() {
    python_client_produces_consumes_and_its_commits_survive_a_collector_kill(PyClient::KafkaPython);
}

// ---------------------------------------------------------------------------------------------
// One model of the data: HTTP and Kafka, both ways

#[test]
fn http_produce_is_kafka_consumed_and_kafka_produce_is_http_consumed_with_the_mapping() {
    let dir = Dir::new("kl-cross");
    let c = Collector::start(
        &dir,
        "c",
        Some("collector:\n  topics:\n    keyed: { key_field: user }\n"),
    );
    let client = PyClient::Confluent;

    // HTTP → Kafka: the lines are the values.
    let lines: Vec<String> = (0..2000).map(|i| format!("over http {i} ü")).collect();
    let before = ferry_core::now_ms();
    util::produce(
        &c.url(),
        "from-http",
        &lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    );
    let got = client.consume(&c.bootstrap(), "from-http", "x-http", lines.len(), 2);
    let values: Vec<String> = got.iter().filter_map(|r| r.value.clone()).collect();
    assert_eq!(
        sorted(&values),
        sorted(&lines),
        "Kafka consumer of HTTP-produced lines: {} of {}",
        values.len(),
        lines.len()
    );
    for r in &got {
        assert!(
            r.timestamp_ms >= before - 60_000 && r.timestamp_ms <= ferry_core::now_ms() + 60_000,
            "timestamp of {r:?} (produced at {before})"
        );
    }

    // Kafka → HTTP: value = line, key = field `kafka.key`, headers = fields, timestamp =
    // event time.
    let t0 = 1_700_000_000_000i64;
    let records: Vec<Produced> = (0..300)
        .map(|i| Produced {
            value: format!("over kafka {i}"),
            key: (i % 2 == 0).then(|| format!("k{}", i % 5)),
            headers: BTreeMap::from([
                ("app".to_owned(), "shop".to_owned()),
                ("n".to_owned(), i.to_string()),
            ]),
            timestamp_ms: Some(t0 + i as i64 * 1000),
        })
        .collect();
    client.produce(&c.bootstrap(), "from-kafka", &records);
    let raw = http_consume_lines(&c.url(), "from-kafka", records.len());
    assert_eq!(
        sorted(&raw),
        sorted(&records.iter().map(|r| r.value.clone()).collect::<Vec<_>>()),
        "`ferry consume --collector` of Kafka-produced records"
    );
    let json = consume_json(&c.url(), "from-kafka");
    assert_eq!(json.len(), records.len(), "records over HTTP (json)");
    let by_value: HashMap<&str, &Produced> =
        records.iter().map(|r| (r.value.as_str(), r)).collect();
    for r in &json {
        let line = r["line"].as_str().expect("line");
        let p = by_value
            .get(line)
            .unwrap_or_else(|| panic!("unexpected record {r}"));
        let f = &r["fields"];
        match &p.key {
            Some(k) => assert_eq!(f["kafka.key"], k.as_str(), "key → field kafka.key: {r}"),
            None => assert!(f.get("kafka.key").is_none(), "no key, no field: {r}"),
        }
        assert_eq!(f["app"], "shop", "header → field: {r}");
        assert_eq!(f["n"], p.headers["n"].as_str(), "header → field: {r}");
        assert_eq!(
            r["event_time_ms"].as_i64(),
            p.timestamp_ms,
            "timestamp → event time: {r}"
        );
    }

    // A topic with a key field: the key is that field, and one key stays in one partition.
    let keyed: Vec<Produced> = (0..100)
        .map(|i| Produced {
            value: format!("keyed {i}"),
            key: Some(format!("u{}", i % 3)),
            ..Default::default()
        })
        .collect();
    client.produce(&c.bootstrap(), "keyed", &keyed);
    let json = consume_json(&c.url(), "keyed");
    assert_eq!(json.len(), keyed.len(), "keyed records over HTTP");
    let mut partition_of: HashMap<String, u64> = HashMap::new();
    for r in &json {
        let i: usize = r["line"]
            .as_str()
            .and_then(|l| l.strip_prefix("keyed "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected {r}"));
        let key = format!("u{}", i % 3);
        assert_eq!(
            r["fields"]["user"],
            key.as_str(),
            "key → key_field `user`: {r}"
        );
        let p = r["partition"].as_u64().expect("partition");
        assert_eq!(
            *partition_of.entry(key.clone()).or_insert(p),
            p,
            "key {key} in two partitions"
        );
    }

    // ferry's own idempotent rdkafka producer (the agent's Kafka output) → HTTP.
    let agent_lines: Vec<String> = (0..1000).map(|i| format!("agent line {i}")).collect();
    run_ok(
        ferry().args([
            "agent",
            "--stdin",
            "--kafka",
            &c.bootstrap(),
            "--topic",
            "from-agent",
            "--data-dir",
            &dir.join("agent").display().to_string(),
        ]),
        agent_lines
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .as_bytes(),
        Duration::from_secs(40),
    );
    let got = http_consume_lines(&c.url(), "from-agent", agent_lines.len());
    assert_eq!(
        sorted(&got),
        sorted(&agent_lines),
        "`ferry agent --stdin --kafka` into the listener, read over HTTP"
    );
}

/// What a Kafka consumer reads as a record's timestamp (the event time, CreateTime) is what
/// ListOffsets searches by: `offsetsForTimes(T)` is the first record at or after T.
#[test]
fn list_offsets_by_timestamp_finds_the_first_record_at_or_after_it() {
    let dir = Dir::new("kl-times");
    let c = Collector::start(&dir, "c", None);
    let t0 = 1_700_000_000_000i64;
    let records: Vec<Produced> = (0..300)
        .map(|i| Produced {
            value: format!("at {i}"),
            timestamp_ms: Some(t0 + i as i64 * 1000),
            ..Default::default()
        })
        .collect();
    PyClient::Confluent.produce(&c.bootstrap(), "times", &records);
    // kcat -o s@T: rd_kafka_offsets_for_times, then a fetch from there in every partition.
    // Timestamps rise with the records in every partition, so the answer is exact.
    let out = run_ok(
        kcat().args([
            "-b",
            &c.bootstrap(),
            "-C",
            "-t",
            "times",
            "-o",
            &format!("s@{}", t0 + 150_000),
            "-e",
            "-q",
            "-f",
            "%T %s\n",
        ]),
        b"",
        Duration::from_secs(30),
    );
    let got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_once(' ').map_or(l, |(_, v)| v).to_owned())
        .collect();
    assert_eq!(
        sorted(&got),
        sorted(
            &records[150..]
                .iter()
                .map(|r| r.value.clone())
                .collect::<Vec<_>>()
        ),
        "kcat -o s@{} (ListOffsets by timestamp): {} records, want the 150 at or after it",
        t0 + 150_000,
        got.len()
    );
    // After the last record's time: nothing.
    let out = run_ok(
        kcat().args([
            "-b",
            &c.bootstrap(),
            "-C",
            "-t",
            "times",
            "-o",
            &format!("s@{}", t0 + 300_000),
            "-e",
            "-q",
        ]),
        b"",
        Duration::from_secs(30),
    );
    assert!(
        out.stdout.is_empty(),
        "kcat -o s@ after the last record: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn compressed_produce_of_every_codec_is_stored_and_read_back() {
    let dir = Dir::new("kl-codecs");
    let c = Collector::start(&dir, "c", None);
    // Compressible lines (a repeated body), so every batch is really compressed.
    let lines = |codec: &str| -> Vec<String> {
        (0..2000)
            .map(|i| format!("{codec} {i:04} {}", "the same words again ".repeat(4)))
            .collect()
    };
    let mut runs = vec![];
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        runs.push((PyClient::Confluent, codec));
    }
    // kafka-python compresses gzip with the standard library alone.
    runs.push((PyClient::KafkaPython, "gzip"));
    for (client, codec) in runs {
        let topic = format!("codec-{codec}-{client:?}").to_lowercase();
        let want = lines(codec);
        let config = match client {
            PyClient::Confluent => format!("{{\"compression.type\": \"{codec}\"}}"),
            PyClient::KafkaPython => format!("{{\"compression_type\": \"{codec}\"}}"),
        };
        client.produce_with(
            &c.bootstrap(),
            &topic,
            &want
                .iter()
                .cloned()
                .map(Produced::value)
                .collect::<Vec<_>>(),
            &config,
        );
        let got = http_lines(&c.url(), &topic);
        assert_eq!(
            sorted(&got),
            sorted(&want),
            "{client:?} with {codec}: {} records over HTTP of {}",
            got.len(),
            want.len()
        );
    }
    // And a Kafka consumer reads one of them back.
    let got =
        PyClient::KafkaPython.consume(&c.bootstrap(), "codec-zstd-confluent", "x-zstd", 2000, 1);
    let got: Vec<String> = got.into_iter().filter_map(|r| r.value).collect();
    assert_eq!(
        sorted(&got),
        sorted(&lines("zstd")),
        "zstd-produced records read by kafka-python"
    );
}

#[test]
fn admin_apis_create_and_delete_topics_and_list_and_describe_groups() {
    let dir = Dir::new("kl-admin");
    let c = Collector::start(&dir, "c", None);
    let client = PyClient::Confluent;
    let partitions_of = |topic: &str| -> Option<usize> {
        let out = run_ok(
            kcat().args(["-b", &c.bootstrap(), "-L", "-J", "-m", "10"]),
            b"",
            Duration::from_secs(30),
        );
        let md: serde_json::Value = serde_json::from_slice(&out.stdout).expect("kcat -L -J");
        md["topics"]
            .as_array()?
            .iter()
            .find(|t| t["topic"] == topic)
            .and_then(|t| t["partitions"].as_array().map(Vec::len))
    };
    let ferry_topics = || -> Vec<(String, usize)> {
        let out = run_ok(
            ferry().args(["topics", "--collector", &c.url(), "--json"]),
            b"",
            Duration::from_secs(20),
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("topics json");
        v.as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["name"].as_str().expect("name").to_owned(),
                    t["partitions"].as_array().map_or(0, Vec::len),
                )
            })
            .collect()
    };

    // CreateTopics with 3 partitions (not the default 4): Kafka and HTTP see the same topic.
    client.admin(&c.bootstrap(), &["create", "made", "3"]);
    assert_eq!(partitions_of("made"), Some(3), "kcat -L after CreateTopics");
    assert!(
        ferry_topics().contains(&("made".to_owned(), 3)),
        "`ferry topics` after CreateTopics: {:?}",
        ferry_topics()
    );

    // A group that read and committed, then left: listed, and described as empty.
    let records: Vec<Produced> = (0..10)
        .map(|i| Produced::value(format!("made {i}")))
        .collect();
    client.produce(&c.bootstrap(), "made", &records);
    let got = client.consume(&c.bootstrap(), "made", "g-admin", records.len(), 1);
    assert_eq!(got.len(), records.len(), "records of the created topic");
    let g = client.admin(&c.bootstrap(), &["group", "g-admin"]);
    assert!(
        g["listed"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x == "g-admin")),
        "ListGroups: {g}"
    );
    assert_eq!(g["list_errors"], serde_json::json!([]), "ListGroups: {g}");
    assert_eq!(g["group"], "g-admin", "DescribeGroups: {g}");
    assert_eq!(
        g["members"], 0,
        "DescribeGroups of a group whose member left: {g}"
    );
    assert!(
        g["state"].as_str().is_some_and(|s| s.contains("EMPTY")),
        "DescribeGroups state of a group whose member left: {g}"
    );

    // DeleteTopics: gone for Kafka and for HTTP.
    client.admin(&c.bootstrap(), &["delete", "made"]);
    assert_eq!(partitions_of("made"), None, "kcat -L after DeleteTopics");
    assert!(
        !ferry_topics().iter().any(|t| t.0 == "made"),
        "`ferry topics` after DeleteTopics: {:?}",
        ferry_topics()
    );
}

// ---------------------------------------------------------------------------------------------
// Bad input on a raw socket

/// A request frame: size, header v1 (api key, version, correlation id, client id) or v2 (the
/// same and an empty tagged-field section), body.
fn request(
    api_key: i16,
    version: i16,
    correlation_id: i32,
    flexible: bool,
    body: &[u8],
) -> Vec<u8> {
    let client = b"ferry-raw-test";
    let mut msg = Vec::new();
    msg.extend(api_key.to_be_bytes());
    msg.extend(version.to_be_bytes());
    msg.extend(correlation_id.to_be_bytes());
    msg.extend((client.len() as i16).to_be_bytes());
    msg.extend(client);
    if flexible {
        msg.push(0);
    }
    msg.extend(body);
    let mut frame = (msg.len() as i32).to_be_bytes().to_vec();
    frame.extend(msg);
    frame
}

#[derive(Debug)]
enum Reply {
    /// A response frame (without its size).
    Frame(Vec<u8>),
    /// The listener closed the connection (EOF or reset).
    Closed,
    /// Nothing within the timeout.
    Silent,
}

fn read_reply(s: &mut TcpStream, timeout: Duration) -> Reply {
    s.set_read_timeout(Some(timeout)).expect("timeout");
    let mut size = [0u8; 4];
    if let Err(e) = s.read_exact(&mut size) {
        return match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Reply::Silent,
            _ => Reply::Closed,
        };
    }
    let size = i32::from_be_bytes(size);
    assert!(
        (4..64 << 20).contains(&size),
        "response frame of {size} bytes"
    );
    let mut body = vec![0u8; size as usize];
    match s.read_exact(&mut body) {
        Ok(()) => Reply::Frame(body),
        Err(e) => panic!("response frame of {size} bytes cut short: {e}"),
    }
}

/// Whether the listener ends the connection within `timeout` (reading and dropping whatever
/// it sends first).
fn ends_within(s: &mut TcpStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Reads big-endian integers off a response body.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        assert!(self.0.len() >= N, "response body too short");
        let (a, rest) = self.0.split_at(N);
        self.0 = rest;
        a.try_into().expect("N bytes")
    }
    fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take())
    }
    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take())
    }
}

/// An ApiVersions v0 response (header v0, body v0): correlation id, error code, and
/// (api key, min version, max version) of each API; the whole frame must be consumed.
fn parse_api_versions_v0(frame: &[u8]) -> (i32, i16, Vec<(i16, i16, i16)>) {
    let mut c = Cursor(frame);
    let corr = c.i32();
    let error = c.i16();
    let n = c.i32();
    assert!((0..1000).contains(&n), "{n} APIs");
    let apis = (0..n).map(|_| (c.i16(), c.i16(), c.i16())).collect();
    assert!(
        c.0.is_empty(),
        "{} bytes after the ApiVersions v0 body",
        c.0.len()
    );
    (corr, error, apis)
}

/// A fresh connection gets an ApiVersions v0 answer: the listener is up and serving.
fn api_versions_v0(addr: SocketAddr, what: &str) -> Vec<(i16, i16, i16)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to the listener after {what}: {e}"));
    s.write_all(&request(18, 0, 4242, false, &[]))
        .expect("send ApiVersions");
    match read_reply(&mut s, Duration::from_secs(5)) {
        Reply::Frame(f) => {
            let (corr, error, apis) = parse_api_versions_v0(&f);
            assert_eq!(corr, 4242, "correlation id after {what}");
            assert_eq!(error, 0, "ApiVersions v0 error after {what}");
            apis
        }
        other => panic!("no ApiVersions v0 answer on a fresh connection after {what}: {other:?}"),
    }
}

/// xorshift64*: the bad bytes of a run, reproducible from the printed seed.
struct Rng(u64);

/// `FERRY_TEST_SEED`, else one from the clock (printed by the test that uses it).
fn seed() -> u64 {
    std::env::var("FERRY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| ferry_core::now_ms() as u64 | 1)
}

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn bad_frames_get_protocol_errors_or_a_closed_socket_and_harm_nothing() {
    let seed = seed();
    eprintln!("seed {seed} (FERRY_TEST_SEED={seed} repeats this run)");
    let mut rng = Rng(seed);
    let dir = Dir::new("kl-bad");
    let mut c = Collector::start(&dir, "c", None);
    let addr = c.kafka;
    let lines: Vec<String> = (0..500).map(|i| format!("kept {i}")).collect();
    util::produce(
        &c.url(),
        "kept",
        &lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    );

    // What the listener says it supports, on a fresh connection: at least the APIs and
    // versions of issue 17.
    let apis = api_versions_v0(addr, "start");
    let max_of = |key: i16| apis.iter().find(|a| a.0 == key).map(|a| a.2);
    for (key, name, min_max) in [
        (0, "Produce", 3),
        (1, "Fetch", 4),
        (2, "ListOffsets", 0),
        (3, "Metadata", 0),
        (8, "OffsetCommit", 0),
        (9, "OffsetFetch", 0),
        (10, "FindCoordinator", 0),
        (11, "JoinGroup", 0),
        (12, "Heartbeat", 0),
        (13, "LeaveGroup", 0),
        (14, "SyncGroup", 0),
        (15, "DescribeGroups", 0),
        (16, "ListGroups", 0),
        (18, "ApiVersions", 3),
        (19, "CreateTopics", 0),
        (20, "DeleteTopics", 0),
        (22, "InitProducerId", 0),
    ] {
        let max =
            max_of(key).unwrap_or_else(|| panic!("{name} ({key}) not in ApiVersions {apis:?}"));
        assert!(
            max >= min_max,
            "{name} ({key}) up to v{max}, want at least v{min_max}"
        );
    }

    let connect = || {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s
    };

    // Garbage, unframed: after our half-close the listener ends the connection.
    for round in 0..10 {
        let len = 1 + (rng.next() % 300) as usize;
        let bytes = rng.bytes(len);
        let mut s = connect();
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(Shutdown::Write);
        assert!(
            ends_within(&mut s, Duration::from_secs(10)),
            "garbage round {round} ({:02x?}): connection not ended 10 s after our half-close",
            &bytes[..bytes.len().min(16)]
        );
        c.assert_alive(&format!("garbage round {round}"));
        api_versions_v0(addr, &format!("garbage round {round}"));
    }
    // Garbage inside a well-formed frame (random header and body).
    for round in 0..10 {
        let len = 8 + (rng.next() % 200) as usize;
        let body = rng.bytes(len);
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend(&body);
        let mut s = connect();
        let _ = s.write_all(&frame);
        let _ = s.shutdown(Shutdown::Write);
        assert!(
            ends_within(&mut s, Duration::from_secs(10)),
            "framed garbage round {round} ({:02x?}): connection not ended 10 s after our half-close",
            &frame[..frame.len().min(16)]
        );
        c.assert_alive(&format!("framed garbage round {round}"));
        api_versions_v0(addr, &format!("framed garbage round {round}"));
    }

    // A size over any limit, and a negative one: closed at once, never buffered.
    for size in [0x7fff_ffffu32, 0x8000_0000, 0xffff_ffff] {
        let mut s = connect();
        let mut bytes = size.to_be_bytes().to_vec();
        bytes.extend(request(18, 0, 1, false, &[]));
        let _ = s.write_all(&bytes);
        assert!(
            ends_within(&mut s, Duration::from_secs(5)),
            "a frame of size {size:#x}: connection still open 5 s later"
        );
        c.assert_alive(&format!("a frame of size {size:#x}"));
        api_versions_v0(addr, &format!("a frame of size {size:#x}"));
    }

    // A truncated frame, then hang-up.
    {
        let whole = request(3, 1, 7, false, &[0, 0, 0, 1, 0, 4, b'k', b'e', b'p', b't']);
        let mut s = connect();
        let _ = s.write_all(&whole[..whole.len() - 5]);
        let _ = s.shutdown(Shutdown::Write);
        assert!(
            ends_within(&mut s, Duration::from_secs(5)),
            "a truncated Metadata frame then hang-up: connection not ended"
        );
        c.assert_alive("a truncated frame");
        api_versions_v0(addr, "a truncated frame");
    }

    // An unknown API key: Kafka itself closes the connection; an error response with our
    // correlation id is fine too. Silence is not (the client would wait forever).
    for (key, version) in [(9999i16, 0i16), (i16::MAX, 3), (-1, 0)] {
        let mut s = connect();
        let _ = s.write_all(&request(key, version, 99, false, &[]));
        match read_reply(&mut s, Duration::from_secs(5)) {
            Reply::Frame(f) => assert_eq!(
                Cursor(&f).i32(),
                99,
                "answer to API key {key} v{version}: correlation id"
            ),
            Reply::Closed => {}
            Reply::Silent => panic!("API key {key} v{version}: no answer and not closed in 5 s"),
        }
        c.assert_alive(&format!("API key {key}"));
        api_versions_v0(addr, &format!("API key {key}"));
    }

    // An ApiVersions version from the future: UNSUPPORTED_VERSION (35) in a v0 body that lists
    // what is supported, and the connection stays usable (clients retry on it with a version
    // from that list).
    {
        let mut s = connect();
        s.write_all(&request(18, 999, 31337, true, &[]))
            .expect("send ApiVersions v999");
        let Reply::Frame(f) = read_reply(&mut s, Duration::from_secs(5)) else {
            panic!(
                "ApiVersions v999: no response (Kafka answers UNSUPPORTED_VERSION with a v0 body)"
            );
        };
        let (corr, error, listed) = parse_api_versions_v0(&f);
        assert_eq!(corr, 31337, "ApiVersions v999: correlation id");
        assert_eq!(
            error, 35,
            "ApiVersions v999: error code (35 = UNSUPPORTED_VERSION)"
        );
        assert!(
            listed.iter().any(|a| a.0 == 18 && a.1 == 0 && a.2 >= 3),
            "ApiVersions v999: the v0 body lists ApiVersions v0..v3+: {listed:?}"
        );
        s.write_all(&request(18, 0, 31338, false, &[]))
            .expect("send ApiVersions v0 on the same connection");
        match read_reply(&mut s, Duration::from_secs(5)) {
            Reply::Frame(f) => {
                let (corr, error, _) = parse_api_versions_v0(&f);
                assert_eq!((corr, error), (31338, 0), "ApiVersions v0 after v999");
            }
            other => {
                panic!("ApiVersions v0 after an unsupported version, same connection: {other:?}")
            }
        }
        c.assert_alive("ApiVersions v999");
    }
    // Metadata at a version from the future: answered or closed, never silence.
    {
        let mut s = connect();
        let _ = s.write_all(&request(3, 999, 5, true, &[0, 0, 0, 0]));
        assert!(
            !matches!(read_reply(&mut s, Duration::from_secs(5)), Reply::Silent),
            "Metadata v999: no answer and not closed in 5 s"
        );
        c.assert_alive("Metadata v999");
        api_versions_v0(addr, "Metadata v999");
    }

    // Nothing stored was harmed, and a real client still works: every record, over HTTP and
    // over Kafka.
    let http: Vec<String> = consume_json(&c.url(), "kept")
        .iter()
        .map(|r| r["line"].as_str().expect("line").to_owned())
        .collect();
    assert_eq!(
        sorted(&http),
        sorted(&lines),
        "records over HTTP after the bad input"
    );
    let out = run_ok(
        kcat().args([
            "-b",
            &c.bootstrap(),
            "-C",
            "-t",
            "kept",
            "-o",
            "beginning",
            "-e",
            "-q",
        ]),
        b"",
        Duration::from_secs(30),
    );
    let kafka: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        sorted(&kafka),
        sorted(&lines),
        "records over Kafka after the bad input"
    );
}

// ---------------------------------------------------------------------------------------------
// Security: SASL against the collector's principals, permissions, TLS on its certificates

const PRINCIPALS: &str = "  auth:
    principals:
      - name: app
        token: app-secret
        produce: [\"app-*\"]
        consume: [\"app-*\"]
        groups: [\"g-*\"]
        auto_create: [\"app-*\"]
      - name: reader
        token: reader-secret
        consume: [\"app-*\"]
        groups: [\"g-*\"]
";

/// kcat with SASL as `user` (its `extra` settings first, e.g. TLS).
fn kcat_as(c: &Collector, mechanism: &str, user: &str, password: &str, extra: &[&str]) -> Command {
    let mut k = kcat();
    k.args(["-b", &c.bootstrap()]).args(extra);
    if !extra.iter().any(|a| a.contains("security.protocol")) {
        k.args(["-X", "security.protocol=SASL_PLAINTEXT"]);
    }
    k.args([
        "-X",
        &format!("sasl.mechanisms={mechanism}"),
        "-X",
        &format!("sasl.username={user}"),
        "-X",
        &format!("sasl.password={password}"),
    ]);
    k
}

/// confluent-kafka (librdkafka 2.x) producing `n` records as `user` with `mechanism`; returns
/// the Python script's output (`delivered N` or the first error).
fn python_sasl_produce(
    c: &Collector,
    protocol: &str,
    mechanism: &str,
    user: &str,
    password: &str,
    ca: Option<&Path>,
    topic: &str,
    n: usize,
) -> String {
    let script = format!(
        "import sys\nfrom confluent_kafka import Producer\nconf = {{'bootstrap.servers': '{b}', 'security.protocol': '{protocol}', 'sasl.mechanisms': '{mechanism}', 'sasl.username': '{user}', 'sasl.password': '{password}', 'message.timeout.ms': {timeout_ms}{ca}}}\np = Producer(conf)\nerrs = []\nok = [0]\ndef done(e, m):\n    if e: errs.append(str(e))\n    else: ok[0] += 1\nfor i in range({n}):\n    p.produce('{topic}', ('py-%d' % i).encode(), on_delivery=done)\n    p.poll(0)\nleft = p.flush(20)\nprint('delivered', ok[0], 'left', left, 'errors', errs[:1])\n",
        b = c.bootstrap(),
        // A refused client's records fail after this (librdkafka retries until then).
        timeout_ms = if password == "wrong" { 3000 } else { 20000 },
        ca = ca
            .map(|p| format!(", 'ssl.ca.location': '{}'", p.display()))
            .unwrap_or_default(),
    );
    python_script(&script, Duration::from_secs(60))
}

/// Runs a Python client script; its stdout and stderr.
fn python_script(script: &str, within: Duration) -> String {
    let out = run_within(Command::new(python()).args(["-c", script]), b"", within).1;
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn sasl_plain_and_scram_authenticate_principals_and_their_permissions_hold() {
    let dir = Dir::new("kafka-listener-sasl");
    let c = Collector::start(&dir, "sasl", Some(&format!("collector:\n{PRINCIPALS}")));
    let lines: String = (0..100).map(|i| format!("sasl-{i}\n")).collect();
    // PLAIN (kcat, librdkafka 2.0.2): the right token produces.
    run_ok(
        kcat_as(&c, "PLAIN", "app", "app-secret", &[]).args(["-P", "-t", "app-plain"]),
        lines.as_bytes(),
        Duration::from_secs(30),
    );
    // SCRAM-SHA-256 and -512 (confluent-kafka's librdkafka; Debian's kcat 2.0.2 has a SCRAM
    // bug of its own: it doubles the client nonce, which any broker refuses).
    for m in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let out = python_sasl_produce(
            &c,
            "SASL_PLAINTEXT",
            m,
            "app",
            "app-secret",
            None,
            "app-scram",
            50,
        );
        assert!(out.contains("delivered 50 left 0"), "{m}: {out}");
        let out = python_sasl_produce(
            &c,
            "SASL_PLAINTEXT",
            m,
            "app",
            "wrong",
            None,
            "app-scram",
            1,
        );
        assert!(
            !out.contains("delivered 1 "),
            "{m} with a wrong password delivered: {out}"
        );
        assert!(out.to_lowercase().contains("authentication"), "{m}: {out}");
    }
    // A wrong PLAIN token and no SASL at all are refused, and nothing they sent is stored.
    let (_, out) = run_within(
        kcat_as(&c, "PLAIN", "app", "not-the-token", &[]).args(["-P", "-t", "app-plain"]),
        b"intruder\n",
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Authentication"),
        "{err}"
    );
    let (_, out) = run_within(
        kcat().args(["-b", &c.bootstrap(), "-P", "-t", "app-plain", "-m", "5"]),
        b"anonymous\n",
        Duration::from_secs(30),
    );
    assert!(!out.status.success(), "a client without SASL produced");
    // `reader` may consume app-* but not produce, nor read another topic.
    let (_, out) = run_within(
        kcat_as(&c, "PLAIN", "reader", "reader-secret", &[]).args(["-P", "-t", "app-plain"]),
        b"from reader\n",
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Topic authorization failed"),
        "reader produced: {err}"
    );
    let out = run_ok(
        kcat_as(&c, "PLAIN", "reader", "reader-secret", &[]).args([
            "-C",
            "-t",
            "app-plain",
            "-o",
            "beginning",
            "-e",
            "-q",
        ]),
        b"",
        Duration::from_secs(30),
    );
    let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    got.sort();
    let mut want: Vec<String> = lines.lines().map(str::to_owned).collect();
    want.sort();
    assert_eq!(got, want, "reader reads exactly what app produced");
    let (_, out) = run_within(
        kcat_as(&c, "PLAIN", "reader", "reader-secret", &[]).args([
            "-C",
            "-t",
            "secret-topic",
            "-o",
            "beginning",
            "-e",
        ]),
        b"",
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Topic authorization failed"), "{err}");
    // Over HTTP with app's token, the same records: one model of the data.
    assert_eq!(http_lines_as(&c, "app-plain", "app-secret").len(), 100);
}

/// kafka-python told the broker is Kafka 0.11 (`api_version=(0, 11, 0)`) does SASL as clients of
/// Kafka before 1.0 do: SaslHandshake v0, then raw tokens without a request header (no
/// SaslAuthenticate). It produces, then consumes in a group; the output of the script.
fn kafka_python_0_11_sasl(c: &Collector, mechanism: &str, password: &str, topic: &str) -> String {
    let script = format!(
        "import sys\nfrom kafka import KafkaProducer, KafkaConsumer\nkw = dict(bootstrap_servers='{b}', api_version=(0, 11, 0), security_protocol='SASL_PLAINTEXT', sasl_mechanism='{mechanism}', sasl_plain_username='app', sasl_plain_password='{password}')\ntry:\n    p = KafkaProducer(max_block_ms=5000, **kw)\n    fs = [p.send('{topic}', b'v0-%d' % i) for i in range(100)]\n    p.flush(20)\n    print('sent', sum(1 for f in fs if f.succeeded()))\nexcept Exception as e:\n    print('refused', type(e).__name__)\n    sys.exit(0)\nc = KafkaConsumer('{topic}', group_id='g-{topic}', auto_offset_reset='earliest', consumer_timeout_ms=5000, **kw)\nprint('consumed', len([m.value for m in c]))\nc.close()\n",
        b = c.bootstrap(),
    );
    python_script(&script, Duration::from_secs(90))
}

#[test]
fn sasl_handshake_v0_raw_tokens_of_a_pre_1_0_client_authenticate() {
    let dir = Dir::new("kafka-listener-sasl-v0");
    let c = Collector::start(&dir, "sasl-v0", Some(&format!("collector:\n{PRINCIPALS}")));
    for (m, topic) in [("PLAIN", "app-v0-plain"), ("SCRAM-SHA-256", "app-v0-scram")] {
        let out = kafka_python_0_11_sasl(&c, m, "app-secret", topic);
        assert!(
            out.contains("sent 100") && out.contains("consumed 100"),
            "{m}: {out}"
        );
        assert_eq!(http_lines_as(&c, topic, "app-secret").len(), 100, "{m}");
        // A wrong password: the connection is closed, nothing is stored.
        let out = kafka_python_0_11_sasl(&c, m, "wrong", topic);
        assert!(out.contains("refused"), "{m} with a wrong password: {out}");
        assert_eq!(http_lines_as(&c, topic, "app-secret").len(), 100, "{m}");
    }
}

fn http_lines_as(c: &Collector, topic: &str, token: &str) -> Vec<String> {
    let out = run_ok(
        ferry().args([
            "consume",
            "--collector",
            &c.url(),
            topic,
            "--from-beginning",
            "--idle-timeout",
            "2s",
            "--token",
            token,
        ]),
        b"",
        Duration::from_secs(60),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn sasl_ssl_on_the_collectors_certificate_and_a_client_that_does_not_trust_it() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let dir = Dir::new("kafka-listener-tls");
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kafka listener test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &ca, &ca_key).expect("server cert");
    let ca_path = dir.write("ca.pem", ca.pem());
    let other_ca = {
        let k = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        dir.write("other-ca.pem", p.self_signed(&k).expect("CA").pem())
    };
    let cert_path = dir.write("server.pem", cert.pem());
    let key_path = dir.write("server.key", key.serialize_pem());
    let yaml = format!(
        "collector:\n  tls:\n    cert: {}\n    key: {}\n{PRINCIPALS}",
        cert_path.display(),
        key_path.display()
    );
    let c = Collector::start(&dir, "tls", Some(&yaml));
    let tls = ["-X", "security.protocol=SASL_SSL"];
    let ca_arg = format!("ssl.ca.location={}", ca_path.display());
    let lines: String = (0..200).map(|i| format!("tls-{i}\n")).collect();
    run_ok(
        kcat_as(
            &c,
            "PLAIN",
            "app",
            "app-secret",
            &[tls[0], tls[1], "-X", &ca_arg],
        )
        .args(["-P", "-t", "app-tls"]),
        lines.as_bytes(),
        Duration::from_secs(30),
    );
    let out = python_sasl_produce(
        &c,
        "SASL_SSL",
        "SCRAM-SHA-256",
        "app",
        "app-secret",
        Some(&ca_path),
        "app-tls",
        100,
    );
    assert!(out.contains("delivered 100 left 0"), "{out}");
    let out = run_ok(
        kcat_as(
            &c,
            "PLAIN",
            "reader",
            "reader-secret",
            &[tls[0], tls[1], "-X", &ca_arg],
        )
        .args(["-C", "-t", "app-tls", "-o", "beginning", "-e", "-q"]),
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 300);
    // A client trusting another CA, and a plaintext client, get nothing through.
    let other = format!("ssl.ca.location={}", other_ca.display());
    let (_, out) = run_within(
        kcat_as(
            &c,
            "PLAIN",
            "app",
            "app-secret",
            &[tls[0], tls[1], "-X", &other],
        )
        .args(["-P", "-t", "app-tls"]),
        b"untrusted\n",
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("SSL"), "{err}");
    let (_, out) = run_within(
        kcat_as(&c, "PLAIN", "app", "app-secret", &[]).args(["-P", "-t", "app-tls"]),
        b"plaintext\n",
        Duration::from_secs(30),
    );
    assert!(
        !out.status.success(),
        "a plaintext client produced to the TLS listener"
    );
    let out = run_ok(
        ferry().args([
            "consume",
            "--collector",
            &format!("https://{}", c.http),
            "app-tls",
            "--from-beginning",
            "--idle-timeout",
            "2s",
            "--token",
            "app-secret",
            "--ca",
            &ca_path.display().to_string(),
        ]),
        b"",
        Duration::from_secs(60),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        300,
        "nothing but the 300 trusted records"
    );
}

// ---------------------------------------------------------------------------------------------
// Exactly once across a collector crash, and routing rules on Kafka produce

/// An idempotent librdkafka producer (confluent-kafka, acks=all) writes 60,000 keyed records
/// while the collector is SIGKILLed once at a random moment and restarted on the same data dir
/// and ports. librdkafka resends what was not acknowledged with the same producer id and
/// sequence numbers; the store's origin dedup (recovered from the data) drops the batches that
/// had landed. Every record is stored exactly once.
#[test]
fn an_idempotent_producer_loses_and_duplicates_nothing_across_a_collector_sigkill() {
    let seed = seed();
    eprintln!("seed {seed} (FERRY_TEST_SEED={seed} repeats this run)");
    let mut rng = Rng(seed);
    let dir = Dir::new("kafka-listener-crash");
    let mut c = Collector::start(&dir, "crash", None);
    let n = 60_000;
    let script = format!(
        "import sys, time\nfrom confluent_kafka import Producer\np = Producer({{'bootstrap.servers': '{b}', 'enable.idempotence': True, 'acks': 'all', 'linger.ms': 5, 'message.timeout.ms': 120000, 'reconnect.backoff.max.ms': 500}})\nfails = []\nok = [0]\ndef done(e, m):\n    if e: fails.append(str(e))\n    else: ok[0] += 1\nfor i in range({n}):\n    while True:\n        try:\n            p.produce('crash', ('rec-%06d' % i).encode(), key=('k%d' % (i % 97)).encode(), on_delivery=done)\n            break\n        except BufferError:\n            p.poll(0.05)\n    if i % 1000 == 0:\n        p.poll(0)\n        time.sleep(0.02)\n    if i % 5000 == 0:\n        print('sent', i, 'acked', ok[0], flush=True)\nleft = p.flush(120)\nprint('acked', ok[0], 'left', left, 'failed', len(fails), fails[:1], flush=True)\n",
        b = c.bootstrap()
    );
    let out_path = dir.join("producer.out");
    let mut producer = Command::new(python())
        .args(["-c", &script])
        .stdout(std::fs::File::create(&out_path).expect("out"))
        .stderr(std::fs::File::create(dir.join("producer.err")).expect("err"))
        .spawn()
        .expect("spawn producer");
    // Kill when a random share (10-70%) of the records was sent.
    let kill_at = 6_000 + (rng.next() % 36_000) as usize;
    wait_until(Duration::from_secs(60), "the producer to get going", || {
        std::fs::read_to_string(&out_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.strip_prefix("sent ")?
                    .split(' ')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .any(|s| s >= kill_at)
    });
    eprintln!("SIGKILL at about {kill_at} sent");
    c.kill9_and_restart(&dir);
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = producer.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = producer.kill();
            panic!(
                "seed {seed}: the producer did not finish:\n{}\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(dir.join("producer.err")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let printed = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(status.success(), "seed {seed}: producer failed: {printed}");
    assert!(
        printed.contains(&format!("acked {n} left 0 failed 0")),
        "seed {seed}: not every record was acknowledged: {printed}\n{}",
        std::fs::read_to_string(dir.join("producer.err")).unwrap_or_default()
    );
    let lines = http_lines(&c.url(), "crash");
    let distinct: BTreeSet<&String> = lines.iter().collect();
    let missing: Vec<String> = (0..n)
        .map(|i| format!("rec-{i:06}"))
        .filter(|l| !distinct.contains(l))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "seed {seed}: lost records, e.g. {missing:?}"
    );
    assert_eq!(
        lines.len(),
        n,
        "seed {seed}: {} duplicates stored",
        lines.len() - distinct.len()
    );
}

#[test]
fn routing_rules_apply_to_kafka_produce_as_to_http_ingest() {
    let dir = Dir::new("kafka-listener-routes");
    let yaml = "collector:\n  routes:\n    - name: errors-to-alerts\n      match: { topic: app, regex: ERROR }\n      copy: [alerts]\n    - name: drop-debug\n      match: { topic: app, regex: DEBUG }\n      drop: true\n";
    let c = Collector::start(&dir, "routes", Some(yaml));
    let lines: String = (0..300)
        .map(|i| format!("{} line {i}\n", ["INFO", "ERROR", "DEBUG"][i % 3]))
        .collect();
    run_ok(
        kcat().args(["-b", &c.bootstrap(), "-P", "-t", "app"]),
        lines.as_bytes(),
        Duration::from_secs(30),
    );
    let app = http_lines(&c.url(), "app");
    let alerts = http_lines(&c.url(), "alerts");
    assert_eq!(
        app.len(),
        200,
        "INFO and ERROR stay in app, DEBUG is dropped"
    );
    assert!(app.iter().all(|l| !l.starts_with("DEBUG")));
    assert_eq!(alerts.len(), 100);
    assert!(alerts.iter().all(|l| l.starts_with("ERROR")));
    // And a Kafka consumer reads the routed copies.
    let out = run_ok(
        kcat().args([
            "-b",
            &c.bootstrap(),
            "-C",
            "-t",
            "alerts",
            "-o",
            "beginning",
            "-e",
            "-q",
        ]),
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 100);
}

#[test]
fn bad_kafka_listener_settings_are_named_with_file_line_and_column() {
    let dir = Dir::new("kafka-listener-config");
    let path = dir.write(
        "bad.yaml",
        "collector:\n  backend: kafka\n  kafka: { brokers: \"k:9092\" }\n  kafka_listen: nonsense\n  kafka_advertise: \"host-without-port\"\n",
    );
    let out = util::run(ferry().args(["check", &path.display().to_string()]), b"", 2);
    let err = String::from_utf8_lossy(&out.stderr);
    let at = path.display().to_string();
    for want in [
        format!(
            "{at}:4:17: collector.kafka_listen: kafka_listen must be HOST:PORT, got \"nonsense\""
        ),
        format!(
            "{at}:4:17: collector.kafka_listen: kafka_listen serves the embedded store, and backend is kafka"
        ),
        format!("{at}:5:20: collector.kafka_advertise: kafka_advertise must be HOST:PORT"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    // The collector refuses to start with them, naming the same problems.
    let out = util::run(
        ferry().args([
            "collector",
            "--config",
            &at,
            "--data-dir",
            &dir.join("d").display().to_string(),
        ]),
        b"",
        2,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("kafka_listen must be HOST:PORT"));
}

/// A Kafka consumer group's members show in `ferry groups` (and the console, which reads the
/// same API) with their topics and assigned partitions, next to the group's lag.
#[test]
fn kafka_group_members_show_in_ferry_groups_with_their_partitions() {
    let dir = Dir::new("kafka-listener-members");
    let c = Collector::start(&dir, "members", None);
    let lines: String = (0..40).map(|i| format!("m-{i}\n")).collect();
    util::produce(&c.url(), "watched", &lines);
    let mut member = kcat()
        .args([
            "-b",
            &c.bootstrap(),
            "-G",
            "watchers",
            "watched",
            "-X",
            "session.timeout.ms=6000",
            "-q",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kcat -G");
    let group = |url: &str| -> Option<serde_json::Value> {
        let out = util::run(
            ferry().args(["groups", "--collector", url, "--json"]),
            b"",
            0,
        );
        let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        all.as_array()?
            .iter()
            .find(|g| g["group"] == "watchers")
            .cloned()
    };
    let mut seen = None;
    wait_until(
        Duration::from_secs(30),
        "the kcat member in ferry groups",
        || {
            seen = group(&c.url());
            seen.as_ref().is_some_and(|g| {
                g["members"].as_array().is_some_and(|m| {
                    m.len() == 1 && m[0]["partitions"].as_array().is_some_and(|p| p.len() == 4)
                })
            })
        },
    );
    let g = seen.expect("group");
    assert_eq!(
        g["members"][0]["topics"],
        serde_json::json!(["watched"]),
        "{g}"
    );
    // The group's coordinator is the Kafka one while it has Kafka members: an HTTP consumer of
    // the same group name is refused with a clear message, not given the same partitions.
    let out = util::run(
        ferry().args([
            "consume",
            "--collector",
            &c.url(),
            "watched",
            "--group",
            "watchers",
            "--max",
            "1",
        ]),
        b"",
        1,
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("group watchers has Kafka consumers"),
        "ferry consume said: {said}"
    );
    let _ = member.kill();
    let _ = member.wait();
    // Once the Kafka member is gone (its session expired), an HTTP consumer may use the group;
    // while it is a member, a Kafka member is refused the other way round.
    wait_until(Duration::from_secs(30), "the kcat member to expire", || {
        group(&c.url()).is_none_or(|g| g["members"].as_array().is_none_or(|m| m.is_empty()))
    });
    let mut http = ferry()
        .args([
            "consume",
            "--collector",
            &c.url(),
            "watched",
            "--group",
            "watchers",
            "--idle-timeout",
            "60s",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ferry consume --group");
    wait_until(
        Duration::from_secs(30),
        "the HTTP member in ferry groups",
        || group(&c.url()).is_some_and(|g| g["members"].as_array().is_some_and(|m| m.len() == 1)),
    );
    let mut refused = kcat()
        .args(["-b", &c.bootstrap(), "-G", "watchers", "watched", "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kcat -G");
    let refusals = || {
        let (_, body) = http_get(c.http, "/metrics").unwrap_or_default();
        body.lines()
            .filter(|l| {
                l.starts_with("ferry_kafka_group_joins_refused_total")
                    && l.contains("group_has_http_members")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    wait_until(
        Duration::from_secs(30),
        "the Kafka join to be refused",
        || refusals() >= 1.0,
    );
    let g = group(&c.url()).expect("group");
    assert_eq!(g["members"].as_array().map(Vec::len), Some(1), "{g}");
    let _ = refused.kill();
    let _ = refused.wait();
    let _ = http.kill();
    let _ = http.wait();
}

/// The cooperative-sticky assignor (KIP-429, client side, over the classic protocol): a second
/// confluent-kafka member joins while the first reads; the partitions are shared out
/// incrementally and every record is read.
#[test]
fn cooperative_sticky_members_share_the_partitions_and_read_every_record() {
    let dir = Dir::new("kafka-listener-coop");
    let c = Collector::start(&dir, "coop", None);
    let n = 2_000;
    let lines: String = (0..n).map(|i| format!("coop-{i}\n")).collect();
    util::produce(&c.url(), "coop", &lines);
    let out = run_ok(
        Command::new(python()).args([
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/kafka_clients/cooperative.py"
            ),
            &c.bootstrap(),
            "coop",
            &n.to_string(),
        ]),
        b"",
        Duration::from_secs(90),
    );
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(printed.contains(&format!("distinct {n} ")), "{printed}");
    // Both members held partitions: the second got its share without the first losing all.
    assert!(
        printed.contains("'a': [") && printed.contains("'b': ["),
        "{printed}"
    );
    assert!(!printed.contains("'b': []"), "{printed}");
    let groups = util::run(
        ferry().args(["groups", "--collector", &c.url(), "--json"]),
        b"",
        0,
    );
    let all: serde_json::Value = serde_json::from_slice(&groups.stdout).expect("json");
    let g = all
        .as_array()
        .and_then(|a| a.iter().find(|g| g["group"] == "coop"))
        .expect("group coop");
    assert_eq!(g["lag_records"], 0, "every record committed: {g}");
}

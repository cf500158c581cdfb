//! Container logs laid out the kubelet's way, read by a real agent: CRI and docker json-file
//! lines with long lines split into partial pieces at random, both streams, the
//! `/var/log/containers` symlinks next to `/var/log/pods`, and the kubelet's rotation
//! (`0.log` renamed to `0.log.<timestamp>`, a new `0.log`): every line exactly once, merged,
//! with its stream, pod metadata and the runtime's timestamp. Also: the DaemonSet manifest in
//! deploy/kubernetes/ parses and the agent config it carries passes `ferry check`.

mod util;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use util::{Dir, Service, consume_json, ferry, run, start_collector, wait_until};

/// One container's log, written as its runtime would.
struct Container {
    dir: PathBuf,
    docker: bool,
    /// Lines written so far, as (text, stream, time_ms).
    written: Vec<(String, &'static str, i64)>,
}

impl Container {
    fn log(&self) -> PathBuf {
        self.dir.join("0.log")
    }

    /// Appends `n` lines, each cut into up to 4 pieces at random (P…P F, or docker logs
    /// without their newline but the last).
    fn write(&mut self, rng: &mut rand::rngs::SmallRng, n: usize, tag: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("open log");
        let mut out = String::new();
        for i in 0..n {
            let stream = if rng.random_bool(0.2) {
                "stderr"
            } else {
                "stdout"
            };
            let len = rng.random_range(0..300);
            let body: String = (0..len)
                .map(|_| rng.random_range(b'a'..=b'z') as char)
                .collect();
            let text = format!("{tag}-{i} {body}");
            let time_ms = 1_796_292_000_000 + self.written.len() as i64;
            let ts = format!(
                "2026-12-03T10:00:{:02}.{:03}123456Z",
                (time_ms / 1000) % 60,
                time_ms % 1000
            );
            let mut cuts: Vec<usize> = (0..rng.random_range(0..4))
                .map(|_| rng.random_range(0..=text.len()))
                .collect();
            cuts.extend([0, text.len()]);
            cuts.sort();
            cuts.dedup();
            let pieces: Vec<&str> = if cuts.len() < 2 {
                vec![""]
            } else {
                cuts.windows(2).map(|w| &text[w[0]..w[1]]).collect()
            };
            for (k, p) in pieces.iter().enumerate() {
                let last = k + 1 == pieces.len();
                if self.docker {
                    let log = if last {
                        format!("{p}\n")
                    } else {
                        (*p).to_owned()
                    };
                    out.push_str(
                        &serde_json::json!({"log": log, "stream": stream, "time": ts}).to_string(),
                    );
                    out.push('\n');
                } else {
                    let tag = if last { "F" } else { "P" };
                    out.push_str(&format!("{ts} {stream} {tag} {p}\n"));
                }
            }
            self.written.push((text, stream, time_ms));
        }
        f.write_all(out.as_bytes()).expect("write log");
    }
}

#[test]
fn kubelet_layout_with_partial_lines_symlinks_and_rotation_gives_every_line_once() {
    let seed = std::env::var("FERRY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("seed: {seed} (FERRY_TEST_SEED={seed} to repeat)");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let dir = Dir::new("k8s");
    let root = dir.join("var/log");
    let pods = root.join("pods");
    let links = root.join("containers");
    std::fs::create_dir_all(&links).expect("mkdir");
    let mut containers = Vec::new();
    for (ns, pod, uid, name, docker) in [
        ("shop", "checkout-7d9f", "0b9c1e2a-1111", "app", false),
        ("web", "front-1", "5e6f7a8b-2222", "nginx", true),
    ] {
        let d = pods.join(format!("{ns}_{pod}_{uid}")).join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        let c = Container {
            dir: d,
            docker,
            written: Vec::new(),
        };
        std::fs::write(c.log(), b"").expect("create");
        let id = format!("{:064x}", rng.random::<u64>());
        std::os::unix::fs::symlink(c.log(), links.join(format!("{pod}_{ns}_{name}-{id}.log")))
            .expect("symlink");
        containers.push((ns, pod, uid, name, c));
    }
    for (_, _, _, _, c) in &mut containers {
        c.write(&mut rng, 150, "before");
    }

    let collector = start_collector(&dir, "collector", None);
    let config = format!(
        "agent:\n  data_dir: {data}\n  rescan_interval: 200ms\n  batch:\n    linger: 50ms\n  output:\n    type: collector\n    urls: [\"{url}\"]\n  inputs:\n    - name: pods\n      include: [\"{links}/*.log\", \"{pods}/*/*/*.log\"]\n      topic: k8s\n      format: auto\n      kubernetes: true\n",
        data = dir.join("agent-data").display(),
        url = collector.url(),
        links = links.display(),
        pods = pods.display(),
    );
    let path = dir.write("agent.yaml", &config);
    let path = path.display().to_string();
    let _agent = Service::spawn("agent", &dir, &["agent", "--config", &path]);
    let want_before: usize = containers.iter().map(|c| c.4.written.len()).sum();
    wait_until(Duration::from_secs(60), "the first lines stored", || {
        consume_json(&collector.url(), "k8s").len() >= want_before
    });

    // The kubelet's rotation: rename, a new 0.log (the symlink now points at it), more lines.
    for (_, _, _, _, c) in &mut containers {
        std::fs::rename(c.log(), c.dir.join("0.log.20261203-100000")).expect("rotate");
        c.write(&mut rng, 150, "after");
    }
    let want: usize = containers.iter().map(|c| c.4.written.len()).sum();
    let mut records = Vec::new();
    wait_until(Duration::from_secs(60), "every line stored", || {
        records = consume_json(&collector.url(), "k8s");
        records.len() >= want
    });
    // A last look for duplicates that arrive late.
    std::thread::sleep(Duration::from_millis(500));
    records = consume_json(&collector.url(), "k8s");

    let mut got = std::collections::HashMap::new();
    for r in &records {
        let line = r["line"].as_str().expect("line").to_owned();
        let f = &r["fields"];
        let key = (f["pod"].as_str().unwrap_or("?").to_owned(), line);
        assert!(
            got.insert(key.clone(), r.clone()).is_none(),
            "seed {seed}: {key:?} stored twice"
        );
    }
    for (ns, pod, uid, name, c) in &containers {
        for (text, stream, time_ms) in &c.written {
            let r = got
                .get(&(pod.to_string(), text.clone()))
                .unwrap_or_else(|| panic!("seed {seed}: {pod}: {text:?} missing"));
            let f = &r["fields"];
            assert_eq!(f["stream"], *stream, "seed {seed}: {r}");
            assert_eq!(f["namespace"], *ns, "seed {seed}: {r}");
            assert_eq!(f["pod_uid"], *uid, "seed {seed}: {r}");
            assert_eq!(f["container"], *name, "seed {seed}: {r}");
            assert_eq!(r["event_time_ms"], *time_ms, "seed {seed}: {r}");
        }
    }
    assert_eq!(records.len(), want, "seed {seed}: every line exactly once");
}

/// The YAML documents of the manifest.
fn manifest_docs(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).expect("read manifest");
    text.split("\n---")
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|d| {
            serde_saphyr::from_str::<serde_json::Value>(d)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

#[test]
fn the_daemonset_manifest_parses_and_its_agent_config_passes_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = manifest_docs(&root.join("deploy/kubernetes/ferry-agent.yaml"));
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} in the manifest"))
    };
    let ds = kind("DaemonSet");
    kind("ServiceAccount");
    let config_map = kind("ConfigMap");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(
        spec["serviceAccountName"],
        kind("ServiceAccount")["metadata"]["name"]
    );
    let agent = &spec["containers"][0];
    assert!(
        agent["resources"]["limits"]["memory"].is_string(),
        "{agent}"
    );
    assert!(agent["resources"]["limits"]["cpu"].is_string(), "{agent}");
    let host_paths: Vec<&str> = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    for p in ["/var/log", "/var/lib/ferry-agent"] {
        assert!(host_paths.contains(&p), "no hostPath {p}: {host_paths:?}");
    }
    // The config it carries, as the agent would read it from the mounted ConfigMap.
    let yaml = config_map["data"]["agent.yaml"]
        .as_str()
        .expect("ConfigMap data agent.yaml");
    let dir = Dir::new("manifest");
    let path = dir.write("agent.yaml", yaml);
    run(ferry().arg("check").arg(&path), b"", 0);
    // It is the sample config, verbatim.
    let sample = std::fs::read_to_string(root.join("configs/agent-kubernetes.yaml"))
        .expect("configs/agent-kubernetes.yaml");
    assert_eq!(
        yaml.trim_end(),
        sample.trim_end(),
        "the ConfigMap and configs/agent-kubernetes.yaml differ"
    );
}

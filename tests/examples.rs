//! The seed-scenario examples (examples/README.md) as users run them: a real collector, the
//! example binary as a real process, and checks of what it printed and of the files and
//! collector state it left, computed here independently of the example's own checks.

mod util;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use util::{Dir, ferry, run, start_collector};

/// Runs an example binary; panics with its output unless it exits 0. Returns its stdout.
fn example(bin: &str, dir: &Dir, args: &[&str]) -> String {
    let out = run(Command::new(bin).current_dir(dir.path()).args(args), b"", 0);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("--- {bin}\n{stdout}");
    stdout
}

/// The line of `out` starting with `prefix`.
fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{out}"))
}

/// The number right after `label` in `text`, e.g. `number("got 20, x", "got ")` = 20.
fn number(text: &str, label: &str) -> f64 {
    let rest = &text[text
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in {text:?}"))
        + label.len()..];
    let n: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    n.parse()
        .unwrap_or_else(|_| panic!("no number after {label:?} in {text:?}"))
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .expect("client")
}

/// Committed offsets of a group, summed over partitions, for `topic`.
fn committed(url: &str, group: &str, topic: &str) -> u64 {
    let v: serde_json::Value = http()
        .get(format!("{url}/v1/groups/{group}/offsets"))
        .send()
        .expect("offsets")
        .json()
        .expect("json");
    v.as_array()
        .expect("a list of offsets")
        .iter()
        .filter(|o| o["topic"] == topic)
        .map(|o| o["offset"].as_u64().expect("offset"))
        .sum()
}

/// Every record of `topic`, as `ferry consume` prints them.
fn consume_all(url: &str, topic: &str) -> Vec<serde_json::Value> {
    let out = run(
        ferry().args([
            "consume",
            "--collector",
            url,
            topic,
            "--from-beginning",
            "--idle-timeout",
            "1s",
        ]),
        b"",
        0,
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect()
}

/// Processes whose command line mentions `needle` (a path of one test): none may outlive the
/// example that started them.
fn processes_mentioning(needle: &Path) -> Vec<String> {
    let needle = needle.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) {
                out.push(format!("{pid}: {cmd}"));
            }
        }
    }
    out
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn async_work_both_consumers_handle_every_registration_once_and_the_caller_waits_less() {
    let dir = Dir::new("ex-async");
    let c = start_collector(&dir, "c", None);
    let n = 20;
    let out = example(
        env!("CARGO_BIN_EXE_example-async-work"),
        &dir,
        &[
            "--collector",
            &c.url(),
            "--users",
            &n.to_string(),
            "--dir",
            "work",
        ],
    );
    let queued = number(line(&out, "queued:"), "mean caller latency ");
    let inline = number(line(&out, "inline:"), "mean caller latency ");
    assert!(
        queued < inline,
        "queued {queued} ms is not below inline {inline} ms"
    );
    assert!(line(&out, "inline:").contains("simulated with a sleep"));
    let users: BTreeSet<String> = (0..n).map(|i| format!("user-{i}")).collect();
    for file in ["emails.log", "sms.log"] {
        let sent = lines_of(&dir.join("work").join(file));
        let mut per_user: BTreeMap<String, u32> = BTreeMap::new();
        for l in &sent {
            *per_user
                .entry(l.split_whitespace().next().expect("user").to_owned())
                .or_default() += 1;
        }
        assert_eq!(
            per_user.keys().cloned().collect::<BTreeSet<_>>(),
            users,
            "{file}"
        );
        assert!(per_user.values().all(|&k| k == 1), "{file}: {per_user:?}");
    }
    // The store has every user (queued and inline); each group consumed the whole topic.
    assert_eq!(
        lines_of(&dir.join("work/users.jsonl")).len(),
        n as usize + 5
    );
    assert_eq!(committed(&c.url(), "email", "user-registered"), n);
    assert_eq!(committed(&c.url(), "sms", "user-registered"), n);
}

#[test]
fn decoupling_inventory_killed_then_restarted_loses_no_order() {
    let dir = Dir::new("ex-decoupling");
    let c = start_collector(&dir, "c", None);
    let out = example(
        env!("CARGO_BIN_EXE_example-decoupling"),
        &dir,
        &[
            "--collector",
            &c.url(),
            "--dir",
            dir.join("work").to_str().expect("utf8"),
            "--initial",
            "500",
        ],
    );
    let left = processes_mentioning(&dir.join("work"));
    assert!(
        left.is_empty(),
        "the inventory service outlived the example: {left:?}"
    );
    let down = line(&out, "2. inventory killed");
    assert!(number(down, "lag: ") >= 60.0, "{down}");
    // Expected stock from the topic itself.
    let orders = consume_all(&c.url(), "orders");
    assert_eq!(orders.len(), 90);
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for o in &orders {
        *want
            .entry(o["sku"].as_str().expect("sku").to_owned())
            .or_insert(500) -= o["qty"].as_i64().expect("qty");
    }
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("work/inventory.json")).expect("inventory state"),
    )
    .expect("json");
    let got: BTreeMap<String, i64> = serde_json::from_value(state["stock"].clone()).expect("stock");
    assert_eq!(got, want);
    assert_eq!(state["applied"].as_array().expect("applied").len(), 90);
    assert_eq!(committed(&c.url(), "inventory", "orders"), 90);
}

#[test]
fn flash_sale_refuses_the_excess_with_429_and_fulfils_the_accepted_in_order() {
    let dir = Dir::new("ex-flash");
    let config = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/collector.yaml"
    ))
    .expect("examples/collector.yaml");
    let c = start_collector(&dir, "c", Some(&config));
    let sent = 3000;
    let out = example(
        env!("CARGO_BIN_EXE_example-flash-sale"),
        &dir,
        &[
            "--collector",
            &c.url(),
            "--orders",
            &sent.to_string(),
            "--dir",
            "work",
        ],
    );
    let tally = line(&out, "sent ");
    let (accepted, refused) = (
        number(tally, "accepted ") as u64,
        number(tally, "refused ") as u64,
    );
    assert_eq!(accepted + refused, sent);
    assert_eq!(accepted, 1000, "max_records in examples/collector.yaml");
    let refusal = line(&out, "refusal:");
    assert!(
        refusal.contains("429") && refusal.contains("is full"),
        "{refusal}"
    );
    assert!(refusal.contains("retention"), "{refusal}");
    // The collector counted every refused record.
    let (_, metrics) = util::http_get(c.addr, "/metrics").expect("metrics");
    assert!(
        metrics.contains(&format!(
            "ferry_collector_records_refused_total{{topic=\"flash-sale\"}} {refused}"
        )),
        "{metrics}"
    );
    // Fulfilment saw exactly the accepted orders, in log order, each buyer's in its order.
    let accepted_ids: BTreeSet<String> = lines_of(&dir.join("work/accepted.log"))
        .into_iter()
        .collect();
    assert_eq!(accepted_ids.len() as u64, accepted);
    let fulfilled = lines_of(&dir.join("work/fulfilled.log"));
    let mut ids = BTreeSet::new();
    let mut last_seq: BTreeMap<String, u64> = BTreeMap::new();
    for (i, l) in fulfilled.iter().enumerate() {
        let (offset, id) = l.split_once(' ').expect("offset id");
        assert_eq!(offset.parse::<usize>().expect("offset"), i, "log order");
        let (buyer, seq) = id.split_once('-').expect("bN-seq");
        let seq: u64 = seq.parse().expect("seq");
        if let Some(prev) = last_seq.insert(buyer.to_owned(), seq) {
            assert!(prev < seq, "{buyer}: {seq} after {prev}");
        }
        assert!(ids.insert(id.to_owned()), "{id} fulfilled twice");
    }
    assert_eq!(ids, accepted_ids);
}

#[test]
fn log_collection_processor_counts_equal_the_counts_in_the_files() {
    let dir = Dir::new("ex-logs");
    let c = start_collector(&dir, "c", None);
    let out = example(
        env!("CARGO_BIN_EXE_example-log-collection"),
        &dir,
        &[
            "--collector",
            &c.url(),
            "--ferry",
            env!("CARGO_BIN_EXE_ferry"),
            "--dir",
            "work",
            "--lines",
            "500",
        ],
    );
    assert!(out.contains("processor counts equal the files"), "{out}");
    let left = processes_mentioning(&dir.join("work"));
    assert!(
        left.is_empty(),
        "agents or processor outlived the example: {left:?}"
    );
    // (The agents and the processor were started with configs from there.)
    assert!(dir.join("work/agent-db-1.yaml").exists());
    assert!(dir.join("work/processor.yaml").exists());
    let mut want: BTreeMap<(String, String), u64> = BTreeMap::new();
    for host in ["web-1", "web-2", "db-1"] {
        for l in lines_of(&dir.join(format!("work/hosts/{host}/app.log"))) {
            let v: serde_json::Value = serde_json::from_str(&l).expect("log line");
            *want
                .entry((
                    host.to_owned(),
                    v["level"].as_str().expect("level").to_owned(),
                ))
                .or_default() += 1;
        }
    }
    assert_eq!(want.values().sum::<u64>(), 1500);
    let mut windows: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for l in lines_of(&dir.join("work/results.jsonl")) {
        let v: serde_json::Value = serde_json::from_str(&l).expect("result");
        if v["key"]["level"] == "closer" {
            continue;
        }
        let key = (
            v["key"]["host"].as_str().expect("host").to_owned(),
            v["key"]["level"].as_str().expect("level").to_owned(),
            v["window_start"].as_str().expect("window").to_owned(),
        );
        let n = v["count"].as_u64().expect("count");
        if let Some(prev) = windows.insert(key.clone(), n) {
            assert_eq!(prev, n, "{key:?} emitted twice with different counts");
        }
    }
    let mut got: BTreeMap<(String, String), u64> = BTreeMap::new();
    for ((host, level, _), n) in windows {
        *got.entry((host, level)).or_default() += n;
    }
    assert_eq!(got, want);
}

#[test]
fn messaging_one_group_shares_the_queue_and_own_groups_each_get_everything() {
    let dir = Dir::new("ex-messaging");
    let c = start_collector(&dir, "c", None);
    let out = example(
        env!("CARGO_BIN_EXE_example-messaging"),
        &dir,
        &["--collector", &c.url(), "--tasks", "40"],
    );
    let p2p = line(&out, "point to point:");
    let (a, b) = (number(p2p, "worker-1 got "), number(p2p, "worker-2 got "));
    assert_eq!(a + b, 40.0, "{p2p}");
    assert!(a > 0.0 && b > 0.0, "one worker got nothing: {p2p}");
    assert_eq!(number(p2p, "both got "), 0.0, "{p2p}");
    assert_eq!(number(p2p, "missing "), 0.0, "{p2p}");
    assert_eq!(committed(&c.url(), "workers", "tasks"), 40);
    for m in ["alice", "bob", "carol"] {
        let l = line(&out, m);
        assert!(
            l.contains("9 messages, same order as the first member"),
            "{l}"
        );
        assert_eq!(committed(&c.url(), &format!("chat-{m}"), "room"), 9);
    }
}

#[test]
fn the_examples_collector_config_is_valid() {
    run(
        ferry().args([
            "check",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/collector.yaml"),
        ]),
        b"",
        0,
    );
}

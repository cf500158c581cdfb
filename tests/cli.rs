//! The command line as a user meets it: help, exit codes, `ferry check` on every sample config.

mod util;
use util::{Dir, ferry, run};

#[test]
fn help_lists_every_subcommand() {
    let out = run(ferry().arg("--help"), b"", 0);
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "agent",
        "collector",
        "processor",
        "up",
        "produce",
        "consume",
        "topics",
        "groups",
        "tap",
        "top",
        "check",
    ] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(cmd)),
            "--help does not list {cmd}:\n{text}"
        );
    }
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = run(ferry().args(["check", "--frobnicate"]), b"", 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--frobnicate"));
}

#[test]
fn every_sample_config_passes_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("configs/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            run(ferry().arg("check").arg(&path), b"", 0);
            n += 1;
        }
    }
    assert!(n >= 1, "no sample configs in {}", dir.display());
}

/// Every sample config, with one key misspelled, fails with the file, line and column of the typo.
#[test]
fn broken_copies_of_sample_configs_name_file_line_col() {
    let configs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let tmp = Dir::new("check");
    for entry in std::fs::read_dir(&configs).expect("configs/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read config");
        // Misspell the last top-level or nested key of the file (a line "  name: value").
        let (idx, line) = text
            .lines()
            .enumerate()
            .filter(|(_, l)| {
                let t = l.trim_start();
                !t.starts_with('#') && !t.starts_with('-') && t.contains(':')
            })
            .last()
            .expect("config has a key");
        let col = line.len() - line.trim_start().len() + 1;
        let broken_line = format!("{}zz{}", &line[..col - 1], &line[col - 1..]);
        let broken: Vec<String> = text
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if i == idx {
                    broken_line.clone()
                } else {
                    l.to_owned()
                }
            })
            .collect();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let bad = tmp.write(&name, broken.join("\n"));
        let out = run(ferry().arg("check").arg(&bad), b"", 2);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = format!("{}:{}:{}:", bad.display(), idx + 1, col);
        assert!(stderr.contains(&want), "want {want} in:\n{stderr}");
    }
}

#[test]
fn check_reports_missing_file_and_garbage() {
    let tmp = Dir::new("check-garbage");
    let out = run(ferry().arg("check").arg(tmp.join("nope.yaml")), b"", 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    let bad = tmp.write("bad.yaml", "telemetry: [\n");
    let out = run(ferry().arg("check").arg(&bad), b"", 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.yaml:"));
    let wrong_type = tmp.write("wt.yaml", "telemetry:\n  log_format: purple\n");
    let out = run(ferry().arg("check").arg(&wrong_type), b"", 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wt.yaml:2:15:"), "{stderr}");
}

/// `ferry processor --kafka` reads every pipeline from Kafka, so `--collector` with it is a
/// usage error; so is a config whose kafka sink has no cluster to produce to.
#[test]
fn processor_kafka_quick_form_usage_errors() {
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/processor.yaml");
    let out = run(
        ferry().args(["processor", "--config"]).arg(&sample).args([
            "--kafka",
            "127.0.0.1:1",
            "--collector",
            "http://127.0.0.1:1",
        ]),
        b"",
        2,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not both"), "{stderr}");
    let tmp = Dir::new("check-kafka-sink");
    let bad = tmp.write(
        "p.yaml",
        "processor:\n  pipelines:\n    - name: a\n      source: {topics: [app]}\n      window: {tumbling: 10s}\n      aggregates: [{name: count, op: count}]\n      sinks: [{kafka: {topic: out}}]\n",
    );
    let out = run(ferry().arg("check").arg(&bad), b"", 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("p.yaml:") && stderr.contains("needs `cluster"),
        "{stderr}"
    );
}

/// What parses but cannot run is reported all at once, each problem at its own file:line:col,
/// by `ferry check` and by the component that would run the file (here `ferry agent`).
#[test]
fn check_reports_every_semantic_problem_with_its_position() {
    let tmp = Dir::new("check-semantic");
    let bad = tmp.write(
        "agent.yaml",
        "agent:\n\
         \x20 inputs:\n\
         \x20   - name: app\n\
         \x20     include: [\"logs/app.log*\"]\n\
         \x20     topic: app\n\
         \x20     multiline:\n\
         \x20       start_pattern: '^(\\d{4'\n\
         \x20   - name: app\n\
         \x20     include: [\"/var/log/[x.log\"]\n\
         \x20     topic: other\n\
         \x20 batch:\n\
         \x20   max_records: 0\n\
         collector:\n\
         \x20 topics:\n\
         \x20   orders: {partitions: 0}\n",
    );
    let path = bad.display().to_string();
    let want = [
        (4, 17, "is relative"),
        (7, 24, "bad multiline start_pattern regex"),
        (8, 13, "two inputs have this name"),
        (9, 17, "bad glob"),
        (12, 18, "max_records"),
        (15, 26, "partitions must be at least 1"),
    ];
    for cmd in [
        vec!["check", path.as_str()],
        vec!["agent", "--config", path.as_str()],
    ] {
        let out = run(ferry().args(&cmd), b"", 2);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if cmd[0] == "agent" {
            // The agent checks its own section only.
            for (line, col, what) in want.iter().filter(|w| w.0 < 13) {
                let at = format!("{path}:{line}:{col}: ");
                assert!(
                    stderr.lines().any(|l| l.contains(&at) && l.contains(what)),
                    "ferry agent: want {at}…{what} in:\n{stderr}"
                );
            }
            continue;
        }
        for (line, col, what) in want {
            let at = format!("{path}:{line}:{col}: ");
            assert!(
                stderr.lines().any(|l| l.contains(&at) && l.contains(what)),
                "want {at}…{what} in:\n{stderr}"
            );
        }
        assert!(stderr.contains("hint: write an absolute path"), "{stderr}");
        assert!(stderr.contains("6 problems"), "{stderr}");
    }
}

/// An error is said once: the cause is not repeated after the message that already holds it.
#[test]
fn errors_do_not_repeat_their_cause() {
    let tmp = Dir::new("check-repeat");
    let out = run(
        ferry().args(["up", "--config"]).arg(tmp.join("nope.yaml")),
        b"",
        2,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
}

/// A collector that accepts a connection and never answers cannot hang a command: the request
/// times out (`FERRY_REQUEST_TIMEOUT`, default 30 s) and the error says what it waited for.
#[test]
fn a_silent_collector_times_out_with_what_was_waited_for() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Accept and hold connections without a byte of reply.
    let _holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(8) {
            held.push(s);
        }
    });
    let url = format!("http://{addr}");
    let start = std::time::Instant::now();
    let out = run(
        ferry()
            .env("FERRY_REQUEST_TIMEOUT", "1s")
            .args(["topics", "--collector", &url]),
        b"",
        1,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no answer to GET /v1/topics within 1s"),
        "{stderr}"
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    let out = run(
        ferry()
            .env("FERRY_REQUEST_TIMEOUT", "soon")
            .args(["topics", "--collector", &url]),
        b"",
        2,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("FERRY_REQUEST_TIMEOUT"));
}

/// Two pipelines, each with problems between its keys: every one is listed at its key.
#[test]
fn check_lists_every_pipeline_problem() {
    let tmp = Dir::new("check-pipelines");
    let bad = tmp.write(
        "p.yaml",
        "processor:\n\
         \x20 pipelines:\n\
         \x20   - name: a\n\
         \x20     source: {topics: []}\n\
         \x20     window: {tumbling: 10s}\n\
         \x20     aggregates:\n\
         \x20       - {name: count, op: count}\n\
         \x20       - {name: count, op: count}\n\
         \x20   - name: b\n\
         \x20     source: {topics: [app]}\n\
         \x20     window: {tumbling: 10s}\n\
         \x20     max_keys: 0\n\
         \x20     aggregates: [{name: key, op: count}]\n\
         \x20   - name: b\n\
         \x20     source: {topics: [app]}\n\
         \x20     window: {tumbling: 10s}\n\
         \x20     aggregates: [{name: n, op: count}]\n",
    );
    let out = run(ferry().arg("check").arg(&bad), b"", 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let path = bad.display().to_string();
    for (line, col, what) in [
        (4, 24, "source.topics is empty"),
        (8, 18, "two aggregates are named"),
        (12, 17, "max_keys must be at least 1"),
        (13, 27, "is reserved"),
    ] {
        let at = format!("{path}:{line}:{col}: ");
        assert!(
            stderr.lines().any(|l| l.contains(&at) && l.contains(what)),
            "want {at}…{what} in:\n{stderr}"
        );
    }
    // With the pipelines fixed, the names that repeat are the problem left.
    let fixed = std::fs::read_to_string(&bad)
        .expect("read")
        .replace("topics: []", "topics: [app]")
        .replace(
            "- {name: count, op: count}\n        - {name: count, op: count}",
            "- {name: count, op: count}",
        )
        .replace("max_keys: 0", "max_keys: 10")
        .replace("name: key,", "name: n,");
    let good = tmp.write("q.yaml", fixed);
    let out = run(ferry().arg("check").arg(&good), b"", 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:13:13: ", good.display()))
            && stderr.contains("two pipelines are named \"b\""),
        "{stderr}"
    );
}

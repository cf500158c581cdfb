//! `some-command | ferry agent --stdin --topic T`: every line acknowledged once, exit 0 — also
//! when the collector is killed with SIGKILL mid-stream and comes back.

mod util;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};
use util::{Dir, ferry, free_addr, run, start_collector, start_collector_on};

/// Every record of `topic`, as printed by `ferry consume` (raw).
fn consume_all(url: &str, topic: &str) -> Vec<String> {
    let out = run(
        ferry().args([
            "consume",
            "--collector",
            url,
            topic,
            "--from-beginning",
            "--idle-timeout",
            "2s",
        ]),
        b"",
        0,
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn assert_each_once(got: Vec<String>, n: usize) {
    let total = got.len();
    let mut seen = vec![false; n];
    for l in &got {
        let i: usize = l
            .strip_prefix("line ")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected record {l:?}"));
        assert!(!seen[i], "line {i} stored twice");
        seen[i] = true;
    }
    let missing: Vec<usize> = (0..n).filter(|&i| !seen[i]).take(5).collect();
    assert!(missing.is_empty(), "lines missing, e.g. {missing:?}");
    assert_eq!(total, n);
}

#[test]
fn a_million_piped_lines_are_acknowledged_once_and_it_exits_0() {
    let dir = Dir::new("stdin");
    let c = start_collector(&dir, "collector", None);
    let input: String = (0..1_000_000).map(|i| format!("line {i}\n")).collect();
    let out = run(
        ferry().args([
            "agent",
            "--stdin",
            "--topic",
            "piped",
            "--collector",
            &c.url(),
        ]),
        input.as_bytes(),
        0,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1000000 lines") && stderr.contains("1000000 acknowledged"),
        "{stderr}"
    );
    assert_each_once(consume_all(&c.url(), "piped"), 1_000_000);
}

#[test]
fn collector_killed_mid_stream_still_exactly_once() {
    let dir = Dir::new("stdin-kill");
    let addr = free_addr();
    let mut c = start_collector_on(&dir, "collector", None, addr);
    let url = c.url();
    let mut agent = ferry()
        .args(["agent", "--stdin", "--topic", "piped", "--collector", &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let mut pipe = agent.stdin.take().expect("stdin");
    // A producer writing for about four seconds: 200 lines every 5 ms.
    let n = 160_000;
    let writer = std::thread::spawn(move || {
        for chunk in 0..n / 200 {
            let s: String = (chunk * 200..chunk * 200 + 200)
                .map(|i| format!("line {i}\n"))
                .collect();
            if pipe.write_all(s.as_bytes()).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    c.kill9();
    std::thread::sleep(Duration::from_millis(1000));
    let c = start_collector_on(&dir, "collector", None, addr);
    writer.join().expect("writer");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = agent.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "agent did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut agent.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(&format!("{n} acknowledged")), "{stderr}");
    assert_each_once(consume_all(&c.url(), "piped"), n);
}

#[test]
fn stdin_needs_a_topic() {
    let out = run(ferry().args(["agent", "--stdin"]), b"x\n", 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--stdin needs --topic"));
}

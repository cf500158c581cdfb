//! `ferry up`, the README's first command, as a user runs it: in a fresh folder, with the
//! shipped configs/local.yaml (on a free port), showing live results and stopping cleanly.

mod util;
use util::{Dir, ferry, free_port, run};

#[test]
fn ferry_up_shows_live_window_results_and_drains() {
    let dir = Dir::new("up");
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/local.yaml"))
            .expect("configs/local.yaml");
    let config = shipped.replace("127.0.0.1:7070", &format!("127.0.0.1:{}", free_port()));
    assert_ne!(
        config, shipped,
        "the listen address in local.yaml moved; update this test"
    );
    dir.write("configs/local.yaml", config);
    let out = run(
        ferry()
            .current_dir(dir.path())
            .args(["up", "--run-for", "12s"]),
        b"",
        0,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for table in ["errors  [", "latency  [", "users  ["] {
        assert!(
            stdout.contains(table),
            "no {table} table in:\n{stdout}\n{stderr}"
        );
    }
    for column in [
        "p99_ms",
        "avg_ms",
        "requests",
        "users",
        "service=checkout",
        "endpoint=/api/cart",
    ] {
        assert!(stdout.contains(column), "no {column} in:\n{stdout}");
    }
    assert!(stderr.contains("ferry up: stopped."), "{stderr}");
    // It ran on real files in the folder it was started in.
    assert!(dir.join("data/sample-logs/app.log").exists());
    assert!(dir.join("data/up/collector").exists());
}

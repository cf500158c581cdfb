//! `ferry top` in a real pseudo-terminal (tmux): it shows the collector's topics and groups,
//! refreshes them, and exits 0 on a single `q` with the terminal restored.

mod util;
use std::process::Command;
use std::time::Duration;
use util::{Dir, ferry_bin, produce, run, start_collector, wait_until};

/// A tmux server of its own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(name: &str) -> Self {
        Tmux {
            socket: format!("ferry-{name}-{}", std::process::id()),
        }
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }
    fn start(&self, shell_command: &str) {
        let ok = self
            .cmd()
            .args([
                "new-session",
                "-d",
                "-s",
                "t",
                "-x",
                "140",
                "-y",
                "40",
                shell_command,
            ])
            .status()
            .expect("tmux is needed for this test (apt-get install tmux)");
        assert!(ok.success(), "tmux new-session failed");
    }
    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "t"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn keys(&self, keys: &str) {
        let ok = self
            .cmd()
            .args(["send-keys", "-t", "t", keys])
            .status()
            .expect("tmux send-keys");
        assert!(ok.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

#[test]
fn top_shows_topics_and_groups_in_a_terminal_and_quits_on_q() {
    let dir = Dir::new("top");
    let c = start_collector(&dir, "collector", None);
    let lines: String = (0..500).map(|i| format!("line {i}\n")).collect();
    produce(&c.url(), "orders", &lines);
    run(
        util::ferry().args([
            "consume",
            "--collector",
            &c.url(),
            "orders",
            "--group",
            "billing",
            "--from-beginning",
            "--max",
            "100",
        ]),
        b"",
        0,
    );
    let exit_file = dir.join("exit-code");
    let tmux = Tmux::new("top");
    tmux.start(&format!(
        "{} top --collector {} --interval 300ms; echo $? > {}; sleep 30",
        ferry_bin().display(),
        c.url(),
        exit_file.display()
    ));
    wait_until(
        Duration::from_secs(20),
        "the topics and groups on screen",
        || {
            let s = tmux.screen();
            s.contains("orders") && s.contains("billing") && s.contains("ack p50")
        },
    );
    let screen = tmux.screen();
    let orders = screen
        .lines()
        .find(|l| l.starts_with("orders"))
        .unwrap_or_else(|| panic!("no orders row:\n{screen}"));
    assert!(orders.contains(" 500 "), "{screen}");
    let billing = screen
        .lines()
        .find(|l| l.starts_with("billing"))
        .unwrap_or_else(|| panic!("no billing row:\n{screen}"));
    assert!(billing.contains(" 400 "), "lag of 400 records:\n{screen}");
    // It refreshes in place: new records show up without a restart.
    produce(&c.url(), "orders", &lines);
    wait_until(Duration::from_secs(20), "the new count on screen", || {
        tmux.screen()
            .lines()
            .any(|l| l.starts_with("orders") && l.contains(" 1000 "))
    });
    tmux.keys("q");
    wait_until(Duration::from_secs(10), "ferry top to exit on q", || {
        exit_file.exists()
    });
    let code = std::fs::read_to_string(&exit_file).expect("exit code");
    assert_eq!(code.trim(), "0", "{}", tmux.screen());
}

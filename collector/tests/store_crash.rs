//! Crash test: a real child process appends to the store and is killed with SIGKILL at random
//! moments; after each kill the store is reopened and every acknowledged record must be there,
//! at its acknowledged offset, and a replay of acknowledged data must be deduplicated.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use ferry_collector::store::{Store, StoreConfig};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child if the test fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Debug, Clone, Copy)]
struct Ack {
    partition: u32,
    base: u64,
    first_seq: u64,
    count: u64,
}

#[tokio::test]
async fn every_acknowledged_record_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut acks: Vec<Ack> = Vec::new();
    // A cheap deterministic pseudo-random sequence of kill delays.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ std::process::id() as u64;
    let started = Instant::now();
    for round in 0..5u64 {
        let mut child = KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_store-crash-writer"))
                .arg(dir.path())
                .arg((round * 1_000_000).to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn store-crash-writer"),
        );
        let stdout = child.0.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() == 5 && f[0] == "ack" {
                    got.push(Ack {
                        partition: f[1].parse().unwrap(),
                        base: f[2].parse().unwrap(),
                        first_seq: f[3].parse().unwrap(),
                        count: f[4].parse().unwrap(),
                    });
                }
            }
            got
        });
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_millis(150 + rng % 600);
        std::thread::sleep(delay);
        child.0.kill().unwrap(); // SIGKILL
        child.0.wait().unwrap();
        let round_acks = reader.join().unwrap();
        assert!(
            !round_acks.is_empty(),
            "round {round}: the writer acknowledged nothing in {delay:?}"
        );
        eprintln!("round {round}: {} acks after {delay:?}", round_acks.len());
        acks.extend(round_acks);

        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        for p in 0..2u32 {
            let recs: std::collections::HashMap<u64, String> =
                read_records(&store, "crash", p, 0).into_iter().collect();
            for a in acks.iter().filter(|a| a.partition == p) {
                for i in 0..a.count {
                    let want = format!("seq-{:014}", a.first_seq + i);
                    assert_eq!(
                        recs.get(&(a.base + i)),
                        Some(&want),
                        "round {round}: acknowledged record lost: {a:?}"
                    );
                }
            }
        }
        // Replaying the last acknowledged batch of partition 0 is a no-op.
        if let Some(a) = acks.iter().rev().find(|a| a.partition == 0) {
            let key = ferry_core::record::OriginKey {
                agent_id: "crash".into(),
                file: ferry_core::record::FileId::default(),
            };
            let mut b = ferry_core::batch::BatchBuilder::with_origin(key, a.first_seq * 16);
            for i in a.first_seq..a.first_seq + a.count {
                b.push_line(format!("seq-{i:014}").as_bytes(), 16);
            }
            let batch = bytes::Bytes::from(b.finish(ferry_core::batch::Codec::Gzip, 1, 0).unwrap());
            let out = store.append("crash", 0, batch).await.unwrap();
            assert_eq!(
                out.stored, 0,
                "round {round}: replay of an acknowledged batch stored again"
            );
        }
        store.close().await.unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(30));
}

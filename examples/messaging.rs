//! Messaging, both ways a topic can carry messages:
//! - **point to point**: two workers in one group (`workers`) share the `tasks` queue; each task
//!   goes to exactly one of them.
//! - **chat room**: every member of the room reads the one-partition `room` topic in its own
//!   group (`chat-alice`, ...), so every member gets every message, all in the same order.
//!
//! ```sh
//! cargo run -- collector                       # in another terminal
//! cargo run --bin example-messaging -- --collector http://127.0.0.1:7070
//! ```

#[path = "common/mod.rs"]
mod common;

use anyhow::Context;
use clap::Parser;
use ferry_core::client::CollectorClient;
use ferry_core::consumer::Consumer;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    collector: String,
    /// Tasks put on the queue.
    #[arg(long, default_value_t = 40)]
    tasks: u32,
    /// Members of the chat room; each says `--says` things.
    #[arg(long, value_delimiter = ',', default_value = "alice,bob,carol")]
    members: Vec<String>,
    #[arg(long, default_value_t = 3)]
    says: u32,
}

/// One poll: appends this run's messages (their `text`) to `into`, then commits.
async fn receive(consumer: &mut Consumer, run: &str, into: &mut Vec<String>) -> anyhow::Result<()> {
    for r in consumer.poll(100).await? {
        let m: serde_json::Value = serde_json::from_slice(&r.record.line)
            .with_context(|| format!("message at offset {} is not JSON", r.offset))?;
        if m["run"] == run {
            into.push(m["text"].as_str().unwrap_or_default().to_owned());
        }
    }
    consumer.commit().await?;
    Ok(())
}

async fn post(client: &CollectorClient, topic: &str, run: &str, text: &str) -> anyhow::Result<()> {
    let m = serde_json::json!({"run": run, "text": text});
    client
        .post_lines(topic, format!("{m}\n").into_bytes(), false)
        .await
        .with_context(|| format!("posting to {topic}"))?;
    Ok(())
}

async fn point_to_point(client: &CollectorClient, run: &str, n: u32) -> anyhow::Result<()> {
    const PARTITIONS: usize = 4;
    common::ensure_topic(client, "tasks", PARTITIONS as u32).await?;
    let session = Duration::from_secs(6);
    let mut workers = [
        common::group_consumer(client, "tasks", "workers", session).await?,
        common::group_consumer(client, "tasks", "workers", session).await?,
    ];
    let mut got: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    // Let the group settle: the collector moves half the partitions to the second worker.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (a, b) = (workers[0].assignment(), workers[1].assignment());
        if a.len() + b.len() == PARTITIONS && !a.is_empty() && !b.is_empty() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the workers group did not settle in 30 s"
        );
        for (w, into) in workers.iter_mut().zip(got.iter_mut()) {
            receive(w, run, into).await?;
        }
    }
    for i in 0..n {
        post(client, "tasks", run, &format!("task-{i}")).await?;
    }
    while got[0].len() + got[1].len() < n as usize {
        anyhow::ensure!(Instant::now() < deadline, "tasks not all delivered in 30 s");
        for (w, into) in workers.iter_mut().zip(got.iter_mut()) {
            receive(w, run, into).await?;
        }
    }
    for w in workers {
        w.close().await?;
    }
    let (a, b): (BTreeSet<&String>, BTreeSet<&String>) =
        (got[0].iter().collect(), got[1].iter().collect());
    let both = a.intersection(&b).count();
    let all = a.union(&b).count();
    println!(
        "point to point: {n} tasks on `tasks`, two workers in group `workers`: worker-1 got {}, worker-2 got {}, both got {both}, missing {}",
        got[0].len(),
        got[1].len(),
        n as usize - all
    );
    anyhow::ensure!(
        both == 0 && all == n as usize && got[0].len() + got[1].len() == n as usize,
        "a task was delivered twice or not at all"
    );
    Ok(())
}

async fn chat_room(
    client: &CollectorClient,
    run: &str,
    members: &[String],
    says: u32,
) -> anyhow::Result<()> {
    // One partition: one order of messages that every member sees.
    common::ensure_topic(client, "room", 1).await?;
    let mut readers = Vec::new();
    for m in members {
        readers.push(
            common::group_consumer(client, "room", &format!("chat-{m}"), Duration::from_secs(6))
                .await?,
        );
    }
    for round in 0..says {
        for m in members {
            post(
                client,
                "room",
                run,
                &format!("{m}: message {round} from {m}"),
            )
            .await?;
        }
    }
    let total = says as usize * members.len();
    let mut seen: Vec<Vec<String>> = vec![Vec::new(); members.len()];
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.iter().any(|s| s.len() < total) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "chat messages not all delivered in 30 s"
        );
        for (r, into) in readers.iter_mut().zip(seen.iter_mut()) {
            if into.len() < total {
                receive(r, run, into).await?;
            }
        }
    }
    for r in readers {
        r.close().await?;
    }
    println!(
        "chat room: {} members each in their own group on `room` posted {total} messages; each member received:",
        members.len()
    );
    let mut ok = true;
    for (m, s) in members.iter().zip(&seen) {
        let same = *s == seen[0];
        ok &= same && s.len() == total;
        println!(
            "  {m:<6} {} messages, {}",
            s.len(),
            if same {
                "same order as the first member"
            } else {
                "DIFFERENT order"
            }
        );
    }
    println!("  transcript: {}", seen[0].join(" | "));
    anyhow::ensure!(ok, "members saw different messages");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = common::connect(&args.collector).await?;
    let run = common::run_id();
    point_to_point(&client, &run, args.tasks).await?;
    chat_room(&client, &run, &args.members, args.says).await?;
    Ok(())
}

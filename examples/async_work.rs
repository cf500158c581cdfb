//! Asynchronous work: a registration service stores the user, publishes a `user-registered`
//! event and returns at once; an e-mail consumer (group `email`) and an SMS consumer (group
//! `sms`) each handle every event later, at their own pace.
//!
//! ```sh
//! cargo run -- collector                       # in another terminal
//! cargo run --bin example-async-work -- --collector http://127.0.0.1:7070
//! ```
//!
//! Sending e-mail and SMS is simulated: a sleep (`--email-ms`, `--sms-ms`) and a line in a file.

#[path = "common/mod.rs"]
mod common;

use anyhow::Context;
use clap::Parser;
use ferry_core::client::CollectorClient;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TOPIC: &str = "user-registered";

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    collector: String,
    /// Users to register through the queue.
    #[arg(long, default_value_t = 20)]
    users: u32,
    /// Users to register inline (e-mail and SMS sent before returning), for comparison.
    #[arg(long, default_value_t = 5)]
    inline_users: u32,
    /// How long "sending" an e-mail takes (a sleep).
    #[arg(long, default_value_t = 100)]
    email_ms: u64,
    /// How long "sending" an SMS takes (a sleep).
    #[arg(long, default_value_t = 50)]
    sms_ms: u64,
    /// Where the user store and the sent e-mails and SMS are written (recreated).
    #[arg(long, default_value = "data/examples/async-work")]
    dir: PathBuf,
}

/// The registration service: owns the user store (a file) and publishes events.
struct Registration {
    client: CollectorClient,
    store: PathBuf,
    run: String,
}

impl Registration {
    /// Stores the user, publishes `user-registered`, returns. The post returns once the
    /// collector has the event on disk, so a crash after this loses no e-mail.
    async fn register(&self, id: u32) -> anyhow::Result<()> {
        let user = user(&self.run, id);
        common::append_line(&self.store, &user.to_string())?;
        self.client
            .post_lines(TOPIC, format!("{user}\n").into_bytes(), false)
            .await
            .context("publishing user-registered")?;
        Ok(())
    }

    /// The same without a queue: the caller waits for the e-mail and the SMS.
    async fn register_inline(&self, id: u32, args: &Args, dir: &Path) -> anyhow::Result<()> {
        let user = user(&self.run, id);
        common::append_line(&self.store, &user.to_string())?;
        send(
            &dir.join("inline-emails.log"),
            "email",
            &user,
            args.email_ms,
        )
        .await?;
        send(&dir.join("inline-sms.log"), "sms", &user, args.sms_ms).await?;
        Ok(())
    }
}

fn user(run: &str, id: u32) -> serde_json::Value {
    serde_json::json!({
        "run": run,
        "user": format!("user-{id}"),
        "email": format!("user-{id}@example.com"),
        "phone": format!("+1555{id:07}"),
    })
}

/// "Sends" a message: sleeps (the slow provider), then writes what was sent.
async fn send(
    path: &Path,
    channel: &str,
    user: &serde_json::Value,
    delay_ms: u64,
) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    let to = match channel {
        "email" => &user["email"],
        _ => &user["phone"],
    };
    common::append_line(
        path,
        &format!(
            "{} {channel} to {}",
            user["user"].as_str().unwrap_or("?"),
            to
        ),
    )
}

/// A notification consumer: handles every event of this run once, commits after each batch,
/// and returns when it has handled `expect` of them.
async fn notifier(
    client: CollectorClient,
    group: &'static str,
    out: PathBuf,
    delay_ms: u64,
    run: String,
    expect: u32,
) -> anyhow::Result<u32> {
    let mut consumer =
        common::group_consumer(&client, TOPIC, group, Duration::from_secs(10)).await?;
    let mut handled = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while handled < expect {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{group}: handled {handled} of {expect} events in 120 s"
        );
        for r in consumer.poll(100).await? {
            let event: serde_json::Value = serde_json::from_slice(&r.record.line)
                .with_context(|| format!("{group}: event at offset {} is not JSON", r.offset))?;
            if event["run"] != run.as_str() {
                continue; // left by an earlier run of this example
            }
            send(&out, group, &event, delay_ms).await?;
            handled += 1;
        }
        consumer.commit().await?;
    }
    consumer.close().await?;
    Ok(handled)
}

/// Lines per user in a "sent" file.
fn per_user(path: &Path) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        if let Some(u) = line.split_whitespace().next() {
            *out.entry(u.to_owned()).or_insert(0) += 1;
        }
    }
    out
}

fn mean(v: &[Duration]) -> Duration {
    v.iter().sum::<Duration>() / (v.len().max(1) as u32)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = common::connect(&args.collector).await?;
    common::ensure_topic(&client, TOPIC, 4).await?;
    common::fresh_dir(&args.dir)?;
    let run = common::run_id();
    let reg = Registration {
        client: client.clone(),
        store: args.dir.join("users.jsonl"),
        run: run.clone(),
    };

    let email = tokio::spawn(notifier(
        client.clone(),
        "email",
        args.dir.join("emails.log"),
        args.email_ms,
        run.clone(),
        args.users,
    ));
    let sms = tokio::spawn(notifier(
        client.clone(),
        "sms",
        args.dir.join("sms.log"),
        args.sms_ms,
        run.clone(),
        args.users,
    ));

    let mut queued = Vec::new();
    for id in 0..args.users {
        let t = Instant::now();
        reg.register(id).await?;
        queued.push(t.elapsed());
    }
    let mut inline = Vec::new();
    for id in args.users..args.users + args.inline_users {
        let t = Instant::now();
        reg.register_inline(id, &args, &args.dir).await?;
        inline.push(t.elapsed());
    }
    println!(
        "queued: registered {} users; mean caller latency {} (max {})",
        args.users,
        common::ms(mean(&queued)),
        common::ms(queued.iter().max().copied().unwrap_or_default())
    );
    println!(
        "inline: registered {} users sending e-mail ({} ms) and SMS ({} ms, both simulated with a sleep) before returning; mean caller latency {}",
        args.inline_users,
        args.email_ms,
        args.sms_ms,
        common::ms(mean(&inline))
    );

    let emails = email.await.context("e-mail consumer")??;
    let sms = sms.await.context("SMS consumer")??;
    let mut ok = true;
    for (group, handled, file) in [("email", emails, "emails.log"), ("sms", sms, "sms.log")] {
        let sent = per_user(&args.dir.join(file));
        let once = sent.len() == args.users as usize && sent.values().all(|&n| n == 1);
        ok &= once;
        println!(
            "{group} consumer (group {group}): handled {handled} events; {} users got exactly one {}: {}",
            sent.values().filter(|&&n| n == 1).count(),
            if group == "email" { "e-mail" } else { "SMS" },
            if once { "yes" } else { "NO" },
        );
    }
    println!("files: {}", args.dir.display());
    anyhow::ensure!(ok, "some user did not get exactly one e-mail and one SMS");
    Ok(())
}

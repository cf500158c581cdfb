//! Buffering a flood: a flash sale sends a burst of orders far faster than fulfilment can
//! handle them. The `flash-sale` topic (collector config: `max_records`) absorbs what it can
//! hold; the rest is refused with 429 and a message saying why, and counted, never dropped
//! silently. Fulfilment (group `fulfilment`) works through the accepted orders in order.
//!
//! ```sh
//! cargo run -- collector --config examples/collector.yaml      # flash-sale: max_records 1000
//! cargo run --bin example-flash-sale -- --collector http://127.0.0.1:7070
//! ```
//!
//! `max_records` counts the records a topic holds, consumed or not: run this on a fresh
//! collector (or wait for retention) each time.

#[path = "common/mod.rs"]
mod common;

use anyhow::Context;
use clap::Parser;
use ferry_core::client::{ClientError, CollectorClient};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "flash-sale";

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    collector: String,
    /// Orders in the burst.
    #[arg(long, default_value_t = 3000)]
    orders: u32,
    /// Buyers sending at once; each sends its orders one after another.
    #[arg(long, default_value_t = 16)]
    buyers: u32,
    /// Fulfilment time per order (a sleep): the consumer's capacity.
    #[arg(long, default_value_t = 1)]
    fulfil_ms: u64,
    /// Where accepted and fulfilled orders are listed (recreated).
    #[arg(long, default_value = "data/examples/flash-sale")]
    dir: PathBuf,
}

#[derive(Default)]
struct Tally {
    accepted: Vec<String>,
    refused: u64,
    /// The first refusal, as the collector worded it.
    first_refusal: Option<String>,
}

/// One buyer: sends its orders one at a time, as fast as the collector answers. A refused
/// order is not retried (sold out is sold out), only counted.
async fn buyer(
    client: CollectorClient,
    run: String,
    buyer: u32,
    orders: Vec<u32>,
    tally: Arc<Mutex<Tally>>,
) -> anyhow::Result<()> {
    for seq in orders {
        let id = format!("b{buyer}-{seq}");
        let line = serde_json::json!({"run": run, "order": id, "buyer": buyer, "seq": seq});
        let result = client
            .post_lines(TOPIC, format!("{line}\n").into_bytes(), false)
            .await;
        // The lock is never held across an await.
        let mut t = tally
            .lock()
            .map_err(|_| anyhow::anyhow!("tally poisoned"))?;
        match result {
            Ok(_) => t.accepted.push(id),
            Err(ClientError::Http {
                status: 429,
                message,
                retry_after,
            }) => {
                t.refused += 1;
                t.first_refusal.get_or_insert_with(|| {
                    format!(
                        "429 Too Many Requests, Retry-After {:?}: {message}",
                        retry_after.unwrap_or_default()
                    )
                });
            }
            Err(e) => return Err(e).context(format!("order {id}")),
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = common::connect(&args.collector).await?;
    let held = client.topic(TOPIC).await?.map(|t| t.records).context(
        "the collector has no flash-sale topic: start it with --config examples/collector.yaml",
    )?;
    anyhow::ensure!(
        held == 0,
        "flash-sale already holds {held} records and max_records counts them until retention \
         removes them: run this example on a fresh collector (a new --data-dir)"
    );
    common::fresh_dir(&args.dir)?;
    let run = common::run_id();
    let fulfilled_path = args.dir.join("fulfilled.log");
    let mut consumer =
        common::group_consumer(&client, TOPIC, "fulfilment", Duration::from_secs(10)).await?;

    // The burst.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let mut buyers = tokio::task::JoinSet::new();
    for b in 0..args.buyers {
        let orders: Vec<u32> = (0..args.orders).filter(|i| i % args.buyers == b).collect();
        buyers.spawn(buyer(client.clone(), run.clone(), b, orders, tally.clone()));
    }
    // Fulfilment runs meanwhile, at its own pace.
    let mut fulfilled = 0usize;
    let mut burst_secs = None;
    loop {
        while let Some(done) = buyers.try_join_next() {
            done.context("buyer task")??;
        }
        if burst_secs.is_none() && buyers.is_empty() {
            burst_secs = Some(started.elapsed().as_secs_f64());
        }
        let accepted = tally
            .lock()
            .map_err(|_| anyhow::anyhow!("tally poisoned"))?
            .accepted
            .len();
        if buyers.is_empty() && fulfilled == accepted {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "fulfilled {fulfilled} of {accepted} accepted orders in 120 s"
        );
        for r in consumer.poll(100).await? {
            let order: serde_json::Value = serde_json::from_slice(&r.record.line)?;
            anyhow::ensure!(
                order["run"] == run.as_str(),
                "a foreign record in flash-sale"
            );
            tokio::time::sleep(Duration::from_millis(args.fulfil_ms)).await;
            common::append_line(
                &fulfilled_path,
                &format!("{} {}", r.offset, order["order"].as_str().unwrap_or("?")),
            )?;
            fulfilled += 1;
        }
        consumer.commit().await?;
    }
    let total = started.elapsed().as_secs_f64();
    consumer.close().await?;

    let t = tally
        .lock()
        .map_err(|_| anyhow::anyhow!("tally poisoned"))?;
    std::fs::write(args.dir.join("accepted.log"), t.accepted.join("\n") + "\n")?;
    let burst = burst_secs.unwrap_or(total);
    println!(
        "burst: {} orders from {} buyers in {burst:.2} s ({:.0} orders/s)",
        args.orders,
        args.buyers,
        f64::from(args.orders) / burst.max(1e-9)
    );
    println!(
        "sent {}: accepted {}, refused {}",
        args.orders,
        t.accepted.len(),
        t.refused
    );
    if let Some(m) = &t.first_refusal {
        println!("refusal: {m}");
    }
    println!(
        "fulfilment ({} ms per order, simulated with a sleep): {fulfilled} orders in log order, done {:.2} s after the burst began",
        args.fulfil_ms, total
    );
    println!("files: {}", args.dir.display());
    anyhow::ensure!(
        t.accepted.len() as u64 + t.refused == u64::from(args.orders),
        "accepted + refused != sent"
    );
    Ok(())
}

//! Decoupling: an order service publishes orders to the `orders` topic; an inventory service
//! (group `inventory`, a separate process) takes stock off for each. The inventory service is
//! killed (SIGKILL) while orders keep coming; orders are still accepted at once, they wait in
//! the topic, and the restarted inventory service catches up: no order lost, none counted twice.
//!
//! ```sh
//! cargo run -- collector                       # in another terminal
//! cargo run --bin example-decoupling -- --collector http://127.0.0.1:7070
//! ```

#[path = "common/mod.rs"]
mod common;

use anyhow::Context;
use clap::Parser;
use ferry_core::client::CollectorClient;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOPIC: &str = "orders";
const GROUP: &str = "inventory";
const SKUS: [&str; 3] = ["widget", "gadget", "gizmo"];
/// Short, so a killed inventory member's partitions move to its successor quickly.
const SESSION: Duration = Duration::from_secs(2);

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    collector: String,
    /// Orders placed while the inventory service runs, then again while it is down.
    #[arg(long, default_value_t = 30)]
    orders_up: u32,
    #[arg(long, default_value_t = 60)]
    orders_down: u32,
    /// Initial stock of each product.
    #[arg(long, default_value_t = 1000)]
    initial: i64,
    /// Where the inventory keeps its state (recreated).
    #[arg(long, default_value = "data/examples/decoupling")]
    dir: PathBuf,
    /// Internal: run as the inventory service of run RUN.
    #[arg(long, hide = true)]
    inventory_for_run: Option<String>,
}

/// The inventory service's state: stock per product and the orders already applied. Written
/// atomically after each batch and before the batch is committed, so after a kill -9 the
/// orders replayed from the last commit are recognised and skipped, not applied twice.
#[derive(Default, Serialize, Deserialize)]
struct Inventory {
    stock: BTreeMap<String, i64>,
    applied: BTreeSet<String>,
}

impl Inventory {
    fn load(path: &Path, initial: i64) -> anyhow::Result<Self> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self {
                stock: SKUS.iter().map(|s| (s.to_string(), initial)).collect(),
                applied: BTreeSet::new(),
            }),
            Err(e) => Err(e).with_context(|| format!("{}", path.display())),
        }
    }

    /// temp file + fsync + rename: the state on disk is always a whole one.
    fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(self)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

/// The inventory service (a child process): applies this run's orders until stdin closes.
async fn inventory_service(args: &Args, run: &str) -> anyhow::Result<()> {
    let client = common::connect(&args.collector).await?;
    let path = args.dir.join("inventory.json");
    let mut inv = Inventory::load(&path, args.initial)?;
    let mut consumer = common::group_consumer(&client, TOPIC, GROUP, SESSION).await?;
    // The parent closes our stdin to stop us cleanly.
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _ = stop_tx.send(());
    });
    let mut replayed = 0;
    loop {
        if stop.try_recv().is_ok() {
            break;
        }
        let records = consumer.poll(500).await?;
        if records.is_empty() {
            continue;
        }
        for r in records {
            let order: serde_json::Value = serde_json::from_slice(&r.record.line)
                .with_context(|| format!("order at offset {} is not JSON", r.offset))?;
            if order["run"] != run {
                continue;
            }
            let id = order["order"].as_str().unwrap_or_default().to_owned();
            if !inv.applied.insert(id) {
                replayed += 1;
                continue;
            }
            let sku = order["sku"].as_str().unwrap_or_default().to_owned();
            *inv.stock.entry(sku).or_insert(args.initial) -= order["qty"].as_i64().unwrap_or(0);
        }
        inv.save(&path)?;
        consumer.commit().await?;
    }
    consumer.close().await?;
    if replayed > 0 {
        println!("[inventory] skipped {replayed} orders replayed after the kill (already applied)");
    }
    Ok(())
}

fn start_inventory(args: &Args, run: &str) -> anyhow::Result<common::ChildGuard> {
    let child = Command::new(std::env::current_exe()?)
        .args(["--collector", &args.collector, "--dir"])
        .arg(&args.dir)
        .args(["--initial", &args.initial.to_string()])
        .args(["--inventory-for-run", run])
        .stdin(Stdio::piped())
        .spawn()
        .context("starting the inventory service")?;
    Ok(common::ChildGuard::new("inventory", child))
}

/// Orders applied so far, read from the inventory's state file.
fn applied(path: &Path) -> usize {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Inventory>(&b).ok())
        .map_or(0, |i| i.applied.len())
}

async fn wait_applied(path: &Path, n: usize, inv: &mut common::ChildGuard) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while applied(path) < n {
        if let Some(status) = inv.exited() {
            anyhow::bail!("the inventory service exited: {status}");
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "inventory applied {} of {n} orders in 60 s",
            applied(path)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The order service: places `n` orders, returns the placed orders and the mean latency.
async fn place_orders(
    client: &CollectorClient,
    run: &str,
    from: u32,
    n: u32,
    ordered: &mut BTreeMap<String, i64>,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    for i in from..from + n {
        let sku = SKUS[(i as usize * 7) % SKUS.len()];
        let qty = i64::from(1 + i % 5);
        let order = serde_json::json!({
            "run": run, "order": format!("order-{i}"), "sku": sku, "qty": qty,
            "customer_id": format!("c{}", i % 11),
        });
        client
            .post_lines(TOPIC, format!("{order}\n").into_bytes(), false)
            .await
            .with_context(|| format!("placing order-{i}"))?;
        *ordered.entry(sku.to_owned()).or_default() += qty;
    }
    Ok(t.elapsed() / n.max(1))
}

/// Records of the `inventory` group not yet committed.
async fn lag(client: &CollectorClient) -> anyhow::Result<u64> {
    let committed: BTreeMap<u32, u64> = client
        .committed(GROUP)
        .await?
        .into_iter()
        .filter(|c| c.topic == TOPIC)
        .map(|c| (c.partition, c.offset))
        .collect();
    let info = client
        .topic(TOPIC)
        .await?
        .context("orders topic vanished")?;
    Ok(info
        .partitions
        .iter()
        .map(|p| {
            p.end_offset
                .saturating_sub(committed.get(&p.partition).copied().unwrap_or(p.log_start))
        })
        .sum())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(run) = &args.inventory_for_run {
        return inventory_service(&args, run).await;
    }
    common::interruptible(scenario(args)).await
}

async fn scenario(args: Args) -> anyhow::Result<()> {
    let client = common::connect(&args.collector).await?;
    common::ensure_topic(&client, TOPIC, 4).await?;
    common::fresh_dir(&args.dir)?;
    let run = common::run_id();
    let state = args.dir.join("inventory.json");
    let mut ordered: BTreeMap<String, i64> = BTreeMap::new();

    let mut inv = start_inventory(&args, &run)?;
    let up = place_orders(&client, &run, 0, args.orders_up, &mut ordered).await?;
    wait_applied(&state, args.orders_up as usize, &mut inv).await?;
    println!(
        "1. inventory up: placed {} orders (mean {} each), inventory applied them",
        args.orders_up,
        common::ms(up)
    );

    inv.kill9();
    let down = place_orders(
        &client,
        &run,
        args.orders_up,
        args.orders_down,
        &mut ordered,
    )
    .await?;
    println!(
        "2. inventory killed (SIGKILL): placed {} more orders (mean {} each), all accepted; they wait in the topic (group {GROUP} lag: {} records)",
        args.orders_down,
        common::ms(down),
        lag(&client).await?
    );

    let t = Instant::now();
    let mut inv = start_inventory(&args, &run)?;
    let total = (args.orders_up + args.orders_down) as usize;
    wait_applied(&state, total, &mut inv).await?;
    println!(
        "3. inventory restarted: caught up with all {total} orders in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Close its stdin: it commits, leaves the group and exits.
    if let Some(c) = inv.child.as_mut() {
        drop(c.stdin.take());
        let status = c.wait()?;
        inv.child = None;
        anyhow::ensure!(
            status.success(),
            "the inventory service exited with {status}"
        );
    }

    let final_state = Inventory::load(&state, args.initial)?;
    let mut ok = final_state.applied.len() == total;
    for sku in SKUS {
        let want = args.initial - ordered.get(sku).copied().unwrap_or(0);
        let got = final_state.stock.get(sku).copied().unwrap_or(args.initial);
        ok &= want == got;
        println!(
            "   {sku:<7} stock {got:>5} = initial {} - ordered {} {}",
            args.initial,
            ordered.get(sku).copied().unwrap_or(0),
            if want == got { "ok" } else { "WRONG" }
        );
    }
    anyhow::ensure!(ok, "stock does not match the orders placed");
    println!("no order lost, none applied twice");
    Ok(())
}

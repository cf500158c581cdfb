//! `ferry topics`, `ferry groups` and `ferry agents`: what the collector holds and who ships
//! to it, as a table or JSON.

use ferry_core::client::CollectorClient;

pub async fn topics(client: &CollectorClient, json: bool) -> anyhow::Result<()> {
    let topics = client.topics().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&topics)?);
        return Ok(());
    }
    println!(
        "{:<32} {:>10} {:>14} {:>14}",
        "TOPIC", "PARTITIONS", "RECORDS", "BYTES"
    );
    for t in topics {
        println!(
            "{:<32} {:>10} {:>14} {:>14}",
            t.name,
            t.partitions.len(),
            t.records,
            t.size_bytes
        );
    }
    Ok(())
}

/// `ferry topics delete T`: deletes the topic and its records.
pub async fn delete_topic(client: &CollectorClient, topic: &str) -> anyhow::Result<()> {
    ferry_core::topic::validate_name(topic).map_err(crate::cli::UsageError)?;
    client.delete_topic(topic).await?;
    eprintln!("ferry topics: deleted {topic}");
    Ok(())
}

pub async fn groups(client: &CollectorClient, json: bool) -> anyhow::Result<()> {
    let groups = client.groups().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&groups)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>7} {:<24} {:>9} {:>12} {:>12} {:>10} {:>9}",
        "GROUP", "MEMBERS", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "LAG_SECS"
    );
    for g in groups {
        let members = g.members.len();
        if g.partitions.is_empty() {
            println!(
                "{:<24} {members:>7} {:<24} {:>9} {:>12} {:>12} {:>10} {:>9}",
                g.group, "-", "-", "-", "-", "-", "-"
            );
        }
        for p in &g.partitions {
            println!(
                "{:<24} {:>7} {:<24} {:>9} {:>12} {:>12} {:>10} {:>9.1}",
                g.group,
                members,
                p.topic,
                p.partition,
                p.committed,
                p.end_offset,
                p.lag_records,
                p.lag_seconds
            );
        }
    }
    Ok(())
}

pub async fn agents(client: &CollectorClient, json: bool) -> anyhow::Result<()> {
    let agents = client.agents().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&agents)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<20} {:<8} {:>9} {:>6} {:>12} {:>14} {:>12} {:>8}  COLLECTOR",
        "AGENT",
        "HOST",
        "STATUS",
        "SILENT_S",
        "FILES",
        "LINES_READ",
        "RECORDS_ACKED",
        "BEHIND",
        "DROPPED"
    );
    for a in agents {
        let r = &a.report;
        println!(
            "{:<24} {:<20} {:<8} {:>9.1} {:>6} {:>12} {:>14} {:>12} {:>8}  {}",
            a.id,
            r.host,
            a.status.as_str(),
            a.silent_seconds,
            r.files_total,
            r.lines_read,
            r.records_acked,
            r.bytes_behind,
            r.drops.values().sum::<u64>(),
            r.collector
        );
    }
    Ok(())
}

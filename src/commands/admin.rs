//! `ferry topics` and `ferry groups`: what the collector holds, as a table or JSON.

use ferry_core::client::CollectorClient;

fn client(url: &str) -> anyhow::Result<CollectorClient> {
    CollectorClient::new(url).map_err(|e| crate::cli::UsageError(e.to_string()).into())
}

pub async fn topics(url: &str, json: bool) -> anyhow::Result<()> {
    let topics = client(url)?.topics().await?;
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
pub async fn delete_topic(url: &str, topic: &str) -> anyhow::Result<()> {
    ferry_core::topic::validate_name(topic).map_err(crate::cli::UsageError)?;
    client(url)?.delete_topic(topic).await?;
    eprintln!("ferry topics: deleted {topic}");
    Ok(())
}

pub async fn groups(url: &str, json: bool) -> anyhow::Result<()> {
    let groups = client(url)?.groups().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&groups)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>7} {:<24} {:>9} {:>12} {:>12} {:>10} {:>9}",
        "GROUP", "MEMBERS", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "LAG_SECS"
    );
    for g in groups.as_array().into_iter().flatten() {
        let name = g["group"].as_str().unwrap_or("");
        let members = g["members"].as_array().map_or(0, Vec::len);
        let parts = g["partitions"].as_array().cloned().unwrap_or_default();
        if parts.is_empty() {
            println!(
                "{name:<24} {members:>7} {:<24} {:>9} {:>12} {:>12} {:>10} {:>9}",
                "-", "-", "-", "-", "-", "-"
            );
        }
        for p in parts {
            println!(
                "{:<24} {:>7} {:<24} {:>9} {:>12} {:>12} {:>10} {:>9.1}",
                name,
                members,
                p["topic"].as_str().unwrap_or(""),
                p["partition"].to_string(),
                p["committed"].to_string(),
                p["end_offset"].to_string(),
                p["lag_records"].to_string(),
                p["lag_seconds"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

//! Test helper for the store's crash test (`tests/store_crash.rs`): appends numbered records to
//! a store as fast as it can and prints one line per acknowledged batch, so the test can kill
//! it with SIGKILL at a random moment and check every acknowledged record after reopening.
//!
//! Usage: `store-crash-writer DIR START_SEQ`. Output lines: `ack PARTITION BASE_OFFSET FIRST_SEQ COUNT`.
//! Records are lines `seq-N`; batches carry origin (agent `crash`, inode = partition) with file
//! offsets `N * 16`, so a replayed batch is recognised by dedup.

use bytes::Bytes;
use ferry_collector::store::{Store, StoreConfig};
use ferry_core::batch::{BatchBuilder, Codec};
use ferry_core::config::ByteSize;
use ferry_core::record::{FileId, OriginKey};
use std::io::Write;

const PARTITIONS: u32 = 2;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: store-crash-writer DIR START_SEQ")?;
    let start: u64 = args.next().ok_or("missing START_SEQ")?.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let cfg = StoreConfig {
            segment_bytes: ByteSize::kib(64),
            ..StoreConfig::default()
        };
        let store = Store::open(std::path::Path::new(&dir), cfg)?;
        store.create_topic("crash", PARTITIONS)?;
        let mut tasks = Vec::new();
        for p in 0..PARTITIONS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let key = OriginKey {
                    agent_id: "crash".into(),
                    file: FileId {
                        inode: u64::from(p),
                        ..FileId::default()
                    },
                };
                let mut seq = start;
                loop {
                    let n = 1 + seq % 7;
                    let mut b = BatchBuilder::with_origin(key.clone(), seq * 16);
                    for i in seq..seq + n {
                        let line = format!("seq-{i:014}");
                        b.push_line(line.as_bytes(), 16);
                    }
                    let batch = Bytes::from(b.finish(Codec::Gzip, 1, 0)?);
                    let out = store.append("crash", p, batch).await?;
                    let mut stdout = std::io::stdout().lock();
                    writeln!(stdout, "ack {p} {} {seq} {}", out.base_offset, out.stored)?;
                    stdout.flush()?;
                    seq += n;
                }
                #[allow(unreachable_code)]
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    })
    .map_err(|e| e.to_string())?;
    Ok(())
}

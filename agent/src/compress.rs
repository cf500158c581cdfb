//! Compression workers: encode (and gzip) sealed batches off the reading thread, so reading and
//! compressing use both cores.
//!
//! The reader deals its output round robin to N worker threads, each with a small bounded
//! channel, and the shipper collects from the workers' output channels in the same round-robin
//! order: the reader's order is kept without a reorder buffer. Checkpoint facts (positions,
//! releases) travel the same way so they stay in order with the batches. What travels is a
//! group: the items of one reader turn up to about a full batch's bytes, so that a thousand
//! files' small batches cost a few hundred hand-offs (and thread wake-ups), not a thousand;
//! one file's full batches still go one to a group, spread over the workers.

use crate::batcher::BuilderPool;
use crate::shipper::Shipment;
use crate::tail::Emitted;
use bytes::Bytes;
use ferry_core::batch::Codec;
use std::sync::mpsc::Receiver;
use tokio::sync::mpsc::Sender;

/// One worker's loop; returns when the reader hangs up or the shipper is gone.
pub fn run_worker(
    rx: Receiver<Vec<Emitted>>,
    tx: Sender<Vec<Shipment>>,
    codec: Codec,
    level: u32,
    pool: BuilderPool,
) {
    for group in rx {
        let shipments = group
            .into_iter()
            .map(|item| encode(item, codec, level, &pool))
            .collect();
        if tx.blocking_send(shipments).is_err() {
            return;
        }
    }
}

/// Encodes one batch (or passes a checkpoint fact through).
pub fn encode(item: Emitted, codec: Codec, level: u32, pool: &BuilderPool) -> Shipment {
    match item {
        Emitted::Batch {
            input,
            state,
            batch,
        } => {
            let mut out = Vec::with_capacity(match codec {
                Codec::None => batch.builder.raw_len() + 256,
                Codec::Gzip => batch.builder.raw_len() / 3 + 256,
                // lz4 compresses into a buffer of its worst-case size, then truncates.
                Codec::Lz4 => batch.builder.raw_len() + batch.builder.raw_len() / 255 + 512,
            });
            let encoded = batch
                .builder
                .finish_into(codec, level, ferry_core::now_ms(), &mut out)
                .map(|()| {
                    // A batch waits in memory until acknowledged: hold only what it needs.
                    if out.capacity() > out.len() + out.len() / 4 + 4096 {
                        out.shrink_to_fit();
                    }
                    Bytes::from(out)
                })
                .map_err(|e| e.to_string());
            let shipment = Shipment::Batch {
                input,
                state,
                first_offset: batch.first_offset,
                end_offset: batch.end_offset,
                records: batch.records,
                encoded,
            };
            pool.put(batch.builder);
            shipment
        }
        Emitted::Position { state, offset } => Shipment::Position { state, offset },
        Emitted::Released { key, lane } => Shipment::Released { key, lane },
        Emitted::CopyResolved {
            key,
            lane,
            origin,
            lost,
            input,
            path,
        } => Shipment::CopyResolved {
            key,
            lane,
            origin,
            lost,
            input,
            path,
        },
    }
}

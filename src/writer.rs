//! Write-behind: fetched blocks reach their object's cache file from one writer at a time,
//! off the network tasks.
//!
//! Invariants:
//! - At most one writer drains an object's queue, in arrival order. Concurrent writes to one
//!   file only queue on its inode lock (ext4 spins on it), which cost a fifth of the CPU of a
//!   cold sequential read.
//! - Every queued block holds `write_behind` permits until it is written or given up, so the
//!   bytes waiting for the disk are bounded globally: a slow disk slows the fetches feeding
//!   it instead of filling memory.
//! - A queued block's flight is finished by the writer (unless readers already got the bytes):
//!   readers that arrive meanwhile wait for it, and are handed the bytes before the write if
//!   they do. A write dropped unwritten still finishes its flight, with the bytes.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cache::Cache;
use crate::object::{Delivered, Flight, Object};
use crate::readahead::BudgetHold;

/// Unit of the write-behind semaphore: permits are counted in pages, not bytes, to fit `u32`.
const PERMIT_BYTES: u64 = 4096;
/// Bytes of fetched blocks that may wait for the disk at once (at least four blocks).
pub const WRITE_BEHIND_BYTES: u64 = 64 << 20;

/// The global bound on bytes waiting to be written.
pub struct WriteBehind {
    permits: Arc<Semaphore>,
    total: u32,
}

impl WriteBehind {
    pub fn new(block_size: u64) -> WriteBehind {
        let bytes = WRITE_BEHIND_BYTES.max(4 * block_size);
        let total = u32::try_from(bytes / PERMIT_BYTES).unwrap_or(u32::MAX);
        WriteBehind {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits until `bytes` more may be queued. A block bigger than the whole bound (an object
    /// cached with an older, larger block size) waits for the queue to empty instead.
    async fn reserve(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let wanted = u32::try_from(bytes.div_ceil(PERMIT_BYTES))
            .unwrap_or(u32::MAX)
            .min(self.total);
        self.permits.clone().acquire_many_owned(wanted).await.ok()
    }
}

/// One fetched block waiting for the disk.
pub struct PendingWrite {
    /// Weak: the write sits in its object's own queue.
    pub object: Weak<Object>,
    pub block: u64,
    pub pieces: Vec<Bytes>,
    /// The flight that owns the block; `None` for blocks beyond the fetched run (a whole
    /// object sent by an origin that ignored Range).
    pub flight: Option<Arc<Flight<Delivered>>>,
    /// Read-ahead budget the block holds while it is in memory.
    pub budget: Option<BudgetHold>,
}

/// An object's blocks waiting for the disk, and whether a writer is draining them.
#[derive(Default)]
pub struct WriteQueue {
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    pending: VecDeque<(PendingWrite, Option<OwnedSemaphorePermit>)>,
    writer_running: bool,
}

impl WriteQueue {
    /// Adds a write; returns whether the caller must start the writer.
    fn push(&self, write: PendingWrite, permit: Option<OwnedSemaphorePermit>) -> bool {
        let mut state = self.state.lock();
        state.pending.push_back((write, permit));
        !std::mem::replace(&mut state.writer_running, true)
    }

    /// The next write, or `None` after marking the writer stopped (atomically with the check,
    /// so a write pushed concurrently always finds a writer).
    fn next(&self) -> Option<(PendingWrite, Option<OwnedSemaphorePermit>)> {
        let mut state = self.state.lock();
        let next = state.pending.pop_front();
        if next.is_none() {
            state.writer_running = false;
        }
        next
    }
}

/// Queues a block for its cache file, waiting first if too many bytes are queued already.
pub async fn queue(cache: &Arc<Cache>, object: &Arc<Object>, write: PendingWrite) {
    let bytes = write.pieces.iter().map(|p| p.len() as u64).sum();
    let permit = cache.write_behind.reserve(bytes).await;
    if object.writes.push(write, permit) {
        let (cache, object) = (cache.clone(), object.clone());
        tokio::task::spawn_blocking(move || drain(&cache, &object));
    }
}

fn drain(cache: &Cache, object: &Arc<Object>) {
    while let Some((write, permit)) = object.writes.next() {
        write_one(cache, object, write);
        drop(permit);
    }
}

fn write_one(cache: &Cache, object: &Arc<Object>, mut write: PendingWrite) {
    let (block, pieces) = (write.block, std::mem::take(&mut write.pieces));
    let Some(flight) = write.flight.take() else {
        object.store_block(&cache.index, block, &pieces, None);
        return;
    };
    // Readers that came while the block waited get it now rather than after the write.
    if flight.has_waiters() && !flight.is_finished() {
        flight.finish(Ok(Delivered::Data(concat(&pieces))));
    }
    if object
        .store_block(&cache.index, block, &pieces, Some(&flight))
        .is_some()
    {
        flight.finish(Ok(Delivered::Stored));
    } else {
        // Not cached (cap, full disk, object evicted): serve the bytes and let the next
        // reader fetch the block again.
        flight.finish(Ok(Delivered::Data(concat(&pieces))));
        object.abandon(block, &flight);
    }
}

impl Drop for PendingWrite {
    /// A write dropped unwritten (the runtime shutting down) must not leave its readers
    /// waiting: they get the bytes if any, and the block goes back to absent.
    fn drop(&mut self) {
        let Some(flight) = self.flight.take() else {
            return;
        };
        flight.finish(Ok(Delivered::Data(concat(&self.pieces))));
        if let Some(object) = self.object.upgrade() {
            object.abandon(self.block, &flight);
        }
    }
}

/// One contiguous buffer for a block's pieces (a copy only when there are several).
pub fn concat(pieces: &[Bytes]) -> Bytes {
    match pieces {
        [one] => one.clone(),
        many => Bytes::from(many.concat()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(block: u64) -> PendingWrite {
        PendingWrite {
            object: Weak::new(),
            block,
            pieces: vec![Bytes::from_static(b"block")],
            flight: None,
            budget: None,
        }
    }

    #[test]
    fn exactly_one_writer_drains_in_arrival_order() {
        let queue = WriteQueue::default();
        assert!(
            queue.push(write(1), None),
            "the first write starts a writer"
        );
        assert!(
            !queue.push(write(2), None),
            "a running writer takes later writes"
        );
        assert_eq!(queue.next().map(|(w, _)| w.block), Some(1));
        assert_eq!(queue.next().map(|(w, _)| w.block), Some(2));
        assert!(queue.next().is_none());
        assert!(
            queue.push(write(3), None),
            "an empty queue has no writer left"
        );
    }

    #[test]
    fn a_dropped_write_still_gives_its_readers_the_bytes() {
        let flight = Flight::new();
        let mut pending = write(0);
        pending.flight = Some(flight.clone());
        drop(pending);
        let delivered = block_on(flight.wait());
        assert!(matches!(delivered, Ok(Delivered::Data(bytes)) if &bytes[..] == b"block"));
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(future)
    }
}

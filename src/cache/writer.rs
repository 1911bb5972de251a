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
//!
//! The writer knows objects only through the [`BlockSink`] trait it owns.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use crate::base::sync::Mutex;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::blocks::Delivered;
use super::readahead::BudgetHold;
use crate::base::flight::Flight;

/// Where queued blocks go: the object they belong to.
pub trait BlockSink: Send + Sync + Sized + 'static {
    /// Writes a block to the cache if it can; `claim` is the flight that owns the block
    /// (without one, the block must be absent). Returns whether it is now cached.
    fn store(
        self: &Arc<Self>,
        block: u64,
        pieces: &[Bytes],
        claim: Option<&Arc<Flight<Delivered>>>,
    ) -> bool;
    /// Gives up a block whose write failed or was dropped: the next reader fetches it.
    fn abandon(&self, block: u64, flight: &Arc<Flight<Delivered>>);
    /// This sink's queue of blocks waiting for the disk.
    fn writes(&self) -> &WriteQueue<Self>;
}

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

    /// Whether no fetched block waits for the disk.
    pub fn is_idle(&self) -> bool {
        self.permits.available_permits() >= self.total as usize
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
pub struct PendingWrite<S: BlockSink> {
    /// Weak: the write sits in its object's own queue.
    pub object: Weak<S>,
    pub block: u64,
    pub pieces: Vec<Bytes>,
    /// The flight that owns the block; `None` for blocks beyond the fetched run (a whole
    /// object sent by an origin that ignored Range).
    pub flight: Option<Arc<Flight<Delivered>>>,
    /// Read-ahead budget the block holds while it is in memory (given back on drop).
    pub _budget: Option<BudgetHold>,
}

/// An object's blocks waiting for the disk, and whether a writer is draining them.
pub struct WriteQueue<S: BlockSink> {
    state: Mutex<QueueState<S>>,
}

impl<S: BlockSink> Default for WriteQueue<S> {
    fn default() -> Self {
        WriteQueue {
            state: Mutex::new(QueueState {
                pending: VecDeque::new(),
                writer_running: false,
            }),
        }
    }
}

struct QueueState<S: BlockSink> {
    pending: VecDeque<(PendingWrite<S>, Option<OwnedSemaphorePermit>)>,
    writer_running: bool,
}

impl<S: BlockSink> WriteQueue<S> {
    /// Adds a write; returns whether the caller must start the writer.
    fn push(&self, write: PendingWrite<S>, permit: Option<OwnedSemaphorePermit>) -> bool {
        let mut state = self.state.lock();
        state.pending.push_back((write, permit));
        !std::mem::replace(&mut state.writer_running, true)
    }

    /// The next write, or `None` after marking the writer stopped (atomically with the check,
    /// so a write pushed concurrently always finds a writer).
    fn next(&self) -> Option<(PendingWrite<S>, Option<OwnedSemaphorePermit>)> {
        let mut state = self.state.lock();
        let next = state.pending.pop_front();
        if next.is_none() {
            state.writer_running = false;
        }
        next
    }
}

/// Queues a block for its cache file, waiting first if too many bytes are queued already.
pub async fn queue<S: BlockSink>(bound: &WriteBehind, sink: &Arc<S>, write: PendingWrite<S>) {
    let bytes = write.pieces.iter().map(|p| p.len() as u64).sum();
    let permit = bound.reserve(bytes).await;
    if sink.writes().push(write, permit) {
        let sink = sink.clone();
        tokio::task::spawn_blocking(move || drain(&sink));
    }
}

fn drain<S: BlockSink>(sink: &Arc<S>) {
    while let Some((write, permit)) = sink.writes().next() {
        write_one(sink, write);
        drop(permit);
    }
}

fn write_one<S: BlockSink>(sink: &Arc<S>, mut write: PendingWrite<S>) {
    let (block, pieces) = (write.block, std::mem::take(&mut write.pieces));
    let Some(flight) = write.flight.take() else {
        sink.store(block, &pieces, None);
        return;
    };
    // Readers that came while the block waited get it now rather than after the write.
    if flight.has_waiters() && !flight.is_finished() {
        flight.finish(Ok(Delivered::Data(concat(&pieces))));
    }
    if sink.store(block, &pieces, Some(&flight)) {
        flight.finish(Ok(Delivered::Stored));
    } else {
        // Not cached (cap, full disk, object evicted): serve the bytes and let the next
        // reader fetch the block again.
        flight.finish(Ok(Delivered::Data(concat(&pieces))));
        sink.abandon(block, &flight);
    }
}

impl<S: BlockSink> Drop for PendingWrite<S> {
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
    use proptest::prelude::*;

    /// A sink that stores nothing; the tests drive its queue by hand.
    #[derive(Default)]
    struct NullSink {
        writes: WriteQueue<NullSink>,
    }

    impl BlockSink for NullSink {
        fn store(
            self: &Arc<Self>,
            _: u64,
            _: &[Bytes],
            _: Option<&Arc<Flight<Delivered>>>,
        ) -> bool {
            false
        }
        fn abandon(&self, _: u64, _: &Arc<Flight<Delivered>>) {}
        fn writes(&self) -> &WriteQueue<Self> {
            &self.writes
        }
    }

    fn write(block: u64) -> PendingWrite<NullSink> {
        PendingWrite {
            object: Weak::new(),
            block,
            pieces: vec![Bytes::from_static(b"block")],
            flight: None,
            _budget: None,
        }
    }

    /// Under shuttle's scheduler (feature `shuttle`), many interleavings of two producers and
    /// the drainers their pushes start: never two writers at once, every write handled once,
    /// each producer's writes in the order it pushed them.
    #[cfg(feature = "shuttle")]
    #[test]
    fn shuttle_the_queue_has_exactly_one_writer_and_loses_nothing() {
        use shuttle::sync::atomic::{AtomicBool, Ordering};
        shuttle::check_random(
            || {
                let sink = Arc::new(NullSink::default());
                let writing = Arc::new(AtomicBool::new(false));
                let seen = Arc::new(Mutex::new(Vec::new()));
                let drainers = Arc::new(Mutex::new(Vec::new()));
                let producers: Vec<_> = (0..2u64)
                    .map(|p| {
                        let (sink, writing) = (sink.clone(), writing.clone());
                        let (seen, drainers) = (seen.clone(), drainers.clone());
                        shuttle::thread::spawn(move || {
                            for i in 0..3u64 {
                                if !sink.writes.push(write(p * 10 + i), None) {
                                    continue;
                                }
                                let (sink, writing) = (sink.clone(), writing.clone());
                                let seen = seen.clone();
                                let drainer = shuttle::thread::spawn(move || {
                                    while let Some((w, _)) = sink.writes.next() {
                                        let alone = !writing.swap(true, Ordering::SeqCst);
                                        assert!(alone, "two writers at once");
                                        seen.lock().push(w.block);
                                        writing.store(false, Ordering::SeqCst);
                                    }
                                });
                                drainers.lock().push(drainer);
                            }
                        })
                    })
                    .collect();
                for producer in producers {
                    producer.join().expect("producer");
                }
                while let Some(drainer) = drainers.lock().pop() {
                    drainer.join().expect("drainer");
                }
                let seen = seen.lock();
                assert_eq!(seen.len(), 6, "every write handled once: {seen:?}");
                for p in 0..2u64 {
                    let mine: Vec<u64> = seen.iter().copied().filter(|b| b / 10 == p).collect();
                    assert_eq!(mine, vec![p * 10, p * 10 + 1, p * 10 + 2]);
                }
            },
            2000,
        );
    }

    #[test]
    fn exactly_one_writer_drains_in_arrival_order() {
        let queue = WriteQueue::<NullSink>::default();
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

    fn multi_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// A sink that records what it was asked to store or abandon; its `store` can be held
    /// shut (like a stalled disk) and can refuse (like a full cache).
    struct Recorder {
        writes: WriteQueue<Recorder>,
        accept: bool,
        stored: Mutex<Vec<(u64, usize, bool)>>,
        abandoned: Mutex<Vec<u64>>,
        gate: std::sync::Mutex<bool>,
        opened: std::sync::Condvar,
    }

    impl Recorder {
        fn new(accept: bool, open: bool) -> Arc<Recorder> {
            Arc::new(Recorder {
                writes: WriteQueue::default(),
                accept,
                stored: Mutex::new(Vec::new()),
                abandoned: Mutex::new(Vec::new()),
                gate: std::sync::Mutex::new(open),
                opened: std::sync::Condvar::new(),
            })
        }

        fn open_gate(&self) {
            *self.gate.lock().unwrap() = true;
            self.opened.notify_all();
        }

        fn idle(&self) -> bool {
            let state = self.writes.state.lock();
            !state.writer_running && state.pending.is_empty()
        }

        fn wait_idle(&self) {
            let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !self.idle() {
                assert!(
                    std::time::Instant::now() < give_up,
                    "the writer never finished"
                );
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
    }

    impl BlockSink for Recorder {
        fn store(
            self: &Arc<Self>,
            block: u64,
            pieces: &[Bytes],
            claim: Option<&Arc<Flight<Delivered>>>,
        ) -> bool {
            let mut open = self.gate.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
            drop(open);
            let len = pieces.iter().map(|p| p.len()).sum();
            self.stored.lock().push((block, len, claim.is_some()));
            self.accept
        }
        fn abandon(&self, block: u64, _: &Arc<Flight<Delivered>>) {
            self.abandoned.lock().push(block);
        }
        fn writes(&self) -> &WriteQueue<Self> {
            &self.writes
        }
    }

    fn pending(sink: &Arc<Recorder>, block: u64, pieces: Vec<Bytes>) -> PendingWrite<Recorder> {
        PendingWrite {
            object: Arc::downgrade(sink),
            block,
            pieces,
            flight: None,
            _budget: None,
        }
    }

    #[test]
    fn a_waiting_reader_gets_the_bytes_before_the_write() {
        let runtime = multi_thread();
        let sink = Recorder::new(true, false);
        let bound = WriteBehind::new(4096);
        let flight = Flight::new();
        let waiter = flight.waiter();
        let mut write = pending(
            &sink,
            7,
            vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cd")],
        );
        write.flight = Some(flight.clone());
        runtime.block_on(queue(&bound, &sink, write));
        // The disk is held shut, yet the reader already has the block, in one piece.
        let delivered = runtime.block_on(waiter.wait());
        assert!(matches!(delivered, Ok(Delivered::Data(bytes)) if &bytes[..] == b"abcd"));
        assert!(sink.stored.lock().is_empty());
        sink.open_gate();
        sink.wait_idle();
        assert_eq!(*sink.stored.lock(), vec![(7, 4, true)]);
        assert!(sink.abandoned.lock().is_empty());
        assert_eq!(bound.permits.available_permits(), bound.total as usize);
    }

    #[test]
    fn a_block_nobody_waits_for_is_announced_as_stored() {
        let runtime = multi_thread();
        let sink = Recorder::new(true, true);
        let bound = WriteBehind::new(4096);
        let flight = Flight::new();
        let mut write = pending(&sink, 3, vec![Bytes::from_static(b"xyz")]);
        write.flight = Some(flight.clone());
        runtime.block_on(queue(&bound, &sink, write));
        sink.wait_idle();
        let delivered = runtime.block_on(flight.wait());
        assert!(matches!(delivered, Ok(Delivered::Stored)));
        assert_eq!(*sink.stored.lock(), vec![(3, 3, true)]);
    }

    #[test]
    fn a_refused_write_serves_its_bytes_and_gives_the_block_up() {
        let runtime = multi_thread();
        let sink = Recorder::new(false, true);
        let bound = WriteBehind::new(4096);
        let flight = Flight::new();
        let mut write = pending(&sink, 9, vec![Bytes::from_static(b"data")]);
        write.flight = Some(flight.clone());
        runtime.block_on(queue(&bound, &sink, write));
        // A block beyond the fetched run has no flight: stored or not, nobody is told.
        runtime.block_on(queue(
            &bound,
            &sink,
            pending(&sink, 10, vec![Bytes::from_static(b"zz")]),
        ));
        sink.wait_idle();
        let delivered = runtime.block_on(flight.wait());
        assert!(matches!(delivered, Ok(Delivered::Data(bytes)) if &bytes[..] == b"data"));
        assert_eq!(
            *sink.abandoned.lock(),
            vec![9],
            "only the claimed block is given up"
        );
        assert_eq!(*sink.stored.lock(), vec![(9, 4, true), (10, 2, false)]);
        assert_eq!(bound.permits.available_permits(), bound.total as usize);
    }

    /// A stalled disk stops the fetches feeding it: once the bound's worth of bytes waits,
    /// the next `queue` waits too, and everything is written in order once the disk moves.
    #[test]
    fn a_stalled_disk_holds_back_writes_beyond_the_bound() {
        const BLOCK: u64 = 4 << 20;
        let runtime = multi_thread();
        let sink = Recorder::new(true, false);
        let bound = Arc::new(WriteBehind::new(BLOCK));
        assert_eq!(bound.total as u64 * PERMIT_BYTES, WRITE_BEHIND_BYTES);
        let block = Bytes::from(vec![7u8; BLOCK as usize]);
        let fit = WRITE_BEHIND_BYTES / BLOCK;
        for i in 0..fit {
            let write = pending(&sink, i, vec![block.clone()]);
            runtime.block_on(queue(&bound, &sink, write));
        }
        assert_eq!(bound.permits.available_permits(), 0);
        let late = {
            let (bound, sink, block) = (bound.clone(), sink.clone(), block.clone());
            runtime.spawn(async move {
                let write = pending(&sink, fit, vec![block]);
                queue(&bound, &sink, write).await;
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!late.is_finished(), "a write past the bound must wait");
        assert!(sink.stored.lock().is_empty());
        sink.open_gate();
        runtime.block_on(late).expect("late write");
        sink.wait_idle();
        let order: Vec<u64> = sink.stored.lock().iter().map(|(b, _, _)| *b).collect();
        assert_eq!(
            order,
            (0..=fit).collect::<Vec<_>>(),
            "written in arrival order"
        );
        assert_eq!(bound.permits.available_permits(), bound.total as usize);
    }

    #[test]
    fn a_block_bigger_than_the_bound_waits_for_an_empty_queue() {
        use futures_util::FutureExt;
        let bound = WriteBehind::new(4096);
        let small = bound.reserve(4096).now_or_never().flatten().expect("room");
        let huge = WRITE_BEHIND_BYTES * 2;
        assert!(bound.reserve(huge).now_or_never().is_none());
        drop(small);
        let whole = bound
            .reserve(huge)
            .now_or_never()
            .flatten()
            .expect("an empty queue");
        assert_eq!(whole.num_permits(), bound.total as usize);
        assert!(bound.reserve(1).now_or_never().is_none());
    }

    /// Producers on several threads; every push that returns true starts a drainer thread.
    /// Writes are never handled by two drainers at once, none is lost, and each producer's
    /// writes come out in the order it pushed them.
    #[test]
    fn concurrent_pushes_always_find_exactly_one_writer() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let sink = Arc::new(NullSink::default());
        let writing = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let drainers = Arc::new(Mutex::new(Vec::new()));
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let (sink, writing, seen, drainers) = (
                    sink.clone(),
                    writing.clone(),
                    seen.clone(),
                    drainers.clone(),
                );
                std::thread::spawn(move || {
                    for i in 0..500u64 {
                        if !sink.writes.push(write(p * 1_000_000 + i), None) {
                            continue;
                        }
                        let (sink, writing, seen) = (sink.clone(), writing.clone(), seen.clone());
                        drainers.lock().push(std::thread::spawn(move || {
                            while let Some((w, _)) = sink.writes.next() {
                                assert!(
                                    !writing.swap(true, Ordering::SeqCst),
                                    "two writers at once"
                                );
                                seen.lock().push(w.block);
                                std::thread::yield_now();
                                writing.store(false, Ordering::SeqCst);
                            }
                        }));
                    }
                })
            })
            .collect();
        for producer in producers {
            producer.join().expect("producer");
        }
        loop {
            let handle = drainers.lock().pop();
            match handle {
                Some(handle) => handle.join().expect("drainer"),
                None => break,
            }
        }
        let seen = seen.lock();
        assert_eq!(seen.len(), 2000, "every write is handled exactly once");
        for p in 0..4u64 {
            let mine: Vec<u64> = seen
                .iter()
                .copied()
                .filter(|b| b / 1_000_000 == p)
                .collect();
            assert_eq!(
                mine,
                (0..500).map(|i| p * 1_000_000 + i).collect::<Vec<_>>()
            );
        }
        assert!(sink.writes.next().is_none());
    }

    #[derive(Debug, Clone)]
    enum QueueOp {
        Push,
        Next,
    }

    #[derive(Debug, Clone)]
    enum BoundOp {
        Reserve(u64),
        Release(usize),
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Random interleavings of push and next: push asks for a writer exactly when none
        /// runs, writes come out first in first out, and none is lost.
        #[test]
        fn the_queue_has_one_writer_and_loses_nothing(
            ops in proptest::collection::vec(
                prop_oneof![
                    Just(QueueOp::Push),
                    Just(QueueOp::Next),
                ],
                1..80,
            )
        ) {
            let queue = WriteQueue::<NullSink>::default();
            let mut model = std::collections::VecDeque::new();
            let mut running = false;
            let (mut pushed, mut taken) = (0u64, Vec::new());
            for op in ops {
                match op {
                    QueueOp::Push => {
                        proptest::prop_assert_eq!(queue.push(write(pushed), None), !running);
                        running = true;
                        model.push_back(pushed);
                        pushed += 1;
                    }
                    QueueOp::Next => {
                        let next = queue.next().map(|(w, _)| w.block);
                        proptest::prop_assert_eq!(next, model.pop_front());
                        if next.is_none() {
                            running = false;
                        }
                        taken.extend(next);
                    }
                }
            }
            while let Some((w, _)) = queue.next() {
                taken.push(w.block);
            }
            proptest::prop_assert_eq!(taken, (0..pushed).collect::<Vec<_>>());
        }

        /// Random reservations and releases against the global bound: a reservation is
        /// granted exactly when its pages fit, and the pages held never pass the total.
        #[test]
        fn the_write_behind_bound_is_never_exceeded(
            block_shift in 12u32..=27,
            ops in proptest::collection::vec(
                prop_oneof![
                    3 => (0u64..(96 << 20)).prop_map(BoundOp::Reserve),
                    2 => any::<usize>().prop_map(BoundOp::Release),
                ],
                1..60,
            )
        ) {
            use futures_util::FutureExt;
            let bound = WriteBehind::new(1 << block_shift);
            let total = bound.total as u64;
            proptest::prop_assert!(total * PERMIT_BYTES >= 4 << block_shift);
            let mut held: Vec<OwnedSemaphorePermit> = Vec::new();
            for op in ops {
                let in_use: u64 = held.iter().map(|p| p.num_permits() as u64).sum();
                match op {
                    BoundOp::Reserve(bytes) => {
                        let wanted = bytes.div_ceil(PERMIT_BYTES).min(total);
                        let granted = bound.reserve(bytes).now_or_never().flatten();
                        proptest::prop_assert_eq!(granted.is_some(), in_use + wanted <= total);
                        held.extend(granted);
                    }
                    BoundOp::Release(i) if !held.is_empty() => {
                        let i = i % held.len();
                        drop(held.swap_remove(i));
                    }
                    BoundOp::Release(_) => {}
                }
                let in_use: u64 = held.iter().map(|p| p.num_permits() as u64).sum();
                proptest::prop_assert!(in_use <= total);
                proptest::prop_assert_eq!(
                    bound.permits.available_permits() as u64,
                    total - in_use
                );
            }
        }
    }
}

//! The free slots of one slot size, a bit per slot: a journal at the size of a million inodes keeps 16 KiB for them, not 8 MiB of positions.

use super::check::SlotPos;

/// Free slots of the chunks of one slot size.
///
/// Must hold: `count` is the number of set bits; a slot is handed out once until pushed back.
#[derive(Default)]
pub(super) struct FreeSlots {
    /// By chunk number: a bit per slot of the chunk, set while the slot is free (empty for
    /// chunks of another size).
    chunks: Vec<Vec<u64>>,
    count: usize,
}

impl FreeSlots {
    pub(super) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Frees `pos` (freeing a free slot changes nothing).
    pub(super) fn push(&mut self, pos: SlotPos) {
        let (word, bit) = (pos.index as usize / 64, pos.index % 64);
        let chunk = pos.chunk as usize;
        if self.chunks.len() <= chunk {
            self.chunks.resize_with(chunk + 1, Vec::new);
        }
        let words = &mut self.chunks[chunk];
        if words.len() <= word {
            words.resize(word + 1, 0);
        }
        if words[word] & (1 << bit) == 0 {
            words[word] |= 1 << bit;
            self.count += 1;
        }
    }

    /// Frees every slot of a new chunk.
    pub(super) fn add_chunk(&mut self, chunk: u32, slots: u32) {
        for index in 0..slots {
            self.push(SlotPos { chunk, index });
        }
    }

    /// A free slot, taken: the lowest of the newest chunk that has one.
    pub(super) fn pop(&mut self) -> Option<SlotPos> {
        if self.count == 0 {
            return None;
        }
        for (chunk, words) in self.chunks.iter_mut().enumerate().rev() {
            let Some((word, bits)) = words.iter_mut().enumerate().find(|(_, w)| **w != 0) else {
                continue;
            };
            let bit = bits.trailing_zeros();
            *bits &= !(1 << bit);
            self.count -= 1;
            return Some(SlotPos {
                chunk: chunk as u32,
                index: word as u32 * 64 + bit,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_come_back_once_and_new_chunks_first() {
        let mut free = FreeSlots::default();
        assert!(free.pop().is_none());
        free.add_chunk(0, 100);
        free.add_chunk(2, 3);
        let taken: Vec<SlotPos> = std::iter::from_fn(|| free.pop()).collect();
        assert_eq!(taken.len(), 103);
        assert_eq!((taken[0].chunk, taken[0].index), (2, 0));
        assert_eq!((taken[3].chunk, taken[3].index), (0, 0));
        assert!(free.is_empty());
        free.push(taken[50]);
        free.push(taken[50]);
        assert_eq!(free.pop(), Some(taken[50]));
        assert!(free.pop().is_none());
    }
}

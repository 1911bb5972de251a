//! The in-memory index of packed records: 16 bytes per object, an open-addressing table from
//! a key's 64-bit hash to where its newest record lives.
//!
//! A slot is the key hash (0 = empty) and a packed [`Location`]: segment slot (20 bits),
//! offset and length in 8-byte units (27 and 16 bits) and the referenced bit eviction reads.
//! Nothing else of an object (key, validators, size) is in memory: the record says what it
//! is, and every hit is checked against it. Two keys with one 64-bit hash share one entry
//! (the newer replaces the older, which then misses); they never share bytes.
//!
//! Invariants: linear probing from a slot's home `fastrange(hash)`, with no tombstones
//! (removal shifts the probe chain back), so a lookup stops at the first empty slot; at most
//! `LOAD_PERCENT` of the slots are used; the table never holds more than `max_slots` slots,
//! which is how the store's index memory limit is kept (while it grows, the old table and
//! the new one, 1.5 times bigger, live together for a moment).

/// Percentage of slots in use before the table grows.
const LOAD_PERCENT: usize = 85;
/// Smallest table allocated.
const MIN_SLOTS: usize = 64;

/// Segment slots the packed location can name.
pub(super) const SEGMENT_SLOTS: u32 = 1 << 20;
/// Largest segment offset the packed location can name.
pub(super) const MAX_SEGMENT_BYTES: u64 = 1 << 30;

/// Where a record lives: a segment slot, and the record's offset and length in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Location {
    pub segment: u32,
    pub offset: u64,
    pub len: u32,
}

const SEGMENT_BITS: u32 = 20;
const OFFSET_BITS: u32 = 27;
const LEN_BITS: u32 = 16;
const REFERENCED: u64 = 1 << 63;

impl Location {
    /// Packs into 63 bits. The caller keeps offsets and lengths multiples of 8 and within
    /// `MAX_SEGMENT_BYTES` and the record limit; both are checked when a record is placed.
    fn pack(self) -> u64 {
        debug_assert!(self.segment < SEGMENT_SLOTS && self.offset < MAX_SEGMENT_BYTES);
        debug_assert!(self.offset.is_multiple_of(8) && self.len.is_multiple_of(8));
        u64::from(self.segment)
            | (self.offset / 8) << SEGMENT_BITS
            | u64::from(self.len / 8) << (SEGMENT_BITS + OFFSET_BITS)
    }

    fn unpack(bits: u64) -> Location {
        let field = |shift: u32, width: u32| (bits >> shift) & ((1 << width) - 1);
        Location {
            segment: field(0, SEGMENT_BITS) as u32,
            offset: field(SEGMENT_BITS, OFFSET_BITS) * 8,
            len: (field(SEGMENT_BITS + OFFSET_BITS, LEN_BITS) * 8) as u32,
        }
    }

    /// Whether this location can be packed at all (checked before a record is written).
    pub fn fits(segment: u32, offset: u64, len: usize) -> bool {
        segment < SEGMENT_SLOTS
            && offset.is_multiple_of(8)
            && offset < MAX_SEGMENT_BYTES
            && len.is_multiple_of(8)
            && len < (1 << LEN_BITS) * 8
    }
}

/// One entry as the checkpoint stores it: the key hash and the packed location (with the
/// referenced bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub hash: u64,
    pub bits: u64,
}

impl Entry {
    pub fn location(&self) -> Location {
        Location::unpack(self.bits)
    }

    pub fn referenced(&self) -> bool {
        self.bits & REFERENCED != 0
    }

    /// The same entry pointing into another segment slot (checkpoint slots are renumbered).
    pub fn in_segment(self, segment: u32) -> Entry {
        let location = Location {
            segment,
            ..self.location()
        };
        Entry {
            hash: self.hash,
            bits: location.pack() | (self.bits & REFERENCED),
        }
    }
}

/// The table. Owns every entry; see the module header for its invariants.
pub(super) struct PackedIndex {
    slots: Vec<Entry>,
    len: usize,
    max_slots: usize,
}

const EMPTY: Entry = Entry { hash: 0, bits: 0 };

impl PackedIndex {
    /// An empty index that will never take more than `memory_limit` bytes of slots.
    pub fn new(memory_limit: u64) -> PackedIndex {
        PackedIndex::with_capacity(0, memory_limit)
    }

    /// An index sized for `objects` entries at once (a reopen knows its count).
    pub fn with_capacity(objects: usize, memory_limit: u64) -> PackedIndex {
        let max_slots = usize::try_from(memory_limit / SLOT_BYTES as u64)
            .unwrap_or(usize::MAX)
            .max(MIN_SLOTS);
        let wanted = (objects * 100 / LOAD_PERCENT + 1).clamp(MIN_SLOTS, max_slots);
        PackedIndex {
            slots: vec![EMPTY; wanted],
            len: 0,
            max_slots,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The most entries the memory limit allows.
    pub fn max_entries(&self) -> usize {
        self.max_slots * LOAD_PERCENT / 100
    }

    /// Bytes the table takes in memory.
    pub fn memory_bytes(&self) -> u64 {
        (self.slots.len() * SLOT_BYTES) as u64
    }

    fn home(&self, hash: u64) -> usize {
        // Lemire's fastrange: maps the hash onto any table size without a division.
        (((hash & 0xffff_ffff) * self.slots.len() as u64) >> 32) as usize
    }

    fn next(&self, at: usize) -> usize {
        if at + 1 == self.slots.len() {
            0
        } else {
            at + 1
        }
    }

    fn find(&self, hash: u64) -> Option<usize> {
        let mut at = self.home(hash);
        loop {
            match self.slots[at].hash {
                0 => return None,
                h if h == hash => return Some(at),
                _ => at = self.next(at),
            }
        }
    }

    /// Where the key's newest record is.
    pub fn get(&self, hash: u64) -> Option<Location> {
        self.find(hash).map(|at| self.slots[at].location())
    }

    /// Looks a key up and marks it referenced (read since eviction last passed it).
    pub fn touch(&mut self, hash: u64) -> Option<Location> {
        let at = self.find(hash)?;
        self.slots[at].bits |= REFERENCED;
        Some(self.slots[at].location())
    }

    /// Points the key at a new record (unreferenced). Returns the previous location, or
    /// `Err(())` when the key is new and the memory limit allows no more entries.
    #[allow(clippy::result_unit_err)]
    pub fn upsert(&mut self, hash: u64, location: Location) -> Result<Option<Location>, ()> {
        self.put_entry(Entry {
            hash,
            bits: location.pack(),
        })
    }

    /// Inserts an entry as it was saved (referenced bit included).
    #[allow(clippy::result_unit_err)]
    pub fn put_entry(&mut self, entry: Entry) -> Result<Option<Location>, ()> {
        if let Some(at) = self.find(entry.hash) {
            let previous = self.slots[at].location();
            self.slots[at] = entry;
            return Ok(Some(previous));
        }
        if self.len + 1 > self.slots.len() * LOAD_PERCENT / 100 && !self.grow() {
            return Err(());
        }
        let mut at = self.home(entry.hash);
        while self.slots[at].hash != 0 {
            at = self.next(at);
        }
        self.slots[at] = entry;
        self.len += 1;
        Ok(None)
    }

    /// Grows the table by half (within the memory limit); false when it is at the limit.
    fn grow(&mut self) -> bool {
        let grown = (self.slots.len() * 3 / 2).min(self.max_slots);
        if grown <= self.slots.len() || (self.len + 1) > grown * LOAD_PERCENT / 100 {
            return false;
        }
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; grown]);
        for entry in old.into_iter().filter(|e| e.hash != 0) {
            let mut at = self.home(entry.hash);
            while self.slots[at].hash != 0 {
                at = self.next(at);
            }
            self.slots[at] = entry;
        }
        true
    }

    /// Removes the key; returns where it was.
    pub fn remove(&mut self, hash: u64) -> Option<Location> {
        let at = self.find(hash)?;
        let location = self.slots[at].location();
        self.remove_at(at);
        Some(location)
    }

    /// Removes the key only if it still points at `location` (a newer version stays).
    pub fn remove_if_at(&mut self, hash: u64, location: Location) -> bool {
        match self.find(hash) {
            Some(at) if self.slots[at].location() == location => {
                self.remove_at(at);
                true
            }
            _ => false,
        }
    }

    /// Moves the key from `from` to `to` (unreferenced) if it still points at `from`.
    pub fn move_if_at(&mut self, hash: u64, from: Location, to: Location) -> bool {
        match self.find(hash) {
            Some(at) if self.slots[at].location() == from => {
                self.slots[at].bits = to.pack();
                true
            }
            _ => false,
        }
    }

    /// Empties slot `at` and shifts the rest of its probe chain back, so that no lookup
    /// stops early at the hole.
    fn remove_at(&mut self, mut hole: usize) {
        let size = self.slots.len();
        let distance = |from: usize, to: usize| (to + size - from) % size;
        let mut at = self.next(hole);
        while self.slots[at].hash != 0 {
            let home = self.home(self.slots[at].hash);
            if distance(home, at) >= distance(hole, at) {
                self.slots[hole] = self.slots[at];
                hole = at;
            }
            at = self.next(at);
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
    }

    /// Every entry, in table order.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.slots.iter().copied().filter(|e| e.hash != 0)
    }

    /// The entries whose records live in segment slot `segment` (a sweep of the table).
    pub fn entries_in(&self, segment: u32) -> Vec<Entry> {
        self.entries()
            .filter(|e| e.location().segment == segment)
            .collect()
    }
}

/// Bytes of one slot.
pub(super) const SLOT_BYTES: usize = std::mem::size_of::<Entry>();

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn at(segment: u32, offset: u64) -> Location {
        Location {
            segment,
            offset,
            len: 1024,
        }
    }

    #[test]
    fn a_location_packs_into_its_fields() {
        let location = Location {
            segment: SEGMENT_SLOTS - 1,
            offset: MAX_SEGMENT_BYTES - 8,
            len: 65535 * 8,
        };
        assert_eq!(Location::unpack(location.pack()), location);
        assert_eq!(SLOT_BYTES, 16);
    }

    #[test]
    fn the_memory_limit_bounds_the_entries() {
        let mut index = PackedIndex::new(64 * 16);
        let max = index.max_entries();
        for hash in 1..=max as u64 {
            assert!(index.upsert(hash, at(0, 8 * hash)).is_ok());
        }
        assert!(index.upsert(u64::MAX, at(0, 0)).is_err());
        assert!(index.upsert(1, at(1, 0)).is_ok(), "replacing needs no room");
        assert!(index.memory_bytes() <= 64 * 16);
    }

    #[test]
    fn touch_sets_the_referenced_bit_and_a_move_clears_it() {
        let mut index = PackedIndex::new(1 << 20);
        index.upsert(5, at(1, 0)).unwrap();
        assert!(!index.entries().next().unwrap().referenced());
        index.touch(5);
        assert!(index.entries().next().unwrap().referenced());
        assert!(index.move_if_at(5, at(1, 0), at(2, 8)));
        assert!(!index.entries().next().unwrap().referenced());
        assert!(!index.move_if_at(5, at(1, 0), at(3, 8)), "no longer there");
    }

    proptest! {
        /// The table behaves as a map, through growth and back-shifting removals; small
        /// hash ranges force long probe chains and wrap-arounds.
        #[test]
        fn behaves_as_a_map(ops in prop::collection::vec((0u8..3, 1u64..200, 0u64..1000), 1..400)) {
            let mut index = PackedIndex::new(1 << 20);
            let mut model = HashMap::new();
            for (op, key, offset) in ops {
                // Spread some keys' low bits to the same home slot.
                let hash = if key % 2 == 0 { key << 40 | 7 } else { key };
                let location = at(key as u32 % 4, offset * 8);
                match op {
                    0 => {
                        prop_assert_eq!(index.upsert(hash, location).unwrap(), model.insert(hash, location));
                    }
                    1 => prop_assert_eq!(index.remove(hash), model.remove(&hash)),
                    _ => prop_assert_eq!(index.get(hash), model.get(&hash).copied()),
                }
                prop_assert_eq!(index.len(), model.len());
            }
            for (hash, location) in &model {
                prop_assert_eq!(index.get(*hash), Some(*location));
            }
        }
    }
}

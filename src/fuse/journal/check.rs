//! Reading a journal back: which records to trust. A record is kept only if it is whole and
//! agrees with every other kept record; everything else is dropped, never half-trusted.
//!
//! Rules: one record per inode, handle and backing id; an inode's parent chain ends at the
//! root through directories; a handle names a kept file inode, and a passthrough handle a
//! kept backing id; all handles of one inode are passthrough through one id, or all are not;
//! numbers lie below the header's counters; a kept inode has a lookup count; a pages record
//! names a kept file inode, one record per inode.

use std::collections::{HashMap, HashSet};

use super::layout::{NodeKind, Record, MAX_COUNTER, MAX_NAME};

/// Inode number of the mount root, which the kernel always holds and no record describes.
pub const ROOT_INO: u64 = 1;

/// A slot's address: chunk and index within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotPos {
    pub chunk: u32,
    pub index: u32,
}

/// An inode the journal carries over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InodeState {
    pub ino: u64,
    pub parent: u64,
    pub kind: NodeKind,
    pub name: String,
    pub lookups: u64,
}

/// An open handle the journal carries over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleState {
    pub fh: u64,
    pub ino: u64,
    pub version: [u8; 16],
    pub pinned: bool,
    /// 0 when reads come to the daemon.
    pub backing: u32,
}

/// The version of the pages the kernel keeps for an inode read without an open
/// (`zero_message_opens`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagesState {
    pub ino: u64,
    pub version: [u8; 16],
}

/// What a journal carries over, in an order the file system can restore it: every inode
/// after its parent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried {
    pub inodes: Vec<InodeState>,
    pub handles: Vec<HandleState>,
    pub backings: Vec<u32>,
    /// By inode number, in no particular order.
    pub pages: Vec<PagesState>,
    /// The first inode and handle numbers that were never handed out.
    pub next_ino: u64,
    pub next_fh: u64,
}

/// How many records were not carried over, and why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Cut short or damaged (marker or checksum wrong), or in a damaged chunk.
    pub damaged: usize,
    /// Whole, but at odds with the other records.
    pub inconsistent: usize,
}

/// The verdict on a journal's records: what to carry over, where each carried record lives,
/// and which slots to free.
pub struct Verdict {
    pub carried: Carried,
    pub inode_slots: Vec<(u64, SlotPos)>,
    pub handle_slots: Vec<(u64, SlotPos)>,
    pub backing_slots: Vec<(u32, SlotPos)>,
    pub pages_slots: Vec<(u64, SlotPos)>,
    pub freed: Vec<SlotPos>,
    pub dropped: Dropped,
}

/// The records of a journal, by kind.
#[derive(Default)]
struct Sorted {
    inodes: Vec<(SlotPos, InodeState)>,
    handles: Vec<(SlotPos, HandleState)>,
    backings: Vec<(SlotPos, u32)>,
    pages: Vec<(SlotPos, PagesState)>,
}

fn sort(records: Vec<(SlotPos, Record, u64)>) -> Sorted {
    let mut sorted = Sorted::default();
    for (pos, record, count) in records {
        match record {
            Record::Inode {
                ino,
                parent,
                kind,
                name,
            } => {
                let lookups = count;
                let inode = InodeState {
                    ino,
                    parent,
                    kind,
                    name,
                    lookups,
                };
                sorted.inodes.push((pos, inode));
            }
            Record::Handle {
                fh,
                ino,
                version,
                pinned,
                backing,
            } => {
                let handle = HandleState {
                    fh,
                    ino,
                    version,
                    pinned,
                    backing,
                };
                sorted.handles.push((pos, handle));
            }
            Record::Backing { id } => sorted.backings.push((pos, id)),
            Record::Pages { ino, version } => {
                sorted.pages.push((pos, PagesState { ino, version }));
            }
        }
    }
    sorted
}

/// Decides which of `records` (each with its slot and count) to trust, given the header's
/// counters.
pub fn check(records: Vec<(SlotPos, Record, u64)>, next_ino: u64, next_fh: u64) -> Verdict {
    let mut verdict = Verdict {
        carried: Carried::default(),
        inode_slots: Vec::new(),
        handle_slots: Vec::new(),
        backing_slots: Vec::new(),
        pages_slots: Vec::new(),
        freed: Vec::new(),
        dropped: Dropped::default(),
    };
    let sorted = sort(records);

    let backings = unique_by(sorted.backings, |(_, id)| u64::from(*id), &mut verdict);
    for (pos, id) in backings {
        match id {
            0 => reject(&mut verdict, pos),
            id => {
                verdict.backing_slots.push((id, pos));
                verdict.carried.backings.push(id);
            }
        }
    }
    let backing_ids: HashSet<u32> = verdict.carried.backings.iter().copied().collect();

    let inodes = unique_by(sorted.inodes, |(_, i)| i.ino, &mut verdict);
    let (inodes, orphans) = rooted(inodes, next_ino);
    for pos in orphans {
        reject(&mut verdict, pos);
    }
    let kinds: HashMap<u64, NodeKind> = inodes.iter().map(|(_, i)| (i.ino, i.kind)).collect();

    let handles = unique_by(sorted.handles, |(_, h)| h.fh, &mut verdict);
    let (handles, refused) = consistent_handles(handles, &kinds, &backing_ids, next_fh);
    for pos in refused {
        reject(&mut verdict, pos);
    }

    for (pos, pages) in unique_by(sorted.pages, |(_, p)| p.ino, &mut verdict) {
        match kinds.get(&pages.ino) {
            Some(NodeKind::File) => {
                verdict.pages_slots.push((pages.ino, pos));
                verdict.carried.pages.push(pages);
            }
            _ => reject(&mut verdict, pos),
        }
    }

    let carried = &mut verdict.carried;
    carried.next_ino = inodes
        .iter()
        .map(|(_, i)| i.ino + 1)
        .fold(next_ino.max(ROOT_INO + 1), u64::max);
    carried.next_fh = handles
        .iter()
        .map(|(_, h)| h.fh + 1)
        .fold(next_fh.max(1), u64::max);
    for (pos, inode) in inodes {
        verdict.inode_slots.push((inode.ino, pos));
        verdict.carried.inodes.push(inode);
    }
    for (pos, handle) in handles {
        verdict.handle_slots.push((handle.fh, pos));
        verdict.carried.handles.push(handle);
    }
    verdict
}

/// A record at odds with the others: dropped, and its slot freed.
fn reject(verdict: &mut Verdict, pos: SlotPos) {
    verdict.freed.push(pos);
    verdict.dropped.inconsistent += 1;
}

/// Keeps the items whose key no other item shares; all items of a shared key are rejected.
fn unique_by<T>(
    items: Vec<(SlotPos, T)>,
    key: impl Fn(&(SlotPos, T)) -> u64,
    verdict: &mut Verdict,
) -> Vec<(SlotPos, T)> {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for item in &items {
        *seen.entry(key(item)).or_default() += 1;
    }
    let mut kept = Vec::new();
    for item in items {
        if seen[&key(&item)] == 1 {
            kept.push(item);
        } else {
            reject(verdict, item.0);
        }
    }
    kept
}

/// Whether a name can be a path component the file system handed out.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
}

/// The inodes reachable from the root through directories, parents first; and the slots of
/// the others (orphans, cycles, bad names or numbers, no lookups).
fn rooted(
    inodes: Vec<(SlotPos, InodeState)>,
    next_ino: u64,
) -> (Vec<(SlotPos, InodeState)>, Vec<SlotPos>) {
    let mut refused = Vec::new();
    let mut children: HashMap<u64, Vec<(SlotPos, InodeState)>> = HashMap::new();
    for (pos, inode) in inodes {
        let sane = inode.ino > ROOT_INO
            && inode.ino < next_ino.min(MAX_COUNTER)
            && inode.parent != inode.ino
            && inode.lookups > 0
            && valid_name(&inode.name);
        match sane {
            true => children.entry(inode.parent).or_default().push((pos, inode)),
            false => refused.push(pos),
        }
    }
    let mut kept = Vec::new();
    let mut frontier = vec![ROOT_INO];
    while let Some(parent) = frontier.pop() {
        for (pos, inode) in children.remove(&parent).unwrap_or_default() {
            if inode.kind == NodeKind::Directory {
                frontier.push(inode.ino);
            }
            kept.push((pos, inode));
        }
    }
    // Whatever the walk from the root did not reach hangs off a missing or non-directory
    // parent, or off a cycle.
    refused.extend(children.into_values().flatten().map(|(pos, _)| pos));
    (kept, refused)
}

/// The handles that name a kept file inode (and a kept backing id when in passthrough),
/// with every inode's handles in one mode; and the slots of the others.
fn consistent_handles(
    handles: Vec<(SlotPos, HandleState)>,
    inodes: &HashMap<u64, NodeKind>,
    backings: &HashSet<u32>,
    next_fh: u64,
) -> (Vec<(SlotPos, HandleState)>, Vec<SlotPos>) {
    let mut refused = Vec::new();
    let mut by_inode: HashMap<u64, Vec<(SlotPos, HandleState)>> = HashMap::new();
    for (pos, handle) in handles {
        let sane = handle.fh > 0
            && handle.fh < next_fh.min(MAX_COUNTER)
            && inodes.get(&handle.ino) == Some(&NodeKind::File)
            && (handle.backing == 0 || backings.contains(&handle.backing));
        match sane {
            true => by_inode.entry(handle.ino).or_default().push((pos, handle)),
            false => refused.push(pos),
        }
    }
    let mut kept = Vec::new();
    for (_, group) in by_inode {
        let first = group[0].1.backing;
        if group.iter().all(|(_, h)| h.backing == first) {
            kept.extend(group);
        } else {
            refused.extend(group.into_iter().map(|(pos, _)| pos));
        }
    }
    kept.sort_by_key(|(_, h)| h.fh);
    (kept, refused)
}

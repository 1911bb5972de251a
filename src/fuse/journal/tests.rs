//! The journal without FUSE: records written and read back, writes cut short at every byte,
//! damage anywhere, and records that disagree with each other.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;

use proptest::prelude::*;

use super::check::{check, SlotPos};
use super::layout::{self, NodeKind, Record, SlotContent, HEADER_LEN};
use super::*;

const REQUEST: &[u8] = b"an INIT request, as the kernel sent it";
const REPLY: &[u8] = b"the INIT reply fuser wrote";

fn new_journal() -> Journal {
    Journal::create(sealed_memfd("journal-test").expect("memfd"), REQUEST, REPLY).expect("create")
}

fn reopen(journal: &Journal) -> (Journal, Restored) {
    let file = File::from(journal.descriptor().expect("dup"));
    Journal::open(file).expect("open")
}

fn handle(fh: u64, ino: u64, backing: u32) -> HandleState {
    HandleState {
        fh,
        ino,
        version: [fh as u8; 16],
        pinned: true,
        backing,
    }
}

fn inode(ino: u64, parent: u64, kind: NodeKind, name: &str, lookups: u64) -> InodeState {
    InodeState {
        ino,
        parent,
        kind,
        name: name.to_string(),
        lookups,
    }
}

/// A small tree: /d (2), /d/a (3), /d/b with a long name (4), /top (5); handles on 3 and 5.
fn populate(journal: &Journal) -> String {
    let long = "n".repeat(300);
    journal.reserve_inodes(6);
    journal.reserve_handles(3);
    journal.record_inode(2, 1, NodeKind::Directory, "d", 2);
    journal.record_inode(3, 2, NodeKind::File, "a", 1);
    journal.record_inode(4, 2, NodeKind::File, &long, 1);
    journal.record_inode(5, 1, NodeKind::File, "top", 7);
    journal.record_backing(9);
    journal.record_handle(&handle(1, 3, 0));
    journal.record_handle(&handle(2, 5, 9));
    long
}

#[test]
fn what_is_written_is_read_back_with_counts_and_the_init_exchange() {
    let journal = new_journal();
    assert_eq!(journal.incarnation(), 1);
    let long = populate(&journal);
    journal.set_lookups(5, 3);
    let (again, restored) = reopen(&journal);
    assert_eq!(restored.init_request, REQUEST);
    assert_eq!(restored.init_reply, REPLY);
    assert_eq!(restored.incarnation, 2);
    assert_eq!(again.incarnation(), 2);
    assert_eq!(restored.dropped, Dropped::default());
    let carried = restored.carried;
    let mut inodes = carried.inodes.clone();
    inodes.sort_by_key(|i| i.ino);
    assert_eq!(
        inodes,
        vec![
            inode(2, 1, NodeKind::Directory, "d", 2),
            inode(3, 2, NodeKind::File, "a", 1),
            inode(4, 2, NodeKind::File, &long, 1),
            inode(5, 1, NodeKind::File, "top", 3),
        ]
    );
    let position = |ino: u64| carried.inodes.iter().position(|i| i.ino == ino).unwrap();
    assert!(
        position(2) < position(3) && position(2) < position(4),
        "parents come first"
    );
    assert_eq!(carried.handles, vec![handle(1, 3, 0), handle(2, 5, 9)]);
    assert_eq!(carried.backings, vec![9]);
    assert_eq!((carried.next_ino, carried.next_fh), (6, 3));
}

#[test]
fn forgotten_records_stay_forgotten_and_their_slots_are_reused() {
    let journal = new_journal();
    populate(&journal);
    journal.set_lookups(4, 0);
    journal.forget_handle(1);
    journal.forget_backing(9);
    let (again, restored) = reopen(&journal);
    let inos: HashSet<u64> = restored.carried.inodes.iter().map(|i| i.ino).collect();
    assert_eq!(inos, HashSet::from([2, 3, 5]));
    // The passthrough handle lost its registration record: it is not trusted any more.
    assert!(restored.carried.handles.is_empty());
    assert!(restored.carried.backings.is_empty());
    assert_eq!(restored.dropped.inconsistent, 1);
    let before = again.image().len();
    again.reserve_inodes(7);
    again.record_inode(6, 1, NodeKind::File, "new", 1);
    assert_eq!(
        again.image().len(),
        before,
        "a freed slot is reused, the journal does not grow"
    );
    let (_, restored) = reopen(&again);
    assert!(restored
        .carried
        .inodes
        .iter()
        .any(|i| i.ino == 6 && i.name == "new"));
}

#[test]
fn the_journal_grows_by_chunks_and_stops_at_its_bound() {
    let file = sealed_memfd("journal-test").unwrap();
    let journal = Journal::create_bounded(file, REQUEST, REPLY, 2).unwrap();
    let per_chunk = layout::slots_per_chunk(128) as u64;
    let wanted = per_chunk * 3;
    journal.reserve_inodes(wanted + 2);
    for ino in 2..wanted + 2 {
        journal.record_inode(ino, 1, NodeKind::File, "f", 1);
    }
    let file = File::from(journal.descriptor().unwrap());
    assert_eq!(
        file.metadata().unwrap().len() as usize,
        HEADER_LEN + 2 * layout::CHUNK_LEN,
        "two chunks at most"
    );
    let (_, restored) = Journal::open_bounded(file, 2).unwrap();
    // Two chunks' worth were kept; the rest was refused whole, never half-written.
    assert_eq!(restored.carried.inodes.len() as u64, 2 * per_chunk);
    assert_eq!(restored.dropped, Dropped::default());
}

#[test]
fn an_unsealed_file_or_a_damaged_header_is_refused() {
    let plain = tempfile::tempfile().unwrap();
    assert!(matches!(
        Journal::create(plain, REQUEST, REPLY),
        Err(JournalError::NotSealed)
    ));
    let journal = new_journal();
    populate(&journal);
    let file = File::from(journal.descriptor().unwrap());
    let image = journal.image();
    for at in [0, 9, 17, 130, 1160] {
        let mut byte = [image[at] ^ 0x5a];
        file.write_at(&byte, at as u64).unwrap();
        assert!(
            matches!(
                Journal::open(File::from(journal.descriptor().unwrap())),
                Err(JournalError::BadHeader)
            ),
            "damage at header byte {at} must be noticed"
        );
        byte[0] = image[at];
        file.write_at(&byte, at as u64).unwrap();
    }
    assert!(
        Journal::open(file).is_ok(),
        "the repaired header reads again"
    );
    let too_big = vec![0u8; layout::MAX_INIT + 1];
    let memfd = sealed_memfd("journal-test").unwrap();
    assert!(matches!(
        Journal::create(memfd, &too_big, REPLY),
        Err(JournalError::InitTooLarge(_))
    ));
}

/// Every record kind, as a slot write is cut short after any number of its bytes (a
/// `kill -9` between two stores): the slot reads back as free, damaged, or exactly the
/// record, never as anything else. The same over a slot that held another record.
#[test]
fn a_write_cut_short_anywhere_never_reads_back_as_another_record() {
    let records = [
        Record::Inode {
            ino: 7,
            parent: 1,
            kind: NodeKind::File,
            name: "movie.mp4".into(),
        },
        Record::Handle {
            fh: 3,
            ino: 7,
            version: [4; 16],
            pinned: true,
            backing: 2,
        },
        Record::Backing { id: 5 },
        Record::Pages {
            ino: 6,
            version: [9; 16],
        },
    ];
    let previous = Record::Inode {
        ino: 99,
        parent: 1,
        kind: NodeKind::Directory,
        name: "older".into(),
    };
    for record in &records {
        for start_with in [None, Some(&previous)] {
            let mut base = vec![0u8; 128];
            if let Some(old) = start_with {
                layout::write_slot(&mut base, old, 4);
                layout::clear_slot(&mut base);
            }
            let stores: Vec<(usize, u8)> = layout::slot_writes(128, record, 1)
                .into_iter()
                .flat_map(|(at, bytes)| {
                    bytes.into_iter().enumerate().map(move |(i, b)| (at + i, b))
                })
                .collect();
            for cut in 0..=stores.len() {
                let mut slot = base.clone();
                for (at, byte) in &stores[..cut] {
                    slot[*at] = *byte;
                }
                match layout::read_slot(&slot) {
                    SlotContent::Free | SlotContent::Damaged => {
                        assert!(cut < stores.len(), "the whole write must read back")
                    }
                    SlotContent::Live(got, count) => {
                        assert_eq!(&got, record, "cut after {cut} of {} bytes", stores.len());
                        assert_eq!(count, 1);
                    }
                }
            }
        }
    }
}

/// A free cut short: clearing the marker is the first store, so any prefix leaves either
/// the whole record or a slot that is not live.
#[test]
fn a_free_cut_short_leaves_the_record_or_nothing() {
    let record = Record::Backing { id: 8 };
    let mut slot = vec![0u8; 128];
    layout::write_slot(&mut slot, &record, 0);
    for cut in 0..=8 {
        let mut partial = slot.clone();
        partial[..cut].fill(0);
        match layout::read_slot(&partial) {
            SlotContent::Live(got, _) => assert_eq!(got, record),
            SlotContent::Free | SlotContent::Damaged => assert!(cut > 0),
        }
    }
}

fn pos(index: u32) -> SlotPos {
    SlotPos { chunk: 0, index }
}

fn inode_record(ino: u64, parent: u64, kind: NodeKind, name: &str) -> Record {
    Record::Inode {
        ino,
        parent,
        kind,
        name: name.into(),
    }
}

fn handle_record(fh: u64, ino: u64, backing: u32) -> Record {
    Record::Handle {
        fh,
        ino,
        version: [1; 16],
        pinned: true,
        backing,
    }
}

fn carried_inos(records: Vec<(SlotPos, Record, u64)>) -> Vec<u64> {
    let mut inos: Vec<u64> = check(records, 100, 100)
        .carried
        .inodes
        .iter()
        .map(|i| i.ino)
        .collect();
    inos.sort();
    inos
}

#[test]
fn inodes_that_do_not_hang_off_the_root_through_directories_are_dropped() {
    let d = NodeKind::Directory;
    let f = NodeKind::File;
    let records = vec![
        (pos(0), inode_record(2, 1, d, "dir"), 1),
        (pos(1), inode_record(3, 2, f, "kept"), 1),
        (pos(2), inode_record(4, 3, f, "under a file"), 1),
        (pos(3), inode_record(5, 42, f, "orphan"), 1),
        (pos(4), inode_record(6, 7, d, "cycle a"), 1),
        (pos(5), inode_record(7, 6, d, "cycle b"), 1),
        (pos(6), inode_record(8, 2, f, "no lookups"), 0),
        (pos(7), inode_record(9, 2, f, "a/b"), 1),
        (pos(8), inode_record(10, 2, f, ".."), 1),
        (pos(9), inode_record(1, 1, d, "root again"), 1),
        (pos(10), inode_record(500, 2, f, "beyond the counter"), 1),
        (pos(11), inode_record(11, 2, f, "twin"), 1),
        (pos(12), inode_record(11, 2, f, "twin"), 1),
        (pos(13), inode_record(12, 12, d, "own parent"), 1),
    ];
    let verdict = check(records.clone(), 100, 100);
    assert_eq!(carried_inos(records), vec![2, 3]);
    assert_eq!(verdict.dropped.inconsistent, 12);
    assert_eq!(
        verdict.freed.len(),
        12,
        "every dropped record's slot is freed"
    );
    assert_eq!(verdict.carried.next_ino, 100);
}

#[test]
fn handles_must_name_a_kept_file_and_agree_on_their_inode_mode() {
    let d = NodeKind::Directory;
    let f = NodeKind::File;
    let records = vec![
        (pos(0), inode_record(2, 1, f, "cached"), 1),
        (pos(1), inode_record(3, 1, f, "passthrough"), 1),
        (pos(2), inode_record(4, 1, f, "mixed"), 1),
        (pos(3), inode_record(5, 1, d, "dir"), 1),
        (pos(4), Record::Backing { id: 7 }, 0),
        (pos(5), handle_record(1, 2, 0), 0),
        (pos(6), handle_record(2, 2, 0), 0),
        (pos(7), handle_record(3, 3, 7), 0),
        (pos(8), handle_record(4, 3, 7), 0),
        (pos(9), handle_record(5, 4, 7), 0),
        (pos(10), handle_record(6, 4, 0), 0),
        (pos(11), handle_record(7, 5, 0), 0),
        (pos(12), handle_record(8, 99, 0), 0),
        (pos(13), handle_record(9, 2, 8), 0),
        (pos(14), handle_record(0, 2, 0), 0),
        (pos(15), handle_record(500, 2, 0), 0),
        (pos(16), handle_record(10, 2, 0), 0),
        (pos(17), handle_record(10, 2, 0), 0),
    ];
    let verdict = check(records, 100, 100);
    let kept: Vec<u64> = verdict.carried.handles.iter().map(|h| h.fh).collect();
    assert_eq!(kept, vec![1, 2, 3, 4]);
    assert_eq!(verdict.carried.next_fh, 100);
}

#[test]
fn pages_records_follow_their_inode_and_replace_each_other() {
    let journal = new_journal();
    populate(&journal);
    let pages = |ino: u64, v: u8| PagesState {
        ino,
        version: [v; 16],
    };
    journal.record_pages(&pages(3, 1));
    journal.record_pages(&pages(3, 2));
    journal.record_pages(&pages(5, 3));
    journal.record_pages(&pages(4, 4));
    journal.set_lookups(4, 0);
    let (again, restored) = reopen(&journal);
    let mut carried = restored.carried.pages.clone();
    carried.sort_by_key(|p| p.ino);
    assert_eq!(
        carried,
        vec![pages(3, 2), pages(5, 3)],
        "the last version of each"
    );
    assert_eq!(restored.dropped, Dropped::default());
    again.set_lookups(3, 0);
    let (_, restored) = reopen(&again);
    assert_eq!(restored.carried.pages, vec![pages(5, 3)]);
}

#[test]
fn pages_records_must_name_one_kept_file() {
    let pages = |ino: u64, v: u8| Record::Pages {
        ino,
        version: [v; 16],
    };
    let records = vec![
        (pos(0), inode_record(2, 1, NodeKind::File, "f"), 1),
        (pos(1), inode_record(3, 1, NodeKind::Directory, "d"), 1),
        (pos(2), inode_record(4, 1, NodeKind::File, "twice"), 1),
        (pos(3), pages(2, 1), 0),
        (pos(4), pages(3, 1), 0),
        (pos(5), pages(4, 1), 0),
        (pos(6), pages(4, 2), 0),
        (pos(7), pages(99, 1), 0),
    ];
    let verdict = check(records, 100, 100);
    let kept: Vec<u64> = verdict.carried.pages.iter().map(|p| p.ino).collect();
    assert_eq!(kept, vec![2]);
    assert_eq!(verdict.dropped.inconsistent, 4);
}

#[test]
fn duplicate_backing_ids_and_id_zero_are_dropped() {
    let records = vec![
        (pos(0), Record::Backing { id: 3 }, 0),
        (pos(1), Record::Backing { id: 3 }, 0),
        (pos(2), Record::Backing { id: 0 }, 0),
        (pos(3), Record::Backing { id: 4 }, 0),
    ];
    let verdict = check(records, 10, 10);
    assert_eq!(verdict.carried.backings, vec![4]);
    assert_eq!(verdict.dropped.inconsistent, 3);
}

#[test]
fn counters_never_fall_below_what_records_show() {
    let records = vec![
        (pos(0), inode_record(2, 1, NodeKind::File, "f"), 1),
        (pos(1), handle_record(1, 2, 0), 0),
    ];
    // A header that claims nothing was handed out: the records win... but only records
    // below the counters are trusted, so nothing survives here.
    let verdict = check(records, 0, 0);
    assert!(verdict.carried.inodes.is_empty() && verdict.carried.handles.is_empty());
    assert_eq!((verdict.carried.next_ino, verdict.carried.next_fh), (2, 1));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random damage anywhere after the header: opening never fails or panics, and every
    /// record it carries over is one that was written, unchanged.
    #[test]
    fn damage_anywhere_is_dropped_never_trusted(
        hits in proptest::collection::vec((0usize..2 * layout::CHUNK_LEN, any::<u8>()), 1..64)
    ) {
        let journal = new_journal();
        let long = populate(&journal);
        let written_inodes = [
            inode(2, 1, NodeKind::Directory, "d", 2),
            inode(3, 2, NodeKind::File, "a", 1),
            inode(4, 2, NodeKind::File, &long, 1),
            inode(5, 1, NodeKind::File, "top", 7),
        ];
        let written_handles = [handle(1, 3, 0), handle(2, 5, 9)];
        let file = File::from(journal.descriptor().unwrap());
        let size = file.metadata().unwrap().len() as usize;
        for (at, byte) in hits {
            let at = HEADER_LEN + at % (size - HEADER_LEN);
            file.write_at(&[byte], at as u64).unwrap();
        }
        let (_, restored) = Journal::open(file).unwrap();
        for got in &restored.carried.inodes {
            let same = written_inodes.iter().any(|w| {
                w.ino == got.ino && w.parent == got.parent && w.kind == got.kind && w.name == got.name
            });
            prop_assert!(same, "an inode that was never written: {:?}", got);
        }
        for got in &restored.carried.handles {
            prop_assert!(written_handles.contains(got), "a handle that was never written: {:?}", got);
        }
        for id in &restored.carried.backings {
            prop_assert_eq!(*id, 9);
        }
    }
}

#[test]
fn a_damaged_chunk_header_drops_its_chunk_and_the_chunk_is_usable_again() {
    let journal = new_journal();
    populate(&journal);
    let file = File::from(journal.descriptor().unwrap());
    // Chunk 0 (128-byte slots) holds every small record; break its header.
    file.write_at(&[0xff], (HEADER_LEN + 9) as u64).unwrap();
    let (again, restored) = Journal::open(file).unwrap();
    let inos: HashSet<u64> = restored.carried.inodes.iter().map(|i| i.ino).collect();
    assert!(!inos.contains(&3) && !inos.contains(&5));
    assert!(restored.dropped.damaged > 0);
    again.reserve_inodes(20);
    again.record_inode(10, 1, NodeKind::File, "after", 1);
    let (_, restored) = reopen(&again);
    assert!(restored.carried.inodes.iter().any(|i| i.ino == 10));
}

//! A reference model of `StonFs` under random kernel call sequences (lookup, open, read,
//! release, forget, purge, version change, restart), run without FUSE and without root.
//!
//! The model keeps, per name, every version the origin has served, and per open handle the
//! versions it may be reading. Checked after every call: a read gives the exact bytes of one
//! version, the same version for the whole life of the handle; a handle of the current
//! version never fails; a lookup shows the current size, on the inode the model predicts;
//! the file system counts exactly the handles the kernel holds open.

mod common;

use std::collections::HashMap;
use std::ffi::OsStr;

use bytes::Bytes;
use common::kernel::{Kernel, ROOT, ROOT_UID};
use common::layer::config;
use common::origin::{pattern, Origin};
use proptest::prelude::*;
use ston_fs::base::FsError;
use tempfile::TempDir;

const NAMES: [&str; 3] = ["a.bin", "b.bin", "c.bin"];
/// Opens reach the daemon: the model is one of handles.
const SETTINGS: [(&str, &str); 2] = [("block_size", "16K"), ("zero_message_opens", "false")];

#[derive(Debug, Clone)]
enum Op {
    Lookup(usize),
    Open(usize),
    Read {
        handle: usize,
        offset: u64,
        len: u32,
    },
    Release(usize),
    Forget(usize),
    Purge(usize),
    Change {
        name: usize,
        len: usize,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let name = 0..NAMES.len();
    prop_oneof![
        3 => name.clone().prop_map(Op::Lookup),
        3 => name.clone().prop_map(Op::Open),
        6 => (0..8usize, 0..48_000u64, 1..40_000u32)
            .prop_map(|(handle, offset, len)| Op::Read { handle, offset, len }),
        2 => (0..8usize).prop_map(Op::Release),
        1 => name.clone().prop_map(Op::Forget),
        1 => name.clone().prop_map(Op::Purge),
        2 => (name, 0..45_000usize).prop_map(|(name, len)| Op::Change { name, len }),
        1 => Just(Op::Restart),
    ]
}

/// An inode the kernel holds: its name, the version it shows (`None`: not known to the
/// model, after a restart), its lookups and its open handles.
struct InodeModel {
    name: usize,
    version: Option<usize>,
    lookups: u64,
    opens: usize,
}

struct HandleModel {
    fh: u64,
    ino: u64,
    /// The versions this handle may be reading; reads narrow them down, never to none.
    candidates: Vec<usize>,
}

struct Model {
    /// Every version of each name, the current one last.
    versions: Vec<Vec<Bytes>>,
    /// The inode each name was last looked up as.
    latest: Vec<Option<u64>>,
    inodes: HashMap<u64, InodeModel>,
    handles: Vec<HandleModel>,
}

impl Model {
    fn current(&self, name: usize) -> usize {
        self.versions[name].len() - 1
    }

    fn slice(&self, name: usize, version: usize, offset: u64, len: u32) -> &[u8] {
        let bytes = &self.versions[name][version];
        let start = (offset as usize).min(bytes.len());
        let end = (offset as usize + len as usize).min(bytes.len());
        &bytes[start..end]
    }
}

/// The system under test with its origin, and the model beside it.
struct Run {
    kernel: Option<Kernel>,
    origin: Origin,
    dir: TempDir,
    model: Model,
}

impl Run {
    fn new() -> Run {
        let origin = Origin::start();
        let mut versions = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            let bytes = pattern(1000 * i as u64, 20_000 + 7_000 * i);
            origin.put(&format!("/{name}"), bytes.clone());
            versions.push(vec![bytes]);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = Kernel::mount(config(&origin, dir.path(), &SETTINGS));
        Run {
            kernel: Some(kernel),
            origin,
            dir,
            model: Model {
                versions,
                latest: vec![None; NAMES.len()],
                inodes: HashMap::new(),
                handles: Vec::new(),
            },
        }
    }

    fn kernel(&self) -> &Kernel {
        self.kernel.as_ref().expect("mounted")
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Lookup(name) => self.lookup(name).map(|_| ()),
            Op::Open(name) => self.open(name),
            Op::Read {
                handle,
                offset,
                len,
            } => self.read(handle, offset, len),
            Op::Release(handle) => {
                self.release(handle);
                Ok(())
            }
            Op::Forget(name) => {
                self.forget(name);
                Ok(())
            }
            Op::Purge(name) => {
                let purged = self
                    .kernel()
                    .fs
                    .unlink(ROOT, OsStr::new(NAMES[name]), ROOT_UID);
                prop_assert!(purged.is_ok(), "purge {}: {purged:?}", NAMES[name]);
                Ok(())
            }
            Op::Change { name, len } => {
                self.change(name, len);
                Ok(())
            }
            Op::Restart => {
                self.restart();
                Ok(())
            }
        }?;
        let counted = self.kernel().fs.open_handles();
        prop_assert_eq!(
            counted,
            self.model.handles.len(),
            "open handles after {:?}",
            op
        );
        Ok(())
    }

    /// A lookup shows the current version: on the name's inode when that inode shows it,
    /// else on a new inode.
    fn lookup(&mut self, name: usize) -> Result<u64, TestCaseError> {
        let entry = self.kernel().lookup(ROOT, NAMES[name]);
        let entry = entry.map_err(|e| TestCaseError::fail(format!("lookup: {e}")))?;
        let current = self.model.current(name);
        let size = self.model.versions[name][current].len() as u64;
        prop_assert_eq!(entry.attr.size, size, "lookup {} size", NAMES[name]);
        let ino = entry.attr.ino;
        let previous = self.model.latest[name];
        let known = previous.and_then(|p| self.model.inodes.get(&p).map(|m| (p, m.version)));
        match known {
            Some((previous, Some(version))) if version == current => {
                prop_assert_eq!(ino, previous, "same version, same inode");
            }
            Some((previous, Some(_))) => prop_assert_ne!(ino, previous, "a new version"),
            _ => {}
        }
        let inode = self.model.inodes.entry(ino).or_insert(InodeModel {
            name,
            version: None,
            lookups: 0,
            opens: 0,
        });
        inode.lookups += 1;
        inode.version = Some(current);
        self.model.latest[name] = Some(ino);
        Ok(ino)
    }

    /// An inode no file is reading moves to the current version when opened; one being
    /// read keeps its version.
    fn open(&mut self, name: usize) -> Result<(), TestCaseError> {
        let ino = match self.model.latest[name] {
            Some(ino) => ino,
            None => self.lookup(name)?,
        };
        let opened = self.kernel().open(ino);
        let fh = opened
            .map_err(|e| TestCaseError::fail(format!("open: {e}")))?
            .fh;
        let current = self.model.current(name);
        let inode = self.model.inodes.get_mut(&ino).expect("looked up");
        if inode.opens == 0 && inode.version.is_some() {
            inode.version = Some(current);
        }
        inode.opens += 1;
        let candidates = match inode.version {
            Some(version) => vec![version],
            None => (0..=current).collect(),
        };
        self.model.handles.push(HandleModel {
            fh,
            ino,
            candidates,
        });
        Ok(())
    }

    fn read(&mut self, handle: usize, offset: u64, len: u32) -> Result<(), TestCaseError> {
        if self.model.handles.is_empty() {
            return Ok(());
        }
        let index = handle % self.model.handles.len();
        let (fh, ino) = (self.model.handles[index].fh, self.model.handles[index].ino);
        let name = self.model.inodes[&ino].name;
        let read = self.kernel().read(ino, fh, offset, len);
        let current = self.model.current(name);
        let model = &self.model;
        let candidates = &model.handles[index].candidates;
        match read {
            Ok(bytes) => {
                let matching: Vec<usize> = candidates
                    .iter()
                    .copied()
                    .filter(|&v| model.slice(name, v, offset, len) == &bytes[..])
                    .collect();
                prop_assert!(
                    !matching.is_empty(),
                    "read {offset}+{len} of {} gave bytes of none of versions {candidates:?}",
                    NAMES[name]
                );
                self.model.handles[index].candidates = matching;
            }
            Err(error) => {
                let may_fail = candidates.iter().any(|&v| v != current);
                prop_assert!(
                    may_fail,
                    "read {offset}+{len} of the current {} failed: {error}",
                    NAMES[name]
                );
                prop_assert!(
                    !matches!(error, FsError::Stale),
                    "an open handle is never stale"
                );
            }
        }
        Ok(())
    }

    fn release(&mut self, handle: usize) {
        if self.model.handles.is_empty() {
            return;
        }
        let released = self.model.handles.remove(handle % self.model.handles.len());
        self.kernel().release(released.fh);
        if let Some(inode) = self.model.inodes.get_mut(&released.ino) {
            inode.opens -= 1;
        }
    }

    /// The kernel forgets a name's inode once no file of it is open.
    fn forget(&mut self, name: usize) {
        let Some(ino) = self.model.latest[name] else {
            return;
        };
        let inode = &self.model.inodes[&ino];
        if inode.opens > 0 {
            return;
        }
        self.kernel().forget(ino, inode.lookups);
        self.model.inodes.remove(&ino);
        self.model.latest[name] = None;
    }

    /// The origin gets a new version, and the cached one goes stale.
    fn change(&mut self, name: usize, len: usize) {
        let version = self.model.versions[name].len() as u64;
        let bytes = pattern(1000 * name as u64 + version, len);
        self.origin
            .replace(&format!("/{}", NAMES[name]), bytes.clone());
        self.model.versions[name].push(bytes);
        self.kernel().expire(NAMES[name]);
    }

    /// Inodes and handles carry over; which version a carried inode shows is the cache's
    /// business, so the model forgets it.
    fn restart(&mut self) {
        let kernel = self.kernel.take().expect("mounted");
        let config = config(&self.origin, self.dir.path(), &SETTINGS);
        let (kernel, _) = kernel.restart(config);
        self.kernel = Some(kernel);
        for inode in self.model.inodes.values_mut() {
            inode.version = None;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn stonfs_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..32)) {
        let mut run = Run::new();
        for op in &ops {
            run.apply(op)?;
        }
        // Every handle released and every inode forgotten leaves nothing open.
        while !run.model.handles.is_empty() {
            run.release(0);
        }
        prop_assert_eq!(run.kernel().fs.open_handles(), 0);
    }
}

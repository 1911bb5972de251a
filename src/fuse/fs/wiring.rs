//! How a file system is wired to its FUSE connection: the passthrough registrations and the
//! restart journal come in one value, once. No order of calls can then leave a registration,
//! an inode or a handle out of the journal, and wiring twice is an error, never dropped.

use std::path::PathBuf;
use std::sync::Arc;

use super::{KernelCache, StonFs, TakeoverReport};
use crate::base::{FsError, FsResult};
use crate::fuse::journal::{Carried, Journal};
use crate::fuse::passthrough::{Backings, JournaledBackings};

/// Where registrations are made, and whether this process records its kernel state.
pub enum Wiring {
    /// Nothing outlives this process: registrations are made and closed, nothing recorded.
    Unjournaled { backings: Arc<dyn Backings> },
    /// Every inode, handle and registration is recorded in `journal` from the first one, for
    /// a process that takes the mount over.
    Journaled {
        backings: Arc<dyn Backings>,
        journal: Arc<Journal>,
    },
}

/// What a wired file system holds of its connection.
pub(super) struct Wired {
    /// Registrations, through the journal when there is one.
    pub(super) backings: Arc<dyn Backings>,
    pub(super) journal: Option<Arc<Journal>>,
}

fn wired_twice(what: &str) -> FsError {
    FsError::Io(format!("the file system was given its {what} twice"))
}

impl StonFs {
    /// Wires the file system to its connection. Call once, before serving.
    pub fn wire(&self, wiring: Wiring) -> FsResult<()> {
        let wired = match wiring {
            Wiring::Unjournaled { backings } => Wired {
                backings,
                journal: None,
            },
            Wiring::Journaled { backings, journal } => Wired {
                backings: Arc::new(JournaledBackings::new(backings, journal.clone())),
                journal: Some(journal),
            },
        };
        let journal = wired.journal.clone();
        self.wired
            .set(wired)
            .map_err(|_| wired_twice("connection"))?;
        match journal {
            Some(journal) => self
                .inodes
                .set_journal(journal)
                .map_err(|_| wired_twice("journal")),
            None => Ok(()),
        }
    }

    /// Wires a connection taken over from a previous process, whose journal carried
    /// `carried`, and puts back what it handed to the kernel. Call once, instead of
    /// [`StonFs::wire`], before serving.
    pub fn take_over(
        &self,
        backings: Arc<dyn Backings>,
        journal: Arc<Journal>,
        carried: Carried,
    ) -> FsResult<TakeoverReport> {
        self.wire(Wiring::Journaled { backings, journal })?;
        Ok(self.restore(carried))
    }

    /// How the kernel's caches are invalidated (once the session exists).
    pub fn set_kernel_cache(&self, kernel: Arc<dyn KernelCache>) -> FsResult<()> {
        self.kernel
            .set(kernel)
            .map_err(|_| wired_twice("kernel cache"))
    }

    /// The control socket's path, published on the mount root as [`super::SOCKET_XATTR`].
    pub fn set_control_socket(&self, path: PathBuf) -> FsResult<()> {
        self.control_socket
            .set(path)
            .map_err(|_| wired_twice("control socket"))
    }

    /// Where registrations are made; `None` before the file system is wired.
    pub(super) fn backings(&self) -> Option<&Arc<dyn Backings>> {
        self.wired.get().map(|wired| &wired.backings)
    }

    /// The restart journal, when this connection has one.
    pub(super) fn journal(&self) -> Option<&Arc<Journal>> {
        self.wired.get().and_then(|wired| wired.journal.as_ref())
    }
}

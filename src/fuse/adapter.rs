//! FUSE adapter: kernel requests in, [`StonFs`] calls out, replies back. Each handler only
//! turns a value into a reply; the logic lives in [`super::fs`].
//!
//! Answers that need the origin come back as futures and are replied to from the I/O
//! runtime, so a FUSE thread never waits for the network. Handlers never panic.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, Notifier, OpenFlags, PollEvents,
    PollFlags, PollNotifier, RenameFlags, ReplyAttr, ReplyBmap, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyPoll,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::fs::{
    Answer, Attr, DirEntry, Entry, EntryKind, KernelCache, KernelFeatures, OpenIo, Opened, StonFs,
    Xattr,
};
use crate::base::FsError;

/// The fuser face of a [`StonFs`].
pub struct FuseAdapter {
    fs: Arc<StonFs>,
    runtime: tokio::runtime::Handle,
}

impl FuseAdapter {
    pub fn new(fs: Arc<StonFs>, runtime: tokio::runtime::Handle) -> FuseAdapter {
        FuseAdapter { fs, runtime }
    }

    /// Replies now, or once the answer's future is done, from the I/O runtime.
    fn answer<T: Send + 'static>(
        &self,
        answer: Answer<T>,
        reply: impl FnOnce(Result<T, FsError>) + Send + 'static,
    ) {
        match answer {
            Answer::Now(result) => reply(result),
            Answer::Later(future) => {
                self.runtime.spawn(async move { reply(future.await) });
            }
        }
    }
}

/// The errno of an error: decided in one place, [`FsError::errno`].
fn errno(error: &FsError) -> Errno {
    Errno::from_i32(error.errno())
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.mtime,
        crtime: attr.mtime,
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: attr.blksize,
        flags: 0,
    }
}

fn file_type(kind: EntryKind) -> FileType {
    match kind {
        EntryKind::File => FileType::RegularFile,
        EntryKind::Directory => FileType::Directory,
    }
}

fn reply_entry(reply: ReplyEntry, entry: Result<Entry, FsError>) {
    match entry {
        Ok(entry) => reply.entry(&entry.ttl, &file_attr(&entry.attr), Generation(0)),
        Err(error) => reply.error(errno(&error)),
    }
}

fn reply_open(reply: ReplyOpen, opened: Result<Opened, FsError>) {
    // Nothing is ever written, so closing needs no FLUSH round trip.
    let base = FopenFlags::FOPEN_NOFLUSH;
    match opened {
        Ok(Opened {
            fh,
            io: OpenIo::Passthrough { backing_id },
        }) => {
            // SAFETY: `backing_id` was registered on this connection and stays open while
            // the inode has passthrough handles; into_raw below keeps this wrapper from
            // closing it.
            let backing = unsafe { reply.wrap_backing(backing_id) };
            reply.opened_passthrough(FileHandle(fh), base, &backing);
            backing.into_raw();
        }
        Ok(Opened {
            fh,
            io:
                OpenIo::Cached {
                    keep_cache,
                    direct_io,
                },
        }) => {
            let flags = match (direct_io, keep_cache) {
                (true, _) => base | FopenFlags::FOPEN_DIRECT_IO,
                (false, true) => base | FopenFlags::FOPEN_KEEP_CACHE,
                (false, false) => base,
            };
            reply.opened(FileHandle(fh), flags);
        }
        Err(error) => reply.error(errno(&error)),
    }
}

/// Sends directory entries from `offset` on, as many as fit.
fn fill_directory(mut reply: ReplyDirectory, entries: &[DirEntry], offset: u64) {
    for (i, entry) in entries.iter().enumerate().skip(offset as usize) {
        let next = (i + 1) as u64;
        if reply.add(INodeNo(entry.ino), next, file_type(entry.kind), &entry.name) {
            break;
        }
    }
    reply.ok();
}

fn reply_xattr(reply: ReplyXattr, value: Result<Xattr, FsError>) {
    match value {
        Ok(Xattr::Size(size)) => reply.size(size),
        Ok(Xattr::Data(data)) => reply.data(&data),
        Err(error) => reply.error(errno(&error)),
    }
}

/// Page-cache invalidation over the session's notifier.
pub struct SessionCache(pub Notifier);

impl KernelCache for SessionCache {
    fn invalidate_inode(&self, ino: u64) {
        if let Err(e) = self.0.inval_inode(INodeNo(ino), 0, 0) {
            tracing::debug!(ino, "page cache invalidation: {e}");
        }
    }

    fn invalidate_entry(&self, parent: u64, name: &str) {
        if let Err(e) = self
            .0
            .inval_entry(INodeNo(parent), std::ffi::OsStr::new(name))
        {
            tracing::debug!(parent, name, "entry invalidation: {e}");
        }
    }
}

/// Asks the kernel for what the logic can use; returns what it granted.
fn negotiate(config: &mut KernelConfig, passthrough: bool, direct_io: bool) -> KernelFeatures {
    for wanted in [
        InitFlags::FUSE_PARALLEL_DIROPS,
        InitFlags::FUSE_ASYNC_READ,
        InitFlags::FUSE_MAX_PAGES,
    ] {
        if config.add_capabilities(wanted).is_err() {
            tracing::debug!("kernel lacks {wanted:?}");
        }
    }
    let _ = config.set_max_readahead(1 << 20);
    let _ = config.set_max_background(64);
    // Kernel >= 6.6: programs may mmap files opened for direct I/O.
    let direct_io_mmap = direct_io
        && config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok();
    if direct_io && !direct_io_mmap {
        tracing::info!("kernel cannot mmap direct-I/O files; every open uses the page cache");
    }
    // The cache files live on an ordinary file system: one level of stacking.
    let granted = passthrough
        && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
        && config.set_max_stack_depth(1).is_ok();
    if passthrough && !granted {
        tracing::info!("kernel has no FUSE passthrough; every read goes through the daemon");
    }
    KernelFeatures {
        passthrough: granted,
        direct_io_mmap,
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let settings = self.fs.cache().config();
        let (passthrough, direct_io) = (settings.passthrough, settings.direct_io_min_size > 0);
        let features = negotiate(config, passthrough, direct_io);
        self.fs.set_kernel_features(features);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let answer = self.fs.lookup(parent.0, name);
        self.answer(answer, move |entry| reply_entry(reply, entry));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let answer = self.fs.getattr(ino.0);
        self.answer(answer, move |result| match result {
            Ok((attr, ttl)) => reply.attr(&ttl, &file_attr(&attr)),
            Err(error) => reply.error(errno(&error)),
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let answer = self.fs.open(ino.0, flags.0);
        self.answer(answer, move |opened| reply_open(reply, opened));
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let answer = self.fs.read(ino.0, fh.0, offset, size);
        self.answer(answer, move |result| match result {
            Ok(data) => reply.data(&data),
            Err(error) => reply.error(errno(&error)),
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever written, so there is nothing to flush: ENOSYS tells the kernel not
        // to send FLUSH on any later close, which saves a round trip per close.
        reply.error(errno(&FsError::NotNeeded));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let answer = self.fs.readdir(ino.0);
        self.answer(answer, move |result| match result {
            Ok(entries) => fill_directory(reply, &entries, offset),
            Err(error) => reply.error(errno(&error)),
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let stat = self.fs.statfs();
        let inodes = u64::MAX / 2;
        reply.statfs(
            stat.blocks,
            stat.free,
            stat.free,
            stat.files,
            inodes,
            4096,
            255,
            4096,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.fs.access(ino.0, mask.contains(AccessFlags::W_OK)) {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, self.fs.getxattr(ino.0, name, size));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, Ok(self.fs.listxattr(size)));
    }

    /// Unlinking a cached file runs the configured `unlink` invalidation.
    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.unlink(parent.0, name, req.uid()) {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(errno(&error)),
        }
    }

    // Everything that would change the tree is refused: the origin is the only writer.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    // Calls this file system does not serve are answered quietly: fuser's defaults log a
    // warning each, and any user could flood the log with `isatty` alone.

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(errno(&FsError::NoIoctl));
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        reply.error(Errno::EINVAL); // there are no symbolic links here
    }

    /// ENOSYS: the kernel stops asking and treats fsync of this read-only mount as done.
    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _d: bool, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// ENOSYS: the kernel then seeks by itself (and stops asking), as for any plain file.
    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: ReplyLseek,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn bmap(&self, _req: &Request, _ino: INodeNo, _bs: u32, _idx: u64, reply: ReplyBmap) {
        reply.error(Errno::ENOSYS);
    }
}

//! The FUSE adapter: each callback calls one method of [`StorageFs`] and turns its result
//! into a reply. Errors become errno here, through [`FsError::errno`] only; a panic in
//! the core answers EIO for that one request and the mount stays up.

use std::ffi::OsStr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use rustix::fs::Timestamps;

use super::access::{Callers, MountAccess};
use super::attr::{dot_attr, timespec};
use super::caching::Caching;
use super::core::{Caller, SetAttr, StorageFs};
use super::opening::Opened;
use crate::error::{FsError, FsResult};
use crate::layout::Role;

/// Serves a [`StorageFs`] to the kernel.
#[derive(Debug)]
pub struct FuseAdapter {
    fs: Arc<StorageFs>,
    /// What the kernel may keep of each node, and for how long: asked of every reply
    /// that gives the kernel an entry, attributes or an open handle.
    caching: Caching,
    want_passthrough: bool,
    /// Who may use the mount; checked in [`call`](Self::call) only.
    access: MountAccess,
}

impl FuseAdapter {
    pub fn new(
        fs: Arc<StorageFs>,
        caching: Caching,
        want_passthrough: bool,
        callers: Callers,
    ) -> Self {
        FuseAdapter {
            fs,
            caching,
            want_passthrough,
            access: MountAccess::new(callers),
        }
    }

    /// Runs one core operation for the caller of `req`: callers the mount does not serve
    /// are refused here, the one place that checks (operations on a handle are served to
    /// whoever holds it: an allowed caller opened it). Panics become EIO, errors are
    /// logged with the path.
    fn call<T>(
        &self,
        op: &'static str,
        req: &Request,
        ino: u64,
        f: impl FnOnce() -> FsResult<T>,
    ) -> Result<T, Errno> {
        self.call_as(op, req.uid(), ino, f)
    }

    fn call_as<T>(
        &self,
        op: &'static str,
        uid: u32,
        ino: u64,
        f: impl FnOnce() -> FsResult<T>,
    ) -> Result<T, Errno> {
        let result = if let Err(refused) = self.access.check(op, uid) {
            Err(refused)
        } else {
            catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
                let detail = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                Err(FsError::Internal {
                    path: self.fs.path_of(ino),
                    detail,
                })
            })
        };
        self.fs
            .stats()
            .record(op, result.as_ref().err().map(FsError::errno));
        result.map_err(|e| {
            if e.is_unexpected() {
                tracing::warn!(op, path = %self.fs.path_of(ino), error = %e, "request failed");
            } else {
                tracing::debug!(op, error = %e, "request refused");
            }
            Errno::from_i32(e.errno())
        })
    }

    /// Runs an operation whose reply is empty.
    fn reply_empty(
        &self,
        op: &'static str,
        req: &Request,
        ino: u64,
        reply: ReplyEmpty,
        f: impl FnOnce() -> FsResult<()>,
    ) {
        match self.call(op, req, ino, f) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Answers a refused operation with its error (counted and logged like any other).
    fn refuse(&self, op: &'static str, req: &Request, ino: u64, why: FsError) -> Errno {
        let r: Result<(), Errno> = self.call(op, req, ino, || Err(why));
        r.expect_err("refused")
    }

    fn caller(req: &Request) -> Caller {
        Caller {
            uid: req.uid(),
            gid: req.gid(),
        }
    }

    /// How long the kernel may keep `attr`, node `ino`'s attributes (by its role).
    fn attr_ttl(&self, ino: u64, attr: &FileAttr) -> Duration {
        let role = self.fs.role_of(ino).unwrap_or(Role::Unknown);
        self.caching.found(role, is_dir(attr)).attr
    }

    /// The flags of an open of a node of `role` (asked only when it matters: a read
    /// through the page cache).
    fn open_flags(&self, opened: &Opened, role: impl FnOnce() -> Role) -> FopenFlags {
        let mut flags = FopenFlags::empty();
        if opened.direct_io {
            flags |= FopenFlags::FOPEN_DIRECT_IO;
        } else if opened.backing.is_none() && self.caching.keeps_data(role()) {
            flags |= FopenFlags::FOPEN_KEEP_CACHE;
        }
        if !opened.flush {
            flags |= FopenFlags::FOPEN_NOFLUSH;
        }
        flags
    }
}

fn is_dir(attr: &FileAttr) -> bool {
    attr.kind == FileType::Directory
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // FUSE_DIRECT_IO_ALLOW_MMAP: files the daemon serves use direct I/O (see
        // `fs::io`); without it the kernel refuses to map them shared (ENODEV).
        let wanted = InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP;
        let _ = config.add_capabilities(wanted & config.capabilities());
        let granted = self.want_passthrough
            && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok();
        self.fs.set_passthrough(granted);
        if granted {
            tracing::info!("kernel read passthrough: on");
        } else if self.want_passthrough {
            tracing::info!(
                "kernel read passthrough not granted by this kernel; reads go through the daemon"
            );
        } else {
            tracing::info!("kernel read passthrough: off (disabled by option)");
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        // A name the policy hides (a blob an online run is about to delete) may be shown
        // again any moment (a write takes it back): its absence is not cached.
        let found = self.call("lookup", req, parent.0, || {
            match self.fs.lookup(parent.0, name) {
                Ok(e) => Ok(Some(e)),
                Err(FsError::Hidden { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        match found {
            Ok(Some(e)) => {
                let t = self.caching.found(e.role, is_dir(&e.attr));
                reply.entry_with_ttls(&t.attr, &t.entry, &e.attr, Generation(0))
            }
            Ok(None) => reply.error(Errno::from_i32(libc::ENOENT)),
            // A negative entry the kernel may keep (a daemon alone: the registry stats
            // many paths that do not exist yet, and every creation goes through this
            // mount anyway).
            Err(e) if e == Errno::from_i32(libc::ENOENT) => match self.caching.absent() {
                Some(ttl) => reply.entry(&ttl, &dot_attr(0), Generation(0)),
                None => reply.error(e),
            },
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.stats().record("forget", None);
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.call("getattr", req, ino.0, || self.fs.getattr(ino.0)) {
            Ok(attr) => reply.attr(&self.attr_ttl(ino.0, &attr), &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let times = (atime.is_some() || mtime.is_some()).then(|| Timestamps {
            last_access: timespec(atime),
            last_modification: timespec(mtime),
        });
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            times,
            fh: fh.map(|f| f.0),
        };
        match self.call("setattr", req, ino.0, || self.fs.setattr(ino.0, change)) {
            Ok(attr) => reply.attr(&self.attr_ttl(ino.0, &attr), &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        self.fs.stats().record("readlink", Some(libc::EINVAL));
        reply.error(Errno::from_i32(libc::EINVAL));
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse(
            "mknod",
            req,
            parent.0,
            FsError::NotSupported {
                what: "a device node",
            },
        ));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.call("mkdir", req, parent.0, || {
            self.fs.mkdir(parent.0, name, mode, Self::caller(req))
        }) {
            Ok(e) => {
                let t = self.caching.found(e.role, is_dir(&e.attr));
                reply.entry_with_ttls(&t.attr, &t.entry, &e.attr, Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.reply_empty("unlink", req, parent.0, reply, || {
            self.fs.unlink(parent.0, name)
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.reply_empty("rmdir", req, parent.0, reply, || {
            self.fs.rmdir(parent.0, name)
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse(
            "symlink",
            req,
            parent.0,
            FsError::NotSupported {
                what: "a symbolic link",
            },
        ));
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.call("rename", req, parent.0, || {
            self.fs
                .rename(parent.0, name, newparent.0, newname, flags.bits())
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse(
            "link",
            req,
            ino.0,
            FsError::NotSupported {
                what: "a hard link",
            },
        ));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let make = |fd: std::os::fd::BorrowedFd<'_>| reply.open_backing(fd);
        let r = self.call("open", req, ino.0, || {
            self.fs.open(ino.0, flags.0, Some(&make))
        });
        match r {
            Ok(opened) => {
                let fl =
                    self.open_flags(&opened, || self.fs.role_of(ino.0).unwrap_or(Role::Unknown));
                match &opened.backing {
                    Some(id) => reply.opened_passthrough(FileHandle(opened.fh), fl, id),
                    None => reply.opened(FileHandle(opened.fh), fl),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.call("read", req, ino.0, || self.fs.read(fh.0, offset, size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.call("write", req, ino.0, || self.fs.write(fh.0, offset, data)) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Sent only for handles opened without FOPEN_NOFLUSH (a link's writers): close(2)
        // returns after this does. Never ENOSYS, which would stop FLUSH for the mount.
        self.reply_empty("flush", req, ino.0, reply, || self.fs.flush(fh.0));
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.reply_empty("release", req, ino.0, reply, || self.fs.release(fh.0));
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.reply_empty("fsync", req, ino.0, reply, || self.fs.fsync(fh.0, datasync));
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.call("opendir", req, ino.0, || self.fs.opendir(ino.0)) {
            // Alone, the kernel may keep listings across opens: every change goes
            // through this mount (which updates them) or is the daemon's own (which
            // invalidates). Over a shared store a listing is kept for one open only.
            Ok(fh) => {
                let mut flags = FopenFlags::FOPEN_CACHE_DIR;
                if self.caching.keeps_listing() {
                    flags |= FopenFlags::FOPEN_KEEP_CACHE;
                }
                reply.opened(FileHandle(fh), flags)
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.call("readdir", req, ino.0, || {
            self.fs.readdir(fh.0, offset, false, &mut |item| {
                reply.add(INodeNo(item.ino), item.offset, item.kind, item.name)
            })
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let caching = self.caching;
        let r = self.call("readdirplus", req, ino.0, || {
            self.fs.readdir(fh.0, offset, true, &mut |item| {
                let attr = item.attr.unwrap_or_else(|| dot_attr(item.ino));
                let ttl = caching
                    .found(item.role.unwrap_or(Role::Unknown), is_dir(&attr))
                    .shorter();
                reply.add(
                    INodeNo(item.ino),
                    item.offset,
                    item.name,
                    &ttl,
                    &attr,
                    Generation(0),
                )
            })
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.reply_empty("releasedir", req, ino.0, reply, || self.fs.releasedir(fh.0));
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.reply_empty("fsyncdir", req, ino.0, reply, || {
            self.fs.fsyncdir(fh.0, datasync)
        });
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        match self.call("statfs", req, ino.0, || self.fs.statfs()) {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(self.refuse("setxattr", req, ino.0, FsError::NoXattr));
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(self.refuse("getxattr", req, ino.0, FsError::NoXattr));
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(self.refuse("listxattr", req, ino.0, FsError::NoXattr));
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.refuse("removexattr", req, ino.0, FsError::NoXattr));
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.reply_empty("access", req, ino.0, reply, || {
            self.fs.access(ino.0, mask.bits())
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let make = |fd: std::os::fd::BorrowedFd<'_>| reply.open_backing(fd);
        let r = self.call("create", req, parent.0, || {
            self.fs
                .create(parent.0, name, mode, flags, Self::caller(req), Some(&make))
        });
        match r {
            Ok((entry, opened)) => {
                let fl = self.open_flags(&opened, || entry.role);
                let fh = FileHandle(opened.fh);
                let ttl = self
                    .caching
                    .found(entry.role, is_dir(&entry.attr))
                    .shorter();
                match &opened.backing {
                    Some(id) => {
                        reply.created_passthrough(&ttl, &entry.attr, Generation(0), fh, fl, id)
                    }
                    None => reply.created(&ttl, &entry.attr, Generation(0), fh, fl),
                }
            }
            Err(e) => reply.error(e),
        }
    }
}

#[cfg(test)]
#[path = "adapter_tests.rs"]
mod tests;

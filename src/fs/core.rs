//! The filesystem core: every operation as a plain method that returns a result, so
//! tests can drive it without a mount. The FUSE adapter turns these into replies.
//!
//! Every name is resolved one component at a time from its parent's O_PATH handle with
//! O_NOFOLLOW; symbolic links, special files and entries on other devices are refused.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use fuser::{FileAttr, Notifier};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, Stat};

use super::attr::{check_name, file_attr};
use super::handle_table::HandleTable;
use super::inode::{Found, Inode, InodeKey, InodeTable, Kind};
use super::open::{OpenDir, OpenFile};
use super::unlinked::in_dir_error;
use crate::error::{FsError, FsResult};
use crate::policy::{Change, ChangeLease, Name, StorePolicy, Write, WriteMeaning};

/// What a successful lookup or create hands to the kernel.
#[derive(Debug, Clone)]
pub struct Entry {
    pub attr: FileAttr,
}

/// Who asks: the caller's credentials, for ownership of what it creates.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// Filesystem statistics of the backing store.
#[derive(Debug, Clone, Copy)]
pub struct FsStats {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// Attribute changes asked for by setattr.
#[derive(Debug, Default, Clone)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub times: Option<rfs::Timestamps>,
    pub fh: Option<u64>,
}

#[derive(Debug)]
pub struct StorageFs {
    pub(super) inodes: InodeTable,
    pub(super) files: HandleTable<OpenFile>,
    pub(super) dirs: HandleTable<OpenDir>,
    /// Decides what may change, write and be seen; the core only carries it out. The
    /// composition root (`runtime::compose`) builds it; the core knows only the trait.
    pub(super) policy: Arc<dyn StorePolicy>,
    /// /proc/self/fd, to reopen O_PATH handles with real access modes.
    pub(super) proc_fd: OwnedFd,
    pub(super) root_dev: u64,
    /// Passthrough usable now (cleared if the kernel refuses a backing file).
    pub(super) passthrough: AtomicBool,
    /// Passthrough was granted at init: opens without it must then be direct I/O.
    pub(super) passthrough_granted: AtomicBool,
    pub(super) notifier: OnceLock<Notifier>,
    /// Read requests served by the daemon (not by kernel passthrough).
    pub(super) daemon_reads: AtomicU64,
    /// Write requests served by the daemon (not by kernel passthrough).
    pub(super) daemon_writes: AtomicU64,
    stats: super::stats::FuseStats,
}

/// Half the soft open-file limit: room for open files and directories besides.
fn default_fd_budget() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20);
    (limit.min(1 << 22) / 2) as usize
}

fn key_of(st: &Stat) -> InodeKey {
    InodeKey {
        dev: st.st_dev,
        ino: st.st_ino,
    }
}

fn is_setgid_dir(st: &Stat) -> bool {
    st.st_mode & libc::S_ISGID != 0
}

impl StorageFs {
    /// Opens the store at `root` under `policy`. The root handle is taken now, so a
    /// mount placed over the same directory later still reaches the real directory
    /// underneath.
    pub fn new(root: &Path, policy: Arc<dyn StorePolicy>) -> FsResult<Self> {
        Self::with_fd_budget(root, policy, default_fd_budget())
    }

    /// As [`new`](Self::new), keeping at most `fd_budget` inode descriptors open.
    pub fn with_fd_budget(
        root: &Path,
        policy: Arc<dyn StorePolicy>,
        fd_budget: usize,
    ) -> FsResult<Self> {
        let shown = root.display().to_string();
        let fd = rfs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FsError::backing("open store", &shown, e))?;
        let st = rfs::fstat(&fd).map_err(|e| FsError::backing("stat store", &shown, e))?;
        let mount_fd = rfs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FsError::backing("open store", &shown, e))?;
        let proc_fd = rfs::open(
            "/proc/self/fd",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FsError::backing("open", "/proc/self/fd", e))?;
        Ok(StorageFs {
            inodes: InodeTable::new(fd, mount_fd, Found::new(&st, Kind::Directory), fd_budget)
                .map_err(|e| FsError::backing("open store", &shown, e))?,
            files: HandleTable::new(),
            dirs: HandleTable::new(),
            policy,
            proc_fd,
            root_dev: st.st_dev,
            passthrough: AtomicBool::new(false),
            passthrough_granted: AtomicBool::new(false),
            notifier: OnceLock::new(),
            daemon_reads: AtomicU64::new(0),
            daemon_writes: AtomicU64::new(0),
            stats: super::stats::FuseStats::default(),
        })
    }

    /// Lets the core tell the kernel about changes it makes itself (the sweep).
    pub fn set_notifier(&self, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// Turns kernel read passthrough on or off (decided at init).
    pub fn set_passthrough(&self, on: bool) {
        self.passthrough.store(on, Ordering::Release);
        self.passthrough_granted.store(on, Ordering::Release);
    }

    pub fn passthrough_enabled(&self) -> bool {
        self.passthrough.load(Ordering::Acquire)
    }

    /// Read requests the daemon served itself; reads through kernel passthrough never
    /// reach it.
    pub fn daemon_reads(&self) -> u64 {
        self.daemon_reads.load(Ordering::Relaxed)
    }

    /// Write requests the daemon served itself; writes of upload data through kernel
    /// passthrough never reach it.
    pub fn daemon_writes(&self) -> u64 {
        self.daemon_writes.load(Ordering::Relaxed)
    }

    /// FUSE requests served and failed, for metrics.
    pub fn stats(&self) -> &super::stats::FuseStats {
        &self.stats
    }

    /// Number of inodes the kernel holds references to.
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    pub(super) fn inode(&self, id: u64) -> FsResult<Arc<Inode>> {
        self.inodes
            .get(id)
            .ok_or(FsError::Stale { what: "inode", id })
    }

    /// Path of node `id` for logs; empty for the root, `?` when unknown.
    pub fn path_of(&self, id: u64) -> String {
        self.inodes
            .get(id)
            .map(|i| i.path())
            .unwrap_or_else(|| format!("?{id}"))
    }

    /// What node `id` is in the registry's layout (computed when it was looked up).
    pub fn role_of(&self, id: u64) -> Option<crate::layout::Role> {
        self.inodes.get(id).map(|i| i.role())
    }

    /// An O_PATH descriptor of `inode` (reopened from its file handle if it was closed).
    pub(super) fn fd_of(&self, inode: &Inode) -> FsResult<Arc<OwnedFd>> {
        inode
            .fd()
            .map_err(|e| FsError::backing("open", inode.path(), e))
    }

    /// Inode descriptors open now, and whether inodes are kept by file handle.
    /// Inode descriptors kept open at most (with file handles).
    pub fn fd_budget(&self) -> usize {
        self.inodes.fd_budget()
    }

    pub fn inode_fds(&self) -> (usize, bool) {
        (self.inodes.open_fds(), self.inodes.uses_handles())
    }

    /// Asks the policy for a namespace or attribute change; held while it runs.
    pub(super) fn admit_change(&self, change: Change<'_>) -> FsResult<ChangeLease> {
        self.policy.admit_change(&change)
    }

    /// Asks the policy whether `name` in `parent` is shown; a hidden name is missing.
    pub(super) fn admit_name(&self, parent: &Inode, name: &OsStr) -> FsResult<()> {
        let path = || parent.child_path(name);
        if self.policy.is_visible(&Name::new(name, &path)) {
            Ok(())
        } else {
            Err(FsError::Hidden { path: path() })
        }
    }

    /// Reopens an O_PATH handle with real flags through /proc/self/fd. The handle names
    /// one inode, so nothing here resolves a path in the store.
    pub(super) fn reopen(&self, fd: BorrowedFd<'_>, flags: OFlags) -> rustix::io::Result<OwnedFd> {
        let name = fd.as_raw_fd().to_string();
        rfs::openat(
            &self.proc_fd,
            name.as_str(),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
        )
    }

    /// Checks what an O_PATH handle found in the store is, and refuses what we never serve.
    fn admit_found(&self, st: &Stat, path: impl Fn() -> String) -> FsResult<Kind> {
        if st.st_dev != self.root_dev {
            return Err(FsError::OtherDevice { path: path() });
        }
        match rfs::FileType::from_raw_mode(st.st_mode) {
            rfs::FileType::RegularFile => Ok(Kind::File),
            rfs::FileType::Directory => Ok(Kind::Directory),
            rfs::FileType::Symlink => Err(FsError::Symlink { path: path() }),
            _ => Err(FsError::SpecialFile { path: path() }),
        }
    }

    /// Resolves `name` in `parent` and counts one kernel reference to it.
    /// `keep_fd`: keep the new inode's descriptor open (a lookup is usually followed by
    /// an open; an entry of a directory listing usually is not).
    pub(super) fn lookup_in(
        &self,
        parent: &Arc<Inode>,
        name: &OsStr,
        keep_fd: bool,
    ) -> FsResult<Entry> {
        check_name(name)?;
        self.admit_name(parent, name)?;
        // The path is for error messages only: built when one is needed (this is the
        // hottest path of a directory walk).
        let path = || parent.child_path(name);
        let fd = rfs::openat(
            &*self.fd_of(parent)?,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FsError::backing("lookup", path(), e))?;
        let st = rfs::fstat(&fd).map_err(|e| FsError::backing("stat", path(), e))?;
        let found = Found::new(&st, self.admit_found(&st, path)?);
        let inode = self.inodes.remember(parent, name, found, fd, keep_fd);
        Ok(Entry {
            attr: file_attr(inode.id, &st),
        })
    }

    /// As [`lookup_in`](Self::lookup_in) for an entry of a directory listing: one
    /// fstatat, nothing opened (the inode is opened by name on first use, if ever).
    pub(super) fn lookup_listed(&self, parent: &Arc<Inode>, name: &OsStr) -> FsResult<Entry> {
        check_name(name)?;
        self.admit_name(parent, name)?;
        let path = || parent.child_path(name);
        let st = rfs::statat(&*self.fd_of(parent)?, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| FsError::backing("lookup", path(), e))?;
        let found = Found::new(&st, self.admit_found(&st, path)?);
        match self.inodes.remember_listed(parent, name, found) {
            Some(inode) => Ok(Entry {
                attr: file_attr(inode.id, &st),
            }),
            None => self.lookup_in(parent, name, false),
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        let parent = self.inode(parent)?;
        self.lookup_in(&parent, name, true)
    }

    pub fn forget(&self, id: u64, nlookup: u64) {
        self.inodes.forget(id, nlookup);
    }

    pub fn getattr(&self, id: u64) -> FsResult<FileAttr> {
        let inode = self.inode(id)?;
        let st = rfs::fstat(&*self.fd_of(&inode)?)
            .map_err(|e| FsError::backing("stat", inode.path(), e))?;
        Ok(file_attr(id, &st))
    }

    /// Gives what `fd` (just created by us as root) to the caller, as a plain filesystem
    /// would have: the caller's uid, and its gid unless the parent directory is setgid.
    /// chown clears a file's setuid/setgid bits, so the mode it was created with is put
    /// back afterwards.
    pub(super) fn give_to_caller(
        &self,
        parent: &Inode,
        fd: BorrowedFd<'_>,
        caller: Caller,
        path: &str,
    ) -> FsResult<()> {
        let pst = rfs::fstat(&*self.fd_of(parent)?)
            .map_err(|e| FsError::backing("stat", parent.path(), e))?;
        let st = rfs::fstat(fd).map_err(|e| FsError::backing("stat", path, e))?;
        let gid = (!is_setgid_dir(&pst)).then_some(caller.gid);
        if st.st_uid == caller.uid && gid.is_none_or(|g| g == st.st_gid) {
            return Ok(());
        }
        rfs::chownat(
            fd,
            "",
            Some(rfs::Uid::from_raw(caller.uid)),
            gid.map(rfs::Gid::from_raw),
            AtFlags::EMPTY_PATH,
        )
        .map_err(|e| FsError::backing("chown", path, e))?;
        let special = st.st_mode & (libc::S_ISUID | libc::S_ISGID);
        if special != 0 && rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::RegularFile {
            let name = fd.as_raw_fd().to_string();
            rfs::chmodat(
                &self.proc_fd,
                name.as_str(),
                Mode::from_raw_mode(st.st_mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(|e| FsError::backing("chmod", path, e))?;
        }
        Ok(())
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, caller: Caller) -> FsResult<Entry> {
        let parent = self.inode(parent)?;
        check_name(name)?;
        let path = parent.child_path(name);
        let _change = self.admit_change(Change::Mkdir { path: &path })?;
        let dir = self.fd_of(&parent)?;
        rfs::mkdirat(&*dir, name, Mode::from_raw_mode(mode & 0o7777))
            .map_err(|e| in_dir_error("mkdir", &path, &*dir, e))?;
        let fd = rfs::openat(
            &*self.fd_of(&parent)?,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FsError::backing("open", &path, e))?;
        self.give_to_caller(&parent, fd.as_fd(), caller, &path)?;
        drop(fd);
        self.lookup_in(&parent, name, true)
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.remove(parent, name, AtFlags::empty(), "unlink")
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.remove(parent, name, AtFlags::REMOVEDIR, "rmdir")
    }

    fn remove(&self, parent: u64, name: &OsStr, flags: AtFlags, op: &'static str) -> FsResult<()> {
        let parent = self.inode(parent)?;
        check_name(name)?;
        let path = parent.child_path(name);
        let _change = self.admit_change(Change::Remove { path: &path })?;
        rfs::unlinkat(&*self.fd_of(&parent)?, name, flags)
            .map_err(|e| FsError::backing(op, &path, e))
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        let parent = self.inode(parent)?;
        let new_parent = self.inode(new_parent)?;
        check_name(name)?;
        check_name(new_name)?;
        let path = parent.child_path(name);
        let allowed = rfs::RenameFlags::NOREPLACE | rfs::RenameFlags::EXCHANGE;
        let flags = rfs::RenameFlags::from_bits(flags)
            .filter(|f| allowed.contains(*f))
            .ok_or(FsError::NotSupported {
                what: "this rename flag",
            })?;
        let to = new_parent.child_path(new_name);
        let target = WriteMeaning::renamed(&path, &to);
        let _change = self.admit_change(Change::Rename {
            from: &path,
            to: &target,
        })?;
        let moved = rfs::statat(&*self.fd_of(&parent)?, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| FsError::backing("rename", &path, e))?;
        let moved = key_of(&moved);
        // With EXCHANGE the target moves the other way.
        let swapped = if flags.contains(rfs::RenameFlags::EXCHANGE) {
            rfs::statat(
                &*self.fd_of(&new_parent)?,
                new_name,
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map(|st| key_of(&st))
            .ok()
        } else {
            None
        };
        // A rename changes the file's ctime: a listed inode not opened yet would then be
        // refused at first use, so open it now, while its name still finds it.
        for key in std::iter::once(moved).chain(swapped) {
            if let Some(inode) = self.inodes.id_of(key).and_then(|id| self.inodes.get(id)) {
                let _ = inode.fd();
            }
        }
        let to_dir = self.fd_of(&new_parent)?;
        rfs::renameat_with(&*self.fd_of(&parent)?, name, &*to_dir, new_name, flags)
            .map_err(|e| in_dir_error("rename", &to, &*to_dir, e))?;
        self.inodes.moved(moved, &new_parent, new_name);
        if let Some(key) = swapped {
            self.inodes.moved(key, &parent, name);
        }
        Ok(())
    }

    /// setattr. A size change through a handle open for writing is a write on that
    /// handle (the registry's ftruncate(0) of a link it rewrites); anything else is an
    /// attribute change of a path.
    pub fn setattr(&self, id: u64, change: SetAttr) -> FsResult<FileAttr> {
        let inode = self.inode(id)?;
        let path = inode.path();
        let only_size = change.mode.is_none()
            && change.uid.is_none()
            && change.gid.is_none()
            && change.times.is_none();
        if let (Some(size), Some(fh), true) = (change.size, change.fh, only_size) {
            let file = self.files.get(fh).ok_or(FsError::Stale {
                what: "handle",
                id: fh,
            })?;
            if let Some(lease) = &file.writer {
                let _write = lease.admit_write(&Write::Truncate { size })?;
                if let Some(u) = &file.undo {
                    u.keep_before_change();
                }
                rfs::ftruncate(&file.fd, size)
                    .map_err(|e| FsError::backing("truncate", &path, e))?;
                return self.getattr(id);
            }
        }
        let _change = self.admit_change(Change::SetAttr { path: &path })?;
        if let Some(size) = change.size {
            let fd = self
                .reopen(self.fd_of(&inode)?.as_fd(), OFlags::WRONLY | OFlags::NOCTTY)
                .map_err(|e| FsError::backing("truncate", &path, e))?;
            rfs::ftruncate(&fd, size).map_err(|e| FsError::backing("truncate", &path, e))?;
        }
        let ifd = self.fd_of(&inode)?;
        let proc_name = ifd.as_raw_fd().to_string();
        if let Some(mode) = change.mode {
            rfs::chmodat(
                &self.proc_fd,
                proc_name.as_str(),
                Mode::from_raw_mode(mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(|e| FsError::backing("chmod", &path, e))?;
        }
        if change.uid.is_some() || change.gid.is_some() {
            rfs::chownat(
                &*ifd,
                "",
                change.uid.map(rfs::Uid::from_raw),
                change.gid.map(rfs::Gid::from_raw),
                AtFlags::EMPTY_PATH,
            )
            .map_err(|e| FsError::backing("chown", &path, e))?;
        }
        if let Some(times) = change.times {
            rfs::utimensat(&self.proc_fd, proc_name.as_str(), &times, AtFlags::empty())
                .map_err(|e| FsError::backing("utimens", &path, e))?;
        }
        self.getattr(id)
    }

    pub fn statfs(&self) -> FsResult<FsStats> {
        let root = self.inodes.root();
        let st =
            rfs::fstatvfs(&*self.fd_of(&root)?).map_err(|e| FsError::backing("statfs", "", e))?;
        Ok(FsStats {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize as u32,
            namelen: st.f_namemax as u32,
            frsize: st.f_frsize as u32,
        })
    }

    /// access(2): existence, and write access as the policy allows it (none during a GC
    /// epoch). Permission bits are checked by the kernel (default_permissions).
    pub fn access(&self, id: u64, mask: i32) -> FsResult<()> {
        let inode = self.inode(id)?;
        rfs::fstat(&*self.fd_of(&inode)?)
            .map_err(|e| FsError::backing("access", inode.path(), e))?;
        if mask & libc::W_OK != 0 {
            self.policy.check_write_access(&inode.path())?;
        }
        Ok(())
    }
}

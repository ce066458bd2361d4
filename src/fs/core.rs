//! The filesystem core: every operation as a plain method that returns a result, so
//! tests can drive it without a mount. The FUSE adapter turns these into replies.
//!
//! Every name is resolved one component at a time from its parent's O_PATH handle with
//! O_NOFOLLOW; symbolic links, special files and entries on other devices are refused.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use fuser::{FileAttr, Notifier};
use rustix::fs as rfs;

use super::attr::check_name;
pub use super::attr::{Caller, Entry};
use super::inode::Inode;
use super::kernel_cache::KernelCache;
use super::namespace::Namespace;
use super::open_handles::OpenHandles;
use super::passthrough::Passthrough;
use crate::error::{FsError, FsResult};
use crate::policy::{Change, ChangeLease, Name, StorePolicy};

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

/// The filesystem core: the namespace (names to inodes), the open handles, who serves
/// an open (passthrough), the kernel's caches to tell, and the policy every change,
/// writer and name is asked of. Its methods are the requests, one per FUSE operation.
#[derive(Debug)]
pub struct StorageFs {
    pub(super) names: Namespace,
    pub(super) handles: OpenHandles,
    pub(super) passthrough: Passthrough,
    pub(super) kernel: KernelCache,
    /// Decides what may change, write and be seen; the core only carries it out. The
    /// composition root (`runtime::compose`) builds it; the core knows only the trait.
    pub(super) policy: Arc<dyn StorePolicy>,
    stats: super::stats::FuseStats,
}

/// Half the soft open-file limit: room for open files and directories besides.
fn default_fd_budget() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20);
    (limit.min(1 << 22) / 2) as usize
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
        Ok(StorageFs {
            names: Namespace::open(root, fd_budget)?,
            handles: OpenHandles::default(),
            passthrough: Passthrough::default(),
            kernel: KernelCache::default(),
            policy,
            stats: super::stats::FuseStats::default(),
        })
    }

    /// Lets the core tell the kernel about changes it makes itself (the sweep).
    pub fn set_notifier(&self, notifier: Notifier) {
        self.kernel.set(notifier);
    }

    /// Turns kernel read passthrough on or off (decided at init).
    pub fn set_passthrough(&self, on: bool) {
        self.passthrough.set(on);
    }

    pub fn passthrough_enabled(&self) -> bool {
        self.passthrough.usable()
    }

    /// Read requests the daemon served itself; reads through kernel passthrough never
    /// reach it.
    pub fn daemon_reads(&self) -> u64 {
        self.handles.daemon_reads()
    }

    /// Write requests the daemon served itself; writes of upload data through kernel
    /// passthrough never reach it.
    pub fn daemon_writes(&self) -> u64 {
        self.handles.daemon_writes()
    }

    /// fsync requests answered without syncing the backing file: it had not changed
    /// since an fsync of it that succeeded.
    pub fn fsyncs_answered(&self) -> u64 {
        self.handles.fsyncs_answered()
    }

    /// FUSE requests served and failed, for metrics.
    pub fn stats(&self) -> &super::stats::FuseStats {
        &self.stats
    }

    /// Number of inodes the kernel holds references to.
    pub fn inode_count(&self) -> usize {
        self.names.inodes.len()
    }

    /// Path of node `id` for logs; empty for the root, `?` when unknown.
    pub fn path_of(&self, id: u64) -> String {
        self.names
            .inodes
            .get(id)
            .map(|i| i.path())
            .unwrap_or_else(|| format!("?{id}"))
    }

    /// What node `id` is in the registry's layout (computed when it was looked up).
    pub fn role_of(&self, id: u64) -> Option<crate::layout::Role> {
        self.names.inodes.get(id).map(|i| i.role())
    }

    /// Inode descriptors kept open at most (with file handles).
    pub fn fd_budget(&self) -> usize {
        self.names.inodes.fd_budget()
    }

    /// Inode descriptors open now, and whether inodes are kept by file handle.
    pub fn inode_fds(&self) -> (usize, bool) {
        (
            self.names.inodes.open_fds(),
            self.names.inodes.uses_handles(),
        )
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

    /// Resolves `name` in `parent` if the policy shows it, and counts one kernel
    /// reference to it (`keep_fd`: see [`Namespace::resolve`]).
    pub(super) fn lookup_in(
        &self,
        parent: &Arc<Inode>,
        name: &OsStr,
        keep_fd: bool,
    ) -> FsResult<Entry> {
        check_name(name)?;
        self.admit_name(parent, name)?;
        self.names.resolve(parent, name, keep_fd)
    }

    /// As [`lookup_in`](Self::lookup_in) for an entry of a directory listing.
    pub(super) fn lookup_listed(&self, parent: &Arc<Inode>, name: &OsStr) -> FsResult<Entry> {
        check_name(name)?;
        self.admit_name(parent, name)?;
        self.names.resolve_listed(parent, name)
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        let parent = self.names.inode(parent)?;
        self.lookup_in(&parent, name, true)
    }

    pub fn forget(&self, id: u64, nlookup: u64) {
        self.names.inodes.forget(id, nlookup);
    }

    pub fn getattr(&self, id: u64) -> FsResult<FileAttr> {
        self.names.attr(id)
    }

    pub fn statfs(&self) -> FsResult<FsStats> {
        let st = rfs::fstatvfs(&*self.names.root_fd()?)
            .map_err(|e| FsError::backing("statfs", "", e))?;
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
        let inode = self.names.inode(id)?;
        rfs::fstat(&*self.names.fd_of(&inode)?)
            .map_err(|e| FsError::backing("access", inode.path(), e))?;
        if mask & libc::W_OK != 0 {
            self.policy.check_write_access(&inode.path())?;
        }
        Ok(())
    }
}

//! Names the kernel still caches for files the store no longer holds.
//!
//! regfs keeps an O_PATH handle per inode, so a file or directory removed from the
//! store (by the collector, by an undo) stays openable through a kernel entry cached
//! before the removal. Opened for writing, it would take the registry's write and lose
//! it: the push reports success, the link is gone. A write-capable open of an inode with
//! no name left (link count zero), or a create in a removed directory, is refused with
//! ESTALE, on which the kernel looks the path up again.

use std::os::fd::AsFd;

use rustix::fs as rfs;
use rustix::io::Errno;

use crate::error::FsError;

/// Whether `fd` is a file or directory with no name left in the store.
pub(super) fn is_unlinked(fd: impl AsFd) -> bool {
    rfs::fstat(fd).is_ok_and(|st| st.st_nlink == 0)
}

/// The error for `op` at `path` that failed with `e` in directory `dir`: ENOENT because
/// the directory itself was removed becomes ESTALE (the kernel walks the path again).
pub(super) fn in_dir_error(op: &'static str, path: &str, dir: impl AsFd, e: Errno) -> FsError {
    if e == Errno::NOENT && is_unlinked(dir) {
        return FsError::RemovedBehindKernel {
            path: path.to_owned(),
        };
    }
    FsError::backing(op, path, e)
}

//! Changes to names and attributes (mkdir, unlink, rmdir, rename, setattr), each asked
//! of the policy first and held admitted while it runs, then made in the backing store
//! from the parents' handles, and the namespace kept in step (a rename moves the inode).

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::sync::Arc;

use fuser::FileAttr;
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use super::attr::check_name;
use super::core::{Caller, Entry, SetAttr, StorageFs};
use super::inode::Inode;
use super::namespace::key_of;
use super::unlinked::in_dir_error;
use crate::error::{FsError, FsResult};
use crate::policy::{Change, WriteMeaning};

impl StorageFs {
    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, caller: Caller) -> FsResult<Entry> {
        let parent = self.names.inode(parent)?;
        check_name(name)?;
        let path = parent.child_path(name);
        let _change = self.admit_change(Change::Mkdir { path: &path })?;
        let dir = self.names.fd_of(&parent)?;
        rfs::mkdirat(&*dir, name, Mode::from_raw_mode(mode & 0o7777))
            .map_err(|e| in_dir_error("mkdir", &path, &*dir, e))?;
        let fd = rfs::openat(
            &*self.names.fd_of(&parent)?,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FsError::backing("open", &path, e))?;
        self.names
            .give_to_caller(&parent, fd.as_fd(), caller, &path)?;
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
        let parent = self.names.inode(parent)?;
        check_name(name)?;
        let path = parent.child_path(name);
        let _change = self.admit_change(Change::Remove { path: &path })?;
        rfs::unlinkat(&*self.names.fd_of(&parent)?, name, flags)
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
        let parent = self.names.inode(parent)?;
        let new_parent = self.names.inode(new_parent)?;
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
        let moved = rfs::statat(
            &*self.names.fd_of(&parent)?,
            name,
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| FsError::backing("rename", &path, e))?;
        let moved = key_of(&moved);
        // With EXCHANGE the target moves the other way.
        let swapped = if flags.contains(rfs::RenameFlags::EXCHANGE) {
            rfs::statat(
                &*self.names.fd_of(&new_parent)?,
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
            self.names.pin(key);
        }
        let to_dir = self.names.fd_of(&new_parent)?;
        rfs::renameat_with(
            &*self.names.fd_of(&parent)?,
            name,
            &*to_dir,
            new_name,
            flags,
        )
        .map_err(|e| in_dir_error("rename", &to, &*to_dir, e))?;
        self.names.inodes.moved(moved, &new_parent, new_name);
        if let Some(key) = swapped {
            self.names.inodes.moved(key, &parent, name);
        }
        Ok(())
    }

    /// setattr. A size change through a handle open for writing is a write on that
    /// handle (the registry's ftruncate(0) of a link it rewrites); anything else is an
    /// attribute change of a path.
    pub fn setattr(&self, id: u64, change: SetAttr) -> FsResult<FileAttr> {
        let inode = self.names.inode(id)?;
        let r = self.change_attributes(&inode, change);
        inode.durability.changed();
        r?;
        self.getattr(id)
    }

    fn change_attributes(&self, inode: &Arc<Inode>, change: SetAttr) -> FsResult<()> {
        let path = inode.path();
        let only_size = change.mode.is_none()
            && change.uid.is_none()
            && change.gid.is_none()
            && change.times.is_none();
        if let (Some(size), Some(fh), true) = (change.size, change.fh, only_size)
            && self.handles.truncate(fh, size)?
        {
            return Ok(());
        }
        let _change = self.admit_change(Change::SetAttr { path: &path })?;
        if let Some(size) = change.size {
            let fd = self
                .names
                .reopen(
                    self.names.fd_of(inode)?.as_fd(),
                    OFlags::WRONLY | OFlags::NOCTTY,
                )
                .map_err(|e| FsError::backing("truncate", &path, e))?;
            rfs::ftruncate(&fd, size).map_err(|e| FsError::backing("truncate", &path, e))?;
        }
        let ifd = self.names.fd_of(inode)?;
        if let Some(mode) = change.mode {
            self.names
                .chmod(ifd.as_fd(), mode)
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
            self.names
                .set_times(ifd.as_fd(), &times)
                .map_err(|e| FsError::backing("utimens", &path, e))?;
        }
        Ok(())
    }
}

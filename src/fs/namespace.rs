//! Names to inodes: the store's root handle, the inode table, and resolving one name in
//! a directory at a time from the parent's O_PATH handle with O_NOFOLLOW. What is found
//! is checked here: symbolic links, special files and entries on other devices are
//! refused, so nothing resolved through the namespace ever leads out of the store.
//! Whether a name is shown at all is the policy's question, asked by the core before it
//! resolves one.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use fuser::FileAttr;
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, Stat};

use super::attr::{Caller, Entry, file_attr};
use super::inode::{Found, Inode, InodeKey, InodeTable, Kind};
use super::unlinked::in_dir_error;
use crate::error::{FsError, FsResult};

pub(super) fn key_of(st: &Stat) -> InodeKey {
    InodeKey {
        dev: st.st_dev,
        ino: st.st_ino,
    }
}

fn is_setgid_dir(st: &Stat) -> bool {
    st.st_mode & libc::S_ISGID != 0
}

#[derive(Debug)]
pub(super) struct Namespace {
    pub(super) inodes: InodeTable,
    /// /proc/self/fd, to reopen O_PATH handles with real access modes.
    proc_fd: OwnedFd,
    root_dev: u64,
}

impl Namespace {
    /// Takes the store's root handle now, so a mount placed over the same directory
    /// later still reaches the real directory underneath.
    pub(super) fn open(root: &Path, fd_budget: usize) -> FsResult<Namespace> {
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
        Ok(Namespace {
            inodes: InodeTable::new(fd, mount_fd, Found::new(&st, Kind::Directory), fd_budget)
                .map_err(|e| FsError::backing("open store", &shown, e))?,
            proc_fd,
            root_dev: st.st_dev,
        })
    }

    pub(super) fn inode(&self, id: u64) -> FsResult<Arc<Inode>> {
        self.inodes
            .get(id)
            .ok_or(FsError::Stale { what: "inode", id })
    }

    /// An O_PATH descriptor of `inode` (reopened from its file handle if it was closed).
    pub(super) fn fd_of(&self, inode: &Inode) -> FsResult<Arc<OwnedFd>> {
        inode
            .fd()
            .map_err(|e| FsError::backing("open", inode.path(), e))
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

    /// chmod of the inode `fd` names (through /proc/self/fd: no path in the store).
    pub(super) fn chmod(&self, fd: BorrowedFd<'_>, mode: u32) -> rustix::io::Result<()> {
        let name = fd.as_raw_fd().to_string();
        rfs::chmodat(
            &self.proc_fd,
            name.as_str(),
            Mode::from_raw_mode(mode & 0o7777),
            AtFlags::empty(),
        )
    }

    /// utimensat of the inode `fd` names.
    pub(super) fn set_times(
        &self,
        fd: BorrowedFd<'_>,
        times: &rfs::Timestamps,
    ) -> rustix::io::Result<()> {
        let name = fd.as_raw_fd().to_string();
        rfs::utimensat(&self.proc_fd, name.as_str(), times, AtFlags::empty())
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
    pub(super) fn resolve(
        &self,
        parent: &Arc<Inode>,
        name: &OsStr,
        keep_fd: bool,
    ) -> FsResult<Entry> {
        // The path is for error messages only: built when one is needed (this is the
        // hottest path of a directory walk).
        let path = || parent.child_path(name);
        let dir = self.fd_of(parent)?;
        // A name missing because its directory is gone (removed through another node
        // while this kernel still names it) is ESTALE: the kernel then walks the whole
        // path again, asking for each name, and finds the directory made since, if any.
        let fd = rfs::openat(
            &*dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| in_dir_error("lookup", &path(), &*dir, e))?;
        let st = rfs::fstat(&fd).map_err(|e| FsError::backing("stat", path(), e))?;
        let found = Found::new(&st, self.admit_found(&st, path)?);
        let inode = self.inodes.remember(parent, name, found, fd, keep_fd);
        Ok(Entry {
            attr: file_attr(inode.id, &st),
            role: inode.role(),
        })
    }

    /// As [`resolve`](Self::resolve) for an entry of a directory listing: one fstatat,
    /// nothing opened (the inode is opened by name on first use, if ever).
    pub(super) fn resolve_listed(&self, parent: &Arc<Inode>, name: &OsStr) -> FsResult<Entry> {
        let path = || parent.child_path(name);
        let st = rfs::statat(&*self.fd_of(parent)?, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| FsError::backing("lookup", path(), e))?;
        let found = Found::new(&st, self.admit_found(&st, path)?);
        match self.inodes.remember_listed(parent, name, found) {
            Some(inode) => Ok(Entry {
                attr: file_attr(inode.id, &st),
                role: inode.role(),
            }),
            None => self.resolve(parent, name, false),
        }
    }

    /// The attributes of node `id`, from the backing file.
    pub(super) fn attr(&self, id: u64) -> FsResult<FileAttr> {
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
            self.chmod(fd, st.st_mode)
                .map_err(|e| FsError::backing("chmod", path, e))?;
        }
        Ok(())
    }

    /// Opens (if it was only listed) the inode the kernel knows under `key`, while its
    /// name still finds it: a rename changes the file's ctime, and a listed inode not
    /// opened before would then be refused at first use.
    pub(super) fn pin(&self, key: InodeKey) {
        if let Some(inode) = self.inodes.id_of(key).and_then(|id| self.inodes.get(id)) {
            let _ = inode.fd();
        }
    }

    /// The root's handle, as an inode.
    pub(super) fn root(&self) -> Arc<Inode> {
        self.inodes.root()
    }

    /// The root's O_PATH descriptor.
    pub(super) fn root_fd(&self) -> FsResult<Arc<OwnedFd>> {
        self.fd_of(&self.root())
    }
}

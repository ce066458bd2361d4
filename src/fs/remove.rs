//! Deletions the daemon makes itself (the sweep), with the kernel told at once so a
//! stat through the mount sees the entry gone. Paths are resolved one component at a
//! time from the root handle with O_NOFOLLOW; nothing is followed out of the store.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, Dir, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::core::StorageFs;
use super::inode::InodeKey;
use super::namespace::key_of;
use crate::error::{FsError, FsResult};
use crate::layout::paths;

/// What a removal deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
}

/// Removes everything inside the directory `fd`; never follows a link. Whatever another
/// process removes meanwhile (the registry deleting a tag's directory while the sweep
/// removes one of its history entries) counts as gone, not as a failure.
fn empty_dir(fd: BorrowedFd<'_>, shown: &str, out: &mut Removed) -> FsResult<()> {
    let dir_fd = match rfs::openat(
        fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(FsError::backing("open", shown, e)),
    };
    let mut dir = Dir::new(dir_fd).map_err(|e| FsError::backing("readdir", shown, e))?;
    let mut names = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry.map_err(|e| FsError::backing("readdir", shown, e))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(entry.file_name().to_owned());
        }
    }
    for name in names {
        let child_shown = format!("{shown}/{}", String::from_utf8_lossy(name.as_bytes()));
        remove_entry(fd, OsStr::from_bytes(name.as_bytes()), &child_shown, out)?;
    }
    Ok(())
}

fn remove_entry(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    shown: &str,
    out: &mut Removed,
) -> FsResult<()> {
    // Each step's ENOENT: another process removed the entry first (see `empty_dir`).
    let st = match rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(FsError::backing("stat", shown, e)),
    };
    if rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Directory {
        let sub: OwnedFd = match rfs::openat(
            parent,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(FsError::backing("open", shown, e)),
        };
        empty_dir(sub.as_fd(), shown, out)?;
        match rfs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
            Ok(()) => out.dirs += 1,
            Err(Errno::NOENT) => {}
            Err(e) => return Err(FsError::backing("rmdir", shown, e)),
        }
    } else {
        match rfs::unlinkat(parent, name, AtFlags::empty()) {
            Ok(()) => {
                out.files += 1;
                out.bytes += st.st_size.max(0) as u64;
            }
            Err(Errno::NOENT) => {}
            Err(e) => return Err(FsError::backing("unlink", shown, e)),
        }
    }
    Ok(())
}

/// An entry found at a store-relative path: its directory (handle and stat), its name
/// there and its own stat.
struct Found<'p> {
    dir: Arc<OwnedFd>,
    dir_st: rfs::Stat,
    name: &'p OsStr,
    st: rfs::Stat,
}

/// The fast path for what a sweep mostly deletes: a directory holding one regular file
/// (`<blob>/data`, `<link dir>/link`). Falls back (returns false) on anything else.
fn remove_blob_shaped(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    st: &rfs::Stat,
    out: &mut Removed,
) -> bool {
    if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::Directory {
        return false;
    }
    let Ok(dir) = rfs::openat(
        parent,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    for file in paths::SINGLE_FILES {
        let Ok(fst) = rfs::statat(&dir, file, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        if rfs::FileType::from_raw_mode(fst.st_mode) != rfs::FileType::RegularFile
            || rfs::unlinkat(&dir, file, AtFlags::empty()).is_err()
        {
            return false;
        }
        out.files += 1;
        out.bytes += fst.st_size.max(0) as u64;
        return match rfs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
            Ok(()) => {
                out.dirs += 1;
                true
            }
            // More in it than the one file: the general path removes the rest.
            Err(_) => false,
        };
    }
    false
}

impl StorageFs {
    /// Resolves `rel` without following links: every component but the last with one
    /// openat2 from the root, the last with a stat. `None` when something is missing.
    fn find<'p>(&self, rel: &'p Path) -> FsResult<Option<Found<'p>>> {
        let shown = rel.display().to_string();
        let mut names = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => names.push(n),
                _ => return Err(FsError::InvalidName { name: shown }),
            }
        }
        let Some((last, parents)) = names.split_last() else {
            return Err(FsError::InvalidName { name: shown });
        };
        let root_fd = self.names.root_fd()?;
        // One openat2 for the whole parent path: the kernel refuses `..`, links and
        // mounts at every component (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | NO_XDEV).
        let dir: Arc<OwnedFd> = if parents.is_empty() {
            root_fd
        } else {
            let parent_path: std::path::PathBuf = parents.iter().collect();
            match rfs::openat2(
                &*root_fd,
                &parent_path,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH
                    | ResolveFlags::NO_SYMLINKS
                    | ResolveFlags::NO_MAGICLINKS
                    | ResolveFlags::NO_XDEV,
            ) {
                Ok(fd) => Arc::new(fd),
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(FsError::backing("open", &shown, e)),
            }
        };
        let dir_st = rfs::fstat(&*dir).map_err(|e| FsError::backing("stat", &shown, e))?;
        let st = match rfs::statat(&*dir, *last, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(FsError::backing("stat", &shown, e)),
        };
        Ok(Some(Found {
            dir,
            dir_st,
            name: last,
            st,
        }))
    }

    /// Deletes the file or directory tree at `rel` (relative to the store root) and
    /// invalidates the kernel's cached entry. Refuses `..`, absolute paths and links on
    /// the way. Missing: `Ok(Removed::default())`, since someone else removed it.
    pub fn remove_tree(&self, rel: &Path) -> FsResult<Removed> {
        let Some(f) = self.find(rel)? else {
            return Ok(Removed::default());
        };
        let mut out = Removed::default();
        if !remove_blob_shaped(f.dir.as_fd(), f.name, &f.st, &mut out) {
            remove_entry(f.dir.as_fd(), f.name, &rel.display().to_string(), &mut out)?;
        }
        self.tell_kernel_removed(key_of(&f.dir_st), key_of(&f.st), f.name);
        Ok(out)
    }

    /// Removes the directory at `rel` if it is empty. Returns whether it did.
    pub fn remove_empty_dir(&self, rel: &Path) -> FsResult<bool> {
        let Some(f) = self.find(rel)? else {
            return Ok(false);
        };
        match rfs::unlinkat(&*f.dir, f.name, AtFlags::REMOVEDIR) {
            Ok(()) => {
                self.tell_kernel_removed(key_of(&f.dir_st), key_of(&f.st), f.name);
                Ok(true)
            }
            Err(Errno::NOTEMPTY) | Err(Errno::NOENT) | Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(FsError::backing("rmdir", rel.display().to_string(), e)),
        }
    }

    /// Tells the kernel to drop its cached entry for `rel` (a name the policy hides
    /// from now on), so the next lookup asks the daemon.
    pub fn forget_cached(&self, rel: &Path) -> FsResult<()> {
        let Some(f) = self.find(rel)? else {
            return Ok(());
        };
        if let Some(parent) = self.names.inodes.id_of(key_of(&f.dir_st)) {
            self.kernel.drop_entry(parent, f.name);
        }
        Ok(())
    }

    fn tell_kernel_removed(&self, parent: InodeKey, child: InodeKey, name: &OsStr) {
        if let Some(parent) = self.names.inodes.id_of(parent) {
            self.kernel
                .removed(parent, self.names.inodes.id_of(child), name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry deletes a tag's directory (`os.RemoveAll`) while the sweep removes one
    /// of its history entries: the sweep found the entry, then finds it gone at each later
    /// step. Gone is what the sweep wanted; it must not fail the run (an online soak's run
    /// failed with "stat ...: No such file or directory").
    #[test]
    fn an_entry_removed_by_another_process_mid_removal_counts_as_gone() {
        let dir = tempfile::tempdir().unwrap();
        let root = rfs::open(
            dir.path(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let mut out = Removed::default();
        // Gone between the sweep's lookup and its own stat.
        remove_entry(root.as_fd(), OsStr::new("entry"), "entry", &mut out).unwrap();
        assert_eq!(out, Removed::default());

        // Gone after the sweep opened it: its listing starts on a removed directory.
        std::fs::create_dir_all(dir.path().join("entry")).unwrap();
        let held = rfs::openat(
            &root,
            "entry",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        std::fs::remove_dir(dir.path().join("entry")).unwrap();
        empty_dir(held.as_fd(), "entry", &mut out).unwrap();
        assert_eq!(out, Removed::default());

        // What is there is still removed and counted.
        std::fs::create_dir_all(dir.path().join("entry/sub")).unwrap();
        std::fs::write(dir.path().join("entry/sub/link"), b"sha256:x").unwrap();
        remove_entry(root.as_fd(), OsStr::new("entry"), "entry", &mut out).unwrap();
        assert_eq!(
            out,
            Removed {
                files: 1,
                dirs: 2,
                bytes: 8
            }
        );
        assert!(!dir.path().join("entry").exists());
    }
}

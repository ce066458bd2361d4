//! The daemon's state directory (history, running record, control socket): created
//! 0700, refused when someone other than the daemon's user could change it, and every
//! file in it opened relative to one descriptor of it, without following symlinks and
//! with explicit modes (the mount sets the process umask to 0).

use std::fs::{DirBuilder, File};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use thiserror::Error;

/// The state directory's mode when the daemon creates it.
pub const DIR_MODE: u32 = 0o700;
/// Parents the daemon creates (`/run/regfs`): only root writes, anyone may pass.
pub const PARENT_MODE: u32 = 0o755;
/// Every file in the state directory (history, running record, socket): root only.
pub const FILE_MODE: u32 = 0o600;

#[derive(Debug, Error)]
pub enum StateDirError {
    #[error("state directory {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("state directory {path} is a symbolic link; refusing to follow it")]
    Symlink { path: String },
    #[error("state directory {path} is not a directory")]
    NotDirectory { path: String },
    #[error(
        "state directory {path} is owned by uid {owner}, not by the daemon's user (uid {euid}); \
         another user could plant files in it. Remove it or `chown {euid} {path}`"
    )]
    Owner { path: String, owner: u32, euid: u32 },
    #[error(
        "state directory {path} has mode {mode:04o}: writable by group or others, who could \
         plant files in it. `chmod 0700 {path}` (or remove it)"
    )]
    Mode { path: String, mode: u32 },
}

/// An open, checked state directory.
#[derive(Debug)]
pub struct StateDir {
    fd: OwnedFd,
    path: PathBuf,
}

fn open_dir(path: &Path) -> Result<OwnedFd, StateDirError> {
    let shown = path.display().to_string();
    rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => StateDirError::Symlink {
            path: shown.clone(),
        },
        rustix::io::Errno::NOTDIR => match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => StateDirError::Symlink {
                path: shown.clone(),
            },
            _ => StateDirError::NotDirectory {
                path: shown.clone(),
            },
        },
        e => StateDirError::Io {
            path: shown.clone(),
            source: e.into(),
        },
    })
}

impl StateDir {
    /// Creates `path` (0700; missing parents 0755) or checks the one that exists: it must
    /// be a real directory (not a symlink), owned by the daemon's user and not writable by
    /// group or others.
    pub fn prepare(path: &Path) -> Result<StateDir, StateDirError> {
        let shown = path.display().to_string();
        let io_err = |source| StateDirError::Io {
            path: shown.clone(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(PARENT_MODE)
                .create(parent)
                .map_err(io_err)?;
        }
        match DirBuilder::new().mode(DIR_MODE).create(path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err(e)),
            _ => {}
        }
        let fd = open_dir(path)?;
        let st = rfs::fstat(&fd).map_err(|e| io_err(e.into()))?;
        let euid = rustix::process::geteuid().as_raw();
        if st.st_uid != euid {
            return Err(StateDirError::Owner {
                path: shown,
                owner: st.st_uid,
                euid,
            });
        }
        let mode = st.st_mode & 0o7777;
        if mode & 0o022 != 0 {
            return Err(StateDirError::Mode { path: shown, mode });
        }
        Ok(StateDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Opens `path` for reading what a daemon wrote (`regfs jobs`), without the checks
    /// a daemon makes before it writes.
    pub fn for_reading(path: &Path) -> Result<StateDir, StateDirError> {
        let fd = rfs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StateDirError::Io {
            path: path.display().to_string(),
            source: e.into(),
        })?;
        Ok(StateDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this directory, for messages.
    pub fn shown(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }

    /// A path that reaches `name` through this directory's descriptor, whatever happens
    /// to the directory's own path (for bind(2), which takes no directory descriptor).
    pub fn fd_path(&self, name: &str) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd()))
    }

    fn error(&self, name: &str, e: impl Into<io::Error>) -> io::Error {
        let e: io::Error = e.into();
        let detail = if e.raw_os_error() == Some(libc::ELOOP) {
            "is a symbolic link; refusing to follow it".to_string()
        } else {
            e.to_string()
        };
        io::Error::new(e.kind(), format!("{}: {detail}", self.shown(name)))
    }

    /// Opens `name` (never following a symlink, never blocking on a FIFO) and checks it is
    /// a regular file with no other hard links.
    pub fn open(&self, name: &str, flags: OFlags) -> io::Result<File> {
        let fd = rfs::openat(
            &self.fd,
            name,
            flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::from_raw_mode(FILE_MODE),
        )
        .map_err(|e| self.error(name, e))?;
        let st = rfs::fstat(&fd).map_err(|e| self.error(name, e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(self.error(name, io::Error::other("not a regular file")));
        }
        if st.st_nlink > 1 {
            return Err(self.error(name, io::Error::other("has other hard links; refusing it")));
        }
        // Back to blocking for ordinary use (regular files ignore it anyway).
        let flags = rfs::fcntl_getfl(&fd).map_err(|e| self.error(name, e))?;
        rfs::fcntl_setfl(&fd, flags - OFlags::NONBLOCK).map_err(|e| self.error(name, e))?;
        Ok(File::from(fd))
    }

    /// Writes `bytes` to `name` atomically: a fresh temporary file (0600, exclusive) is
    /// renamed over it, so a symlink planted at `name` is replaced, never followed.
    pub fn replace(&self, name: &str, bytes: &[u8], durable: bool) -> io::Result<()> {
        use std::io::Write;
        let tmp = format!("{name}.tmp");
        self.remove(&tmp)?;
        let mut f = self.open(&tmp, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL)?;
        f.write_all(bytes).map_err(|e| self.error(&tmp, e))?;
        if durable {
            f.sync_data().map_err(|e| self.error(&tmp, e))?;
        }
        drop(f);
        self.rename(&tmp, name)
    }

    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        rfs::renameat(&self.fd, from, &self.fd, to).map_err(|e| self.error(to, e))
    }

    /// Removes `name` (a symlink itself, not what it names); absent is fine.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match rfs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(self.error(name, e)),
        }
    }

    /// Sets `name`'s mode without following a symlink (there is no lchmod on Linux:
    /// the file is opened as a path and changed through /proc).
    pub fn chmod(&self, name: &str, mode: u32) -> io::Result<()> {
        let fd = rfs::openat(
            &self.fd,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.error(name, e))?;
        let st = rfs::fstat(&fd).map_err(|e| self.error(name, e))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            return Err(self.error(name, io::Error::from_raw_os_error(libc::ELOOP)));
        }
        use std::os::fd::AsRawFd;
        let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
        rfs::chmod(proc.as_str(), Mode::from_raw_mode(mode)).map_err(|e| self.error(name, e))
    }

    /// The directory's descriptor.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn fresh() -> (tempfile::TempDir, StateDir) {
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::prepare(&t.path().join("state")).unwrap();
        (t, dir)
    }

    #[test]
    fn a_directory_others_may_write_is_refused_with_its_mode() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("state");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o757)).unwrap();
        let e = StateDir::prepare(&p).unwrap_err().to_string();
        assert!(
            e.contains("0757") && e.contains(&p.display().to_string()),
            "{e}"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        StateDir::prepare(&p).unwrap();
    }

    #[test]
    fn symlinks_fifos_and_hard_links_are_refused_naming_the_file() {
        let (t, dir) = fresh();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"v").unwrap();
        symlink(&victim, dir.path().join("jobs.jsonl")).unwrap();
        let e = dir
            .open(
                "jobs.jsonl",
                OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("jobs.jsonl: is a symbolic link"), "{e}");
        rustix::fs::mkfifoat(dir.as_fd(), "fifo", Mode::from_raw_mode(0o600)).unwrap();
        let e = dir.open("fifo", OFlags::RDONLY).unwrap_err().to_string();
        assert!(e.contains("fifo: not a regular file"), "{e}");
        std::fs::hard_link(&victim, dir.path().join("linked")).unwrap();
        let e = dir.open("linked", OFlags::RDONLY).unwrap_err().to_string();
        assert!(e.contains("hard links"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"v");
    }

    #[test]
    fn replace_puts_a_file_where_a_symlink_was_without_following_it() {
        let (t, dir) = fresh();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"v").unwrap();
        symlink(&victim, dir.path().join("running.json")).unwrap();
        symlink(&victim, dir.path().join("running.json.tmp")).unwrap();
        dir.replace("running.json", b"{}", true).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"v");
        let m = std::fs::symlink_metadata(dir.path().join("running.json")).unwrap();
        assert!(m.is_file());
        assert_eq!(m.permissions().mode() & 0o777, FILE_MODE);
    }
}

//! Read access to a store on disk that cannot be led out of it: every path is opened
//! relative to the root handle with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_XDEV), so `..`, symbolic links and mounts inside the store are refused
//! by the kernel, at every component.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Dir, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    /// Symbolic links, devices, FIFOs, sockets: never part of a registry store.
    Other,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: OsString,
    pub kind: EntryKind,
}

impl Entry {
    /// The name, when it is UTF-8 (every name the registry writes is).
    pub fn name_str(&self) -> Option<&str> {
        self.name.to_str()
    }
}

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {size} bytes, over the limit of {limit}")]
    TooLarge {
        path: String,
        size: u64,
        limit: usize,
    },
}

/// A store's root, opened once.
#[derive(Debug)]
pub struct Store {
    root: OwnedFd,
    path: PathBuf,
}

fn kind_of(t: FileType) -> Option<EntryKind> {
    match t {
        FileType::Directory => Some(EntryKind::Dir),
        FileType::RegularFile => Some(EntryKind::File),
        FileType::Unknown => None,
        _ => Some(EntryKind::Other),
    }
}

fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV
}

impl Store {
    pub fn open(path: &Path) -> io::Result<Store> {
        let root = rfs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Store {
            root,
            path: path.to_path_buf(),
        })
    }

    /// A store on a directory handle opened earlier (before a mount hid the directory).
    pub fn from_fd(root: OwnedFd, path: &Path) -> Store {
        Store {
            root,
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    fn open_at(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        let rel: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        // openat2 refuses flags that O_PATH does not take, so O_NOCTTY only for real opens.
        let extra = if flags.contains(OFlags::PATH) {
            OFlags::CLOEXEC
        } else {
            OFlags::CLOEXEC | OFlags::NOCTTY
        };
        rfs::openat2(&self.root, rel, flags | extra, Mode::empty(), resolve())
            .map_err(io::Error::from)
    }

    /// Lists a directory; `None` if it does not exist.
    pub fn list(&self, rel: &Path) -> io::Result<Option<Vec<Entry>>> {
        let fd = match self.open_at(rel, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut dir = Dir::new(fd)?;
        let mut out = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsStr::from_bytes(name).to_os_string();
            let kind = match kind_of(entry.file_type()) {
                Some(k) => k,
                // Some filesystems do not report types in listings.
                None => {
                    let st =
                        rfs::statat(dir.fd()?, name.as_os_str(), rfs::AtFlags::SYMLINK_NOFOLLOW)?;
                    kind_of(FileType::from_raw_mode(st.st_mode)).unwrap_or(EntryKind::Other)
                }
            };
            out.push(Entry { name, kind });
        }
        Ok(Some(out))
    }

    /// Reads a small file whole; `None` if it does not exist. Refuses files over `limit`.
    pub fn read(&self, rel: &Path, limit: usize) -> Result<Option<Vec<u8>>, ReadError> {
        let shown = || rel.display().to_string();
        let fd = match self.open_at(rel, OFlags::RDONLY) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(source) => {
                return Err(ReadError::Io {
                    path: shown(),
                    source,
                });
            }
        };
        let st = rfs::fstat(&fd).map_err(|e| ReadError::Io {
            path: shown(),
            source: e.into(),
        })?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(ReadError::Io {
                path: shown(),
                source: io::Error::from(Errno::ISDIR),
            });
        }
        if st.st_size as u64 > limit as u64 {
            return Err(ReadError::TooLarge {
                path: shown(),
                size: st.st_size as u64,
                limit,
            });
        }
        // The size is known: read exactly that much (one read, usually). Store files
        // are written once, and links are not rewritten while the store is collected.
        let mut buf = vec![0u8; st.st_size as usize];
        let mut file = File::from(fd);
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(ReadError::Io {
                        path: shown(),
                        source,
                    });
                }
            }
        }
        buf.truncate(filled);
        Ok(Some(buf))
    }

    /// Stats a path without following links; `None` if it does not exist.
    pub fn stat(&self, rel: &Path) -> io::Result<Option<Stat>> {
        match self.open_at(rel, OFlags::PATH) {
            Ok(fd) => Ok(Some(rfs::fstat(&fd)?)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

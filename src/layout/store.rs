//! Read access to a store on disk that cannot be led out of it: every path is opened
//! relative to the root handle with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_XDEV), so `..`, symbolic links and mounts inside the store are refused
//! by the kernel, at every component.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use std::mem::MaybeUninit;

use rustix::fs::{self as rfs, FileType, Mode, OFlags, RawDir, ResolveFlags, Stat};
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

/// A store's root, opened once; or a directory below it ([`Store::sub`]), whose paths
/// are short (the kernel walks fewer components per open) and whose error messages still
/// name paths from the top store's root.
#[derive(Debug)]
pub struct Store {
    root: OwnedFd,
    /// How the filesystem marks the end of a listing (see [`EndOfListing`]).
    end: EndOfListing,
    path: PathBuf,
    /// Where this store's root lies below the top store's root (empty for the top).
    prefix: PathBuf,
}

/// A directory's entries and, when it held it, one file of it read whole.
#[derive(Debug)]
pub struct Listed {
    pub entries: Vec<Entry>,
    /// `None` when the directory has no entry of that name.
    pub file: Option<Result<Vec<u8>, ReadError>>,
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
            end: EndOfListing::of(&root),
            root,
            path: path.to_path_buf(),
            prefix: PathBuf::new(),
        })
    }

    /// A store on a directory handle opened earlier (before a mount hid the directory).
    pub fn from_fd(root: OwnedFd, path: &Path) -> Store {
        Store {
            end: EndOfListing::of(&root),
            root,
            path: path.to_path_buf(),
            prefix: PathBuf::new(),
        }
    }

    /// The directory `rel` as a store of its own; `None` if it does not exist. Opened
    /// beneath this store's root like every path, so it cannot lead out of it either.
    pub fn sub(&self, rel: &Path) -> io::Result<Option<Store>> {
        match self.open_at(rel, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(root) => Ok(Some(Store {
                end: self.end,
                root,
                path: self.path.join(rel),
                prefix: self.prefix.join(rel),
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The directory `rel` as a store of its own, with its entries; `None` if it does not
    /// exist. One open serves both: the handle the entries are read from is the new
    /// store's root.
    pub fn sub_listed(&self, rel: &Path) -> io::Result<Option<(Store, Vec<Entry>)>> {
        let Some(fd) = self.open_dir(rel)? else {
            return Ok(None);
        };
        let entries = entries(fd.as_fd(), self.end)?;
        Ok(Some((
            Store {
                end: self.end,
                root: fd,
                path: self.path.join(rel),
                prefix: self.prefix.join(rel),
            },
            entries,
        )))
    }

    /// `rel` as named from the top store's root, for messages.
    pub fn shown(&self, rel: &Path) -> PathBuf {
        self.prefix.join(rel)
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
        open_beneath(self.root.as_fd(), rel, flags | extra)
    }

    /// The target of the symbolic link `rel`, read without following it (EINVAL when
    /// `rel` is no symbolic link).
    pub fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let dir = self.open_at(parent, OFlags::PATH | OFlags::DIRECTORY)?;
        let target = rfs::readlinkat(&dir, name, Vec::new())?;
        Ok(PathBuf::from(OsString::from_vec(target.into_bytes())))
    }

    /// Lists a directory; `None` if it does not exist.
    pub fn list(&self, rel: &Path) -> io::Result<Option<Vec<Entry>>> {
        let Some(dir) = self.open_dir(rel)? else {
            return Ok(None);
        };
        entries(dir.as_fd(), self.end).map(Some)
    }

    /// Lists directory `rel` and reads its file `file` (at most `limit` bytes) through
    /// the same handle when it is listed: one open of the directory serves both.
    pub fn list_reading(&self, rel: &Path, file: &str, limit: usize) -> io::Result<Option<Listed>> {
        let Some(dir) = self.open_dir(rel)? else {
            return Ok(None);
        };
        let entries = entries(dir.as_fd(), self.end)?;
        let file = if entries.iter().any(|e| e.name == file) {
            let shown = self.shown(&rel.join(file));
            let opened = open_beneath(dir.as_fd(), Path::new(file), read_flags());
            Some(match opened {
                Ok(fd) => read_whole(fd, &shown, limit),
                Err(source) => Err(ReadError::Io {
                    path: shown.display().to_string(),
                    source,
                }),
            })
        } else {
            None
        };
        Ok(Some(Listed { entries, file }))
    }

    fn open_dir(&self, rel: &Path) -> io::Result<Option<OwnedFd>> {
        match self.open_at(rel, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOATIME) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads a small file whole; `None` if it does not exist. Refuses files over `limit`.
    pub fn read(&self, rel: &Path, limit: usize) -> Result<Option<Vec<u8>>, ReadError> {
        match self.open_at(rel, read_flags()) {
            Ok(fd) => read_whole(fd, &self.shown(rel), limit).map(Some),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(source) => Err(ReadError::Io {
                path: self.shown(rel).display().to_string(),
                source,
            }),
        }
    }

    /// As [`Self::read`], with the file's modification time (one open for both).
    pub fn read_with_mtime(
        &self,
        rel: &Path,
        limit: usize,
    ) -> Result<Option<(Vec<u8>, std::time::SystemTime)>, ReadError> {
        let fd = match self.open_at(rel, read_flags()) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(source) => {
                return Err(ReadError::Io {
                    path: self.shown(rel).display().to_string(),
                    source,
                });
            }
        };
        let st = rfs::fstat(&fd).map_err(|e| ReadError::Io {
            path: self.shown(rel).display().to_string(),
            source: e.into(),
        })?;
        let mtime = std::time::UNIX_EPOCH
            + std::time::Duration::new(st.st_mtime.max(0) as u64, st.st_mtime_nsec as u32);
        read_whole(fd, &self.shown(rel), limit).map(|b| Some((b, mtime)))
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

/// Opening a file to read: never blocks (a FIFO planted in the store would hang the
/// open), never becomes a controlling terminal, and leaves the access time alone.
fn read_flags() -> OFlags {
    OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NOATIME
}

/// Opens `rel` beneath `dir` (see [`resolve`]). Reads and listings ask for `O_NOATIME`:
/// a collector reads every manifest and link of the store, and under `relatime` the
/// first read of each in a day would write its inode back for the access time alone.
/// Only the file's owner or a process with CAP_FOWNER may ask: when refused (EPERM),
/// the open is tried again without it.
fn open_beneath(dir: BorrowedFd<'_>, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    match rfs::openat2(dir, rel, flags, Mode::empty(), resolve()) {
        Err(Errno::PERM) if flags.contains(OFlags::NOATIME) => {
            rfs::openat2(dir, rel, flags - OFlags::NOATIME, Mode::empty(), resolve())
                .map_err(io::Error::from)
        }
        opened => opened.map_err(io::Error::from),
    }
}

/// How a listing's end shows, by filesystem. getdents returns 0 at the end of a
/// directory, one more call per listing (a collector lists ~90,000 small directories of a
/// 50,000-blob store). ext4 (also ext2/3, same driver) lists a directory in hash order and
/// ends every listing at the position `EXT4_HTREE_EOF_64BIT` (i64::MAX), which no entry
/// can have (its hash function maps the one hash that would give it elsewhere), and the
/// kernel sets the last entry's `d_off` of each getdents call to the position the listing
/// stopped at: a call whose last entry has it has reached the end. Anywhere else (and in
/// an ext4 directory listed linearly, whose end is its size) listings go on to the call
/// that returns 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndOfListing {
    Ext4HashEof,
    EmptyCall,
}

impl EndOfListing {
    const EXT4_SUPER_MAGIC: i64 = 0xEF53;
    const EXT4_HTREE_EOF_64BIT: u64 = i64::MAX as u64;

    // `f_type` is 32 bits wide on some targets.
    #[allow(clippy::unnecessary_cast)]
    fn of(fd: &OwnedFd) -> Self {
        match rfs::fstatfs(fd) {
            Ok(st) if st.f_type as i64 == Self::EXT4_SUPER_MAGIC => EndOfListing::Ext4HashEof,
            _ => EndOfListing::EmptyCall,
        }
    }
}

/// Every entry of the open directory `dir` but `.` and `..`, with its type from the
/// listing (`d_type`): no stat, unless the filesystem does not report types. Read with
/// getdents into a buffer on the stack (a fan-out directory of 200 blobs in one call);
/// the only allocation per entry is its name.
fn entries(dir: BorrowedFd<'_>, end: EndOfListing) -> io::Result<Vec<Entry>> {
    let mut buf = [MaybeUninit::<u8>::uninit(); 32 * 1024];
    let mut listing = RawDir::new(dir, &mut buf);
    let mut out = Vec::new();
    while let Some(entry) = listing.next() {
        let entry = entry?;
        let at_end = end == EndOfListing::Ext4HashEof
            && entry.next_entry_cookie() == EndOfListing::EXT4_HTREE_EOF_64BIT;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            let kind = match kind_of(entry.file_type()) {
                Some(k) => k,
                // Some filesystems do not report types in listings.
                None => {
                    let st = rfs::statat(dir, entry.file_name(), rfs::AtFlags::SYMLINK_NOFOLLOW)?;
                    kind_of(FileType::from_raw_mode(st.st_mode)).unwrap_or(EntryKind::Other)
                }
            };
            out.push(Entry {
                name: OsStr::from_bytes(name).to_os_string(),
                kind,
            });
        }
        // The last entry of a call that stopped at the end: no call for the 0.
        if at_end && listing.is_buffer_empty() {
            break;
        }
    }
    Ok(out)
}

/// Reads an opened regular file whole; `shown` names it in errors.
fn read_whole(fd: OwnedFd, shown: &Path, limit: usize) -> Result<Vec<u8>, ReadError> {
    let err = |source: io::Error| ReadError::Io {
        path: shown.display().to_string(),
        source,
    };
    let st = rfs::fstat(&fd).map_err(|e| err(e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(err(io::Error::from(Errno::ISDIR)));
    }
    if st.st_size as u64 > limit as u64 {
        return Err(ReadError::TooLarge {
            path: shown.display().to_string(),
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
            Err(e) => return Err(err(e)),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A collector's reads and listings leave access times alone: under `relatime` (the
    /// default mount option) a read of a file whose access time is not after its change
    /// time would write the inode back, for every manifest and link of the store.
    #[test]
    fn reads_and_listings_leave_the_access_time_alone() {
        use std::time::{Duration, SystemTime};
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("revision");
        std::fs::create_dir(&dir).unwrap();
        let link = dir.join("link");
        std::fs::write(&link, b"sha256:x").unwrap();
        // Access times before the change times: relatime would update both on access.
        let old = SystemTime::now() - Duration::from_secs(3 * 24 * 3600);
        let times = std::fs::FileTimes::new().set_accessed(old);
        std::fs::File::options()
            .write(true)
            .open(&link)
            .unwrap()
            .set_times(times)
            .unwrap();
        std::fs::File::open(&dir).unwrap().set_times(times).unwrap();
        let atime = |p: &Path| std::fs::metadata(p).unwrap().accessed().unwrap();
        let (link_before, dir_before) = (atime(&link), atime(&dir));

        let store = Store::open(tmp.path()).unwrap();
        assert_eq!(
            store
                .read(Path::new("revision/link"), 100)
                .unwrap()
                .unwrap(),
            b"sha256:x"
        );
        assert_eq!(store.list(Path::new("revision")).unwrap().unwrap().len(), 1);
        let listed = store
            .list_reading(Path::new("revision"), "link", 100)
            .unwrap();
        assert!(listed.unwrap().file.unwrap().is_ok());
        assert_eq!(atime(&link), link_before, "the link's access time");
        assert_eq!(atime(&dir), dir_before, "the directory's access time");
    }

    /// Listings are whole however many getdents calls they take, on the filesystem the
    /// tests run on (ext4 here: the listing stops at its end-of-directory position).
    #[test]
    fn listings_hold_every_entry_of_small_and_large_directories() {
        let tmp = tempfile::tempdir().unwrap();
        for n in [0usize, 1, 2, 3, 40, 700, 3000] {
            let dir = tmp.path().join(format!("d{n}"));
            std::fs::create_dir(&dir).unwrap();
            for i in 0..n {
                // Names as long as a digest: 3000 of them take several calls.
                let name = format!("{i:064}");
                match i % 3 {
                    0 => std::fs::create_dir(dir.join(&name)).unwrap(),
                    1 => std::fs::write(dir.join(&name), b"x").unwrap(),
                    _ => std::os::unix::fs::symlink("/", dir.join(&name)).unwrap(),
                }
            }
        }
        let store = Store::open(tmp.path()).unwrap();
        for n in [0usize, 1, 2, 3, 40, 700, 3000] {
            let rel = PathBuf::from(format!("d{n}"));
            let mut want: Vec<(OsString, EntryKind)> = std::fs::read_dir(tmp.path().join(&rel))
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    let t = e.file_type().unwrap();
                    let kind = if t.is_dir() {
                        EntryKind::Dir
                    } else if t.is_file() {
                        EntryKind::File
                    } else {
                        EntryKind::Other
                    };
                    (e.file_name(), kind)
                })
                .collect();
            want.sort_by(|a, b| a.0.cmp(&b.0));
            for got in [
                store.list(&rel).unwrap().unwrap(),
                store.sub_listed(&rel).unwrap().unwrap().1,
                store
                    .list_reading(&rel, "none", 10)
                    .unwrap()
                    .unwrap()
                    .entries,
            ] {
                let mut got: Vec<(OsString, EntryKind)> =
                    got.into_iter().map(|e| (e.name, e.kind)).collect();
                got.sort_by(|a, b| a.0.cmp(&b.0));
                assert_eq!(got.len(), n, "{n} entries");
                assert_eq!(got, want, "{n} entries");
            }
        }
    }
}

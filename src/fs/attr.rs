//! What the kernel is told about a file (its attributes, converted from the backing
//! `stat`) and who asks (the caller's credentials), and the names it may ask for.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo, TimeOrNow};
use rustix::fs::{FileType as RawType, Stat};
use rustix::fs::{Timespec, UTIME_NOW, UTIME_OMIT};

use crate::error::FsError;

/// What a successful lookup or create hands to the kernel.
#[derive(Debug, Clone)]
pub struct Entry {
    pub attr: FileAttr,
    /// What the node is in the layout: what the kernel may keep of it
    /// ([`super::caching::Caching`]).
    pub role: crate::layout::Role,
}

/// Who asks: the caller's credentials, for ownership of what it creates.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

fn time(secs: i64, nsec: u64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsec)
    }
}

/// The attributes of a backing file as node `id`.
pub fn file_attr(id: u64, st: &Stat) -> FileAttr {
    let kind = match RawType::from_raw_mode(st.st_mode) {
        RawType::Directory => FileType::Directory,
        RawType::Symlink => FileType::Symlink,
        RawType::Fifo => FileType::NamedPipe,
        RawType::Socket => FileType::Socket,
        RawType::CharacterDevice => FileType::CharDevice,
        RawType::BlockDevice => FileType::BlockDevice,
        _ => FileType::RegularFile,
    };
    FileAttr {
        ino: INodeNo(id),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: time(st.st_ctime, st.st_ctime_nsec),
        kind,
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// Rejects names that could leave their directory or are not names at all. The kernel
/// never sends these; a bug or a crafted request could.
pub fn check_name(name: &OsStr) -> Result<(), FsError> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(FsError::InvalidName {
            name: name.to_string_lossy().into_owned(),
        });
    }
    Ok(())
}

pub(super) fn timespec(t: Option<TimeOrNow>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as _,
            }
        }
    }
}

/// Attributes for `.` and `..` in readdirplus (the kernel does not link them, so only the
/// inode number and type matter), and, with node 0, a negative lookup entry.
pub(super) fn dot_attr(ino: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::Directory,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_walk_out_are_rejected() {
        for bad in ["", ".", "..", "a/b", "/", "../x"] {
            assert!(check_name(OsStr::new(bad)).is_err(), "{bad:?}");
        }
        for good in ["data", "link", "..a", "a b", "ünï", ".hidden"] {
            assert!(check_name(OsStr::new(good)).is_ok(), "{good:?}");
        }
    }
}

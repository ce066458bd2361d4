//! The checks before a mount, with errors that name the path and say what to do, and
//! what /proc/self/mountinfo says is mounted where.

use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use rustix::mount::{UnmountFlags, unmount};

use super::{MountConfig, MountError};

/// One entry of /proc/self/mountinfo that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Undoes the octal escapes (`\040` for a space) of /proc/self/mountinfo.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts of this mount namespace, in mount order.
pub fn mounts() -> io::Result<Vec<MountEntry>> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mountpoint = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let source = r.next().unwrap_or("");
            Some(MountEntry {
                mountpoint: PathBuf::from(unescape(mountpoint)),
                fstype: fstype.to_string(),
                source: unescape(source),
            })
        })
        .collect())
}

/// The topmost mount at exactly `path`, if any.
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    mounts()
        .ok()?
        .into_iter()
        .rev()
        .find(|m| m.mountpoint == path)
}

fn is_stale(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ENOTCONN)
}

/// Lazily unmounts a stale FUSE mount (its daemon died). Returns whether one was there.
pub fn recover_stale(mountpoint: &Path) -> Result<bool, MountError> {
    // statfs always reaches the daemon; stat of the root may be answered from cache.
    match rustix::fs::statfs(mountpoint).map_err(io::Error::from) {
        Err(e) if is_stale(&e) => {
            tracing::warn!(mountpoint = %mountpoint.display(),
                "stale FUSE mount found (Transport endpoint is not connected); unmounting it lazily");
            unmount(mountpoint, UnmountFlags::DETACH).map_err(|e| MountError::StaleMount {
                path: mountpoint.display().to_string(),
                source: e.into(),
            })?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// `f_type` of a FUSE filesystem in statfs(2).
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Refuses a STORAGE on a FUSE filesystem: another regfs daemon's mount (which would
/// stay writable while this daemon sweeps beneath it) or any other FUSE filesystem,
/// whose own daemon regfs cannot close for writes. statfs names the filesystem that
/// really holds STORAGE, a subdirectory of a mount included.
fn refuse_fuse_storage(storage: &Path) -> Result<(), MountError> {
    let st = rustix::fs::statfs(storage).map_err(|e| MountError::Io {
        path: storage.display().to_string(),
        source: e.into(),
    })?;
    if st.f_type as i64 != FUSE_SUPER_MAGIC {
        return Ok(());
    }
    // The innermost mount holding STORAGE, for the message.
    let holder = mounts()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| storage.starts_with(&m.mountpoint))
        // The last of the longest: the topmost mount there.
        .max_by_key(|m| m.mountpoint.as_os_str().len());
    let (fstype, mounted_at, fs_source) = match holder {
        Some(m) => (m.fstype, m.mountpoint.display().to_string(), m.source),
        None => ("fuse".into(), "?".into(), "?".into()),
    };
    Err(MountError::StorageOnFuse {
        path: storage.display().to_string(),
        fstype,
        mounted_at,
        fs_source,
    })
}

/// The daemon runs as root: checked before anything else is touched (its state
/// directory under /run, the mount).
pub fn require_root() -> Result<(), MountError> {
    match rustix::process::geteuid().as_raw() {
        0 => Ok(()),
        euid => Err(MountError::NotRoot(euid)),
    }
}

/// Everything that can be checked before mounting, with errors that say what to do.
/// Returns the canonical (storage, mountpoint).
pub fn preflight(cfg: &MountConfig) -> Result<(PathBuf, PathBuf), MountError> {
    require_root()?;
    match fs::metadata("/dev/fuse") {
        Ok(m) if m.file_type().is_char_device() => {}
        Ok(_) => {
            return Err(MountError::NoFuseDevice {
                path: "/dev/fuse".into(),
                detail: "not a character device".into(),
            });
        }
        Err(e) => {
            return Err(MountError::NoFuseDevice {
                path: "/dev/fuse".into(),
                detail: e.to_string(),
            });
        }
    }
    // First, so that a STORAGE that is also the mount point is not stat'ed through a dead
    // mount (ENOTCONN).
    recover_stale(&cfg.mountpoint)?;
    let storage = match fs::metadata(&cfg.storage) {
        Ok(m) if m.is_dir() => fs::canonicalize(&cfg.storage).map_err(|e| MountError::Io {
            path: cfg.storage.display().to_string(),
            source: e,
        })?,
        Ok(_) => return Err(MountError::StorageNotDirectory(cfg.storage.clone())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(MountError::StorageMissing(cfg.storage.clone()));
        }
        Err(e) => {
            return Err(MountError::Io {
                path: cfg.storage.display().to_string(),
                source: e,
            });
        }
    };
    let mountpoint = match fs::metadata(&cfg.mountpoint) {
        Ok(m) if m.is_dir() => fs::canonicalize(&cfg.mountpoint).map_err(|e| MountError::Io {
            path: cfg.mountpoint.display().to_string(),
            source: e,
        })?,
        Ok(_) => return Err(MountError::MountpointNotDirectory(cfg.mountpoint.clone())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(MountError::MountpointMissing(cfg.mountpoint.clone()));
        }
        Err(e) => {
            return Err(MountError::Io {
                path: cfg.mountpoint.display().to_string(),
                source: e,
            });
        }
    };
    // A store on its own disk is itself a mount point, and regfs may be mounted over the
    // storage directory itself: only a FUSE mount already there is a conflict.
    if let Some(m) = mount_at(&mountpoint)
        && m.fstype.starts_with("fuse")
    {
        return Err(MountError::AlreadyMounted {
            path: mountpoint.display().to_string(),
            fstype: m.fstype,
        });
    }
    refuse_fuse_storage(&storage)?;
    if mountpoint != storage && mountpoint.starts_with(&storage) {
        return Err(MountError::MountpointInsideStorage {
            storage,
            mountpoint,
        });
    }
    Ok((storage, mountpoint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape("plain"), "plain");
    }
}

//! One owner per store: a regfs daemon serving it, or one offline collector. The lock is
//! flock(2) on the storage directory itself, so it needs no file in the store and dies
//! with its holder.

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{FlockOperation, flock};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LockError {
    #[error("{path} is in use: {holder}")]
    Held { path: String, holder: String },
    #[error("locking {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Who holds the flock on the inode of `fd`, from /proc/locks, in words.
fn describe_holder(fd: BorrowedFd<'_>) -> String {
    let Ok(st) = rustix::fs::fstat(fd) else {
        return "held by another process".into();
    };
    let ino = st.st_ino.to_string();
    let pid = fs::read_to_string("/proc/locks").ok().and_then(|text| {
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
            let pos = f.iter().position(|x| *x == "FLOCK")?;
            let pid = f.get(pos + 3)?;
            let dev_ino = f.get(pos + 4)?;
            (dev_ino.rsplit(':').next() == Some(ino.as_str())).then(|| pid.to_string())
        })
    });
    let Some(pid) = pid else {
        return "held by another process".into();
    };
    let cmd = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    if cmd.contains(" mount ") {
        format!(
            "a regfs daemon (pid {pid}: {cmd}) serves this store; run `regfs gc MOUNTPOINT` to collect through it"
        )
    } else if cmd.contains(" gc") {
        format!("another collector is running on it (pid {pid}: {cmd})")
    } else {
        format!("locked by pid {pid} ({cmd})")
    }
}

/// Takes the store's lock on an open directory handle, without waiting: exclusive, or
/// `shared` among the daemons of one cluster. The lock lasts as long as the handle (and
/// its duplicates) stay open.
pub fn lock_store(fd: BorrowedFd<'_>, path: &str, shared: bool) -> Result<(), LockError> {
    let op = if shared {
        FlockOperation::NonBlockingLockShared
    } else {
        FlockOperation::NonBlockingLockExclusive
    };
    match flock(fd.as_fd(), op) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(LockError::Held {
            path: path.into(),
            holder: describe_holder(fd),
        }),
        Err(e) => Err(LockError::Io {
            path: path.into(),
            source: e.into(),
        }),
    }
}

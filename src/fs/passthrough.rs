//! Who serves an open: kernel passthrough or the daemon.
//!
//! It is decided by the file's role, the same for every open of it: blob data and an
//! upload's data (the bulk of every pull and push) are served by kernel passthrough, to
//! readers and writers alike (no policy needs to see those bytes as they are written: a
//! push is judged at its commit); every other file, links above all, is served by the
//! daemon with direct I/O, to readers and writers alike, so the policy sees every write.
//! The kernel refuses (EIO) a non-passthrough open of an inode that a passthrough open
//! holds: a file read by passthrough while a daemon-served writer opens it would fail
//! that writer, which a plain directory never does. One role, one kind of open, and that
//! never happens. A file renamed to another role while held open keeps the kind of its
//! open handles: later opens join a passthrough it holds, except a link's writer, which
//! is refused (its bytes must reach the policy).

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fuser::BackingId;

use super::inode::Inode;
use crate::error::{FsError, FsResult};
use crate::layout::Role;

/// Creates a kernel passthrough backing id for a file descriptor (the adapter wraps
/// fuser's `ReplyOpen::open_backing`).
pub type BackingFactory<'a> = &'a dyn Fn(BorrowedFd<'_>) -> io::Result<BackingId>;

/// Whether the opens of a file of this role are served by kernel passthrough (reads
/// and writes then never reach the daemon, so no policy may need to see them); the
/// daemon serves all the others.
fn by_kernel(role: Role) -> bool {
    matches!(role, Role::BlobData(_) | Role::UploadData)
}

#[derive(Debug, Default)]
pub(super) struct Passthrough {
    /// Usable now (cleared if the kernel refuses a backing file).
    usable: AtomicBool,
    /// Granted at init: opens without it must then be direct I/O.
    granted: AtomicBool,
}

impl Passthrough {
    /// Turns it on or off (decided at init).
    pub(super) fn set(&self, on: bool) {
        self.usable.store(on, Ordering::Release);
        self.granted.store(on, Ordering::Release);
    }

    pub(super) fn usable(&self) -> bool {
        self.usable.load(Ordering::Acquire)
    }

    /// Granted at init (even if the kernel refused a backing file since).
    pub(super) fn granted(&self) -> bool {
        self.granted.load(Ordering::Acquire)
    }

    /// The passthrough backing id of an open, shared per inode, or `None` for an open
    /// the daemon serves. The kernel opens its own backing file per handle with that
    /// handle's flags, so one id serves readers and writers alike. An inode a
    /// passthrough open still holds gets passthrough again whatever its role now (the
    /// kernel refuses anything else), except for a link's writer, which is refused.
    pub(super) fn backing_for(
        &self,
        inode: &Inode,
        fd: BorrowedFd<'_>,
        make: Option<BackingFactory<'_>>,
        link_writer: bool,
    ) -> FsResult<Option<Arc<BackingId>>> {
        let Some(make) = make else {
            return Ok(None);
        };
        let mut slot = inode.backing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = slot.upgrade() {
            if link_writer {
                return Err(FsError::LinkHeldByPassthrough { path: inode.path() });
            }
            return Ok(Some(id));
        }
        if !self.usable() || !by_kernel(inode.role()) {
            return Ok(None);
        }
        match make(fd) {
            Ok(id) => {
                // The kernel writes it from now on: an fsync of it always syncs.
                inode.durability.writes_unseen();
                let id = Arc::new(id);
                *slot = Arc::downgrade(&id);
                Ok(Some(id))
            }
            Err(e) => {
                if self.usable.swap(false, Ordering::AcqRel) {
                    tracing::warn!(path = %inode.path(), error = %e,
                        "kernel refused a passthrough backing file; reads go through the daemon from now on");
                }
                Ok(None)
            }
        }
    }
}

/// Refuses a link's writer while a passthrough open holds the inode, before anything
/// of the file is changed (an O_TRUNC); [`Passthrough::backing_for`] checks again. A
/// reader that has just closed is let go first: the kernel sends its RELEASE only after
/// close(2) has returned.
pub(super) fn check_link_writer(inode: &Inode) -> FsResult<()> {
    const RELEASE_GRACE: Duration = Duration::from_millis(200);
    let held = || {
        let slot = inode.backing.lock().unwrap_or_else(|e| e.into_inner());
        slot.strong_count() > 0
    };
    let start = Instant::now();
    while held() {
        if start.elapsed() >= RELEASE_GRACE {
            return Err(FsError::LinkHeldByPassthrough { path: inode.path() });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

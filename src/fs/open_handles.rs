//! Open handles: the files and directories the kernel holds open through the mount, and
//! the requests on a handle once it is open (read, write, fsync, flush, release). How a
//! handle is opened, and who serves it, is the core's (`opening`) and passthrough's.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fuser::{BackingId, FileType};
use rustix::fs::{self as rfs, Dir};
use rustix::io::Errno;

use super::handle_table::HandleTable;
use super::inode::Inode;
use super::link_undo::LinkUndo;
use crate::error::{FsError, FsResult};
use crate::policy::{Write, WriterLease};

#[derive(Debug)]
pub struct OpenFile {
    pub(super) inode: Arc<Inode>,
    pub(super) fd: OwnedFd,
    /// The policy's lease of a write-capable handle; dropped (released) with the handle.
    pub(super) writer: Option<WriterLease>,
    /// A write handle on a link file: its bytes from before, put back if it is cut.
    pub(super) undo: Option<Arc<LinkUndo>>,
    /// Keeps the inode's passthrough backing id alive until this handle is released.
    pub(super) _backing: Option<Arc<BackingId>>,
}

#[derive(Debug)]
pub(super) struct Pending {
    pub(super) name: CString,
    pub(super) offset: i64,
    pub(super) kind: FileType,
    pub(super) ino: u64,
}

#[derive(Debug)]
pub(super) struct Stream {
    pub(super) dir: Dir,
    /// Offset of the last entry handed to the kernel.
    pub(super) position: i64,
    /// An entry read but not sent because the reply was full.
    pub(super) pending: Option<Pending>,
}

#[derive(Debug)]
pub struct OpenDir {
    pub(super) inode: Arc<Inode>,
    pub(super) stream: Mutex<Stream>,
}

/// Every open handle, by the number the kernel knows it by.
#[derive(Debug, Default)]
pub(super) struct OpenHandles {
    files: HandleTable<OpenFile>,
    dirs: HandleTable<OpenDir>,
    /// Read requests served by the daemon (not by kernel passthrough).
    daemon_reads: AtomicU64,
    /// Write requests served by the daemon (not by kernel passthrough).
    daemon_writes: AtomicU64,
    /// fsync requests answered without an fsync(2): nothing changed since the last.
    fsyncs_answered: AtomicU64,
}

impl OpenHandles {
    pub(super) fn insert_file(&self, file: OpenFile) -> u64 {
        self.files.insert(file)
    }

    pub(super) fn insert_dir(&self, dir: OpenDir) -> u64 {
        self.dirs.insert(dir)
    }

    pub(super) fn file(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.files.get(fh).ok_or(FsError::Stale {
            what: "handle",
            id: fh,
        })
    }

    pub(super) fn dir(&self, fh: u64) -> FsResult<Arc<OpenDir>> {
        self.dirs.get(fh).ok_or(FsError::Stale {
            what: "directory handle",
            id: fh,
        })
    }

    pub(super) fn daemon_reads(&self) -> u64 {
        self.daemon_reads.load(Ordering::Relaxed)
    }

    pub(super) fn daemon_writes(&self) -> u64 {
        self.daemon_writes.load(Ordering::Relaxed)
    }

    pub(super) fn fsyncs_answered(&self) -> u64 {
        self.fsyncs_answered.load(Ordering::Relaxed)
    }

    pub(super) fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let file = self.file(fh)?;
        self.daemon_reads.fetch_add(1, Ordering::Relaxed);
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match rustix::io::pread(&file.fd, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(FsError::backing("read", file.inode.path(), e)),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// A write, as the handle's writer lease admits it (a link's bytes kept first).
    pub(super) fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let file = self.file(fh)?;
        self.daemon_writes.fetch_add(1, Ordering::Relaxed);
        let lease = file.writer.as_ref().ok_or(FsError::BadHandle {
            fh,
            what: "writing",
        })?;
        let _write = lease.admit_write(&Write::Bytes { offset, data })?;
        if let Some(u) = &file.undo {
            u.keep_before_change();
        }
        let written = pwrite_all(&file.fd, offset, data);
        file.inode.durability.changed();
        match written {
            (0, Some(e)) => Err(FsError::backing("write", file.inode.path(), e)),
            (done, _) => Ok(done as u32),
        }
    }

    /// A truncation through a handle open for writing (the registry's ftruncate(0) of a
    /// link it rewrites): a write on that handle. False when the handle has no writer
    /// (then it is an attribute change of the path, not done here).
    pub(super) fn truncate(&self, fh: u64, size: u64) -> FsResult<bool> {
        let file = self.file(fh)?;
        let Some(lease) = &file.writer else {
            return Ok(false);
        };
        let _write = lease.admit_write(&Write::Truncate { size })?;
        if let Some(u) = &file.undo {
            u.keep_before_change();
        }
        let r = rfs::ftruncate(&file.fd, size);
        file.inode.durability.changed();
        r.map_err(|e| FsError::backing("truncate", file.inode.path(), e))?;
        Ok(true)
    }

    /// fsync: allowed in an epoch, so data written before it can still be made durable.
    /// A file unchanged since its last fsync (every change seen by the daemon) is
    /// answered at once (`durability`).
    pub(super) fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let file = self.file(fh)?;
        let Some(ticket) = file.inode.durability.needs_sync() else {
            self.fsyncs_answered.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        if datasync {
            rfs::fdatasync(&file.fd)
        } else {
            rfs::fsync(&file.fd).inspect(|()| file.inode.durability.synced(ticket))
        }
        .map_err(|e| FsError::backing("fsync", file.inode.path(), e))
    }

    /// FLUSH, which close(2) waits for (sent only for handles that asked, see
    /// `Opened::flush`): a link writer's undo is complete, kernel caches included.
    pub(super) fn flush(&self, fh: u64) -> FsResult<()> {
        let file = self.file(fh)?;
        if let Some(u) = &file.undo {
            u.settle();
        }
        Ok(())
    }

    /// Forgets a handle; its writer lease (if any) is released when the last request
    /// still using the handle ends.
    pub(super) fn release(&self, fh: u64) -> FsResult<()> {
        self.files.remove(fh).ok_or(FsError::Stale {
            what: "handle",
            id: fh,
        })?;
        Ok(())
    }

    pub(super) fn releasedir(&self, fh: u64) -> FsResult<()> {
        self.dirs.remove(fh).map(|_| ()).ok_or(FsError::Stale {
            what: "directory handle",
            id: fh,
        })
    }

    pub(super) fn fsyncdir(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let dir = self.dir(fh)?;
        let st = dir.stream.lock().unwrap_or_else(|e| e.into_inner());
        let fd = st
            .dir
            .fd()
            .map_err(|e| FsError::backing("fsyncdir", dir.inode.path(), e))?;
        let r = if datasync {
            rfs::fdatasync(fd)
        } else {
            rfs::fsync(fd)
        };
        r.map_err(|e| FsError::backing("fsyncdir", dir.inode.path(), e))
    }
}

/// Writes `data` at `offset`, retrying short writes: the bytes written, and the error
/// that stopped it early, if any.
fn pwrite_all(fd: &OwnedFd, offset: u64, data: &[u8]) -> (usize, Option<Errno>) {
    let mut done = 0;
    while done < data.len() {
        match rustix::io::pwrite(fd, &data[done..], offset + done as u64) {
            Ok(n) => done += n,
            Err(Errno::INTR) => continue,
            Err(e) => return (done, Some(e)),
        }
    }
    (done, None)
}

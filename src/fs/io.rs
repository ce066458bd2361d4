//! Opening, reading and writing files.
//!
//! Who serves an open is decided by the file's role, the same for every open of it:
//! blob data and an upload's data (the bulk of every pull and push) are served by kernel
//! passthrough, to readers and writers alike (no policy needs to see those bytes as they
//! are written: a push is judged at its commit); every other file, links above all, is
//! served by the daemon with direct I/O, to readers and writers alike, so the policy sees
//! every write. The kernel refuses (EIO) a non-passthrough open of an inode that a
//! passthrough open holds: a file read by passthrough while a daemon-served writer opens
//! it would fail that writer, which a plain directory never does. One role, one kind of
//! open, and that never happens. A file renamed to another role while held open keeps
//! the kind of its open handles: later opens join a passthrough it holds, except a
//! link's writer, which is refused (its bytes must reach the policy).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fuser::BackingId;
use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;

use super::attr::{check_name, file_attr};
use super::core::{Caller, Entry, StorageFs};
use super::inode::{Found, Inode, Kind};
use super::link_undo::LinkUndo;
use super::open::OpenFile;
use super::unlinked::{in_dir_error, is_unlinked};
use crate::error::{FsError, FsResult};
use crate::layout::Role;
use crate::policy::{
    Change, LinkRead, Write, WriteMeaning, WriteRole, WriteUndo, Writer, WriterLease,
};

/// Creates a kernel passthrough backing id for a file descriptor (the adapter wraps
/// fuser's `ReplyOpen::open_backing`).
pub type BackingFactory<'a> = &'a dyn Fn(BorrowedFd<'_>) -> io::Result<BackingId>;

/// What an open hands to the kernel.
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    /// Bypass the page cache: every write (and read) of this handle comes to us.
    pub direct_io: bool,
    pub backing: Option<Arc<BackingId>>,
    /// The kernel must send FLUSH when a descriptor of it closes: a link's writer, whose
    /// undo must be complete before close(2) returns. Other handles have nothing to do
    /// at close (writes reach the backing file as they come), so the kernel skips it.
    pub flush: bool,
}

/// Flags a client may pass that must not reach the backing open: creation is done
/// by us, and O_DIRECT would need aligned buffers we do not promise.
fn backing_flags(flags: i32) -> OFlags {
    OFlags::from_bits_retain(flags as u32)
        & !(OFlags::CREATE
            | OFlags::EXCL
            | OFlags::NOCTTY
            | OFlags::DIRECT
            | OFlags::PATH
            | OFlags::TMPFILE)
}

fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// Whether the opens of a file of this role are served by kernel passthrough (reads
/// and writes then never reach the daemon, so no policy may need to see them); the
/// daemon serves all the others.
fn by_kernel(role: Role) -> bool {
    matches!(role, Role::BlobData(_) | Role::UploadData)
}

/// A writer admitted by the policy, and what it is.
struct Admitted {
    lease: WriterLease,
    role: WriteRole,
}

impl StorageFs {
    /// The passthrough backing id of an open, shared per inode, or `None` for an open the
    /// daemon serves. The kernel opens its own backing file per handle with that handle's
    /// flags, so one id serves readers and writers alike. An inode a passthrough open still
    /// holds gets passthrough again whatever its role now (the kernel refuses anything
    /// else), except for a link's writer, which is refused.
    fn backing_for(
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
        if !self.passthrough_enabled() || !by_kernel(inode.role()) {
            return Ok(None);
        }
        match make(fd) {
            Ok(id) => {
                let id = Arc::new(id);
                *slot = Arc::downgrade(&id);
                Ok(Some(id))
            }
            Err(e) => {
                if self.passthrough.swap(false, Ordering::AcqRel) {
                    tracing::warn!(path = %inode.path(), error = %e,
                        "kernel refused a passthrough backing file; reads go through the daemon from now on");
                }
                Ok(None)
            }
        }
    }

    /// Refuses a link's writer while a passthrough open holds the inode, before anything
    /// of the file is changed (an O_TRUNC); [`Self::backing_for`] checks again. A reader
    /// that has just closed is let go first: the kernel sends its RELEASE only after
    /// close(2) has returned.
    fn check_link_writer(&self, inode: &Inode) -> FsResult<()> {
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

    /// The undo record of a write handle on a link file (its own read-write descriptor).
    fn link_undo(
        &self,
        inode: &Arc<Inode>,
        fd: BorrowedFd<'_>,
        path: &str,
        created: bool,
    ) -> FsResult<Arc<LinkUndo>> {
        let own = self
            .reopen(fd, OFlags::RDWR | OFlags::NOCTTY)
            .map_err(|e| FsError::backing("open", path, e))?;
        let notifier = self.notifier.get().cloned();
        Ok(LinkUndo::new(
            path.into(),
            inode.clone(),
            own,
            created,
            notifier,
        ))
    }

    fn finish_open(
        &self,
        inode: Arc<Inode>,
        fd: OwnedFd,
        writer: Option<Admitted>,
        undo: Option<Arc<LinkUndo>>,
        make: Option<BackingFactory<'_>>,
    ) -> FsResult<Opened> {
        let link_writer = writer
            .as_ref()
            .is_some_and(|w| matches!(w.role, WriteRole::Link(_)));
        // On an error the writer's lease drops here, which releases it; a link's O_TRUNC
        // (done by then) is undone.
        let backing = self
            .backing_for(&inode, fd.as_fd(), make, link_writer)
            .inspect_err(|_| {
                if let Some(u) = &undo {
                    u.undo_refused_write();
                }
            })?;
        // Direct I/O for opens the daemon serves once passthrough is in use (the kernel
        // refuses to mix cached and passthrough opens of one inode), and for writers
        // always (so the policy sees every write).
        let direct_io =
            backing.is_none() && (writer.is_some() || (make.is_some() && self.passthrough_ever()));
        let flush = undo.is_some();
        let fh = self.files.insert(OpenFile {
            inode,
            fd,
            writer: writer.map(|w| w.lease),
            undo,
            _backing: backing.clone(),
        });
        Ok(Opened {
            fh,
            direct_io,
            backing,
            flush,
        })
    }

    fn passthrough_ever(&self) -> bool {
        self.passthrough_granted.load(Ordering::Acquire)
    }

    pub fn open(&self, id: u64, flags: i32, make: Option<BackingFactory<'_>>) -> FsResult<Opened> {
        let inode = self.inode(id)?;
        // Every pull opens files: the path (a walk up the parents) is built only for
        // writers, which the gate names, and for errors.
        if inode.kind == Kind::Directory {
            return Err(FsError::backing("open", inode.path(), Errno::ISDIR));
        }
        let opath = self.fd_of(&inode)?;
        let mut undo = None;
        let writer = if wants_write(flags) {
            let path = inode.path();
            // A write must land in the store. (A reader may read a file removed while it
            // opened it, as on any filesystem: names renamed over race every open.)
            if is_unlinked(&*opath) {
                return Err(FsError::RemovedBehindKernel { path });
            }
            // What this write means, worked out once for every layer of the policy.
            let meaning = WriteMeaning::new(&path, inode.role());
            let role = meaning.write_role();
            if let WriteRole::Link(_) = role {
                self.check_link_writer(&inode)?;
                undo = Some(self.link_undo(&inode, opath.as_fd(), &path, false)?);
            }
            let lease = self.policy.admit_writer(Writer {
                meaning: &meaning,
                undo: undo.clone().map(|u| u as Arc<dyn WriteUndo>),
            })?;
            Some(Admitted { lease, role })
        } else {
            // Only link files, which a read of a blob or manifest starts with.
            if let Some(link) = inode.role().link() {
                let read = LinkRead {
                    link,
                    node: inode.id,
                };
                self.policy.note_read(read, &|| inode.path());
            }
            None
        };
        // A link's O_TRUNC is done below, after its bytes are kept.
        let mut oflags = backing_flags(flags);
        if undo.is_some() {
            oflags.remove(OFlags::TRUNC);
        }
        // On an error the writer's lease drops here, which releases it.
        let fd = self
            .reopen(opath.as_fd(), oflags)
            .map_err(|e| FsError::backing("open", inode.path(), e))?;
        if let (Some(u), Some(w)) = (&undo, &writer)
            && flags & libc::O_TRUNC != 0
        {
            let _write = w.lease.admit_write(&Write::Truncate { size: 0 })?;
            u.truncate()
                .map_err(|e| FsError::backing("truncate", inode.path(), e))?;
        }
        self.finish_open(inode, fd, writer, undo, make)
    }

    /// create(2) with O_CREAT: makes the file if missing (owned by the caller) and opens it.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: Caller,
        make: Option<BackingFactory<'_>>,
    ) -> FsResult<(Entry, Opened)> {
        let parent = self.inode(parent)?;
        check_name(name)?;
        let path = parent.child_path(name);
        // What creating it means, worked out once for every layer of the policy.
        let meaning = WriteMeaning::new(&path, parent.role().child(name));
        // Asked before anything is created, so a refused create leaves no empty file.
        let change = self.admit_change(Change::Create {
            meaning: &meaning,
            writes: wants_write(flags),
        })?;
        let role = wants_write(flags).then(|| meaning.write_role());
        let is_link = matches!(role, Some(WriteRole::Link(_)));
        let base = backing_flags(flags) | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(mode & 0o7777);
        let dir = self.fd_of(&parent)?;
        let (fd, created) =
            match rfs::openat(&*dir, name, base | OFlags::CREATE | OFlags::EXCL, mode) {
                Ok(fd) => (fd, true),
                Err(Errno::EXIST) if flags & libc::O_EXCL == 0 => {
                    // A link's O_TRUNC is done below, after its bytes are kept.
                    let mut existing = base | OFlags::NONBLOCK;
                    if is_link {
                        existing.remove(OFlags::TRUNC);
                    }
                    let fd = rfs::openat(&*dir, name, existing, Mode::empty())
                        .map_err(|e| FsError::backing("open", &path, e))?;
                    (fd, false)
                }
                Err(e) => return Err(in_dir_error("create", &path, &*dir, e)),
            };
        if created {
            self.give_to_caller(&parent, fd.as_fd(), caller, &path)?;
        }
        let st = rfs::fstat(&fd).map_err(|e| FsError::backing("stat", &path, e))?;
        if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::RegularFile {
            return Err(FsError::SpecialFile { path });
        }
        let opath = self
            .reopen(fd.as_fd(), OFlags::PATH)
            .map_err(|e| FsError::backing("open", &path, e))?;
        let found = Found::new(&st, Kind::File);
        let inode = self.inodes.remember(&parent, name, found, opath, true);
        let undo = if is_link {
            self.check_link_writer(&inode)?;
            let u = self.link_undo(&inode, fd.as_fd(), &path, created)?;
            if !created && flags & libc::O_TRUNC != 0 {
                u.truncate()
                    .map_err(|e| FsError::backing("truncate", &path, e))?;
            }
            Some(u)
        } else {
            None
        };
        let writer = role.map(|role| {
            let lease = change.admit_writer(Writer {
                meaning: &meaning,
                undo: undo.clone().map(|u| u as Arc<dyn WriteUndo>),
            });
            Admitted { lease, role }
        });
        drop(change);
        let entry = Entry {
            attr: file_attr(inode.id, &st),
        };
        Ok((entry, self.finish_open(inode, fd, writer, undo, make)?))
    }

    fn file(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.files.get(fh).ok_or(FsError::Stale {
            what: "handle",
            id: fh,
        })
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
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

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
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
        let mut done = 0;
        while done < data.len() {
            match rustix::io::pwrite(&file.fd, &data[done..], offset + done as u64) {
                Ok(n) => done += n,
                Err(Errno::INTR) => continue,
                Err(e) if done == 0 => return Err(FsError::backing("write", file.inode.path(), e)),
                Err(_) => break,
            }
        }
        Ok(done as u32)
    }

    /// fsync: allowed in an epoch, so data written before it can still be made durable.
    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let file = self.file(fh)?;
        let r = if datasync {
            rfs::fdatasync(&file.fd)
        } else {
            rfs::fsync(&file.fd)
        };
        r.map_err(|e| FsError::backing("fsync", file.inode.path(), e))
    }

    /// FLUSH, which close(2) waits for (sent only for handles that asked, see
    /// [`Opened::flush`]): a link writer's undo is complete, kernel caches included.
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        let file = self.file(fh)?;
        if let Some(u) = &file.undo {
            u.settle();
        }
        Ok(())
    }

    /// Forgets a handle; its writer lease (if any) is released when the last request
    /// still using the handle ends.
    pub fn release(&self, fh: u64) -> FsResult<()> {
        self.files.remove(fh).ok_or(FsError::Stale {
            what: "handle",
            id: fh,
        })?;
        Ok(())
    }
}

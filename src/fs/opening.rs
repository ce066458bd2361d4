//! Opening files: open and create, each writer admitted by the policy (a link's writer
//! with its undo record), and the open handed to the kernel served by passthrough or by
//! the daemon (`passthrough`).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use fuser::BackingId;
use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;

use super::attr::{check_name, file_attr};
use super::core::{Caller, Entry, StorageFs};
use super::inode::{Found, Inode, Kind};
use super::link_undo::LinkUndo;
use super::open_handles::OpenFile;
use super::passthrough::{BackingFactory, check_link_writer};
use super::unlinked::{in_dir_error, is_unlinked};
use crate::error::{FsError, FsResult};
use crate::policy::{
    Change, LinkRead, Write, WriteMeaning, WriteRole, WriteUndo, Writer, WriterLease,
};

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

/// A writer admitted by the policy, and what it is.
struct Admitted {
    lease: WriterLease,
    role: WriteRole,
}

impl StorageFs {
    /// The undo record of a write handle on a link file (its own read-write descriptor).
    fn link_undo(
        &self,
        inode: &Arc<Inode>,
        fd: BorrowedFd<'_>,
        path: &str,
        created: bool,
    ) -> FsResult<Arc<LinkUndo>> {
        let own = self
            .names
            .reopen(fd, OFlags::RDWR | OFlags::NOCTTY)
            .map_err(|e| FsError::backing("open", path, e))?;
        let notifier = self.kernel.notifier();
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
            .passthrough
            .backing_for(&inode, fd.as_fd(), make, link_writer)
            .inspect_err(|_| {
                if let Some(u) = &undo {
                    u.undo_refused_write();
                }
            })?;
        // Direct I/O for opens the daemon serves once passthrough is in use (the kernel
        // refuses to mix cached and passthrough opens of one inode), and for writers
        // always (so the policy sees every write).
        let direct_io = backing.is_none()
            && (writer.is_some() || (make.is_some() && self.passthrough.granted()));
        // A writer's open may have truncated the file (O_TRUNC), or created it.
        if writer.is_some() {
            inode.durability.changed();
        }
        let flush = undo.is_some();
        let fh = self.handles.insert_file(OpenFile {
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

    pub fn open(&self, id: u64, flags: i32, make: Option<BackingFactory<'_>>) -> FsResult<Opened> {
        let inode = self.names.inode(id)?;
        // Every pull opens files: the path (a walk up the parents) is built only for
        // writers, which the gate names, and for errors.
        if inode.kind == Kind::Directory {
            return Err(FsError::backing("open", inode.path(), Errno::ISDIR));
        }
        let opath = self.names.fd_of(&inode)?;
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
                check_link_writer(&inode)?;
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
            .names
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
        let parent = self.names.inode(parent)?;
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
        let dir = self.names.fd_of(&parent)?;
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
            self.names
                .give_to_caller(&parent, fd.as_fd(), caller, &path)?;
        }
        let st = rfs::fstat(&fd).map_err(|e| FsError::backing("stat", &path, e))?;
        if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::RegularFile {
            return Err(FsError::SpecialFile { path });
        }
        let opath = self
            .names
            .reopen(fd.as_fd(), OFlags::PATH)
            .map_err(|e| FsError::backing("open", &path, e))?;
        let found = Found::new(&st, Kind::File);
        let inode = self
            .names
            .inodes
            .remember(&parent, name, found, opath, true);
        inode.durability.changed();
        let undo = if is_link {
            check_link_writer(&inode)?;
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
            role: inode.role(),
        };
        Ok((entry, self.finish_open(inode, fd, writer, undo, make)?))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        self.handles.read(fh, offset, size)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.handles.write(fh, offset, data)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        self.handles.fsync(fh, datasync)
    }

    pub fn flush(&self, fh: u64) -> FsResult<()> {
        self.handles.flush(fh)
    }

    pub fn release(&self, fh: u64) -> FsResult<()> {
        self.handles.release(fh)
    }
}

//! A link file whose writer a GC epoch cuts is put back as it was. The registry (2.8)
//! rewrites a link in place: open, ftruncate(0), write 71 bytes, close. A writer still
//! open when the drain timeout runs out can no longer write, so without this the link
//! would stay empty (or partial): the registry would fail on it and the collector would
//! have to guess. Each write handle on a link keeps the link's bytes from just before its
//! first change (at most [`KEPT`] bytes, one small read) and, if cut, puts them back.
//!
//! What the repair does, by what the file holds when the writer is cut:
//! - a valid link: nothing (the writer finished its write; a new link stands);
//! - anything else, and the file existed before: the bytes from before, exactly;
//! - anything else, and the writer created the file: the file is removed (it never held
//!   a link, and an empty link would only make the registry fail on it).
//!
//! A refused write is undone inside the write request; a removal is told to the kernel
//! from a thread (see [`LinkUndo::tell_kernel_removed`]), and the close that ends the
//! handle waits for that ([`LinkUndo::settle`], from FLUSH, which close(2) waits for):
//! once close returns, nobody finds the link as the refused or cut writer left it.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fuser::{INodeNo, Notifier};
use rustix::fs::{self as rfs, AtFlags};
use rustix::io::Errno;

use super::inode::{Inode, InodeKey};
use crate::layout::parse_link;
use crate::policy::WriteUndo;

/// Bytes kept from before a write: a link is 71; a damaged one up to this is kept too.
const KEPT: usize = 4096;

/// How long a close waits for the kernel to take a removal in: the notice waits only for
/// requests on the file already in flight to the daemon.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum Before {
    /// The file's content just before the handle's first change.
    Bytes(Vec<u8>),
    /// The handle created the file.
    Absent,
    /// Not kept (too large, or unreadable): the repair leaves the file alone.
    NotKept(String),
}

/// The undo record of one write handle on a link file.
#[derive(Debug)]
pub(super) struct LinkUndo {
    pub(super) path: String,
    inode: Arc<Inode>,
    /// Our own read-write descriptor of the file, whatever the client opened it with
    /// (write-only, append): to read the old bytes and to put them back.
    fd: OwnedFd,
    before: OnceLock<Before>,
    notifier: Option<Notifier>,
    /// Removals being told to the kernel: each sends once when the kernel took it.
    telling: Mutex<Vec<Receiver<()>>>,
    /// The policy cut the handle; its repair is due.
    cut: AtomicBool,
    /// What the repair of a cut handle did, once done: by the policy, or by the handle's
    /// close if that came first (the later one is told the same).
    repaired: Mutex<Option<Option<String>>>,
}

fn read_small(fd: &OwnedFd) -> rustix::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; KEPT + 1];
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(fd, &mut buf[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

impl LinkUndo {
    /// `fd`: a read-write descriptor of the file; `created`: the handle created it.
    pub(super) fn new(
        path: String,
        inode: Arc<Inode>,
        fd: OwnedFd,
        created: bool,
        notifier: Option<Notifier>,
    ) -> Arc<LinkUndo> {
        let before = OnceLock::new();
        if created {
            let _ = before.set(Before::Absent);
        }
        Arc::new(LinkUndo {
            path,
            inode,
            fd,
            before,
            notifier,
            telling: Mutex::new(Vec::new()),
            cut: AtomicBool::new(false),
            repaired: Mutex::new(None),
        })
    }

    /// Keeps the file's bytes, once, before the handle's first change (truncate, write).
    pub(super) fn keep_before_change(&self) {
        self.before.get_or_init(|| match read_small(&self.fd) {
            Ok(b) if b.len() > KEPT => Before::NotKept(format!("it held more than {KEPT} bytes")),
            Ok(b) => Before::Bytes(b),
            Err(e) => Before::NotKept(format!("reading it failed: {e}")),
        });
    }

    /// Truncates the file to zero after keeping its bytes (an open with O_TRUNC).
    pub(super) fn truncate(&self) -> rustix::io::Result<()> {
        self.keep_before_change();
        let r = rfs::ftruncate(&self.fd, 0);
        self.inode.durability.changed();
        r
    }

    fn put_back(&self, bytes: &[u8]) -> rustix::io::Result<()> {
        let r = self.write_back(bytes);
        self.inode.durability.changed();
        r
    }

    fn write_back(&self, bytes: &[u8]) -> rustix::io::Result<()> {
        rfs::ftruncate(&self.fd, 0)?;
        let mut done = 0;
        while done < bytes.len() {
            match rustix::io::pwrite(&self.fd, &bytes[done..], done as u64) {
                Ok(n) => done += n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
        rfs::fdatasync(&self.fd)?;
        // The kernel cached the truncated size: drop its attributes and pages.
        if let Some(n) = &self.notifier {
            let _ = n.inval_inode(INodeNo(self.inode.id), 0, 0);
        }
        Ok(())
    }

    /// Removes the file if its name still names it.
    fn remove(&self) -> std::io::Result<bool> {
        let (Some(parent), name) = self.inode.parent_and_name() else {
            return Ok(false);
        };
        let dir = parent.fd()?;
        let st = match rfs::statat(&*dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let key = InodeKey {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        if key != self.inode.key {
            return Ok(false);
        }
        rfs::unlinkat(&*dir, &name, AtFlags::empty())?;
        self.tell_kernel_removed(parent.id, &name);
        Ok(true)
    }

    /// From a thread of its own: the undo of a refused write runs inside that write's
    /// request, whose caller holds the file's inode lock until the reply, and the kernel
    /// takes that lock to drop the entry (told at once, it would deadlock; the soak hit it).
    fn tell_kernel_removed(&self, parent: u64, name: &OsStr) {
        let Some(n) = self.notifier.clone() else {
            return;
        };
        let (child, name) = (self.inode.id, name.to_owned());
        let (done, told) = mpsc::channel();
        let started = std::thread::Builder::new()
            .name("regfs-inval".into())
            .spawn(move || {
                let r = n.delete(INodeNo(parent), INodeNo(child), &name);
                let listing = n.inval_inode(INodeNo(parent), 0, 0);
                if let Err(e) = r.and(listing) {
                    tracing::debug!(error = %e, "kernel cache invalidation after a removal failed");
                }
                let _ = done.send(());
            });
        match started {
            Ok(_) => self
                .telling
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(told),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a thread to tell the kernel of a removal")
            }
        }
    }

    /// Returns once the handle's undo is complete: a cut handle repaired, and every
    /// removal its undo made taken in by the kernel. The close of the handle calls it,
    /// from FLUSH: a lookup or read after close(2) returned finds the link as it was
    /// before the refused or cut write (or no file), never as that write left it.
    pub(super) fn settle(&self) {
        if self.cut.load(Ordering::Acquire) {
            self.repair_cut_once();
        }
        let pending = std::mem::take(&mut *self.telling.lock().unwrap_or_else(|e| e.into_inner()));
        for told in pending {
            if told.recv_timeout(SETTLE_TIMEOUT).is_err() {
                tracing::warn!(path = %self.path,
                    "the kernel did not take in the removal of an undone link in time; a lookup may still find it until its entry expires");
            }
        }
    }

    /// The repair of a cut handle, done once whoever asks first (the policy after its
    /// drain, or the handle's close); the others are told what it did.
    fn repair_cut_once(&self) -> Option<String> {
        let mut done = self.repaired.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = done.as_ref() {
            return r.clone();
        }
        let r = match self.repair_now() {
            Ok(Some(did)) => {
                tracing::warn!(path = %self.path, "link file of a writer cut by the GC epoch: {did}");
                Some(did)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!(path = %self.path, "link file of a writer cut by the GC epoch left as it is: {e}");
                Some(e)
            }
        };
        *done = Some(r.clone());
        r
    }

    fn repair_now(&self) -> Result<Option<String>, String> {
        // Never changed by this handle: nothing to undo.
        let Some(before) = self.before.get() else {
            return Ok(None);
        };
        let now = read_small(&self.fd).map_err(|e| format!("reading it failed: {e}"))?;
        if parse_link(&now).is_ok() {
            return Ok(None);
        }
        match before {
            Before::Bytes(b) if *b == now => Ok(None),
            Before::Bytes(b) => {
                self.put_back(b)
                    .map_err(|e| format!("putting it back failed: {e}"))?;
                Ok(Some(format!(
                    "put back the {} bytes it held before the write",
                    b.len()
                )))
            }
            Before::Absent => match self.remove() {
                Ok(true) => Ok(Some(
                    "removed: created by the cut writer, it never held a link".into(),
                )),
                Ok(false) => Ok(None),
                Err(e) => Err(format!("removing it failed: {e}")),
            },
            Before::NotKept(why) => Err(format!("not repaired: {why}")),
        }
    }
}

impl WriteUndo for LinkUndo {
    /// After a write refused for naming a blob without data: the registry truncated the
    /// link first, so it gets its old bytes back (or, if this handle created it, goes).
    fn undo_refused_write(&self) {
        let done = match self.before.get() {
            Some(Before::Bytes(b)) => self.put_back(b).map_err(|e| e.to_string()),
            Some(Before::Absent) => self.remove().map(|_| ()).map_err(|e| e.to_string()),
            _ => Ok(()),
        };
        if let Err(e) = done {
            tracing::error!(path = %self.path, error = %e, "could not undo a refused link write");
        }
    }

    fn repair_cut(&self) -> Option<String> {
        self.repair_cut_once()
    }

    fn mark_cut(&self) {
        self.cut.store(true, Ordering::Release);
    }
}

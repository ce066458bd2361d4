//! What an open handle holds: the records the core's handle tables keep, apart from the
//! operations on them (`io`, `readdir`), so the core depends on neither.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use fuser::{BackingId, FileType};
use rustix::fs::Dir;

use super::inode::Inode;
use super::link_undo::LinkUndo;
use crate::policy::WriterLease;

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

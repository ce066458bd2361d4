//! Directory handles and listing. A listing resumes from the backing filesystem's own
//! offsets, so entries added or removed while a directory is listed behave as they do
//! on the backing directory.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;

use fuser::{FileAttr, FileType};
use rustix::fs::{self as rfs, Dir, OFlags};

use super::core::StorageFs;
use super::open_handles::{OpenDir, Pending, Stream};
use super::unlinked::is_unlinked;
use crate::error::{FsError, FsResult};
use crate::layout::Role;

/// One directory entry for a readdir reply.
#[derive(Debug)]
pub struct DirItem<'a> {
    pub name: &'a OsStr,
    /// Where the listing continues after this entry.
    pub offset: u64,
    pub kind: FileType,
    /// The backing inode number (plain readdir) or the node id (readdirplus).
    pub ino: u64,
    /// With readdirplus: the entry's attributes; the kernel now holds one reference.
    pub attr: Option<FileAttr>,
    /// With readdirplus: what the entry is in the layout.
    pub role: Option<Role>,
}

fn kind_of(t: rfs::FileType) -> FileType {
    match t {
        rfs::FileType::Directory => FileType::Directory,
        rfs::FileType::Symlink => FileType::Symlink,
        rfs::FileType::Fifo => FileType::NamedPipe,
        rfs::FileType::Socket => FileType::Socket,
        rfs::FileType::CharacterDevice => FileType::CharDevice,
        rfs::FileType::BlockDevice => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

impl StorageFs {
    /// Opens directory `id` for listing. One removed behind the kernel (through another
    /// node, while this kernel still names it) is ESTALE: the kernel walks the path again,
    /// asking for each name, and lists the directory made since, if any, not an empty
    /// one nobody can reach.
    pub fn opendir(&self, id: u64) -> FsResult<u64> {
        let inode = self.names.inode(id)?;
        let opath = self.names.fd_of(&inode)?;
        if is_unlinked(&*opath) {
            return Err(FsError::RemovedBehindKernel { path: inode.path() });
        }
        let fd = self
            .names
            .reopen(opath.as_fd(), OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(|e| FsError::backing("opendir", inode.path(), e))?;
        let dir = Dir::new(fd).map_err(|e| FsError::backing("opendir", inode.path(), e))?;
        Ok(self.handles.insert_dir(OpenDir {
            inode,
            stream: Mutex::new(Stream {
                dir,
                position: 0,
                pending: None,
            }),
        }))
    }

    pub fn releasedir(&self, fh: u64) -> FsResult<()> {
        self.handles.releasedir(fh)
    }

    pub fn fsyncdir(&self, fh: u64, datasync: bool) -> FsResult<()> {
        self.handles.fsyncdir(fh, datasync)
    }

    /// Lists entries from `offset` into `sink` until it reports full (returns true).
    /// With `plus`, each entry but `.` and `..` is looked up (one kernel reference each);
    /// an entry that cannot be looked up (gone meanwhile, or refused) is left out, as is
    /// one the policy hides.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        plus: bool,
        sink: &mut dyn FnMut(DirItem<'_>) -> bool,
    ) -> FsResult<()> {
        let dir = self.handles.dir(fh)?;
        let mut st = dir.stream.lock().unwrap_or_else(|e| e.into_inner());
        let offset = offset as i64;
        if offset != st.position {
            st.pending = None;
            if offset == 0 {
                st.dir.rewind();
            } else {
                st.dir
                    .seek(offset)
                    .map_err(|e| FsError::backing("seekdir", dir.inode.path(), e))?;
            }
            st.position = offset;
        }
        loop {
            let item = match st.pending.take() {
                Some(p) => p,
                None => match st.dir.read() {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(FsError::backing("readdir", dir.inode.path(), e)),
                    Some(Ok(e)) => Pending {
                        name: e.file_name().to_owned(),
                        offset: e.offset(),
                        kind: kind_of(e.file_type()),
                        ino: e.ino(),
                    },
                },
            };
            let name = OsStr::from_bytes(item.name.as_bytes());
            let dots = name == "." || name == "..";
            // A name the policy hides is left out (with `plus`, its lookup refuses it).
            if !plus && !dots && self.admit_name(&dir.inode, name).is_err() {
                st.position = item.offset;
                continue;
            }
            let mut looked_up = None;
            let (ino, kind, attr, role) = if plus && !dots {
                match self.lookup_listed(&dir.inode, name) {
                    Ok(entry) => {
                        looked_up = Some(entry.attr.ino.0);
                        (
                            entry.attr.ino.0,
                            entry.attr.kind,
                            Some(entry.attr),
                            Some(entry.role),
                        )
                    }
                    Err(_) => {
                        st.position = item.offset;
                        continue;
                    }
                }
            } else {
                (item.ino, item.kind, None, None)
            };
            let full = sink(DirItem {
                name,
                offset: item.offset as u64,
                kind,
                ino,
                attr,
                role,
            });
            if full {
                // Not sent: give the reference back and keep the entry for next time.
                if let Some(id) = looked_up {
                    self.forget(id, 1);
                }
                st.pending = Some(item);
                return Ok(());
            }
            st.position = item.offset;
        }
    }
}

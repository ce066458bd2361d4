//! Link files that would name a blob whose data is gone are refused.
//!
//! A registry with a blob-descriptor cache (`inmemory`, `redis`) may still believe a blob
//! exists after GC deleted it: a push then skips the upload and writes links to nothing,
//! and reports success for an image that cannot be pulled. Refusing the link write makes
//! the registry answer 500, so the push fails loudly instead. Only write-capable opens,
//! creates and renames onto a link file pay for the check; reads never do.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::OFlags;

use super::core::StorageFs;
use super::inode::Inode;
use crate::error::{FsError, FsResult};
use crate::layout::paths::{self, LinkRole};
use crate::layout::{Digest, Role, Store, parse_link};
use crate::manifest;

/// A link is at most this long (71 bytes); one more tells a longer file apart.
const LINK_READ_LIMIT: usize = 72;

/// Checks links against the blobs in the backing store.
#[derive(Debug)]
pub(super) struct LinkCheck {
    store: Store,
}

impl LinkCheck {
    pub(super) fn new(root: OwnedFd, shown: &Path) -> Self {
        LinkCheck {
            store: Store::from_fd(root, shown),
        }
    }

    /// A file of role `role`, at `rel` (from the store root, for messages), about to be
    /// opened for writing, created or renamed onto. Refuses a link whose path names a
    /// blob without data; returns the link's role, if it is one.
    pub(super) fn admit(&self, role: Role, rel: &str) -> FsResult<Option<LinkRole>> {
        let Some(role) = role.link() else {
            return Ok(None);
        };
        if let Some(d) = role.digest() {
            self.check(rel, role, &d)?;
        }
        Ok(Some(role))
    }

    /// Bytes about to land in the tag current link `rel`. Anything that is not a
    /// well-formed link is let through: only a proven missing blob is refused.
    pub(super) fn admit_content(&self, rel: &str, bytes: &[u8]) -> FsResult<()> {
        match parse_link(bytes) {
            Ok(d) => self.check(rel, LinkRole::TagCurrent, &d),
            Err(_) => Ok(()),
        }
    }

    fn check(&self, rel: &str, role: LinkRole, d: &Digest) -> FsResult<()> {
        if !self.has_data(d) {
            return Err(refuse(rel, d, d));
        }
        if let LinkRole::Revision(_) = role {
            self.check_references(rel, d)?;
        }
        Ok(())
    }

    /// Whether blob `d` has its data file. Anything but "not there" counts as there: only
    /// a blob proven missing is refused.
    fn has_data(&self, d: &Digest) -> bool {
        match self.store.stat(&paths::blob_data(d)) {
            Ok(None) => false,
            Ok(Some(st)) => rustix::fs::FileType::from_raw_mode(st.st_mode).is_file(),
            Err(_) => true,
        }
    }

    /// A revision link: the manifest's own references must have their data too. A second
    /// image sharing a collected layer gets its (new) manifest written while its layer
    /// upload was skipped on a stale cache: only this check sees that. Foreign layers
    /// (with `urls`) need not be stored; a manifest regfs cannot read or parse is let
    /// through (the collector deals with it and nothing is proven missing).
    fn check_references(&self, rel: &str, d: &Digest) -> FsResult<()> {
        let bytes = match self
            .store
            .read(&paths::blob_data(d), manifest::MAX_MANIFEST_SIZE)
        {
            Ok(Some(b)) => b,
            _ => return Ok(()),
        };
        let Ok(m) = manifest::parse(&bytes, d) else {
            return Ok(());
        };
        let needed = m.blobs.iter().filter(|b| !m.foreign.contains(b));
        match needed.chain(&m.children).find(|r| !self.has_data(r)) {
            Some(missing) => Err(refuse(rel, d, missing)),
            None => Ok(()),
        }
    }
}

fn refuse(link: &str, digest: &Digest, missing: &Digest) -> FsError {
    tracing::error!(link, %digest, %missing,
        "refused a link naming a blob without data: the registry's blob cache still lists a deleted blob, this push fails");
    FsError::DanglingLink {
        link: link.to_owned(),
        digest: *digest,
        missing: *missing,
    }
}

/// Reads at most a link's length from `fd`, opened read-only afresh.
fn read_small(fs: &StorageFs, fd: BorrowedFd<'_>) -> Vec<u8> {
    let Ok(file) = fs.reopen(fd, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY) else {
        return Vec::new();
    };
    let mut buf = vec![0u8; LINK_READ_LIMIT];
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(&file, &mut buf[done..], done as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => done += n,
        }
    }
    buf.truncate(done);
    buf
}

impl StorageFs {
    /// A rename of `name` in `parent` onto `new_name` in `new_parent` (registry 3.x writes
    /// `<link>.<uuid>.tmp` and renames it over the link).
    pub(super) fn admit_link_rename(
        &self,
        parent: &Inode,
        name: &std::ffi::OsStr,
        new_parent: &Inode,
        new_name: &std::ffi::OsStr,
    ) -> FsResult<()> {
        let role = new_parent.role().child(new_name);
        if role.link().is_none() {
            return Ok(());
        }
        let rel = new_parent.child_path(new_name);
        if self.links.admit(role, &rel)? != Some(LinkRole::TagCurrent) {
            return Ok(());
        }
        let Ok(src) = rustix::fs::openat(
            &*self.fd_of(parent)?,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) else {
            return Ok(());
        };
        let bytes = read_small(self, src.as_fd());
        self.links.admit_content(&rel, &bytes)
    }
}

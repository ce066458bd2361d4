//! Link files that would name a blob whose data is gone are refused: a policy layered
//! over another one (the gate), as virtiofsd's read-only layer wraps its passthrough.
//! So are tag links naming a manifest whose revision the repository does not hold.
//!
//! A registry with a blob-descriptor cache (`inmemory`, `redis`) may still believe a blob
//! exists after GC deleted it: a push then skips the upload and writes links to nothing,
//! and reports success for an image that cannot be pulled. Refusing the link write makes
//! the registry answer 500, so the push fails loudly instead. Only write-capable opens,
//! creates and renames onto a link file pay for the check; reads never do.
//!
//! Every request of the registry that makes something live writes it in an order: data
//! before the link naming it (a blob commit, then its `_layers` link), a manifest's
//! references and its blob before its revision link, the revision link before the tag's
//! index link and current link. A GC run (read-only or online) may fall between any two
//! of those writes and remove what the first made, since nothing yet names it: the later
//! write is then refused here, by checking at its moment that what it names is still in
//! the store. Within a run, the online barrier (which this layer wraps) orders the check
//! against the sweep; between runs nothing deletes.
//!
//! The layer asks the policy it wraps first (a closed gate answers EROFS before a link
//! is looked at), then checks; what it refuses it refuses whatever the inner one said.

use std::sync::Arc;

use super::meaning::WriteMeaning;
use super::{
    Change, ChangeLease, HeldChange, HeldWriter, Name, StorePolicy, Write, WriteLease, WriteRole,
    WriteUndo, Writer, WriterLease,
};
use crate::error::{FsError, FsResult};
use crate::layout::paths::{self, LinkRole};
use crate::layout::{Digest, PathKind, Store, path_for};

/// Refuses link writes naming blobs without data, over the policy `P`.
#[derive(Debug)]
pub struct LinkRefusal<P> {
    check: Arc<LinkCheck>,
    inner: P,
}

impl<P: StorePolicy> LinkRefusal<P> {
    /// `store`: the backing store, opened before anything was mounted over it.
    pub fn new(store: Store, inner: P) -> Self {
        LinkRefusal {
            check: Arc::new(LinkCheck { store }),
            inner,
        }
    }
}

impl<P: StorePolicy> StorePolicy for LinkRefusal<P> {
    fn admit_change(&self, change: &Change<'_>) -> FsResult<ChangeLease> {
        let lease = self.inner.admit_change(change)?;
        match *change {
            // Checked before anything is created, so a refused link leaves no empty file.
            Change::Create {
                meaning,
                writes: true,
            } => self.check.admit(meaning)?,
            // Registry 3.x writes `<link>.<uuid>.tmp` and renames it over the link: a tag's
            // current link is checked by what the source holds.
            Change::Rename { to, .. } => self.check.admit(to)?,
            _ => {}
        }
        Ok(ChangeLease::held(CheckedChange {
            check: self.check.clone(),
            inner: lease,
        }))
    }

    fn admit_writer(&self, writer: Writer<'_>) -> FsResult<WriterLease> {
        let lease = self.inner.admit_writer(writer.clone())?;
        self.check.admit(writer.meaning)?;
        Ok(self.check.wrap(&writer, lease))
    }

    fn is_visible(&self, name: &Name<'_>) -> bool {
        self.inner.is_visible(name)
    }

    fn check_write_access(&self, path: &str) -> FsResult<()> {
        self.inner.check_write_access(path)
    }

    fn note_read(&self, read: super::LinkRead, path: &dyn Fn() -> String) {
        self.inner.note_read(read, path)
    }
}

/// Checks links against the blobs in the backing store.
#[derive(Debug)]
struct LinkCheck {
    store: Store,
}

impl LinkCheck {
    /// A file about to be opened for writing, created, renamed onto or written at its
    /// start: a link whose digest (by its path, or by its bytes for a tag's current link)
    /// names a blob without data is refused. What does not name a digest is let through.
    fn admit(&self, m: &WriteMeaning) -> FsResult<()> {
        match (m.link(), m.named(&self.store)) {
            (Some(role), Some(d)) => self.check(m, role, &d),
            _ => Ok(()),
        }
    }

    fn check(&self, m: &WriteMeaning, role: LinkRole, d: &Digest) -> FsResult<()> {
        let rel = m.path();
        if !self.has_data(d) {
            return Err(refuse(rel, d, d));
        }
        match role {
            LinkRole::Revision(_) => self.check_references(m, d),
            LinkRole::TagIndex(_) | LinkRole::TagCurrent => self.check_revision(m, d),
            LinkRole::Layer(_) => Ok(()),
        }
    }

    /// The link `rel` (a tag's, or an index's revision) names manifest `d`: its repository
    /// must hold `d`'s revision. Anything but "not there" counts as there.
    fn check_revision(&self, m: &WriteMeaning, d: &Digest) -> FsResult<()> {
        let rel = m.path();
        let Some(repo) = m.repo().cloned() else {
            return Ok(());
        };
        let revision = path_for(&PathKind::RevisionLink { repo, digest: *d });
        match self.store.stat(&revision) {
            Ok(None) => {
                tracing::error!(link = rel, digest = %d,
                    "refused a link naming a manifest the repository holds no revision of: it was removed after the push wrote it; this push fails and the client retries");
                Err(FsError::ManifestWithoutRevision {
                    link: rel.to_owned(),
                    digest: *d,
                })
            }
            _ => Ok(()),
        }
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

    /// A revision link: the manifest's own references must have their data too, and an
    /// index's children their revisions. A second
    /// image sharing a collected layer gets its (new) manifest written while its layer
    /// upload was skipped on a stale cache: only this check sees that. Foreign layers
    /// (with `urls`) need not be stored; a manifest regfs cannot read or parse is let
    /// through (the collector deals with it and nothing is proven missing).
    fn check_references(&self, meaning: &WriteMeaning, d: &Digest) -> FsResult<()> {
        let named = match meaning.manifest(&self.store) {
            Some(n) if n.verified => n,
            _ => return Ok(()),
        };
        let m = &named.manifest;
        let needed = m.blobs.iter().filter(|b| !m.foreign.contains(b));
        if let Some(missing) = needed.chain(&m.children).find(|r| !self.has_data(r)) {
            return Err(refuse(meaning.path(), d, missing));
        }
        // An index's children are manifests of the same repository.
        m.children
            .iter()
            .try_for_each(|c| self.check_revision(meaning, c))
    }

    /// The writer's lease, checking its writes too when it writes a tag's current link
    /// (whose digest is only in the bytes written).
    fn wrap(self: &Arc<Self>, writer: &Writer<'_>, inner: WriterLease) -> WriterLease {
        if writer.role() != WriteRole::Link(LinkRole::TagCurrent) {
            return inner;
        }
        WriterLease::held(CheckedWriter {
            check: self.clone(),
            meaning: writer.meaning.clone(),
            undo: writer.undo.clone(),
            inner,
        })
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

/// A change the layer admitted; a create's writer gets the layer's lease too.
#[derive(Debug)]
struct CheckedChange {
    check: Arc<LinkCheck>,
    inner: ChangeLease,
}

impl HeldChange for CheckedChange {
    fn admit_writer(&self, writer: Writer<'_>) -> WriterLease {
        let inner = self.inner.admit_writer(writer.clone());
        self.check.wrap(&writer, inner)
    }
}

/// A writer of a tag's current link: each write at its start is checked.
#[derive(Debug)]
struct CheckedWriter {
    check: Arc<LinkCheck>,
    meaning: WriteMeaning,
    undo: Option<Arc<dyn WriteUndo>>,
    inner: WriterLease,
}

impl HeldWriter for CheckedWriter {
    fn admit_write(&self, write: &Write<'_>) -> FsResult<WriteLease> {
        let lease = self.inner.admit_write(write)?;
        if let Write::Bytes { offset: 0, data } = write
            && let Err(refused) = self.check.admit(&self.meaning.written(data))
        {
            // The registry truncated the link first: it gets its old bytes back (or, if
            // this handle created it, goes).
            if let Some(u) = &self.undo {
                u.undo_refused_write();
            }
            return Err(refused);
        }
        Ok(lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::gate::WriteGate;
    use std::time::Duration;

    const HEX: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const REPO: &str = "docker/registry/v2/repositories/app";

    fn layered() -> (tempfile::TempDir, WriteGate, LinkRefusal<WriteGate>) {
        let dir = tempfile::tempdir().unwrap();
        let gate = WriteGate::new();
        let store = Store::open(dir.path()).unwrap();
        (dir, gate.clone(), LinkRefusal::new(store, gate))
    }

    fn errno<T: std::fmt::Debug>(r: FsResult<T>) -> i32 {
        r.unwrap_err().errno()
    }

    #[test]
    fn a_link_to_a_blob_without_data_is_refused_after_the_inner_policy_is_asked() {
        let (dir, gate, policy) = layered();
        let layer = format!("{REPO}/_layers/sha256/{HEX}/link");
        let meaning = WriteMeaning::of_path(&layer);
        let writer = Writer {
            meaning: &meaning,
            undo: None,
        };
        assert_eq!(errno(policy.admit_writer(writer.clone())), libc::EIO);
        let create = Change::Create {
            meaning: &meaning,
            writes: true,
        };
        assert_eq!(errno(policy.admit_change(&create)), libc::EIO);
        // A closed gate answers first.
        gate.close_for_writes(Duration::from_millis(10));
        assert_eq!(errno(policy.admit_writer(writer.clone())), libc::EROFS);
        gate.reopen_for_writes();
        // With the blob's data there, the same link goes through.
        let blob = dir
            .path()
            .join(paths::blob_data(&Digest::from_hex(HEX).unwrap()));
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, b"x").unwrap();
        assert!(policy.admit_writer(writer).is_ok());
        assert!(policy.admit_change(&create).is_ok());
    }

    #[test]
    fn a_tag_link_is_checked_by_the_bytes_written_or_renamed_onto_it() {
        let (dir, _gate, policy) = layered();
        let current = format!("{REPO}/_manifests/tags/t/current/link");
        let tmp = format!("{current}.1.tmp");
        let dangling = format!("sha256:{HEX}");
        std::fs::create_dir_all(dir.path().join(&current).parent().unwrap()).unwrap();
        std::fs::write(dir.path().join(&tmp), &dangling).unwrap();
        let renamed = WriteMeaning::renamed(&tmp, &current);
        let rename = Change::Rename {
            from: &tmp,
            to: &renamed,
        };
        assert_eq!(errno(policy.admit_change(&rename)), libc::EIO);
        let meaning = WriteMeaning::of_path(&current);
        let writer = Writer {
            meaning: &meaning,
            undo: None,
        };
        let lease = policy.admit_writer(writer).unwrap();
        let at = |offset| Write::Bytes {
            offset,
            data: dangling.as_bytes(),
        };
        assert_eq!(errno(lease.admit_write(&at(0))), libc::EIO);
        // Not a link's start, or not a link at all: let through.
        assert!(lease.admit_write(&at(3)).is_ok());
        std::fs::write(dir.path().join(&tmp), b"not a link").unwrap();
        let renamed = WriteMeaning::renamed(&tmp, &current);
        let rename = Change::Rename {
            from: &tmp,
            to: &renamed,
        };
        assert!(policy.admit_change(&rename).is_ok());
    }
}

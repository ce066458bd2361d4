//! Decisions about the passthrough, apart from its mechanism.
//!
//! The filesystem core (`fs`) knows how to resolve names, open, read, write, rename and
//! delete; it does not know why a request may or may not go ahead. It asks a
//! [`StorePolicy`] at one place per kind of operation:
//!
//! - a namespace or attribute change (create, mkdir, unlink, rmdir, rename, setattr):
//!   [`StorePolicy::admit_change`], which hands back a [`ChangeLease`] held while the
//!   change runs;
//! - a handle that can write (an open for writing, a create):
//!   [`StorePolicy::admit_writer`], which hands back a [`WriterLease`] the open handle
//!   keeps until it is released; each write or truncate on it asks the lease
//!   ([`WriterLease::admit_write`]) for a [`WriteLease`] held while it runs;
//! - whether a name is shown at all (lookup, listing): [`StorePolicy::is_visible`];
//! - access(2) asking for write permission: [`StorePolicy::check_write_access`];
//! - a link file opened for reading: [`StorePolicy::note_read`].
//!
//! Every lease gives itself back when dropped: no token is returned by hand. The write
//! gate of GC epochs ([`gate::WriteGate`]) is one policy; the online barrier and a gate
//! shared by several nodes are the next ones. As in virtiofsd's read-only layer around
//! its passthrough, a policy may wrap another one and refuse more.

pub mod access;
pub mod gate;
pub mod links;
pub mod meaning;
pub mod online;

pub use meaning::WriteMeaning;

use std::ffi::OsStr;
use std::fmt;
use std::sync::Arc;

use crate::error::FsResult;
use crate::layout::Role;
use crate::layout::paths::LinkRole;

/// What a file opened for writing is to the registry, which decides how policies treat
/// its writer. Told from the layout's role of the file, in [`WriteRole::of_role`] only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteRole {
    /// `_uploads/<id>/data`: the bytes of a blob being pushed. Nothing but its own
    /// commit (a rename into `blobs/`, then link writes) depends on it.
    UploadData,
    /// Any other file under `_uploads` (`startedat`, hash states).
    UploadOther,
    /// A link file of the registry's layout.
    Link(LinkRole),
    /// Anything else (a manifest or blob written in place, a file regfs does not know).
    Other,
}

impl WriteRole {
    /// What a node of this layout role is to a writer (the inode's role, from lookup).
    pub fn of_role(role: Role) -> Self {
        if let Some(link) = role.link() {
            return WriteRole::Link(link);
        }
        match role {
            Role::UploadData => WriteRole::UploadData,
            r if r.is_upload() => WriteRole::UploadOther,
            _ => WriteRole::Other,
        }
    }

    /// Classifies a path relative to the store root.
    pub fn of_path(path: &str) -> Self {
        Self::of_role(Role::of_path(path))
    }
}

/// A namespace or attribute change the core is about to make; paths are relative to the
/// store root. What makes something live (a create, a rename's target) comes with its
/// [`WriteMeaning`], worked out once for every layer.
#[derive(Clone, Copy)]
pub enum Change<'a> {
    /// create(2) with O_CREAT; `writes`: the new handle can write.
    Create {
        meaning: &'a WriteMeaning,
        writes: bool,
    },
    Mkdir {
        path: &'a str,
    },
    /// unlink or rmdir.
    Remove {
        path: &'a str,
    },
    /// `to` carries the path renamed onto and what lands there.
    Rename {
        from: &'a str,
        to: &'a WriteMeaning,
    },
    /// chmod, chown, utimens, or truncate by path.
    SetAttr {
        path: &'a str,
    },
}

impl Change<'_> {
    /// The path the change acts on (for a rename, the one that moves).
    pub fn path(&self) -> &str {
        match self {
            Change::Create { meaning, .. } => meaning.path(),
            Change::Mkdir { path } | Change::Remove { path } | Change::SetAttr { path } => path,
            Change::Rename { from, .. } => from,
        }
    }
}

impl fmt::Debug for Change<'_> {
    /// Paths only: `Create { path: "a", writes: true }`, `Rename { from: "a", to: "b" }`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Create { meaning, writes } => f
                .debug_struct("Create")
                .field("path", &meaning.path())
                .field("writes", writes)
                .finish(),
            Change::Mkdir { path } => f.debug_struct("Mkdir").field("path", path).finish(),
            Change::Remove { path } => f.debug_struct("Remove").field("path", path).finish(),
            Change::Rename { from, to } => f
                .debug_struct("Rename")
                .field("from", from)
                .field("to", &to.path())
                .finish(),
            Change::SetAttr { path } => f.debug_struct("SetAttr").field("path", path).finish(),
        }
    }
}

/// Undoes what a write handle changed. The core gives one to the policy with each writer
/// on a link file (it keeps the link's bytes from before the handle's first change);
/// the policy calls it when it takes the handle's right to write away mid-way.
pub trait WriteUndo: Send + Sync + fmt::Debug {
    /// The handle was cut (it may write no more) after its last admitted write ended:
    /// puts the file back if it is left half written. Says what it did, or `None`.
    fn repair_cut(&self) -> Option<String>;
    /// A write of the handle was refused: undoes the handle's earlier changes (a
    /// truncate before the refused write).
    fn undo_refused_write(&self);
    /// The handle was cut, [`Self::repair_cut`] to follow: called at once, under the
    /// policy's lock, so it must not block. Lets the core repair the file when the
    /// handle closes first (close(2) then returns with the file repaired).
    fn mark_cut(&self) {}
}

/// A handle that is about to be able to write.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    /// The file and what writing it means.
    pub meaning: &'a WriteMeaning,
    pub undo: Option<Arc<dyn WriteUndo>>,
}

impl Writer<'_> {
    /// The file, relative to the store root.
    pub fn path(&self) -> &str {
        self.meaning.path()
    }

    pub fn role(&self) -> WriteRole {
        self.meaning.write_role()
    }
}

/// One write or truncate on a handle.
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    Bytes { offset: u64, data: &'a [u8] },
    Truncate { size: u64 },
}

/// A name about to be shown to the kernel (a lookup, a listed entry). Its path is built
/// only if a policy asks: lookups are the hottest requests of a pull.
pub struct Name<'a> {
    pub name: &'a OsStr,
    path: &'a dyn Fn() -> String,
}

impl<'a> Name<'a> {
    pub fn new(name: &'a OsStr, path: &'a dyn Fn() -> String) -> Self {
        Name { name, path }
    }

    /// The path relative to the store root.
    pub fn path(&self) -> String {
        (self.path)()
    }
}

impl fmt::Debug for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Name").field("name", &self.name).finish()
    }
}

/// A link file opened for reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkRead {
    /// Which link it is (told from its inode's role, without building its path).
    pub link: LinkRole,
    /// Its inode number: one file for the daemon's life (numbers are never reused), so a
    /// policy may remember what it learnt from the path.
    pub node: u64,
}

/// The decisions the filesystem core asks for. Every method is required, so a layer
/// wrapping another policy cannot forget to ask it.
pub trait StorePolicy: Send + Sync + fmt::Debug {
    /// May this change go ahead? The change counts as in flight until the lease drops.
    fn admit_change(&self, change: &Change<'_>) -> FsResult<ChangeLease>;
    /// May a handle write? The lease lives as long as the open handle.
    fn admit_writer(&self, writer: Writer<'_>) -> FsResult<WriterLease>;
    /// Is this name shown? A hidden name looks like a missing one.
    fn is_visible(&self, name: &Name<'_>) -> bool;
    /// access(2) with W_OK on `path`: would a writer be admitted now?
    fn check_write_access(&self, path: &str) -> FsResult<()>;
    /// A link file opened for reading: the registry is about to serve what it names.
    /// Nothing is refused; a policy may take note. `path` builds the file's path (relative
    /// to the store root) only if a policy asks: every pull opens links.
    fn note_read(&self, read: LinkRead, path: &dyn Fn() -> String);
}

/// The policy that admits everything and shows every name: the filesystem as a plain
/// passthrough (tests of the core's mechanism that no policy takes part in).
#[derive(Debug, Clone, Copy, Default)]
pub struct AdmitAll;

impl StorePolicy for AdmitAll {
    fn admit_change(&self, _change: &Change<'_>) -> FsResult<ChangeLease> {
        Ok(ChangeLease::free())
    }

    fn admit_writer(&self, _writer: Writer<'_>) -> FsResult<WriterLease> {
        Ok(WriterLease::free())
    }

    fn is_visible(&self, _name: &Name<'_>) -> bool {
        true
    }

    fn check_write_access(&self, _path: &str) -> FsResult<()> {
        Ok(())
    }

    fn note_read(&self, _read: LinkRead, _path: &dyn Fn() -> String) {}
}

/// What a policy keeps for a change in flight (dropped when the change ends).
pub trait HeldChange: Send + fmt::Debug {
    /// The writer a create opens under this change. Admitted whatever the policy decided
    /// since the change was: the create was let in, so is the handle it makes.
    fn admit_writer(&self, writer: Writer<'_>) -> WriterLease;
}

/// What a policy keeps for a handle that can write (dropped at release).
pub trait HeldWriter: Send + Sync + fmt::Debug {
    /// May this write (or truncate) go ahead? In flight until the lease drops.
    fn admit_write(&self, write: &Write<'_>) -> FsResult<WriteLease>;
}

/// A change in flight.
#[derive(Debug)]
#[must_use = "the change is in flight only while its lease is held"]
pub struct ChangeLease(Option<Box<dyn HeldChange>>);

impl ChangeLease {
    /// A lease that holds nothing (a policy with nothing to count).
    pub fn free() -> Self {
        ChangeLease(None)
    }

    pub fn held(h: impl HeldChange + 'static) -> Self {
        ChangeLease(Some(Box::new(h)))
    }

    /// The writer a create opens under this change (see [`HeldChange::admit_writer`]).
    pub fn admit_writer(&self, writer: Writer<'_>) -> WriterLease {
        match &self.0 {
            Some(h) => h.admit_writer(writer),
            None => WriterLease::free(),
        }
    }
}

/// A handle's right to write, kept with the open handle.
#[derive(Debug)]
#[must_use = "the writer is released when its lease drops"]
pub struct WriterLease(Option<Box<dyn HeldWriter>>);

impl WriterLease {
    /// A lease that admits every write and holds nothing.
    pub fn free() -> Self {
        WriterLease(None)
    }

    pub fn held(h: impl HeldWriter + 'static) -> Self {
        WriterLease(Some(Box::new(h)))
    }

    pub fn admit_write(&self, write: &Write<'_>) -> FsResult<WriteLease> {
        match &self.0 {
            Some(h) => h.admit_write(write),
            None => Ok(WriteLease::free()),
        }
    }
}

/// A write in flight.
#[must_use = "the write is in flight only while its lease is held"]
pub struct WriteLease(Option<Box<dyn Send>>);

impl WriteLease {
    pub fn free() -> Self {
        WriteLease(None)
    }

    /// Holds `h` (whose drop ends the write) while the write runs.
    pub fn held(h: impl Send + 'static) -> Self {
        WriteLease(Some(Box::new(h)))
    }
}

impl fmt::Debug for WriteLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "WriteLease(held)"
        } else {
            "WriteLease(free)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_roles_are_told_by_path() {
        let v2 = "docker/registry/v2/repositories/team/app";
        assert_eq!(
            WriteRole::of_path(&format!("{v2}/_uploads/u1/data")),
            WriteRole::UploadData
        );
        // Outside the layout, below `_uploads`: an upload's file, but not known as its data.
        assert_eq!(
            WriteRole::of_path("repo/_uploads/u1/data"),
            WriteRole::UploadOther
        );
        for other in ["startedat", "hashstates/sha256/0", "data/x"] {
            assert_eq!(
                WriteRole::of_path(&format!("{v2}/_uploads/u1/{other}")),
                WriteRole::UploadOther,
                "{other}"
            );
        }
        assert!(matches!(
            WriteRole::of_path(&format!("{v2}/_manifests/tags/t/current/link")),
            WriteRole::Link(LinkRole::TagCurrent)
        ));
        for other in ["x/not_uploads/u/data", "blob", "_uploads_x/u/data"] {
            assert_eq!(WriteRole::of_path(other), WriteRole::Other, "{other}");
        }
    }
}

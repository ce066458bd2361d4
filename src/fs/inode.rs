//! Inodes: one O_PATH handle per backing file or directory, keyed by (st_dev, st_ino),
//! with the kernel's lookup count. Node ids are handed out from a counter and never
//! reused, so a recycled backing inode number can never alias a node the kernel still
//! holds (our O_PATH handle pins the backing inode anyway).
//!
//! An inode answered in a directory listing (readdirplus) is kept by name only: parent,
//! name and what one fstatat saw. It is opened on first use, and only if the file under
//! that name is still the one listed (see [`Inode::fd`]). A walk that only stats the
//! listed files never pays for opening them.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use fuser::BackingId;
use rustix::fs::{self as rfs, Mode, OFlags, Stat};

use super::durability::Durability;
use super::inode_fds::{FdCache, FileHandle, InodeFd};
use crate::layout::Role;

pub const ROOT_ID: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub dev: u64,
    pub ino: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Directory,
}

/// What identifies a file found in the store, from one stat. The change time tells a
/// listed file from a newer one that reuses its inode number (unlink, then create):
/// that can only happen with a change of ctime, which also changes on any write or
/// rename, so a by-name inode whose file changed is refused rather than guessed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub key: InodeKey,
    pub kind: Kind,
    ctime: (i64, u64),
}

impl Found {
    pub fn new(st: &Stat, kind: Kind) -> Found {
        Found {
            key: InodeKey {
                dev: st.st_dev,
                ino: st.st_ino,
            },
            kind,
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

fn stale() -> io::Error {
    io::Error::from_raw_os_error(libc::ESTALE)
}

/// Where an inode was last seen: its parent and its name there, and what that makes it
/// in the registry's layout. Used to name paths in logs and to classify writers; the
/// handle, not the path, is what operations use.
#[derive(Debug)]
struct Place {
    parent: Option<Arc<Inode>>,
    name: OsString,
    role: Placed,
}

/// A role as computed from the parent's role and the name, and the count of directory
/// moves it was computed at: a directory moved since may have changed it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Placed {
    role: Role,
    moves_seen: u64,
}

/// How many directories changed place: a role computed before the last one may be
/// stale (a file below a moved directory is elsewhere in the layout now). The registry
/// renames files only, so this almost never moves and roles are computed once.
#[derive(Debug, Default)]
struct DirMoves(AtomicU64);

impl DirMoves {
    fn now(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    fn one_more(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
pub struct Inode {
    pub id: u64,
    pub key: InodeKey,
    pub kind: Kind,
    /// As first found: what an unresolved inode must still be when it is opened.
    found: Found,
    fd: Arc<InodeFd>,
    place: Mutex<Place>,
    /// The table's count of directory moves.
    dir_moves: Arc<DirMoves>,
    /// Kernel passthrough: one backing id per inode, shared by its read-only opens and
    /// dropped with the last of them.
    pub backing: Mutex<Weak<BackingId>>,
    /// Whether the file changed since its last fsync.
    pub durability: Durability,
}

impl Inode {
    /// An O_PATH descriptor of this inode (reopened from its file handle if needed, or
    /// by name if it was never opened).
    pub fn fd(&self) -> io::Result<Arc<OwnedFd>> {
        match self.fd.get()? {
            Some(fd) => Ok(fd),
            None => self.resolve(),
        }
    }

    /// Opens an inode known by name only: one component from its parent, never
    /// following a link, and only if the file found is the one listed (device, inode
    /// number, type, ctime). Otherwise ESTALE: the file under this node is gone, and the
    /// kernel answers ESTALE on open or stat by looking the name up again.
    fn resolve(&self) -> io::Result<Arc<OwnedFd>> {
        let (parent, name) = self.parent_and_name();
        let parent = parent.ok_or_else(stale)?;
        let dir = parent.fd()?;
        let fd = match rfs::openat(
            &*dir,
            &name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Err(stale()),
            Err(e) => return Err(e.into()),
        };
        let st = rfs::fstat(&fd)?;
        if kind_of(&st).map(|k| Found::new(&st, k)) != Some(self.found) {
            tracing::debug!(path = %self.path(), "listed file changed before first use");
            return Err(stale());
        }
        let handle = self.fd.handle_of(&fd);
        Ok(self.fd.install(fd, handle, true))
    }

    /// Path relative to the store root, `/`-separated, for logs and classification.
    pub fn path(&self) -> String {
        let mut parts: Vec<OsString> = Vec::new();
        let (mut parent, name) = self.parent_and_name();
        if parent.is_some() {
            parts.push(name);
        }
        while let Some(p) = parent {
            let (up, name) = p.parent_and_name();
            if up.is_some() {
                parts.push(name);
            }
            parent = up;
        }
        let mut out = String::new();
        for part in parts.iter().rev() {
            if !out.is_empty() {
                out.push('/');
            }
            out.push_str(&String::from_utf8_lossy(part.as_bytes()));
        }
        out
    }

    /// What this node is in the registry's layout, from its parent's role and its name
    /// when it was looked up (recomputed only after a directory moved).
    pub fn role(&self) -> Role {
        let now = self.dir_moves.now();
        let (parent, name) = {
            let place = self.place.lock().unwrap_or_else(|e| e.into_inner());
            if place.role.moves_seen == now {
                return place.role.role;
            }
            (place.parent.clone(), place.name.clone())
        };
        let role = match &parent {
            Some(p) => p.role().child(&name),
            None => Role::StoreRoot,
        };
        let mut place = self.place.lock().unwrap_or_else(|e| e.into_inner());
        let unmoved = place.name == name
            && match (&place.parent, &parent) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (a, b) => a.is_none() && b.is_none(),
            };
        if unmoved && place.role.moves_seen < now {
            place.role = Placed {
                role,
                moves_seen: now,
            };
        }
        role
    }

    /// The role of `name` in the directory `parent`.
    pub(super) fn placed_child(parent: &Inode, name: &OsStr) -> Placed {
        let moves_seen = parent.dir_moves.now();
        Placed {
            role: parent.role().child(name),
            moves_seen,
        }
    }

    pub(super) fn parent_and_name(&self) -> (Option<Arc<Inode>>, OsString) {
        let place = self.place.lock().unwrap_or_else(|e| e.into_inner());
        (place.parent.clone(), place.name.clone())
    }

    /// Path of `name` inside this directory.
    pub fn child_path(&self, name: &OsStr) -> String {
        let base = self.path();
        let name = String::from_utf8_lossy(name.as_bytes());
        if base.is_empty() {
            name.into_owned()
        } else {
            format!("{base}/{name}")
        }
    }

    /// Records where the node was found now. A directory found elsewhere than before
    /// takes its subtree with it: the roles below it are recomputed on next use.
    fn set_place(&self, parent: &Arc<Inode>, name: &OsStr, role: Placed) {
        let mut place = self.place.lock().unwrap_or_else(|e| e.into_inner());
        place.role = role;
        let same = place.name == name
            && place
                .parent
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(p, parent));
        if same {
            return;
        }
        place.parent = Some(parent.clone());
        place.name = name.to_owned();
        drop(place);
        if self.kind == Kind::Directory {
            self.dir_moves.one_more();
        }
    }
}

fn kind_of(st: &Stat) -> Option<Kind> {
    match rfs::FileType::from_raw_mode(st.st_mode) {
        rfs::FileType::RegularFile => Some(Kind::File),
        rfs::FileType::Directory => Some(Kind::Directory),
        _ => None,
    }
}

/// Whether a known inode is the file just found under its key.
enum Same {
    Yes,
    No,
    /// Only a comparison of file handles can tell.
    NeedsHandle,
}

fn same_file(inode: &Inode, found: &Found) -> Same {
    if inode.id == ROOT_ID {
        return Same::Yes;
    }
    if inode.fd.handle().is_some() {
        return Same::NeedsHandle;
    }
    // A pinned descriptor keeps its inode number from being reused.
    if inode.fd.is_resolved() || inode.found == *found {
        Same::Yes
    } else {
        Same::No
    }
}

#[derive(Debug)]
struct Entry {
    inode: Arc<Inode>,
    nlookup: u64,
}

#[derive(Debug, Default)]
struct Tables {
    by_id: HashMap<u64, Entry>,
    by_key: HashMap<InodeKey, u64>,
    next_id: u64,
}

/// All inodes the kernel currently holds a reference to.
#[derive(Debug)]
pub struct InodeTable {
    tables: RwLock<Tables>,
    fds: Arc<FdCache>,
    /// The store's filesystem gives file handles: descriptors can be closed when unused.
    use_handles: bool,
    dir_moves: Arc<DirMoves>,
}

impl InodeTable {
    /// `fd_budget`: how many inode descriptors may stay open at once (when the
    /// filesystem gives file handles).
    /// `mount_fd`: the root opened for reading (open_by_handle_at refuses O_PATH ones).
    pub fn new(
        root_fd: OwnedFd,
        mount_fd: OwnedFd,
        root: Found,
        fd_budget: usize,
    ) -> io::Result<Self> {
        let use_handles = FileHandle::of(root_fd.as_fd()).is_ok();
        let fds = FdCache::new(mount_fd, use_handles, fd_budget);
        let dir_moves = Arc::new(DirMoves::default());
        let root = Arc::new(Inode {
            id: ROOT_ID,
            key: root.key,
            kind: Kind::Directory,
            found: root,
            // The root is pinned: it is the parent of everything.
            fd: InodeFd::new(root_fd, None, &fds, true),
            place: Mutex::new(Place {
                parent: None,
                name: OsString::new(),
                role: Placed {
                    role: Role::StoreRoot,
                    moves_seen: 0,
                },
            }),
            dir_moves: dir_moves.clone(),
            backing: Mutex::new(Weak::new()),
            durability: Durability::default(),
        });
        let mut tables = Tables {
            next_id: ROOT_ID + 1,
            ..Tables::default()
        };
        tables.by_key.insert(root.key, ROOT_ID);
        // The root is never forgotten: its count starts at one and stays above zero.
        tables.by_id.insert(
            ROOT_ID,
            Entry {
                inode: root,
                nlookup: 1,
            },
        );
        Ok(InodeTable {
            tables: RwLock::new(tables),
            fds,
            use_handles,
            dir_moves,
        })
    }

    /// Whether inodes are kept by file handle (descriptors bounded) or pinned.
    pub fn uses_handles(&self) -> bool {
        self.use_handles
    }

    /// Inode descriptors kept open at most (when inodes are kept by file handle).
    pub fn fd_budget(&self) -> usize {
        self.fds.budget()
    }

    /// Inode descriptors open now.
    pub fn open_fds(&self) -> usize {
        self.fds.open_count()
    }

    pub fn get(&self, id: u64) -> Option<Arc<Inode>> {
        let t = self.tables.read().unwrap_or_else(|e| e.into_inner());
        t.by_id.get(&id).map(|e| e.inode.clone())
    }

    pub fn root(&self) -> Arc<Inode> {
        self.get(ROOT_ID).expect("root inode is never forgotten")
    }

    pub fn id_of(&self, key: InodeKey) -> Option<u64> {
        let t = self.tables.read().unwrap_or_else(|e| e.into_inner());
        t.by_key.get(&key).copied()
    }

    /// Records one kernel lookup of the file `found` as `name` in `parent`, opened as
    /// `fd`. Takes ownership of `fd`; it is dropped when the inode was already open, or
    /// when `keep_fd` is false and the inode can be reopened from its file handle.
    pub fn remember(
        &self,
        parent: &Arc<Inode>,
        name: &OsStr,
        found: Found,
        fd: OwnedFd,
        keep_fd: bool,
    ) -> Arc<Inode> {
        let handle = if self.use_handles {
            FileHandle::of(fd.as_fd()).ok()
        } else {
            None
        };
        let role = Inode::placed_child(parent, name);
        let mut t = self.tables.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&id) = t.by_key.get(&found.key) {
            let entry = t.by_id.get_mut(&id).expect("by_key and by_id agree");
            // The same inode number with another handle is a new file that reuses the
            // number of one deleted while the kernel still holds it: a new node.
            let same = match same_file(&entry.inode, &found) {
                Same::Yes => true,
                Same::No => false,
                Same::NeedsHandle => handle.is_none() || entry.inode.fd.handle() == handle.as_ref(),
            };
            if same {
                entry.nlookup += 1;
                let inode = entry.inode.clone();
                drop(t);
                if inode.id != ROOT_ID {
                    inode.set_place(parent, name, role);
                    // A listed inode opened by this lookup: resolved now (no-op if it was).
                    inode.fd.install(fd, handle, keep_fd);
                }
                return inode;
            }
        }
        let fd = InodeFd::new(fd, handle, &self.fds, keep_fd);
        self.insert(&mut t, parent, name, found, fd, role)
    }

    /// Records one kernel lookup of the file `found` as `name` in `parent`, from a
    /// directory listing: nothing is opened (the inode is resolved on first use).
    /// `None` when the key belongs to an inode kept by file handle: only a lookup that
    /// opens the file can tell whether it is the same one.
    pub fn remember_listed(
        &self,
        parent: &Arc<Inode>,
        name: &OsStr,
        found: Found,
    ) -> Option<Arc<Inode>> {
        let role = Inode::placed_child(parent, name);
        let mut t = self.tables.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&id) = t.by_key.get(&found.key) {
            let entry = t.by_id.get_mut(&id).expect("by_key and by_id agree");
            match same_file(&entry.inode, &found) {
                Same::NeedsHandle => return None,
                Same::No => {}
                Same::Yes => {
                    entry.nlookup += 1;
                    let inode = entry.inode.clone();
                    drop(t);
                    if inode.id != ROOT_ID {
                        inode.set_place(parent, name, role);
                    }
                    return Some(inode);
                }
            }
        }
        let fd = InodeFd::unresolved(&self.fds);
        Some(self.insert(&mut t, parent, name, found, fd, role))
    }

    /// A new node for `found`, with one kernel reference.
    fn insert(
        &self,
        t: &mut Tables,
        parent: &Arc<Inode>,
        name: &OsStr,
        found: Found,
        fd: Arc<InodeFd>,
        role: Placed,
    ) -> Arc<Inode> {
        let id = t.next_id;
        t.next_id += 1;
        let inode = Arc::new(Inode {
            id,
            key: found.key,
            kind: found.kind,
            found,
            fd,
            place: Mutex::new(Place {
                parent: Some(parent.clone()),
                name: name.to_owned(),
                role,
            }),
            dir_moves: self.dir_moves.clone(),
            backing: Mutex::new(Weak::new()),
            durability: Durability::default(),
        });
        t.by_key.insert(found.key, id);
        t.by_id.insert(
            id,
            Entry {
                inode: inode.clone(),
                nlookup: 1,
            },
        );
        inode
    }

    /// Updates where a known inode lives after a rename.
    pub fn moved(&self, key: InodeKey, new_parent: &Arc<Inode>, new_name: &OsStr) {
        if let Some(inode) = self.id_of(key).and_then(|id| self.get(id))
            && inode.id != ROOT_ID
        {
            let role = Inode::placed_child(new_parent, new_name);
            inode.set_place(new_parent, new_name, role);
            // An fsync of a file after its rename makes the rename durable (ext4).
            inode.durability.changed();
        }
    }

    /// The kernel dropped `n` references. The inode (and its handle) goes with the last.
    pub fn forget(&self, id: u64, n: u64) {
        if id == ROOT_ID {
            return;
        }
        let mut t = self.tables.write().unwrap_or_else(|e| e.into_inner());
        let gone = match t.by_id.get_mut(&id) {
            Some(entry) => {
                entry.nlookup = entry.nlookup.saturating_sub(n);
                entry.nlookup == 0
            }
            None => false,
        };
        if gone && let Some(entry) = t.by_id.remove(&id) {
            // Only if the key still names this node (a newer file may have taken it).
            if t.by_key.get(&entry.inode.key) == Some(&id) {
                t.by_key.remove(&entry.inode.key);
            }
        }
    }

    /// Up to `n` (parent id, name) pairs the kernel may be asked to drop, files before
    /// directories (a dropped directory takes its cached subtree with it, which costs
    /// more lookups later). The root is never one of them.
    pub fn reclaim_candidates(&self, n: usize) -> Vec<(u64, OsString)> {
        let t = self.tables.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(n);
        for want in [Kind::File, Kind::Directory] {
            for entry in t.by_id.values() {
                if out.len() >= n {
                    return out;
                }
                if entry.inode.kind != want {
                    continue;
                }
                let (parent, name) = entry.inode.parent_and_name();
                if let Some(parent) = parent {
                    out.push((parent.id, name));
                }
            }
        }
        out
    }

    /// How many inodes are held: for tests and status.
    pub fn len(&self) -> usize {
        self.tables
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .len()
    }
}

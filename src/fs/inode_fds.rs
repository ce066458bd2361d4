//! Bounded open files for inodes. An inode is remembered by its kernel file handle
//! (name_to_handle_at), which holds no file descriptor; an O_PATH descriptor is opened
//! from it on demand (open_by_handle_at) and cached, and the least recently used cached
//! descriptors are closed when there are more than the budget. So a registry walking
//! millions of files never runs the daemon out of descriptors. On a filesystem without
//! file handles every inode keeps its descriptor (bounded only by the kernel forgetting).
//! An inode met in a directory listing has neither until first use ("unresolved"): the
//! inode table reopens it by name then (see `inode.rs`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// A kernel file handle: identifies one file (inode and generation) on its filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileHandle {
    handle_type: i32,
    bytes: Box<[u8]>,
}

#[repr(C)]
struct RawHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; libc::MAX_HANDLE_SZ as usize],
}

impl FileHandle {
    /// The handle of the file `fd` refers to (an O_PATH descriptor will do).
    pub fn of(fd: BorrowedFd<'_>) -> io::Result<FileHandle> {
        let mut raw = RawHandle {
            handle_bytes: libc::MAX_HANDLE_SZ as u32,
            handle_type: 0,
            f_handle: [0; libc::MAX_HANDLE_SZ as usize],
        };
        let mut mount_id: libc::c_int = 0;
        // SAFETY: `raw` is a valid file_handle with room for MAX_HANDLE_SZ bytes; the
        // path is an empty C string used with AT_EMPTY_PATH on a valid descriptor.
        let rc = unsafe {
            libc::name_to_handle_at(
                fd.as_raw_fd(),
                c"".as_ptr(),
                (&mut raw as *mut RawHandle).cast(),
                &mut mount_id,
                libc::AT_EMPTY_PATH,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let len = (raw.handle_bytes as usize).min(raw.f_handle.len());
        Ok(FileHandle {
            handle_type: raw.handle_type,
            bytes: raw.f_handle[..len].into(),
        })
    }

    /// Opens the file this handle names, relative to any descriptor on its filesystem.
    pub fn open(&self, mount_fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
        let mut raw = RawHandle {
            handle_bytes: self.bytes.len() as u32,
            handle_type: self.handle_type,
            f_handle: [0; libc::MAX_HANDLE_SZ as usize],
        };
        raw.f_handle[..self.bytes.len()].copy_from_slice(&self.bytes);
        // SAFETY: `raw` is a valid file_handle as the kernel gave it; the result is a
        // new descriptor we own, or -1.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount_fd.as_raw_fd(),
                (&mut raw as *mut RawHandle).cast(),
                flags | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: open_by_handle_at returned a fresh descriptor.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// An inode's way back to its file: a descriptor (cached or pinned) and maybe a handle.
/// Neither, for an inode not resolved yet; once resolved, it never goes back.
#[derive(Debug)]
pub struct InodeFd {
    handle: OnceLock<FileHandle>,
    cached: Mutex<Option<Arc<OwnedFd>>>,
    last_used: AtomicU64,
    cache: Arc<FdCache>,
}

impl InodeFd {
    /// With a handle the descriptor may be closed when unused (and is not kept at all
    /// unless `keep`); without one it is pinned.
    pub fn new(
        fd: OwnedFd,
        handle: Option<FileHandle>,
        cache: &Arc<FdCache>,
        keep: bool,
    ) -> Arc<InodeFd> {
        let this = InodeFd::unresolved(cache);
        this.install(fd, handle, keep);
        this
    }

    /// No descriptor and no handle yet: the inode is reopened by name on first use.
    pub fn unresolved(cache: &Arc<FdCache>) -> Arc<InodeFd> {
        Arc::new(InodeFd {
            handle: OnceLock::new(),
            cached: Mutex::new(None),
            last_used: AtomicU64::new(cache.tick()),
            cache: cache.clone(),
        })
    }

    pub fn handle(&self) -> Option<&FileHandle> {
        self.handle.get()
    }

    /// The handle of `fd` when the filesystem gives them (else the fd gets pinned).
    pub fn handle_of(&self, fd: &OwnedFd) -> Option<FileHandle> {
        use std::os::fd::AsFd;
        if self.cache.use_handles {
            FileHandle::of(fd.as_fd()).ok()
        } else {
            None
        }
    }

    /// Whether the file was ever opened (it has a handle or a pinned descriptor).
    pub fn is_resolved(&self) -> bool {
        self.handle.get().is_some()
            || self
                .cached
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
    }

    /// Resolves an unresolved inode with `fd` (already checked to be its file), or
    /// just returns the descriptor when another thread resolved it first. `handle`:
    /// the file's handle, when the filesystem gives them.
    pub fn install(
        self: &Arc<Self>,
        fd: OwnedFd,
        handle: Option<FileHandle>,
        keep: bool,
    ) -> Arc<OwnedFd> {
        let mut slot = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = slot.as_ref() {
            return fd.clone();
        }
        let fd = Arc::new(fd);
        if self.handle.get().is_some() {
            // Resolved before, its descriptor since closed: cache this one if wanted.
            if keep {
                *slot = Some(fd.clone());
            }
        } else if let Some(h) = handle {
            let _ = self.handle.set(h);
            if keep {
                *slot = Some(fd.clone());
            }
        } else {
            // No handle: the descriptor is the only way back, so it is pinned.
            *slot = Some(fd.clone());
            return fd;
        }
        let tracked = slot.is_some();
        drop(slot);
        if tracked {
            self.cache.track(self);
        }
        fd
    }

    /// An O_PATH descriptor of the file, reopened from the handle if it was closed;
    /// `None` while the inode is unresolved.
    pub fn get(self: &Arc<Self>) -> io::Result<Option<Arc<OwnedFd>>> {
        self.last_used.store(self.cache.tick(), Ordering::Relaxed);
        let mut slot = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = slot.as_ref() {
            return Ok(Some(fd.clone()));
        }
        let Some(handle) = self.handle.get() else {
            return Ok(None);
        };
        let fd = Arc::new(handle.open(self.cache.mount_fd(), libc::O_PATH)?);
        *slot = Some(fd.clone());
        drop(slot);
        self.cache.track(self);
        Ok(Some(fd))
    }

    fn evict(&self) -> bool {
        if self.handle.get().is_none() {
            return false;
        }
        self.cached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some()
    }
}

impl Drop for InodeFd {
    fn drop(&mut self) {
        if self.handle.get().is_some()
            && self.cached.get_mut().map(|s| s.is_some()).unwrap_or(false)
        {
            self.cache.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The budget of cached descriptors, shared by all inodes.
#[derive(Debug)]
pub struct FdCache {
    mount_fd: OwnedFd,
    /// The filesystem gives file handles (checked once, on the store's root).
    use_handles: bool,
    budget: usize,
    open: AtomicUsize,
    clock: AtomicU64,
    tracked: Mutex<Vec<Weak<InodeFd>>>,
}

impl FdCache {
    /// `mount_fd`: any descriptor on the store's filesystem (the root's).
    pub fn new(mount_fd: OwnedFd, use_handles: bool, budget: usize) -> Arc<FdCache> {
        Arc::new(FdCache {
            mount_fd,
            use_handles,
            budget: budget.max(64),
            open: AtomicUsize::new(0),
            clock: AtomicU64::new(0),
            tracked: Mutex::new(Vec::new()),
        })
    }

    fn mount_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.mount_fd.as_fd()
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// How many cached descriptors may be held before the oldest are closed.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Cached descriptors held now.
    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn track(&self, inode: &Arc<InodeFd>) {
        let over = self.open.fetch_add(1, Ordering::Relaxed) + 1 > self.budget;
        let mut tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        tracked.push(Arc::downgrade(inode));
        if over {
            self.evict_oldest(&mut tracked);
        }
    }

    /// Closes the least recently used cached descriptors down to three quarters of the
    /// budget. Descriptors in use elsewhere stay open until their users finish.
    fn evict_oldest(&self, tracked: &mut Vec<Weak<InodeFd>>) {
        let mut live: Vec<(u64, Arc<InodeFd>)> = tracked
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|i| i.cached.lock().map(|s| s.is_some()).unwrap_or(false))
            .map(|i| (i.last_used.load(Ordering::Relaxed), i))
            .collect();
        live.sort_by_key(|(t, _)| *t);
        let target = self.budget / 4 * 3;
        let excess = self.open.load(Ordering::Relaxed).saturating_sub(target);
        for (_, inode) in live.iter().take(excess) {
            if inode.evict() {
                self.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
        *tracked = live
            .into_iter()
            .filter(|(_, i)| i.cached.lock().map(|s| s.is_some()).unwrap_or(false))
            .map(|(_, i)| Arc::downgrade(&i))
            .collect();
    }
}

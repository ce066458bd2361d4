//! Mounting: the checks before the mount (`checks`), the FUSE session on a thread its
//! owner joins, and an unmount that also works when the mount is busy.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use rustix::mount::{UnmountFlags, unmount};
use thiserror::Error;

use crate::error::FsError;
use crate::fs::access::{Callers, MountUsers};
use crate::fs::{FuseAdapter, StorageFs};
use crate::policy::StorePolicy;
use crate::worker::Worker;

mod checks;

pub use checks::{MountEntry, mount_at, mounts, preflight, recover_stale, require_root};

/// Everything `regfs mount` needs to serve a store.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub storage: PathBuf,
    pub mountpoint: PathBuf,
    /// FUSE request threads.
    pub threads: usize,
    /// How long the kernel caches entries and attributes (alone: all of them; over a
    /// shared store only what other nodes cannot make wrong, `fs::caching`).
    pub attr_timeout: Duration,
    /// Ask the kernel for read passthrough.
    pub passthrough: bool,
    /// Inodes remembered before the kernel is asked to drop cached entries; 0 picks a
    /// default (a million when the filesystem gives file handles, else three quarters of
    /// the open-file limit, since then every inode holds a descriptor).
    pub max_inodes: usize,
    /// Inode descriptors kept open at most (with file handles); 0: half the open-file limit.
    pub fd_budget: usize,
    /// Who may use the mount besides root and the storage directory's owner.
    pub users: MountUsers,
    /// Cluster mode: other nodes' daemons serve the same store too, so the store's lock
    /// is taken shared (a lone daemon or an offline collector still finds it held), and
    /// the kernel keeps only what other nodes cannot make wrong (`fs::caching`).
    pub shared_store: bool,
    /// Note tag pushes and pulls for retention (`access_times`; on by default).
    pub record_access: bool,
}

impl MountConfig {
    /// The inode high mark: the configured one, or the default for this filesystem.
    pub fn inode_high_mark(&self, nofile: u64, file_handles: bool) -> usize {
        if self.max_inodes > 0 {
            self.max_inodes
        } else if file_handles {
            1 << 20
        } else {
            (nofile.min(1 << 30) as usize / 4 * 3).max(1024)
        }
    }
}

#[derive(Debug, Error)]
pub enum MountError {
    #[error(
        "regfs must run as root (it mounts a filesystem and serves other users); effective uid is {0}"
    )]
    NotRoot(u32),
    #[error(
        "{path}: FUSE device missing or unusable ({detail}); load the module with `modprobe fuse`"
    )]
    NoFuseDevice { path: String, detail: String },
    #[error("storage directory {0} does not exist")]
    StorageMissing(PathBuf),
    #[error("storage path {0} is not a directory")]
    StorageNotDirectory(PathBuf),
    #[error("mount point {0} does not exist; create it with `mkdir -p {0}`")]
    MountpointMissing(PathBuf),
    #[error("mount point {0} is not a directory")]
    MountpointNotDirectory(PathBuf),
    #[error(
        "mount point {path} is already mounted ({fstype}); unmount it first with `umount {path}`"
    )]
    AlreadyMounted { path: String, fstype: String },
    #[error(
        "mount point {path} holds a stale FUSE mount (Transport endpoint is not connected) and lazy unmount failed: {source}; run `umount -l {path}`"
    )]
    StaleMount {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "storage directory {path} is on a FUSE filesystem ({fstype} mounted at {mounted_at}, source {fs_source}): regfs serves only a directory on a local filesystem; give the backing directory (for a regfs mount, its source) instead"
    )]
    StorageOnFuse {
        path: String,
        fstype: String,
        mounted_at: String,
        /// The mount's source: for a regfs mount, the directory it serves.
        fs_source: String,
    },
    #[error(
        "mount point {mountpoint} is inside the storage directory {storage}: the daemon would serve its own mount"
    )]
    MountpointInsideStorage {
        storage: PathBuf,
        mountpoint: PathBuf,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] FsError),
    #[error(transparent)]
    Locked(#[from] crate::lock::LockError),
    #[error("mounting {path} failed: {source}")]
    Mount {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Raises the soft open-file limit to the hard one (and the hard one to the kernel's
/// maximum): the daemon holds one handle per inode the kernel remembers.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let nr_open = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let cur = getrlimit(Resource::Nofile);
    let hard = match (cur.maximum, nr_open) {
        (Some(h), Some(n)) => Some(h.max(n)),
        (h, _) => h,
    };
    let want = Rlimit {
        current: hard,
        maximum: hard,
    };
    if setrlimit(Resource::Nofile, want).is_err() {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: cur.maximum,
                maximum: cur.maximum,
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

fn session_config(cfg: &MountConfig, storage: &Path) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(storage.display().to_string()),
        MountOption::Subtype("regfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::RW,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(cfg.threads.max(1));
    config.clone_fd = true;
    config
}

/// Unmounts a foreground mount from another thread.
pub struct Unmounter {
    session: SessionUnmounter,
    mountpoint: PathBuf,
}

impl Unmounter {
    /// Unmounts through the session (so it does not try again at exit); if the mount is
    /// busy, detaches it lazily.
    pub fn unmount(&mut self) -> io::Result<()> {
        match self.session.unmount() {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => unmount_path(&self.mountpoint),
            other => other,
        }
    }
}

/// A mounted store, not yet serving: call [`Mounted::serve`] (the daemon, which owns
/// the session's thread) or [`Mounted::spawn`] (a guard that unmounts on drop, for tests).
pub struct Mounted {
    pub fs: Arc<StorageFs>,
    pub storage: PathBuf,
    pub mountpoint: PathBuf,
    session: Session<FuseAdapter>,
    /// Keeps the inode table bounded while the mount serves.
    reclaimer: Worker,
    /// The store's lock: no offline collector or second daemon while this one serves.
    lock: OwnedFd,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted")
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

/// Checks, opens the store and mounts it. The store handle is taken before the mount, so
/// MOUNTPOINT may be the storage directory itself. `compose` builds the policy the store
/// is served under, once the checks passed, from the storage directory's real path; what
/// else it returns (the handles on the policy) comes back with the mount.
pub fn mount<H>(
    cfg: &MountConfig,
    compose: impl FnOnce(&Path) -> Result<(Arc<dyn StorePolicy>, H), FsError>,
) -> Result<(Mounted, H), MountError> {
    let (storage, mountpoint) = preflight(cfg)?;
    let lock = rustix::fs::open(
        &storage,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| MountError::Io {
        path: storage.display().to_string(),
        source: e.into(),
    })?;
    crate::lock::lock_store(
        lock.as_fd(),
        &storage.display().to_string(),
        cfg.shared_store,
    )?;
    // The kernel applies the caller's umask before it sends a mode; ours must not again.
    rustix::process::umask(rustix::fs::Mode::empty());
    let (policy, handles) = compose(&storage)?;
    let fs = Arc::new(if cfg.fd_budget > 0 {
        StorageFs::with_fd_budget(&storage, policy, cfg.fd_budget)?
    } else {
        StorageFs::new(&storage, policy)?
    });
    let (_, file_handles) = fs.inode_fds();
    if !file_handles {
        tracing::warn!(storage = %storage.display(),
            "this filesystem gives no file handles: every remembered inode keeps a descriptor open");
    }
    // The owner as it is now: a later chown of STORAGE takes effect at the next start.
    let owner = rustix::fs::fstat(&lock)
        .map_err(|e| MountError::Io {
            path: storage.display().to_string(),
            source: e.into(),
        })?
        .st_uid;
    let callers = Callers::new(&cfg.users, owner);
    tracing::info!(storage = %storage.display(), "the mount serves {}", callers.describe());
    let caching = crate::fs::caching::Caching::new(cfg.attr_timeout, cfg.shared_store);
    let adapter = FuseAdapter::new(fs.clone(), caching, cfg.passthrough, callers);
    let session =
        Session::new(adapter, &mountpoint, &session_config(cfg, &storage)).map_err(|e| {
            MountError::Mount {
                path: mountpoint.display().to_string(),
                source: e,
            }
        })?;
    fs.set_notifier(session.notifier());
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let high = cfg.inode_high_mark(nofile, file_handles);
    let reclaimer =
        crate::fs::spawn_reclaimer(&fs, high, high / 4 * 3).map_err(|e| MountError::Io {
            path: "reclaimer thread".into(),
            source: e,
        })?;
    let mounted = Mounted {
        fs,
        storage,
        mountpoint,
        session,
        reclaimer,
        lock,
    };
    Ok((mounted, handles))
}

/// Unmounts; when the mount is busy (a process still has files open), detaches it so
/// it disappears from the namespace at once.
pub fn unmount_path(mountpoint: &Path) -> io::Result<()> {
    match unmount(mountpoint, UnmountFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::BUSY) => {
            tracing::warn!(mountpoint = %mountpoint.display(), "mount busy; detaching it lazily");
            unmount(mountpoint, UnmountFlags::DETACH).map_err(Into::into)
        }
        Err(rustix::io::Errno::INVAL) => Ok(()), // not mounted any more
        Err(e) => Err(e.into()),
    }
}

impl Mounted {
    /// The store for the collector to read, on the directory handle taken before the
    /// mount (the mount may hide the directory).
    pub fn store(&self) -> io::Result<crate::layout::Store> {
        Ok(crate::layout::Store::from_fd(
            self.lock.try_clone()?,
            &self.storage,
        ))
    }

    /// Serves requests on a thread of its own until unmounted; `ended` is called on that
    /// thread when the session ends (unmounted from outside, say).
    pub fn serve(mut self, ended: impl FnOnce() + Send + 'static) -> io::Result<Serving> {
        let unmounter = Unmounter {
            session: self.session.unmount_callable(),
            mountpoint: self.mountpoint.clone(),
        };
        let session = self.session;
        let thread = std::thread::Builder::new()
            .name("regfs-fuse".into())
            .spawn(move || {
                let result = session.run();
                ended();
                result
            })?;
        Ok(Serving {
            fs: self.fs,
            mountpoint: self.mountpoint,
            unmounter,
            thread,
            reclaimer: self.reclaimer,
            _lock: self.lock,
        })
    }

    /// Serves requests in the background; the returned guard unmounts on drop.
    pub fn spawn(self) -> io::Result<MountGuard> {
        let fs = self.fs.clone();
        let mountpoint = self.mountpoint.clone();
        let session = self.session.spawn()?;
        Ok(MountGuard {
            fs,
            mountpoint,
            session: Some(session),
            reclaimer: Some(self.reclaimer),
            _lock: self.lock,
        })
    }
}

/// A mount being served by its session's thread, owned by the daemon's runtime.
pub struct Serving {
    pub fs: Arc<StorageFs>,
    pub mountpoint: PathBuf,
    unmounter: Unmounter,
    thread: std::thread::JoinHandle<io::Result<()>>,
    reclaimer: Worker,
    _lock: OwnedFd,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

impl Serving {
    /// Whether the session has ended (the mount is gone).
    pub fn ended(&self) -> bool {
        self.thread.is_finished()
    }

    /// Unmounts (lazily if busy), unless the session has ended already: the path may
    /// then hold something else.
    pub fn unmount(&mut self) -> io::Result<()> {
        if self.ended() {
            return Ok(());
        }
        self.unmounter.unmount()
    }

    /// Waits up to `grace` for the session's threads to end, then stops the reclaimer.
    /// A lazily detached mount keeps serving the files still open on it: then the
    /// session is left to the process's exit, with a warning.
    pub fn join(self, grace: Duration) -> io::Result<()> {
        let deadline = std::time::Instant::now() + grace;
        while !self.thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.reclaimer.stop();
        if !self.thread.is_finished() {
            tracing::warn!(mountpoint = %self.mountpoint.display(),
                "the request loop is still serving files open on the detached mount; leaving it to the exit");
            return Ok(());
        }
        self.thread
            .join()
            .map_err(|_| io::Error::other("the FUSE session's thread panicked"))?
    }
}

/// A mount served in the background. Dropping it unmounts (lazily if busy) and joins
/// the request threads, so a failing test never leaves a mount behind.
pub struct MountGuard {
    pub fs: Arc<StorageFs>,
    pub mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
    reclaimer: Option<Worker>,
    _lock: OwnedFd,
}

impl std::fmt::Debug for MountGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountGuard")
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

impl MountGuard {
    pub fn unmount(mut self) -> io::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // The session's own unmount first (so it does not try again when dropped), then
        // a lazy detach if the mount was busy.
        let unmounted = match session.umount_and_join() {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => unmount_path(&self.mountpoint),
            other => other,
        };
        if let Some(reclaimer) = self.reclaimer.take() {
            reclaimer.stop();
        }
        unmounted
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "unmount failed");
        }
    }
}

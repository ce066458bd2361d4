//! Shared helpers for tests that mount regfs for real.
//!
//! Every mount lives in a fresh temporary directory and is owned by a guard that
//! unmounts on drop, so a failing test leaves nothing behind. Stale mounts from an
//! earlier, killed test run are cleaned once per test binary.
#![allow(dead_code)]

pub mod daemon;
pub mod online_run;
pub mod prereq;
pub mod redis;
pub mod registry_process;
pub mod registry_sim;
pub mod rng;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::Duration;

use regfs::fs::StorageFs;
use regfs::mount::{self, MountConfig, MountGuard};
use regfs::policy::gate::WriteGate;
use regfs::runtime::compose::StorePolicies;
use tempfile::TempDir;

/// Prefix of every temporary directory these tests create; stale mounts are found by it.
pub const PREFIX: &str = "regfs-test-";

/// Whether this machine can run FUSE tests. Under CI=true a missing prerequisite is a
/// failure, never a skip; elsewhere the test says why it skipped.
pub fn fuse_available() -> bool {
    prereq::Needs::new()
        .root()
        .dev_fuse()
        .met("FUSE tests need root and /dev/fuse")
}

/// Lazily unmounts every dead FUSE mount left by an earlier, killed test run.
pub fn clean_stale_mounts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for m in mount::mounts().unwrap_or_default() {
            // Only dead ones (their daemon is gone): another test process may be running.
            let dead = matches!(
                rustix::fs::statfs(&m.mountpoint),
                Err(rustix::io::Errno::NOTCONN)
            );
            if m.fstype.starts_with("fuse")
                && m.mountpoint.to_string_lossy().contains(PREFIX)
                && dead
            {
                let _ = rustix::mount::unmount(&m.mountpoint, rustix::mount::UnmountFlags::DETACH);
            }
        }
    });
}

pub fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix(PREFIX)
        .tempdir()
        .expect("temporary directory")
}

/// A store mounted in-process: `storage` is the backing directory, `mnt` the mount.
pub struct TestMount {
    // Declared first so it drops (unmounts) before the directory is removed.
    pub guard: MountGuard,
    pub storage: PathBuf,
    pub mnt: PathBuf,
    pub gate: Arc<WriteGate>,
    pub dir: TempDir,
}

impl TestMount {
    pub fn fs(&self) -> &Arc<StorageFs> {
        &self.guard.fs
    }
}

pub fn config(storage: &Path, mnt: &Path) -> MountConfig {
    MountConfig {
        storage: storage.to_path_buf(),
        mountpoint: mnt.to_path_buf(),
        threads: 4,
        attr_timeout: Duration::from_secs(60),
        passthrough: true,
        max_inodes: 0,
        fd_budget: 0,
        users: Default::default(),
        shared_store: false,
        record_access: true,
    }
}

/// Mounts a fresh empty store. `None` when FUSE is unavailable outside CI.
pub fn mount_fresh() -> Option<TestMount> {
    mount_with(|_| {})
}

/// Mounts a fresh store after `prepare` has filled the backing directory.
pub fn mount_with(prepare: impl FnOnce(&Path)) -> Option<TestMount> {
    mount_configured(prepare, |_| {})
}

/// Mounts a fresh store with a configuration adjusted by `tune`.
pub fn mount_configured(
    prepare: impl FnOnce(&Path),
    tune: impl FnOnce(&mut MountConfig),
) -> Option<TestMount> {
    if !fuse_available() {
        return None;
    }
    clean_stale_mounts();
    let dir = tempdir();
    let storage = dir.path().join("storage");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&storage).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    // Make the store reachable for the non-root users some tests run as.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    prepare(&storage);
    let mut cfg = config(&storage, &mnt);
    tune(&mut cfg);
    let (mounted, gate) = mount::mount(&cfg, |root| {
        let p = StorePolicies::compose(root, WriteGate::new(), true)?;
        Ok((p.chain, p.gate))
    })
    .expect("mount");
    let guard = mounted.spawn().expect("serve");
    Some(TestMount {
        guard,
        storage,
        mnt,
        gate,
        dir,
    })
}

/// The errno of an io::Error, or a panic naming the operation.
pub fn errno(r: std::io::Result<impl std::fmt::Debug>, what: &str) -> i32 {
    match r {
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("{what}: no errno in {e}")),
    }
}

/// A finished process, for failure messages: its status, stdout and stderr.
pub fn describe_output(out: &std::process::Output) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// The FUSE mount at `path`, if one is there.
pub fn mount_at_fuse(path: &Path) -> Option<regfs::mount::MountEntry> {
    regfs::mount::mount_at(path).filter(|m| m.fstype.starts_with("fuse"))
}

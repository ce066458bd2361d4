//! `regfs mount` as a child process, for tests of the daemon as operators run it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_regfs");

/// A running daemon; killed and its mount detached on drop, whatever the test did.
pub struct Daemon {
    pub child: Child,
    pub mnt: PathBuf,
    pub state: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = rustix::mount::unmount(&self.mnt, rustix::mount::UnmountFlags::DETACH);
    }
}

impl Daemon {
    /// Guards a `regfs mount` child started some other way (with other pipes or
    /// environment), mounting at `mnt`.
    pub fn adopt(child: Child, mnt: &Path, state: &Path) -> Daemon {
        Daemon {
            child,
            mnt: mnt.to_path_buf(),
            state: state.to_path_buf(),
        }
    }

    /// Starts `regfs mount ARGS... --state-dir STATE` and waits until MNT answers. Fresh
    /// garbage goes (see [`fresh_garbage_goes`]).
    pub fn start(mnt: &Path, state: &Path, args: &[&str]) -> Daemon {
        Daemon::start_as_given(mnt, state, &[args, fresh_garbage_goes(args)].concat())
    }

    /// [`Daemon::start`] with the binary's (or the configuration file's) minimum age.
    pub fn start_as_given(mnt: &Path, state: &Path, args: &[&str]) -> Daemon {
        let child = Command::new(BIN)
            .arg("mount")
            .args(args)
            .arg("--state-dir")
            .arg(state)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut d = Daemon::adopt(child, mnt, state);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !serving(mnt) {
            if let Some(status) = d.child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(&mut d.child.stderr.take().unwrap(), &mut err)
                    .unwrap();
                panic!("regfs mount exited early ({status}): {err}");
            }
            assert!(Instant::now() < deadline, "mount did not appear");
            thread::sleep(Duration::from_millis(20));
        }
        // The control socket comes up right after the mount.
        while !state.join("control.sock").exists() {
            assert!(Instant::now() < deadline, "control socket did not appear");
            thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// Sends `sig` to the daemon; whether kill(2) succeeded.
    pub fn signal(&self, sig: i32) -> bool {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) == 0 }
    }

    /// Runs `regfs ARGS... --state-dir STATE`: (exit code, stdout, stderr).
    pub fn regfs(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .arg("--state-dir")
            .arg(&self.state)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The daemon's status as JSON.
    pub fn status(&self) -> serde_json::Value {
        let mnt = self.mnt.display().to_string();
        let (code, out, err) = self.regfs(&["status", &mnt, "--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    }

    /// Waits until the daemon has recorded `n` jobs; returns them.
    pub fn wait_for_jobs(&self, n: usize) -> Vec<serde_json::Value> {
        let mnt = self.mnt.display().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, out, err) = self.regfs(&["jobs", &mnt, "--json"]);
            assert_eq!(code, 0, "{err}");
            let jobs: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
            if jobs.len() >= n {
                return jobs;
            }
            assert!(Instant::now() < deadline, "{n} jobs not recorded: {jobs:?}");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether a FUSE mount is at `mnt` and answers.
pub fn serving(mnt: &Path) -> bool {
    crate::common::mount_at_fuse(mnt).is_some() && rustix::fs::statfs(mnt).is_ok()
}

/// [`dirs`] for a test that mounts; `None` when FUSE is unavailable outside CI.
pub fn fuse_dirs() -> Option<(tempfile::TempDir, PathBuf, PathBuf)> {
    crate::common::fuse_available().then(dirs)
}

/// A fresh temporary directory with empty `storage` and `mnt` directories, after
/// cleaning dead mounts of earlier runs.
pub fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    crate::common::clean_stale_mounts();
    let dir = crate::common::tempdir();
    let storage = dir.path().join("storage");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&storage).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    (dir, storage, mnt)
}

/// `--gc-min-age 0s` unless ARGS set a minimum age: tests make garbage and collect it at
/// once, which the default minimum age (1h) would keep.
pub fn fresh_garbage_goes(args: &[&str]) -> &'static [&'static str] {
    if args.contains(&"--gc-min-age") {
        &[]
    } else {
        &["--gc-min-age", "0s"]
    }
}

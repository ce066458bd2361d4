//! `regfs mount` as an operator runs it: foreground daemon, clean exits, clear errors.
mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_regfs");

/// Kills the daemon (if still running) and unmounts, whatever the test did.
struct Daemon {
    child: Child,
    mnt: std::path::PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = rustix::mount::unmount(&self.mnt, rustix::mount::UnmountFlags::DETACH);
    }
}

fn start(storage: &Path, mnt: &Path) -> Daemon {
    let child = Command::new(BIN)
        .arg("mount")
        .arg(storage)
        .arg(mnt)
        .arg("--state-dir")
        .arg(mnt.with_file_name("state"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let d = Daemon {
        child,
        mnt: mnt.to_path_buf(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    // Mounted and answering (a stale mount at the same place does not answer).
    while regfs::mount::mount_at(mnt).is_none_or(|m| !m.fstype.starts_with("fuse"))
        || rustix::fs::statfs(mnt).is_err()
    {
        assert!(Instant::now() < deadline, "mount did not appear");
        thread::sleep(Duration::from_millis(20));
    }
    d
}

fn wait_exit(d: &mut Daemon) -> (i32, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = d.child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            d.child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        assert!(Instant::now() < deadline, "daemon did not exit");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_and_sigint_unmount_and_exit_zero() {
    if !common::fuse_available() {
        return;
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let (_dir, storage, mnt) = common::daemon::dirs();
        fs::write(storage.join("f"), b"x").unwrap();
        let mut d = start(&storage, &mnt);
        assert_eq!(fs::read(mnt.join("f")).unwrap(), b"x");
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(d.child.id() as i32, sig) };
        let (code, err) = wait_exit(&mut d);
        assert_eq!(code, 0, "signal {sig}: {err}");
        assert!(
            regfs::mount::mount_at(&mnt).is_none(),
            "mount gone after signal {sig}"
        );
    }
}

#[test]
fn umount_from_outside_ends_the_daemon_cleanly() {
    let Some((_dir, storage, mnt)) = common::daemon::fuse_dirs() else {
        return;
    };
    let mut d = start(&storage, &mnt);
    let st = Command::new("umount").arg(&mnt).status().unwrap();
    assert!(st.success());
    let (code, err) = wait_exit(&mut d);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_stale_mount_left_by_a_killed_daemon_is_recovered() {
    let Some((_dir, storage, mnt)) = common::daemon::fuse_dirs() else {
        return;
    };
    fs::write(storage.join("f"), b"x").unwrap();
    let mut first = start(&storage, &mnt);
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let r = fs::read_dir(&mnt).map(drop);
    assert_eq!(common::errno(r, "stale"), libc::ENOTCONN);
    let mut second = start(&storage, &mnt);
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"x");
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(second.child.id() as i32, libc::SIGTERM) };
    let (code, err) = wait_exit(&mut second);
    assert_eq!(code, 0);
    assert!(
        err.contains("stale FUSE mount"),
        "log says what it recovered: {err}"
    );
}

fn run_err(args: &[&Path]) -> (i32, String) {
    let out = Command::new(BIN).arg("mount").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_paths_are_refused_naming_the_path() {
    let Some((dir, storage, mnt)) = common::daemon::fuse_dirs() else {
        return;
    };
    let missing = dir.path().join("missing");
    let file = dir.path().join("file");
    fs::write(&file, b"").unwrap();

    let (code, err) = run_err(&[&missing, &mnt]);
    assert_eq!(code, 1);
    assert!(
        err.contains("does not exist") && err.contains(&*missing.to_string_lossy()),
        "{err}"
    );

    let (code, err) = run_err(&[&file, &mnt]);
    assert_eq!(code, 1);
    assert!(
        err.contains("not a directory") && err.contains(&*file.to_string_lossy()),
        "{err}"
    );

    let (code, err) = run_err(&[&storage, &missing]);
    assert_eq!(code, 1);
    assert!(
        err.contains("mkdir -p") && err.contains(&*missing.to_string_lossy()),
        "{err}"
    );

    let inside = storage.join("inside");
    fs::create_dir(&inside).unwrap();
    let (code, err) = run_err(&[&storage, &inside]);
    assert_eq!(code, 1);
    assert!(err.contains("inside the storage directory"), "{err}");

    let _d = start(&storage, &mnt);
    let (code, err) = run_err(&[&storage, &mnt]);
    assert_eq!(code, 1);
    assert!(
        err.contains("already mounted") && err.contains(&*mnt.to_string_lossy()),
        "{err}"
    );
}

/// Every subcommand that needs root says so before it touches anything: no "Permission
/// denied" from a state directory, a configuration file or a store half-collected.
#[test]
fn a_non_root_user_is_told_to_run_as_root() {
    if !common::prereq::Needs::new()
        .root()
        .met("switching to an unprivileged user needs root")
    {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = common::tempdir();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // A configuration only root may read (as /etc/regfs/regfs.toml may be).
    let config = dir.path().join("regfs.toml");
    fs::write(&config, "storage = \"/srv/a\"\nmountpoint = \"/srv/b\"\n").unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
    // A root-owned store with garbage in it.
    let store = dir.path().join("store");
    let b = common::store::StoreBuilder::new(&store);
    let garbage = b.blob(b"garbage");
    b.layer_link("r", &garbage);
    // A mount point whose default state directory (/run/regfs/...) does not exist.
    let mnt = dir.path().join("mnt");
    let (config, store, mnt) = (
        config.to_str().unwrap(),
        store.to_str().unwrap(),
        mnt.to_str().unwrap(),
    );
    for args in [
        vec!["mount", "/tmp", "/mnt"],
        vec!["mount", "--config", config],
        vec!["status", mnt],
        vec!["status", mnt, "--json"],
        vec!["jobs", mnt],
        vec!["gc", mnt],
        vec!["gc", "stop", mnt],
        vec!["gc", "--offline", "--min-age", "0s", store],
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "regfs {args:?}: {err}");
        assert!(
            err.contains("must run as root") && !err.contains("ermission denied"),
            "regfs {args:?}: {err}"
        );
    }
    assert!(b.has_blob(&garbage), "the offline run touched nothing");
}

#[test]
fn mounting_over_the_storage_directory_itself_serves_what_is_underneath() {
    let Some((_dir, storage, _mnt)) = common::daemon::fuse_dirs() else {
        return;
    };
    fs::write(storage.join("under"), b"beneath").unwrap();
    let d = start(&storage, &storage);
    assert_eq!(fs::read(storage.join("under")).unwrap(), b"beneath");
    fs::write(storage.join("new"), b"n").unwrap();
    drop(d);
    // After unmounting, what was written through the mount is in the real directory.
    assert_eq!(fs::read(storage.join("new")).unwrap(), b"n");
}

#[test]
fn a_storage_on_another_daemons_mount_is_refused_naming_it() {
    let Some((dir, storage, mnt)) = common::daemon::fuse_dirs() else {
        return;
    };
    fs::create_dir(storage.join("sub")).unwrap();
    let _first = start(&storage, &mnt);
    let second = dir.path().join("second");
    fs::create_dir(&second).unwrap();
    // The first daemon's mount point itself, and a directory inside it.
    for over in [mnt.clone(), mnt.join("sub")] {
        let (code, err) = run_err(&[&over, &second]);
        assert_eq!(code, 1, "{}: {err}", over.display());
        assert!(
            err.contains("FUSE filesystem")
                && err.contains(&*over.to_string_lossy())
                && err.contains(&format!("source {}", storage.display())),
            "{err}"
        );
        assert!(
            common::mount_at_fuse(&second).is_none(),
            "no second mount over {}",
            over.display()
        );
    }
}

#[test]
fn an_unknown_allowed_user_is_refused_at_start_naming_it() {
    let Some((_dir, storage, mnt)) = common::daemon::fuse_dirs() else {
        return;
    };
    let out = Command::new(BIN)
        .arg("mount")
        .args([&storage, &mnt])
        .args(["--allow-user", "no-such-user-regfs"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--allow-user") && err.contains("no-such-user-regfs"),
        "{err}"
    );
    assert!(common::mount_at_fuse(&mnt).is_none());
}

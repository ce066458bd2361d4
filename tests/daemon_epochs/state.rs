//! The state directory against a local user who is not root: a directory they prepared
//! is refused, symlinks planted in it are never followed, and what the daemon creates
//! has explicit modes whatever the process umask.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::daemon::BIN;
use crate::common::store::StoreBuilder;
use crate::daemon::{Daemon, text};
use crate::fixture::{Env, env};

/// The files a daemon writes in its state directory, and their temporary names.
const STATE_FILES: [&str; 5] = [
    "jobs.jsonl",
    "running.json",
    "running.json.tmp",
    "control.sock",
    "control.sock.new",
];

fn nobody() -> (u32, u32) {
    let name = std::ffi::CString::new("nobody").unwrap();
    // SAFETY: getpwnam with a valid C string; the fields are copied at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "no user nobody");
    // SAFETY: non-null, as checked.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// Root-owned files a planted symlink points at: path, content, mode.
struct Victims(Vec<(PathBuf, Vec<u8>, u32)>);

impl Victims {
    fn new(dir: &Path) -> Victims {
        let dir = dir.join("victims");
        fs::create_dir(&dir).unwrap();
        let v = STATE_FILES
            .iter()
            .map(|name| {
                let p = dir.join(format!("victim-{name}"));
                let body = format!("root's precious {name}\n").into_bytes();
                fs::write(&p, &body).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
                (p, body, 0o640)
            })
            .collect();
        Victims(v)
    }

    /// Plants a symlink named like each state file, pointing at its victim.
    fn plant(&self, state: &Path, owner: Option<(u32, u32)>) {
        for (name, (victim, _, _)) in STATE_FILES.iter().zip(&self.0) {
            let link = state.join(name);
            symlink(victim, &link).unwrap();
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::lchown(&link, Some(uid), Some(gid)).unwrap();
            }
        }
    }

    fn assert_untouched(&self, what: &str) {
        for (p, body, mode) in &self.0 {
            let m = fs::metadata(p).unwrap();
            assert_eq!(
                &fs::read(p).unwrap(),
                body,
                "{what}: {} was written",
                p.display()
            );
            assert_eq!(
                m.mode() & 0o7777,
                *mode,
                "{what}: {} mode changed",
                p.display()
            );
            assert_eq!(m.uid(), 0, "{what}: {} owner changed", p.display());
        }
    }
}

/// `regfs mount` that must refuse to start: its stderr. Fails if it serves instead.
fn refused(e: &Env) -> String {
    let child = Command::new(BIN)
        .arg("mount")
        .arg(&e.storage)
        .arg(&e.mnt)
        .arg("--state-dir")
        .arg(&e.state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kills it and detaches its mount on drop, should it serve after all.
    let mut guard = crate::common::daemon::Daemon::adopt(child, &e.mnt, &e.state);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = guard.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "regfs mount did not refuse the state directory; it kept running"
        );
        thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut guard.child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "refused with exit 1: {err}");
    assert!(
        !crate::common::daemon::serving(&e.mnt),
        "nothing mounted after a refusal"
    );
    err
}

#[test]
fn a_state_directory_prepared_by_nobody_is_refused_and_its_symlinks_not_followed() {
    let Some(e) = env() else { return };
    let victims = Victims::new(e._dir.path());
    let (uid, gid) = nobody();
    fs::create_dir(&e.state).unwrap();
    fs::set_permissions(&e.state, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&e.state, Some(uid), Some(gid)).unwrap();
    victims.plant(&e.state, Some((uid, gid)));
    let err = refused(&e);
    assert!(
        err.contains(&e.state.display().to_string()) && err.contains(&format!("uid {uid}")),
        "the refusal names the directory and its owner: {err}"
    );
    victims.assert_untouched("a state directory owned by nobody");
    // The symlinks are left as nobody made them: the daemon changed nothing there.
    for name in STATE_FILES {
        assert!(
            fs::symlink_metadata(e.state.join(name))
                .unwrap()
                .is_symlink()
        );
    }
}

#[test]
fn a_state_directory_writable_by_others_or_a_symlink_is_refused() {
    let Some(e) = env() else { return };
    let victims = Victims::new(e._dir.path());
    fs::create_dir(&e.state).unwrap();
    fs::set_permissions(&e.state, fs::Permissions::from_mode(0o777)).unwrap();
    victims.plant(&e.state, Some(nobody()));
    let err = refused(&e);
    assert!(
        err.contains(&e.state.display().to_string()) && err.contains("0777"),
        "the refusal names the directory and its mode: {err}"
    );
    victims.assert_untouched("a state directory with mode 0777");
    assert_eq!(
        fs::metadata(&e.state).unwrap().mode() & 0o7777,
        0o777,
        "the daemon does not quietly fix someone else's directory"
    );

    // Group-writable too.
    fs::set_permissions(&e.state, fs::Permissions::from_mode(0o770)).unwrap();
    let err = refused(&e);
    assert!(err.contains("0770"), "{err}");

    // A state directory that is a symlink (to a good directory) is refused.
    let real = e._dir.path().join("real-state");
    fs::create_dir(&real).unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
    fs::remove_dir_all(&e.state).unwrap();
    symlink(&real, &e.state).unwrap();
    let err = refused(&e);
    assert!(
        err.contains(&e.state.display().to_string()) && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(fs::read_dir(&real).unwrap().count(), 0);
    victims.assert_untouched("after every refusal");
}

#[test]
fn symlinks_planted_in_a_root_state_directory_are_never_followed() {
    let Some(e) = env() else { return };
    let victims = Victims::new(e._dir.path());
    fs::create_dir(&e.state).unwrap();
    fs::set_permissions(&e.state, fs::Permissions::from_mode(0o700)).unwrap();
    victims.plant(&e.state, None);
    let b = StoreBuilder::new(&e.storage);
    let garbage = b.blob(b"garbage for the run");

    let d = Daemon::start(&e, &[]);
    let job = d.gc_wait();
    assert_eq!(job["outcome"], "done", "{job:#}");
    assert_eq!(job["report"]["blobs_deleted"], 1, "{job:#}");
    assert!(!b.has_blob(&garbage));
    victims.assert_untouched("symlinks in a root-owned state directory");
    let jobs_file = e.state.join("jobs.jsonl").display().to_string();
    d.wait_log(
        "cannot write the job to the history",
        Duration::from_secs(5),
    );
    let log = d.log();
    assert!(
        log.contains(&format!("{jobs_file}: is a symbolic link")),
        "the error names the file:\n{log}"
    );
    // Reading the history does not follow the symlink either, and says which file.
    let out = d.cli(&["jobs"], &["--json"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("{jobs_file}: is a symbolic link")),
        "{}",
        text(&out.stderr)
    );
    // The socket and the running record replaced their symlinks; the socket is 0600.
    let sock = fs::symlink_metadata(e.state.join("control.sock")).unwrap();
    assert!(
        std::os::unix::fs::FileTypeExt::is_socket(&sock.file_type()),
        "{sock:?}"
    );
    assert_eq!(sock.mode() & 0o777, 0o600);
    assert!(!e.state.join("running.json").exists());
    assert!(fs::symlink_metadata(e.state.join("running.json.tmp")).is_err());
    victims.assert_untouched("after the run");
}

#[test]
fn a_state_directory_the_daemon_creates_has_explicit_modes() {
    let Some(mut e) = env() else { return };
    // Missing parents too: they are created 0755, the state directory 0700, even when
    // the daemon starts with umask 0 (as the mount sets it anyway).
    e.state = e._dir.path().join("run-regfs/mine");
    let b = StoreBuilder::new(&e.storage);
    b.blob(b"garbage");
    let child = Command::new("sh")
        .arg("-c")
        .arg("umask 0 && exec \"$0\" \"$@\"")
        .arg(BIN)
        .arg("mount")
        .args([&e.storage, &e.mnt])
        .arg("--state-dir")
        .arg(&e.state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = crate::common::daemon::Daemon::adopt(child, &e.mnt, &e.state);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(crate::common::daemon::serving(&e.mnt) && e.state.join("control.sock").exists()) {
        assert!(Instant::now() < deadline, "the daemon did not start");
        thread::sleep(Duration::from_millis(20));
    }
    let mnt = e.mnt.display().to_string();
    let (code, out, err) = d.regfs(&["gc", &mnt, "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(e.state.parent().unwrap()), 0o755);
    assert_eq!(mode(&e.state), 0o700);
    assert_eq!(mode(&e.state.join("control.sock")), 0o600);
    assert_eq!(mode(&e.state.join("jobs.jsonl")), 0o600);
}

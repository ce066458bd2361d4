//! The configuration file: checked, used by `regfs mount --config`, overridden by flags,
//! re-read on SIGHUP.
mod common;

use std::fs;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::daemon::{BIN, Daemon};

fn check(text: &str) -> (i32, String) {
    let dir = common::tempdir();
    let file = dir.path().join("regfs.toml");
    fs::write(&file, text).unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    let msg =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), msg)
}

#[test]
fn config_check_accepts_a_good_file_and_names_the_key_and_line_of_a_bad_one() {
    let (code, msg) =
        check("storage = \"/srv/a\"\nmountpoint = \"/srv/b\"\n[gc]\nschedule = \"@weekly\"\n");
    assert_eq!(code, 0, "{msg}");
    assert!(msg.contains("ok"), "{msg}");
    let (code, msg) =
        check("storage = \"/srv/a\"\nmountpoint = \"/srv/b\"\n\n[gc]\nduraton = \"30m\"\n");
    assert_eq!(code, 1);
    assert!(msg.contains("duraton") && msg.contains("line 5"), "{msg}");
    let (code, msg) =
        check("storage = \"/srv/a\"\nmountpoint = \"/srv/b\"\n[gc]\nschedule = \"0 3 * * 9\"\n");
    assert_eq!(code, 1);
    assert!(
        msg.contains("gc.schedule") && msg.contains("day of week"),
        "{msg}"
    );
    let (code, msg) = check("storage = 42\n");
    assert_eq!(code, 1);
    assert!(msg.contains("storage") && msg.contains("line 1"), "{msg}");
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn mount_reads_the_file_flags_override_it_and_sighup_rereads_it() {
    let Some((dir, storage, mnt)) = common::daemon::fuse_dirs() else {
        return;
    };
    let file = dir.path().join("regfs.toml");
    let write = |duration: &str, untagged: bool, mode: &str| {
        fs::write(
            &file,
            format!(
                "storage = \"{}\"\nmountpoint = \"{}\"\n[gc]\nmode = \"{mode}\"\nduration = \"{duration}\"\ndelete_untagged = {untagged}\nupload_max_age = \"48h\"\n",
                storage.display(),
                mnt.display()
            ),
        )
        .unwrap()
    };
    write("never", false, "read-only");
    // The file says never; the flag says a 30-minute limit, and wins.
    let d = Daemon::start(
        &mnt,
        &dir.path().join("state"),
        &["--config", file.to_str().unwrap(), "--gc-duration", "30m"],
    );
    let st = d.status();
    assert_eq!(st["settings"]["duration"], "30m");
    assert_eq!(st["settings"]["upload_max_age"], "2days");
    assert_eq!(st["settings"]["delete_untagged"], false);
    assert_eq!(st["mode"], "read-only");
    drop(d);

    // Without the flag the file rules: triggers are refused.
    let d = Daemon::start(
        &mnt,
        &dir.path().join("state"),
        &["--config", file.to_str().unwrap()],
    );
    let m = mnt.display().to_string();
    let (code, _, err) = d.regfs(&["gc", &m]);
    assert_eq!(code, 1);
    assert!(err.contains("disabled"), "{err}");
    // SIGHUP re-reads the file.
    write("until-done", true, "online");
    d.signal(libc::SIGHUP);
    wait_until("the reloaded settings", || {
        d.status()["settings"]["duration"] == "until-done"
    });
    assert_eq!(d.status()["settings"]["delete_untagged"], true);
    assert_eq!(d.status()["mode"], "online");
    let (code, out, err) = d.regfs(&["gc", &m, "--wait", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["settings"]["mode"], "online", "{job:#}");
    // A broken file on SIGHUP keeps the settings in force.
    fs::write(&file, "storage = \n").unwrap();
    d.signal(libc::SIGHUP);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(d.status()["settings"]["duration"], "until-done");
    assert!(common::mount_at_fuse(&mnt).is_some(), "still serving");
}

/// Runs `regfs ARGS...`, killing it after 10 s so a command that blocks fails the test
/// instead of hanging the suite: (exit code, stderr).
fn run_bounded(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("regfs {args:?} still running after 10 s");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code().unwrap_or(-1), err)
}

#[test]
fn only_a_regular_file_of_reasonable_size_is_read_as_configuration() {
    let dir = common::tempdir();
    let fifo = dir.path().join("fifo.toml");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let big = dir.path().join("big.toml");
    let mut text = "storage = \"/srv/a\"\nmountpoint = \"/srv/b\"\n".to_string();
    text += &"# padding\n".repeat(200_000);
    fs::write(&big, text).unwrap();
    let zero = std::path::Path::new("/dev/zero");
    for (file, what) in [
        (fifo.as_path(), "a FIFO"),
        (zero, "a device"),
        (dir.path(), "a directory"),
        (big.as_path(), "larger than 1048576 bytes"),
    ] {
        for args in [
            vec!["config".as_ref(), "check".as_ref(), file.as_os_str()],
            vec!["mount".as_ref(), "--config".as_ref(), file.as_os_str()],
        ] {
            let (code, err) = run_bounded(&args);
            assert_eq!(code, 1, "{args:?}: {err}");
            assert!(
                err.contains(&*file.to_string_lossy()) && err.contains(what),
                "{args:?}: {err}"
            );
        }
    }
    // A symbolic link to a regular file is a regular file.
    let good = dir.path().join("good.toml");
    fs::write(&good, "storage = \"/srv/a\"\nmountpoint = \"/srv/b\"\n").unwrap();
    let link = dir.path().join("link.toml");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let (code, err) = run_bounded(&["config".as_ref(), "check".as_ref(), link.as_os_str()]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_bad_value_is_quoted_as_typed_and_a_schedule_as_written() {
    for (schedule, field) in [
        ("61 * * * *", "minute"),
        ("0 3 32 * *", "day of month"),
        ("0 3 * * MON-FOO", "day of week"),
    ] {
        let (code, msg) = check(&format!(
            "storage = \"/srv/a\"\nmountpoint = \"/srv/b\"\n[gc]\nschedule = \"{schedule}\"\n"
        ));
        assert_eq!(code, 1, "{msg}");
        assert!(
            msg.contains("gc.schedule")
                && msg.contains(&format!("\"{schedule}\""))
                && msg.contains(field),
            "{msg}"
        );
        assert!(
            !msg.contains(&format!("0 {schedule}")),
            "internal form: {msg}"
        );
        let (code, err) = run_bounded(&[
            "mount".as_ref(),
            "/nonexistent-a".as_ref(),
            "/nonexistent-b".as_ref(),
            "--gc-schedule".as_ref(),
            schedule.as_ref(),
        ]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("--gc-schedule") && err.contains(&format!("\"{schedule}\"")),
            "{err}"
        );
        assert!(
            !err.contains(&format!("0 {schedule}")),
            "internal form: {err}"
        );
    }
    // A duration in the file is blamed on the file's key, not on a flag.
    let (code, msg) =
        check("storage = \"/srv/a\"\nmountpoint = \"/srv/b\"\n[gc]\nduration = \"soon\"\n");
    assert_eq!(code, 1);
    assert!(
        msg.contains("gc.duration") && msg.contains("\"soon\"") && !msg.contains("--gc-duration"),
        "{msg}"
    );
    // Seconds are quoted as typed ("nan" was shown as NaN).
    let (code, err) = run_bounded(&[
        "mount".as_ref(),
        "/nonexistent-a".as_ref(),
        "/nonexistent-b".as_ref(),
        "--attr-timeout".as_ref(),
        "nan".as_ref(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("\"nan\""), "{err}");
}

/// `[gc] min_age` in the file: parsed like upload_max_age, in force at mount (an
/// unreferenced blob younger than it stays, reported), re-read on SIGHUP (0s collects
/// it), and a bad value is refused quoting it, by `config check` and by SIGHUP alike.
#[test]
fn the_files_min_age_keeps_young_blobs_and_sighup_rereads_it() {
    let (code, msg) = check("storage = \"/a\"\nmountpoint = \"/b\"\n[gc]\nmin_age = \"soon\"\n");
    assert_eq!(code, 1);
    assert!(
        msg.contains("gc.min_age") && msg.contains("\"soon\""),
        "{msg}"
    );
    let Some((dir, storage, mnt)) = common::daemon::fuse_dirs() else {
        return;
    };
    let b = common::store::StoreBuilder::new(&storage);
    let young = b.blob(b"pushed a moment ago, manifest to follow");
    b.layer_link("r", &young);
    let file = dir.path().join("regfs.toml");
    let write = |min_age: &str| {
        let (s, m) = (storage.display(), mnt.display());
        let text =
            format!("storage = \"{s}\"\nmountpoint = \"{m}\"\n[gc]\nmin_age = \"{min_age}\"\n");
        fs::write(&file, text).unwrap()
    };
    write("30m");
    let state = dir.path().join("state");
    let d = Daemon::start_as_given(&mnt, &state, &["--config", file.to_str().unwrap()]);
    assert_eq!(d.status()["settings"]["min_age"], "30m");
    let m = mnt.display().to_string();
    let (code, out, err) = d.regfs(&["gc", &m, "--wait", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["report"]["young_blobs_kept"], 1, "{job:#}");
    assert_eq!(job["settings"]["min_age"], "30m", "{job:#}");
    assert!(b.has_blob(&young));

    write("0s");
    d.signal(libc::SIGHUP);
    wait_until("the reloaded min_age", || {
        d.status()["settings"]["min_age"] == "0s"
    });
    let (code, out, err) = d.regfs(&["gc", &m, "--wait", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["report"]["blobs_deleted"], 1, "{job:#}");
    assert!(!b.has_blob(&young));

    // A bad value on SIGHUP keeps the setting in force.
    write("soon");
    d.signal(libc::SIGHUP);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(d.status()["settings"]["min_age"], "0s");
}

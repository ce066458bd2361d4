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
    let write = |duration: &str, untagged: bool| {
        fs::write(
            &file,
            format!(
                "storage = \"{}\"\nmountpoint = \"{}\"\n[gc]\nduration = \"{duration}\"\ndelete_untagged = {untagged}\nupload_max_age = \"48h\"\n",
                storage.display(),
                mnt.display()
            ),
        )
        .unwrap()
    };
    write("never", false);
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
    write("until-done", true);
    d.signal(libc::SIGHUP);
    wait_until("the reloaded settings", || {
        d.status()["settings"]["duration"] == "until-done"
    });
    assert_eq!(d.status()["settings"]["delete_untagged"], true);
    let (code, out, err) = d.regfs(&["gc", &m, "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    // A broken file on SIGHUP keeps the settings in force.
    fs::write(&file, "storage = \n").unwrap();
    d.signal(libc::SIGHUP);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(d.status()["settings"]["duration"], "until-done");
    assert!(common::mount_at_fuse(&mnt).is_some(), "still serving");
}

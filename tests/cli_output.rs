//! Standard output that is a closed pipe (`regfs jobs | head -1`) or a full disk
//! (`> /dev/full`): a command that lists (jobs, status, a dry run, a manual page) ends
//! quietly with status 0 at a closed pipe, as `ls | head` does; a full disk, and a closed
//! pipe after a run that did something, are errors that say so (exit 1, never a panic),
//! and what a run deleted is on record before anything is printed.
mod common;

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};

use common::daemon::{BIN, Daemon};
use common::store::StoreBuilder;

#[derive(Debug, Clone, Copy)]
enum Sink {
    /// A pipe whose reading end is already closed: the first write fails with EPIPE,
    /// however little is written (a `| head -c1` may read before it closes).
    ClosedPipe,
    /// `/dev/full`: every write fails with ENOSPC.
    Full,
}

impl Sink {
    fn stdio(self) -> Stdio {
        match self {
            Sink::ClosedPipe => {
                let (reader, writer) = std::io::pipe().unwrap();
                drop(reader);
                Stdio::from(writer)
            }
            Sink::Full => Stdio::from(File::options().write(true).open("/dev/full").unwrap()),
        }
    }
}

/// `regfs ARGS...` with standard output into `sink`: (exit code, stderr).
fn run_into(sink: Sink, args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdout(sink.stdio())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_clean_failure(sink: Sink, args: &[&str]) -> String {
    let (code, err) = run_into(sink, args);
    assert_eq!(code, 1, "{sink:?} regfs {args:?}: {err}");
    assert!(
        err.contains("regfs: error:")
            && err.contains("standard output")
            && !err.contains("panicked"),
        "{sink:?} regfs {args:?}: {err}"
    );
    err
}

/// A listing into a closed pipe: exit 0, nothing said of the pipe.
fn assert_quiet_end(args: &[&str]) {
    let (code, err) = run_into(Sink::ClosedPipe, args);
    assert_eq!(code, 0, "regfs {args:?} | head: {err}");
    assert!(
        !err.contains("error") && !err.contains("panicked") && !err.contains("ipe"),
        "regfs {args:?} | head: {err}"
    );
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn listings_end_quietly_at_a_closed_pipe_and_report_a_full_disk() {
    let dir = common::tempdir();
    let config = dir.path().join("regfs.toml");
    std::fs::write(&config, "storage = \"/srv/a\"\nmountpoint = \"/srv/b\"\n").unwrap();
    let store = dir.path().join("store");
    let b = StoreBuilder::new(&store);
    let garbage = b.blob(b"garbage");
    b.layer_link("r", &garbage);
    let state = s(&dir.path().join("state"));
    let (config, store) = (s(&config), s(&store));
    for sink in [Sink::ClosedPipe, Sink::Full] {
        for args in [
            vec!["completions", "bash"],
            vec!["man"],
            vec!["--help"],
            vec!["--version"],
            vec!["config", "check", &config],
            vec!["jobs", "/nonexistent", "--state-dir", &state],
            vec!["jobs", "/nonexistent", "--state-dir", &state, "--json"],
            vec!["gc", "--offline", "--dry-run", &store],
            vec!["gc", "--offline", "--dry-run", "--json", "--list", &store],
        ] {
            match sink {
                Sink::ClosedPipe => assert_quiet_end(&args),
                Sink::Full => drop(assert_clean_failure(sink, &args)),
            }
        }
    }
    assert!(b.has_blob(&garbage), "dry runs only");
}

#[test]
fn an_offline_run_whose_report_cannot_be_printed_still_says_what_it_deleted() {
    for sink in [Sink::ClosedPipe, Sink::Full] {
        let dir = common::tempdir();
        let b = StoreBuilder::new(dir.path());
        let garbage = b.blob(b"garbage");
        b.layer_link("r", &garbage);
        let err = assert_clean_failure(
            sink,
            &[
                "gc",
                "--offline",
                "--min-age",
                "0s",
                "--json",
                "--list",
                &s(dir.path()),
            ],
        );
        assert!(!b.has_blob(&garbage), "the run itself went through");
        // The log has the figures first; the error repeats them.
        assert!(err.contains("blobs_deleted=1"), "{err}");
        assert!(err.contains("1 blobs deleted"), "{err}");
    }
}

#[test]
fn commands_that_ask_the_daemon_report_a_closed_or_full_stdout() {
    let Some((dir, storage, mnt)) = common::daemon::fuse_dirs() else {
        return;
    };
    let b = StoreBuilder::new(&storage);
    let garbage = b.blob(b"garbage");
    b.layer_link("r", &garbage);
    let state = dir.path().join("state");
    let d = Daemon::start(&mnt, &state, &[&s(&storage), &s(&mnt)]);
    let (m, st) = (s(&mnt), s(&state));
    for args in [
        vec!["status", &m, "--state-dir", &st],
        vec!["status", &m, "--state-dir", &st, "--json"],
    ] {
        assert_quiet_end(&args);
        assert_clean_failure(Sink::Full, &args);
    }
    // A run started and followed into a closed pipe still runs and is recorded.
    let err = assert_clean_failure(Sink::ClosedPipe, &["gc", &m, "--state-dir", &st, "--wait"]);
    assert!(err.contains("GC job 1 started"), "{err}");
    let jobs = d.wait_for_jobs(1);
    assert_eq!(jobs[0]["report"]["blobs_deleted"], 1, "{jobs:?}");
    assert!(!b.has_blob(&garbage));
    let err = assert_clean_failure(Sink::Full, &["gc", &m, "--state-dir", &st, "--json"]);
    assert!(err.contains("GC job 2 started"), "{err}");
    d.wait_for_jobs(2);
    for args in [
        vec!["jobs", &m, "--state-dir", &st],
        vec!["jobs", &m, "--state-dir", &st, "--json"],
    ] {
        assert_quiet_end(&args);
        assert_clean_failure(Sink::Full, &args);
    }
}

#[test]
fn a_closed_or_full_stderr_is_no_panic_either() {
    let dir = common::tempdir();
    let b = StoreBuilder::new(dir.path());
    let garbage = b.blob(b"garbage");
    b.layer_link("r", &garbage);
    for sink in [Sink::ClosedPipe, Sink::Full] {
        // The log line of the run and the error both fail to be written.
        let out = Command::new(BIN)
            .args(["gc", "--offline", "--min-age", "0s", &s(dir.path())])
            .stdout(sink.stdio())
            .stderr(sink.stdio())
            .status()
            .unwrap();
        assert_eq!(out.code(), Some(1), "{sink:?}");
    }
    assert!(!b.has_blob(&garbage));
}

#[test]
fn a_daemon_whose_stderr_is_closed_keeps_serving_and_collecting() {
    let Some((dir, storage, mnt)) = common::daemon::fuse_dirs() else {
        return;
    };
    let b = StoreBuilder::new(&storage);
    let garbage = b.blob(b"garbage");
    b.layer_link("r", &garbage);
    let state = dir.path().join("state");
    // As under a journal that went away: every log line fails to be written.
    let child = Command::new(BIN)
        .args(["mount", &s(&storage), &s(&mnt), "--state-dir", &s(&state)])
        .args(["--gc-min-age", "0s"])
        .stderr(Sink::ClosedPipe.stdio())
        .spawn()
        .unwrap();
    let mut d = Daemon::adopt(child, &mnt, &state);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !state.join("control.sock").exists() {
        assert!(d.child.try_wait().unwrap().is_none(), "the daemon died");
        assert!(std::time::Instant::now() < deadline, "no control socket");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (code, out, err) = d.regfs(&["gc", &s(&mnt), "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!b.has_blob(&garbage));
    assert!(d.child.try_wait().unwrap().is_none(), "the daemon died");
    assert!(common::daemon::serving(&mnt));
}

//! The daemon under test, a `regfs mount` child with its log, driven through signals
//! and the CLI (`regfs gc`, `status`, `jobs`), and the helpers that wait on it and check
//! what its mount allows.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::common;
use crate::common::daemon::BIN;
use crate::fixture::Env;

/// A `regfs mount` child whose log is kept for assertions and failure messages.
pub struct Daemon {
    /// Kills the daemon and lazily unmounts on drop.
    pub guard: common::daemon::Daemon,
    pub log: Arc<Mutex<String>>,
}

impl Daemon {
    pub fn start(e: &Env, args: &[&str]) -> Daemon {
        Self::start_env(e, args, &[])
    }

    /// Starts `regfs mount` and returns once it serves: mounted, control socket up and
    /// signal handlers installed (it logs "serving" after all three).
    pub fn start_env(e: &Env, args: &[&str], vars: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(BIN);
        cmd.arg("mount")
            .arg(&e.storage)
            .arg(&e.mnt)
            .arg("--state-dir")
            .arg(&e.state)
            .args(args)
            .args(common::daemon::fresh_garbage_goes(args))
            .env("REGFS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn regfs mount");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("serving") {
                        let _ = tx.send(());
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let mut d = Daemon {
            guard: common::daemon::Daemon::adopt(child, &e.mnt, &e.state),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(()) => break,
                Err(_) => {
                    if let Some(st) = d.guard.child.try_wait().unwrap() {
                        thread::sleep(Duration::from_millis(50));
                        panic!("regfs mount exited ({st}) before serving:\n{}", d.log());
                    }
                    assert!(
                        Instant::now() < deadline,
                        "regfs mount did not start serving:\n{}",
                        d.log()
                    );
                }
            }
        }
        while !common::daemon::serving(&e.mnt) {
            assert!(
                Instant::now() < deadline,
                "mount did not appear:\n{}",
                d.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        assert!(d.is_running(), "exited after serving:\n{}", d.log());
        d
    }

    pub fn is_running(&mut self) -> bool {
        self.guard.child.try_wait().unwrap().is_none()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        assert!(self.guard.signal(sig), "kill({sig})");
    }

    /// `regfs <sub...> MOUNTPOINT --state-dir STATE <extra...>`.
    pub fn cli(&self, sub: &[&str], extra: &[&str]) -> Output {
        Command::new(BIN)
            .args(sub)
            .arg(&self.guard.mnt)
            .arg("--state-dir")
            .arg(&self.guard.state)
            .args(extra)
            .env("REGFS_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `cli` that must succeed; a failure shows its stderr and the daemon's log.
    pub fn cli_ok(&self, sub: &[&str], extra: &[&str]) -> Output {
        let out = self.cli(sub, extra);
        assert!(
            out.status.success(),
            "regfs {} {}: {}\ndaemon log:\n{}",
            sub.join(" "),
            extra.join(" "),
            text(&out.stderr),
            self.log()
        );
        out
    }

    pub fn status(&self) -> Value {
        let out = self.cli_ok(&["status"], &["--json"]);
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    pub fn jobs(&self) -> Vec<Value> {
        jobs_of(&self.guard.mnt, &self.guard.state, None)
    }

    /// `regfs gc` (no --wait); returns the job id it started.
    pub fn gc(&self) -> u64 {
        let out = self.cli_ok(&["gc"], &[]);
        started_id(&text(&out.stdout)).expect("`started GC job N`")
    }

    /// `regfs gc --wait --json`: the finished job.
    pub fn gc_wait(&self) -> Value {
        let out = self.cli_ok(&["gc"], &["--wait", "--json"]);
        serde_json::from_slice(&out.stdout).expect("job JSON from gc --wait --json")
    }

    /// The job `id` from the history, once it is there.
    pub fn wait_job(&self, id: u64, timeout: Duration) -> Value {
        wait_for(timeout, &format!("job {id} in the history"), || {
            self.jobs().into_iter().find(|j| j["id"] == id)
        })
        .unwrap_or_else(|e| panic!("{e}\ndaemon log:\n{}", self.log()))
    }

    /// Polls status until `pred` holds; returns that status.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_for(timeout, what, || Some(self.status()).filter(&pred))
            .unwrap_or_else(|e| panic!("{e}\nstatus: {:#}\nlog:\n{}", self.status(), self.log()))
    }

    /// Waits until the daemon has logged `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        wait_for(timeout, &format!("{needle:?} in the log"), || {
            self.log().contains(needle).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
    }

    /// Waits until job `id` holds the store read-only, waiting for writers to close.
    pub fn wait_closing(&self, id: u64) {
        self.wait_status(&format!("job {id} closing"), Duration::from_secs(5), |s| {
            s["state"] == "closing" && s["current_job"]["id"] == id
        });
    }

    /// Waits for the daemon to exit; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.guard.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {timeout:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn jobs_of(mnt: &Path, state: &Path, limit: Option<usize>) -> Vec<Value> {
    let mut cmd = Command::new(BIN);
    cmd.arg("jobs")
        .arg(mnt)
        .arg("--state-dir")
        .arg(state)
        .arg("--json");
    if let Some(n) = limit {
        cmd.args(["--limit", &n.to_string()]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "regfs jobs: {}", text(&out.stderr));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("jobs JSON array")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn started_id(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("started GC job "))
        .and_then(|n| n.trim().parse().ok())
}

pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

pub fn utc(v: &Value, what: &str) -> DateTime<Utc> {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {v}"));
    assert!(
        s.ends_with('Z') || s.ends_with("+00:00"),
        "{what} not UTC: {s}"
    );
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{what}: {s}: {e}"))
        .with_timezone(&Utc)
}

pub fn expect_erofs<T: std::fmt::Debug>(r: std::io::Result<T>, what: &str) {
    assert_eq!(
        common::errno(r, what),
        libc::EROFS,
        "{what} during the epoch"
    );
}

/// Opens (creating) a file that is not an upload for writing through the mount: an
/// epoch started while it is open waits for it (state "closing").
pub fn hold_writer(mnt: &Path) -> fs::File {
    fs::create_dir_all(mnt.join("scratch")).unwrap();
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(mnt.join("scratch/held"))
        .unwrap();
    f.write_all(b"held").unwrap();
    f
}

/// Every kind of write works through the mount.
pub fn assert_writable(mnt: &Path, tag: &str) {
    let d = mnt.join("scratch");
    fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{tag}: mkdir -p scratch: {e}"));
    let f = d.join(format!("w-{tag}"));
    fs::write(&f, b"w").unwrap_or_else(|e| panic!("{tag}: create: {e}"));
    let g = d.join(format!("w-{tag}-renamed"));
    fs::rename(&f, &g).unwrap_or_else(|e| panic!("{tag}: rename: {e}"));
    OpenOptions::new()
        .append(true)
        .open(&g)
        .and_then(|mut h| h.write_all(b"x"))
        .unwrap_or_else(|e| panic!("{tag}: open for writing: {e}"));
    assert_eq!(fs::read(&g).unwrap(), b"wx");
    fs::remove_file(&g).unwrap_or_else(|e| panic!("{tag}: unlink: {e}"));
    let sub = d.join(format!("dir-{tag}"));
    fs::create_dir(&sub).unwrap_or_else(|e| panic!("{tag}: mkdir: {e}"));
    fs::remove_dir(&sub).unwrap_or_else(|e| panic!("{tag}: rmdir: {e}"));
}

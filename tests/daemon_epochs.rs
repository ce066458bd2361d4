//! GC epochs in the daemon, driven as an operator drives them: `regfs mount` as a child
//! process, SIGUSR1/SIGUSR2/SIGTERM, `regfs gc`, `regfs gc stop`, `regfs status` and
//! `regfs jobs`. Each test has its own store, mount point and state directory, and a guard
//! that kills the daemon and detaches the mount whatever happens.
mod common;

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use common::store::StoreBuilder;
use regfs::layout::Digest;
use serde_json::Value;

use common::daemon::BIN;

// ---- places ------------------------------------------------------------------------

/// One test's directories: the backing store, the mount point and the state directory.
struct Env {
    storage: PathBuf,
    mnt: PathBuf,
    state: PathBuf,
    // Last, so the directories go after everything using them.
    _dir: tempfile::TempDir,
}

/// Fresh directories; `None` when FUSE is unavailable outside CI.
fn env() -> Option<Env> {
    let (dir, storage, mnt) = common::daemon::fuse_dirs()?;
    Some(Env {
        storage,
        mnt,
        state: dir.path().join("state"),
        _dir: dir,
    })
}

fn v2(storage: &Path) -> PathBuf {
    storage.join("docker/registry/v2")
}

fn blob_data(root: &Path, hex: &str) -> PathBuf {
    v2(root)
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// Writes a synthetic store of `blobs` blobs with scripts/gen-store.py; returns its
/// gen-store.json.
fn gen_store(storage: &Path, blobs: u32, garbage_fraction: f64, seed: u32) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gen-store.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(storage)
        .args(["--blobs", &blobs.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--garbage-fraction", &garbage_fraction.to_string()])
        .arg("--quiet")
        .output()
        .expect("python3 scripts/gen-store.py");
    assert!(
        out.status.success(),
        "gen-store.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&fs::read(storage.join("gen-store.json")).unwrap()).unwrap()
}

/// A store holding one tagged image (`app:v1`) and nothing to collect.
fn one_tagged_image(storage: &Path, salt: &str) {
    let b = StoreBuilder::new(storage);
    let (mf, _) = b.image("app", &[b.blob(b"l")], salt);
    b.tag("app", "v1", &mf);
}

// ---- the daemon ----------------------------------------------------------------------

/// A `regfs mount` child whose log is kept for assertions and failure messages.
struct Daemon {
    /// Kills the daemon and lazily unmounts on drop.
    guard: common::daemon::Daemon,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    fn start(e: &Env, args: &[&str]) -> Daemon {
        Self::start_env(e, args, &[])
    }

    /// Starts `regfs mount` and returns once it serves: mounted, control socket up and
    /// signal handlers installed (it logs "serving" after all three).
    fn start_env(e: &Env, args: &[&str], vars: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(BIN);
        cmd.arg("mount")
            .arg(&e.storage)
            .arg(&e.mnt)
            .arg("--state-dir")
            .arg(&e.state)
            .args(args)
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

    fn is_running(&mut self) -> bool {
        self.guard.child.try_wait().unwrap().is_none()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn signal(&self, sig: i32) {
        assert!(self.guard.signal(sig), "kill({sig})");
    }

    /// `regfs <sub...> MOUNTPOINT --state-dir STATE <extra...>`.
    fn cli(&self, sub: &[&str], extra: &[&str]) -> Output {
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
    fn cli_ok(&self, sub: &[&str], extra: &[&str]) -> Output {
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

    fn status(&self) -> Value {
        let out = self.cli_ok(&["status"], &["--json"]);
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    fn jobs(&self) -> Vec<Value> {
        jobs_of(&self.guard.mnt, &self.guard.state, None)
    }

    /// `regfs gc` (no --wait); returns the job id it started.
    fn gc(&self) -> u64 {
        let out = self.cli_ok(&["gc"], &[]);
        started_id(&text(&out.stdout)).expect("`started GC job N`")
    }

    /// `regfs gc --wait --json`: the finished job.
    fn gc_wait(&self) -> Value {
        let out = self.cli_ok(&["gc"], &["--wait", "--json"]);
        serde_json::from_slice(&out.stdout).expect("job JSON from gc --wait --json")
    }

    /// The job `id` from the history, once it is there.
    fn wait_job(&self, id: u64, timeout: Duration) -> Value {
        wait_for(timeout, &format!("job {id} in the history"), || {
            self.jobs().into_iter().find(|j| j["id"] == id)
        })
        .unwrap_or_else(|e| panic!("{e}\ndaemon log:\n{}", self.log()))
    }

    /// Polls status until `pred` holds; returns that status.
    fn wait_status(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(timeout, what, || Some(self.status()).filter(&pred))
            .unwrap_or_else(|e| panic!("{e}\nstatus: {:#}\nlog:\n{}", self.status(), self.log()))
    }

    /// Waits until the daemon has logged `needle`.
    fn wait_log(&self, needle: &str, timeout: Duration) {
        wait_for(timeout, &format!("{needle:?} in the log"), || {
            self.log().contains(needle).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
    }

    /// Waits until job `id` holds the store read-only, waiting for writers to close.
    fn wait_closing(&self, id: u64) {
        self.wait_status(&format!("job {id} closing"), Duration::from_secs(5), |s| {
            s["state"] == "closing" && s["current_job"]["id"] == id
        });
    }

    /// Waits for the daemon to exit; its exit code.
    fn wait_exit(&mut self, timeout: Duration) -> i32 {
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

fn jobs_of(mnt: &Path, state: &Path, limit: Option<usize>) -> Vec<Value> {
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

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn started_id(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("started GC job "))
        .and_then(|n| n.trim().parse().ok())
}

fn wait_for<T>(
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

fn utc(v: &Value, what: &str) -> DateTime<Utc> {
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

fn expect_erofs<T: std::fmt::Debug>(r: std::io::Result<T>, what: &str) {
    assert_eq!(
        common::errno(r, what),
        libc::EROFS,
        "{what} during the epoch"
    );
}

/// Opens (creating) a file that is not an upload for writing through the mount: an
/// epoch started while it is open waits for it (state "closing").
fn hold_writer(mnt: &Path) -> fs::File {
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
fn assert_writable(mnt: &Path, tag: &str) {
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

// ---- the store, checked on disk --------------------------------------------------------

/// Hex names of every blob directory.
fn blob_set(storage: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(fans) = fs::read_dir(v2(storage).join("blobs/sha256")) else {
        return out;
    };
    for fan in fans {
        let fan = fan.unwrap().path();
        for b in fs::read_dir(&fan).unwrap() {
            out.insert(b.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Every path under docker/, with file sizes.
fn listing(storage: &Path) -> Vec<(String, u64)> {
    StoreBuilder {
        root: storage.join("docker"),
    }
    .listing()
}

fn digests_named_by(manifest: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |d: &Value| {
        if let Some(s) = d.as_str() {
            out.push(s.to_string());
        }
    };
    push(&manifest["config"]["digest"]);
    for key in ["layers", "manifests", "blobs"] {
        for d in manifest[key].as_array().into_iter().flatten() {
            if d.get("urls").is_none() {
                push(&d["digest"]);
            }
        }
    }
    for d in manifest["fsLayers"].as_array().into_iter().flatten() {
        push(&d["blobSum"]);
    }
    out
}

/// What a stop must never leave behind: every blob directory has its data, every link
/// (layers, revisions, tags) names a blob that exists, and every blob a revision's
/// manifest names exists. Returns how many links were checked.
fn assert_consistent(storage: &Path) -> usize {
    for hex in blob_set(storage) {
        assert!(
            blob_data(storage, &hex).is_file(),
            "blob directory {hex} without its data file"
        );
    }
    let mut files = Vec::new();
    walk(&v2(storage).join("repositories"), &mut files);
    let mut links = 0;
    for f in files.iter().filter(|f| f.file_name().unwrap() == "link") {
        let body = fs::read(f).unwrap();
        let d = regfs::layout::parse_link(&body)
            .unwrap_or_else(|e| panic!("{}: damaged link: {e:?}", f.display()));
        let hex = d.hex();
        assert!(
            blob_data(storage, &hex).is_file(),
            "{} names blob {hex}, which is gone",
            f.display()
        );
        links += 1;
        if f.to_string_lossy().contains("/_manifests/revisions/") {
            let m: Value = serde_json::from_slice(&fs::read(blob_data(storage, &hex)).unwrap())
                .unwrap_or_else(|e| panic!("manifest {hex}: {e}"));
            for named in digests_named_by(&m) {
                let h = named.strip_prefix("sha256:").unwrap_or(&named);
                assert!(
                    blob_data(storage, h).is_file(),
                    "manifest {hex} (revision {}) names blob {h}, which is gone",
                    f.display()
                );
            }
        }
    }
    links
}

// ---- the tests ---------------------------------------------------------------------------

#[test]
fn sigusr1_starts_a_run_writes_fail_with_erofs_during_it_and_work_after() {
    let Some(e) = env() else { return };
    let b = StoreBuilder::new(&e.storage);
    let l1 = b.blob(b"layer one");
    let l2 = b.blob(b"layer two");
    let (manifest, config) = b.image("library/app", &[l1, l2], "a");
    b.tag("library/app", "latest", &manifest);
    let garbage: Vec<Digest> = (0..5)
        .map(|i| {
            let d = b.blob(format!("garbage blob {i}").as_bytes());
            if i % 2 == 0 {
                b.layer_link("library/app", &d);
            }
            d
        })
        .collect();
    let scratch = e.storage.join("scratch");
    fs::create_dir(&scratch).unwrap();
    fs::write(scratch.join("existing"), b"old").unwrap();
    fs::write(scratch.join("victim"), b"v").unwrap();

    let d = Daemon::start(&e, &["--drain-timeout", "30"]);
    let m = &e.mnt;
    let through = |d: &Digest| blob_data(m, &d.hex());
    // Look the garbage up through the mount, so the kernel has it cached.
    for g in &garbage {
        assert!(through(g).is_file());
    }
    let idle = d.status();
    assert_eq!(idle["state"], "idle");
    assert_eq!(idle["read_only"], false);

    let mut held = hold_writer(m);
    d.signal(libc::SIGUSR1);
    let st = d.wait_status("state closing", Duration::from_secs(5), |s| {
        s["state"] == "closing"
    });
    assert_eq!(st["read_only"], true, "{st:#}");
    let since = utc(&st["read_only_since"], "read_only_since");
    assert!((Utc::now() - since).num_seconds().abs() < 10, "{since}");
    let banner = st["banner"].as_str().expect("a banner while read-only");
    assert!(
        banner.to_lowercase().contains("read-only") && banner.contains("push"),
        "banner says pushes are refused: {banner}"
    );
    assert_eq!(st["current_job"]["id"], 1, "{st:#}");
    assert_eq!(st["current_job"]["trigger"], "signal", "{st:#}");

    // Writes are refused...
    expect_erofs(
        OpenOptions::new()
            .write(true)
            .open(m.join("scratch/existing")),
        "open for writing",
    );
    expect_erofs(fs::File::create(m.join("scratch/new")), "create");
    expect_erofs(fs::create_dir(m.join("scratch/newdir")), "mkdir");
    expect_erofs(fs::remove_file(m.join("scratch/victim")), "unlink");
    expect_erofs(
        fs::rename(m.join("scratch/victim"), m.join("scratch/moved")),
        "rename",
    );
    expect_erofs(
        fs::create_dir_all(v2(m).join("repositories/library/app/_uploads/u1")),
        "mkdir of an upload",
    );
    // ... reads work ...
    assert_eq!(
        fs::read(through(&manifest)).unwrap(),
        fs::read(blob_data(&e.storage, &manifest.hex())).unwrap()
    );
    assert_eq!(fs::read(m.join("scratch/existing")).unwrap(), b"old");
    assert_eq!(
        fs::read_dir(v2(m).join("repositories/library/app/_manifests/tags"))
            .unwrap()
            .count(),
        1,
        "listing works"
    );
    // ... and the writer the epoch waits for may still finish.
    held.write_all(b" and finished").unwrap();
    held.flush().unwrap();
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        d.status()["state"],
        "closing",
        "still waiting for the writer"
    );
    drop(held);

    let job = d.wait_job(1, Duration::from_secs(15));
    assert_eq!(job["trigger"], "signal", "{job:#}");
    assert_eq!(job["outcome"], "done", "{job:#}");
    assert!(job["error"].is_null(), "{job:#}");
    assert!(
        job["drain_seconds"].as_f64().unwrap() >= 0.15,
        "the epoch waited for the held writer: {job:#}"
    );
    assert_eq!(job["cut_writers"], serde_json::json!([]), "{job:#}");
    assert_eq!(job["report"]["blobs_deleted"], 5, "{job:#}");
    let started = utc(&job["started_at"], "started_at");
    let ended = utc(&job["ended_at"], "ended_at");
    assert!(started <= ended);
    assert_eq!(
        fs::read(m.join("scratch/held")).unwrap(),
        b"held and finished"
    );

    for g in &garbage {
        assert!(
            !blob_data(&e.storage, &g.hex()).exists(),
            "garbage {g} gone"
        );
        assert!(
            fs::metadata(through(g)).is_err(),
            "garbage {g} gone through the mount too"
        );
    }
    assert!(
        !b.repo("library/app/_layers/sha256")
            .join(garbage[0].hex())
            .exists()
    );
    for live in [manifest, config, l1, l2] {
        assert!(b.has_blob(&live), "live blob {live} kept");
        assert!(through(&live).is_file());
    }
    assert_consistent(&e.storage);

    let st = d.status();
    assert_eq!(st["state"], "idle", "{st:#}");
    assert_eq!(st["read_only"], false, "{st:#}");
    assert!(st["banner"].is_null(), "{st:#}");
    assert!(st["current_job"].is_null(), "{st:#}");
    assert_eq!(st["last_job"]["id"], 1, "{st:#}");
    assert_writable(m, "after");
    fs::write(m.join("scratch/existing"), b"new").unwrap();
    fs::remove_file(m.join("scratch/victim")).unwrap();
}

#[test]
fn a_six_field_schedule_fires_at_the_right_utc_second() {
    let Some(e) = env() else { return };
    one_tagged_image(&e.storage, "s");
    let target = Utc::now().with_nanosecond(0).unwrap() + chrono::Duration::seconds(4);
    let expr = format!(
        "{} {} {} * * *",
        target.second(),
        target.minute(),
        target.hour()
    );
    // UTC+14: a daemon that read the schedule in local time would be 14 hours off.
    let d = Daemon::start_env(
        &e,
        &["--gc-schedule", &expr],
        &[("TZ", "Pacific/Kiritimati")],
    );
    let st = d.status();
    assert!(
        Utc::now() < target,
        "the daemon took too long to start; test setup"
    );
    assert_eq!(st["schedule"], expr.as_str(), "{st:#}");
    assert_eq!(
        utc(&st["next_run"], "next_run"),
        target,
        "next_run is the scheduled UTC second: {st:#}"
    );
    assert!(st["current_job"].is_null());

    let job = d.wait_job(1, Duration::from_secs(8));
    assert_eq!(job["trigger"], "schedule", "{job:#}");
    assert_eq!(job["outcome"], "done", "{job:#}");
    let started = utc(&job["started_at"], "started_at");
    let late = started - target;
    assert!(
        late >= chrono::Duration::zero() && late < chrono::Duration::milliseconds(1000),
        "scheduled for {target}, started at {started} ({} ms late)",
        late.num_milliseconds()
    );
    // The next run is the same time tomorrow.
    let st = d.status();
    assert_eq!(
        utc(&st["next_run"], "next_run"),
        target + chrono::Duration::days(1),
        "{st:#}"
    );
}

#[test]
fn never_refuses_triggers() {
    let Some(e) = env() else { return };
    let b = StoreBuilder::new(&e.storage);
    let g = b.blob(b"garbage");
    // A schedule that would fire every second, to show it does not either.
    let mut d = Daemon::start(
        &e,
        &["--gc-duration", "never", "--gc-schedule", "* * * * * *"],
    );
    let st = d.status();
    assert_eq!(st["settings"]["duration"], "never", "{st:#}");
    assert!(st["next_run"].is_null(), "no run is scheduled: {st:#}");

    d.signal(libc::SIGUSR1);
    // The refusal.
    d.wait_log("SIGUSR1", Duration::from_secs(5));
    assert!(
        d.log().contains("disabled"),
        "SIGUSR1 refusal says GC is disabled:\n{}",
        d.log()
    );
    assert!(d.is_running(), "SIGUSR1 must not kill the daemon");

    let out = d.cli(&["gc"], &[]);
    assert_eq!(out.status.code(), Some(1), "regfs gc exits 1");
    let err = text(&out.stderr);
    assert!(err.contains("GC is disabled"), "{err}");
    assert!(
        !text(&out.stdout).contains("started"),
        "{}",
        text(&out.stdout)
    );
    let out = d.cli(&["gc"], &["--wait"]);
    assert_eq!(out.status.code(), Some(1), "regfs gc --wait exits 1");

    thread::sleep(Duration::from_millis(1500));
    assert!(d.jobs().is_empty(), "no job recorded: {:?}", d.jobs());
    assert!(!e.state.join("running.json").exists());
    let st = d.status();
    assert_eq!(st["state"], "idle");
    assert!(
        st["current_job"].is_null() && st["last_job"].is_null(),
        "{st:#}"
    );
    assert!(b.has_blob(&g), "nothing collected");
    assert_writable(&e.mnt, "never");
    assert!(d.is_running(), "the daemon still serves");
}

#[test]
fn a_time_limit_shorter_than_the_mark_phase_deletes_nothing() {
    let Some(e) = env() else { return };
    let meta = gen_store(&e.storage, 5_000, 0.2, 11);
    assert!(meta["expected_deleted_blobs"]["default"].as_u64().unwrap() > 500);
    let before = listing(&e.storage);
    let blobs_before = blob_set(&e.storage);
    let d = Daemon::start(&e, &["--gc-duration", "20ms"]);
    assert_eq!(d.status()["settings"]["duration"], "20ms");
    let job = d.gc_wait();
    assert_eq!(job["id"], 1, "{job:#}");
    assert_eq!(job["outcome"], "time_limit", "{job:#}");
    assert_eq!(job["ended_in"], "mark", "{job:#}");
    if !job["report"].is_null() {
        assert_eq!(job["report"]["blobs_deleted"], 0, "{job:#}");
    }
    let recorded = d.wait_job(1, Duration::from_secs(5));
    assert_eq!(recorded["outcome"], "time_limit");
    assert_eq!(recorded["ended_in"], "mark");
    assert_eq!(blob_set(&e.storage), blobs_before, "no blob deleted");
    assert!(listing(&e.storage) == before, "nothing at all changed");
    let st = d.status();
    assert_eq!(st["read_only"], false, "{st:#}");
    assert_eq!(st["state"], "idle", "{st:#}");
    assert_writable(&e.mnt, "after-time-limit");
}

#[test]
fn stop_during_the_sweep_leaves_a_consistent_store_and_a_writable_mount() {
    let Some(e) = env() else { return };
    let meta = gen_store(&e.storage, 5_000, 0.9, 5);
    let garbage = meta["expected_deleted_blobs"]["default"].as_u64().unwrap() as usize;
    assert!(
        meta["layer_links"].as_u64().unwrap() > 3000,
        "garbage with _layers links"
    );
    let before = blob_set(&e.storage);
    assert!(assert_consistent(&e.storage) > 3000, "a consistent start");

    let d = Daemon::start(&e, &[]);
    let id = d.gc();
    assert_eq!(id, 1);
    let st = d.wait_status("sweeping with some done", Duration::from_secs(20), |s| {
        s["state"] == "sweeping" && s["progress"]["done"].as_u64().unwrap_or(0) >= 200
    });
    assert_eq!(st["progress"]["phase"], "sweep", "{st:#}");
    assert_eq!(st["read_only"], true, "{st:#}");
    let asked = Instant::now();
    let out = d.cli_ok(&["gc", "stop"], &[]);
    assert!(text(&out.stdout).contains('1'), "{}", text(&out.stdout));
    let job = d.wait_job(1, Duration::from_secs(10));
    let took = asked.elapsed();
    assert!(
        took < Duration::from_millis(2000),
        "stopped {took:?} after the request"
    );
    assert_eq!(job["outcome"], "stopped", "{job:#}");
    assert_eq!(job["ended_in"], "sweep", "{job:#}");
    let st = d.status();
    assert_eq!(st["state"], "idle", "{st:#}");
    assert_eq!(st["read_only"], false, "{st:#}");

    let after = blob_set(&e.storage);
    let deleted = before.len() - after.len();
    assert!(after.is_subset(&before));
    assert!(
        deleted > 0 && deleted < garbage,
        "some but not all garbage deleted: {deleted} of {garbage}"
    );
    assert_eq!(
        job["report"]["blobs_deleted"].as_u64(),
        Some(deleted as u64),
        "the report counts what went: {job:#}"
    );
    assert_consistent(&e.storage);
    assert_writable(&e.mnt, "after-stop");
    // The stop answer with nothing running.
    let out = d.cli(&["gc", "stop"], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no GC run"),
        "{}",
        text(&out.stderr)
    );

    let job2 = d.gc_wait();
    assert_eq!(job2["id"], 2, "{job2:#}");
    assert_eq!(job2["outcome"], "done", "{job2:#}");
    assert_eq!(
        job2["report"]["blobs_deleted"].as_u64(),
        Some((garbage - deleted) as u64),
        "{job2:#}"
    );
    assert_eq!(blob_set(&e.storage).len(), before.len() - garbage);
    assert_consistent(&e.storage);
    assert_writable(&e.mnt, "after-second-run");
}

#[test]
fn status_and_history_are_right_and_survive_a_restart() {
    let Some(e) = env() else { return };
    let b = StoreBuilder::new(&e.storage);
    let (mf, _) = b.image("team/web", &[b.blob(b"web layer")], "w");
    b.tag("team/web", "latest", &mf);
    let g1 = b.blob(b"first garbage");
    b.layer_link("team/web", &g1);
    let flags = [
        "--delete-untagged",
        "--upload-max-age",
        "2h",
        "--drain-timeout",
        "5",
    ];
    let mut d = Daemon::start(&e, &flags);
    let expected_settings = serde_json::json!({
        "duration": "until-done",
        "delete_untagged": true,
        "dry_run": false,
        "upload_max_age": "2h",
        "drain_timeout": "5s",
    });
    let st = d.status();
    assert_eq!(st["settings"], expected_settings, "{st:#}");
    assert!(st["last_job"].is_null() && st["schedule"].is_null() && st["next_run"].is_null());
    assert!(d.jobs().is_empty());

    let out = d.cli_ok(&["gc"], &["--wait"]);
    assert_eq!(
        started_id(&text(&out.stdout)),
        Some(1),
        "{}",
        text(&out.stdout)
    );
    d.signal(libc::SIGUSR1);
    d.wait_job(2, Duration::from_secs(10));

    let jobs = d.jobs();
    assert_eq!(jobs.len(), 2, "{jobs:#?}");
    let check = |jobs: &[Value]| {
        assert_eq!(jobs[0]["id"], 1);
        assert_eq!(jobs[1]["id"], 2);
        assert_eq!(jobs[0]["trigger"], "cli");
        assert_eq!(jobs[1]["trigger"], "signal");
        let mut last_end = None;
        for j in &jobs[..2] {
            assert_eq!(j["outcome"], "done", "{j:#}");
            assert_eq!(j["settings"], expected_settings, "{j:#}");
            assert!(j["read_only_seconds"].as_f64().unwrap() >= 0.0);
            assert!(j["drain_seconds"].as_f64().unwrap() >= 0.0);
            let s = utc(&j["started_at"], "started_at");
            let en = utc(&j["ended_at"], "ended_at");
            assert!(s <= en, "{j:#}");
            if let Some(prev) = last_end {
                assert!(
                    prev <= s,
                    "job {} started before the previous ended",
                    j["id"]
                );
            }
            last_end = Some(en);
        }
        assert_eq!(jobs[0]["report"]["blobs_deleted"], 1, "{:#}", jobs[0]);
        assert_eq!(jobs[1]["report"]["blobs_deleted"], 0, "{:#}", jobs[1]);
    };
    check(&jobs);
    let last = jobs_of(&e.mnt, &e.state, Some(1));
    assert_eq!(last.len(), 1);
    assert_eq!(last[0]["id"], 2);
    assert_eq!(jobs_of(&e.mnt, &e.state, Some(5)).len(), 2);
    let st = d.status();
    assert_eq!(st["last_job"]["id"], 2, "{st:#}");
    assert_eq!(st["last_job"]["outcome"], "done", "{st:#}");
    // Human-readable listings say the same.
    let out = d.cli(&["jobs"], &[]);
    let listing = text(&out.stdout);
    assert!(
        listing.contains("job 1 (cli") && listing.contains("job 2 (signal"),
        "{listing}"
    );

    // Restart on the same state directory.
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)), 0, "{}", d.log());
    drop(d);
    let mut d = Daemon::start(&e, &flags);
    check(&d.jobs());
    assert_eq!(d.status()["last_job"]["id"], 2);
    assert_eq!(d.gc(), 3, "ids continue after a restart");
    let j3 = d.wait_job(3, Duration::from_secs(10));
    assert_eq!(j3["outcome"], "done");

    // SIGUSR2 stops a run safely: recorded as stopped, nothing deleted, writable again.
    let g2 = b.blob(b"second garbage");
    let held = hold_writer(&e.mnt);
    assert_eq!(d.gc(), 4);
    d.wait_closing(4);
    let asked = Instant::now();
    d.signal(libc::SIGUSR2);
    let j4 = d.wait_job(4, Duration::from_secs(5));
    assert!(
        asked.elapsed() < Duration::from_millis(1500),
        "SIGUSR2 took {:?}",
        asked.elapsed()
    );
    assert_eq!(j4["outcome"], "stopped", "{j4:#}");
    assert_eq!(j4["ended_in"], "mark", "{j4:#}");
    assert!(
        b.has_blob(&g2),
        "a run stopped before its sweep deletes nothing"
    );
    let st = d.status();
    assert!(st["state"] == "idle" && st["read_only"] == false, "{st:#}");
    assert_writable(&e.mnt, "after-sigusr2");
    drop(held);
    assert_eq!(job_ids(&e), vec![1, 2, 3, 4]);

    // A daemon killed mid-run: the run is recorded as interrupted at the next start.
    let held = hold_writer(&e.mnt);
    assert_eq!(d.gc(), 5);
    d.wait_closing(5);
    assert!(
        e.state.join("running.json").exists(),
        "running.json while a job runs"
    );
    // Let it run a while, and note a moment it was still running.
    thread::sleep(Duration::from_millis(1500));
    let seen_running = Utc::now();
    let st = d.status();
    assert!(
        st["state"] == "closing" && st["current_job"]["id"] == 5,
        "{st:#}"
    );
    d.guard.child.kill().unwrap();
    d.guard.child.wait().unwrap();
    drop(held);
    drop(d);
    assert_eq!(
        job_ids(&e),
        vec![1, 2, 3, 4],
        "not recorded until the next start"
    );
    let d = Daemon::start(&e, &flags);
    let jobs = d.jobs();
    assert_eq!(jobs.len(), 5, "{jobs:#?}");
    check(&jobs);
    let j5 = &jobs[4];
    assert_eq!(j5["id"], 5, "{j5:#}");
    assert_eq!(j5["outcome"], "interrupted", "{j5:#}");
    assert_eq!(j5["trigger"], "cli", "{j5:#}");
    assert!(j5["error"].is_string(), "{j5:#}");
    assert!(!e.state.join("running.json").exists());
    assert!(
        d.log().contains("interrupted"),
        "the start says so:\n{}",
        d.log()
    );
    assert_eq!(d.status()["last_job"]["id"], 5);
    let j6 = d.gc_wait();
    assert_eq!(j6["id"], 6, "{j6:#}");
    assert_eq!(j6["outcome"], "done", "{j6:#}");
    assert_writable(&e.mnt, "after-restarts");
    // Last, as these fail today. The interrupted job did not end before a moment it was
    // seen running (a second's slack for a daemon that only notes a sign of life now and
    // then), and certainly not before it started.
    let (started, ended) = (
        utc(&j5["started_at"], "started_at"),
        utc(&j5["ended_at"], "ended_at"),
    );
    assert!(
        ended >= seen_running - chrono::Duration::seconds(1),
        "job 5 was running at {seen_running} (status said so) but is recorded as ended at \
         {ended}: {j5:#}"
    );
    assert!(
        started <= ended,
        "an interrupted job ends after it started: {j5:#}"
    );
}

fn job_ids(e: &Env) -> Vec<u64> {
    jobs_of(&e.mnt, &e.state, None)
        .iter()
        .map(|j| j["id"].as_u64().unwrap())
        .collect()
}

/// Two threads that each run `regfs gc` as soon as `go` releases them (its other
/// waiters, if any, are the caller's).
fn racing_gcs(e: &Env, go: &Arc<Barrier>) -> Vec<thread::JoinHandle<Output>> {
    (0..2)
        .map(|_| {
            let go = go.clone();
            let (mnt, state) = (e.mnt.clone(), e.state.clone());
            thread::spawn(move || {
                go.wait();
                Command::new(BIN)
                    .arg("gc")
                    .arg(&mnt)
                    .arg("--state-dir")
                    .arg(&state)
                    .output()
                    .unwrap()
            })
        })
        .collect()
}

fn join_all(callers: Vec<thread::JoinHandle<Output>>) -> Vec<Output> {
    callers.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn two_triggers_at_once_produce_one_run() {
    let Some(e) = env() else { return };
    one_tagged_image(&e.storage, "t");
    let d = Daemon::start(&e, &["--drain-timeout", "30"]);
    // The first run holds the epoch open until the writer closes, so whichever trigger
    // wins, the others meet a run in progress.
    let held = hold_writer(&e.mnt);
    let go = Arc::new(Barrier::new(3));
    let callers = racing_gcs(&e, &go);
    go.wait();
    d.signal(libc::SIGUSR1);
    let outs = join_all(callers);
    // Its outcome, whichever it is.
    d.wait_log("SIGUSR1:", Duration::from_secs(5));

    let mut started = vec![];
    for o in &outs {
        let (out, err) = (text(&o.stdout), text(&o.stderr));
        if o.status.success() {
            started.push(started_id(&out).expect(&out));
        } else {
            assert_eq!(o.status.code(), Some(1), "{err}");
            assert!(
                err.contains("GC job 1 is already running"),
                "the loser is told job 1 runs: {err}"
            );
        }
    }
    let signal_won = d.log().contains("SIGUSR1: GC run started");
    assert_eq!(
        started.len() + signal_won as usize,
        1,
        "exactly one trigger started a run; CLI: {started:?}, signal: {signal_won}\n{}",
        d.log()
    );
    if !signal_won {
        assert_eq!(started, vec![1]);
        assert!(
            d.log().contains("SIGUSR1: GC job 1 is already running"),
            "{}",
            d.log()
        );
    }
    let st = d.status();
    assert_eq!(st["current_job"]["id"], 1, "{st:#}");
    drop(held);
    let job = d.wait_job(1, Duration::from_secs(10));
    assert_eq!(job["outcome"], "done", "{job:#}");
    assert_eq!(
        job["trigger"],
        if signal_won { "signal" } else { "cli" },
        "{job:#}"
    );
    thread::sleep(Duration::from_millis(300));
    let jobs = d.jobs();
    assert_eq!(jobs.len(), 1, "exactly one job recorded: {jobs:#?}");
    let st = d.status();
    assert!(st["current_job"].is_null(), "{st:#}");

    // Two `regfs gc` at once against an idle daemon: one run again.
    let held = hold_writer(&e.mnt);
    let outs = join_all(racing_gcs(&e, &Arc::new(Barrier::new(2))));
    let ok: Vec<_> = outs.iter().filter(|o| o.status.success()).collect();
    assert_eq!(ok.len(), 1, "one of two parallel `regfs gc` starts a run");
    assert_eq!(started_id(&text(&ok[0].stdout)), Some(2));
    let loser = outs.iter().find(|o| !o.status.success()).unwrap();
    assert!(
        text(&loser.stderr).contains("GC job 2 is already running"),
        "{}",
        text(&loser.stderr)
    );
    drop(held);
    d.wait_job(2, Duration::from_secs(10));
    thread::sleep(Duration::from_millis(300));
    assert_eq!(d.jobs().len(), 2, "{:#?}", d.jobs());
}

#[test]
fn sigterm_during_a_run_stops_it_then_unmounts_and_exits_zero() {
    let Some(e) = env() else { return };
    let meta = gen_store(&e.storage, 4_000, 0.9, 8);
    let garbage = meta["expected_deleted_blobs"]["default"].as_u64().unwrap() as usize;
    let before = blob_set(&e.storage);
    let mut d = Daemon::start(&e, &[]);
    assert_eq!(d.gc(), 1);
    d.wait_status("sweeping", Duration::from_secs(20), |s| {
        s["state"] == "sweeping" && s["progress"]["done"].as_u64().unwrap_or(0) >= 50
    });
    let asked = Instant::now();
    d.signal(libc::SIGTERM);
    let code = d.wait_exit(Duration::from_secs(10));
    let took = asked.elapsed();
    assert_eq!(code, 0, "exit code after SIGTERM:\n{}", d.log());
    assert!(
        took < Duration::from_secs(3),
        "exited {took:?} after SIGTERM"
    );
    assert!(
        regfs::mount::mount_at(&e.mnt).is_none_or(|m| !m.fstype.starts_with("fuse")),
        "unmounted"
    );
    let jobs = jobs_of(&e.mnt, &e.state, None);
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    assert_eq!(jobs[0]["outcome"], "stopped", "{:#}", jobs[0]);
    assert_eq!(jobs[0]["ended_in"], "sweep", "{:#}", jobs[0]);
    assert!(
        !e.state.join("running.json").exists(),
        "the run was recorded as ended, not left running"
    );
    let deleted = before.len() - blob_set(&e.storage).len();
    assert!(
        deleted > 0 && deleted < garbage,
        "{deleted} of {garbage} deleted"
    );
    assert_consistent(&e.storage);
    let log = d.log();
    assert!(log.contains("stopping"), "{log}");
}

#[test]
fn an_invalid_schedule_is_refused_at_start() {
    for (expr, hints) in [
        ("61 * * * *", &["61", "inute"][..]),
        ("* * *", &["3 fields"][..]),
        ("0 3 * * 8", &["day of week"][..]),
        ("0 0 0 30 2 * *", &["never fires"][..]),
        // Must say what is wrong: unknown shorthand, and which ones exist.
        ("@fortnightly", &["@hourly"][..]),
    ] {
        let Some(e) = env() else { return };
        let child = Command::new(BIN)
            .arg("mount")
            .arg(&e.storage)
            .arg(&e.mnt)
            .arg("--state-dir")
            .arg(&e.state)
            .args(["--gc-schedule", expr])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Kills it and detaches whatever it mounted, however the checks end.
        let mut d = common::daemon::Daemon::adopt(child, &e.mnt, &e.state);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = d.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() <= deadline,
                "regfs mount --gc-schedule {expr:?} kept running"
            );
            thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut d.child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(1), "{expr}: {err}");
        assert!(err.contains(expr), "{expr:?}: the message names it: {err}");
        assert!(err.contains("--gc-schedule"), "{expr:?}: {err}");
        for h in hints {
            assert!(
                err.contains(h),
                "{expr:?}: says what is wrong ({h:?}): {err}"
            );
        }
        // Checked before the guard detaches anything, so that a mount left behind shows.
        assert!(
            regfs::mount::mount_at(&e.mnt).is_none(),
            "{expr}: nothing mounted"
        );
    }
}

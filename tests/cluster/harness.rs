//! A real etcd on 127.0.0.1 at free ports with its own data directory, stopped by its
//! pid; and cluster nodes: `regfs mount` children over one backing directory, each at
//! its own mount point, with their logs.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common;
use crate::common::daemon::BIN;

/// The lease TTL every test node runs with.
pub const TTL: Duration = Duration::from_secs(2);

/// The prerequisites (FUSE, root, etcd; under CI=true a missing one fails the test),
/// then this binary's one-test-at-a-time lock: the tests bound failover times with 2 s
/// leases, which nine clusters at once on two cores would blur.
pub fn cluster_test() -> Option<MutexGuard<'static, ()>> {
    static ONE: Mutex<()> = Mutex::new(());
    let met = common::fuse_available()
        && common::prereq::Needs::new()
            .on_path(&["etcd", "python3"])
            .met("cluster tests need etcd (apt-get install -y etcd-server)");
    met.then(|| ONE.lock().unwrap_or_else(|e| e.into_inner()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd server, killed on drop.
pub struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    peer: u16,
    pub url: String,
}

impl Etcd {
    pub fn start(dir: &Path) -> Etcd {
        let (client, peer) = (free_port(), free_port());
        let mut e = Etcd {
            child: None,
            dir: dir.join("etcd"),
            peer,
            url: format!("http://127.0.0.1:{client}"),
        };
        e.run();
        e
    }

    /// Starts (again) on the same ports and data; returns once it answers.
    pub fn run(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .unwrap();
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let child = Command::new("etcd")
            .arg("--name=t")
            .arg(format!("--data-dir={}", self.dir.display()))
            .arg(format!("--listen-client-urls={}", self.url))
            .arg(format!("--advertise-client-urls={}", self.url))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=t={peer}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "etcd did not start: {}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn answers(&self) -> bool {
        let etcd = regfs::cluster::etcd::Etcd::new(
            std::slice::from_ref(&self.url),
            Duration::from_millis(500),
        )
        .unwrap();
        etcd.get("/probe").is_ok()
    }

    /// Kills it (SIGKILL, by pid) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One node: `regfs mount STORAGE MNT` in cluster mode, killed and unmounted on drop.
pub struct Node {
    pub name: String,
    pub guard: common::daemon::Daemon,
    pub log: Arc<Mutex<String>>,
}

impl Node {
    /// Starts node `name` over `storage` at `dir/<name>` and returns once it serves.
    pub fn start(dir: &Path, storage: &Path, etcd: &Etcd, name: &str, args: &[&str]) -> Node {
        let mnt = dir.join(name);
        let state = dir.join(format!("{name}.state"));
        fs::create_dir_all(&mnt).unwrap();
        let mut child = Command::new(BIN)
            .arg("mount")
            .arg(storage)
            .arg(&mnt)
            .arg("--state-dir")
            .arg(&state)
            .args(["--cluster-endpoints", &etcd.url, "--cluster-node", name])
            .args(["--cluster-lease-ttl", &format!("{}s", TTL.as_secs())])
            .args(["--gc-min-age", "0s"])
            .args(args)
            .env("REGFS_LOG", "info")
            // Two sweep workers: at most two deletions in flight when a test freezes one.
            .env("REGFS_GC_THREADS", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn regfs mount");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let l = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = l.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let node = Node {
            name: name.into(),
            guard: common::daemon::Daemon::adopt(child, &mnt, &state),
            log,
        };
        node.wait_log("serving", Duration::from_secs(15));
        node
    }

    pub fn mnt(&self) -> &Path {
        &self.guard.mnt
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log says `what`.
    pub fn wait_log(&self, what: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log().contains(what) {
            if let Ok(Some(st)) = self.guard.child.try_wait_ref() {
                panic!("{} exited ({st}):\n{}", self.name, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {what:?} in the log:\n{}",
                self.name,
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// `regfs ARGS... --state-dir STATE`.
    pub fn regfs(&self, args: &[&str]) -> (i32, String, String) {
        self.guard.regfs(args)
    }

    /// Triggers a run here (`regfs gc MNT`): the exit code and what it said.
    pub fn gc(&self) -> (i32, String) {
        let mnt = self.mnt().display().to_string();
        let (code, out, err) = self.regfs(&["gc", &mnt]);
        (code, format!("{out}{err}"))
    }

    pub fn status(&self) -> Value {
        self.guard.status()
    }

    pub fn jobs(&self) -> Vec<Value> {
        let mnt = self.mnt().display().to_string();
        let (code, out, err) = self.regfs(&["jobs", &mnt, "--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    }

    /// Waits until this node has recorded `n` jobs that ended; returns them.
    pub fn wait_jobs(&self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let jobs = self.jobs();
            if jobs.len() >= n {
                return jobs;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {n} jobs not recorded: {jobs:#?}\n{}",
                self.name,
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether a new file can be made here now (false: EROFS; anything else fails).
    pub fn writable(&self) -> bool {
        let probe = self.mnt().join(format!("probe-{}", self.name));
        match fs::File::create(&probe) {
            Ok(_) => {
                // The gate may close between the two: the probe then stays till next time.
                match fs::remove_file(&probe) {
                    Err(e) if e.raw_os_error() != Some(libc::EROFS) => {
                        panic!("{}: removing {}: {e}", self.name, probe.display())
                    }
                    _ => true,
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => false,
            Err(e) => panic!("{}: creating {}: {e}", self.name, probe.display()),
        }
    }

    /// Waits until writable is `want`; how long it took.
    pub fn wait_writable(&self, want: bool, within: Duration) -> Duration {
        let start = Instant::now();
        while self.writable() != want {
            assert!(
                start.elapsed() < within,
                "{}: writable != {want} after {within:?}:\n{}",
                self.name,
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
        start.elapsed()
    }

    /// SIGKILL, and waits for it.
    pub fn kill9(&mut self) {
        self.guard.child.kill().unwrap();
        self.guard.child.wait().unwrap();
    }
}

/// `try_wait` through a shared reference.
trait TryWaitRef {
    fn try_wait_ref(&self) -> std::io::Result<Option<std::process::ExitStatus>>;
}

impl TryWaitRef for Child {
    fn try_wait_ref(&self) -> std::io::Result<Option<std::process::ExitStatus>> {
        // /proc/PID/stat says Z (zombie) once it has exited; not reaped here.
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.id()))?;
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        if state.starts_with('Z') {
            use std::os::unix::process::ExitStatusExt;
            return Ok(Some(std::process::ExitStatus::from_raw(0)));
        }
        Ok(None)
    }
}

/// A synthetic store of `blobs` blobs (scripts/gen-store.py); its gen-store.json.
pub fn gen_store(storage: &Path, blobs: u32, seed: u32) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gen-store.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(storage)
        .args(["--blobs", &blobs.to_string(), "--seed", &seed.to_string()])
        .args(["--garbage-fraction", "0.5", "--quiet"])
        .output()
        .expect("python3 scripts/gen-store.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&fs::read(storage.join("gen-store.json")).unwrap()).unwrap()
}

/// Every blob directory's name (hex).
pub fn blob_set(storage: &Path) -> std::collections::BTreeSet<String> {
    let root = storage.join("docker/registry/v2/blobs/sha256");
    let mut out = std::collections::BTreeSet::new();
    for prefix in fs::read_dir(&root).into_iter().flatten().flatten() {
        for blob in fs::read_dir(prefix.path()).into_iter().flatten().flatten() {
            out.insert(blob.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// The first layer link file of the store (relative to the store).
pub fn a_layer_link(storage: &Path) -> PathBuf {
    let repos = storage.join("docker/registry/v2/repositories");
    let mut stack = vec![repos];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            if p.ends_with("link") && p.to_string_lossy().contains("/_layers/") {
                return p.strip_prefix(storage).unwrap().to_path_buf();
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    panic!("no layer link in {}", storage.display())
}

/// The first blob's data file (relative to the store).
pub fn a_blob(storage: &Path) -> PathBuf {
    let hex = blob_set(storage).into_iter().next().expect("a blob");
    PathBuf::from("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(&hex)
        .join("data")
}

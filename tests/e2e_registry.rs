//! End to end: Debian's docker-registry (distribution 2.8) serves its store through a regfs
//! mount, real skopeo pushes and pulls images, and a GC epoch started with SIGUSR1 races
//! pulls and pushes. Nothing leaves the machine: images are generated locally
//! (`scripts/oci-images.py`), the registry listens on 127.0.0.1.
//!
//! - The registry runs as its own non-root user (`docker-registry`, as Debian runs it; a
//!   dedicated system user is created if the package's is missing), over the mount.
//! - skopeo runs as `nobody` with a private HOME/TMPDIR/XDG tree, so its blob-info cache
//!   lives in the test's directory (as root it would share /var/lib/containers/cache).
//! - The epoch is held in its "closing" state (writes refused) by an in-place writer kept
//!   open through the mount (a plain file at the store's root, which the registry never
//!   uses) with a generous `--drain-timeout`. While `regfs status` says read-only, pushes
//!   are attempted (they must fail, the registry logging EROFS) and pulls must succeed; a
//!   loop of pulls runs through the whole epoch.
//! - Afterwards: the refused pushes succeed, every kept image pulls and verifies, exactly
//!   the unreferenced blobs are gone (and the job record says so), every link file is
//!   whole, and neither the registry nor the daemon logged an error other than the refused
//!   writes (and fuser's interrupt race, see [`FUSER_INTERRUPT_RACE`]).
//!
//! Prerequisites: root, /dev/fuse, python3, docker-registry, skopeo. Under CI=true a
//! missing one fails the test; elsewhere the test says why and returns.
//! `REGFS_E2E_KEEP=1` keeps each test's directory (store, registry and daemon logs).
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::describe_output;
use common::prereq::Needs;
use common::store::well_formed_link;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_regfs");
const V2: &str = "docker/registry/v2";
/// The in-place writer that holds the epoch open (outside `docker/`: the collector and
/// the registry never look at it).
const HOLDER: &str = "regfs-e2e-epoch-holder";
/// How long the epoch is held in "closing" at least.
const HOLD: Duration = Duration::from_secs(3);
/// The drain timeout the daemon runs with: far longer than the hold.
const DRAIN_TIMEOUT: &str = "60";
const EROFS_TEXT: &str = "read-only file system";
/// The one ERROR line the daemon may log. The registry is a Go program, whose threads get
/// signals (most likely the runtime's preemption signal, SIGURG); one that arrives while a
/// thread waits on a FUSE request makes the kernel send FUSE_INTERRUPT. fuser answers every INTERRUPT with ENOSYS; when the interrupted
/// request has been answered in the meantime the kernel has nothing to match that answer
/// with and refuses it with ENOENT, which fuser logs at ERROR level. The interrupted
/// request itself was answered normally (verified with REGFS_LOG=fuser=debug: an
/// INTERRUPT for a SETATTR size 0 of a link file, followed by its 71-byte WRITE).
const FUSER_INTERRUPT_RACE: &str = "Failed to send FUSE reply: No such file or directory";

/// Prefix of this file's temporary directories. Not tests/common's `regfs-test-`: while
/// this test ran, a test binary built with a `clean_stale_mounts` that lazily unmounted
/// every FUSE mount under that prefix, live ones included, pulled the store out from under
/// the registry (a pull then failed with 404). A prefix of its own keeps this test
/// independent of other test binaries running at the same time.
const PREFIX: &str = "regfs-e2e-";

// ---------------------------------------------------------------------------------------
// Prerequisites

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/oci-images.py")
}

/// Detaches mounts left by an earlier, killed run of this file: FUSE mounts under
/// [`PREFIX`] whose daemon is gone (the mount answers ENOTCONN). Live mounts (a concurrent
/// run) are left alone.
fn clean_stale_mounts() {
    for m in regfs::mount::mounts().unwrap_or_default() {
        let ours = m.fstype.starts_with("fuse")
            && m.mountpoint
                .to_string_lossy()
                .contains(&format!("/{PREFIX}"));
        if ours && rustix::fs::statfs(&m.mountpoint).err() == Some(rustix::io::Errno::NOTCONN) {
            eprintln!("detaching stale mount {}", m.mountpoint.display());
            let _ = rustix::mount::unmount(&m.mountpoint, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// uid and gid of a user, from the system's user database.
fn user(name: &str) -> Option<(u32, u32)> {
    let c = CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; both fields are
    // copied out at once. Tests that call it run it for fixed names only.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
    }
}

/// The registry's own user: Debian's `docker-registry`, else a dedicated system user.
fn registry_user() -> (u32, u32) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _one = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(ids) = user("docker-registry").or_else(|| user("regfs-e2e-registry")) {
        return ids;
    }
    let out = Command::new("useradd")
        .args(["--system", "--user-group", "--no-create-home"])
        .args(["--shell", "/usr/sbin/nologin", "regfs-e2e-registry"])
        .output()
        .expect("useradd");
    assert!(
        out.status.success(),
        "no docker-registry user, and creating regfs-e2e-registry failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    user("regfs-e2e-registry").expect("user regfs-e2e-registry after useradd")
}

// ---------------------------------------------------------------------------------------
// Processes

/// Runs a command to its end, killing it after `timeout`.
fn run(mut cmd: Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let out_t = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let err_t = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stdout = out_t.join().unwrap();
    let mut stderr = err_t.join().unwrap();
    if timed_out {
        stderr.extend_from_slice(format!("\n[killed after {timeout:?}: {what}]").as_bytes());
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) of a child this test started and has not reaped.
    unsafe { libc::kill(pid as i32, sig) };
}

/// SIGTERM, then SIGKILL if it has not exited within `grace`.
fn stop(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// `docker-registry serve`, stopped by pid when dropped.
struct Registry {
    child: Child,
}

impl Drop for Registry {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(5));
    }
}

/// `regfs mount`, stopped by pid when dropped; the mount is then detached whatever
/// happened (a killed daemon leaves a stale mount).
struct Daemon {
    child: Child,
    mnt: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(15));
        let _ = rustix::mount::unmount(&self.mnt, rustix::mount::UnmountFlags::DETACH);
    }
}

// ---------------------------------------------------------------------------------------
// HTTP (HTTP/1.0, so the registry answers without chunking and closes)

fn http(
    port: u16,
    method: &str,
    path: &str,
    accept: Option<&str>,
) -> Result<(u16, Vec<u8>), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    if let Some(a) = accept {
        req += &format!("Accept: {a}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("receive: {e}"))?;
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    Ok((status, buf[end + 4..].to_vec()))
}

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

// ---------------------------------------------------------------------------------------
// Digests and the store

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn file_digest(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex_of(&h.finalize())))
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("a sha256 digest")
}

fn short(digest: &str) -> &str {
    &hex(digest)[..12]
}

/// Every regular file under `dir` (symbolic links are not followed).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => walk(&p, out),
            Ok(m) if m.is_file() => out.push(p),
            _ => {}
        }
    }
}

/// Total size of the files under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    let mut files = Vec::new();
    walk(dir, &mut files);
    files
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

// ---------------------------------------------------------------------------------------
// The images (scripts/oci-images.py --sample --json)

#[derive(Debug, Clone)]
struct Image {
    name: String,
    digest: String,
    kind: String,
    /// Every blob a full pull needs (children manifests included, itself excluded).
    blobs: Vec<String>,
}

impl Image {
    fn all_blobs(&self) -> BTreeSet<String> {
        let mut s: BTreeSet<String> = self.blobs.iter().cloned().collect();
        s.insert(self.digest.clone());
        s
    }
}

fn generate_images(oci: &Path) -> BTreeMap<String, Image> {
    let mut cmd = Command::new("python3");
    cmd.arg(script()).arg(oci).args(["--sample", "--json"]);
    let out = run(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "oci-images.py: {}",
        describe_output(&out)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("oci-images.py --json");
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| s.as_str().expect("string").to_string())
            .collect()
    };
    v["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|e| {
            let img = Image {
                name: e["name"].as_str().unwrap().to_string(),
                digest: e["digest"].as_str().unwrap().to_string(),
                kind: e["kind"].as_str().unwrap().to_string(),
                blobs: strs(&e["blobs"]),
            };
            (img.name.clone(), img)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// One test's world: a mount, a registry on it, skopeo

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Default,
    DeleteUntagged,
}

/// What a scenario's processes share (also with the pull loop's thread).
struct Ctx {
    store: PathBuf,
    mnt: PathBuf,
    state: PathBuf,
    oci: PathBuf,
    pulls: PathBuf,
    skopeo_tmp: PathBuf,
    skopeo_env: Vec<(String, String)>,
    skopeo_ids: (u32, u32),
    port: u16,
    images: BTreeMap<String, Image>,
    registry_log: PathBuf,
    daemon_log: PathBuf,
    counter: AtomicU64,
}

impl Ctx {
    fn image(&self, name: &str) -> &Image {
        self.images
            .get(name)
            .unwrap_or_else(|| panic!("oci-images.py made no image {name}"))
    }

    fn skopeo(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("skopeo");
        cmd.env_clear()
            .envs(self.skopeo_env.iter().map(|(k, v)| (k, v)))
            .uid(self.skopeo_ids.0)
            .gid(self.skopeo_ids.1)
            .current_dir(&self.skopeo_tmp)
            .args(["--insecure-policy", "--command-timeout", "60s", "--tmpdir"])
            .arg(&self.skopeo_tmp)
            .args(args);
        run(cmd, Duration::from_secs(90))
    }

    /// skopeo copy oci:LAYOUT:IMAGE docker://127.0.0.1:PORT/DEST (a tag or `@digest`).
    fn push(&self, image: &str, dest: &str) -> Output {
        let src = format!("oci:{}:{image}", self.oci.display());
        let dst = format!("docker://127.0.0.1:{}/{dest}", self.port);
        let mut args = vec![
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-no-creds",
        ];
        if self.image(image).kind == "index" {
            args.push("--all");
        }
        args.extend([src.as_str(), dst.as_str()]);
        self.skopeo(&args)
    }

    fn push_ok(&self, image: &str, dest: &str) {
        let out = self.push(image, dest);
        assert!(
            out.status.success(),
            "push {image} to {dest}: {}",
            describe_output(&out)
        );
        let (repo, reference) = dest
            .split_once('@')
            .or_else(|| dest.rsplit_once(':'))
            .unwrap();
        let got = self.manifest_digest(repo, reference);
        assert_eq!(
            got.as_deref(),
            Ok(self.image(image).digest.as_str()),
            "{dest} after pushing {image}"
        );
    }

    /// The digest of the manifest the registry serves for REPO:REF, or its HTTP status.
    fn manifest_digest(&self, repo: &str, reference: &str) -> Result<String, String> {
        let (st, body) = http(
            self.port,
            "GET",
            &format!("/v2/{repo}/manifests/{reference}"),
            Some(ACCEPT),
        )?;
        if st != 200 {
            return Err(format!("HTTP {st}"));
        }
        Ok(format!("sha256:{}", hex_of(&Sha256::digest(&body))))
    }

    /// Pulls REFERENCE (REPO:TAG or REPO@DIGEST) with skopeo into a `dir:` layout and checks
    /// that it is `image`, whole: its manifest, every blob and child manifest, each file
    /// matching its digest.
    fn pull(&self, reference: &str, image: &str) -> Result<(), String> {
        let img = self.image(image);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let dest = self.pulls.join(format!("{n}-{image}"));
        let src = format!("docker://127.0.0.1:{}/{reference}", self.port);
        let dst = format!("dir:{}", dest.display());
        let mut args = vec![
            "copy",
            "--quiet",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--src-no-creds",
        ];
        if img.kind == "index" {
            args.push("--all");
        }
        args.extend([src.as_str(), dst.as_str()]);
        let out = self.skopeo(&args);
        let r = if out.status.success() {
            verify_dir(&dest, img).map_err(|e| format!("pull {reference}: {e}"))
        } else {
            Err(format!(
                "skopeo copy {reference} failed ({}): {}{}",
                out.status,
                text(&out.stderr),
                if self.mounted() {
                    ""
                } else {
                    " [the regfs mount is gone: detached from outside?]"
                }
            ))
        };
        let _ = fs::remove_dir_all(&dest);
        r
    }

    /// Whether the regfs mount is still in place (something may detach it from outside).
    fn mounted(&self) -> bool {
        regfs::mount::mount_at(&self.mnt).is_some_and(|m| m.fstype.starts_with("fuse"))
    }

    fn assert_mounted(&self, when: &str) {
        assert!(
            self.mounted(),
            "{when}: the regfs mount at {} is gone although the daemon was not stopped \
             (detached from outside?); daemon log:\n{}",
            self.mnt.display(),
            fs::read_to_string(&self.daemon_log).unwrap_or_default()
        );
    }

    fn regfs(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg(&self.mnt)
            .arg("--state-dir")
            .arg(&self.state);
        run(cmd, Duration::from_secs(30))
    }

    fn status(&self) -> Result<Value, String> {
        let out = self.regfs(&["status", "--json"]);
        if !out.status.success() {
            return Err(format!("regfs status: {}", describe_output(&out)));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("regfs status --json: {e}"))
    }

    /// The id of the job that holds the store read-only now, if any.
    fn read_only_job(&self) -> Option<u64> {
        let s = self.status().ok()?;
        (s["read_only"] == true)
            .then(|| s["current_job"]["id"].as_u64())
            .flatten()
    }

    /// Runs `f`, asserting that job `job` held the store read-only just before and just
    /// after it (so that `what` certainly ran during the epoch).
    fn while_read_only<T>(&self, job: u64, what: &str, f: impl FnOnce() -> T) -> T {
        let before = self.read_only_job();
        let r = f();
        let after = self.read_only_job();
        assert_eq!(
            (before, after),
            (Some(job), Some(job)),
            "{what} happened while job {job} held the store read-only"
        );
        r
    }

    fn jobs(&self) -> Vec<Value> {
        let out = self.regfs(&["jobs", "--json"]);
        assert!(
            out.status.success(),
            "regfs jobs: {}",
            describe_output(&out)
        );
        serde_json::from_slice::<Value>(&out.stdout)
            .expect("regfs jobs --json")
            .as_array()
            .expect("an array of jobs")
            .clone()
    }

    fn blob_exists(&self, digest: &str) -> bool {
        let h = hex(digest);
        self.store
            .join(V2)
            .join("blobs/sha256")
            .join(&h[..2])
            .join(h)
            .join("data")
            .exists()
    }

    /// `_layers` links naming `digest`, in every repository.
    fn layer_links(&self, digest: &str) -> Vec<PathBuf> {
        let mut files = Vec::new();
        walk(&self.store.join(V2).join("repositories"), &mut files);
        let tail = format!("_layers/sha256/{}/link", hex(digest));
        files
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(&tail))
            .collect()
    }

    /// Size of a blob, from the OCI layout it was pushed from.
    fn blob_size(&self, digest: &str) -> u64 {
        fs::metadata(self.oci.join("blobs/sha256").join(hex(digest)))
            .expect("blob in the OCI layout")
            .len()
    }

    fn registry_log(&self) -> String {
        fs::read_to_string(&self.registry_log).unwrap_or_default()
    }

    fn erofs_lines(&self) -> usize {
        self.registry_log()
            .lines()
            .filter(|l| l.contains(EROFS_TEXT))
            .count()
    }
}

/// A skopeo `dir:` copy holds manifest.json (the top manifest), child manifests as
/// `<hex>.manifest.json`, and blobs named by their hex digest.
fn verify_dir(dest: &Path, img: &Image) -> Result<(), String> {
    let top =
        file_digest(&dest.join("manifest.json")).map_err(|e| format!("manifest.json: {e}"))?;
    if top != img.digest {
        return Err(format!("manifest.json is {top}, expected {}", img.digest));
    }
    let mut have = BTreeSet::new();
    for e in fs::read_dir(dest).map_err(|e| e.to_string())?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name == "version" || name == "manifest.json" {
            continue;
        }
        let d = file_digest(&e.path()).map_err(|e| format!("{name}: {e}"))?;
        let stem = name.split('.').next().unwrap_or("");
        if stem.len() == 64 && d != format!("sha256:{stem}") {
            return Err(format!("{name} holds {d}: corrupt"));
        }
        have.insert(d);
    }
    let missing: Vec<&str> = img
        .blobs
        .iter()
        .filter(|b| !have.contains(*b))
        .map(|b| short(b))
        .collect();
    if !missing.is_empty() {
        return Err(format!("blobs missing from the pull: {missing:?}"));
    }
    Ok(())
}

/// The processes of one scenario. Fields drop in order: the registry stops first (it has
/// files open on the mount), then the daemon (which unmounts), then the directory goes.
struct World {
    registry: Option<Registry>,
    daemon: Option<Daemon>,
    ctx: Arc<Ctx>,
    daemon_pid: u32,
    dir: Option<tempfile::TempDir>,
}

impl Drop for World {
    fn drop(&mut self) {
        drop(self.registry.take());
        drop(self.daemon.take());
        // REGFS_E2E_KEEP=1 keeps the directory (logs, store) for inspection.
        if let Some(d) = self.dir.take()
            && std::env::var_os("REGFS_E2E_KEEP").is_some()
        {
            let _ = d.keep();
        }
    }
}

fn mkdir_owned(path: &Path, ids: (u32, u32), mode: u32) {
    fs::create_dir_all(path).unwrap();
    std::os::unix::fs::chown(path, Some(ids.0), Some(ids.1)).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn start_daemon(store: &Path, mnt: &Path, state: &Path, log: &Path, mode: Mode) -> Daemon {
    let mut cmd = Command::new(BIN);
    cmd.arg("mount")
        .arg(store)
        .arg(mnt)
        .arg("--state-dir")
        .arg(state)
        .args(["--drain-timeout", DRAIN_TIMEOUT]);
    if mode == Mode::DeleteUntagged {
        cmd.arg("--delete-untagged");
    }
    let logf = File::create(log).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .expect("regfs mount");
    let mut d = Daemon {
        child,
        mnt: mnt.to_path_buf(),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    // Mounted, answering, and its control socket up.
    loop {
        let mounted = regfs::mount::mount_at(mnt).is_some_and(|m| m.fstype.starts_with("fuse"))
            && rustix::fs::statfs(mnt).is_ok();
        if mounted {
            let mut c = Command::new(BIN);
            c.args(["status", "--json"])
                .arg(mnt)
                .arg("--state-dir")
                .arg(state);
            if run(c, Duration::from_secs(10)).status.success() {
                return d;
            }
        }
        if let Ok(Some(st)) = d.child.try_wait() {
            panic!(
                "regfs mount exited with {st}: {}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "regfs did not mount and answer within 15 s: {}",
            fs::read_to_string(log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn registry_config(mnt: &Path, port: u16) -> String {
    format!(
        "\
version: 0.1
log:
  level: info
  formatter: text
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: {}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
    readonly:
      enabled: false
  redirect:
    disable: true
http:
  addr: 127.0.0.1:{port}
  secret: regfs-e2e-not-a-secret
",
        mnt.display()
    )
}

/// Starts the registry as `ids` on a free port; retries if the port was taken meanwhile.
fn start_registry(root: &Path, mnt: &Path, log: &Path, ids: (u32, u32)) -> (Registry, u16) {
    for attempt in 0..4 {
        let port = free_port();
        let config = root.join(format!("registry-{port}.yml"));
        fs::write(&config, registry_config(mnt, port)).unwrap();
        fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();
        let logf = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .uid(ids.0)
            .gid(ids.1)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("docker-registry serve");
        let mut reg = Registry { child };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if matches!(http(port, "GET", "/v2/", None), Ok((200, _))) {
                return (reg, port);
            }
            if let Ok(Some(st)) = reg.child.try_wait() {
                let logtext = fs::read_to_string(log).unwrap_or_default();
                if logtext.contains("address already in use") && attempt < 3 {
                    break;
                }
                panic!("docker-registry exited with {st}:\n{logtext}");
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on 127.0.0.1:{port} within 15 s:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("no free port for docker-registry");
}

fn setup(mode: Mode) -> Option<World> {
    let needs = Needs::registry_tests(&script()).dev_fuse();
    if !needs.met(
        "the end-to-end registry tests need root, /dev/fuse, python3, docker-registry and skopeo",
    ) {
        return None;
    }
    clean_stale_mounts();
    let reg_ids = registry_user();
    let sk_ids = user("nobody").unwrap_or((65534, 65534));
    let dir = tempfile::Builder::new()
        .prefix(PREFIX)
        .tempdir()
        .expect("temporary directory");
    let root = dir.path().to_path_buf();
    if std::env::var_os("REGFS_E2E_KEEP").is_some() {
        eprintln!("[{mode:?}] REGFS_E2E_KEEP: keeping {}", root.display());
    }
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    let store = root.join("store");
    let mnt = root.join("mnt");
    let state = root.join("state");
    let oci = root.join("oci");
    // The registry owns its store (the mount shows the store's owner and modes).
    mkdir_owned(&store, reg_ids, 0o755);
    fs::create_dir(&mnt).unwrap();

    let t0 = Instant::now();
    let images = generate_images(&oci);
    eprintln!(
        "[{mode:?}] {} images generated in {:.2} s",
        images.len(),
        t0.elapsed().as_secs_f64()
    );

    // skopeo's private world, owned by the user it runs as.
    let sk = root.join("skopeo");
    let home = sk.join("home");
    for d in [
        sk.clone(),
        home.clone(),
        sk.join("tmp"),
        sk.join("pulls"),
        home.join(".config"),
        home.join(".local/share"),
        home.join(".cache"),
    ] {
        mkdir_owned(&d, sk_ids, 0o755);
    }
    mkdir_owned(&home.join("run"), sk_ids, 0o700);
    let regconf = sk.join("registries.conf");
    fs::write(&regconf, "unqualified-search-registries = []\n").unwrap();
    fs::set_permissions(&regconf, fs::Permissions::from_mode(0o644)).unwrap();
    let p = |p: &Path| p.display().to_string();
    let skopeo_env = vec![
        ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        ("HOME".into(), p(&home)),
        ("TMPDIR".into(), p(&sk.join("tmp"))),
        ("XDG_CONFIG_HOME".into(), p(&home.join(".config"))),
        ("XDG_DATA_HOME".into(), p(&home.join(".local/share"))),
        ("XDG_CACHE_HOME".into(), p(&home.join(".cache"))),
        ("XDG_RUNTIME_DIR".into(), p(&home.join("run"))),
        ("CONTAINERS_REGISTRIES_CONF".into(), p(&regconf)),
        ("REGISTRY_AUTH_FILE".into(), p(&home.join("auth.json"))),
        ("NO_PROXY".into(), "*".into()),
        ("no_proxy".into(), "*".into()),
    ];

    let daemon_log = root.join("regfs.log");
    let registry_log = root.join("registry.log");
    let daemon = start_daemon(&store, &mnt, &state, &daemon_log, mode);
    let daemon_pid = daemon.child.id();
    let (registry, port) = start_registry(&root, &mnt, &registry_log, reg_ids);
    eprintln!(
        "[{mode:?}] regfs pid {daemon_pid}, docker-registry pid {} (uid {}) on 127.0.0.1:{port}",
        registry.child.id(),
        reg_ids.0
    );
    let ctx = Ctx {
        store,
        mnt,
        state,
        oci,
        pulls: sk.join("pulls"),
        skopeo_tmp: sk.join("tmp"),
        skopeo_env,
        skopeo_ids: sk_ids,
        port,
        images,
        registry_log,
        daemon_log,
        counter: AtomicU64::new(0),
    };
    Some(World {
        registry: Some(registry),
        daemon: Some(daemon),
        ctx: Arc::new(ctx),
        daemon_pid,
        dir: Some(dir),
    })
}

// ---------------------------------------------------------------------------------------
// The pull loop that runs through the epoch

#[derive(Debug)]
struct PullRecord {
    reference: String,
    result: Result<(), String>,
    /// The job holding the store read-only just before and just after the pull.
    read_only_before: Option<u64>,
    read_only_after: Option<u64>,
}

struct PullLoop {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    handle: Option<JoinHandle<Vec<PullRecord>>>,
}

impl PullLoop {
    fn start(ctx: Arc<Ctx>, pulls: Vec<(String, String)>) -> PullLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), rounds.clone());
        let handle = thread::spawn(move || {
            let mut records = Vec::new();
            while !s.load(Ordering::SeqCst) {
                for (reference, image) in &pulls {
                    let before = ctx.read_only_job();
                    let result = ctx.pull(reference, image);
                    let after = ctx.read_only_job();
                    records.push(PullRecord {
                        reference: reference.clone(),
                        result,
                        read_only_before: before,
                        read_only_after: after,
                    });
                }
                r.fetch_add(1, Ordering::SeqCst);
            }
            records
        });
        PullLoop {
            stop,
            rounds,
            handle: Some(handle),
        }
    }

    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Lets the loop finish `more` rounds from now, then stops it.
    fn finish(mut self, more: u64) -> Vec<PullRecord> {
        let target = self.rounds() + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.rounds() < target && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .unwrap()
            .join()
            .expect("pull loop thread")
    }
}

impl Drop for PullLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Log checks

/// Lines of the registry's log that report a problem: any warning or error except the
/// ordinary client errors (4xx answers such as "blob unknown" while pushing) and the
/// refused writes, which are returned separately.
fn registry_log_problems(log: &str) -> (Vec<String>, Vec<String>) {
    let mut erofs = Vec::new();
    let mut problems = Vec::new();
    for line in log.lines() {
        if line.starts_with("panic:") || line.starts_with("fatal error:") {
            problems.push(line.to_string());
            continue;
        }
        if !line.starts_with("time=") {
            continue; // the access log
        }
        let level = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("level="))
            .unwrap_or("");
        if !matches!(level, "warning" | "error" | "fatal" | "panic") {
            continue;
        }
        if line.contains(EROFS_TEXT) {
            erofs.push(line.to_string());
            continue;
        }
        let status = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http.response.status="))
            .and_then(|s| s.parse::<u16>().ok());
        let client_error = matches!(status, Some(400..=499)) && !line.contains("err.code=unknown");
        if !client_error {
            problems.push(line.to_string());
        }
    }
    (erofs, problems)
}

fn log_time(line: &str) -> Option<DateTime<Utc>> {
    let t = line.strip_prefix("time=\"")?.split('"').next()?;
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn job_time(job: &Value, field: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(
        job[field]
            .as_str()
            .unwrap_or_else(|| panic!("job {field}: {job:#}")),
    )
    .expect("an RFC 3339 time")
    .with_timezone(&Utc)
}

// ---------------------------------------------------------------------------------------
// The scenario

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(25));
    }
}

fn scenario(mode: Mode) {
    let t_start = Instant::now();
    let Some(mut world) = setup(mode) else {
        return;
    };
    let ctx = world.ctx.clone();
    let tag = format!("[{mode:?}]");
    let img = |n: &str| ctx.image(n).clone();
    let at = |repo: &str, n: &str| format!("{repo}@{}", ctx.image(n).digest);

    // --- Fill the store through the registry.
    let t0 = Instant::now();
    ctx.push_ok("base", "library/base:1");
    ctx.push_ok("base", "mirror/library/base:1");
    ctx.push_ok("app-v1", "team/app/web:latest");
    // The tag moves: app-v1 stays in the repository, untagged.
    ctx.push_ok("app-v2", "team/app/web:latest");
    ctx.push_ok("multi", "team/app/multi:1.0");
    // The signature of the index: a referrer (`subject`), pushed by digest, untagged.
    ctx.push_ok("multi-signature", &at("team/app/multi", "multi-signature"));
    // An untagged image, pushed by digest only.
    ctx.push_ok("scratch", &at("library/base", "scratch"));
    // An image whose manifest is deleted by digest through the API.
    ctx.push_ok("tools", "tools/cli:1");
    let tools = img("tools").digest;
    let (st, body) = http(
        ctx.port,
        "DELETE",
        &format!("/v2/tools/cli/manifests/{tools}"),
        None,
    )
    .expect("DELETE manifest");
    assert_eq!(st, 202, "DELETE tools/cli@{tools}: {}", text(&body));
    assert_eq!(
        ctx.manifest_digest("tools/cli", &tools),
        Err("HTTP 404".into()),
        "tools/cli@digest after DELETE"
    );
    assert_eq!(
        ctx.manifest_digest("team/app/web", &img("app-v1").digest)
            .as_deref(),
        Ok(img("app-v1").digest.as_str()),
        "the image the tag moved away from is still served by digest before GC"
    );
    eprintln!(
        "{tag} pushed 8 images in {:.2} s",
        t0.elapsed().as_secs_f64()
    );

    // What survives, and what a run must delete.
    let removed: Vec<&str> = match mode {
        Mode::Default => vec!["tools"],
        Mode::DeleteUntagged => vec!["tools", "scratch", "app-v1"],
    };
    let kept_images: Vec<&str> = [
        "base",
        "app-v2",
        "multi",
        "multi-signature",
        "scratch",
        "app-v1",
    ]
    .into_iter()
    .filter(|n| !removed.contains(n))
    .collect();
    let kept: BTreeSet<String> = kept_images
        .iter()
        .flat_map(|n| img(n).all_blobs())
        .collect();
    let gone: BTreeSet<String> = removed
        .iter()
        .flat_map(|n| img(n).all_blobs())
        .filter(|b| !kept.contains(b))
        .collect();
    for b in kept.iter().chain(&gone) {
        assert!(
            ctx.blob_exists(b),
            "{tag} blob {} in the store before GC",
            short(b)
        );
    }
    let gone_bytes: u64 = gone.iter().map(|b| ctx.blob_size(b)).sum();
    let blobs_before = tree_bytes(&ctx.store.join(V2).join("blobs"));

    // Pulled in a loop through the whole epoch: every tagged image and the signature.
    let loop_pulls: Vec<(String, String)> = [
        ("library/base:1".to_string(), "base"),
        ("mirror/library/base:1".to_string(), "base"),
        ("team/app/web:latest".to_string(), "app-v2"),
        ("team/app/multi:1.0".to_string(), "multi"),
        (at("team/app/multi", "multi-signature"), "multi-signature"),
    ]
    .into_iter()
    .map(|(r, i)| (r, i.to_string()))
    .collect();

    // --- The epoch.
    let mut holder = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(ctx.mnt.join(HOLDER))
        .expect("open the in-place writer through the mount");
    holder.write_all(b"before the epoch\n").unwrap();
    let pull_loop = PullLoop::start(ctx.clone(), loop_pulls.clone());
    wait_until("a first round of pulls", Duration::from_secs(60), || {
        pull_loop.rounds() >= 1
    });
    ctx.assert_mounted("before the epoch");
    let jobs_before = ctx.jobs().len();
    let t_epoch = Instant::now();
    signal(world.daemon_pid, libc::SIGUSR1);
    let mut job_id = None;
    wait_until(
        "the store to become read-only",
        Duration::from_secs(10),
        || {
            job_id = ctx.read_only_job();
            job_id.is_some()
        },
    );
    let job_id = job_id.unwrap();
    let s = ctx.status().unwrap();
    assert_eq!(
        s["state"], "closing",
        "{tag} held open by the writer: {s:#}"
    );

    // Pushes while read-only: a new image (a blob upload) and a new tag for a stored
    // image (only a manifest and link files to write).
    let erofs_before = ctx.erofs_lines();
    let mut refused = Vec::new();
    for (image, dest) in [("late", "team/app/web:late"), ("base", "library/base:2")] {
        let out = ctx.while_read_only(job_id, &format!("{tag} the push of {dest}"), || {
            ctx.push(image, dest)
        });
        assert!(
            !out.status.success(),
            "{tag} push of {image} to {dest} during the epoch succeeded: {}",
            describe_output(&out)
        );
        let err = text(&out.stderr);
        assert!(
            err.contains("500 Internal Server Error"),
            "{tag} skopeo reports the refused push of {dest}: {err}"
        );
        eprintln!("{tag} push {dest} during the epoch refused; skopeo: {err}");
        refused.push(dest);
    }
    wait_until(
        "the registry to log the refused writes",
        Duration::from_secs(5),
        || ctx.erofs_lines() >= erofs_before + refused.len(),
    );

    // Pulls while read-only.
    for (reference, image) in &loop_pulls {
        let r = ctx.while_read_only(job_id, &format!("{tag} the pull of {reference}"), || {
            ctx.pull(reference, image)
        });
        if let Err(e) = r {
            panic!("{tag} pull during the epoch failed: {e}");
        }
    }
    // The in-place writer may still finish its work while the epoch drains.
    holder
        .write_all(b"during the drain\n")
        .expect("an in-place writer open before the epoch may write while it drains");
    holder.sync_all().expect("fsync during the drain");
    let elapsed = t_epoch.elapsed();
    if elapsed < HOLD {
        thread::sleep(HOLD - elapsed);
    }
    assert_eq!(ctx.read_only_job(), Some(job_id), "{tag} still read-only");
    assert_eq!(ctx.status().unwrap()["state"], "closing");
    let held = t_epoch.elapsed();
    drop(holder);

    let mut job = Value::Null;
    wait_until("the GC job to finish", Duration::from_secs(60), || {
        let jobs = ctx.jobs();
        match jobs.iter().find(|j| j["id"] == job_id) {
            Some(j) if j["outcome"] != "running" => {
                job = j.clone();
                true
            }
            _ => false,
        }
    });
    let epoch_secs = t_epoch.elapsed().as_secs_f64();
    let records = pull_loop.finish(1);
    ctx.assert_mounted("after the epoch");

    // --- Every pull of the loop worked, some of them during the epoch.
    let failed: Vec<&PullRecord> = records.iter().filter(|r| r.result.is_err()).collect();
    let during = records
        .iter()
        .filter(|r| r.read_only_before == Some(job_id) && r.read_only_after == Some(job_id))
        .count();
    eprintln!(
        "{tag} pull loop: {} pulls, {} entirely during the epoch, {} failed",
        records.len(),
        during,
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{tag} pulls failed around the GC epoch: {:#?}",
        failed
            .iter()
            .map(|r| format!("{}: {:?}", r.reference, r.result))
            .collect::<Vec<_>>()
    );
    assert!(
        during >= 1,
        "{tag} the pull loop met the epoch: {records:#?}"
    );

    // --- The job record.
    eprintln!("{tag} job {job_id}: {job}");
    assert_eq!(jobs_before + 1, ctx.jobs().len(), "{tag} one job recorded");
    assert_eq!(job["outcome"], "done", "{tag} job: {job:#}");
    assert_eq!(job["trigger"], "signal", "{tag} job: {job:#}");
    let report = &job["report"];
    assert_eq!(
        report["mode"],
        match mode {
            Mode::Default => "default",
            Mode::DeleteUntagged => "delete-untagged",
        },
        "{tag} job: {job:#}"
    );
    let bytes_freed = report["bytes_freed"].as_u64().expect("bytes_freed");
    assert!(bytes_freed > 0, "{tag} job freed space: {job:#}");
    assert_eq!(
        report["blobs_deleted"].as_u64(),
        Some(gone.len() as u64),
        "{tag} blobs deleted: expected {:?}; job: {job:#}",
        gone.iter().map(|b| short(b)).collect::<Vec<_>>()
    );
    assert_eq!(bytes_freed, gone_bytes, "{tag} bytes freed: {job:#}");
    assert_eq!(
        job["cut_writers"].as_array().map(Vec::len),
        Some(0),
        "{tag} the holder drained, nothing was uploading: {job:#}"
    );
    let ro = job["read_only_seconds"].as_f64().unwrap_or(0.0);
    assert!(
        ro >= held.as_secs_f64() - 0.5,
        "{tag} read-only for {ro} s, held {held:?}: {job:#}"
    );
    assert_eq!(
        report["warnings"].as_array().map(Vec::len),
        Some(0),
        "{tag} warnings: {job:#}"
    );

    // --- The store.
    for b in &gone {
        assert!(!ctx.blob_exists(b), "{tag} blob {} deleted", short(b));
        let links = ctx.layer_links(b);
        assert!(
            links.is_empty(),
            "{tag} _layers links of deleted {b}: {links:?}"
        );
    }
    for b in &kept {
        assert!(ctx.blob_exists(b), "{tag} blob {} kept", short(b));
    }
    let mut files = Vec::new();
    walk(&ctx.store.join("docker"), &mut files);
    let mut links = 0;
    for f in files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "link"))
    {
        let content = fs::read(f).unwrap();
        assert!(
            well_formed_link(&content),
            "{tag} link file {} holds {:?} ({} bytes)",
            f.display(),
            String::from_utf8_lossy(&content),
            content.len()
        );
        links += 1;
    }
    assert!(links > 10, "{tag} only {links} link files?");
    let blobs_after = tree_bytes(&ctx.store.join(V2).join("blobs"));
    eprintln!(
        "{tag} blobs: {blobs_before} bytes before, {blobs_after} after ({} freed); {links} link files, all whole",
        blobs_before.saturating_sub(blobs_after)
    );
    assert_eq!(
        blobs_before.saturating_sub(blobs_after),
        bytes_freed,
        "{tag} du of the blobs"
    );

    // --- After the epoch: the refused pushes go through, every kept image pulls.
    ctx.push_ok("late", "team/app/web:late");
    ctx.push_ok("base", "library/base:2");
    let mut after: Vec<(String, &str)> = vec![
        ("library/base:1".into(), "base"),
        ("library/base:2".into(), "base"),
        ("mirror/library/base:1".into(), "base"),
        ("team/app/web:latest".into(), "app-v2"),
        ("team/app/web:late".into(), "late"),
        ("team/app/multi:1.0".into(), "multi"),
        (at("team/app/multi", "multi-signature"), "multi-signature"),
    ];
    if mode == Mode::Default {
        after.push((at("library/base", "scratch"), "scratch"));
        after.push((at("team/app/web", "app-v1"), "app-v1"));
    }
    for (reference, image) in &after {
        if let Err(e) = ctx.pull(reference, image) {
            panic!("{tag} pull after the epoch: {e}");
        }
    }
    // And what was collected is gone for clients too.
    let mut collected = vec![("tools/cli", "tools")];
    if mode == Mode::DeleteUntagged {
        collected.push(("library/base", "scratch"));
        collected.push(("team/app/web", "app-v1"));
    }
    for (repo, image) in collected {
        let d = img(image).digest;
        assert_eq!(
            ctx.manifest_digest(repo, &d),
            Err("HTTP 404".into()),
            "{tag} {repo}@{d} collected"
        );
        assert!(
            ctx.pull(&format!("{repo}@{d}"), image).is_err(),
            "{tag} pulling collected {repo}@{d} must fail"
        );
    }

    ctx.assert_mounted("after the pulls that follow the epoch");

    // --- Logs: the registry saw no storage error but the refused writes, all inside the
    // epoch; the daemon logged no error.
    let (erofs, problems) = registry_log_problems(&ctx.registry_log());
    assert!(
        problems.is_empty(),
        "{tag} storage errors in the registry's log:\n{}",
        problems.join("\n")
    );
    assert!(
        erofs.len() >= refused.len(),
        "{tag} the registry logged the refused writes: {erofs:#?}"
    );
    let (start, end) = (job_time(&job, "started_at"), job_time(&job, "ended_at"));
    for l in &erofs {
        let t = log_time(l).unwrap_or_else(|| panic!("no time in {l}"));
        assert!(
            t >= start && t <= end,
            "{tag} EROFS outside the epoch ({start} .. {end}): {l}"
        );
    }
    let dlog = fs::read_to_string(&ctx.daemon_log).unwrap_or_default();
    let (interrupt_races, errors): (Vec<&str>, Vec<&str>) = dlog
        .lines()
        .filter(|l| l.contains(" ERROR "))
        .partition(|l| l.contains(FUSER_INTERRUPT_RACE));
    assert!(
        errors.is_empty(),
        "{tag} the daemon logged errors:\n{}",
        errors.join("\n")
    );
    if !interrupt_races.is_empty() {
        eprintln!(
            "{tag} NOTE: the daemon logged {} x ERROR \"{FUSER_INTERRUPT_RACE}\" \
             (fuser's ENOSYS answer to a FUSE_INTERRUPT arriving after the interrupted \
             request was answered; see FUSER_INTERRUPT_RACE)",
            interrupt_races.len()
        );
    }

    // --- Orderly shutdown: the registry, then the daemon (SIGTERM unmounts, exit 0).
    drop(world.registry.take());
    let mut daemon = world.daemon.take().unwrap();
    let st = stop(&mut daemon.child, Duration::from_secs(15));
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(0),
        "{tag} regfs exit: {dlog}"
    );
    assert!(
        regfs::mount::mount_at(&ctx.mnt).is_none(),
        "{tag} unmounted after SIGTERM"
    );
    drop(daemon);
    eprintln!(
        "{tag} done in {:.1} s (epoch {:.1} s, read-only {ro:.2} s, {} registry EROFS lines)",
        t_start.elapsed().as_secs_f64(),
        epoch_secs,
        erofs.len()
    );
}

#[test]
fn gc_epoch_races_real_pulls_and_pushes() {
    scenario(Mode::Default);
}

#[test]
fn delete_untagged_keeps_tagged_multi_arch_image_and_its_signature() {
    scenario(Mode::DeleteUntagged);
}

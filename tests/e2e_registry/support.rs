//! Plumbing of the end-to-end test: prerequisites (the registry's user, stale mounts),
//! child processes with time limits, an HTTP client (ureq), digests and walks of the
//! store.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::PREFIX;

// ---------------------------------------------------------------------------------------
// Prerequisites

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/oci-images.py")
}

/// Detaches mounts left by an earlier, killed run of this file: FUSE mounts under
/// [`PREFIX`] whose daemon is gone (the mount answers ENOTCONN). Live mounts (a concurrent
/// run) are left alone.
pub fn clean_stale_mounts() {
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
pub fn user(name: &str) -> Option<(u32, u32)> {
    let c = CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; both fields are
    // copied out at once. Tests that call it run it for fixed names only.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
    }
}

/// The registry's own user: Debian's `docker-registry`, else a dedicated system user.
pub fn registry_user() -> (u32, u32) {
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
pub fn run(mut cmd: Command, timeout: Duration) -> Output {
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

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) of a child this test started and has not reaped.
    unsafe { libc::kill(pid as i32, sig) };
}

/// SIGTERM, then SIGKILL if it has not exited within `grace`.
pub fn stop(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
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
pub struct Registry {
    pub child: Child,
}

impl Drop for Registry {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(5));
    }
}

/// `regfs mount`, stopped by pid when dropped; the mount is then detached whatever
/// happened (a killed daemon leaves a stale mount).
pub struct Daemon {
    pub child: Child,
    pub mnt: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(15));
        let _ = rustix::mount::unmount(&self.mnt, rustix::mount::UnmountFlags::DETACH);
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

/// The registry's htpasswd user (Debian's default config.yml has htpasswd auth).
pub const REGISTRY_USER: &str = "regfs-e2e";
pub const REGISTRY_PASSWORD: &str = "regfs-e2e-password";

/// An HTTP answer.
pub struct Answer {
    pub status: u16,
    /// (The soak reads headers; the end-to-end test only statuses and bodies.)
    #[allow(dead_code)]
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[allow(dead_code)]
impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_string()
    }
}

/// One client for every request: every status is an answer, redirects are not
/// followed (the registry's `Location`s are read), no proxy, 60 s at most.
fn agent() -> &'static ureq::Agent {
    static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into()
    })
}

/// One request to the registry on `port` as [`REGISTRY_USER`].
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Answer, String> {
    use base64::Engine as _;
    let creds = base64::engine::general_purpose::STANDARD
        .encode(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}"));
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("Authorization", format!("Basic {creds}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let sent = match method {
        "GET" | "HEAD" | "DELETE" if body.is_empty() => {
            agent().run(req.body(()).map_err(|e| e.to_string())?)
        }
        _ => agent().run(req.body(body).map_err(|e| e.to_string())?),
    };
    let mut resp = sent.map_err(|e| format!("{method} {path}: {e}"))?;
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .map_err(|e| format!("{method} {path}: receive: {e}"))?;
    Ok(Answer {
        status: resp.status().as_u16(),
        headers,
        body,
    })
}

/// `method path` with an `Accept` header: (status, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    accept: Option<&str>,
) -> Result<(u16, Vec<u8>), String> {
    let accept: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
    request(port, method, path, &accept, &[]).map(|a| (a.status, a.body))
}

pub const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

// ---------------------------------------------------------------------------------------
// Digests and the store

pub fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn file_digest(path: &Path) -> std::io::Result<String> {
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

pub fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("a sha256 digest")
}

pub fn short(digest: &str) -> &str {
    &hex(digest)[..12]
}

/// Every regular file under `dir` (symbolic links are not followed).
pub fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
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
pub fn tree_bytes(dir: &Path) -> u64 {
    let mut files = Vec::new();
    walk(dir, &mut files);
    files
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

//! One test's daemon with its HTTP listener, credentials, and curl to talk to it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common;
use crate::common::daemon::Daemon;
use crate::common::prereq::Needs;
use crate::common::store::StoreBuilder;

pub const USER: &str = "admin";
pub const PASSWORD: &str = "s3cret-pass";
pub const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// A test's directories, credentials and port.
pub struct Env {
    pub storage: PathBuf,
    pub mnt: PathBuf,
    pub state: PathBuf,
    pub htpasswd: PathBuf,
    pub token: PathBuf,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fresh directories, an htpasswd file (bcrypt, made by Debian's htpasswd as for the
/// registry) and a token file; `None` when FUSE or a program is missing outside CI.
pub fn env(extra: &[&str]) -> Option<Env> {
    let needs = [&["curl", "htpasswd"][..], extra].concat();
    if !Needs::new()
        .root()
        .dev_fuse()
        .on_path(&needs)
        .met("web API tests")
    {
        return None;
    }
    let (dir, storage, mnt) = common::daemon::dirs();
    let htpasswd = dir.path().join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-B", "-b", "-c"])
        .arg(&htpasswd)
        .args([USER, PASSWORD])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::describe_output(&out));
    let token = dir.path().join("token");
    fs::write(&token, format!("{TOKEN}\n")).unwrap();
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
    Some(Env {
        state: dir.path().join("state"),
        storage,
        mnt,
        htpasswd,
        token,
        port: free_port(),
        dir,
    })
}

impl Env {
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `regfs mount` with the listener on this test's port, both credentials and `args`.
    pub fn start(&self, args: &[&str]) -> Daemon {
        let creds = [
            "--api-htpasswd",
            self.htpasswd.to_str().unwrap(),
            "--api-token-file",
            self.token.to_str().unwrap(),
        ];
        self.start_bare(&[&creds[..], args].concat())
    }

    /// `regfs mount` with the listener on this test's port and `args` alone.
    pub fn start_bare(&self, args: &[&str]) -> Daemon {
        let listen = format!("127.0.0.1:{}", self.port);
        let mut all = vec![
            self.storage.to_str().unwrap(),
            self.mnt.to_str().unwrap(),
            "--http-listen",
            &listen,
        ];
        all.extend_from_slice(args);
        let d = Daemon::start(&self.mnt, &self.state, &all);
        wait_listening(self.port);
        d
    }

    /// Garbage: blobs no manifest names (collected by a run, `--gc-min-age 0s`), and one
    /// tagged image that stays.
    pub fn garbage(&self, n: usize) {
        let s = StoreBuilder::new(&self.storage);
        for i in 0..n {
            s.blob(format!("garbage {i} {}", "x".repeat(i * 100)).as_bytes());
        }
        let (mf, _) = s.image("app", &[s.blob(b"kept layer")], "t");
        s.tag("app", "v1", &mf);
    }

    pub fn curl(&self, method: &str, path: &str, args: &[&str]) -> Resp {
        curl(method, &format!("{}{path}", self.base()), args)
    }

    /// A request as the admin (htpasswd user).
    pub fn admin(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        let auth = format!("{USER}:{PASSWORD}");
        let mut args = vec!["-u", &auth];
        if let Some(b) = body {
            args.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        self.curl(method, path, &args)
    }
}

/// Waits until something accepts connections on `port`.
pub fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP answer as curl got it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// The head, header names in lower case.
    pub head: String,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            (n.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_string())
        })
    }
}

/// `curl -X METHOD URL ARGS...`, with the head and body of the answer.
pub fn curl(method: &str, url: &str, args: &[&str]) -> Resp {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-i",
            "--max-time",
            "10",
            "--noproxy",
            "*",
            "-X",
            method,
        ])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {method} {url}: {}",
        common::describe_output(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Resp {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Opens a file for writing through the mount and keeps it: a run's epoch waits for it
/// (up to the drain timeout), so the run stays visible for as long as the test needs.
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

/// Polls `GET path` until `pred` holds on its JSON; returns it.
pub fn wait_json(env: &Env, path: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = env.curl("GET", path, &[]).json();
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: never; last {v:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ci/app` with two tags, each on its own image: `new`, pushed now, and `old`, whose
/// link says it was pushed ten days ago. The old tag's manifest and its link.
pub fn ci_app_old_and_new(storage: &Path) -> (regfs::layout::Digest, PathBuf) {
    let s = crate::common::store::StoreBuilder::new(storage);
    let (old, _) = s.image("ci/app", &[s.blob(b"old layer")], "old");
    let (new, _) = s.image("ci/app", &[s.blob(b"new layer")], "new");
    s.tag("ci/app", "old", &old);
    s.tag("ci/app", "new", &new);
    let link = s.repo("ci/app").join("_manifests/tags/old/current/link");
    let f = fs::File::options().write(true).open(&link).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(10 * 86400))
        .unwrap();
    (old, link)
}

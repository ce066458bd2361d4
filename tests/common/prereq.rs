//! What a test needs from the machine (root, FUSE, programs on PATH), checked in one
//! place so every test treats a missing prerequisite the same way: under CI=true it is a
//! failure, never a skip (a CI run that skips proves nothing); elsewhere the test says
//! why it skips.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The prerequisites found missing so far.
#[derive(Default)]
pub struct Needs {
    missing: Vec<String>,
}

impl Needs {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn root(mut self) -> Self {
        if !rustix::process::geteuid().is_root() {
            self.missing.push("not running as root".to_string());
        }
        self
    }

    pub fn dev_fuse(mut self) -> Self {
        if !Path::new("/dev/fuse").exists() {
            self.missing.push("/dev/fuse is missing".to_string());
        }
        self
    }

    /// Executables on PATH (Debian package names double as the executables' names).
    pub fn on_path(mut self, exes: &[&str]) -> Self {
        for exe in exes {
            if !on_path(exe) {
                self.missing
                    .push(format!("{exe} is not on PATH (apt-get install -y {exe})"));
            }
        }
        self
    }

    /// What the registry tests need: root, the real registry, skopeo, and python3 with
    /// the `script` that drives them.
    pub fn registry_tests(script: &Path) -> Self {
        Self::new()
            .root()
            .on_path(&["python3", "docker-registry", "skopeo"])
            .file(script)
    }

    pub fn file(mut self, path: &Path) -> Self {
        if !path.is_file() {
            self.missing.push(format!("{} is missing", path.display()));
        }
        self
    }

    /// True when nothing is missing. Otherwise panics under CI=true, else prints why
    /// `who` skips and returns false.
    pub fn met(self, who: &str) -> bool {
        if self.missing.is_empty() {
            return true;
        }
        let why = format!("{who}: {}", self.missing.join("; "));
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why}");
        }
        eprintln!("skipping: {why}");
        false
    }
}

fn on_path(exe: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            std::fs::metadata(dir.join(exe)).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
    })
}

//! A real `docker-registry serve` process, for tests that need one running (its cache
//! verdict is read from its command line, environment and working directory), stopped by
//! pid on drop. Started with its configuration as an argument ([`serve`]) or in any of
//! the other ways a registry is started ([`start`]).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use regfs::registry::procs;

pub struct RegistryProcess(pub Child);

impl RegistryProcess {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the child this guard started and has not reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// How a registry is started.
#[derive(Default)]
pub struct Start<'a> {
    /// Its configuration argument (`None`: no argument, as with
    /// `REGISTRY_CONFIGURATION_PATH`).
    pub arg: Option<&'a Path>,
    pub env: &'a [(&'a str, &'a str)],
    /// Its working directory (a relative argument is resolved against it).
    pub cwd: Option<&'a Path>,
}

/// Starts the registry on `config` with `env` added, and returns once regfs can see it.
pub fn serve(config: &Path, env: &[(&str, &str)]) -> RegistryProcess {
    start(Start {
        arg: Some(config),
        env,
        cwd: None,
    })
}

/// Starts the registry as `how` says, and returns once regfs can see it.
pub fn start(how: Start) -> RegistryProcess {
    let mut cmd = Command::new("docker-registry");
    cmd.arg("serve");
    if let Some(a) = how.arg {
        cmd.arg(a);
    }
    if let Some(d) = how.cwd {
        cmd.current_dir(d);
    }
    let child = cmd
        .envs(how.env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry serve");
    // Its command line and environment are readable once it has exec'd.
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = child.id();
    let guard = RegistryProcess(child);
    while !procs::registries().iter().any(|p| p.pid == pid) {
        assert!(Instant::now() < deadline, "docker-registry did not start");
        thread::sleep(Duration::from_millis(20));
    }
    guard
}

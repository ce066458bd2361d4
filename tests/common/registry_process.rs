//! A real `docker-registry serve CONFIG` process, for tests that need one running (its
//! cache verdict is read from its command line and environment), stopped by pid on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use regfs::registry::cache;

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

/// Starts the registry on `config` with `env` added, and returns once regfs can see it.
pub fn serve(config: &Path, env: &[(&str, &str)]) -> RegistryProcess {
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(config)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry serve");
    // Its command line and environment are readable once it has exec'd.
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = child.id();
    let guard = RegistryProcess(child);
    while !cache::registry_processes(config)
        .iter()
        .any(|p| p.pid == pid)
    {
        assert!(Instant::now() < deadline, "docker-registry did not start");
        thread::sleep(Duration::from_millis(20));
    }
    guard
}

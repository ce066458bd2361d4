//! Processes: `regfs gc --offline` on a copy of the fixture's store, and the registry's
//! own collector (`docker-registry garbage-collect`) and server on another copy.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::describe_output;
use crate::fixture::{Fixture, script};

// ---------------------------------------------------------------------------------------
// Processes

pub fn run(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// `cp -a` the fixture's store to `dest` (which must not exist).
pub fn copy_store(fx: &Fixture, dest: &Path) {
    let out = run(Command::new("cp").arg("-a").arg(fx.store()).arg(dest));
    assert!(out.status.success(), "cp -a: {}", describe_output(&out));
}

/// `regfs gc --offline STORE ARGS`: its output, and its JSON report when it printed one.
pub fn regfs_gc(store: &Path, args: &[&str]) -> (Output, Option<Value>) {
    let t0 = Instant::now();
    let out = run(Command::new(env!("CARGO_BIN_EXE_regfs"))
        .args(["gc", "--offline"])
        .arg(store)
        .args(if args.contains(&"--min-age") {
            &[][..]
        } else {
            &["--min-age", "0s"][..]
        })
        .args(args));
    eprintln!(
        "regfs gc --offline {} {} took {:.3} s",
        store.display(),
        args.join(" "),
        t0.elapsed().as_secs_f64()
    );
    let report = serde_json::from_slice(&out.stdout).ok();
    (out, report)
}

/// A successful `regfs gc --offline STORE --json ARGS`: its report.
pub fn regfs_gc_ok(store: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (out, report) = regfs_gc(store, &all);
    assert!(
        out.status.success(),
        "regfs gc failed: {}",
        describe_output(&out)
    );
    let report = report.unwrap_or_else(|| panic!("no JSON report: {}", describe_output(&out)));
    assert_eq!(report["outcome"], "done", "report: {report:#}");
    assert_eq!(
        report["warnings"].as_array().map(Vec::len),
        Some(0),
        "warnings: {report:#}"
    );
    report
}

pub fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("report field {field} is not a count: {report:#}"))
}

/// `docker-registry garbage-collect [ARGS] CONFIG` on `store`, with a copy of the fixture's
/// registry.yml whose rootdirectory is `store`.
pub fn peer_gc(fx: &Fixture, store: &Path, work: &Path, args: &[&str]) {
    let text = fs::read_to_string(fx.dir.join("registry.yml")).expect("registry.yml");
    let mut replaced = 0;
    let config: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("rootdirectory:") {
                replaced += 1;
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}rootdirectory: {}\n", store.display())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_eq!(replaced, 1, "registry.yml has one rootdirectory:\n{text}");
    let path = work.join(format!(
        "gc-{}.yml",
        store.file_name().unwrap().to_string_lossy()
    ));
    fs::write(&path, config).expect("write registry config");
    let t0 = Instant::now();
    let out = run(Command::new("docker-registry")
        .arg("garbage-collect")
        .args(args)
        .arg(&path));
    eprintln!(
        "docker-registry garbage-collect {} took {:.3} s",
        args.join(" "),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "docker-registry garbage-collect failed: {}",
        describe_output(&out)
    );
}

/// A docker-registry serving a store, started by `registry-fixture.py serve --foreground`
/// (which stays its parent). Dropping it kills the registry by its pid, waits until its
/// port is closed, then reaps the script.
pub struct Registry {
    pub script: Child,
    pub pid: i32,
    pub port: u16,
}

impl Registry {
    pub fn serve(work: &Path, store: &Path) -> Registry {
        let log = File::create(work.join("serve-script.log")).expect("serve log");
        let mut script = Command::new("python3")
            .arg(script())
            .arg("serve")
            .arg(work.join("serve"))
            .arg(store)
            .arg("--foreground")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start registry-fixture.py serve");
        let mut line = String::new();
        let read = BufReader::new(script.stdout.take().expect("stdout")).read_line(&mut line);
        let parsed = line
            .split_whitespace()
            .map(str::parse::<i64>)
            .collect::<Result<Vec<_>, _>>();
        match (read, parsed.as_deref()) {
            (Ok(_), Ok([port, pid])) => Registry {
                script,
                pid: *pid as i32,
                port: *port as u16,
            },
            _ => {
                let _ = script.kill();
                let _ = script.wait();
                let log = fs::read_to_string(work.join("serve-script.log")).unwrap_or_default();
                panic!("registry-fixture.py serve printed {line:?}, not PORT PID:\n{log}");
            }
        }
    }

    pub fn port_open(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        use rustix::process::{Pid, Signal, kill_process};
        let pid = Pid::from_raw(self.pid).expect("registry pid");
        let _ = kill_process(pid, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.port_open() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.port_open() {
            let _ = kill_process(pid, Signal::KILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.port_open() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // The script exits once its child has; reap it (or kill it if it hangs).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.script.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = self.script.kill();
                    let _ = self.script.wait();
                    break;
                }
            }
        }
        if !std::thread::panicking() {
            assert!(!self.port_open(), "registry port {} still open", self.port);
        }
    }
}

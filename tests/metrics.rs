//! Prometheus metrics as a scraper reads them: a real HTTP GET, the body parsed.
mod common;

use std::collections::HashMap;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::store::StoreBuilder;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A daemon serving `storage` at `mnt` with metrics on a free loopback port.
fn start_with_metrics(dir: &Path, storage: &Path, mnt: &Path) -> (Daemon, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        storage.to_str().unwrap(),
        mnt.to_str().unwrap(),
        "--metrics-listen",
        &listen,
    ];
    let d = Daemon::start(mnt, &dir.join("state"), &args);
    // The listener starts after the mount.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    (d, port)
}

/// An HTTP client that hands back every answer, whatever its status.
fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .proxy(None)
        .build()
        .into()
}

/// GET `path`: the status, the `Content-Type` and the body.
fn get(port: u16, path: &str, timeout: Duration) -> Result<(u16, String, String), String> {
    let mut r = agent(timeout)
        .get(format!("http://127.0.0.1:{port}{path}"))
        .call()
        .map_err(|e| e.to_string())?;
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
    Ok((r.status().as_u16(), content_type, body))
}

/// The samples of an exposition by `name{labels}`.
fn samples(body: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in body.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(name.to_string(), v);
    }
    out
}

/// GET /metrics; the samples by `name{labels}`.
fn scrape(port: u16) -> HashMap<String, f64> {
    let (status, content_type, body) = get(port, "/metrics", Duration::from_secs(10)).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    samples(&body)
}

#[test]
fn metrics_report_fuse_operations_and_gc_runs() {
    let Some((dir, storage, mnt)) = common::daemon::fuse_dirs() else {
        return;
    };
    let s = StoreBuilder::new(&storage);
    let garbage: Vec<_> = (0..3)
        .map(|i| s.blob(format!("garbage {i}").as_bytes()))
        .collect();
    let (d, port) = start_with_metrics(dir.path(), &storage, &mnt);
    let before = scrape(port);
    assert_eq!(before["regfs_gc_state{state=\"idle\"}"], 1.0);
    assert_eq!(before["regfs_store_read_only"], 0.0);
    assert_eq!(before["regfs_gc_bytes_freed_total"], 0.0);

    fs::write(mnt.join("f"), b"x").unwrap();
    assert!(fs::metadata(mnt.join("missing")).is_err());
    let m = scrape(port);
    assert!(m["regfs_fuse_operations_total{op=\"create\"}"] >= 1.0);
    assert!(m["regfs_fuse_operations_total{op=\"lookup\"}"] >= 1.0);
    assert!(m["regfs_fuse_errors_total{op=\"lookup\",errno=\"2\",kind=\"NotFound\"}"] >= 1.0);

    d.signal(libc::SIGUSR1);
    d.wait_for_jobs(1);
    let m = scrape(port);
    assert_eq!(
        m["regfs_gc_runs_total{mode=\"read-only\",trigger=\"signal\",outcome=\"done\"}"],
        1.0
    );
    assert_eq!(
        m["regfs_gc_deleted_total{kind=\"blobs\"}"],
        garbage.len() as f64
    );
    assert!(m["regfs_gc_bytes_freed_total"] > 0.0);
    assert!(m["regfs_gc_read_only_seconds_total"] > 0.0);
    assert_eq!(m["regfs_gc_run_duration_seconds_count"], 1.0);
    assert!(m["regfs_gc_last_success_timestamp_seconds"] > 1.7e9);
    assert_eq!(m["regfs_gc_state{state=\"idle\"}"], 1.0);
    assert_eq!(m["regfs_gc_mode{mode=\"read-only\"}"], 1.0);
    assert_eq!(m["regfs_gc_mode{mode=\"online\"}"], 0.0);
    // Read-only runs do not pause: they close.
    assert_eq!(m["regfs_gc_pause_seconds_count"], 0.0);

    // A path the listener does not serve is a 404.
    let (status, _, body) = get(port, "/nothing", Duration::from_secs(10)).unwrap();
    assert_eq!(status, 404, "{body}");
}

#[test]
fn a_non_loopback_metrics_address_is_refused_unless_allowed() {
    let out = std::process::Command::new(common::daemon::BIN)
        .args([
            "mount",
            "/nonexistent-a",
            "/nonexistent-b",
            "--metrics-listen",
            "0.0.0.0:9469",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--metrics-listen") && err.contains("not a loopback address"),
        "{err}"
    );
}

/// The daemon's thread count, from /proc.
fn threads_of(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("Threads: in /proc/PID/status")
}

/// Raises this test process's open-file limit so it can hold many connections.
fn raise_own_nofile(want: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let hard = cur.maximum.unwrap_or(u64::MAX);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want.min(hard)),
            maximum: cur.maximum,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(0)
}

/// GET /metrics with a deadline; the body's samples, or why not.
fn scrape_within(port: u16, limit: Duration) -> Result<HashMap<String, f64>, String> {
    let started = Instant::now();
    let (status, _, body) =
        get(port, "/metrics", limit).map_err(|e| format!("after {:?}: {e}", started.elapsed()))?;
    if status != 200 {
        return Err(format!("{status}: {body}"));
    }
    Ok(samples(&body))
}

#[test]
fn idle_connections_cost_no_threads_and_scrapes_still_answer() {
    let Some((dir, storage, mnt)) = common::daemon::fuse_dirs() else {
        return;
    };
    let (d, port) = start_with_metrics(dir.path(), &storage, &mnt);
    let pid = d.child.id();
    scrape(port);
    let before = threads_of(pid);
    const IDLE: usize = 2000;
    assert!(raise_own_nofile(IDLE as u64 + 200) > IDLE as u64 + 100);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // Connections that never send a request, all held open.
    let idle: Vec<TcpStream> = (0..IDLE)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .collect();
    assert!(idle.len() > IDLE / 2, "only {} connections", idle.len());
    std::thread::sleep(Duration::from_millis(500));
    let during = threads_of(pid);
    println!(
        "{} idle connections: daemon threads {before} before, {during} while held",
        idle.len()
    );
    assert!(
        during <= before + 2,
        "{} idle connections took the daemon from {before} to {during} threads",
        idle.len()
    );
    // A scraper is answered at once while they are held, and the daemon holds no more
    // than a bounded number of them.
    let m = scrape_within(port, Duration::from_secs(3)).unwrap();
    assert!(
        m["regfs_open_fds"] < 1000.0,
        "the daemon holds {} descriptors with {} idle connections",
        m["regfs_open_fds"],
        idle.len()
    );
    assert!(m["regfs_fd_limit"] >= 1024.0, "{m:?}");
    assert!(m["regfs_fd_budget"] >= 64.0 && m["regfs_fd_budget"] <= m["regfs_fd_limit"]);
    drop(idle);
    let m = scrape_within(port, Duration::from_secs(3)).unwrap();
    assert!(m["regfs_open_fds"] < 1000.0);
    assert!(threads_of(pid) <= before + 2);
}

/// The soft and hard "Max open files" of a process.
fn nofile_of(pid: u32) -> (u64, u64) {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1])
}

#[test]
fn the_descriptor_limit_is_raised_and_the_budget_reported_in_status_and_metrics() {
    let Some((dir, storage, mnt)) = common::daemon::fuse_dirs() else {
        return;
    };
    let state = dir.path().join("state");
    let port = free_port();
    // Started with a low soft limit, as a shell with the usual 1024 would.
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -Sn 256 && exec \"$0\" \"$@\"")
        .arg(common::daemon::BIN)
        .arg("mount")
        .args([&storage, &mnt])
        .arg("--state-dir")
        .arg(&state)
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let d = Daemon::adopt(child, &mnt, &state);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(common::daemon::serving(&mnt) && state.join("control.sock").exists()) {
        assert!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (soft, hard) = nofile_of(d.child.id());
    assert!(hard > 256, "this test needs a hard limit above 256");
    assert_eq!(soft, hard, "the soft limit is raised to the hard one");

    let st = d.status();
    let fds = &st["descriptors"];
    assert_eq!(fds["limit"], soft, "{st:#}");
    assert_eq!(fds["hard_limit"], hard, "{st:#}");
    let budget = soft.min(1 << 22) / 2;
    assert_eq!(fds["budget"], budget, "half the limit: {st:#}");
    let open = fds["open"].as_u64().unwrap();
    assert!(open > 3 && open < soft, "{st:#}");
    assert!(fds["inode_fds"].as_u64().unwrap() <= budget);
    let (code, text, err) = d.regfs(&["status", mnt.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains(&format!(
            "of limit {soft} (hard {hard}); inode budget {budget}"
        )),
        "{text}"
    );

    let m = scrape(port);
    assert_eq!(m["regfs_fd_limit"], soft as f64);
    assert_eq!(m["regfs_fd_budget"], budget as f64);
    assert!(m["regfs_open_fds"] > 3.0, "{m:?}");
    assert!(m.contains_key("regfs_inode_fds"), "{m:?}");
}

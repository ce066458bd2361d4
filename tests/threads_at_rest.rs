//! A daemon at rest runs the same threads before and after GC runs: every pool a run
//! starts (the collector's threads of the mark and of the sweep) is joined when the run
//! ends, in each mode.

mod common;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::store::StoreBuilder;

fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// The thread count once it has settled at `want` (or the last count after 5 s).
fn settled(pid: u32, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = threads_of(pid);
        if n == want || Instant::now() > deadline {
            return n;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn the_daemon_runs_as_many_threads_at_rest_after_runs_of_each_mode_as_before() {
    for mode in ["read-only", "online"] {
        let Some((dir, storage, mnt)) = common::daemon::fuse_dirs() else {
            return;
        };
        let b = StoreBuilder::new(&storage);
        for i in 0..20 {
            let garbage = b.blob(format!("garbage {i}").as_bytes());
            b.layer_link("r", &garbage);
        }
        let state = dir.path().join("state");
        let d = Daemon::start(&mnt, &state, &[&s(&storage), &s(&mnt), "--gc-mode", mode]);
        let pid = d.child.id();
        // At rest: the status a test asks for has been answered.
        d.status();
        thread::sleep(Duration::from_millis(300));
        let before = threads_of(pid);
        for run in 1..=2 {
            let mnt = s(&mnt);
            // The last run's record is written a moment before its slot is free.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let (code, out, err) = d.regfs(&["gc", &mnt]);
                if code == 0 {
                    break;
                }
                assert!(
                    err.contains("already running") && Instant::now() < deadline,
                    "{out}{err}"
                );
                thread::sleep(Duration::from_millis(50));
            }
            let jobs = d.wait_for_jobs(run);
            assert_eq!(jobs[run - 1]["outcome"], "done", "{:#}", jobs[run - 1]);
        }
        let after = settled(pid, before);
        println!("{mode}: {before} threads at rest before two runs, {after} after");
        assert_eq!(
            after, before,
            "{mode}: threads at rest after two runs ({after}) != before ({before})"
        );
    }
}

//! `regfs status` and the job history: right while the daemon runs, kept across a
//! restart, a run stopped by SIGUSR2, and a run interrupted by a killed daemon.

use std::thread;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;

use crate::common::store::StoreBuilder;
use crate::daemon::{Daemon, assert_writable, hold_writer, jobs_of, started_id, text, utc};
use crate::fixture::{Env, env};

#[test]
fn status_and_history_are_right_and_survive_a_restart() {
    let Some(e) = env() else { return };
    let b = StoreBuilder::new(&e.storage);
    let (mf, _) = b.image("team/web", &[b.blob(b"web layer")], "w");
    b.tag("team/web", "latest", &mf);
    let g1 = b.blob(b"first garbage");
    b.layer_link("team/web", &g1);
    let flags = [
        "--delete-untagged",
        "--upload-max-age",
        "2h",
        "--drain-timeout",
        "5",
    ];
    let mut d = Daemon::start(&e, &flags);
    let expected_settings = serde_json::json!({
        "mode": "read-only",
        "duration": "until-done",
        "delete_untagged": true,
        "dry_run": false,
        "upload_max_age": "2h",
        "min_age": "0s",
        "drain_timeout": "5s",
    });
    let st = d.status();
    assert_eq!(st["settings"], expected_settings, "{st:#}");
    assert!(st["last_job"].is_null() && st["schedule"].is_null() && st["next_run"].is_null());
    assert!(d.jobs().is_empty());

    let out = d.cli_ok(&["gc"], &["--wait"]);
    assert_eq!(
        started_id(&text(&out.stdout)),
        Some(1),
        "{}",
        text(&out.stdout)
    );
    d.signal(libc::SIGUSR1);
    d.wait_job(2, Duration::from_secs(10));

    let jobs = d.jobs();
    assert_eq!(jobs.len(), 2, "{jobs:#?}");
    let check = |jobs: &[Value]| {
        assert_eq!(jobs[0]["id"], 1);
        assert_eq!(jobs[1]["id"], 2);
        assert_eq!(jobs[0]["trigger"], "cli");
        assert_eq!(jobs[1]["trigger"], "signal");
        let mut last_end = None;
        for j in &jobs[..2] {
            assert_eq!(j["outcome"], "done", "{j:#}");
            assert_eq!(j["settings"], expected_settings, "{j:#}");
            assert!(j["read_only_seconds"].as_f64().unwrap() >= 0.0);
            assert!(j["drain_seconds"].as_f64().unwrap() >= 0.0);
            let s = utc(&j["started_at"], "started_at");
            let en = utc(&j["ended_at"], "ended_at");
            assert!(s <= en, "{j:#}");
            if let Some(prev) = last_end {
                assert!(
                    prev <= s,
                    "job {} started before the previous ended",
                    j["id"]
                );
            }
            last_end = Some(en);
        }
        assert_eq!(jobs[0]["report"]["blobs_deleted"], 1, "{:#}", jobs[0]);
        assert_eq!(jobs[1]["report"]["blobs_deleted"], 0, "{:#}", jobs[1]);
    };
    check(&jobs);
    let last = jobs_of(&e.mnt, &e.state, Some(1));
    assert_eq!(last.len(), 1);
    assert_eq!(last[0]["id"], 2);
    assert_eq!(jobs_of(&e.mnt, &e.state, Some(5)).len(), 2);
    let st = d.status();
    assert_eq!(st["last_job"]["id"], 2, "{st:#}");
    assert_eq!(st["last_job"]["outcome"], "done", "{st:#}");
    // Human-readable listings say the same.
    let out = d.cli(&["jobs"], &[]);
    let listing = text(&out.stdout);
    assert!(
        listing.contains("job 1 (cli") && listing.contains("job 2 (signal"),
        "{listing}"
    );

    // Restart on the same state directory.
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)), 0, "{}", d.log());
    drop(d);
    let mut d = Daemon::start(&e, &flags);
    check(&d.jobs());
    assert_eq!(d.status()["last_job"]["id"], 2);
    assert_eq!(d.gc(), 3, "ids continue after a restart");
    let j3 = d.wait_job(3, Duration::from_secs(10));
    assert_eq!(j3["outcome"], "done");

    // SIGUSR2 stops a run safely: recorded as stopped, nothing deleted, writable again.
    let g2 = b.blob(b"second garbage");
    let held = hold_writer(&e.mnt);
    assert_eq!(d.gc(), 4);
    d.wait_closing(4);
    let asked = Instant::now();
    d.signal(libc::SIGUSR2);
    let j4 = d.wait_job(4, Duration::from_secs(5));
    assert!(
        asked.elapsed() < Duration::from_millis(1500),
        "SIGUSR2 took {:?}",
        asked.elapsed()
    );
    assert_eq!(j4["outcome"], "stopped", "{j4:#}");
    assert_eq!(j4["ended_in"], "mark", "{j4:#}");
    assert!(
        b.has_blob(&g2),
        "a run stopped before its sweep deletes nothing"
    );
    let st = d.status();
    assert!(st["state"] == "idle" && st["read_only"] == false, "{st:#}");
    assert_writable(&e.mnt, "after-sigusr2");
    drop(held);
    assert_eq!(job_ids(&e), vec![1, 2, 3, 4]);

    // A daemon killed mid-run: the run is recorded as interrupted at the next start.
    let held = hold_writer(&e.mnt);
    assert_eq!(d.gc(), 5);
    d.wait_closing(5);
    assert!(
        e.state.join("running.json").exists(),
        "running.json while a job runs"
    );
    // Let it run a while, and note a moment it was still running.
    thread::sleep(Duration::from_millis(1500));
    let seen_running = Utc::now();
    let st = d.status();
    assert!(
        st["state"] == "closing" && st["current_job"]["id"] == 5,
        "{st:#}"
    );
    d.guard.child.kill().unwrap();
    d.guard.child.wait().unwrap();
    drop(held);
    drop(d);
    assert_eq!(
        job_ids(&e),
        vec![1, 2, 3, 4],
        "not recorded until the next start"
    );
    let d = Daemon::start(&e, &flags);
    let jobs = d.jobs();
    assert_eq!(jobs.len(), 5, "{jobs:#?}");
    check(&jobs);
    let j5 = &jobs[4];
    assert_eq!(j5["id"], 5, "{j5:#}");
    assert_eq!(j5["outcome"], "interrupted", "{j5:#}");
    assert_eq!(j5["trigger"], "cli", "{j5:#}");
    assert!(j5["error"].is_string(), "{j5:#}");
    assert!(!e.state.join("running.json").exists());
    assert!(
        d.log().contains("interrupted"),
        "the start says so:\n{}",
        d.log()
    );
    assert_eq!(d.status()["last_job"]["id"], 5);
    let j6 = d.gc_wait();
    assert_eq!(j6["id"], 6, "{j6:#}");
    assert_eq!(j6["outcome"], "done", "{j6:#}");
    assert_writable(&e.mnt, "after-restarts");
    // Last, as these fail today. The interrupted job did not end before a moment it was
    // seen running (a second's slack for a daemon that only notes a sign of life now and
    // then), and certainly not before it started.
    let (started, ended) = (
        utc(&j5["started_at"], "started_at"),
        utc(&j5["ended_at"], "ended_at"),
    );
    assert!(
        ended >= seen_running - chrono::Duration::seconds(1),
        "job 5 was running at {seen_running} (status said so) but is recorded as ended at \
         {ended}: {j5:#}"
    );
    assert!(
        started <= ended,
        "an interrupted job ends after it started: {j5:#}"
    );
}

pub fn job_ids(e: &Env) -> Vec<u64> {
    jobs_of(&e.mnt, &e.state, None)
        .iter()
        .map(|j| j["id"].as_u64().unwrap())
        .collect()
}

/// A daemon started with `--gc-min-age 1h` keeps an unreferenced blob uploaded just
/// before its run (with its `_layers` link), says so in the job's report, in `regfs jobs`
/// and in `regfs status`, and collects old garbage beside it.
#[test]
fn a_daemon_keeps_garbage_younger_than_its_minimum_age_and_reports_it() {
    let Some(e) = env() else { return };
    let b = StoreBuilder::new(&e.storage);
    let young = b.blob(b"layer whose manifest is not pushed yet");
    b.layer_link("team/web", &young);
    let old = b.blob(b"garbage from yesterday");
    std::fs::File::options()
        .write(true)
        .open(b.blob_dir(&old).join("data"))
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(86_400))
        .unwrap();
    let d = Daemon::start(&e, &["--gc-min-age", "1h"]);
    assert_eq!(d.status()["settings"]["min_age"], "1h");
    let job = d.gc_wait();
    assert_eq!(job["report"]["young_blobs_kept"], 1, "{job:#}");
    assert_eq!(job["report"]["blobs_deleted"], 1, "{job:#}");
    assert!(b.has_blob(&young) && !b.has_blob(&old));
    let link = b.repo("team/web").join("_layers/sha256").join(young.hex());
    assert!(link.exists(), "the young blob's _layers link stays");
    let out = d.cli_ok(&["jobs"], &[]);
    let listed = text(&out.stdout);
    assert!(
        listed.contains("1 unreferenced blobs younger than 1h kept"),
        "{listed}"
    );
    let out = d.cli_ok(&["status"], &[]);
    assert!(
        text(&out.stdout).contains("min-age 1h"),
        "{}",
        text(&out.stdout)
    );
}

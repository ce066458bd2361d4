//! The job history stays bounded and quick to read: `[history] keep_runs` and
//! `keep_days` are enforced at each run's end (and at start, for a history an older
//! daemon let grow), and `regfs jobs --limit N` reads only the newest runs, however
//! many are recorded.
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use common::daemon::{BIN, Daemon};
use common::store::StoreBuilder;
use regfs::daemon::job::{Job, JobOutcome, JobSettings, Trigger};

fn job(id: u64, ended: chrono::DateTime<Utc>) -> Job {
    let settings = JobSettings {
        mode: "read-only".into(),
        duration: "until-done".into(),
        delete_untagged: false,
        dry_run: false,
        upload_max_age: "7days".into(),
        min_age: "1h".into(),
        drain_timeout: "10s".into(),
    };
    Job {
        outcome: JobOutcome::Done,
        ended_at: Some(ended),
        read_only_seconds: 1.5,
        drain_seconds: 0.1,
        ..Job::started(
            id,
            Trigger::Schedule,
            settings,
            ended - TimeDelta::seconds(2),
        )
    }
}

/// A history of runs `ids`, one a minute up to now, as a daemon records it.
fn write_history(state: &Path, ids: std::ops::RangeInclusive<u64>, ended_days_ago: i64) {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(state)
        .unwrap();
    let now = Utc::now() - TimeDelta::days(ended_days_ago);
    let last = *ids.end();
    let mut text = Vec::new();
    for id in ids {
        let ended = now - TimeDelta::minutes((last - id) as i64);
        serde_json::to_writer(&mut text, &job(id, ended)).unwrap();
        text.push(b'\n');
    }
    std::fs::write(state.join("jobs.jsonl"), text).unwrap();
}

fn jobs_json(state: &Path, extra: &[&str]) -> (Vec<u64>, Duration) {
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["jobs", "/nonexistent", "--json", "--state-dir"])
        .arg(state)
        .args(extra)
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "{}", common::describe_output(&out));
    let jobs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    (
        jobs.iter().map(|j| j["id"].as_u64().unwrap()).collect(),
        took,
    )
}

#[test]
fn the_newest_twenty_of_100000_runs_are_listed_in_under_100_ms() {
    if !common::prereq::Needs::new()
        .root()
        .met("regfs jobs runs as root")
    {
        return;
    }
    let dir = common::tempdir();
    let state = dir.path().join("state");
    write_history(&state, 1..=100_000, 0);
    // The command as an operator runs it, the best of three (a shared machine).
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let (ids, took) = jobs_json(&state, &["--limit", "20"]);
        assert_eq!(ids, (99_981..=100_000).collect::<Vec<_>>());
        best = best.min(took);
    }
    eprintln!("regfs jobs --limit 20 over 100,000 runs: {best:?}");
    assert!(
        best < Duration::from_millis(100),
        "regfs jobs --limit 20 took {best:?} over 100,000 recorded runs"
    );
    // Paging back.
    let (ids, _) = jobs_json(&state, &["--limit", "3", "--offset", "20"]);
    assert_eq!(ids, [99_978, 99_979, 99_980]);
}

#[test]
fn a_daemon_keeps_only_the_runs_its_history_limits_allow() {
    let Some((dir, storage, mnt)) = common::daemon::fuse_dirs() else {
        return;
    };
    let state = dir.path().join("state");
    // Left by an older daemon: 50 runs, the first 40 older than keep_days.
    write_history(&state, 1..=40, 100);
    let mut text = std::fs::read(state.join("jobs.jsonl")).unwrap();
    let recent = dir.path().join("recent");
    write_history(&recent, 41..=50, 0);
    text.extend(std::fs::read(recent.join("jobs.jsonl")).unwrap());
    std::fs::write(state.join("jobs.jsonl"), text).unwrap();
    let config = dir.path().join("regfs.toml");
    std::fs::write(&config, "[history]\nkeep_runs = 3\nkeep_days = 90\n").unwrap();
    let b = StoreBuilder::new(&storage);
    let (s, m, c) = (
        storage.display().to_string(),
        mnt.display().to_string(),
        config.display().to_string(),
    );
    let d = Daemon::start(&mnt, &state, &[&s, &m, "--config", &c]);
    let lines = || {
        std::fs::read_to_string(state.join("jobs.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(lines(), 3, "cut to keep_runs at start");
    for round in 0..4 {
        let garbage = b.blob(format!("garbage {round}").as_bytes());
        b.layer_link("r", &garbage);
        let (code, out, err) = d.regfs(&["gc", &m, "--wait"]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(!b.has_blob(&garbage));
        assert_eq!(
            lines(),
            3,
            "round {round}: cut to keep_runs at the run's end"
        );
    }
    let (ids, _) = jobs_json(&state, &[]);
    assert_eq!(ids, [52, 53, 54], "the newest runs, ids going on");
}

//! What starts a run, and what is refused: a six-field UTC schedule, `--gc-duration
//! never`, two triggers at once, and an invalid schedule at start.

use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{Timelike, Utc};

use crate::common;
use crate::common::daemon::BIN;
use crate::common::store::StoreBuilder;
use crate::daemon::{Daemon, assert_writable, hold_writer, started_id, text, utc};
use crate::fixture::{Env, env, one_tagged_image};

#[test]
fn a_six_field_schedule_fires_at_the_right_utc_second() {
    let Some(e) = env() else { return };
    one_tagged_image(&e.storage, "s");
    let target = Utc::now().with_nanosecond(0).unwrap() + chrono::Duration::seconds(4);
    let expr = format!(
        "{} {} {} * * *",
        target.second(),
        target.minute(),
        target.hour()
    );
    // UTC+14: a daemon that read the schedule in local time would be 14 hours off.
    let d = Daemon::start_env(
        &e,
        &["--gc-schedule", &expr],
        &[("TZ", "Pacific/Kiritimati")],
    );
    let st = d.status();
    assert!(
        Utc::now() < target,
        "the daemon took too long to start; test setup"
    );
    assert_eq!(st["schedule"], expr.as_str(), "{st:#}");
    assert_eq!(
        utc(&st["next_run"], "next_run"),
        target,
        "next_run is the scheduled UTC second: {st:#}"
    );
    assert!(st["current_job"].is_null());

    let job = d.wait_job(1, Duration::from_secs(8));
    assert_eq!(job["trigger"], "schedule", "{job:#}");
    assert_eq!(job["outcome"], "done", "{job:#}");
    let started = utc(&job["started_at"], "started_at");
    let late = started - target;
    assert!(
        late >= chrono::Duration::zero() && late < chrono::Duration::milliseconds(1000),
        "scheduled for {target}, started at {started} ({} ms late)",
        late.num_milliseconds()
    );
    // The next run is the same time tomorrow.
    let st = d.status();
    assert_eq!(
        utc(&st["next_run"], "next_run"),
        target + chrono::Duration::days(1),
        "{st:#}"
    );
}

#[test]
fn never_refuses_triggers() {
    let Some(e) = env() else { return };
    let b = StoreBuilder::new(&e.storage);
    let g = b.blob(b"garbage");
    // A schedule that would fire every second, to show it does not either.
    let mut d = Daemon::start(
        &e,
        &["--gc-duration", "never", "--gc-schedule", "* * * * * *"],
    );
    let st = d.status();
    assert_eq!(st["settings"]["duration"], "never", "{st:#}");
    assert!(st["next_run"].is_null(), "no run is scheduled: {st:#}");

    d.signal(libc::SIGUSR1);
    // The refusal.
    d.wait_log("SIGUSR1", Duration::from_secs(5));
    assert!(
        d.log().contains("disabled"),
        "SIGUSR1 refusal says GC is disabled:\n{}",
        d.log()
    );
    assert!(d.is_running(), "SIGUSR1 must not kill the daemon");

    let out = d.cli(&["gc"], &[]);
    assert_eq!(out.status.code(), Some(1), "regfs gc exits 1");
    let err = text(&out.stderr);
    assert!(err.contains("GC is disabled"), "{err}");
    assert!(
        !text(&out.stdout).contains("started"),
        "{}",
        text(&out.stdout)
    );
    let out = d.cli(&["gc"], &["--wait"]);
    assert_eq!(out.status.code(), Some(1), "regfs gc --wait exits 1");

    thread::sleep(Duration::from_millis(1500));
    assert!(d.jobs().is_empty(), "no job recorded: {:?}", d.jobs());
    assert!(!e.state.join("running.json").exists());
    let st = d.status();
    assert_eq!(st["state"], "idle");
    assert!(
        st["current_job"].is_null() && st["last_job"].is_null(),
        "{st:#}"
    );
    assert!(b.has_blob(&g), "nothing collected");
    assert_writable(&e.mnt, "never");
    assert!(d.is_running(), "the daemon still serves");
}

/// Two threads that each run `regfs gc` as soon as `go` releases them (its other
/// waiters, if any, are the caller's).
pub fn racing_gcs(e: &Env, go: &Arc<Barrier>) -> Vec<thread::JoinHandle<Output>> {
    (0..2)
        .map(|_| {
            let go = go.clone();
            let (mnt, state) = (e.mnt.clone(), e.state.clone());
            thread::spawn(move || {
                go.wait();
                Command::new(BIN)
                    .arg("gc")
                    .arg(&mnt)
                    .arg("--state-dir")
                    .arg(&state)
                    .output()
                    .unwrap()
            })
        })
        .collect()
}

pub fn join_all(callers: Vec<thread::JoinHandle<Output>>) -> Vec<Output> {
    callers.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn two_triggers_at_once_produce_one_run() {
    let Some(e) = env() else { return };
    one_tagged_image(&e.storage, "t");
    let d = Daemon::start(&e, &["--drain-timeout", "30"]);
    // The first run holds the epoch open until the writer closes, so whichever trigger
    // wins, the others meet a run in progress.
    let held = hold_writer(&e.mnt);
    let go = Arc::new(Barrier::new(3));
    let callers = racing_gcs(&e, &go);
    go.wait();
    d.signal(libc::SIGUSR1);
    let outs = join_all(callers);
    // Its outcome, whichever it is.
    d.wait_log("SIGUSR1:", Duration::from_secs(5));

    let mut started = vec![];
    for o in &outs {
        let (out, err) = (text(&o.stdout), text(&o.stderr));
        if o.status.success() {
            started.push(started_id(&out).expect(&out));
        } else {
            assert_eq!(o.status.code(), Some(1), "{err}");
            assert!(
                err.contains("GC job 1 is already running"),
                "the loser is told job 1 runs: {err}"
            );
        }
    }
    let signal_won = d.log().contains("SIGUSR1: GC run started");
    assert_eq!(
        started.len() + signal_won as usize,
        1,
        "exactly one trigger started a run; CLI: {started:?}, signal: {signal_won}\n{}",
        d.log()
    );
    if !signal_won {
        assert_eq!(started, vec![1]);
        assert!(
            d.log().contains("SIGUSR1: GC job 1 is already running"),
            "{}",
            d.log()
        );
    }
    let st = d.status();
    assert_eq!(st["current_job"]["id"], 1, "{st:#}");
    drop(held);
    let job = d.wait_job(1, Duration::from_secs(10));
    assert_eq!(job["outcome"], "done", "{job:#}");
    assert_eq!(
        job["trigger"],
        if signal_won { "signal" } else { "cli" },
        "{job:#}"
    );
    thread::sleep(Duration::from_millis(300));
    let jobs = d.jobs();
    assert_eq!(jobs.len(), 1, "exactly one job recorded: {jobs:#?}");
    let st = d.status();
    assert!(st["current_job"].is_null(), "{st:#}");

    // Two `regfs gc` at once against an idle daemon: one run again.
    let held = hold_writer(&e.mnt);
    let outs = join_all(racing_gcs(&e, &Arc::new(Barrier::new(2))));
    let ok: Vec<_> = outs.iter().filter(|o| o.status.success()).collect();
    assert_eq!(ok.len(), 1, "one of two parallel `regfs gc` starts a run");
    assert_eq!(started_id(&text(&ok[0].stdout)), Some(2));
    let loser = outs.iter().find(|o| !o.status.success()).unwrap();
    assert!(
        text(&loser.stderr).contains("GC job 2 is already running"),
        "{}",
        text(&loser.stderr)
    );
    drop(held);
    d.wait_job(2, Duration::from_secs(10));
    thread::sleep(Duration::from_millis(300));
    assert_eq!(d.jobs().len(), 2, "{:#?}", d.jobs());
}

#[test]
fn an_invalid_schedule_is_refused_at_start() {
    for (expr, hints) in [
        ("61 * * * *", &["61", "inute"][..]),
        ("* * *", &["3 fields"][..]),
        ("0 3 * * 8", &["day of week"][..]),
        ("0 0 0 30 2 * *", &["never fires"][..]),
        // Must say what is wrong: unknown shorthand, and which ones exist.
        ("@fortnightly", &["@hourly"][..]),
    ] {
        let Some(e) = env() else { return };
        let child = Command::new(BIN)
            .arg("mount")
            .arg(&e.storage)
            .arg(&e.mnt)
            .arg("--state-dir")
            .arg(&e.state)
            .args(["--gc-schedule", expr])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Kills it and detaches whatever it mounted, however the checks end.
        let mut d = common::daemon::Daemon::adopt(child, &e.mnt, &e.state);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = d.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() <= deadline,
                "regfs mount --gc-schedule {expr:?} kept running"
            );
            thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut d.child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(1), "{expr}: {err}");
        assert!(err.contains(expr), "{expr:?}: the message names it: {err}");
        assert!(err.contains("--gc-schedule"), "{expr:?}: {err}");
        for h in hints {
            assert!(
                err.contains(h),
                "{expr:?}: says what is wrong ({h:?}): {err}"
            );
        }
        // Checked before the guard detaches anything, so that a mount left behind shows.
        assert!(
            regfs::mount::mount_at(&e.mnt).is_none(),
            "{expr}: nothing mounted"
        );
    }
}

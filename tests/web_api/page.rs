//! The page in Debian's headless chromium, clicked and typed into as a person would:
//! the banner appears when a run starts and goes when it ends, "Save & start" starts a
//! run, "Stop" stops one, the history lists both, the schedule's next five UTC runs show
//! as it is typed, "Save" saves. Screenshots are kept in target/test-artifacts/.

use std::path::PathBuf;

use crate::cdp::Browser;
use crate::fixture::{Env, TOKEN, env, hold_writer, wait_json};

fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts")
}

const BANNER_SHOWN: &str = "!document.getElementById('banner').hidden && document.getElementById('banner').textContent.includes('READ-ONLY')";
const BANNER_GONE: &str = "document.getElementById('banner').hidden";

#[test]
fn the_page_starts_stops_and_lists_runs_with_a_banner_while_read_only() {
    let Some(e) = env(&["chromium"]) else { return };
    e.garbage(3);
    let _d = e.start(&["--drain-timeout", "30"]);
    let mut b = Browser::launch();
    b.open(&format!("{}/", e.base()));
    b.wait_for(
        "document.getElementById('where').textContent.includes('regfs at')",
        "the page shows the mount",
    );
    b.wait_for(BANNER_GONE, "no banner while idle");
    b.wait_for(
        "document.getElementById('duration-until-done').checked",
        "the form shows the daemon's settings",
    );
    // Without signing in, a change is refused and the page says why.
    b.click("save-start");
    b.wait_for(
        "document.getElementById('message').textContent.includes('credentials')",
        "the refusal shown",
    );
    b.wait_for(
        "document.getElementById('signin').open",
        "the sign-in opened",
    );
    assert!(e.curl("GET", "/api/v1/jobs", &[]).json()["total"] == 0);
    b.type_into("auth-token", TOKEN);

    // "Save & start": a run starts; the banner says pushes are refused while it runs.
    let held = hold_writer(&e.mnt);
    b.click("save-start");
    b.wait_for(BANNER_SHOWN, "the banner when the run starts");
    let st = e.curl("GET", "/api/v1/status", &[]).json();
    assert_eq!(st["read_only"], true, "{st:#}");
    assert_eq!(st["current_job"]["trigger"], "api", "{st:#}");
    b.wait_for("!document.getElementById('stop').disabled", "Stop offered");
    // The run ends once the writer it waits for is gone: the banner goes.
    drop(held);
    b.wait_for(BANNER_GONE, "the banner gone when the run ends");
    let st = wait_json(&e, "/api/v1/status", "run 1 recorded", |s| {
        s["last_job"]["id"] == 1
    });
    assert_eq!(st["last_job"]["outcome"], "done", "{st:#}");
    assert_eq!(st["last_job"]["report"]["blobs_deleted"], 3, "{st:#}");

    // "Stop" stops a run.
    let held = hold_writer(&e.mnt);
    b.click("save-start");
    b.wait_for(BANNER_SHOWN, "the banner for the second run");
    b.wait_for("!document.getElementById('stop').disabled", "Stop offered");
    b.wait_for(
        "document.querySelectorAll('#chart rect.freed').length === 1",
        "the first run charted",
    );
    b.screenshot(&artifacts().join("gc-page-running.png"), 0.75);
    b.click("stop");
    b.wait_for(BANNER_GONE, "the banner gone once stopped");
    let st = wait_json(&e, "/api/v1/status", "run 2 recorded", |s| {
        s["last_job"]["id"] == 2
    });
    assert_eq!(st["last_job"]["outcome"], "stopped", "{st:#}");
    drop(held);

    history_lists_both_runs(&mut b);
    schedule_as_typed_and_save(&mut b, &e);
    b.screenshot(&artifacts().join("gc-page.png"), 0.75);
}

/// Run 2 (stopped) above run 1 (done, 3 blobs), and a bar for each in the chart.
fn history_lists_both_runs(b: &mut Browser) {
    // The history refreshes on its own: the stopped run may still be listed as
    // running for a moment after the banner went.
    b.wait_for(
        "document.querySelectorAll('#jobs tr').length === 2 && document.querySelector('#jobs tr').textContent.includes('stopped')",
        "two runs in the history, the newest stopped",
    );
    let rows = b.eval("[...document.querySelectorAll('#jobs tr')].map(r => r.textContent)");
    let rows: Vec<String> = serde_json::from_value(rows).unwrap();
    assert!(
        rows[0].starts_with('2') && rows[0].contains("stopped"),
        "{rows:?}"
    );
    assert!(
        rows[1].starts_with('1') && rows[1].contains("done") && rows[1].contains("3 blobs"),
        "{rows:?}"
    );
    assert_eq!(
        b.eval("document.querySelectorAll('#chart rect.freed').length"),
        2
    );
    // The store line is the store's own size (a few bytes of blobs here), not the
    // filesystem's used bytes (gigabytes).
    let dot = b.eval("document.querySelector('#chart circle.store-dot title').textContent");
    let dot = dot.as_str().unwrap_or_default();
    assert!(
        dot.starts_with("job 1: ") && dot.ends_with(" B of blobs in the store after it"),
        "{dot}"
    );
    // Every refused write is in the history: none here (no push during the runs).
    let header = b.eval("document.querySelector('#history thead').textContent");
    assert!(
        header
            .as_str()
            .unwrap_or_default()
            .contains("Refused writes")
    );
}

/// The schedule's next five UTC runs as it is typed, a bad one named; "Save" puts
/// "Never" and a schedule in force, shown as overriding the file.
fn schedule_as_typed_and_save(b: &mut Browser, e: &Env) {
    b.type_into("schedule", "0 3 * * SAT");
    b.wait_for(
        "document.querySelectorAll('#next-runs li').length === 5",
        "five next runs",
    );
    let runs = b.eval("[...document.querySelectorAll('#next-runs li')].map(l => l.textContent)");
    for r in runs.as_array().unwrap() {
        assert!(r.as_str().unwrap().ends_with("03:00:00 UTC"), "{runs}");
    }
    b.type_into("schedule", "0 3 32 * *");
    b.wait_for(
        "document.getElementById('schedule-check').textContent.includes('32')",
        "a bad schedule named",
    );
    // "Save": "Never" and a weekly schedule, in force at once and shown as overriding.
    b.type_into("schedule", "0 3 * * SAT");
    b.click("duration-never");
    b.click("save");
    wait_json(e, "/api/v1/settings", "saved", |s| {
        s["settings"]["duration"] == "never" && s["settings"]["schedule"] == "0 3 * * SAT"
    });
    b.wait_for(
        "document.getElementById('overrides').textContent.includes('override')",
        "the page says the settings override the file",
    );
}

/// A long history is paged: 50 runs a page, newest first, "Older" and "Newer" move
/// through it, and the API says where the page lies.
#[test]
fn the_page_pages_through_a_long_history() {
    use std::os::unix::fs::DirBuilderExt;
    let Some(e) = env(&["chromium"]) else { return };
    // 120 runs recorded by an earlier daemon, one a minute until now.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&e.state)
        .unwrap();
    let now = chrono::Utc::now();
    let mut lines = String::new();
    for id in 1..=120u64 {
        let ended = now - chrono::TimeDelta::minutes(120 - id as i64);
        let job = serde_json::json!({
            "id": id, "trigger": "schedule", "outcome": "done",
            "settings": {"mode": "read-only", "duration": "until-done", "delete_untagged": false,
                "dry_run": false, "upload_max_age": "7days", "min_age": "1h", "drain_timeout": "10s"},
            "started_at": ended, "ended_at": ended,
            "read_only_seconds": 1.0, "drain_seconds": 0.0, "refused_writes": id % 7,
        });
        lines += &format!("{job}\n");
    }
    std::fs::write(e.state.join("jobs.jsonl"), lines).unwrap();
    let _d = e.start(&[]);
    let page = e
        .curl("GET", "/api/v1/jobs?limit=50&offset=100", &[])
        .json();
    assert_eq!(page["total"], 120, "{page:#}");
    let ids: Vec<u64> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (1..=20).rev().collect::<Vec<_>>());

    let mut b = Browser::launch();
    b.open(&format!("{}/", e.base()));
    let first_row = "document.querySelector('#jobs tr').firstChild.textContent";
    b.wait_for(
        "document.getElementById('jobs-range').textContent === '1–50 of 120'",
        "the newest page",
    );
    assert_eq!(b.eval(first_row), "120");
    // The refused writes of each run are in its row, under their header.
    let cells = b.eval("[...document.querySelector('#jobs tr').children].map(c => c.textContent)");
    let headers =
        b.eval("[...document.querySelectorAll('#history thead th')].map(c => c.textContent)");
    let refused = headers
        .as_array()
        .unwrap()
        .iter()
        .position(|h| h == "Refused writes")
        .expect("a Refused writes column");
    assert_eq!(
        cells[refused],
        serde_json::json!((120 % 7).to_string()),
        "{cells}"
    );
    assert_eq!(
        b.eval("document.getElementById('jobs-newer').disabled"),
        true
    );
    b.click("jobs-older");
    b.wait_for(
        "document.getElementById('jobs-range').textContent === '51–100 of 120'",
        "the second page",
    );
    assert_eq!(b.eval(first_row), "70");
    b.click("jobs-older");
    b.wait_for(
        "document.getElementById('jobs-range').textContent === '101–120 of 120'",
        "the oldest page",
    );
    assert_eq!(b.eval("document.querySelectorAll('#jobs tr').length"), 20);
    assert_eq!(
        b.eval("document.getElementById('jobs-older').disabled"),
        true
    );
    b.click("jobs-newer");
    b.wait_for(
        "document.getElementById('jobs-range').textContent === '51–100 of 120'",
        "back a page",
    );
}

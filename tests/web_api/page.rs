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
    b.wait_for(
        "document.querySelectorAll('#jobs tr').length === 2",
        "two runs in the history",
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

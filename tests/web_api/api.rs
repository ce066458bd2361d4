//! The API with curl against a real daemon: status codes, credentials refused and
//! accepted, 409s, the job history filtered and paged, settings surviving a restart.

use std::time::Duration;

use crate::fixture::{Env, TOKEN, env, hold_writer, wait_json};

/// The fields of `regfs status --json`, as the API serves them.
fn same_keys(api: &serde_json::Value, cli: &serde_json::Value) {
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(api), keys(cli), "API status and `regfs status --json`");
}

/// No credentials, wrong ones, another site's page: refused, and nothing runs.
fn refusals_without_valid_credentials(e: &Env) {
    let none = e.curl("POST", "/api/v1/gc", &[]);
    assert_eq!(none.status, 401, "{none:?}");
    assert!(
        none.header("www-authenticate")
            .unwrap()
            .starts_with("Basic")
    );
    assert!(
        none.json()["error"]
            .as_str()
            .unwrap()
            .contains("credentials")
    );
    let wrong = e.curl("POST", "/api/v1/gc", &["-u", "admin:nope"]);
    assert_eq!(wrong.status, 401, "{wrong:?}");
    let bad_token = e.curl(
        "POST",
        "/api/v1/gc",
        &["-H", "Authorization: Bearer 0000000000000000"],
    );
    assert_eq!(bad_token.status, 401, "{bad_token:?}");
    let page = e.curl("POST", "/api/v1/gc", &["-H", "X-Regfs-Page: 1"]);
    assert_eq!(
        page.header("www-authenticate").as_deref(),
        Some("Bearer realm=\"regfs\""),
        "no browser dialog for the page"
    );
    // A change asked by another site's page in the admin's browser.
    let csrf = e.curl(
        "POST",
        "/api/v1/gc",
        &[
            "-u",
            "admin:s3cret-pass",
            "-H",
            "Origin: https://evil.example",
        ],
    );
    assert_eq!(csrf.status, 403, "{csrf:?}");
}

/// Runs 1 (stopped) and 2 (done) as the history lists them.
fn history_filters_and_pages(e: &Env, d: &crate::common::daemon::Daemon) {
    let all = e.curl("GET", "/api/v1/jobs", &[]).json();
    assert_eq!(all["total"], 2);
    assert_eq!(all["jobs"][0]["id"], 2);
    let stopped = e
        .curl("GET", "/api/v1/jobs?outcome=stopped&trigger=api", &[])
        .json();
    assert_eq!(stopped["total"], 1, "{stopped:#}");
    assert_eq!(stopped["jobs"][0]["id"], 1);
    let page2 = e.curl("GET", "/api/v1/jobs?limit=1&offset=1", &[]).json();
    assert_eq!(
        (page2["total"].clone(), page2["jobs"][0]["id"].clone()),
        (2.into(), 1.into())
    );
    let bad = e.curl("GET", "/api/v1/jobs?outcome=fine", &[]);
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["error"].as_str().unwrap().contains("outcome"),
        "{bad:?}"
    );
    assert_eq!(
        e.curl("GET", "/api/v1/jobs/2", &[]).json()["outcome"],
        "done"
    );
    assert_eq!(e.curl("GET", "/api/v1/jobs/99", &[]).status, 404);
    // `regfs jobs --json` agrees.
    let cli = d.wait_for_jobs(2);
    assert_eq!(cli[1]["trigger"], "api");
}

#[test]
fn reads_are_open_changes_need_credentials_and_conflicts_are_409() {
    let Some(e) = env(&[]) else { return };
    e.garbage(3);
    let d = e.start(&["--drain-timeout", "30"]);

    let st = e.curl("GET", "/api/v1/status", &[]);
    assert_eq!(st.status, 200, "{st:?}");
    assert_eq!(
        st.header("content-type").as_deref(),
        Some("application/json")
    );
    same_keys(&st.json(), &d.status());
    assert_eq!(st.json()["state"], "idle");

    refusals_without_valid_credentials(&e);
    assert_eq!(e.curl("GET", "/api/v1/jobs", &[]).json()["total"], 0);

    // The admin starts a run; while it runs, another start is a 409 naming it.
    let held = hold_writer(&e.mnt);
    let started = e.admin("POST", "/api/v1/gc", None);
    assert_eq!(started.status, 202, "{started:?}");
    assert_eq!(started.json()["job_id"], 1);
    wait_json(&e, "/api/v1/status", "read-only", |s| {
        s["read_only"] == true
    });
    let busy = e.curl(
        "POST",
        "/api/v1/gc",
        &["-H", &format!("Authorization: Bearer {TOKEN}")],
    );
    assert_eq!(busy.status, 409, "{busy:?}");
    assert_eq!(busy.json()["job_id"], 1);
    assert!(
        busy.json()["error"]
            .as_str()
            .unwrap()
            .contains("already running")
    );
    let running = e.curl("GET", "/api/v1/jobs?running=true", &[]).json();
    assert_eq!(running["jobs"][0]["outcome"], "running", "{running:#}");

    // Stop: 401 without credentials, 202 with, then 409 with nothing to stop.
    assert_eq!(e.curl("POST", "/api/v1/gc/stop", &[]).status, 401);
    let stop = e.admin("POST", "/api/v1/gc/stop", None);
    assert_eq!(stop.status, 202, "{stop:?}");
    // Recorded once the run has let go of the store (`last_job`), not when it says idle.
    let st = wait_json(&e, "/api/v1/status", "run 1 recorded", |s| {
        s["last_job"]["id"] == 1
    });
    assert_eq!(st["state"], "idle", "{st:#}");
    assert_eq!(st["read_only"], false, "{st:#}");
    assert_eq!(st["last_job"]["outcome"], "stopped", "{st:#}");
    drop(held);
    let again = e.admin("POST", "/api/v1/gc/stop", None);
    assert_eq!(again.status, 409, "{again:?}");
    assert!(
        again.json()["error"]
            .as_str()
            .unwrap()
            .contains("no GC run")
    );

    // A run to the end, started with the token this time.
    let ok = e.curl(
        "POST",
        "/api/v1/gc",
        &["-H", &format!("Authorization: Bearer {TOKEN}")],
    );
    assert_eq!(ok.status, 202, "{ok:?}");
    let st = wait_json(&e, "/api/v1/status", "run 2 done", |s| {
        s["last_job"]["id"] == 2
    });
    assert_eq!(st["last_job"]["outcome"], "done", "{st:#}");
    assert_eq!(st["last_job"]["report"]["blobs_deleted"], 3, "{st:#}");
    assert!(st["last_job"]["store_used_bytes"].as_u64().unwrap() > 0);

    history_filters_and_pages(&e, &d);
    // Methods and paths that do not exist say so, in JSON.
    let m = e.curl("DELETE", "/api/v1/gc", &[]);
    assert_eq!(m.status, 405);
    assert_eq!(m.header("allow").as_deref(), Some("POST"));
    assert_eq!(e.curl("GET", "/api/v1/nothing", &[]).status, 404);
    // Metrics are still there.
    let metrics = e.curl("GET", "/metrics", &[]);
    assert!(
        metrics
            .body
            .contains("regfs_gc_runs_total{mode=\"read-only\",trigger=\"api\",outcome=\"done\"} 1")
    );
}

fn put(e: &Env, body: &str) -> crate::fixture::Resp {
    e.admin("PUT", "/api/v1/settings", Some(body))
}

#[test]
fn settings_saved_through_the_api_survive_a_restart_and_override_the_file() {
    let Some(e) = env(&[]) else { return };
    let config = e.dir.path().join("regfs.toml");
    std::fs::write(&config, "[gc]\nduration = \"until-done\"\n").unwrap();
    let cfg = config.to_str().unwrap();
    let d = e.start(&["--config", cfg]);

    // Refused values change nothing and say which field is wrong.
    let bad = put(&e, r#"{"duration": "soon"}"#);
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(
        bad.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("duration")
    );
    let unknown = put(&e, r#"{"durations": "never"}"#);
    assert_eq!(unknown.status, 400, "{unknown:?}");
    assert!(
        unknown.json()["error"]
            .as_str()
            .unwrap()
            .contains("durations")
    );
    assert_eq!(
        e.curl("PUT", "/api/v1/settings", &["--data-binary", "{}"])
            .status,
        401
    );

    // The daemon runs with `--gc-min-age 0s`: the command line wins over the API, which
    // says so, and takes the flag's own value as no change.
    let pinned = put(&e, r#"{"min_age": "2h"}"#);
    assert_eq!(pinned.status, 400, "{pinned:?}");
    let why = pinned.json()["error"].as_str().unwrap().to_string();
    assert!(
        why.starts_with("min_age") && why.contains("--gc-min-age"),
        "{why}"
    );
    let saved = put(
        &e,
        r#"{"duration": "never", "schedule": "0 3 * * SAT", "min_age": "0s", "mode": "online"}"#,
    );
    assert_eq!(saved.status, 200, "{saved:?}");
    let s = saved.json();
    assert_eq!(s["settings"]["mode"], "online");
    assert_eq!(s["config_file"]["mode"], "read-only");
    let bad_mode = put(&e, r#"{"mode": "offline"}"#);
    assert_eq!(bad_mode.status, 400, "{bad_mode:?}");
    assert_eq!(s["settings"]["duration"], "never");
    assert_eq!(s["config_file"]["duration"], "until-done");
    assert_eq!(s["overrides"]["set_by"], "admin");
    // "Never": a trigger is a 409, and no run is scheduled.
    let refused = e.admin("POST", "/api/v1/gc", None);
    assert_eq!(refused.status, 409, "{refused:?}");
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("disabled")
    );
    assert!(s["next_runs"].as_array().unwrap().is_empty());

    // SIGHUP re-reads the file (its new key is in force); the override stays on top.
    std::fs::write(
        &config,
        "[gc]\nduration = \"until-done\"\ndelete_untagged = true\n",
    )
    .unwrap();
    assert!(d.signal(libc::SIGHUP));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while d.status()["settings"]["delete_untagged"] != true {
        assert!(std::time::Instant::now() < deadline, "SIGHUP not applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(d.status()["settings"]["duration"], "never");
    drop(d);

    // After a restart: still in force, and status says they override the file.
    let d = e.start(&["--config", cfg]);
    let st = d.status();
    assert_eq!(st["settings"]["duration"], "never", "{st:#}");
    assert_eq!(st["settings"]["min_age"], "0s", "{st:#}");
    assert_eq!(st["mode"], "online", "{st:#}");
    assert_eq!(st["schedule"], "0 3 * * SAT", "{st:#}");
    let fields = &st["settings_overrides"]["fields"];
    assert_eq!(
        fields,
        &serde_json::json!(["mode", "schedule", "duration"]),
        "{st:#}"
    );
    let (code, text, err) = d.regfs(&["status", e.mnt.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("override the configuration file"), "{text}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::symlink_metadata(e.state.join("settings.json"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // "Save & start" with a duration: saved, then started.
    let go = e.admin("POST", "/api/v1/gc", Some(r#"{"duration": "until-done"}"#));
    assert_eq!(go.status, 202, "{go:?}");
    assert_eq!(go.json()["settings_saved"], true);
    wait_json(&e, "/api/v1/status", "run done", |s| {
        s["last_job"]["id"] == 1
    });

    // Back to the configuration file's settings.
    let reset = e.admin("DELETE", "/api/v1/settings", None);
    assert_eq!(reset.status, 200, "{reset:?}");
    assert!(reset.json()["overrides"].is_null());
    assert!(d.status()["settings_overrides"].is_null());
    assert!(d.status()["schedule"].is_null());
    assert!(!e.state.join("settings.json").exists());
}

#[test]
fn the_schedule_preview_lists_the_next_five_utc_runs_and_no_credentials_means_no_changes() {
    let Some(e) = env(&[]) else { return };
    // Without credentials configured, nobody may change anything.
    let _d = e.start_bare(&[]);
    let off = e.admin("POST", "/api/v1/gc", None);
    assert_eq!(off.status, 403, "{off:?}");
    assert!(
        off.json()["error"]
            .as_str()
            .unwrap()
            .contains("--api-htpasswd"),
        "{off:?}"
    );
    // The page itself: embedded, and allowed to load nothing from elsewhere.
    let page = e.curl("GET", "/", &[]);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Save &amp; start"), "{}", page.body);
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.starts_with("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert_eq!(page.header("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(e.curl("GET", "/page.js", &[]).status, 200);
    let r = e
        .curl("GET", "/api/v1/schedule?expr=0+3+*+*+SAT", &[])
        .json();
    let next = r["next"].as_array().unwrap();
    assert_eq!(next.len(), 5, "{r:#}");
    for t in next {
        let t: chrono::DateTime<chrono::Utc> = t.as_str().unwrap().parse().unwrap();
        assert_eq!(t.format("%a %H:%M").to_string(), "Sat 03:00");
    }
    let bad = e.curl("GET", "/api/v1/schedule?expr=0+3+32+*+*", &[]);
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["error"].as_str().unwrap().contains("32"),
        "{bad:?}"
    );
}

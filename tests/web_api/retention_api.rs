//! Retention through the HTTP API: the tags with their times, the preview of what the
//! policies would prune, the run's job record listing what it pruned, and a restore
//! (a change: refused without credentials).

use std::fs;
use std::time::Duration;

use crate::fixture::{ci_app_old_and_new, env};

#[test]
fn the_preview_lists_what_a_run_prunes_and_a_restore_needs_credentials() {
    let Some(e) = env(&[]) else { return };
    let (old, link) = ci_app_old_and_new(&e.storage);
    let cfg = e.dir.path().join("regfs.toml");
    fs::write(
        &cfg,
        "[retention]\ndry_run = false\n[[retention.policy]]\nrepositories = [\"ci/*\"]\nkeep_most_recently_pushed = 1\n",
    )
    .unwrap();
    let d = e.start(&["--config", cfg.to_str().unwrap()]);

    let tags = e.curl("GET", "/api/v1/tags", &[]);
    assert_eq!(tags.status, 200, "{tags:?}");
    assert_eq!(tags.json().as_array().unwrap().len(), 2, "{tags:?}");
    let preview = e.curl("GET", "/api/v1/retention/preview", &[]).json();
    let verdict = |v: &serde_json::Value, tag: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|t| t["tag"] == tag)
            .unwrap_or_else(|| panic!("{tag} not in {v:#}"))
            .clone()
    };
    let gone = verdict(&preview, "old");
    assert_eq!(gone["keep"], false, "{preview:#}");
    assert!(
        gone["reason"].as_str().unwrap().contains("policy 0 (ci/*)"),
        "{gone}"
    );
    assert_eq!(verdict(&preview, "new")["keep"], true, "{preview:#}");

    assert_eq!(e.admin("POST", "/api/v1/gc", None).status, 202);
    let jobs = d.wait_for_jobs(1);
    let pruned = &jobs.last().unwrap()["retention"]["pruned"];
    assert_eq!(pruned.as_array().map(Vec::len), Some(1), "{jobs:#?}");
    assert_eq!(pruned[0]["tag"], "old");
    assert_eq!(pruned[0]["digest"], old.to_string());
    assert!(!link.exists(), "ci/app:old not pruned");

    let body = r#"{"repository": "ci/app", "tag": "old"}"#;
    let anon = e.curl(
        "POST",
        "/api/v1/retention/restore",
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ],
    );
    assert_eq!(anon.status, 401, "{anon:?}");
    assert!(!link.exists(), "restored without credentials");
    let restored = e.admin("POST", "/api/v1/retention/restore", Some(body));
    assert_eq!(restored.status, 200, "{restored:?}");
    assert_eq!(fs::read_to_string(&link).unwrap(), old.to_string());
    let again = e.admin("POST", "/api/v1/retention/restore", Some(body));
    assert_eq!(again.status, 409, "restored twice: {again:?}");
}

fn put_settings(e: &crate::fixture::Env, body: &str) -> crate::fixture::Resp {
    e.admin("PUT", "/api/v1/settings", Some(body))
}

fn settings(e: &crate::fixture::Env) -> serde_json::Value {
    let r = e.curl("GET", "/api/v1/settings", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

fn draft_preview(e: &crate::fixture::Env, draft: &str) -> crate::fixture::Resp {
    e.curl(
        "POST",
        "/api/v1/retention/preview",
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            draft,
        ],
    )
}

fn keeps(preview: &serde_json::Value, tag: &str) -> bool {
    preview
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tag"] == tag)
        .unwrap_or_else(|| panic!("{tag} not in {preview:#}"))["keep"]
        .as_bool()
        .unwrap()
}

const FILE_POLICY: &str =
    "[[retention.policy]]\nrepositories = [\"ci/*\"]\nkeep_pushed_within = \"30d\"\n";

#[test]
fn retention_settings_change_through_the_api_over_the_file_and_sighup_rereads_the_file() {
    let Some(e) = env(&[]) else { return };
    let (_, link) = ci_app_old_and_new(&e.storage);
    let cfg = e.dir.path().join("regfs.toml");
    fs::write(&cfg, format!("[retention]\ngrace = \"3h\"\n{FILE_POLICY}")).unwrap();
    let d = e.start(&["--config", cfg.to_str().unwrap()]);

    // The file's rules, as the settings show them: a dry run keeping 30 days of pushes.
    let st = settings(&e);
    let r = &st["settings"]["retention"];
    assert_eq!(r["dry_run"], true, "{st:#}");
    assert_eq!(r["grace"], "3h", "{st:#}");
    assert_eq!(r["policy"][0]["repositories"][0], "ci/*", "{st:#}");
    assert_eq!(r["policy"][0]["keep_pushed_within"], "30days", "{st:#}");
    let in_force = e.curl("GET", "/api/v1/retention/preview", &[]).json();
    assert!(keeps(&in_force, "old"), "{in_force:#}");

    // A draft's preview: what saving it would decide, and nothing saved.
    let draft = r#"{"policy": [{"repositories": ["ci/*"], "keep_most_recently_pushed": 1}]}"#;
    let p = draft_preview(&e, draft);
    assert_eq!(p.status, 200, "{p:?}");
    assert!(!keeps(&p.json(), "old") && keeps(&p.json(), "new"), "{p:?}");
    let bad_draft = draft_preview(
        &e,
        r#"{"policy": [{"repositories": ["ci/*"], "keep_pulled_within": "soon"}]}"#,
    );
    assert_eq!(bad_draft.status, 400, "{bad_draft:?}");
    assert!(
        bad_draft.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("retention.policy[0].keep_pulled_within"),
        "{bad_draft:?}"
    );
    assert_eq!(settings(&e)["overrides"], serde_json::Value::Null);

    // Refused changes name the key and change nothing.
    let bad = put_settings(
        &e,
        r#"{"retention": {"policy": [{"repositories": ["ci/*"], "keep_tags": ["("]}]}}"#,
    );
    assert_eq!(bad.status, 400, "{bad:?}");
    let why = bad.json()["error"].as_str().unwrap().to_string();
    assert!(
        why.starts_with("retention.policy[0].keep_tags[0]") && why.contains("\"(\""),
        "{why}"
    );
    let unknown = put_settings(&e, r#"{"retention": {"grce": "1h"}}"#);
    assert_eq!(unknown.status, 400, "{unknown:?}");
    assert!(
        unknown.json()["error"].as_str().unwrap().contains("grce"),
        "{unknown:?}"
    );
    let negative = put_settings(
        &e,
        r#"{"retention": {"policy": [{"repositories": ["ci/*"], "keep_most_recently_pulled": -2}]}}"#,
    );
    assert_eq!(negative.status, 400, "{negative:?}");
    assert!(
        negative.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("retention.policy[0].keep_most_recently_pulled"),
        "{negative:?}"
    );
    let anon = e.curl(
        "PUT",
        "/api/v1/settings",
        &["--data-binary", r#"{"retention": {"dry_run": false}}"#],
    );
    assert_eq!(anon.status, 401, "{anon:?}");
    assert_eq!(settings(&e)["settings"]["retention"]["dry_run"], true);

    // Saved: the API's keys over the file's, each whole.
    let saved = put_settings(
        &e,
        &format!(
            r#"{{"retention": {{"dry_run": false, "policy": {}}}}}"#,
            &draft[10..draft.len() - 1]
        ),
    );
    assert_eq!(saved.status, 200, "{saved:?}");
    let st = saved.json();
    assert_eq!(st["settings"]["retention"]["dry_run"], false, "{st:#}");
    assert_eq!(
        st["settings"]["retention"]["policy"][0]["keep_most_recently_pushed"], 1,
        "{st:#}"
    );
    assert_eq!(st["config_file"]["retention"]["dry_run"], true, "{st:#}");
    assert_eq!(
        st["overrides"]["fields"],
        serde_json::json!(["retention.dry_run", "retention.policy"]),
        "{st:#}"
    );

    // SIGHUP re-reads the file: its grace (a key the API did not set) is in force, the
    // API's keys stay on top. A broken file keeps what is in force.
    fs::write(&cfg, format!("[retention]\ngrace = \"5h\"\n{FILE_POLICY}")).unwrap();
    assert!(d.signal(libc::SIGHUP));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while settings(&e)["settings"]["retention"]["grace"] != "5h" {
        assert!(std::time::Instant::now() < deadline, "SIGHUP not applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = settings(&e);
    assert_eq!(st["settings"]["retention"]["dry_run"], false, "{st:#}");
    assert_eq!(
        st["settings"]["retention"]["policy"][0]["keep_most_recently_pushed"], 1,
        "{st:#}"
    );
    fs::write(
        &cfg,
        "[retention]\ngrace = \"5h\"\n[[retention.policy]]\nrepositories = [\"ci/*\"]\nkeep_tags = [\"(\"]\n",
    )
    .unwrap();
    assert!(d.signal(libc::SIGHUP));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(settings(&e)["settings"]["retention"]["grace"], "5h");
    fs::write(&cfg, format!("[retention]\ngrace = \"5h\"\n{FILE_POLICY}")).unwrap();

    // A run prunes as the API's rules say.
    assert_eq!(e.admin("POST", "/api/v1/gc", None).status, 202);
    let jobs = d.wait_for_jobs(1);
    let pruned = &jobs.last().unwrap()["retention"]["pruned"];
    assert_eq!(pruned.as_array().map(Vec::len), Some(1), "{jobs:#?}");
    assert_eq!(pruned[0]["tag"], "old");
    assert!(!link.exists(), "ci/app:old not pruned");
    drop(d);

    // Kept across a restart; a reset puts the file's back.
    let _d = e.start(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(settings(&e)["settings"]["retention"]["dry_run"], false);
    let reset = e.admin("DELETE", "/api/v1/settings", None);
    assert_eq!(reset.status, 200, "{reset:?}");
    let r = &reset.json()["settings"]["retention"];
    assert_eq!(r["dry_run"], true, "{r:#}");
    assert_eq!(r["policy"][0]["keep_pushed_within"], "30days", "{r:#}");
}

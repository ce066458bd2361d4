//! Retention through the HTTP API: the tags with their times, the preview of what the
//! policies would prune, the run's job record listing what it pruned, and a restore
//! (a change: refused without credentials).

use std::fs;
use std::time::{Duration, SystemTime};

use crate::common::store::StoreBuilder;
use crate::fixture::env;

#[test]
fn the_preview_lists_what_a_run_prunes_and_a_restore_needs_credentials() {
    let Some(e) = env(&[]) else { return };
    let s = StoreBuilder::new(&e.storage);
    let (old, _) = s.image("ci/app", &[s.blob(b"old layer")], "old");
    let (new, _) = s.image("ci/app", &[s.blob(b"new layer")], "new");
    s.tag("ci/app", "old", &old);
    s.tag("ci/app", "new", &new);
    let link = s.repo("ci/app").join("_manifests/tags/old/current/link");
    let f = fs::File::options().write(true).open(&link).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(10 * 86400))
        .unwrap();
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

//! The page's tag retention, in Debian's headless chromium as a person uses it: a policy
//! typed into the editor is previewed as it is typed (what would go, and why; a bad
//! value named and marked), saved with credentials, and the run's pruned tags are listed
//! in its row of the history. A screenshot is kept in target/test-artifacts/.

use std::path::PathBuf;

use crate::cdp::Browser;
use crate::fixture::{TOKEN, ci_app_old_and_new, env, wait_json};

const CHECK: &str = "document.getElementById('retention-check').textContent";

#[test]
fn the_policy_editor_previews_as_typed_and_the_history_lists_the_pruned_tags() {
    let Some(e) = env(&["chromium"]) else { return };
    let (old, link) = ci_app_old_and_new(&e.storage);
    let d = e.start(&[]);
    let mut b = Browser::launch();
    b.open(&format!("{}/", e.base()));
    b.wait_for(
        "document.getElementById('retention-grace').value === '1day'",
        "the retention settings shown (no policy: the defaults)",
    );
    b.wait_for(
        &format!("{CHECK}.startsWith('0 of 2 tags would be pruned')"),
        "no policy prunes nothing",
    );

    // Typed: the preview follows each change.
    b.click("policy-add");
    b.type_into("policy-0-repositories", "ci/*");
    b.type_into("policy-0-keep_most_recently_pushed", "1");
    b.wait_for(
        &format!("{CHECK}.startsWith('1 of 2 tags would be pruned')"),
        "the preview of keep_most_recently_pushed = 1",
    );
    let going =
        b.eval("[...document.querySelectorAll('#retention-going tr')].map(r => r.textContent)");
    let going: Vec<String> = serde_json::from_value(going).unwrap();
    assert_eq!(going.len(), 1, "{going:?}");
    assert!(
        going[0].starts_with("ci/app:old") && going[0].contains("never"),
        "{going:?}"
    );
    b.type_into("policy-0-keep_pushed_within", "soon");
    b.wait_for(
        &format!("{CHECK}.startsWith('retention.policy[0].keep_pushed_within')"),
        "a bad duration named as typed",
    );
    assert_eq!(
        b.eval("document.getElementById('policy-0-keep_pushed_within').classList.contains('bad')"),
        true
    );
    b.type_into("policy-0-keep_pushed_within", "20d");
    b.wait_for(
        &format!("{CHECK}.startsWith('0 of 2 tags would be pruned')"),
        "old was pushed within 20 days",
    );
    b.type_into("policy-0-keep_pushed_within", "3d");
    b.wait_for(
        &format!("{CHECK}.startsWith('1 of 2 tags would be pruned')"),
        "old was pushed 10 days ago",
    );
    b.click("retention-dry-run");
    b.wait_for(&format!("!{CHECK}.includes('dry run')"), "a real run now");
    assert_eq!(
        e.curl("GET", "/api/v1/settings", &[]).json()["settings"]["retention"]["policy"],
        serde_json::json!([]),
        "a preview saves nothing"
    );

    // Saved with credentials only.
    b.click("retention-save");
    b.wait_for(
        "document.getElementById('retention-message').textContent.includes('credentials')",
        "the refusal shown",
    );
    b.type_into("auth-token", TOKEN);
    b.click("retention-save");
    b.wait_for(
        "document.getElementById('retention-message').textContent.startsWith('Saved')",
        "saved",
    );
    let st = e.curl("GET", "/api/v1/settings", &[]).json();
    let r = &st["settings"]["retention"];
    assert_eq!(r["dry_run"], false, "{st:#}");
    assert_eq!(
        r["policy"],
        serde_json::json!([{"repositories": ["ci/*"], "keep_most_recently_pushed": 1, "keep_pushed_within": "3days"}]),
        "{st:#}"
    );

    // A run prunes ci/app:old; its row in the history lists it.
    assert_eq!(e.admin("POST", "/api/v1/gc", None).status, 202);
    d.wait_for_jobs(1);
    wait_json(&e, "/api/v1/status", "run 1 recorded", |s| {
        s["last_job"]["id"] == 1
    });
    assert!(!link.exists(), "ci/app:old not pruned");
    let cell = "document.querySelector('#jobs tr td:last-child')";
    b.wait_for(
        &format!("{cell} && {cell}.querySelector('summary') && {cell}.querySelector('summary').textContent === '1'"),
        "the run's pruned tags counted in its row",
    );
    b.eval(&format!("{cell}.querySelector('details').open = true"));
    let listed = b.eval(&format!("{cell}.querySelector('li').textContent"));
    let listed = listed.as_str().unwrap_or_default();
    assert!(
        listed.starts_with(&format!("ci/app:old {}", &old.to_string()[..19]))
            && listed.contains("pulled never"),
        "{listed}"
    );
    b.screenshot(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/retention-page.png"),
        0.75,
    );
}

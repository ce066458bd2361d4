//! Issue 18 (6): one entry the collector does not understand (here a symbolic link among
//! a repository's tags) keeps that repository whole and the rest of the store is still
//! collected, by the daemon's read-only and online runs alike; the job and `regfs status`
//! name the link and what it kept.

use std::fs;
use std::os::unix::fs::symlink;

use crate::common::store::StoreBuilder;
use crate::daemon::{Daemon, text};
use crate::fixture::env;

fn stray_keeps_its_repository(mode: &str) {
    let Some(e) = env() else { return };
    let s = StoreBuilder::new(&e.storage);
    let app_layer = s.blob(b"app layer");
    let (app, app_cfg) = s.image("team/app", &[app_layer], "app");
    let app_garbage = s.blob(b"app: never referenced");
    s.layer_link("team/app", &app_garbage);
    let (other, _) = s.image("other", &[s.blob(b"other layer")], "other");
    s.tag("other", "latest", &other);
    let other_garbage = s.blob(b"other: never referenced");
    s.layer_link("other", &other_garbage);
    let outside = e._dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::create_dir_all(s.repo("team/app/_manifests/tags")).unwrap();
    let stray = s.repo("team/app/_manifests/tags/evil");
    symlink(&outside, &stray).unwrap();

    let d = Daemon::start(&e, &["--gc-mode", mode, "--gc-min-age", "0s"]);
    let job = d.gc_wait();
    assert_eq!(job["outcome"], "done", "{mode}: {job:#}");
    assert!(
        !s.has_blob(&other_garbage),
        "{mode}: the rest is collected: {job:#}"
    );
    for b in [app_layer, app, app_cfg, app_garbage] {
        assert!(s.has_blob(&b), "{mode}: {b} of team/app deleted: {job:#}");
    }
    assert!(
        fs::symlink_metadata(&stray).is_ok(),
        "{mode}: the link stays"
    );
    let warned = job["report"]["warnings"].as_array().is_some_and(|ws| {
        ws.iter().any(|w| {
            w["path"].as_str().is_some_and(|p| p.ends_with("tags/evil"))
                && w["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("team/app kept whole"))
        })
    });
    assert!(warned, "{mode}: the job names the link: {job:#}");
    let st = d.status();
    assert_eq!(
        st["last_job"]["report"]["warnings"], job["report"]["warnings"],
        "{mode}: status --json carries them: {st:#}"
    );
    let shown = text(&d.cli_ok(&["status"], &[]).stdout);
    assert!(
        shown.contains("warning") && shown.contains("tags/evil") && shown.contains("kept whole"),
        "{mode}: status names the link: {shown}"
    );
}

#[test]
fn a_stray_link_keeps_its_repository_and_a_read_only_run_collects_the_rest() {
    stray_keeps_its_repository("read-only");
}

#[test]
fn a_stray_link_keeps_its_repository_and_an_online_run_collects_the_rest() {
    stray_keeps_its_repository("online");
}

//! Leftover temp files (`link.<uuid>.tmp`, registry 3.1+) beside links that read well: the
//! daemon's runs list every link directory on the first run after the daemon starts and
//! then at most once per `--gc-temp-files-everywhere-every` (default 24h); the others
//! look only where a link is missing or damaged, in read-only and online runs alike. Each
//! job says where it looked.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::common::store::StoreBuilder;
use crate::daemon::Daemon;
use crate::fixture::env;

/// A temp file older than the upload age beside the `_layers` link of `layer`.
fn plant_stale_temp(layer_dir: &Path) -> PathBuf {
    let t = layer_dir.join("link.5f0c.tmp");
    std::fs::write(&t, b"sha256:").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&t)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(200 * 3600))
        .unwrap();
    t
}

fn removed(job: &serde_json::Value) -> u64 {
    job["report"]["temp_files_removed"].as_u64().unwrap_or(0)
}

fn every_link_dir_first_then_once_per_interval(mode: &str) {
    let Some(e) = env() else { return };
    let s = StoreBuilder::new(&e.storage);
    let layer = s.blob(b"a layer");
    let (image, _) = s.image("team/app", &[layer], "v1");
    s.tag("team/app", "latest", &image);
    let layer_dir = s.repo("team/app").join("_layers/sha256").join(layer.hex());

    // Default interval (24h): the first run after the start lists every link directory.
    let first = plant_stale_temp(&layer_dir);
    let d = Daemon::start(&e, &["--gc-mode", mode]);
    let job = d.gc_wait();
    assert_eq!(job["outcome"], "done", "{mode}: {job:#}");
    assert_eq!(
        job["temp_files_searched"], "every-link-dir",
        "{mode}: {job:#}"
    );
    assert!(
        !first.exists(),
        "{mode}: first run left {}: {job:#}",
        first.display()
    );
    assert_eq!(removed(&job), 1, "{mode}: {job:#}");

    // Within the interval: only broken links are looked at, the good link's stays.
    let second = plant_stale_temp(&layer_dir);
    let job = d.gc_wait();
    assert_eq!(job["outcome"], "done", "{mode}: {job:#}");
    assert!(
        second.exists(),
        "a run within the interval listed it: {mode}: {job:#}"
    );
    assert_eq!(
        job["temp_files_searched"], "broken-links-only",
        "{mode}: {job:#}"
    );
    assert_eq!(removed(&job), 0, "{mode}: {job:#}");
    let listed = d.jobs();
    let recorded = listed.iter().find(|j| j["id"] == job["id"]).unwrap();
    assert_eq!(
        recorded["temp_files_searched"], "broken-links-only",
        "regfs jobs --json: {recorded:#}"
    );
    drop(d);

    // "0s": every run searches every link directory, as before the interval existed.
    let d = Daemon::start(
        &e,
        &["--gc-mode", mode, "--gc-temp-files-everywhere-every", "0s"],
    );
    let job = d.gc_wait();
    assert_eq!(
        job["temp_files_searched"], "every-link-dir",
        "{mode}: {job:#}"
    );
    assert!(!second.exists(), "{mode}: {job:#}");
    let third = plant_stale_temp(&layer_dir);
    let job = d.gc_wait();
    assert_eq!(job["outcome"], "done", "{mode}: {job:#}");
    assert!(
        !third.exists(),
        "{mode}: 0s: the second run left {}: {job:#}",
        third.display()
    );
    assert_eq!(
        job["temp_files_searched"], "every-link-dir",
        "{mode}: {job:#}"
    );
    assert!(s.has_blob(&image) && s.has_blob(&layer));
}

#[test]
fn read_only_runs_search_every_link_dir_first_then_once_per_interval() {
    every_link_dir_first_then_once_per_interval("read-only");
}

#[test]
fn online_runs_search_every_link_dir_first_then_once_per_interval() {
    every_link_dir_first_then_once_per_interval("online");
}

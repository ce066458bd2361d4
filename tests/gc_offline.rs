//! `regfs gc --offline` as an operator runs it.
mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::store::StoreBuilder;

const BIN: &str = env!("CARGO_BIN_EXE_regfs");

/// `regfs gc --offline FLAGS STORE`, with `--min-age 0s` unless FLAGS set one: these
/// tests collect garbage they have just made.
fn gc_offline(flags: &[&str], store: &Path) -> Output {
    let min_age: &[&str] = if flags.contains(&"--min-age") {
        &[]
    } else {
        &["--min-age", "0s"]
    };
    gc_offline_as_given(&[min_age, flags].concat(), store)
}

/// `regfs gc --offline FLAGS STORE` with the binary's defaults.
fn gc_offline_as_given(flags: &[&str], store: &Path) -> Output {
    Command::new(BIN)
        .args(["gc", "--offline"])
        .args(flags)
        .arg(store)
        .output()
        .unwrap()
}

#[test]
fn offline_collection_is_refused_while_a_daemon_serves_the_store() {
    let Some(m) = common::mount_with(|root| {
        let s = StoreBuilder::new(root);
        let b = s.blob(b"garbage");
        s.layer_link("r", &b);
    }) else {
        return;
    };
    let out = gc_offline(&[], &m.storage);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("served by a regfs daemon mounted at")
            && err.contains(&*m.mnt.to_string_lossy()),
        "{err}"
    );
    // Pointing it at the mount point instead is refused too.
    let out = gc_offline(&[], &m.mnt);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a FUSE mount"));
    assert_eq!(
        std::fs::read_dir(m.storage.join("docker/registry/v2/blobs/sha256"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn offline_collection_prints_a_summary_and_json() {
    let dir = common::tempdir();
    let s = StoreBuilder::new(dir.path());
    let b = s.blob(b"garbage");
    s.layer_link("r", &b);
    let out = gc_offline(&["--dry-run"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("would delete 1 blobs"), "{text}");
    assert!(s.has_blob(&b));
    let out = gc_offline(&["--json", "--list"], dir.path());
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["blobs_deleted"], 1);
    assert_eq!(v["layer_links_removed"], 1);
    assert_eq!(v["outcome"], "done");
    let deleted: Vec<String> = serde_json::from_value(v["deleted"].clone()).unwrap();
    assert!(deleted.iter().any(|p| p.ends_with(&b.hex())), "{deleted:?}");
    assert!(!s.has_blob(&b));
}

#[test]
fn a_missing_store_is_named_in_the_error() {
    let out = gc_offline(&[], Path::new("/nonexistent/store"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/store"));
}

#[test]
fn a_missing_manifest_fails_the_run_unless_allowed_on_the_command_line() {
    let dir = common::tempdir();
    let s = StoreBuilder::new(dir.path());
    let layer = s.blob(b"layer");
    let (m, _) = s.image("team/app", &[layer], "x");
    s.tag("team/app", "latest", &m);
    let garbage = s.blob(b"garbage");
    std::fs::remove_file(s.blob_dir(&m).join("data")).unwrap();
    let out = gc_offline(&[], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("team/app")
            && err.contains(&m.to_string())
            && err.contains("--allow-missing-manifests"),
        "{err}"
    );
    assert!(
        s.has_blob(&garbage) && s.has_blob(&layer),
        "nothing deleted"
    );
    let out = gc_offline(&["--allow-missing-manifests"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!s.has_blob(&garbage) && s.has_blob(&layer));
}

/// Sets the modification time of `blob`'s data to `ago` before now.
fn age_blob(s: &StoreBuilder, blob: &regfs::layout::Digest, ago: std::time::Duration) {
    let data = std::fs::File::options()
        .write(true)
        .open(s.blob_dir(blob).join("data"))
        .unwrap();
    data.set_modified(std::time::SystemTime::now() - ago)
        .unwrap();
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A layer uploaded just before a run, whose manifest is not pushed yet, survives the
/// default minimum age (1h) with its `_layers` link, and is reported; `0s` collects it.
#[test]
fn a_fresh_unreferenced_blob_survives_the_default_minimum_age_and_goes_with_0s() {
    let dir = common::tempdir();
    let s = StoreBuilder::new(dir.path());
    let fresh = s.blob(b"just uploaded");
    s.layer_link("r", &fresh);
    let link = s.repo("r").join("_layers/sha256").join(fresh.hex());

    let v = json_of(&gc_offline_as_given(&["--json"], dir.path()));
    assert_eq!(v["blobs_deleted"], 0, "{v:#}");
    assert_eq!(v["young_blobs_kept"], 1, "{v:#}");
    assert!(s.has_blob(&fresh) && link.exists());
    let text = String::from_utf8_lossy(&gc_offline_as_given(&[], dir.path()).stdout).into_owned();
    assert!(
        text.contains("kept      1 unreferenced blobs younger than the minimum age"),
        "{text}"
    );

    let v = json_of(&gc_offline_as_given(
        &["--min-age", "0s", "--json"],
        dir.path(),
    ));
    assert_eq!(v["blobs_deleted"], 1, "{v:#}");
    assert_eq!(v["young_blobs_kept"], 0, "{v:#}");
    assert!(!s.has_blob(&fresh) && !link.exists());
}

/// Age is the data's modification time: written 2h ago it is past the default 1h and
/// goes, while a fresh one beside it stays; a referenced blob is never counted as young.
#[test]
fn a_blob_written_two_hours_ago_goes_with_the_default_minimum_age() {
    let dir = common::tempdir();
    let s = StoreBuilder::new(dir.path());
    let (manifest, _) = s.image("r", &[s.blob(b"tagged layer")], "t");
    s.tag("r", "latest", &manifest);
    let old = s.blob(b"uploaded long ago");
    let fresh = s.blob(b"uploaded just now");
    age_blob(&s, &old, std::time::Duration::from_secs(2 * 3600));

    let v = json_of(&gc_offline_as_given(&["--json"], dir.path()));
    assert_eq!(v["blobs_deleted"], 1, "{v:#}");
    assert_eq!(v["young_blobs_kept"], 1, "{v:#}");
    assert!(!s.has_blob(&old));
    assert!(s.has_blob(&fresh));

    // A minimum age longer than its age keeps the old one too.
    let older = s.blob(b"uploaded long ago, again");
    age_blob(&s, &older, std::time::Duration::from_secs(2 * 3600));
    let v = json_of(&gc_offline_as_given(
        &["--min-age", "3h", "--json"],
        dir.path(),
    ));
    assert_eq!(v["blobs_deleted"], 0, "{v:#}");
    assert_eq!(v["young_blobs_kept"], 2, "{v:#}");
    assert!(s.has_blob(&older));
}

#[test]
fn a_bad_minimum_age_is_refused_naming_it() {
    let dir = common::tempdir();
    let out = gc_offline_as_given(&["--min-age", "soon"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--min-age") && err.contains("soon"), "{err}");
}

/// A blob directory without `data` (an upload being moved into place, or damage) is aged
/// by the directory's own mtime.
#[test]
fn a_blob_directory_without_data_is_aged_by_the_directory() {
    let dir = common::tempdir();
    let s = StoreBuilder::new(dir.path());
    let b = s.blob(b"data about to vanish");
    std::fs::remove_file(s.blob_dir(&b).join("data")).unwrap();
    let v = json_of(&gc_offline_as_given(&["--json"], dir.path()));
    assert_eq!(v["young_blobs_kept"], 1, "{v:#}");
    assert!(s.blob_dir(&b).exists());
    std::fs::File::open(s.blob_dir(&b))
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 3600))
        .unwrap();
    let v = json_of(&gc_offline_as_given(&["--json"], dir.path()));
    assert_eq!(v["young_blobs_kept"], 0, "{v:#}");
    assert!(!s.blob_dir(&b).exists(), "{v:#}");
}

/// Registry 3.1+ leaves `link.<uuid>.tmp` when it dies while writing a link. An offline
/// run removes stale ones where a link is missing (it lists those directories anyway);
/// the ones beside links that read well, and in `_layers` link and tag history
/// directories, go with `--temp-files-everywhere`, which lists every link directory.
#[test]
fn stale_temp_files_beside_good_links_go_with_temp_files_everywhere() {
    let dir = common::tempdir();
    let s = StoreBuilder::new(dir.path());
    let layer = s.blob(b"a layer");
    let (image, _) = s.image("team/app", &[layer], "v1");
    s.tag("team/app", "latest", &image);
    // A revision whose manifest was deleted through the API: its link is gone.
    let (gone, _) = s.image("team/app", &[layer], "v0");
    std::fs::remove_file(s.revision_link_path("team/app", &gone)).unwrap();
    let stale = std::time::SystemTime::now() - std::time::Duration::from_secs(200 * 3600);
    let temp = |dir: std::path::PathBuf| {
        let t = dir.join("link.5f0c.tmp");
        std::fs::write(&t, b"sha256:").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&t)
            .unwrap()
            .set_modified(stale)
            .unwrap();
        t
    };
    let app = s.repo("team/app");
    let beside_missing = temp(app.join("_manifests/revisions/sha256").join(gone.hex()));
    let beside_good = [
        temp(app.join("_manifests/revisions/sha256").join(image.hex())),
        temp(app.join("_manifests/tags/latest/current")),
        temp(
            app.join("_manifests/tags/latest/index/sha256")
                .join(image.hex()),
        ),
        temp(app.join("_layers/sha256").join(layer.hex())),
    ];

    let v = json_of(&gc_offline(&["--json"], dir.path()));
    assert_eq!(v["temp_files_removed"], 1, "{v:#}");
    assert!(!beside_missing.exists());
    for t in &beside_good {
        assert!(
            t.exists(),
            "{} went without --temp-files-everywhere",
            t.display()
        );
    }

    let v = json_of(&gc_offline(
        &["--temp-files-everywhere", "--json"],
        dir.path(),
    ));
    assert_eq!(v["temp_files_removed"], beside_good.len(), "{v:#}");
    for t in &beside_good {
        assert!(!t.exists(), "{} is left", t.display());
    }
    assert!(s.has_blob(&image) && s.has_blob(&layer));
}

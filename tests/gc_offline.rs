//! `regfs gc --offline` as an operator runs it.
mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::store::StoreBuilder;

const BIN: &str = env!("CARGO_BIN_EXE_regfs");

/// `regfs gc --offline FLAGS STORE`.
fn gc_offline(flags: &[&str], store: &Path) -> Output {
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

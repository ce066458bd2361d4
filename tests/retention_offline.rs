//! `regfs gc --offline` prunes too: the same pruning stage as the daemon's runs, by the
//! `[retention]` of the file given with --config and the pull times in the daemon's
//! state directory: a dry run until the file says otherwise, a manifest left untagged
//! kept for the grace (even with --delete-untagged), its space back once the grace has
//! passed; policies without a state directory are refused naming what is missing.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use common::store::StoreBuilder;

const BIN: &str = env!("CARGO_BIN_EXE_regfs");

fn gc_offline(flags: &[&str], store: &Path) -> Output {
    Command::new(BIN)
        .args(["gc", "--offline", "--min-age", "0s", "--json"])
        .args(flags)
        .arg(store)
        .output()
        .unwrap()
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn pruned(v: &serde_json::Value) -> Vec<String> {
    v["retention"]["pruned"]
        .as_array()
        .unwrap_or_else(|| panic!("no retention.pruned: {v:#}"))
        .iter()
        .map(|p| {
            format!(
                "{}:{}",
                p["repository"].as_str().unwrap(),
                p["tag"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn an_offline_run_prunes_by_the_files_policies_with_the_daemons_grace() {
    let dir = common::tempdir();
    let root = dir.path().join("store");
    let s = StoreBuilder::new(&root);
    let old_layer = s.blob(b"old layer");
    let (old, _) = s.image("ci/app", &[old_layer], "old");
    let (new, _) = s.image("ci/app", &[s.blob(b"new layer")], "new");
    s.tag("ci/app", "old", &old);
    s.tag("ci/app", "new", &new);
    let link = s.repo("ci/app").join("_manifests/tags/old/current/link");
    let f = fs::File::options().write(true).open(&link).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(10 * 86400))
        .unwrap();
    let cfg = dir.path().join("regfs.toml");
    let policy = "[[retention.policy]]\nrepositories = [\"ci/*\"]\nkeep_most_recently_pushed = 1\n";
    fs::write(&cfg, policy).unwrap();
    let state = dir.path().join("state");
    let (cfg_arg, state_arg) = (cfg.to_str().unwrap(), state.to_str().unwrap());

    // Policies without the daemon's state directory: refused, nothing touched.
    let out = gc_offline(&["--config", cfg_arg, "--delete-untagged"], &root);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--state-dir") && err.contains(cfg_arg),
        "{err}"
    );
    assert!(link.exists());

    // A dry run until the file says otherwise: listed, not pruned.
    let with = [
        "--config",
        cfg_arg,
        "--state-dir",
        state_arg,
        "--delete-untagged",
    ];
    let dry = json_of(&gc_offline(&with, &root));
    assert_eq!(dry["retention"]["dry_run"], true, "{dry:#}");
    assert_eq!(pruned(&dry), ["ci/app:old"]);
    assert!(link.exists(), "a dry run pruned ci/app:old");

    // Pruned; its manifest (untagged now) stays for the grace despite --delete-untagged.
    fs::write(
        &cfg,
        format!("[retention]\ndry_run = false\ngrace = \"1h\"\n{policy}"),
    )
    .unwrap();
    let real = json_of(&gc_offline(&with, &root));
    assert_eq!(real["retention"]["dry_run"], false, "{real:#}");
    assert_eq!(pruned(&real), ["ci/app:old"]);
    assert!(!link.exists(), "ci/app:old not pruned");
    assert!(s.revision_link_path("ci/app", &old).exists(), "{real:#}");
    assert!(
        s.has_blob(&old_layer),
        "collected within the grace: {real:#}"
    );
    let records = fs::read_to_string(state.join("pruned.json")).unwrap();
    assert!(records.contains(&old.to_string()), "{records}");

    // Once the grace has passed: the revision goes, and its space comes back.
    fs::write(
        &cfg,
        format!("[retention]\ndry_run = false\ngrace = \"1ms\"\n{policy}"),
    )
    .unwrap();
    let after = json_of(&gc_offline(&with, &root));
    assert!(
        after["retention"]["expired"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().contains(&old.to_string())),
        "{after:#}"
    );
    assert!(
        !s.has_blob(&old_layer),
        "not collected after the grace: {after:#}"
    );
    assert!(
        s.has_blob(&new),
        "the kept image's manifest went: {after:#}"
    );
}

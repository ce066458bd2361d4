//! Tag retention end to end: Debian's registry on regfs, skopeo pushing and pulling. Push
//! times are set with `touch -d` on the tags' links in the backing store, a pull goes
//! through the registry (regfs records it), and two policies apply (the first matching
//! one wins; a repository neither matches is untouched). A dry run prunes nothing and
//! lists exactly what the real run then prunes; the pull time survives a restart of the
//! daemon; a manifest left untagged stays for the grace although the daemon collects
//! untagged manifests, and its tag is restored whole; after the grace its space comes back.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::common::describe_output;
use crate::ctx::{Ctx, Mode};
use crate::support::{run, signal};
use crate::world::{Cache, setup_custom, start_daemon};
use crate::{BIN, V2};

const POLICIES: &str = r#"
[[retention.policy]]
repositories = ["ci/*"]
keep_tags = ["^v[0-9]+$"]
keep_most_recently_pushed = 1
keep_pulled_within = "1h"

[[retention.policy]]
repositories = ["ci/**"]
keep_pushed_within = "1000d"
"#;

fn config(path: &Path, retention: &str) {
    fs::write(path, format!("[retention]\n{retention}\n{POLICIES}")).unwrap();
}

fn link(ctx: &Ctx, repo: &str, tag: &str) -> PathBuf {
    ctx.store
        .join(V2)
        .join("repositories")
        .join(repo)
        .join("_manifests/tags")
        .join(tag)
        .join("current/link")
}

fn touch(ctx: &Ctx, repo: &str, tag: &str, when: &str) {
    let mut cmd = Command::new("touch");
    cmd.args(["-h", "-d", when]).arg(link(ctx, repo, tag));
    let out = run(cmd, Duration::from_secs(10));
    assert!(out.status.success(), "touch: {}", describe_output(&out));
}

fn json_of(ctx: &Ctx, args: &[&str]) -> Value {
    let out = ctx.regfs(args);
    assert!(
        out.status.success(),
        "regfs {args:?}: {}",
        describe_output(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("regfs {args:?}: {e}"))
}

/// `repository:tag` of each entry of a JSON array of tags.
fn names<'a>(v: impl IntoIterator<Item = &'a Value>) -> BTreeSet<String> {
    v.into_iter()
        .map(|t| {
            format!(
                "{}:{}",
                t["repository"].as_str().unwrap(),
                t["tag"].as_str().unwrap()
            )
        })
        .collect()
}

fn tag_entry(tags: &Value, name: &str) -> Value {
    tags.as_array()
        .unwrap()
        .iter()
        .find(|t| names([*t]).contains(name))
        .unwrap_or_else(|| panic!("{name} not listed by regfs tags: {tags}"))
        .clone()
}

/// Runs GC through the daemon and returns its job record.
fn gc(ctx: &Ctx) -> Value {
    let out = ctx.regfs(&["gc", "--wait"]);
    assert!(
        out.status.success(),
        "regfs gc --wait: {}",
        describe_output(&out)
    );
    let jobs = ctx.jobs();
    let job = jobs.last().expect("a job").clone();
    assert_eq!(job["outcome"], "done", "{job}");
    job
}

fn pruned_names(job: &Value) -> BTreeSet<String> {
    names(
        job["retention"]["pruned"]
            .as_array()
            .expect("retention.pruned in the job"),
    )
}

#[test]
fn retention_prunes_what_the_policies_let_go_and_keeps_what_is_pulled() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("regfs.toml");
    config(&cfg, "grace = \"1h\"");
    let cfg_arg = cfg.display().to_string();
    let Some(mut world) = setup_custom(
        Mode::DeleteUntagged,
        Cache::DropIn,
        &["--config", &cfg_arg],
        |_| {},
    ) else {
        return;
    };
    let ctx = world.ctx.clone();
    let digest = |n: &str| ctx.image(n).digest.clone();

    // Pushed without reading the tags back (a GET by tag is a pull).
    for (img, dest) in [
        ("app-v1", "ci/app:old1"),
        ("scratch", "ci/app:old2"),
        ("base", "ci/app:pulled"),
        ("tools", "ci/app:v1"),
        ("app-v2", "ci/app:new"),
        ("tools", "ci/deep/app:x"),
        ("base", "library/base:1"),
    ] {
        let out = ctx.push(img, dest);
        assert!(
            out.status.success(),
            "push {dest}: {}",
            describe_output(&out)
        );
    }
    for (repo, tag, when) in [
        ("ci/app", "old1", "10 days ago"),
        ("ci/app", "old2", "9 days ago"),
        ("ci/app", "pulled", "8 days ago"),
        ("ci/app", "v1", "30 days ago"),
        ("ci/deep/app", "x", "20 days ago"),
        ("library/base", "1", "100 days ago"),
    ] {
        touch(&ctx, repo, tag, when);
    }
    ctx.pull("ci/app:pulled", "base").unwrap();

    // What regfs recorded.
    let tags = json_of(&ctx, &["tags", "--json"]);
    let pulled = tag_entry(&tags, "ci/app:pulled");
    assert!(
        pulled["pulled"].is_string(),
        "the pull was not recorded: {pulled}"
    );
    assert_eq!(pulled["digest"], digest("base"));
    let old1 = tag_entry(&tags, "ci/app:old1");
    assert!(old1["pulled"].is_null(), "never pulled: {old1}");
    let pushed = chrono::DateTime::parse_from_rfc3339(old1["pushed"].as_str().unwrap()).unwrap();
    let age = chrono::Utc::now().signed_duration_since(pushed);
    assert!(
        (age.num_hours() - 240).abs() <= 1,
        "pushed {age:?} ago, not 10 days: {old1}"
    );

    // The preview, and a dry run (the default) that prunes nothing.
    let expected: BTreeSet<String> = ["ci/app:old1", "ci/app:old2"].map(String::from).into();
    let preview = json_of(&ctx, &["retention", "preview", "--json"]);
    let going = preview
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["keep"] == false);
    assert_eq!(names(going), expected, "{preview:#}");
    let dry = gc(&ctx);
    assert_eq!(pruned_names(&dry), expected, "{dry:#}");
    for t in ["old1", "old2"] {
        assert!(
            link(&ctx, "ci/app", t).exists(),
            "a dry run pruned ci/app:{t}"
        );
    }

    // A restart keeps the pull time; then a real run.
    drop(world.daemon.take());
    config(&cfg, "grace = \"1h\"\ndry_run = false");
    let root = ctx.store.parent().unwrap();
    let extra: Vec<std::ffi::OsString> = vec![
        "--registry-config".into(),
        root.join("registry.yml").into(),
        "--config".into(),
        cfg.clone().into(),
    ];
    let daemon = start_daemon(
        &ctx.store,
        &ctx.mnt,
        &ctx.state,
        &ctx.daemon_log,
        Mode::DeleteUntagged,
        &extra,
    );
    let pid = daemon.child.id();
    world.daemon = Some(daemon);
    let again = tag_entry(&json_of(&ctx, &["tags", "--json"]), "ci/app:pulled");
    assert_eq!(
        again["pulled"], pulled["pulled"],
        "the pull time did not survive a restart"
    );

    let real = gc(&ctx);
    assert_eq!(
        pruned_names(&real),
        expected,
        "the real run pruned other tags than the dry run listed"
    );
    for t in ["old1", "old2"] {
        assert!(!link(&ctx, "ci/app", t).exists(), "ci/app:{t} not pruned");
        assert_eq!(
            ctx.manifest_digest("ci/app", t),
            Err("HTTP 404".into()),
            "ci/app:{t}"
        );
    }
    for (r, img) in [
        ("ci/app:pulled", "base"),
        ("ci/app:new", "app-v2"),
        ("ci/app:v1", "tools"),
        ("ci/deep/app:x", "tools"),
        ("library/base:1", "base"),
    ] {
        ctx.pull(r, img)
            .unwrap_or_else(|e| panic!("kept tag {r}: {e}"));
    }
    // Within the grace the untagged manifests stay, although untagged ones are collected.
    for img in ["app-v1", "scratch"] {
        ctx.pull(&format!("ci/app@{}", digest(img)), img)
            .unwrap_or_else(|e| panic!("{img} within the grace: {e}"));
    }

    // Restore within the grace: the tag pulls whole.
    let mut cmd = Command::new(BIN);
    cmd.args(["retention", "restore"])
        .arg(&ctx.mnt)
        .arg("ci/app:old1")
        .arg("--state-dir")
        .arg(&ctx.state);
    let out = run(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "restore: {}", describe_output(&out));
    ctx.pull("ci/app:old1", "app-v1").unwrap();

    // After the grace, the space of what only ci/app:old2 held comes back.
    let others: BTreeSet<String> = ["app-v1", "base", "tools", "app-v2"]
        .iter()
        .flat_map(|n| ctx.image(n).all_blobs())
        .collect();
    let only_old2: Vec<String> = ctx
        .image("scratch")
        .all_blobs()
        .into_iter()
        .filter(|b| !others.contains(b))
        .collect();
    assert!(!only_old2.is_empty());
    config(&cfg, "grace = \"1s\"\ndry_run = false");
    signal(pid, libc::SIGHUP);
    thread::sleep(Duration::from_secs(3));
    let after = gc(&ctx);
    let expired = after["retention"]["expired"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        expired,
        [Value::from(format!("ci/app@{}", digest("scratch")))],
        "{after:#}"
    );
    for b in &only_old2 {
        assert!(
            !ctx.blob_exists(b),
            "{b} of the pruned image is still in the store"
        );
    }
    ctx.pull("ci/app:old1", "app-v1").unwrap();
    ctx.pull("ci/app:new", "app-v2").unwrap();
}

/// An online run prunes too, with the store writable: a tag pushed again and again while
/// runs prune is never lost (a push before the stage's listing is judged fresh, one after
/// it is seen re-written and kept, one after the removal makes it anew).
#[test]
fn an_online_run_prunes_and_keeps_a_tag_pushed_during_it() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("regfs.toml");
    fs::write(
        &cfg,
        "[retention]\ndry_run = false\n[[retention.policy]]\nrepositories = [\"ci/*\"]\nkeep_pushed_within = \"1h\"\n",
    )
    .unwrap();
    let cfg_arg = cfg.display().to_string();
    let Some(world) = setup_custom(
        Mode::Default,
        Cache::DropIn,
        &["--config", &cfg_arg, "--gc-mode", "online"],
        |_| {},
    ) else {
        return;
    };
    let ctx = world.ctx.clone();
    for (img, dest) in [
        ("app-v1", "ci/app:stale"),
        ("base", "ci/app:busy"),
        ("app-v2", "ci/app:fresh"),
    ] {
        let out = ctx.push(img, dest);
        assert!(
            out.status.success(),
            "push {dest}: {}",
            describe_output(&out)
        );
    }
    touch(&ctx, "ci/app", "stale", "5 days ago");
    touch(&ctx, "ci/app", "busy", "5 days ago");
    let stop_pushing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pusher = {
        let (ctx, stop) = (ctx.clone(), stop_pushing.clone());
        thread::spawn(move || {
            let mut pushes = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = ctx.push("base", "ci/app:busy");
                assert!(
                    out.status.success(),
                    "push during runs: {}",
                    describe_output(&out)
                );
                pushes += 1;
            }
            pushes
        })
    };
    let mut pruned = BTreeSet::new();
    for _ in 0..3 {
        pruned.extend(pruned_names(&gc(&ctx)));
    }
    stop_pushing.store(true, std::sync::atomic::Ordering::Relaxed);
    let pushes = pusher.join().unwrap();
    assert!(pushes > 0);
    assert!(pruned.contains("ci/app:stale"), "{pruned:?}");
    assert!(!link(&ctx, "ci/app", "stale").exists());
    assert!(
        link(&ctx, "ci/app", "busy").exists(),
        "a tag pushed during the runs was lost"
    );
    ctx.pull("ci/app:busy", "base").unwrap();
    ctx.pull("ci/app:fresh", "app-v2").unwrap();
}

//! Retention from the command line, without a daemon: `regfs config check` refuses bad
//! policies naming the key, and on a storage directory no daemon serves `regfs tags`
//! lists the tags with their push times (the links' times: nothing was recorded) and
//! `regfs retention preview --config` says what would go.

mod common;

use std::fs;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::daemon::BIN;
use common::store::StoreBuilder;

fn regfs(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_check_refuses_bad_policies_naming_the_key() {
    let dir = common::tempdir();
    let file = dir.path().join("regfs.toml");
    let head = "storage = \"/srv/a\"\nmountpoint = \"/srv/b\"\n";
    for (policy, words) in [
        (
            "[[retention.policy]]\nrepositories = [\"a/*\"]\nkeep_tags = [\"v[\"]\n",
            &["retention.policy[0].keep_tags[0]", "\"v[\""][..],
        ),
        (
            "[[retention.policy]]\nrepositories = [\"a/*\"]\nkeep_most_recently_pushed = -3\n",
            &["retention.policy[0].keep_most_recently_pushed", "-3"],
        ),
        (
            "[[retention.policy]]\nrepositories = [\"a/*\"]\nkeep_newest = 3\n",
            &["keep_newest"],
        ),
    ] {
        fs::write(&file, format!("{head}{policy}")).unwrap();
        let (code, out, err) = regfs(&["config", "check", file.to_str().unwrap()]);
        assert_ne!(code, 0, "{policy} accepted: {out}");
        for w in words {
            assert!(err.contains(w), "{policy}: {err:?} does not name {w}");
        }
    }
    fs::write(
        &file,
        format!(
            "{head}[[retention.policy]]\nrepositories = [\"a/**\"]\nkeep_pulled_within = \"7d\"\n"
        ),
    )
    .unwrap();
    let (code, _, err) = regfs(&["config", "check", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn tags_and_preview_read_a_store_no_daemon_serves() {
    let dir = common::tempdir();
    let root = dir.path().join("storage");
    let s = StoreBuilder::new(&root);
    let (m, _) = s.image("ci/app", &[s.blob(b"l")], "x");
    s.tag("ci/app", "old", &m);
    s.tag("ci/app", "new", &m);
    let link = s.repo("ci/app").join("_manifests/tags/old/current/link");
    let f = fs::File::options().write(true).open(&link).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3 * 86400))
        .unwrap();
    let storage = root.to_str().unwrap();
    let (code, out, err) = regfs(&["tags", storage, "--json"]);
    assert_eq!(code, 0, "{err}");
    let tags: serde_json::Value = serde_json::from_str(&out).unwrap();
    let tags = tags.as_array().unwrap();
    assert_eq!(tags.len(), 2, "{out}");
    let old = tags.iter().find(|t| t["tag"] == "old").unwrap();
    assert_eq!(old["digest"], m.to_string());
    assert!(old["pulled"].is_null(), "{old}");
    let pushed: chrono::DateTime<chrono::Utc> = old["pushed"].as_str().unwrap().parse().unwrap();
    let age = chrono::Utc::now() - pushed;
    assert!((age.num_hours() - 72).abs() <= 1, "{old}");

    let cfg = dir.path().join("regfs.toml");
    fs::write(
        &cfg,
        "[[retention.policy]]\nrepositories = [\"ci/*\"]\nkeep_pushed_within = \"1d\"\n",
    )
    .unwrap();
    let (code, out, err) = regfs(&[
        "retention",
        "preview",
        storage,
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("1 tags would be pruned, 1 kept"), "{out}");
    assert!(out.contains("PRUNED ci/app:old"), "{out}");
    // Without a configuration, on disk: refused, saying what to give.
    let (code, _, err) = regfs(&["retention", "preview", storage]);
    assert_ne!(code, 0);
    assert!(err.contains("--config"), "{err}");
}

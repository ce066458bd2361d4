use super::*;
use crate::settings::GcDuration;

fn parse(text: &str) -> Result<MountOptions, ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: "t.toml".into(),
        message: e.to_string(),
    })?;
    resolve(
        &MountFlags::with_config(Path::new("t.toml")),
        &file,
        "t.toml",
    )
}

#[test]
fn a_full_file_resolves() {
    let o = parse(
        r#"
storage = "/srv/store"
mountpoint = "/srv/mnt"
threads = 4
attr_timeout = 5
passthrough = false
drain_timeout = 2.5
[gc]
schedule = "0 3 * * SAT"
duration = "30m"
delete_untagged = true
upload_max_age = "48h"
min_age = "30m"
allow_missing_manifests = true
[metrics]
listen = "127.0.0.1:9469"
"#,
    )
    .unwrap();
    assert_eq!(o.mount.threads, 4);
    assert!(!o.mount.passthrough);
    assert_eq!(
        o.settings.duration,
        GcDuration::Limit(Duration::from_secs(1800))
    );
    assert!(o.settings.delete_untagged);
    assert!(o.settings.gc_options().allow_missing_manifests);
    assert_eq!(o.settings.upload_max_age, Duration::from_secs(48 * 3600));
    assert_eq!(o.settings.gc_options().min_age, Duration::from_secs(1800));
    assert_eq!(o.settings.drain_timeout, Duration::from_millis(2500));
    assert_eq!(o.metrics.unwrap().listen.port(), 9469);
    assert_eq!(o.mount.users, MountUsers::default());
}

#[test]
fn allowed_users_are_names_or_uids_and_an_unknown_name_is_refused() {
    let o =
        parse("storage = \"/a\"\nmountpoint = \"/b\"\nallow_users = [\"root\", 1001, \"1002\"]\n")
            .unwrap();
    assert_eq!(o.mount.users.uids, vec![0, 1001, 1002]);
    assert!(!o.mount.users.all);
    let o = parse("storage = \"/a\"\nmountpoint = \"/b\"\nallow_all_users = true\n").unwrap();
    assert!(o.mount.users.all);
    let e =
        parse("storage = \"/a\"\nmountpoint = \"/b\"\nallow_users = [\"no-such-user-regfs\"]\n")
            .unwrap_err()
            .to_string();
    assert!(
        e.contains("allow_users") && e.contains("no-such-user-regfs"),
        "{e}"
    );
}

#[test]
fn unknown_keys_and_bad_values_name_the_key_and_line() {
    let e = parse("storage = \"/a\"\nmountpoint = \"/b\"\nthreds = 4\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("threds") && e.contains("line 3"), "{e}");
    let e = parse("storage = \"/a\"\nmountpoint = \"/b\"\n[gc]\nschedule = \"61 * * * *\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("gc.schedule"), "{e}");
    let e = parse("storage = \"/a\"\nmountpoint = \"/b\"\n[gc]\nduration = \"soon\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("gc.duration"), "{e}");
    let e = parse("storage = \"/a\"\nmountpoint = \"/b\"\nthreads = \"many\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("threads") && e.contains("line 3"), "{e}");
    let e = parse("storage = \"/a\"\nmountpoint = \"/b\"\n[metrics]\nlisten = \"0.0.0.0:9469\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("metrics.listen") && e.contains("loopback"),
        "{e}"
    );
    assert!(parse("storage = \"/a\"\nmountpoint = \"/b\"\n[metrics]\nlisten = \"0.0.0.0:9469\"\nallow_remote = true\n").is_ok());
    let e = parse("mountpoint = \"/b\"\n").unwrap_err().to_string();
    assert!(e.contains("storage"), "{e}");
}

#[test]
fn access_times_off_refuses_rules_on_pulls_naming_the_key_or_the_flag() {
    let base = "storage = \"/s\"\nmountpoint = \"/m\"\n";
    let pulls = "[[retention.policy]]\nrepositories = [\"**\"]\nkeep_pulled_within = \"7d\"\n";
    let pushes = "[[retention.policy]]\nrepositories = [\"**\"]\nkeep_pushed_within = \"7d\"\n";
    let o = parse(&format!("{base}access_times = false\n{pushes}")).unwrap();
    assert!(!o.mount.record_access);
    assert!(
        parse(&format!("{base}{pulls}"))
            .unwrap()
            .mount
            .record_access
    );
    let e = parse(&format!("{base}access_times = false\n{pulls}"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t.toml: access_times") && e.contains("retention.policy[0]"),
        "{e}"
    );
    let file = FileConfig::parse(&format!("{base}{pulls}"), "t.toml").unwrap();
    let flags = MountFlags {
        config: None,
        keys: FileConfig {
            access_times: Some(false),
            ..FileConfig::default()
        },
    };
    let e = resolve(&flags, &file, "t.toml").unwrap_err().to_string();
    assert!(e.contains("command line: --no-access-times"), "{e}");
}

//! The systemd service, the docker-registry drop-in, the default configuration file and
//! scripts/install.sh: systemd accepts the units (`systemd-analyze verify`, which needs
//! no running systemd), the unit never hides the mount from the registry, the default
//! configuration passes `regfs config check`, and install.sh (with DESTDIR) puts every
//! file in place, is idempotent, never overwrites a configuration, and uninstalls.

use std::collections::BTreeMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_regfs");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const INSTALLED_EXEC: &str = "ExecStart=/usr/local/bin/regfs mount --config /etc/regfs/regfs.toml";

fn scripts() -> PathBuf {
    Path::new(ROOT).join("scripts")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `tool` from PATH. Missing: under CI=true a failure; elsewhere None, saying why.
fn require_tool(tool: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(tool))
            .find(|p| {
                p.metadata()
                    .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
            })
    });
    if found.is_none() {
        let why = format!("{tool} is not installed (apt-get install -y {package})");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why}; under CI=true this test must run");
        }
        eprintln!("skipping: {why}");
    }
    found
}

/// The unit's settings, comments dropped: (key, value) in order.
fn settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn values<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The source unit with ExecStart pointing at the binary under test.
fn unit_for(bin: &str) -> String {
    let unit = read(&scripts().join("regfs.service"));
    assert_eq!(
        unit.matches(INSTALLED_EXEC).count(),
        1,
        "scripts/regfs.service must have exactly one line {INSTALLED_EXEC}"
    );
    unit.replace(
        "ExecStart=/usr/local/bin/regfs ",
        &format!("ExecStart={bin} "),
    )
}

/// Runs `systemd-analyze verify` on regfs.service and a stand-in docker-registry.service
/// with the drop-in, all in `dir`. systemd-analyze puts the directories of the files it
/// is given first in its unit search path, and finds `NAME.service.d/*.conf` drop-ins
/// beside them there; it loads units in a private manager, so it needs no systemd as
/// PID 1. Man pages named in Documentation= are checked (`man regfs`) when `man` exists.
fn verify(analyze: &Path, dir: &Path) -> Output {
    let mut cmd = Command::new(analyze);
    cmd.arg("verify");
    if on_path("man") {
        let man = dir.join("man/man1");
        fs::create_dir_all(&man).unwrap();
        let page = Command::new(BIN).arg("man").output().unwrap();
        assert!(page.status.success(), "regfs man: {}", text(&page));
        fs::write(man.join("regfs.1"), &page.stdout).unwrap();
        cmd.arg("--man=yes").env("MANPATH", dir.join("man"));
    } else {
        cmd.arg("--man=no");
    }
    cmd.arg(dir.join("regfs.service"))
        .arg(dir.join("docker-registry.service"))
        .current_dir(dir)
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "cat")
        .output()
        .unwrap()
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
}

/// Lines of systemd-analyze's output about our units (anything else, such as a
/// system unit's own warning, is not ours to judge).
fn complaints(out: &Output, dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().to_string();
    text(out)
        .lines()
        .filter(|l| l.contains(&dir) || l.contains("regfs") || l.contains("docker-registry"))
        .map(str::to_string)
        .collect()
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    let Some(analyze) = require_tool("systemd-analyze", "systemd") else {
        return;
    };
    let t0 = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("regfs.service"), unit_for(BIN)).unwrap();
    fs::write(
        d.join("docker-registry.service"),
        "[Unit]\nDescription=stand-in for Debian's docker-registry.service\n\n\
         [Service]\nExecStart=/bin/sh -c 'exec sleep infinity'\n\n\
         [Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    let dropin = d.join("docker-registry.service.d");
    fs::create_dir(&dropin).unwrap();
    let conf = read(&scripts().join("docker-registry.service.d/regfs.conf"));
    fs::write(dropin.join("regfs.conf"), &conf).unwrap();

    let out = verify(&analyze, d);
    assert!(
        out.status.success() && complaints(&out, d).is_empty(),
        "systemd-analyze verify refused the units (exit {:?}):\n{}",
        out.status.code(),
        text(&out)
    );

    // The drop-in really is read from there: a bad key in it is reported, with its path.
    fs::write(dropin.join("regfs.conf"), format!("{conf}\nNoSuchKey=1\n")).unwrap();
    let out = verify(&analyze, d);
    let said = text(&out);
    assert!(
        said.contains("regfs.conf") && said.contains("NoSuchKey"),
        "systemd-analyze did not read the drop-in beside the stand-in unit:\n{said}"
    );
    // And the drop-in's requirement is followed: without regfs.service the registry
    // cannot start (unless this machine has regfs.service installed for real).
    fs::write(dropin.join("regfs.conf"), &conf).unwrap();
    let installed = ["/etc", "/run", "/lib", "/usr/lib"]
        .iter()
        .any(|d| Path::new(d).join("systemd/system/regfs.service").exists());
    if !installed {
        fs::remove_file(d.join("regfs.service")).unwrap();
        let out = Command::new(&analyze)
            .args(["verify", "--man=no"])
            .arg(d.join("docker-registry.service"))
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            !out.status.success() && text(&out).contains("regfs.service"),
            "docker-registry.service should require regfs.service:\n{}",
            text(&out)
        );
    }
    eprintln!("systemd-analyze verify: {:?}", t0.elapsed());
}

#[test]
fn the_unit_runs_the_daemon_in_the_host_mount_namespace() {
    let unit = read(&scripts().join("regfs.service"));
    let s = settings(&unit);
    let one = |key: &str| -> &str {
        let v = values(&s, key);
        assert_eq!(
            v.len(),
            1,
            "regfs.service: {key}= should be set once: {v:?}"
        );
        v[0]
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert_eq!(format!("ExecStart={}", one("ExecStart")), INSTALLED_EXEC);
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("RuntimeDirectory"), "regfs");
    assert!(one("LimitNOFILE").parse::<u64>().unwrap() >= 1 << 20);
    assert!(!values(&s, "Documentation").is_empty());
    assert!(
        values(&s, "Before")
            .iter()
            .any(|v| v.contains("docker-registry.service"))
    );
    assert!(
        values(&s, "After")
            .iter()
            .any(|v| v.contains("local-fs.target"))
    );

    // A stop ends a run (about a second), may wait drain_timeout for writers, then gives
    // the request loop 5 s after the unmount: the stop timeout must cover all of it.
    let config = read(&scripts().join("regfs.toml"));
    let drain: f64 = config
        .lines()
        .find_map(|l| l.strip_prefix("drain_timeout = "))
        .and_then(|v| v.split('#').next()?.trim().parse().ok())
        .unwrap_or(10.0);
    let stop: f64 = one("TimeoutStopSec").parse().unwrap();
    assert!(
        stop >= 1.0 + drain + 5.0,
        "TimeoutStopSec={stop} does not cover a safe stop with drain_timeout {drain}"
    );

    // Nothing that gives the service a mount namespace of its own (the registry, another
    // service, must see the mount), needs /dev/fuse hidden, or drops root.
    for key in [
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateMounts",
        "PrivateUsers",
        "PrivateNetwork",
        "PrivateIPC",
        "PrivatePIDs",
        "PrivateBPF",
        "IPCNamespacePath",
        "NetworkNamespacePath",
        "ReadWritePaths",
        "ReadOnlyPaths",
        "InaccessiblePaths",
        "ExecPaths",
        "NoExecPaths",
        "BindPaths",
        "BindReadOnlyPaths",
        "TemporaryFileSystem",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectProc",
        "ProcSubset",
        "MountFlags",
        "MountAPIVFS",
        "RootDirectory",
        "RootImage",
        "MountImages",
        "ExtensionImages",
        "ExtensionDirectories",
        "DynamicUser",
        "User",
        "RestrictSUIDSGID",
    ] {
        assert!(
            values(&s, key).is_empty(),
            "regfs.service must not set {key}= (it runs as root and mounts for other services)"
        );
    }
    if !values(&s, "DevicePolicy").is_empty() || !values(&s, "DeviceAllow").is_empty() {
        assert!(
            values(&s, "DeviceAllow")
                .iter()
                .any(|v| v.starts_with("/dev/fuse") && v.contains("rw")),
            "a device policy must allow /dev/fuse rw"
        );
    }
    if let Some(caps) = values(&s, "CapabilityBoundingSet").first() {
        for cap in [
            "CAP_SYS_ADMIN",
            "CAP_DAC_OVERRIDE",
            "CAP_DAC_READ_SEARCH",
            "CAP_CHOWN",
        ] {
            assert!(caps.contains(cap), "CapabilityBoundingSet lacks {cap}");
        }
    }
    // The comments tell the operator how to start a run.
    for how in [
        "systemctl kill -s SIGUSR1",
        "--kill-whom=main",
        "systemctl reload regfs",
    ] {
        assert!(
            unit.contains(how),
            "regfs.service's comments should mention `{how}`"
        );
    }

    let dropin = settings(&read(
        &scripts().join("docker-registry.service.d/regfs.conf"),
    ));
    for key in ["Requires", "After", "BindsTo"] {
        assert_eq!(
            values(&dropin, key),
            ["regfs.service"],
            "the drop-in's {key}="
        );
    }
}

/// The registry's in-memory blob-descriptor cache outlives a GC run (a push after it
/// succeeds and cannot be pulled): the drop-in turns it off through the registry's own
/// environment override, in its [Service] section, and says why.
#[test]
fn the_drop_in_turns_off_the_registrys_blob_descriptor_cache() {
    let text = read(&scripts().join("docker-registry.service.d/regfs.conf"));
    let service = text
        .split_once("[Service]")
        .expect("the drop-in has a [Service] section")
        .1;
    assert_eq!(
        values(&settings(service), "Environment"),
        ["REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR=none"],
        "the drop-in's Environment="
    );
    for why in [
        "blobdescriptor: inmemory",
        "cannot",
        "be pulled",
        "regfs status",
    ] {
        assert!(
            text.contains(why),
            "the drop-in's comment should explain the setting (mention `{why}`)"
        );
    }
}

/// Every key of the configuration format, from the sample in src/config.rs's doc comment:
/// (section, key), section "" for the top level.
fn format_keys() -> Vec<(String, String)> {
    let src = read(&Path::new(ROOT).join("src/config.rs"));
    let mut keys = Vec::new();
    let mut section = String::new();
    let mut inside = false;
    for line in src.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            continue;
        };
        let doc = doc.trim();
        if doc.starts_with("```") {
            inside = doc == "```toml";
            continue;
        }
        if !inside {
            continue;
        }
        let doc = doc.trim_start_matches('#').trim();
        if let Some(s) = doc.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some((k, _)) = doc.split_once(" = ") {
            keys.push((section.clone(), k.trim().to_string()));
        }
    }
    keys
}

/// The default configuration as (section, key) -> (active, value).
fn config_keys(config: &str) -> BTreeMap<(String, String), (bool, String)> {
    let mut keys = BTreeMap::new();
    let mut section = String::new();
    for line in config.lines() {
        if let Some(s) = line.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        // "#key = value" is a setting left at its default; "# ..." is prose.
        let (active, l) = match line.strip_prefix('#') {
            Some(rest) => (false, rest),
            None => (true, line),
        };
        if let Some((k, v)) = l.split_once(" = ")
            && !k.is_empty()
            && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            keys.insert(
                (section.clone(), k.to_string()),
                (active, v.trim().to_string()),
            );
        }
    }
    keys
}

fn config_check(path: &Path) -> Output {
    Command::new(BIN)
        .args(["config", "check"])
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn the_default_configuration_passes_regfs_config_check() {
    let path = scripts().join("regfs.toml");
    let out = config_check(&path);
    let said = text(&out);
    assert!(
        out.status.success(),
        "regfs config check {}: {said}",
        path.display()
    );
    assert!(
        said.contains("serves /var/lib/docker-registry at /var/lib/docker-registry")
            && said.contains("GC schedule none")
            && said.contains("duration until-done"),
        "{said}"
    );

    let config = read(&path);
    let keys = config_keys(&config);
    let format = format_keys();
    assert!(
        format.len() >= 10,
        "no sample found in src/config.rs: {format:?}"
    );
    for key in &format {
        assert!(
            keys.contains_key(key),
            "scripts/regfs.toml lacks {}{}{} (set or as a commented \"#key = value\" line)",
            key.0,
            if key.0.is_empty() { "" } else { "." },
            key.1
        );
    }
    let get = |section: &str, key: &str| keys[&(section.to_string(), key.to_string())].clone();
    assert_eq!(
        get("", "storage"),
        (true, "\"/var/lib/docker-registry\"".into())
    );
    assert_eq!(
        get("", "mountpoint"),
        (true, "\"/var/lib/docker-registry\"".into())
    );
    assert_eq!(get("gc", "duration"), (true, "\"until-done\"".into()));
    assert!(!get("gc", "schedule").0, "the schedule is commented out");
    assert_eq!(
        get("metrics", "listen"),
        (false, "\"127.0.0.1:9469\"".into())
    );

    // The commented-out settings are valid too: uncommented, the file still passes.
    let dir = tempfile::tempdir().unwrap();
    let all: String = config
        .lines()
        .map(|l| match l.strip_prefix('#') {
            // A key, or the header of a table shown commented out (`#[[retention.policy]]`).
            Some(rest) if config_keys(rest).len() == 1 || rest.starts_with("[[") => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let uncommented = dir.path().join("all.toml");
    fs::write(&uncommented, all).unwrap();
    let out = config_check(&uncommented);
    assert!(
        out.status.success() && text(&out).contains("GC schedule 0 3 * * SAT"),
        "with every setting uncommented: {}",
        text(&out)
    );
}

fn install_sh(destdir: &Path, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(scripts().join("install.sh"))
        .args(args)
        .env("DESTDIR", destdir)
        .env("REGFS_BIN", BIN)
        .output()
        .unwrap();
    let said = text(&out);
    assert!(
        out.status.success(),
        "install.sh {args:?} failed ({:?}):\n{said}",
        out.status.code()
    );
    said
}

/// Every file under `root`: relative path -> (mode, size, content hash).
fn snapshot(root: &Path) -> BTreeMap<String, (u32, u64, u64)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, u64, u64)>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                walk(root, &p, out);
            } else {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                fs::read(&p).unwrap().hash(&mut h);
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
                out.insert(rel, (m.permissions().mode() & 0o7777, m.len(), h.finish()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Where install.sh puts each file, relative to DESTDIR, for a prefix ("usr/local").
fn installed(prefix: &str) -> Vec<String> {
    vec![
        format!("{prefix}/bin/regfs"),
        "etc/systemd/system/regfs.service".into(),
        "etc/systemd/system/docker-registry.service.d/regfs.conf".into(),
        "etc/regfs/regfs.toml".into(),
        "usr/share/bash-completion/completions/regfs".into(),
        "usr/share/zsh/vendor-completions/_regfs".into(),
        "usr/share/fish/vendor_completions.d/regfs.fish".into(),
        format!("{prefix}/share/man/man1/regfs.1"),
    ]
}

fn check_installed(root: &Path, prefix: &str) {
    let files = snapshot(root);
    let expected = installed(prefix);
    assert_eq!(
        files.keys().cloned().collect::<Vec<_>>(),
        {
            let mut e = expected.clone();
            e.sort();
            e
        },
        "installed files"
    );
    let at = |rel: &str| root.join(rel);
    let bin = at(&format!("{prefix}/bin/regfs"));
    assert_eq!(files[&expected[0]].0, 0o755, "the binary's mode");
    assert!(
        fs::read(&bin).unwrap() == fs::read(BIN).unwrap(),
        "{} is not the binary given",
        bin.display()
    );
    // The unit: the source with ExecStart at the installed binary.
    let unit = read(&at("etc/systemd/system/regfs.service"));
    assert_eq!(unit, unit_for(&format!("/{prefix}/bin/regfs")));
    assert!(unit.contains(&format!(
        "\nExecStart=/{prefix}/bin/regfs mount --config /etc/regfs/regfs.toml\n"
    )));
    assert_eq!(
        read(&at(
            "etc/systemd/system/docker-registry.service.d/regfs.conf"
        )),
        read(&scripts().join("docker-registry.service.d/regfs.conf"))
    );
    for rel in &expected[1..] {
        assert_eq!(files[rel].0, 0o644, "{rel}: mode");
        assert!(files[rel].1 > 0, "{rel} is empty");
    }
    assert!(read(&at("usr/share/bash-completion/completions/regfs")).contains("_regfs()"));
    assert!(read(&at("usr/share/zsh/vendor-completions/_regfs")).starts_with("#compdef regfs"));
    assert!(
        read(&at("usr/share/fish/vendor_completions.d/regfs.fish")).contains("complete -c regfs")
    );
    // clap_mangen opens with its quote-string definition (.ie/.el), then the title.
    let man = read(&at(&format!("{prefix}/share/man/man1/regfs.1")));
    let first = man
        .lines()
        .find(|l| !l.starts_with(".ie ") && !l.starts_with(".el "))
        .unwrap_or("");
    assert!(
        first.starts_with(".TH regfs 1"),
        "man page starts with {first:?}"
    );
}

#[test]
fn install_sh_installs_idempotently_and_uninstalls() {
    let t0 = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let config = root.join("etc/regfs/regfs.toml");

    let said = install_sh(&root, &["--no-build"]);
    check_installed(&root, "usr/local");
    assert_eq!(read(&config), read(&scripts().join("regfs.toml")));
    assert!(
        said.contains("systemctl enable --now regfs"),
        "next steps: {said}"
    );
    let first = snapshot(&root);

    // Again: the same files, nothing rewritten.
    let said = install_sh(&root, &["--no-build"]);
    assert_eq!(snapshot(&root), first, "a second install changed files");
    assert!(
        said.contains("unchanged") && said.contains("kept"),
        "{said}"
    );

    // An operator's configuration is never overwritten.
    let edited = format!("{}\n# local change\nthreads = 4\n", read(&config));
    fs::write(&config, &edited).unwrap();
    let said = install_sh(&root, &["--no-build"]);
    assert_eq!(
        read(&config),
        edited,
        "install.sh overwrote the configuration"
    );
    assert!(
        said.contains("kept") && said.contains("/etc/regfs/regfs.toml"),
        "{said}"
    );
    let mut expected = first.clone();
    expected.remove("etc/regfs/regfs.toml");
    let mut now = snapshot(&root);
    now.remove("etc/regfs/regfs.toml");
    assert_eq!(now, expected);

    // A changed file in place is put back.
    fs::write(
        root.join("usr/share/zsh/vendor-completions/_regfs"),
        "stale",
    )
    .unwrap();
    install_sh(&root, &["--no-build"]);
    now = snapshot(&root);
    now.remove("etc/regfs/regfs.toml");
    assert_eq!(now, expected, "a stale completion file was not replaced");

    // Uninstall: everything but the configuration; again, harmlessly.
    for _ in 0..2 {
        install_sh(&root, &["--uninstall"]);
        assert_eq!(
            snapshot(&root).into_keys().collect::<Vec<_>>(),
            ["etc/regfs/regfs.toml"]
        );
        assert_eq!(read(&config), edited);
    }
    assert!(
        !root
            .join("etc/systemd/system/docker-registry.service.d")
            .exists()
    );
    // --purge: the configuration too.
    for _ in 0..2 {
        install_sh(&root, &["--uninstall", "--purge"]);
        assert!(snapshot(&root).is_empty(), "left: {:?}", snapshot(&root));
    }
    assert!(!root.join("etc/regfs").exists());
    eprintln!("install.sh, 8 runs: {:?}", t0.elapsed());
}

#[test]
fn install_sh_honours_the_prefix_and_refuses_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    install_sh(&root, &["--no-build", "--prefix", "/opt/regfs"]);
    check_installed(&root, "opt/regfs");
    install_sh(&root, &["--uninstall", "--purge", "--prefix=/opt/regfs"]);
    assert!(snapshot(&root).is_empty(), "left: {:?}", snapshot(&root));

    for bad in [&["--bogus"][..], &["--prefix", "relative"], &["--purge"]] {
        let out = Command::new("bash")
            .arg(scripts().join("install.sh"))
            .args(bad)
            .env("DESTDIR", &root)
            .env("REGFS_BIN", BIN)
            .output()
            .unwrap();
        assert!(!out.status.success(), "install.sh {bad:?} should fail");
        assert!(
            snapshot(&root).is_empty(),
            "install.sh {bad:?} installed something"
        );
    }
    // No binary: a clear refusal, nothing installed.
    let out = Command::new("bash")
        .arg(scripts().join("install.sh"))
        .arg("--no-build")
        .env("DESTDIR", &root)
        .env("REGFS_BIN", dir.path().join("missing"))
        .output()
        .unwrap();
    assert!(!out.status.success() && text(&out).contains("no regfs binary"));
    assert!(snapshot(&root).is_empty());
}

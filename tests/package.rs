//! The Debian package as an operator installs it: scripts/package.sh builds it with
//! cargo-deb (from the binary `cargo test` already built, so CI compiles nothing more),
//! `dpkg -i` installs it on this machine, every file is where Debian looks for it, the
//! configuration is a conffile, systemd accepts the installed unit, the installed binary
//! runs, nothing is enabled or started, and `dpkg --purge` removes it all.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_regfs");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        common::describe_output(&out)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", "regfs"])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"installed"))
}

/// Purges the package whatever the test did.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "regfs"]).output();
    }
}

const FILES: [(&str, u32); 10] = [
    ("/usr/bin/regfs", 0o755),
    ("/lib/systemd/system/regfs.service", 0o644),
    (
        "/usr/share/regfs/docker-registry.service.d/regfs.conf",
        0o644,
    ),
    ("/etc/regfs/regfs.toml", 0o644),
    ("/usr/share/man/man1/regfs.1.gz", 0o644),
    ("/usr/share/bash-completion/completions/regfs", 0o644),
    ("/usr/share/zsh/vendor-completions/_regfs", 0o644),
    ("/usr/share/fish/vendor_completions.d/regfs.fish", 0o644),
    ("/usr/share/regfs/grafana/regfs.json", 0o644),
    ("/usr/share/regfs/prometheus/regfs-rules.yml", 0o644),
];

#[test]
fn the_package_installs_verifies_and_purges() {
    if !common::prereq::Needs::new()
        .root()
        .on_path(&["dpkg", "dpkg-deb", "systemd-analyze", "cargo"])
        .met("installing the package needs root, dpkg, systemd-analyze and cargo")
    {
        return;
    }
    // This machine's own regfs (a package, or install.sh's configuration) is not ours to
    // replace or purge.
    let own = if installed() {
        Some("a regfs package is installed")
    } else if Path::new("/etc/regfs/regfs.toml").exists() {
        Some("/etc/regfs/regfs.toml exists")
    } else {
        None
    };
    if let Some(why) = own {
        let why = format!("{why} on this machine; the test installs and purges its own");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why}");
        }
        eprintln!("skipping: {why}");
        return;
    }
    let bin = PathBuf::from(BIN);
    let profile = match bin
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
    {
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("{BIN}: no profile directory"),
    }
    .to_string();
    let out_dir = common::tempdir();
    let t0 = Instant::now();
    let built = run(Command::new("bash")
        .arg(Path::new(ROOT).join("scripts/package.sh"))
        .args(["--profile", &profile, "--no-build", "--fast", "--output"])
        .arg(out_dir.path()));
    let deb = PathBuf::from(stdout(&built).trim());
    let size = std::fs::metadata(&deb).unwrap().len();
    eprintln!(
        "package.sh ({profile}): {} bytes in {:?}",
        size,
        t0.elapsed()
    );

    let _purge = Purge;
    let out = run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(installed());
    // It says it started nothing, and it did not.
    assert!(
        stdout(&out).contains("nothing was enabled or started"),
        "{}",
        stdout(&out)
    );
    for p in [
        "/etc/systemd/system/multi-user.target.wants/regfs.service",
        "/etc/systemd/system/docker-registry.service.d/regfs.conf",
    ] {
        assert!(!Path::new(p).exists(), "{p} after install");
    }
    for (path, mode) in FILES {
        let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(m.permissions().mode() & 0o7777, mode, "{path}");
        assert!(m.len() > 0, "{path} is empty");
    }
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "regfs"]));
    assert!(
        stdout(&conffiles).contains("/etc/regfs/regfs.toml"),
        "{}",
        stdout(&conffiles)
    );
    let unit = std::fs::read_to_string("/lib/systemd/system/regfs.service").unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/bin/regfs mount --config /etc/regfs/regfs.toml\n"),
        "{unit}"
    );
    run(Command::new("systemd-analyze")
        .args(["verify", "--man=no", "/lib/systemd/system/regfs.service"])
        .env("SYSTEMD_COLORS", "0"));
    let version = run(Command::new("/usr/bin/regfs").arg("--version"));
    assert_eq!(
        stdout(&version).trim(),
        format!("regfs {}", env!("CARGO_PKG_VERSION"))
    );
    run(Command::new("/usr/bin/regfs").args(["config", "check", "/etc/regfs/regfs.toml"]));
    // The man page and completions are the binary's own.
    let man = run(Command::new("regfs").arg("man").env("PATH", "/usr/bin"));
    let gz = run(Command::new("gzip").args(["-dc", "/usr/share/man/man1/regfs.1.gz"]));
    assert_eq!(gz.stdout, man.stdout, "the man page is `regfs man`");
    let bash = run(Command::new("/usr/bin/regfs").args(["completions", "bash"]));
    assert_eq!(
        std::fs::read("/usr/share/bash-completion/completions/regfs").unwrap(),
        bash.stdout
    );

    run(Command::new("dpkg").args(["--purge", "regfs"]));
    assert!(!installed());
    for (path, _) in FILES {
        assert!(!Path::new(path).exists(), "{path} after purge");
    }
    assert!(!Path::new("/etc/regfs").exists(), "/etc/regfs after purge");
    eprintln!("package test: {:?}", t0.elapsed());
}

//! The `[cluster]` section and the `--cluster-*` flags: defaults, flags over the file,
//! and bad values refused naming the key.

use std::path::Path;
use std::time::Duration;

use regfs::config::{FileConfig, MountFlags, resolve};

fn flags() -> MountFlags {
    MountFlags {
        config: None,
        keys: FileConfig {
            storage: Some("/srv/store".into()),
            mountpoint: Some("/srv/mnt".into()),
            ..FileConfig::default()
        },
    }
}

fn file(text: &str) -> FileConfig {
    FileConfig::parse(text, "t.toml").unwrap()
}

#[test]
fn without_a_cluster_section_no_etcd_is_needed_and_caches_stay_long() {
    let o = resolve(&flags(), &file(""), "t.toml").unwrap();
    assert!(o.cluster.is_none());
    assert_eq!(o.mount.attr_timeout, Duration::from_secs(60));
    assert!(!o.mount.shared_store);
}

#[test]
fn a_cluster_section_takes_defaults_and_shares_the_store() {
    let o = resolve(
        &flags(),
        &file("[cluster]\nendpoints = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]\n"),
        "t.toml",
    )
    .unwrap();
    let c = o.cluster.unwrap();
    assert_eq!(c.endpoints.len(), 2);
    assert_eq!(c.lease_ttl, Duration::from_secs(10));
    assert_eq!(c.prefix, "/regfs/");
    // Unique per machine: its machine id (cloned machines may share a hostname).
    let machine = regfs::cluster::machine_id(&regfs::cluster::MACHINE_ID_FILES.map(Path::new))
        .expect("this machine has a machine id");
    assert_eq!(c.node, format!("{machine}:/srv/mnt"));
    // What the kernel may keep of each node is chosen by its role (`fs::caching`), for
    // the same default time as alone.
    assert_eq!(o.mount.attr_timeout, Duration::from_secs(60));
    assert!(o.mount.shared_store);
}

#[test]
fn flags_win_over_the_file() {
    let mut f = flags();
    f.keys.cluster.endpoints = Some(vec![
        "http://127.0.0.1:1".into(),
        "http://127.0.0.1:2".into(),
    ]);
    f.keys.cluster.node = Some("b".into());
    f.keys.cluster.lease_ttl = Some("3s".into());
    f.keys.cluster.prefix = Some("/two/".into());
    f.keys.attr_timeout = Some(1.0);
    let text = "[cluster]\nendpoints = [\"http://x:9\"]\nnode = \"a\"\nlease_ttl = \"20s\"\nprefix = \"/one/\"\n";
    let o = resolve(&f, &file(text), "t.toml").unwrap();
    let c = o.cluster.unwrap();
    assert_eq!(c.endpoints, ["http://127.0.0.1:1", "http://127.0.0.1:2"]);
    assert_eq!((c.node.as_str(), c.prefix.as_str()), ("b", "/two/"));
    assert_eq!(c.lease_ttl, Duration::from_secs(3));
    assert_eq!(
        o.mount.attr_timeout,
        Duration::from_secs(1),
        "an explicit timeout stays"
    );
}

#[test]
fn bad_values_are_refused_naming_the_key() {
    for (text, key) in [
        ("[cluster]\nendpoints = []\n", "cluster.endpoints"),
        (
            "[cluster]\nendpoints = [\"ftp://a:2379\"]\n",
            "cluster.endpoints",
        ),
        (
            "[cluster]\nendpoints = [\"https://a:2379\"]\n",
            "cluster.ca_file",
        ),
        (
            "[cluster]\nendpoints = [\"http://a:1\"]\nlease_ttl = \"1s\"\n",
            "cluster.lease_ttl",
        ),
        (
            "[cluster]\nendpoints = [\"http://a:1\"]\nlease_ttl = \"2500ms\"\n",
            "cluster.lease_ttl",
        ),
        (
            "[cluster]\nendpoints = [\"http://a:1\"]\nprefix = \"/regfs\"\n",
            "cluster.prefix",
        ),
        (
            "[cluster]\nendpoints = [\"http://a:1\"]\nnode = \"\"\n",
            "cluster.node",
        ),
    ] {
        let e = resolve(&flags(), &file(text), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains(key) && e.contains("t.toml"), "{text}: {e}");
    }
    assert!(
        FileConfig::parse("[cluster]\nendpoint = []\n", "t.toml").is_err(),
        "unknown key"
    );
}

/// A PEM file of `label` (the framing is what the configuration checks; etcd checks the
/// rest), at `mode`.
fn pem(dir: &Path, name: &str, label: &str, mode: u32) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    let text =
        format!("-----BEGIN {label}-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOC\n-----END {label}-----\n");
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p.display().to_string()
}

fn secret(dir: &Path, name: &str, text: &str, mode: u32) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p.display().to_string()
}

#[test]
fn etcd_tls_and_auth_are_read_from_the_section_and_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pem(d, "ca.pem", "CERTIFICATE", 0o644);
    let cert = pem(d, "client.pem", "CERTIFICATE", 0o644);
    let key = pem(d, "client-key.pem", "PRIVATE KEY", 0o600);
    let pw = secret(d, "pw", "s3cret\n", 0o600);
    let text = format!(
        "[cluster]\nendpoints = [\"https://10.0.0.1:2379\"]\nca_file = {ca:?}\ncert_file = {cert:?}\nkey_file = {key:?}\nusername = \"regfs\"\npassword_file = {pw:?}\n"
    );
    let o = resolve(&flags(), &file(&text), "t.toml").unwrap();
    let a = o.cluster.unwrap().access;
    assert_eq!(a.ca_file.as_deref(), Some(Path::new(&ca)));
    assert_eq!(
        a.client_cert,
        Some((cert.clone().into(), key.clone().into()))
    );
    assert_eq!(a.auth, Some(("regfs".into(), pw.clone().into())));
    // Flags over the file.
    let other_pw = secret(d, "pw2", "other\n", 0o400);
    let mut f = flags();
    f.keys.cluster.username = Some("root".into());
    f.keys.cluster.password_file = Some(other_pw.clone().into());
    let a = resolve(&f, &file(&text), "t.toml")
        .unwrap()
        .cluster
        .unwrap()
        .access;
    assert_eq!(a.auth, Some(("root".into(), other_pw.into())));
}

#[test]
fn bad_etcd_tls_and_auth_settings_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pem(d, "ca.pem", "CERTIFICATE", 0o644);
    let cert = pem(d, "client.pem", "CERTIFICATE", 0o644);
    let key = pem(d, "client-key.pem", "PRIVATE KEY", 0o600);
    let open_key = pem(d, "open-key.pem", "PRIVATE KEY", 0o644);
    let not_pem = secret(d, "junk.pem", "hello\n", 0o644);
    let pw = secret(d, "pw", "s3cret\n", 0o600);
    let open_pw = secret(d, "open-pw", "s3cret\n", 0o640);
    let empty_pw = secret(d, "empty-pw", "\n", 0o600);
    let missing = d.join("missing.pem").display().to_string();
    let https = "[cluster]\nendpoints = [\"https://a:2379\"]\n";
    let http = "[cluster]\nendpoints = [\"http://a:2379\"]\n";
    for (text, key_at_fault, says) in [
        (
            format!("{https}ca_file = {missing:?}\n"),
            "cluster.ca_file",
            "missing.pem",
        ),
        (
            format!("{https}ca_file = {not_pem:?}\n"),
            "cluster.ca_file",
            "no PEM certificate",
        ),
        (
            format!("{http}ca_file = {ca:?}\n"),
            "cluster.ca_file",
            "https://",
        ),
        (
            "[cluster]\nendpoints = [\"https://a:1\", \"http://b:1\"]\n".to_string(),
            "cluster.endpoints",
            "mixes",
        ),
        (
            format!("{https}ca_file = {ca:?}\ncert_file = {cert:?}\n"),
            "cluster.cert_file",
            "private key",
        ),
        (
            format!("{https}ca_file = {ca:?}\nkey_file = {key:?}\n"),
            "cluster.key_file",
            "certificate",
        ),
        (
            format!("{https}ca_file = {ca:?}\ncert_file = {cert:?}\nkey_file = {open_key:?}\n"),
            "cluster.key_file",
            "chmod 600",
        ),
        (
            format!("{http}username = \"root\"\n"),
            "cluster.username",
            "password",
        ),
        (
            format!("{http}password_file = {pw:?}\n"),
            "cluster.password_file",
            "user",
        ),
        (
            format!("{http}username = \"root\"\npassword_file = {open_pw:?}\n"),
            "cluster.password_file",
            "mode 0640",
        ),
        (
            format!("{http}username = \"root\"\npassword_file = {empty_pw:?}\n"),
            "cluster.password_file",
            "empty",
        ),
    ] {
        let e = resolve(&flags(), &file(&text), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(key_at_fault) && e.contains("t.toml") && e.contains(says),
            "{text}: {e}"
        );
    }
    // A flag at fault is named as the flag.
    let mut f = flags();
    f.keys.cluster.username = Some("root".into());
    f.keys.cluster.password_file = Some(open_pw.into());
    let e = resolve(&f, &file(http), "t.toml").unwrap_err().to_string();
    assert!(
        e.contains("--cluster-password-file") && e.contains("chmod 600"),
        "{e}"
    );
    assert!(
        FileConfig::parse("[cluster]\npassword = \"x\"\n", "t.toml").is_err(),
        "no password in the file itself"
    );
}

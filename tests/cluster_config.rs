//! The `[cluster]` section and the `--cluster-*` flags: defaults, flags over the file,
//! and bad values refused naming the key.

use std::path::Path;
use std::time::Duration;

use regfs::config::{FileConfig, MountFlags, resolve};

fn flags() -> MountFlags {
    MountFlags {
        storage: Some("/srv/store".into()),
        mountpoint: Some("/srv/mnt".into()),
        ..MountFlags::default()
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
fn a_cluster_section_takes_defaults_and_the_kernel_caches_nothing() {
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
    assert_eq!(o.mount.attr_timeout, Duration::ZERO);
    assert!(o.mount.shared_store);
}

#[test]
fn flags_win_over_the_file() {
    let f = MountFlags {
        cluster_endpoints: Some("http://127.0.0.1:1,http://127.0.0.1:2".into()),
        cluster_node: Some("b".into()),
        cluster_lease_ttl: Some(Duration::from_secs(3)),
        cluster_prefix: Some("/two/".into()),
        attr_timeout: Some(1.0),
        ..flags()
    };
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
            "[cluster]\nendpoints = [\"https://a:2379\"]\n",
            "cluster.endpoints",
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

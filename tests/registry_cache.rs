//! The registry's blob-descriptor cache: the verdict regfs gives on each configuration
//! (with a real redis-server and a real docker-registry process), and the removal of a
//! redis cache's keys for deleted blobs, keys laid out as registry 2.8 writes them
//! (observed with `redis-cli --scan` after a push).
mod common;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use common::prereq::Needs;
use common::redis::RedisServer;
use common::registry_process::{Start, serve, start};
use regfs::layout::Digest;
use regfs::registry::cache::{self, RegistrySettings};
use regfs::registry::config::RedisTarget;

fn needs(exes: &[&str]) -> bool {
    Needs::new()
        .on_path(exes)
        .met("the registry cache tests need real redis-server and docker-registry")
}

/// regfs told of `config`, serving the store `write_config` puts next to it.
fn settings(config: &Path) -> RegistrySettings {
    RegistrySettings {
        config: Some(config.to_path_buf()),
        allow_unsafe_cache: false,
        store: vec![config.parent().unwrap().join("store")],
    }
}

/// regfs told of no registry configuration, serving `store`: it finds the registries.
fn serving(store: &Path) -> RegistrySettings {
    RegistrySettings {
        config: None,
        allow_unsafe_cache: false,
        store: vec![store.to_path_buf()],
    }
}

fn write_config(dir: &Path, name: &str, cache: &str, extra: &str) -> PathBuf {
    let p = dir.join(name);
    let root = dir.join("store");
    fs::create_dir_all(&root).unwrap();
    fs::write(
        &p,
        format!(
            "version: 0.1\nstorage:\n  cache:\n    blobdescriptor: {cache}\n  filesystem:\n    rootdirectory: {}\n{extra}",
            root.display()
        ),
    )
    .unwrap();
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// Seeds `d`'s keys in `repos` as registry 2.8 keeps them.
fn seed(r: &RedisServer, d: &Digest, repos: &[&str]) {
    let d = d.to_string();
    r.cli(&["HSET", &format!("blobs::{d}"), "digest", &d, "size", "1"]);
    for repo in repos {
        let set = format!("repository::{repo}::blobs");
        r.cli(&["SADD", &set, &d]);
        r.cli(&["HSET", &format!("{set}::{d}"), "digest", &d]);
    }
}

#[test]
fn the_keys_of_deleted_blobs_are_removed_from_redis_and_no_others() {
    if !needs(&["redis-server", "redis-cli"]) {
        return;
    }
    let dir = common::tempdir();
    let r = RedisServer::start(&dir.path().join("redis"));
    let gone = [Digest::of(b"deleted layer"), Digest::of(b"deleted config")];
    let kept = Digest::of(b"kept layer");
    seed(&r, &gone[0], &["team/app", "other"]);
    seed(&r, &gone[1], &["team/app"]);
    seed(&r, &kept, &["team/app", "other"]);
    let before = r.keys().len();
    assert_eq!(before, 3 + 2 + 5, "seeded keys: {:?}", r.keys());

    let config = write_config(
        dir.path(),
        "config.yml",
        "redis",
        &format!("redis:\n  addr: {}\n", r.addr()),
    );
    let said = cache::forget(&settings(&config), &gone)
        .expect("a redis cache is configured")
        .expect("keys removed");
    assert!(said.contains(&r.addr()), "{said}");

    let k = kept.to_string();
    assert_eq!(
        r.keys(),
        vec![
            format!("blobs::{k}"),
            "repository::other::blobs".to_string(),
            format!("repository::other::blobs::{k}"),
            "repository::team/app::blobs".to_string(),
            format!("repository::team/app::blobs::{k}"),
        ]
    );
    for repo in ["team/app", "other"] {
        assert_eq!(
            r.cli(&["SMEMBERS", &format!("repository::{repo}::blobs")]),
            k,
            "{repo}'s set keeps only the blob that was not deleted"
        );
    }
    // No redis configured: nothing to do.
    let none = write_config(dir.path(), "none.yml", "inmemory", "");
    assert!(cache::forget(&settings(&none), &gone).is_none());
}

#[test]
fn each_cache_gets_a_verdict_naming_the_setting() {
    if !needs(&["redis-server", "redis-cli"]) {
        return;
    }
    let dir = common::tempdir();
    let verdict = |config: &Path| cache::assess(&settings(config)).expect("a verdict");
    assert!(cache::assess(&RegistrySettings::default()).is_none());

    let none = write_config(dir.path(), "none.yml", "none", "");
    let v = verdict(&none);
    assert!(v.safe && v.cache == "none", "{v:?}");

    // In-memory with no registry process serving this file: safe for now, said so.
    let mem = write_config(dir.path(), "mem.yml", "inmemory", "");
    let v = verdict(&mem);
    assert!(v.safe && v.cache == "inmemory", "{v:?}");
    assert!(v.detail.contains("no registry using the store"), "{v:?}");

    let odd = write_config(dir.path(), "odd.yml", "memcached", "");
    let v = verdict(&odd);
    assert!(!v.safe, "{v:?}");
    assert!(
        v.detail.contains("storage.cache.blobdescriptor: memcached"),
        "{v:?}"
    );

    let missing = dir.path().join("absent.yml");
    let v = verdict(&missing);
    assert!(!v.safe && v.detail.contains("absent.yml"), "{v:?}");

    let r = RedisServer::start(&dir.path().join("redis"));
    let redis = write_config(
        dir.path(),
        "redis.yml",
        "redis",
        &format!("redis:\n  addr: {}\n", r.addr()),
    );
    let v = verdict(&redis);
    assert!(v.safe && v.cache == "redis", "{v:?}");
    assert!(v.detail.contains(&r.addr()), "{v:?}");

    // A password regfs cannot use.
    r.cli(&["CONFIG", "SET", "requirepass", "right"]);
    let wrong = write_config(
        dir.path(),
        "wrong.yml",
        "redis",
        &format!("redis:\n  addr: {}\n  password: wrong\n", r.addr()),
    );
    let v = verdict(&wrong);
    assert!(!v.safe, "{v:?}");
    assert!(
        v.detail.contains(&format!("redis.addr {}", r.addr())),
        "{v:?}"
    );
    let right = write_config(
        dir.path(),
        "right.yml",
        "redis",
        &format!("redis:\n  addr: {}\n  password: right\n", r.addr()),
    );
    assert!(verdict(&right).safe);
    let target = RedisTarget {
        addr: r.addr(),
        password: Some("right".into()),
        db: 0,
    };
    assert_eq!(cache::forget_in(&target, &[Digest::of(b"x")]).unwrap(), 0);

    // Unreachable.
    let addr = r.addr();
    drop(r);
    let v = verdict(&redis);
    assert!(!v.safe, "{v:?}");
    assert!(
        v.detail.contains(&format!(
            "storage.cache.blobdescriptor: redis in {}",
            redis.display()
        )) && v.detail.contains(&format!("redis.addr {addr}")),
        "{v:?}"
    );
}

#[test]
fn a_registry_serving_with_the_in_memory_cache_is_named_by_pid() {
    if !needs(&["docker-registry"]) {
        return;
    }
    let dir = common::tempdir();
    let http = format!("http:\n  addr: 127.0.0.1:{}\n", free_port());
    let config = write_config(dir.path(), "config.yml", "inmemory", &http);

    let reg = serve(&config, &[]);
    let pid = reg.pid();
    let v = cache::assess(&settings(&config)).unwrap();
    assert!(!v.safe, "{v:?}");
    assert_eq!(v.registry_pids, vec![pid]);
    assert!(
        v.detail.contains(&format!("registry pid {pid}"))
            && v.detail.contains("storage.cache.blobdescriptor: inmemory")
            && v.detail
                .contains("REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR=none"),
        "{v:?}"
    );
    drop(reg);

    // As the shipped drop-in starts it.
    let reg = serve(
        &config,
        &[("REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR", "none")],
    );
    let v = cache::assess(&settings(&config)).unwrap();
    assert!(v.safe, "{v:?}");
    assert_eq!(v.registry_pids, vec![reg.pid()]);
    assert!(v.detail.contains("environment"), "{v:?}");
}

/// The part of a verdict about registry `pid`.
fn about(detail: &str, pid: u32) -> String {
    detail
        .split("; ")
        .filter(|d| d.contains(&format!("pid {pid} ")))
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn a_registry_started_without_a_config_argument_is_found_through_its_environment() {
    if !needs(&["docker-registry"]) {
        return;
    }
    let dir = common::tempdir();
    let http = format!("http:\n  addr: 127.0.0.1:{}\n", free_port());
    let config = write_config(dir.path(), "config.yml", "inmemory", &http);
    let shown = config.display().to_string();
    // As `REGISTRY_CONFIGURATION_PATH=... docker-registry serve` (or a unit's Environment=).
    let reg = start(Start {
        env: &[("REGISTRY_CONFIGURATION_PATH", &shown)],
        ..Start::default()
    });
    let pid = reg.pid();
    for s in [settings(&config), serving(&dir.path().join("store"))] {
        let v = cache::assess(&s).expect("a verdict");
        assert!(!v.safe, "{v:?}");
        assert_eq!(v.registry_pids, vec![pid], "{v:?}");
        let d = about(&v.detail, pid);
        assert!(
            d.contains(&format!("REGISTRY_CONFIGURATION_PATH={shown}"))
                && d.contains("docker-registry")
                && d.contains("in-memory cache"),
            "the verdict names the process and how its configuration was found: {v:?}"
        );
    }
}

#[test]
fn the_environments_cache_override_is_read_whatever_the_file_says() {
    if !needs(&["docker-registry"]) {
        return;
    }
    let dir = common::tempdir();
    let http = format!("http:\n  addr: 127.0.0.1:{}\n", free_port());
    let config = write_config(dir.path(), "config.yml", "none", &http);
    let shown = config.display().to_string();
    let reg = start(Start {
        env: &[
            ("REGISTRY_CONFIGURATION_PATH", &shown),
            ("REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR", "inmemory"),
        ],
        ..Start::default()
    });
    let v = cache::assess(&serving(&dir.path().join("store"))).expect("a verdict");
    assert!(!v.safe, "{v:?}");
    assert!(
        about(&v.detail, reg.pid()).contains("REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR=inmemory"),
        "{v:?}"
    );
}

#[test]
fn a_relative_config_path_is_read_from_the_registrys_working_directory() {
    if !needs(&["docker-registry"]) {
        return;
    }
    let dir = common::tempdir();
    let etc = dir.path().join("etc");
    fs::create_dir_all(&etc).unwrap();
    let http = format!("http:\n  addr: 127.0.0.1:{}\n", free_port());
    // The store is the tempdir's `store`, next to `etc`.
    let config = write_config(dir.path(), "config.yml", "inmemory", &http);
    fs::rename(&config, etc.join("config.yml")).unwrap();
    // A same-named file where regfs runs must not be read instead.
    let reg = start(Start {
        arg: Some(Path::new("config.yml")),
        cwd: Some(&etc),
        ..Start::default()
    });
    let v = cache::assess(&serving(&dir.path().join("store"))).expect("a verdict");
    assert!(!v.safe, "{v:?}");
    let d = about(&v.detail, reg.pid());
    assert!(
        d.contains("in-memory cache")
            && d.contains(&format!(
                "relative to its working directory {}",
                etc.display()
            )),
        "{v:?}"
    );
}

#[test]
fn the_root_directory_override_decides_which_store_a_registry_serves() {
    if !needs(&["docker-registry"]) {
        return;
    }
    let dir = common::tempdir();
    let http = format!("http:\n  addr: 127.0.0.1:{}\n", free_port());
    let config = write_config(dir.path(), "config.yml", "inmemory", &http);
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let store = dir.path().join("store");
    // The file names our store, the environment another: this registry is no concern.
    let reg = start(Start {
        arg: Some(&config),
        env: &[(
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
            &elsewhere.display().to_string(),
        )],
        ..Start::default()
    });
    let pid = reg.pid();
    let v = cache::assess(&serving(&store));
    assert!(
        v.as_ref().is_none_or(|v| !v.registry_pids.contains(&pid)),
        "{v:?}"
    );
    drop(reg);
    // The other way round: the environment moves it onto our store.
    let other = dir.path().join("other.yml");
    fs::write(
        &other,
        format!(
            "version: 0.1\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: {}\n{http}",
            elsewhere.display()
        ),
    )
    .unwrap();
    let reg = start(Start {
        arg: Some(&other),
        env: &[(
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
            &store.join("docker/registry/v2/..").display().to_string(),
        )],
        ..Start::default()
    });
    let v = cache::assess(&serving(&store)).expect("a verdict");
    assert!(!v.safe && v.registry_pids == vec![reg.pid()], "{v:?}");
}

#[test]
fn a_registry_whose_configuration_cannot_be_read_is_unsafe_and_named() {
    if !needs(&["docker-registry"]) {
        return;
    }
    let dir = common::tempdir();
    let http = format!("http:\n  addr: 127.0.0.1:{}\n", free_port());
    let config = write_config(dir.path(), "config.yml", "none", &http);
    let store = dir.path().join("store");
    // Its environment names its store, as the file does: regfs knows which store it
    // serves without the file (one whose store cannot be known either is presumed to
    // serve every store, which would fail the other tests running meanwhile).
    let root = store.display().to_string();
    let reg = start(Start {
        arg: Some(&config),
        env: &[("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", &root)],
        ..Start::default()
    });
    let pid = reg.pid();
    assert!(cache::assess(&serving(&store)).unwrap().safe);
    // Replaced by what regfs cannot parse (the registry runs with what it read at start).
    fs::write(&config, "storage: [1, 2\n").unwrap();
    let v = cache::assess(&serving(&store)).expect("a verdict");
    assert!(!v.safe, "{v:?}");
    let d = about(&v.detail, pid);
    assert!(
        d.contains(&config.display().to_string()) && d.contains("cannot tell which cache"),
        "{v:?}"
    );
    // Gone.
    fs::remove_file(&config).unwrap();
    let v = cache::assess(&serving(&store)).expect("a verdict");
    assert!(!v.safe, "{v:?}");
    assert!(
        about(&v.detail, pid).contains(&config.display().to_string()),
        "{v:?}"
    );
}

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
use common::registry_process::serve;
use regfs::layout::Digest;
use regfs::registry::cache::{self, RegistrySettings};
use regfs::registry::config::RedisTarget;

fn needs(exes: &[&str]) -> bool {
    Needs::new()
        .on_path(exes)
        .met("the registry cache tests need real redis-server and docker-registry")
}

fn settings(config: &Path) -> RegistrySettings {
    RegistrySettings {
        config: Some(config.to_path_buf()),
        allow_unsafe_cache: false,
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
    assert!(v.detail.contains("no registry serving"), "{v:?}");

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

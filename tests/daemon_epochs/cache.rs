//! A registry cache regfs cannot make safe (here: a redis it cannot reach) stops a run
//! before it deletes anything, naming the setting, unless `--allow-unsafe-cache`; the
//! verdict shows in the start log and in `regfs status`.

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use crate::daemon::{Daemon, text};
use crate::fixture::{blob_set, env, gen_store};

/// A registry config.yml with a redis cache at a loopback port nothing listens on.
fn unreachable_redis_config(dir: &Path) -> (String, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let path = dir.join("registry-config.yml");
    fs::write(
        &path,
        format!(
            "version: 0.1\nstorage:\n  cache:\n    blobdescriptor: redis\nredis:\n  addr: {addr}\n"
        ),
    )
    .unwrap();
    (path.display().to_string(), addr)
}

#[test]
fn an_unsafe_registry_cache_stops_the_run_before_it_deletes_anything() {
    let Some(e) = env() else { return };
    gen_store(&e.storage, 300, 0.3, 5);
    let (config, addr) = unreachable_redis_config(e._dir.path());
    let before = blob_set(&e.storage);
    let d = Daemon::start(&e, &["--registry-config", &config]);
    d.wait_log("registry cache UNSAFE", Duration::from_secs(5));

    let st = d.status();
    let verdict = &st["registry_cache"];
    assert_eq!(verdict["safe"], false, "{st:#}");
    assert_eq!(verdict["cache"], "redis", "{st:#}");
    let setting = format!("storage.cache.blobdescriptor: redis in {config}");
    let detail = verdict["detail"].as_str().unwrap();
    assert!(
        detail.contains(&setting) && detail.contains(&format!("redis.addr {addr}")),
        "{detail}"
    );
    let shown = text(&d.cli_ok(&["status"], &[]).stdout);
    assert!(
        shown.contains("UNSAFE") && shown.contains(&format!("redis.addr {addr}")),
        "{shown}"
    );

    let id = d.gc();
    let job = d.wait_job(id, Duration::from_secs(10));
    assert_eq!(job["outcome"], "failed", "{job:#}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&setting) && error.contains("allow_unsafe_cache"),
        "the job names the setting and the way out: {error}"
    );
    assert_eq!(
        job["read_only_seconds"], 0.0,
        "the store was never closed: {job:#}"
    );
    assert_eq!(blob_set(&e.storage), before, "nothing deleted");
}

#[test]
fn allow_unsafe_cache_collects_anyway() {
    let Some(e) = env() else { return };
    let meta = gen_store(&e.storage, 300, 0.3, 6);
    let expected = meta["expected_deleted_blobs"]["default"].as_u64().unwrap();
    assert!(expected > 0);
    let (config, _) = unreachable_redis_config(e._dir.path());
    let d = Daemon::start(&e, &["--registry-config", &config, "--allow-unsafe-cache"]);
    let job = d.gc_wait();
    assert_eq!(job["outcome"], "done", "{job:#}");
    assert_eq!(job["report"]["blobs_deleted"], expected, "{job:#}");
    // The keys could not be removed: recorded with the job.
    assert!(
        job["registry_cache"]
            .as_str()
            .is_some_and(|s| s.contains("not removed")),
        "{job:#}"
    );
}

/// Issue 18 (5): a registry started with `REGISTRY_CONFIGURATION_PATH` and no argument,
/// serving the mount with Debian's in-memory cache, while regfs was told of no registry
/// configuration: found anyway, named, and the run deletes nothing.
#[test]
fn a_registry_found_through_its_environment_stops_the_run() {
    if !crate::common::prereq::Needs::new()
        .on_path(&["docker-registry"])
        .met("needs docker-registry")
    {
        return;
    }
    let Some(e) = env() else { return };
    gen_store(&e.storage, 300, 0.3, 7);
    let before = blob_set(&e.storage);
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let config = e._dir.path().join("registry.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            e.mnt.display()
        ),
    )
    .unwrap();
    let d = Daemon::start(&e, &[]);
    let shown = config.display().to_string();
    let registry = crate::common::registry_process::start(crate::common::registry_process::Start {
        env: &[("REGISTRY_CONFIGURATION_PATH", &shown)],
        ..Default::default()
    });
    let pid = registry.pid();

    let id = d.gc();
    let job = d.wait_job(id, Duration::from_secs(10));
    assert_eq!(job["outcome"], "failed", "{job:#}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("registry pid {pid}"))
            && error.contains(&format!("REGISTRY_CONFIGURATION_PATH={shown}")),
        "the job names the process and how its configuration was found: {error}"
    );
    assert_eq!(blob_set(&e.storage), before, "nothing deleted");
    let shown = text(&d.cli_ok(&["status"], &[]).stdout);
    assert!(
        shown.contains("UNSAFE") && shown.contains(&format!("registry pid {pid}")),
        "{shown}"
    );
}

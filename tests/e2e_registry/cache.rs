//! The registry's blob-descriptor cache after GC (issue 10, finding 1): on Debian's
//! default config.yml a push after a GC that deleted its blobs must either pull or fail,
//! never report success for an image that cannot be pulled.
//!
//! Each test pushes app-v1, pulls it (the registry's cache now lists its blobs), deletes
//! it by digest and runs GC through the daemon (`regfs gc --wait`), which deletes all of
//! its blobs. Then app-v2, which shares app-v1's base layer, and app-v1 again are pushed:
//! a stale cache would make the registry skip the shared layer's upload (and app-v1's
//! manifest bytes) and still accept the manifests.

use std::fs;

use serde_json::Value;

use crate::common::describe_output;
use crate::ctx::{Ctx, Mode};
use crate::support::{http, short, text};
use crate::world::{Cache, World, setup_with};

const REPO: &str = "cache/app";

fn at(ctx: &Ctx, image: &str) -> String {
    format!("{REPO}@{}", ctx.image(image).digest)
}

/// Push app-v1 and pull it, delete it by digest, collect; every blob of it is gone.
fn push_delete_collect(cache: Cache) -> Option<World> {
    let world = setup_with(Mode::Default, cache)?;
    let ctx = world.ctx.clone();
    ctx.push_ok("app-v1", &format!("{REPO}:v1"));
    ctx.pull(&format!("{REPO}:v1"), "app-v1").unwrap();
    let v1 = ctx.image("app-v1").clone();
    let shared = ctx.image("app-v2").all_blobs();
    assert!(
        v1.blobs.iter().any(|b| shared.contains(b)),
        "app-v1 and app-v2 share a layer"
    );
    let (st, body) = http(
        ctx.port,
        "DELETE",
        &format!("/v2/{REPO}/manifests/{}", v1.digest),
        None,
    )
    .expect("DELETE manifest");
    assert_eq!(st, 202, "DELETE {REPO}@{}: {}", v1.digest, text(&body));
    let out = ctx.regfs(&["gc", "--wait"]);
    assert!(
        out.status.success(),
        "regfs gc --wait: {}",
        describe_output(&out)
    );
    for b in v1.all_blobs() {
        assert!(
            !ctx.blob_exists(&b),
            "blob {} still stored after GC",
            short(&b)
        );
    }
    Some(world)
}

fn registry_cache(ctx: &Ctx) -> Value {
    ctx.status().expect("regfs status")["registry_cache"].clone()
}

/// After GC: app-v2 (sharing the collected layer) and app-v1 again push and pull whole.
fn pushes_after_gc_pull(ctx: &Ctx) {
    ctx.push_ok("app-v2", &format!("{REPO}:v2"));
    ctx.pull(&format!("{REPO}:v2"), "app-v2")
        .expect("app-v2 pulls after GC");
    ctx.push_ok("app-v1", &format!("{REPO}:v1"));
    ctx.pull(&format!("{REPO}:v1"), "app-v1")
        .expect("app-v1 pulls again after GC");
    ctx.pull(&at(ctx, "app-v1"), "app-v1")
        .expect("app-v1 pulls by digest");
}

#[test]
fn debian_default_config_with_the_shipped_drop_in_repush_after_gc_pulls() {
    let Some(world) = push_delete_collect(Cache::DropIn) else {
        return;
    };
    let ctx = &world.ctx;
    let verdict = registry_cache(ctx);
    assert_eq!(verdict["safe"], true, "{verdict}");
    assert!(
        verdict["detail"]
            .as_str()
            .is_some_and(|d| d.contains("REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR=none")),
        "{verdict}"
    );
    pushes_after_gc_pull(ctx);
}

#[test]
fn redis_cache_forgets_what_gc_deleted_and_repush_after_gc_pulls() {
    let Some(world) = push_delete_collect(Cache::Redis) else {
        return;
    };
    let ctx = &world.ctx;
    let redis = world.redis.as_ref().expect("the test's redis");
    let verdict = registry_cache(ctx);
    assert_eq!(verdict["safe"], true, "{verdict}");
    assert!(
        verdict["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&redis.addr())),
        "{verdict}"
    );
    let jobs = ctx.jobs();
    let job = jobs.last().expect("the GC job");
    assert!(
        job["registry_cache"]
            .as_str()
            .is_some_and(|s| s.contains("keys of")),
        "the job records the removed cache keys: {job}"
    );
    // The registry had cached app-v1's blobs; none of them is left in redis.
    let keys = redis.keys();
    for b in ctx.image("app-v1").blobs.iter() {
        let left: Vec<&String> = keys.iter().filter(|k| k.contains(b.as_str())).collect();
        assert!(
            left.is_empty(),
            "redis keys of deleted blob {}: {left:?}",
            short(b)
        );
    }
    pushes_after_gc_pull(ctx);
    // And the registry caches again in that redis.
    assert!(
        redis.keys().iter().any(|k| k.starts_with("blobs::sha256:")),
        "the registry uses the test's redis: {:?}",
        redis.keys()
    );
}

#[test]
fn in_memory_cache_push_after_gc_fails_and_nothing_unpullable_is_reported_pushed() {
    let Some(world) = push_delete_collect(Cache::InMemory) else {
        return;
    };
    let ctx = &world.ctx;
    let registry_pid = world.registry.as_ref().unwrap().child.id();
    let verdict = registry_cache(ctx);
    assert_eq!(verdict["safe"], false, "{verdict}");
    let detail = verdict["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("storage.cache.blobdescriptor: inmemory")
            && detail.contains(&format!("registry pid {registry_pid}")),
        "status names the setting and the registry: {verdict}"
    );

    // The stale cache makes the registry skip uploads; the mount refuses the links
    // naming what is gone, so both pushes fail (HTTP 500) instead of succeeding broken.
    for (image, tag) in [("app-v2", "v2"), ("app-v1", "v1")] {
        let out = ctx.push(image, &format!("{REPO}:{tag}"));
        assert!(
            !out.status.success(),
            "push of {image} after GC on a stale in-memory cache must fail, it reported success"
        );
    }
    // Nothing unpullable is left reported as pushed: whatever the registry serves pulls.
    for (image, reference) in [
        ("app-v2", format!("{REPO}:v2")),
        ("app-v1", format!("{REPO}:v1")),
        ("app-v2", at(ctx, "app-v2")),
        ("app-v1", at(ctx, "app-v1")),
    ] {
        let (repo, r) = reference
            .split_once('@')
            .or_else(|| reference.rsplit_once(':'))
            .unwrap();
        if ctx.manifest_digest(repo, r).is_ok() {
            ctx.pull(&reference, image)
                .unwrap_or_else(|e| panic!("{reference} is served but does not pull: {e}"));
        }
    }
    let daemon_log = fs::read_to_string(&ctx.daemon_log).unwrap_or_default();
    let shared = ctx
        .image("app-v2")
        .blobs
        .iter()
        .find(|b| ctx.image("app-v1").blobs.contains(b))
        .unwrap()
        .clone();
    assert!(
        daemon_log
            .lines()
            .any(|l| l.contains("refused a link naming a blob without data")
                && l.contains(shared.as_str())),
        "the daemon log names the refused link and the missing shared layer {}:\n{daemon_log}",
        short(&shared)
    );
    assert!(
        ctx.registry_log().contains("input/output error"),
        "the registry reports the refused write"
    );
}

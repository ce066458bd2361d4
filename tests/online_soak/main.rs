//! Online GC under a real registry: Debian's docker-registry (distribution 2.8) on a regfs
//! mount started with `--gc-mode online`, real skopeo pushing and pulling, and GC runs
//! racing them. The registry runs Debian's config.yml with the shipped drop-in's
//! environment (`REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR=none`): online mode refuses the
//! in-memory blob-descriptor cache.
//!
//! - [`soak`]: pushers, deleters and pullers against GC runs back to back, bounded by
//!   `SOAK_SECONDS` (default 60); afterwards every tag and every push that reported
//!   success (unless deleted or untagged later) pulls whole, and the store holds no
//!   damaged or dangling link.
//! - [`races`]: each a race the issue names, against a sweep made long by thousands of
//!   generated garbage blobs.
//! - [`wide`]: the wider soak (issue 18) under blob-descriptor cache `none` and `redis`:
//!   HTTP and skopeo clients pushing by tag and digest, moving tags onto manifests just
//!   pushed, deleting and re-pushing, copying across repositories with blob mounts,
//!   signing, pushing indexes, pullers chasing the tags being pushed; its workload is
//!   [`workload`], its model and verifier [`verify`]. `REGFS_SOAK_SECONDS` (default 40),
//!   `REGFS_SOAK_ROUNDS` (default 1) and `REGFS_SOAK_SEED` (default 18) set it (see there).
//!
//! `SOAK_GC_MODE=read-only` runs the same soak with read-only epochs (pushes then fail
//! during runs, which it counts instead of failing on). `REGFS_E2E_KEEP=1` keeps each
//! test's directory. Prerequisites as for the end-to-end test (root, /dev/fuse,
//! docker-registry, skopeo, python3, htpasswd): under CI=true a missing one fails.
mod api;
mod cluster;
#[path = "../common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../e2e_registry/ctx.rs"]
mod ctx;
#[allow(dead_code)]
#[path = "../cluster/harness.rs"]
mod harness;
mod races;
mod soak;
mod store_check;
#[allow(dead_code)]
#[path = "../e2e_registry/support.rs"]
mod support;
mod verify;
mod wide;
mod workload;
#[allow(dead_code)]
#[path = "../e2e_registry/world.rs"]
mod world;

const BIN: &str = env!("CARGO_BIN_EXE_regfs");
const V2: &str = "docker/registry/v2";
/// The drain timeout the daemon runs with (as the end-to-end test).
const DRAIN_TIMEOUT: &str = "60";
#[allow(dead_code)]
const EROFS_TEXT: &str = "read-only file system";
/// Prefix of this binary's temporary directories (its stale mounts are found by it; other
/// binaries' live mounts are never touched).
const PREFIX: &str = "regfs-soak-";

#[test]
fn soak_pushes_deletes_and_pulls_against_back_to_back_online_gc() {
    soak::run();
}

#[test]
fn race_layer_link_write_for_a_blob_the_sweep_holds() {
    races::layer_link_for_a_doomed_blob();
}

#[test]
fn race_manifest_put_whose_layer_is_doomed() {
    races::manifest_put_with_a_doomed_layer();
}

#[test]
fn race_tag_moved_onto_an_untagged_manifest_during_the_sweep() {
    races::tag_moved_onto_an_untagged_manifest();
}

#[test]
fn race_blob_reuploaded_while_hidden() {
    races::blob_reuploaded_while_hidden();
}

#[test]
fn race_stop_in_the_middle_of_the_sweep() {
    races::stop_in_the_middle_of_the_sweep();
}

#[test]
fn wide_soak_under_cache_none() {
    wide::run(world::Cache::DropIn);
}

#[test]
fn wide_soak_under_cache_redis() {
    wide::run(world::Cache::Redis);
}

#[test]
fn wide_soak_across_two_cluster_nodes() {
    wide::run_across_nodes(world::Cache::DropIn, 2);
}

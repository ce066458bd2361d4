//! Tag retention in a cluster: a pull served by any node counts. Debian's registry on two
//! nodes over one store; a tag pulled only through node 2 is kept by a run on node 1
//! whose policy (`keep_pulled_within`) would otherwise prune it, and the tag no node
//! pulled goes.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::{Etcd, Node, cluster_test};
use crate::registry::{Registry, image_digest, pull, push, sample_images};

const POLICY: &str = r#"
[retention]
dry_run = false
grace = "1h"

[[retention.policy]]
repositories = ["app"]
keep_pulled_within = "1h"
"#;

fn tag_dir(storage: &Path, tag: &str) -> std::path::PathBuf {
    storage
        .join("docker/registry/v2/repositories/app/_manifests/tags")
        .join(tag)
}

#[test]
fn a_tag_pulled_only_through_node_2_is_kept_by_a_run_on_node_1() {
    let Some(_one_at_a_time) = cluster_test() else {
        return;
    };
    if !crate::common::prereq::Needs::new()
        .on_path(&["docker-registry", "skopeo"])
        .met("the cluster's retention test needs docker-registry and skopeo")
    {
        return;
    }
    let dir = crate::common::tempdir();
    let storage = dir.path().join("store");
    fs::create_dir(&storage).unwrap();
    let cfg = dir.path().join("regfs.toml");
    fs::write(&cfg, POLICY).unwrap();
    let cfg = cfg.display().to_string();
    let (oci, images) = sample_images(dir.path());
    let etcd = Etcd::start(dir.path());
    let n1 = Node::start(dir.path(), &storage, &etcd, "n1", &["--config", &cfg]);
    let n2 = Node::start(dir.path(), &storage, &etcd, "n2", &["--config", &cfg]);
    for n in [&n1, &n2] {
        n.wait_writable(true, Duration::from_secs(5));
    }
    let r1 = Registry::start(dir.path(), "r1", n1.mnt());
    let r2 = Registry::start(dir.path(), "r2", n2.mnt());

    // Both pushed through node 1 (a push reads no tag back), then made old.
    push(&oci, "app-v1", r1.port, "app:v1");
    push(&oci, "app-v2", r1.port, "app:v2");
    for tag in ["v1", "v2"] {
        let out = Command::new("touch")
            .args(["-h", "-d", "3 days ago"])
            .arg(tag_dir(&storage, tag).join("current/link"))
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    // Only node 2 serves the pull of v1.
    assert_eq!(
        pull(dir.path(), r2.port, "app:v1"),
        image_digest(&images, "app-v1")
    );

    assert_eq!(n1.gc().0, 0);
    let jobs = n1.wait_jobs(1, Duration::from_secs(30));
    let job = &jobs[0];
    assert_eq!(job["outcome"], "done", "{job:#}");
    assert_eq!(job["cluster"]["members"].as_array().unwrap().len(), 2);
    let pruned: BTreeSet<String> = job["retention"]["pruned"]
        .as_array()
        .unwrap_or_else(|| panic!("no retention.pruned in the job: {job:#}"))
        .iter()
        .map(|p| format!("{}:{}", p["repository"], p["tag"]).replace('"', ""))
        .collect();
    assert_eq!(
        pruned,
        BTreeSet::from(["app:v2".to_string()]),
        "node 1's run pruned a tag node 2 served: {job:#}\n{}",
        n1.log()
    );
    assert!(tag_dir(&storage, "v1").exists(), "app:v1 was pruned");
    assert!(!tag_dir(&storage, "v2").exists(), "app:v2 was kept");
    for n in [&n1, &n2] {
        n.wait_writable(true, Duration::from_secs(3));
    }
    // The kept tag still pulls whole through node 1.
    assert_eq!(
        pull(dir.path(), r1.port, "app:v1"),
        image_digest(&images, "app-v1")
    );
}

/// What one node publishes, another reads whole: many repositories (more than one etcd
/// transaction holds) and repositories with many tags (more bytes than one request may
/// carry), each node's own left out, the later time of each key kept.
#[test]
fn every_repository_a_node_publishes_is_read_by_the_others() {
    use regfs::cluster::access::EtcdAccess;
    use regfs::cluster::records::Keys;
    use regfs::daemon::access_share::AccessShare;
    use regfs::policy::access::Accessed;
    use regfs::retention::AccessTimes;

    let Some(_one_at_a_time) = cluster_test() else {
        return;
    };
    let dir = crate::common::tempdir();
    let etcd = Etcd::start(dir.path());
    let client = || {
        regfs::cluster::etcd::Etcd::new(std::slice::from_ref(&etcd.url), Duration::from_secs(5))
            .unwrap()
    };
    let node = |name: &str| EtcdAccess::new(client(), Keys::new("/regfs/"), name.into());
    let mut times = AccessTimes::default();
    let pull = |repo: &str, tag: &str| Accessed::TagPulled {
        repo: repo.into(),
        tag: tag.into(),
    };
    for r in 0..150 {
        times.apply(&pull(&format!("team/r{r}"), "latest"), 1000 + r);
    }
    // Two repositories of 20,000 long tags: about 1 MB of times each (the two together
    // more than etcd takes in one request).
    let long = "x".repeat(32);
    for big in ["ci/big-a", "ci/big-b"] {
        for t in 0..20_000 {
            times.apply(&pull(big, &format!("build-{t:06}-{long}")), 5);
        }
    }
    // In name order, as the journal hands them over.
    let mut repos: Vec<_> = times
        .repo_names()
        .map(|r| (r.to_string(), times.repo(r).unwrap().clone()))
        .collect();
    repos.sort_by(|a, b| a.0.cmp(&b.0));
    node("n2/x").publish(&repos).unwrap();
    // n1 publishes an earlier pull of one of them, and a later one of another.
    let mut mine = AccessTimes::default();
    mine.apply(&pull("team/r7", "latest"), 1);
    mine.apply(&pull("team/r8", "latest"), 99_999);
    let mine: Vec<_> = mine
        .repo_names()
        .map(|r| (r.to_string(), mine.repo(r).unwrap().clone()))
        .collect();
    node("n1").publish(&mine).unwrap();

    let seen = node("n1").others().unwrap();
    assert_eq!(seen.entries(), 150 + 40_000);
    assert_eq!(seen.pulled("team/r7", "latest", None), Some(1007));
    assert_eq!(
        seen.pulled("team/r8", "latest", None),
        Some(1008),
        "n1's own times are not among the others'"
    );
    assert_eq!(
        seen.pulled("ci/big-b", &format!("build-019999-{long}"), None),
        Some(5)
    );
    let from_n3 = node("n3").others().unwrap();
    assert_eq!(from_n3.pulled("team/r8", "latest", None), Some(99_999));
}

//! Online GC across the cluster, for real: two `regfs mount` nodes over one store with a
//! real etcd, Debian's docker-registry on each, skopeo pushing and pulling: a node joining
//! mid-run, `gc stop` on a member, a collector stalled past its lease, a member cut off
//! from etcd. Pushes through a run and the faults with pushes going on are in
//! `online_three` and `online_faults` (three nodes).

use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{Etcd, Node, Proxy, blob_set, cluster_world};
use crate::online_world::{Images, STORE_BLOBS, TTLS, freeze_run_at, online_cluster, wait_state};
use crate::registry::{Registry, http, pull};

#[test]
fn a_node_joining_mid_run_waits_for_its_end_and_gc_stop_on_a_member_stops_it() {
    let Some(c) = online_cluster(&[], TTLS) else {
        return;
    };
    freeze_run_at(c.node(1), "marking");
    // The collector frozen: the run is surely on while node 3 starts.
    let mut args: Vec<&str> = c.args.iter().map(String::as_str).collect();
    args.extend(["--cluster-lease-ttl", TTLS[1]]);
    let n3 = Node::start(c.world.dir.path(), &c.world.storage, &c.etcd, "n3", &args);
    thread::sleep(Duration::from_millis(500));
    let n3_writable = n3.writable();
    let n2_writable = c.node(2).writable();
    assert!(c.node(1).guard.signal(libc::SIGCONT));
    assert!(
        !n3_writable,
        "a node that joined mid-run serves no write until it ends"
    );
    assert!(n2_writable, "a member of the run stays writable");
    // Stopped from node 2, which does not collect.
    let mnt = c.node(2).mnt().display().to_string();
    let (code, out, err) = c.node(2).regfs(&["gc", "stop", &mnt]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("asked the cluster's collector"), "{out}");
    let job = c.job();
    assert_eq!(job["outcome"], "stopped", "{job:#}");
    n3.wait_writable(true, Duration::from_secs(10));
    c.node(2).wait_writable(true, Duration::from_secs(10));
}

#[test]
fn a_collector_stalled_past_its_lease_mid_sweep_deletes_nothing_more_when_it_resumes() {
    let Some(c) = online_cluster(&[], ["2s", "2s"]) else {
        return;
    };
    freeze_run_at(c.node(1), "sweeping");
    // A collector stalled (SIGSTOP: a pause, swap, a frozen VM) past its lease: the run's
    // keys go with it and node 2 leaves the run.
    let deadline = Instant::now() + Duration::from_secs(4);
    while !c.node(2).status()["cluster"]["epoch"].is_null() {
        assert!(Instant::now() < deadline, "the epoch outlived the lease");
        thread::sleep(Duration::from_millis(20));
    }
    let at_resume = crate::harness::blob_set(&c.world.storage);
    assert!(c.node(1).guard.signal(libc::SIGCONT));
    let job = c.job();
    let after = crate::harness::blob_set(&c.world.storage);
    // At most the deletions in flight when it froze (two sweep workers) complete.
    assert!(
        at_resume.len() - after.len() <= 2,
        "a collector whose lease lapsed deleted {} more blobs after it resumed: {job:#}",
        at_resume.len() - after.len(),
    );
    assert_eq!(job["outcome"], "stopped", "{job:#}");
    c.pulls_whole(1, "app:v1", "app-v1");
}

#[test]
fn a_member_cut_off_from_etcd_mid_mark_fences_and_the_run_deletes_nothing() {
    let Some(world) = cluster_world(STORE_BLOBS, 11) else {
        return;
    };
    if !crate::common::prereq::Needs::new()
        .on_path(&["docker-registry", "skopeo"])
        .met("the cluster's online GC tests need docker-registry and skopeo")
    {
        return;
    }
    let dir = world.dir.path();
    let images = Images::make(dir);
    let etcd = Etcd::start(dir);
    let proxy = Proxy::start(&etcd.url);
    let args = |ttl| {
        vec![
            "--gc-mode",
            "online",
            "--drain-timeout",
            "3",
            "--cluster-lease-ttl",
            ttl,
        ]
    };
    let n1 = Node::start(dir, &world.storage, &etcd, "n1", &args("10s"));
    // Node 2 reaches etcd through the proxy only.
    let n2 = Node::start_via(dir, &world.storage, &proxy.url, "n2", &args("2s"));
    for n in [&n1, &n2] {
        n.wait_writable(true, Duration::from_secs(10));
    }
    let r1 = Registry::start(dir, "r1", n1.mnt());
    let r2 = Registry::start(dir, "r2", n2.mnt());
    images.push("tools", r1.port, "junk:t");
    let (st, _) = http(
        r1.port,
        "DELETE",
        &format!("/v2/junk/manifests/{}", images.digest("tools")),
    )
    .unwrap();
    assert_eq!(st, 202);
    let before = blob_set(&world.storage);
    freeze_run_at(&n1, "marking");
    // Node 2 records a push of garbage blobs, then loses etcd before it can hand its
    // record over: it must fence, and the run must not delete what it recorded.
    images.push("tools", r2.port, "kept:recorded");
    proxy.cut();
    let fenced_in = n2.wait_writable(false, Duration::from_secs(3));
    assert!(n1.guard.signal(libc::SIGCONT));
    let job = n1.wait_jobs(1, Duration::from_secs(60)).remove(0);
    assert_eq!(job["outcome"], "failed", "{job:#}");
    assert!(
        job["error"]
            .as_str()
            .unwrap_or("")
            .contains("nothing was deleted"),
        "{job:#}"
    );
    let after = blob_set(&world.storage);
    assert!(
        before.iter().all(|b| after.contains(b)),
        "the run deleted blobs though node 2's record was missing"
    );
    eprintln!("node 2 fenced {fenced_in:?} after losing etcd");
    proxy.mend();
    n2.wait_writable(true, Duration::from_secs(10));
    for port in [r1.port, r2.port] {
        assert_eq!(
            pull(dir, port, "kept:recorded"),
            images.digest("tools"),
            "through :{port}"
        );
    }
}

/// A blob the collector's sweep has claimed (its batch listed in etcd) as node 2 would
/// name it: the blob directory relative to the store, from the published doomed set.
/// Looked for with the collector frozen; `None` if no batch is claimed yet.
fn a_claimed_blob(etcd: &regfs::cluster::etcd::Etcd) -> Option<String> {
    let online = etcd.list("/regfs/online/").unwrap();
    let value = |kv: &regfs::cluster::etcd::Kv| -> serde_json::Value {
        serde_json::from_slice(&kv.value).unwrap_or_default()
    };
    let listed: Vec<u64> = online
        .iter()
        .filter(|kv| kv.key.contains("/claimed/"))
        .flat_map(|kv| value(kv).as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_u64())
        .collect();
    let units: Vec<serde_json::Value> = online
        .iter()
        .filter(|kv| kv.key.contains("/doomed/"))
        .flat_map(|kv| value(kv)["units"].as_array().cloned().unwrap_or_default())
        .collect();
    listed.iter().find_map(|&i| {
        units.get(i as usize)?["hidden"]
            .as_str()
            .map(str::to_string)
    })
}

#[test]
fn writes_a_member_refuses_during_the_sweep_count_in_the_collectors_job() {
    let Some(c) = online_cluster(&[], TTLS) else {
        return;
    };
    let etcd =
        regfs::cluster::etcd::Etcd::new(std::slice::from_ref(&c.etcd.url), Duration::from_secs(5))
            .unwrap();
    assert_eq!(c.node(1).gc().0, 0);
    assert!(
        wait_state(c.node(1), "sweeping", Duration::from_secs(60)),
        "the run never swept: {:#}",
        c.node(1).status()
    );
    // Let the collector run in short steps until a batch of its sweep is claimed, and
    // freeze it there.
    let deadline = Instant::now() + Duration::from_secs(30);
    let blob = loop {
        assert!(c.node(1).guard.signal(libc::SIGSTOP));
        if let Some(b) = a_claimed_blob(&etcd) {
            break b;
        }
        assert!(c.node(1).guard.signal(libc::SIGCONT));
        assert!(Instant::now() < deadline, "no batch of the sweep claimed");
        thread::sleep(Duration::from_millis(20));
    };
    // Node 2 is asked to link that blob into a repository: it names what the cluster's
    // sweep deletes (or deleted), so node 2 refuses it (EIO; a registry answers 500 and
    // the client retries). That refusal is the cluster's run's, counted in its job.
    let hex = blob.rsplit('/').next().unwrap().to_string();
    let root = &blob[..blob.find("blobs/").unwrap()];
    let layer = c
        .node(2)
        .mnt()
        .join(root)
        .join("repositories/refused/_layers/sha256")
        .join(&hex);
    let err = std::fs::create_dir_all(&layer).expect_err("node 2 links a blob being deleted");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(c.node(1).guard.signal(libc::SIGCONT));
    let job = c.job();
    assert_eq!(job["outcome"], "done", "{job:#}");
    assert!(
        job["refused_writes"].as_u64().unwrap() >= 1,
        "node 2's refusal is in the job: {job:#}"
    );
    assert!(
        c.node(2).log().contains("this node's part ended"),
        "{}",
        c.node(2).log()
    );
}

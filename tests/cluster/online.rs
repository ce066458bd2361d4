//! Online GC across the cluster, for real: two `regfs mount` nodes over one store with a
//! real etcd, Debian's docker-registry on each, skopeo pushing and pulling. A run
//! triggered on node 1 keeps node 2 writable (no EROFS) while it marks, pauses and
//! sweeps, and what node 2 writes meanwhile is never lost: writes recorded during the
//! mark are handed over and folded in, writes during the sweep keep what they name
//! through etcd (or are refused and retried), a member killed mid-sweep loses nothing.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{ClusterWorld, Etcd, Node, Proxy, blob_set, cluster_world};
use crate::registry::{Registry, http, pull, skopeo};

/// Every node runs online runs.
const ONLINE: &[&str] = &["--gc-mode", "online"];

/// Leases long enough to freeze the collector a while.
const TTLS: [&str; 2] = ["10s", "10s"];

/// Blobs in the generated store (a fifth of them garbage): enough for the mark and the
/// sweep to last long enough to be caught in the act.
const STORE_BLOBS: u32 = 20_000;

struct Images {
    oci: PathBuf,
    digests: HashMap<String, String>,
}

impl Images {
    fn make(dir: &Path) -> Images {
        let oci = dir.join("oci");
        let out = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/oci-images.py"))
            .arg(&oci)
            .args(["--sample", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let digests = v["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["name"].as_str().unwrap().to_string(),
                    i["digest"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        Images { oci, digests }
    }

    fn digest(&self, name: &str) -> &str {
        &self.digests[name]
    }

    /// Pushes `image` to `dest` through the registry at `port`; Err: what skopeo said.
    fn try_push(&self, image: &str, port: u16, dest: &str) -> Result<(), String> {
        let src = format!("oci:{}:{image}", self.oci.display());
        let dst = format!("docker://127.0.0.1:{port}/{dest}");
        let out = skopeo(&[
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &src,
            &dst,
        ]);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Pushes, retrying a refused push (the client's retry of an EIO) a few times.
    fn push(&self, image: &str, port: u16, dest: &str) -> usize {
        let mut refused = 0;
        loop {
            match self.try_push(image, port, dest) {
                Ok(()) => return refused,
                Err(e) if refused < 20 => {
                    eprintln!("push {image} to {dest} refused (retrying): {e}");
                    refused += 1;
                    thread::sleep(Duration::from_millis(250));
                }
                Err(e) => panic!("push {image} to {dest}: {e}"),
            }
        }
    }
}

/// Waits until `node`'s run is in `state` (`marking`, `sweeping`); false if the run
/// ended (or never got there) first.
fn wait_state(node: &Node, state: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let st = node.status();
        if st["state"] == state {
            return true;
        }
        if st["state"] == "idle" && st["last_job"].is_object() {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
    false
}

/// What every test starts from: the generated store, etcd, two online nodes, a registry
/// on each, the sample images; `tools` pushed through node 1 and deleted by digest (its
/// blobs garbage), `app-v1` tagged `app:v1`.
struct OnlineCluster {
    world: ClusterWorld,
    images: Images,
    etcd: Etcd,
    /// Every node's flags but its lease TTL.
    args: Vec<String>,
    n1: Node,
    n2: Node,
    r1: Registry,
    r2: Option<Registry>,
}

/// `ttls`: the lease TTL of node 1 and node 2.
fn online_cluster(extra: &[&str], ttls: [&str; 2]) -> Option<OnlineCluster> {
    if !crate::common::prereq::Needs::new()
        .on_path(&["docker-registry", "skopeo"])
        .met("the cluster's online GC tests need docker-registry and skopeo")
    {
        return None;
    }
    let world = cluster_world(STORE_BLOBS, 11)?;
    let dir = world.dir.path().to_path_buf();
    let images = Images::make(&dir);
    let etcd = Etcd::start(&dir);
    let args = |ttl| -> Vec<&str> {
        let mut a: Vec<&str> = ONLINE.iter().chain(extra).copied().collect();
        a.extend(["--cluster-lease-ttl", ttl]);
        a
    };
    let n1 = Node::start(&dir, &world.storage, &etcd, "n1", &args(ttls[0]));
    let n2 = Node::start(&dir, &world.storage, &etcd, "n2", &args(ttls[1]));
    for n in [&n1, &n2] {
        n.wait_writable(true, Duration::from_secs(10));
    }
    let r1 = Registry::start(&dir, "r1", n1.mnt());
    let r2 = Registry::start(&dir, "r2", n2.mnt());
    images.push("tools", r1.port, "junk:t");
    let (st, _) = http(
        r1.port,
        "DELETE",
        &format!("/v2/junk/manifests/{}", images.digest("tools")),
    )
    .unwrap();
    assert_eq!(st, 202, "manifest delete");
    images.push("app-v1", r1.port, "app:v1");
    Some(OnlineCluster {
        world,
        images,
        etcd,
        args: ONLINE.iter().chain(extra).map(|a| a.to_string()).collect(),
        n1,
        n2,
        r1,
        r2: Some(r2),
    })
}

impl OnlineCluster {
    fn r2(&self) -> &Registry {
        self.r2.as_ref().unwrap()
    }

    /// The one job node 1 ran, once it ended.
    fn job(&self) -> serde_json::Value {
        self.n1.wait_jobs(1, Duration::from_secs(120)).remove(0)
    }

    /// `reference` pulls whole (every blob checked) as `image` through `port`.
    fn pulls_whole(&self, port: u16, reference: &str, image: &str) {
        assert_eq!(
            pull(self.world.dir.path(), port, reference),
            self.images.digest(image),
            "{reference} through :{port}"
        );
    }

    /// Times registry 2 was answered EROFS by its node.
    fn erofs_on_node_2(&self) -> usize {
        fs::read_to_string(&self.r2().log)
            .unwrap_or_default()
            .matches("read-only file system")
            .count()
    }
}

/// Starts a run on `node` and freezes its collector (SIGSTOP) once the run is `state`
/// (`marking` or `sweeping`); SIGCONT lets it go on.
fn freeze_run_at(node: &Node, state: &str) {
    assert_eq!(node.gc().0, 0);
    assert!(
        wait_state(node, state, Duration::from_secs(30)),
        "the run never reached {state}: {:#}",
        node.status()
    );
    assert!(node.guard.signal(libc::SIGSTOP));
}

#[test]
fn pushes_through_node_2_go_on_through_an_online_run_of_node_1_and_pull_whole() {
    let Some(c) = online_cluster(&[], TTLS) else {
        return;
    };
    freeze_run_at(&c.n1, "marking");
    // The collector stalls mid-mark: node 2 pushes `tools`, whose blobs are garbage to
    // the mark, into new repositories. Only node 2's record of those writes keeps them.
    let mut refused = 0;
    for i in 0..2 {
        refused += c
            .images
            .push("tools", c.r2().port, &format!("kept{i}:during-mark"));
    }
    assert!(c.n1.guard.signal(libc::SIGCONT));
    // And on through the pause and the sweep (other images: never refused EROFS).
    let done = Arc::new(AtomicBool::new(false));
    let pushed = thread::scope(|s| {
        let pusher = s.spawn(|| {
            let mut n = 0;
            let mut refused = 0;
            while !done.load(Ordering::Acquire) || n < 2 {
                // Not `tools`: a push of it would take its blobs back by itself.
                refused += c.images.push("app-v2", c.r2().port, &format!("late{n}:t"));
                n += 1;
            }
            (n, refused)
        });
        let job = c.job();
        done.store(true, Ordering::Release);
        assert_eq!(job["outcome"], "done", "{job:#}");
        assert_eq!(job["cluster"]["members"].as_array().unwrap().len(), 2);
        assert!(
            job["report"]["blobs_deleted"].as_u64().unwrap() > 0,
            "{job:#}"
        );
        pusher.join().unwrap()
    });
    assert_eq!(c.erofs_on_node_2(), 0, "node 2 never refused a write EROFS");
    assert!(c.n2.log().contains("recording writes"), "{}", c.n2.log());
    assert!(c.n2.log().contains("doomed set loaded"), "{}", c.n2.log());
    eprintln!(
        "pushes through node 2: {} during the mark, {} after; refused and retried: {}",
        2,
        pushed.0,
        refused + pushed.1
    );
    for port in [c.r1.port, c.r2().port] {
        c.pulls_whole(port, "app:v1", "app-v1");
        for i in 0..2 {
            c.pulls_whole(port, &format!("kept{i}:during-mark"), "tools");
        }
        for n in 0..pushed.0 {
            c.pulls_whole(port, &format!("late{n}:t"), "app-v2");
        }
    }
}

#[test]
fn a_tag_moved_through_node_2_during_the_sweep_onto_an_untagged_manifest_keeps_it_whole() {
    let Some(c) = online_cluster(&["--delete-untagged"], TTLS) else {
        return;
    };
    // app-v1 is left untagged (doomed with --delete-untagged).
    c.images.push("app-v2", c.r1.port, "app:v1");
    freeze_run_at(&c.n1, "sweeping");
    // The tag moves back onto app-v1 through node 2 while the collector is frozen
    // mid-sweep: node 2 keeps it through etcd, or refuses (the batch is claimed).
    let during = c.images.try_push("app-v1", c.r2().port, "app:v1");
    assert!(c.n1.guard.signal(libc::SIGCONT));
    let job = c.job();
    assert_eq!(job["outcome"], "done", "{job:#}");
    if let Err(e) = &during {
        eprintln!("the tag move during the sweep was refused (retried after): {e}");
        c.images.push("app-v1", c.r2().port, "app:v1");
    }
    assert_eq!(c.erofs_on_node_2(), 0);
    for port in [c.r1.port, c.r2().port] {
        c.pulls_whole(port, "app:v1", "app-v1");
    }
}

#[test]
fn a_member_killed_mid_sweep_loses_nothing_reachable() {
    // Node 2's lease is short: it is gone from etcd long before the collector's.
    let Some(mut c) = online_cluster(&[], ["30s", "2s"]) else {
        return;
    };
    c.images.push("app-v2", c.r2().port, "app:v2");
    freeze_run_at(&c.n1, "sweeping");
    // Mid-sweep, node 2 pushes `tools` again (its blobs doomed): it keeps them through
    // etcd, or is refused (their batch claimed already). Then it dies, and its lease
    // with it, before the collector goes on.
    let during = c.images.try_push("tools", c.r2().port, "kept:during-sweep");
    c.r2 = None;
    c.n2.kill9();
    thread::sleep(Duration::from_secs(4));
    assert!(c.n1.guard.signal(libc::SIGCONT));
    let job = c.job();
    assert_eq!(job["outcome"], "done", "{job:#}");
    let mut whole = vec![("app:v1", "app-v1"), ("app:v2", "app-v2")];
    match &during {
        Ok(()) => whole.push(("kept:during-sweep", "tools")),
        Err(e) => eprintln!("the push during the sweep was refused: {e}"),
    }
    for (reference, image) in whole {
        c.pulls_whole(c.r1.port, reference, image);
    }
    // And the survivor is writable.
    c.n1.wait_writable(true, Duration::from_secs(15));
    c.images.push("tools", c.r1.port, "kept:after");
    c.pulls_whole(c.r1.port, "kept:after", "tools");
}

#[test]
fn a_node_joining_mid_run_waits_for_its_end_and_gc_stop_on_a_member_stops_it() {
    let Some(c) = online_cluster(&[], TTLS) else {
        return;
    };
    freeze_run_at(&c.n1, "marking");
    // The collector frozen: the run is surely on while node 3 starts.
    let mut args: Vec<&str> = c.args.iter().map(String::as_str).collect();
    args.extend(["--cluster-lease-ttl", TTLS[1]]);
    let n3 = Node::start(c.world.dir.path(), &c.world.storage, &c.etcd, "n3", &args);
    thread::sleep(Duration::from_millis(500));
    let n3_writable = n3.writable();
    let n2_writable = c.n2.writable();
    assert!(c.n1.guard.signal(libc::SIGCONT));
    assert!(
        !n3_writable,
        "a node that joined mid-run serves no write until it ends"
    );
    assert!(n2_writable, "a member of the run stays writable");
    // Stopped from node 2, which does not collect.
    let mnt = c.n2.mnt().display().to_string();
    let (code, out, err) = c.n2.regfs(&["gc", "stop", &mnt]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("asked the cluster's collector"), "{out}");
    let job = c.job();
    assert_eq!(job["outcome"], "stopped", "{job:#}");
    n3.wait_writable(true, Duration::from_secs(10));
    c.n2.wait_writable(true, Duration::from_secs(10));
}

#[test]
fn a_collector_stalled_past_its_lease_mid_sweep_deletes_nothing_more_when_it_resumes() {
    let Some(c) = online_cluster(&[], ["2s", "2s"]) else {
        return;
    };
    freeze_run_at(&c.n1, "sweeping");
    // A collector stalled (SIGSTOP: a pause, swap, a frozen VM) past its lease: the run's
    // keys go with it and node 2 leaves the run.
    let deadline = Instant::now() + Duration::from_secs(4);
    while !c.n2.status()["cluster"]["epoch"].is_null() {
        assert!(Instant::now() < deadline, "the epoch outlived the lease");
        thread::sleep(Duration::from_millis(20));
    }
    let at_resume = crate::harness::blob_set(&c.world.storage);
    assert!(c.n1.guard.signal(libc::SIGCONT));
    let job = c.job();
    let after = crate::harness::blob_set(&c.world.storage);
    // At most the deletions in flight when it froze (two sweep workers) complete.
    assert!(
        at_resume.len() - after.len() <= 2,
        "a collector whose lease lapsed deleted {} more blobs after it resumed: {job:#}",
        at_resume.len() - after.len(),
    );
    assert_eq!(job["outcome"], "stopped", "{job:#}");
    c.pulls_whole(c.r1.port, "app:v1", "app-v1");
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
    assert_eq!(c.n1.gc().0, 0);
    assert!(
        wait_state(&c.n1, "sweeping", Duration::from_secs(60)),
        "the run never swept: {:#}",
        c.n1.status()
    );
    // Let the collector run in short steps until a batch of its sweep is claimed, and
    // freeze it there.
    let deadline = Instant::now() + Duration::from_secs(30);
    let blob = loop {
        assert!(c.n1.guard.signal(libc::SIGSTOP));
        if let Some(b) = a_claimed_blob(&etcd) {
            break b;
        }
        assert!(c.n1.guard.signal(libc::SIGCONT));
        assert!(Instant::now() < deadline, "no batch of the sweep claimed");
        thread::sleep(Duration::from_millis(20));
    };
    // Node 2 is asked to link that blob into a repository: it names what the cluster's
    // sweep deletes (or deleted), so node 2 refuses it (EIO; a registry answers 500 and
    // the client retries). That refusal is the cluster's run's, counted in its job.
    let hex = blob.rsplit('/').next().unwrap().to_string();
    let root = &blob[..blob.find("blobs/").unwrap()];
    let layer =
        c.n2.mnt()
            .join(root)
            .join("repositories/refused/_layers/sha256")
            .join(&hex);
    let err = fs::create_dir_all(&layer).expect_err("node 2 links a blob being deleted");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(c.n1.guard.signal(libc::SIGCONT));
    let job = c.job();
    assert_eq!(job["outcome"], "done", "{job:#}");
    assert!(
        job["refused_writes"].as_u64().unwrap() >= 1,
        "node 2's refusal is in the job: {job:#}"
    );
    assert!(
        c.n2.log().contains("this node's part ended"),
        "{}",
        c.n2.log()
    );
}

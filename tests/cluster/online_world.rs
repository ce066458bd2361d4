//! What the online tests across the cluster start from and share: the sample images and
//! their pushes, a cluster of online nodes over a generated store with Debian's
//! docker-registry on some of them, a run frozen at a state, and pushers that go on
//! through chosen nodes while a run (or a fault) happens, recording every try.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{ClusterWorld, Etcd, Node, cluster_world};
use crate::registry::{Registry, http, pull, skopeo};

/// Every node runs online runs.
pub const ONLINE: &[&str] = &["--gc-mode", "online"];

/// Leases long enough to freeze the collector a while.
pub const TTLS: [&str; 2] = ["10s", "10s"];

/// Blobs in the generated store (half of them garbage): enough for the mark and the
/// sweep to last long enough to be caught in the act.
pub const STORE_BLOBS: u32 = 20_000;

pub struct Images {
    pub oci: PathBuf,
    digests: HashMap<String, String>,
    /// Each image's blobs (its manifest's own blob among them), as hex.
    blobs: HashMap<String, Vec<String>>,
}

impl Images {
    pub fn make(dir: &Path) -> Images {
        let (oci, v) = crate::registry::sample_images(dir);
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
        let hex = |d: &serde_json::Value| {
            d.as_str()
                .unwrap()
                .trim_start_matches("sha256:")
                .to_string()
        };
        let blobs = v["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let mut b: Vec<String> = i["blobs"].as_array().unwrap().iter().map(hex).collect();
                b.push(hex(&i["digest"]));
                (i["name"].as_str().unwrap().to_string(), b)
            })
            .collect();
        Images {
            oci,
            digests,
            blobs,
        }
    }

    pub fn digest(&self, name: &str) -> &str {
        &self.digests[name]
    }

    /// The hex digests of `name`'s blobs, its manifest's among them.
    pub fn blobs(&self, name: &str) -> &[String] {
        &self.blobs[name]
    }

    /// Pushes `image` to `dest` through the registry at `port`; Err: what skopeo said.
    pub fn try_push(&self, image: &str, port: u16, dest: &str) -> Result<(), String> {
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
    pub fn push(&self, image: &str, port: u16, dest: &str) -> usize {
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
pub fn wait_state(node: &Node, state: &str, within: Duration) -> bool {
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

/// Starts a run on `node` and waits until it is `state` (`marking` or `sweeping`).
pub fn start_run_until(node: &Node, state: &str) {
    assert_eq!(node.gc().0, 0);
    assert!(
        wait_state(node, state, Duration::from_secs(30)),
        "the run never reached {state}: {:#}",
        node.status()
    );
}

/// Starts a run on `node` and freezes its collector (SIGSTOP) once its mark has read
/// every repository (the status's progress), before it plans: a write landing now in a
/// new repository is unseen by the mark, and only the write records of the nodes keep
/// what it names. Asserts the run is still recording (no pause began) when frozen.
pub fn freeze_run_after_inventory(node: &Node, etcd: &Etcd) {
    start_run_until(node, "marking");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = node.status();
        let p = &st["progress"];
        if st["state"] == "marking" && p["total"].as_u64() > Some(0) && p["done"] == p["total"] {
            break;
        }
        assert!(
            Instant::now() < deadline && st["state"] == "marking",
            "the mark never read every repository: {st:#}"
        );
        thread::sleep(Duration::from_millis(2));
    }
    assert!(node.guard.signal(libc::SIGSTOP));
    assert_eq!(
        epoch_phase(&etcd.client()).as_deref(),
        Some("recording"),
        "frozen before the pause"
    );
}

/// Starts a run on `node` and freezes its collector (SIGSTOP) once the run is `state`
/// (`marking` or `sweeping`); SIGCONT lets it go on.
pub fn freeze_run_at(node: &Node, state: &str) {
    start_run_until(node, state);
    assert!(node.guard.signal(libc::SIGSTOP));
}

/// The phase of the cluster's online epoch in etcd (`recording`, `pausing`,
/// `sweeping`), if one is on.
pub fn epoch_phase(etcd: &regfs::cluster::etcd::Etcd) -> Option<String> {
    epoch_now(etcd).map(|(_, phase)| phase)
}

/// The cluster's online epoch now: its number (the key's create revision) and phase.
pub fn epoch_now(etcd: &regfs::cluster::etcd::Etcd) -> Option<(u64, String)> {
    let kv = etcd.get("/regfs/epoch").ok()??;
    let rec: serde_json::Value = serde_json::from_slice(&kv.value).ok()?;
    Some((kv.create_revision, rec["phase"].as_str()?.to_string()))
}

/// The sweep's batches (of 256 units, as published in etcd for `epoch`) holding the
/// unit of any of the blobs `hexes` (the one hiding its directory).
pub fn batches_of(etcd: &regfs::cluster::etcd::Etcd, epoch: u64, hexes: &[String]) -> Vec<usize> {
    let chunks = etcd
        .list(&format!("/regfs/online/{epoch}/doomed/"))
        .unwrap();
    let mut batches = std::collections::BTreeSet::new();
    for kv in chunks {
        let chunk: regfs::cluster::online::DoomedChunk = serde_json::from_slice(&kv.value).unwrap();
        for (j, unit) in chunk.units.iter().enumerate() {
            let blob = unit.hidden.as_deref().unwrap_or_default();
            if hexes.iter().any(|h| blob.ends_with(h.as_str())) {
                batches.insert((chunk.first + j) / regfs::cluster::online::BATCH);
            }
        }
    }
    batches.into_iter().collect()
}

/// Whether batch `b` of `epoch`'s sweep is claimed and not yet done.
pub fn batch_in_hand(etcd: &regfs::cluster::etcd::Etcd, epoch: u64, b: usize) -> bool {
    let key = |what| format!("/regfs/online/{epoch}/{what}/{b:08}");
    matches!(etcd.get(&key("claimed")), Ok(Some(_))) && matches!(etcd.get(&key("done")), Ok(None))
}

/// Freezes the collector `node` (SIGSTOP) the moment its run's epoch in etcd says
/// `phase`: at `sweeping`, the doomed set is published and no batch claimed yet (the
/// collector waits for every member to load the set first).
pub fn freeze_at_phase(node: &Node, etcd: &Etcd, phase: &str) {
    let client = etcd.client();
    let deadline = Instant::now() + Duration::from_secs(60);
    while epoch_phase(&client).as_deref() != Some(phase) {
        assert!(
            Instant::now() < deadline,
            "the run never reached {phase}: {:#}",
            node.status()
        );
        thread::sleep(Duration::from_millis(1));
    }
    assert!(node.guard.signal(libc::SIGSTOP));
}

/// Waits until `n` members (the collector is none) have loaded the doomed set of the
/// epoch on now (their `loaded` keys): a member holds its writes until then.
pub fn wait_loaded(etcd: &Etcd, n: usize, within: Duration) {
    let client = etcd.client();
    let deadline = Instant::now() + within;
    loop {
        if let Some((epoch, _)) = epoch_now(&client)
            && client
                .list(&format!("/regfs/online/{epoch}/loaded/"))
                .map(|l| l.len())
                .unwrap_or(0)
                >= n
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the doomed set not loaded by {n} nodes"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// How many nodes, which of them serve a registry, and how they run.
pub struct Shape<'a> {
    /// Every node's flags beyond online mode and its lease TTL.
    pub extra: &'a [&'a str],
    /// Each node's lease TTL: as many nodes as TTLs, node 1 first.
    pub ttls: &'a [&'a str],
    /// The nodes (numbered from 1) with a registry from the start; the first of them
    /// pushes the starting images.
    pub registries: &'a [usize],
}

/// The generated store, etcd, the nodes, the registries, the sample images; `tools` and
/// `scratch` pushed and deleted by digest (their blobs garbage, shared with no other
/// image), `app-v1` tagged `app:v1`.
/// Fields drop in order: registries (files open on the mounts), nodes, etcd, the world.
pub struct OnlineCluster {
    /// `regs[i]` serves `nodes[i]`'s mount.
    pub regs: Vec<Option<Registry>>,
    pub nodes: Vec<Node>,
    pub etcd: Etcd,
    pub images: Images,
    /// Every node's flags but its lease TTL.
    pub args: Vec<String>,
    pub world: ClusterWorld,
}

/// The two-node cluster of most tests: registries on both, `ttls` node 1's and node 2's.
pub fn online_cluster(extra: &[&str], ttls: [&str; 2]) -> Option<OnlineCluster> {
    online_cluster_shaped(Shape {
        extra,
        ttls: &ttls,
        registries: &[1, 2],
    })
}

pub fn online_cluster_shaped(shape: Shape) -> Option<OnlineCluster> {
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
        let mut a: Vec<&str> = ONLINE.iter().chain(shape.extra).copied().collect();
        a.extend(["--cluster-lease-ttl", ttl]);
        a
    };
    let nodes: Vec<Node> = shape
        .ttls
        .iter()
        .enumerate()
        .map(|(i, ttl)| {
            let name = format!("n{}", i + 1);
            Node::start(&dir, &world.storage, &etcd, &name, &args(ttl))
        })
        .collect();
    for n in &nodes {
        n.wait_writable(true, Duration::from_secs(10));
    }
    let regs = (1..=nodes.len())
        .map(|i| {
            shape
                .registries
                .contains(&i)
                .then(|| Registry::start(&dir, &format!("r{i}"), nodes[i - 1].mnt()))
        })
        .collect();
    let c = OnlineCluster {
        regs,
        nodes,
        etcd,
        images,
        args: ONLINE
            .iter()
            .chain(shape.extra)
            .map(|a| a.to_string())
            .collect(),
        world,
    };
    let first = c.port(shape.registries[0]);
    for (image, tag) in [("tools", "t"), ("scratch", "s")] {
        c.images.push(image, first, &format!("junk:{tag}"));
        let (st, _) = http(
            first,
            "DELETE",
            &format!("/v2/junk/manifests/{}", c.images.digest(image)),
        )
        .unwrap();
        assert_eq!(st, 202, "manifest delete");
    }
    c.images.push("app-v1", first, "app:v1");
    Some(c)
}

impl OnlineCluster {
    /// Node `i` (numbered from 1).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i - 1]
    }

    /// The port of node `i`'s registry.
    pub fn port(&self, i: usize) -> u16 {
        self.regs[i - 1]
            .as_ref()
            .unwrap_or_else(|| panic!("no registry on node {i}"))
            .port
    }

    /// Starts a registry on node `i` if it has none (to pull through it, say).
    pub fn serve_registry(&mut self, i: usize) {
        if self.regs[i - 1].is_none() {
            let r = Registry::start(self.world.dir.path(), &format!("r{i}"), self.node(i).mnt());
            self.regs[i - 1] = Some(r);
        }
    }

    /// Kills node `i` (kill -9, by pid) and waits until it is dead; its registry stays
    /// (answering errors), so pushers may still hold the cluster.
    pub fn kill9(&self, i: usize) {
        let node = self.node(i);
        assert!(node.guard.signal(libc::SIGKILL));
        let stat = format!("/proc/{}/stat", node.guard.child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        // Dead once a zombie (reaped when the test drops it).
        while !fs::read_to_string(&stat)
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "node {i} survived kill -9");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The one job node `i` ran, once it ended.
    pub fn job_of(&self, i: usize) -> serde_json::Value {
        self.node(i)
            .wait_jobs(1, Duration::from_secs(120))
            .remove(0)
    }

    /// The one job node 1 ran, once it ended.
    pub fn job(&self) -> serde_json::Value {
        self.job_of(1)
    }

    /// `reference` pulls whole (every blob checked) as `image` through node `i`.
    pub fn pulls_whole(&self, i: usize, reference: &str, image: &str) {
        // A directory per node: pulls through several nodes may run at once.
        let dir = self.world.dir.path().join(format!("pulls-n{i}"));
        fs::create_dir_all(&dir).unwrap();
        assert_eq!(
            pull(&dir, self.port(i), reference),
            self.images.digest(image),
            "{reference} through node {i}"
        );
    }

    /// Every `(reference, image)` pulls whole through every node in `nodes` (each node's
    /// pulls in a thread of their own).
    pub fn all_pull_whole(&self, nodes: &[usize], pushed: &[(String, &str)]) {
        thread::scope(|s| {
            for &i in nodes {
                s.spawn(move || {
                    for (reference, image) in pushed {
                        self.pulls_whole(i, reference, image);
                    }
                });
            }
        });
    }

    /// Every push of `pushers` that succeeded, and `app:v1`, pull whole through each of
    /// `nodes` (a registry started on those that have none).
    pub fn every_push_pulls_whole(&mut self, pushers: &Pushers, nodes: &[usize]) {
        let mut pushed: Vec<(String, &str)> = pushers
            .succeeded()
            .into_iter()
            .map(|(_, dest, image)| (dest, image))
            .collect();
        pushed.push(("app:v1".into(), "app-v1"));
        for &i in nodes {
            self.serve_registry(i);
        }
        let t = Instant::now();
        self.all_pull_whole(nodes, &pushed);
        println!(
            "{} references pulled whole through nodes {nodes:?} in {:.1} s",
            pushed.len(),
            t.elapsed().as_secs_f64()
        );
    }

    /// Times node `i`'s registry was answered EROFS by its node.
    pub fn erofs_on(&self, i: usize) -> usize {
        let r = self.regs[i - 1].as_ref().expect("a registry");
        fs::read_to_string(&r.log)
            .unwrap_or_default()
            .matches("read-only file system")
            .count()
    }
}

/// One try of a push by a [`Pushers`] thread.
#[derive(Debug, Clone)]
pub struct Try {
    pub node: usize,
    pub image: &'static str,
    pub dest: String,
    pub started: Instant,
    /// Err: what skopeo said.
    pub result: Result<(), String>,
}

/// Pushers, one thread per node named, pushing the images given in turn to new
/// repositories (`p<node>-<n>:t`) until told to stop; a refused push is tried again
/// (every 100 ms, for at most `give_up`) as a client would. Every try is recorded.
pub struct Pushers {
    pub tries: Mutex<Vec<Try>>,
    /// Set by [`Pushers::go`]: the pushers wait for it.
    going: AtomicBool,
    stop: AtomicBool,
    /// Nodes whose pushers are to stop at once (before a test kills their node).
    stopped: Mutex<Vec<usize>>,
    give_up: Duration,
}

impl Pushers {
    pub fn new(give_up: Duration) -> Pushers {
        Pushers {
            tries: Mutex::default(),
            going: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            stopped: Mutex::default(),
            give_up,
        }
    }

    /// Node `node`'s pusher: from [`Pushers::go`] on, runs until [`Pushers::stop`] (or
    /// [`Pushers::stop_node`]) and at least `at_least` pushes; panics if a push is
    /// refused for longer than `give_up`.
    pub fn run(&self, c: &OnlineCluster, node: usize, images: &[&'static str], at_least: usize) {
        let port = c.port(node);
        while !self.going.load(Ordering::Acquire) {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            thread::sleep(Duration::from_millis(1));
        }
        let mut n = 0;
        while self.goes_on(node) || (n < at_least && !self.stopped.lock().unwrap().contains(&node))
        {
            let image = images[n % images.len()];
            let dest = format!("p{node}-{n}:t");
            let first = Instant::now();
            loop {
                let started = Instant::now();
                let result = c.images.try_push(image, port, &dest);
                let ok = result.is_ok();
                if let Err(e) = &result {
                    eprintln!("node {node}: push {image} to {dest} refused: {e}");
                }
                self.tries.lock().unwrap().push(Try {
                    node,
                    image,
                    dest: dest.clone(),
                    started,
                    result,
                });
                if ok || self.stopped.lock().unwrap().contains(&node) {
                    break;
                }
                assert!(
                    first.elapsed() < self.give_up,
                    "node {node}: push {image} to {dest} refused for {:?}, retries and all",
                    self.give_up
                );
                thread::sleep(Duration::from_millis(100));
            }
            n += 1;
        }
    }

    fn goes_on(&self, node: usize) -> bool {
        !self.stop.load(Ordering::Acquire) && !self.stopped.lock().unwrap().contains(&node)
    }

    /// The pushers start.
    pub fn go(&self) {
        self.going.store(true, Ordering::Release);
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Records a push made outside the pushers' threads that succeeded.
    pub fn also_succeeded(&self, node: usize, dest: &str, image: &'static str) {
        self.tries.lock().unwrap().push(Try {
            node,
            image,
            dest: dest.into(),
            started: Instant::now(),
            result: Ok(()),
        });
    }

    /// A guard that stops the pushers when dropped, however the test goes on (a failed
    /// assertion in a thread scope would otherwise wait for them forever).
    pub fn stop_on_drop(&self) -> StopOnDrop<'_> {
        StopOnDrop(self)
    }

    /// Stops node `node`'s pusher after its push in flight (whatever its outcome).
    pub fn stop_node(&self, node: usize) {
        self.stopped.lock().unwrap().push(node);
    }

    /// Every push that succeeded: (node, destination, image).
    pub fn succeeded(&self) -> Vec<(usize, String, &'static str)> {
        self.tries
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.result.is_ok())
            .map(|t| (t.node, t.dest.clone(), t.image))
            .collect()
    }

    /// Tries that were refused: how many.
    pub fn refused(&self) -> usize {
        self.tries
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.result.is_err())
            .count()
    }

    /// The tries through node `node` that started at or after `since` and were refused.
    pub fn refused_since(&self, node: usize, since: Instant) -> Vec<Try> {
        self.tries
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.node == node && t.started >= since && t.result.is_err())
            .cloned()
            .collect()
    }
}

/// Stops pushers when dropped ([`Pushers::stop_on_drop`]).
pub struct StopOnDrop<'a>(&'a Pushers);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

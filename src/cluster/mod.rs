//! Several regfs daemons serving one shared store, with one GC epoch for all, coordinated
//! through etcd. Each node holds a lease while it serves ([`session`]); its member agent
//! ([`member`]) closes the local gate whenever another node's epoch is on, or whenever
//! the node cannot be sure of its lease (fencing); the collector side ([`collector`]) is
//! the [`EpochCoordinator`](crate::daemon::epoch::EpochCoordinator) the runner calls.
//! A node's name is a claim in etcd under its lease ([`claim`]): no two live daemons
//! share one.

pub mod access;
pub mod claim;
pub mod collector;
pub mod etcd;
pub mod history;
pub mod member;
pub mod online;
pub mod online_member;
pub mod records;
pub mod session;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use claim::Claimed;

use crate::policy::gate::WriteGate;
use crate::policy::online::OnlineCollection;

/// Where the machine id is read from, in order: systemd's, then D-Bus's older place.
pub const MACHINE_ID_FILES: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// This machine's id: the first of `files` that holds one (32 hexadecimal digits). Err
/// says what each file held.
pub fn machine_id(files: &[&Path]) -> Result<String, String> {
    let mut tried = Vec::new();
    for f in files {
        match std::fs::read_to_string(f) {
            Ok(s) => {
                let id = s.trim();
                if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Ok(id.to_ascii_lowercase());
                }
                let what = if id.is_empty() {
                    "empty".to_string()
                } else {
                    format!(
                        "{:?} is not a machine id",
                        id.chars().take(40).collect::<String>()
                    )
                };
                tried.push(format!("{}: {what}", f.display()));
            }
            Err(e) => tried.push(format!("{}: {e}", f.display())),
        }
    }
    Err(tried.join("; "))
}

/// The `[cluster]` section: where etcd is and who this node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub endpoints: Vec<String>,
    /// Unique in the cluster, claimed in etcd (default: machine id and mount point).
    pub node: String,
    /// How long a node's membership outlives its last word to etcd.
    pub lease_ttl: Duration,
    /// Every key lives under it (several clusters can share one etcd).
    pub prefix: String,
    /// TLS and authentication to etcd.
    pub access: etcd::Access,
}

impl ClusterConfig {
    /// The default node name: `MACHINE-ID:/mount/point`, unique per machine and mount
    /// point (a hostname is not: cloned machines share one). Err when this machine has
    /// no machine id.
    pub fn default_node(mountpoint: &Path) -> Result<String, String> {
        Self::default_node_from(mountpoint, &MACHINE_ID_FILES.map(Path::new))
    }

    /// [`Self::default_node`] with the machine id read from `files`.
    pub fn default_node_from(mountpoint: &Path, files: &[&Path]) -> Result<String, String> {
        let id = machine_id(files).map_err(|tried| {
            format!(
                "no node name given and no machine id to make one from ({tried}): name this \
                 node, uniquely in the cluster, with --cluster-node NAME or `node` in \
                 [cluster] (or give the machine an id: systemd-machine-id-setup)"
            )
        })?;
        Ok(format!("{id}:{}", mountpoint.display()))
    }

    /// A keepalive is sent this often: several chances before the node fences itself.
    pub fn keepalive_every(&self) -> Duration {
        self.lease_ttl / 6
    }

    /// Without a successful keepalive sent within this, the node refuses writes: half the
    /// TTL, so writers are cut (within [`Self::fence_drain`]) well before the lease can
    /// expire and another node collect.
    pub fn fence_after(&self) -> Duration {
        self.lease_ttl / 2
    }

    /// The longest a fencing node lets open writers finish.
    pub fn fence_drain(&self) -> Duration {
        self.lease_ttl / 5
    }

    /// A client of this cluster's etcd whose calls last at most `timeout`.
    pub fn client(&self, timeout: Duration) -> Result<etcd::Etcd, etcd::EtcdError> {
        etcd::Etcd::with_access(&self.endpoints, &self.access, timeout)
    }

    /// The deadline of each call to etcd.
    pub fn call_timeout(&self) -> Duration {
        (self.lease_ttl / 6).max(Duration::from_millis(200))
    }
}

/// The epoch this node collects. Claiming one is an etcd call, made without holding
/// this lock: the member agent, which reads the epoch key from etcd, compares what it
/// saw here before and after its read, and decides nothing from a read that a claim (or
/// its end) may have overtaken.
#[derive(Debug, Default)]
pub struct Collecting(Mutex<CollectingState>);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CollectingState {
    /// The epoch claimed, until the run ends.
    pub epoch: Option<u64>,
    /// A claim is under way (its answer not yet known).
    pub claiming: bool,
    /// Bumped at every change.
    pub changes: u64,
}

impl Collecting {
    fn lock(&self) -> std::sync::MutexGuard<'_, CollectingState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn now(&self) -> CollectingState {
        *self.lock()
    }

    pub fn epoch(&self) -> Option<u64> {
        self.lock().epoch
    }

    /// A claim starts; false if one is already under way or held.
    pub fn start_claim(&self) -> bool {
        let mut c = self.lock();
        if c.claiming || c.epoch.is_some() {
            return false;
        }
        c.claiming = true;
        c.changes += 1;
        true
    }

    /// The claim's answer: the epoch, or none.
    pub fn claimed(&self, epoch: Option<u64>) {
        let mut c = self.lock();
        c.claiming = false;
        c.epoch = epoch;
        c.changes += 1;
    }

    /// The run ended: the epoch it held.
    pub fn take(&self) -> Option<u64> {
        let mut c = self.lock();
        c.changes += 1;
        c.epoch.take()
    }
}

/// The members and the epoch as last read from etcd.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub members: Vec<crate::daemon::epoch::MemberView>,
    pub epoch: Option<(u64, Option<String>)>,
    /// When the read of the members and the epoch above began.
    pub read_at: Option<DateTime<Utc>>,
    /// The last read failed: why.
    pub error: Option<String>,
}

/// How long `status` waits for etcd before it shows what the member agent last read.
pub const STATUS_DEADLINE: Duration = Duration::from_millis(50);

/// What the node's parts share.
pub struct NodeParts {
    pub cfg: ClusterConfig,
    pub etcd: etcd::Etcd,
    pub keys: records::Keys,
    pub gate: WriteGate,
    pub mountpoint: String,
    /// This process, as its member entry says.
    pub me: claim::Holder,
    /// How long a member lets writers finish when another node's epoch starts.
    pub drain_timeout: Duration,
    pub session: session::Session,
    /// The epoch this node collects, while it does.
    pub collecting: Collecting,
    /// The cluster as the member agent last read it, for `status` (which never waits
    /// on etcd).
    pub seen: Mutex<Seen>,
    /// A client whose calls give up after [`STATUS_DEADLINE`]: `status` reads the
    /// cluster through it, and shows what the agent last read when etcd is slow.
    pub quick: etcd::Etcd,
    /// Stops the local run (when the node fences itself while collecting).
    pub stop_run: Box<dyn Fn() + Send + Sync>,
    /// The node's online barrier: another node's online run records and checks this
    /// node's writes through it.
    pub online: OnlineCollection,
    /// Called before this member acknowledges another node's epoch (the gate closed):
    /// publishes the access times it has noted, so the collector sees every pull this
    /// node served before it closed.
    pub before_ack: Box<dyn Fn() + Send + Sync>,
    stopping: AtomicBool,
}

impl NodeParts {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// This node's member entry in `state`.
    fn record(&self, state: &str, claimed_at: DateTime<Utc>) -> records::MemberRecord {
        claim::record(&self.cfg, &self.mountpoint, &self.me, state, claimed_at)
    }
}

fn session_run(sh: &Arc<NodeParts>) {
    session::run(sh)
}

/// A node of the cluster: its session and member agent threads.
pub struct Node {
    shared: Arc<NodeParts>,
    threads: Vec<JoinHandle<()>>,
}

/// What a node starts with.
pub struct NodeStart {
    /// Its name, claimed before the mount serves.
    pub claimed: Claimed,
    /// Closed by the caller before the mount serves; the agent opens it once the node is
    /// a member and no epoch is on.
    pub gate: WriteGate,
    pub drain_timeout: Duration,
    pub stop_run: Box<dyn Fn() + Send + Sync>,
    /// The node's online barrier (its own runs use it too).
    pub online: OnlineCollection,
    /// See [`NodeParts::before_ack`].
    pub before_ack: Box<dyn Fn() + Send + Sync>,
}

impl Node {
    pub fn start(s: NodeStart) -> Result<Node, String> {
        let claim::Parts {
            cfg,
            mountpoint,
            me,
            etcd,
            held,
        } = s.claimed.into_parts();
        let quick = cfg
            .client(STATUS_DEADLINE)
            .map_err(|e| format!("cluster: {e}"))?;
        let shared = Arc::new(NodeParts {
            keys: records::Keys::new(&cfg.prefix),
            cfg,
            etcd,
            gate: s.gate,
            mountpoint,
            me,
            drain_timeout: s.drain_timeout,
            session: session::Session::started(held),
            collecting: Collecting::default(),
            seen: Mutex::new(Seen::default()),
            quick,
            stop_run: s.stop_run,
            online: s.online,
            before_ack: s.before_ack,
            stopping: AtomicBool::new(false),
        });
        tracing::info!(node = %shared.cfg.node, endpoints = ?shared.cfg.endpoints,
            lease_ttl = ?shared.cfg.lease_ttl, prefix = %shared.cfg.prefix,
            "cluster mode: the store opens for writes once this node is a member and no epoch is on");
        // What `status` shows of the cluster from the first moment.
        member::look(&shared, &shared.etcd);
        let mut node = Node {
            shared,
            threads: vec![],
        };
        for (name, body) in [
            ("regfs-lease", session_run as fn(&Arc<NodeParts>)),
            ("regfs-member", member::run as fn(&Arc<NodeParts>)),
        ] {
            let shared = node.shared.clone();
            let t = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || body(&shared))
                .map_err(|e| format!("{name} thread: {e}"));
            match t {
                Ok(t) => node.threads.push(t),
                Err(e) => {
                    node.stop();
                    return Err(e);
                }
            }
        }
        Ok(node)
    }

    /// The runner's side of the cluster.
    pub fn coordinator(&self) -> Arc<collector::Collector> {
        Arc::new(collector::Collector::new(self.shared.clone()))
    }

    /// Where this node publishes its access times and reads every other node's.
    pub fn access_share(&self) -> Result<Arc<access::EtcdAccess>, String> {
        let sh = &self.shared;
        let etcd = sh
            .cfg
            .client(sh.cfg.call_timeout())
            .map_err(|e| format!("cluster: {e}"))?;
        Ok(Arc::new(access::EtcdAccess::new(
            etcd,
            sh.keys.clone(),
            sh.cfg.node.clone(),
        )))
    }

    /// Leaves the cluster: stops the threads and gives the lease back, so the others go
    /// on without waiting for it to expire. Call after the unmount.
    pub fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.shared.session.leave(&self.shared.etcd);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_name_is_the_first_machine_id_found_and_the_mount_point() {
        let dir = tempfile::tempdir().unwrap();
        let (etc, dbus) = (dir.path().join("etc"), dir.path().join("dbus"));
        let files = [etc.as_path(), dbus.as_path()];
        let mnt = Path::new("/srv/registry");
        let e = ClusterConfig::default_node_from(mnt, &files).unwrap_err();
        assert!(
            e.contains("--cluster-node") && e.contains(&*etc.to_string_lossy()),
            "{e}"
        );
        std::fs::write(&dbus, "0123456789ABCDEF0123456789abcdef\n").unwrap();
        assert_eq!(
            ClusterConfig::default_node_from(mnt, &files).unwrap(),
            "0123456789abcdef0123456789abcdef:/srv/registry",
            "the D-Bus id when systemd's is missing"
        );
        std::fs::write(&etc, "\n").unwrap();
        assert!(
            ClusterConfig::default_node_from(mnt, &files)
                .unwrap()
                .starts_with("0123"),
            "an empty (uninitialized) id is passed over"
        );
        std::fs::write(&etc, "fedcba9876543210fedcba9876543210\n").unwrap();
        assert_eq!(
            ClusterConfig::default_node_from(mnt, &files).unwrap(),
            "fedcba9876543210fedcba9876543210:/srv/registry"
        );
        std::fs::write(&etc, "uninitialized\n").unwrap();
        std::fs::remove_file(&dbus).unwrap();
        let e = ClusterConfig::default_node_from(mnt, &files).unwrap_err();
        assert!(e.contains("\"uninitialized\" is not a machine id"), "{e}");
    }
}

//! Several regfs daemons serving one shared store, with one GC epoch for all, coordinated
//! through etcd. Each node holds a lease while it serves ([`session`]); its member agent
//! ([`member`]) closes the local gate whenever another node's epoch is on, or whenever
//! the node cannot be sure of its lease (fencing); the collector side ([`collector`]) is
//! the [`EpochCoordinator`](crate::daemon::epoch::EpochCoordinator) the runner calls.

pub mod collector;
pub mod etcd;
pub mod history;
pub mod member;
pub mod records;
pub mod session;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::policy::gate::WriteGate;

/// The `[cluster]` section: where etcd is and who this node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub endpoints: Vec<String>,
    /// Unique in the cluster (default: hostname and mount point).
    pub node: String,
    /// How long a node's membership outlives its last word to etcd.
    pub lease_ttl: Duration,
    /// Every key lives under it (several clusters can share one etcd).
    pub prefix: String,
}

impl ClusterConfig {
    /// The default node name: `hostname:/mount/point`.
    pub fn default_node(mountpoint: &std::path::Path) -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        format!("{host}:{}", mountpoint.display())
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

    /// The deadline of each call to etcd.
    pub fn call_timeout(&self) -> Duration {
        (self.lease_ttl / 6).max(Duration::from_millis(200))
    }
}

/// What the node's parts share.
pub struct Shared {
    pub cfg: ClusterConfig,
    pub etcd: etcd::Etcd,
    pub keys: records::Keys,
    pub gate: WriteGate,
    pub mountpoint: String,
    /// How long a member lets writers finish when another node's epoch starts.
    pub drain_timeout: Duration,
    pub session: session::Session,
    /// The epoch this node collects, while it does.
    pub collecting: Mutex<Option<u64>>,
    /// Stops the local run (when the node fences itself while collecting).
    pub stop_run: Box<dyn Fn() + Send + Sync>,
    stopping: AtomicBool,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

/// A node of the cluster: its session and member agent threads.
pub struct Node {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// What a node starts with.
pub struct NodeStart {
    pub cfg: ClusterConfig,
    /// Closed by the caller before the mount serves; the agent opens it once the node is
    /// a member and no epoch is on.
    pub gate: WriteGate,
    pub mountpoint: String,
    pub drain_timeout: Duration,
    pub stop_run: Box<dyn Fn() + Send + Sync>,
}

impl Node {
    pub fn start(s: NodeStart) -> Result<Node, String> {
        let etcd =
            etcd::Etcd::new(&s.cfg.endpoints, s.cfg.call_timeout()).map_err(|e| e.to_string())?;
        let shared = Arc::new(Shared {
            keys: records::Keys::new(&s.cfg.prefix),
            cfg: s.cfg,
            etcd,
            gate: s.gate,
            mountpoint: s.mountpoint,
            drain_timeout: s.drain_timeout,
            session: session::Session::default(),
            collecting: Mutex::new(None),
            stop_run: s.stop_run,
            stopping: AtomicBool::new(false),
        });
        tracing::info!(node = %shared.cfg.node, endpoints = ?shared.cfg.endpoints,
            lease_ttl = ?shared.cfg.lease_ttl, prefix = %shared.cfg.prefix,
            "cluster mode: the store opens for writes once this node is a member and no epoch is on");
        let mut node = Node {
            shared,
            threads: vec![],
        };
        for (name, body) in [
            ("regfs-lease", session::run as fn(&Shared)),
            ("regfs-member", member::run as fn(&Shared)),
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

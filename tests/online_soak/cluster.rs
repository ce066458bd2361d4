//! The soak's world across cluster nodes: a real etcd (`tests/cluster/harness.rs`) and
//! several regfs daemons over one store, each with Debian's docker-registry on its own
//! mount ([`crate::world::Shared::start_node`]).

use std::fs;
use std::time::{Duration, Instant};

use crate::common::redis::RedisServer;
use crate::ctx::Mode;
use crate::harness::Etcd;
use crate::world::{Cache, NodeProcesses, Shared};

/// The lease TTL of the soak's nodes.
const LEASE_TTL: &str = "5s";

/// The nodes, etcd, redis and the directory, dropped in that order (the last node first:
/// its registry, then its daemon).
pub struct Cluster {
    pub nodes: Vec<NodeProcesses>,
    etcd: Option<Etcd>,
    redis: Option<RedisServer>,
    dir: Option<tempfile::TempDir>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        while let Some(node) = self.nodes.pop() {
            drop(node);
        }
        drop(self.etcd.take());
        drop(self.redis.take());
        // REGFS_E2E_KEEP=1 keeps the directory (logs, store) for inspection.
        if let Some(d) = self.dir.take()
            && std::env::var_os("REGFS_E2E_KEEP").is_some()
        {
            let _ = d.keep();
        }
    }
}

/// `nodes` cluster nodes (`n1`...) over one store, each started with `daemon_args` and
/// serving a registry; returns once every node takes writes.
pub fn setup_cluster(
    mode: Mode,
    cache: Cache,
    daemon_args: &[&str],
    nodes: usize,
) -> Option<Cluster> {
    let mut shared = Shared::prepare(mode, cache, &["etcd"], |_| {})?;
    let etcd = Etcd::start(&shared.root);
    let mut started = Vec::new();
    for i in 1..=nodes {
        let node = format!("n{i}");
        let mut args = daemon_args.to_vec();
        args.extend([
            "--cluster-endpoints",
            &etcd.url,
            "--cluster-node",
            &node,
            "--cluster-lease-ttl",
            LEASE_TTL,
        ]);
        started.push(shared.start_node(mode, cache, &format!("-{node}"), &args));
    }
    let cluster = Cluster {
        nodes: started,
        etcd: Some(etcd),
        redis: shared.redis.take(),
        dir: Some(shared.dir),
    };
    for n in &cluster.nodes {
        wait_writable(&n.ctx.mnt, Duration::from_secs(20));
    }
    Some(cluster)
}

/// Waits until a file can be made at the root of `mnt` (a cluster node opens for writes
/// once it is a member and no run is on).
fn wait_writable(mnt: &std::path::Path, within: Duration) {
    let probe = mnt.join("probe");
    let deadline = Instant::now() + within;
    loop {
        match fs::File::create(&probe) {
            Ok(_) => {
                let _ = fs::remove_file(&probe);
                return;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "{} not writable after {within:?}: {e}",
                mnt.display()
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

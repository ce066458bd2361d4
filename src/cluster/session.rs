//! The node's lease: granted, kept alive, granted anew when it has expired. The node is
//! healthy while a keepalive *sent* within the fencing interval succeeded: etcd counts
//! the TTL from when it got that keepalive, so the lease lives at least a TTL past the
//! send time, and a node that fences itself at half the TTL stops writing before any
//! other node can count it gone.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Shared;
use super::etcd::Etcd;

#[derive(Debug, Default)]
struct Lease {
    id: i64,
    ok_sent: Option<Instant>,
    error: Option<String>,
}

/// The lease as the node's threads see it.
#[derive(Debug, Default)]
pub struct Session {
    lease: Mutex<Lease>,
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lease id (0: none yet).
    pub fn lease(&self) -> i64 {
        self.lock().id
    }

    /// Whether the lease was surely alive within `fence_after`.
    pub fn healthy(&self, fence_after: Duration) -> bool {
        let l = self.lock();
        l.id != 0 && l.ok_sent.is_some_and(|t| t.elapsed() < fence_after)
    }

    /// Why etcd could not be reached, if the last call failed.
    pub fn error(&self) -> Option<String> {
        self.lock().error.clone()
    }

    /// Gives the lease back: every key under it goes at once.
    pub fn leave(&self, etcd: &Etcd) {
        let id = std::mem::take(&mut self.lock().id);
        if id != 0
            && let Err(e) = etcd.revoke(id)
        {
            tracing::warn!(error = %e, "cluster: cannot give the lease back; it expires after its TTL");
        }
    }
}

/// The keepalive loop, until the node stops.
pub fn run(sh: &Shared) {
    let ttl = sh.cfg.lease_ttl.as_secs().max(1);
    while !sh.stopping() {
        let sent = Instant::now();
        let id = sh.session.lease();
        let renewed = if id == 0 {
            sh.etcd.grant(ttl).map(Some)
        } else {
            sh.etcd.keep_alive(id).map(|alive| alive.then_some(id))
        };
        let mut l = sh.session.lock();
        match renewed {
            Ok(Some(id)) => {
                if l.error.take().is_some() || l.id != id {
                    tracing::info!(node = %sh.cfg.node, lease = id, "cluster: etcd reached; lease held");
                }
                l.id = id;
                l.ok_sent = Some(sent);
            }
            Ok(None) => {
                tracing::warn!(node = %sh.cfg.node, lease = id,
                    "cluster: the lease expired (etcd was out of reach too long); taking a new one");
                l.id = 0;
                continue;
            }
            Err(e) => {
                if l.error.is_none() {
                    tracing::error!(node = %sh.cfg.node, error = %e,
                        "cluster: cannot reach etcd; the store will refuse writes until it can");
                }
                l.error = Some(e.to_string());
            }
        }
        drop(l);
        let until = sent + sh.cfg.keepalive_every();
        while !sh.stopping() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

//! The node's lease and the claim of its name under it: granted, kept alive, granted
//! anew when it has expired, the name claimed again under each new lease
//! ([`claim`](super::claim)). The node is healthy while it holds its name and a keepalive
//! *sent* within the fencing interval succeeded: etcd counts the TTL from when it got
//! that keepalive, so the lease lives at least a TTL past the send time, and a node that
//! fences itself at half the TTL stops writing before any other node can count it gone.
//! A node whose name another took while its lease was lost stays fenced until the name
//! is free again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::NodeParts;
use super::claim::{self, Attempt};
use super::etcd::Etcd;

#[derive(Debug, Default)]
struct Lease {
    id: i64,
    ok_sent: Option<Instant>,
    error: Option<String>,
    /// The name's claim under `id`: its entry's create revision, and when it was made.
    claim: Option<(u64, DateTime<Utc>)>,
    /// Why the name cannot be claimed: who holds it.
    refused: Option<String>,
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

    /// The session of a node that claimed its name at start (`None`: it could not reach
    /// etcd then).
    pub(super) fn started(held: Option<claim::Held>) -> Session {
        let s = Session::default();
        if let Some(h) = held {
            *s.lock() = Lease {
                id: h.lease,
                // The grant was this lease's first keepalive.
                ok_sent: Some(h.sent),
                claim: Some((h.revision, h.at)),
                ..Lease::default()
            };
        }
        s
    }

    /// The lease id (0: none yet).
    pub fn lease(&self) -> i64 {
        self.lock().id
    }

    /// The name's claim: the lease, the entry's create revision, when it was claimed.
    pub fn claim(&self) -> Option<(i64, u64, DateTime<Utc>)> {
        let l = self.lock();
        l.claim.filter(|_| l.id != 0).map(|(r, at)| (l.id, r, at))
    }

    /// The entry created at `revision` is no longer this node's (someone deleted it):
    /// the node fences until it has claimed its name again.
    pub fn claim_lost(&self, revision: u64) {
        let mut l = self.lock();
        if l.claim.is_some_and(|(r, _)| r == revision) {
            l.claim = None;
        }
    }

    /// Whether the lease was surely alive within `fence_after`, and the name is held.
    pub fn healthy(&self, fence_after: Duration) -> bool {
        let l = self.lock();
        l.id != 0 && l.claim.is_some() && l.ok_sent.is_some_and(|t| t.elapsed() < fence_after)
    }

    /// Why the node is not healthy: its name held by another, or etcd out of reach.
    pub fn error(&self) -> Option<String> {
        let l = self.lock();
        l.refused.clone().or_else(|| l.error.clone())
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
pub fn run(sh: &NodeParts) {
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
                if l.id != id {
                    l.claim = None;
                }
                l.id = id;
                l.ok_sent = Some(sent);
            }
            Ok(None) => {
                tracing::warn!(node = %sh.cfg.node, lease = id,
                    "cluster: the lease expired (etcd was out of reach too long); taking a new one");
                l.id = 0;
                l.claim = None;
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
        let unclaimed = (l.id != 0 && l.claim.is_none()).then_some(l.id);
        drop(l);
        if let Some(id) = unclaimed {
            claim_name(sh, id);
        }
        let until = sent + sh.cfg.keepalive_every();
        while !sh.stopping() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Claims the node's name under lease `id` (a new lease, or the name was lost).
fn claim_name(sh: &NodeParts, id: i64) {
    let rec = sh.record("starting", Utc::now());
    let got = claim::attempt(&sh.etcd, &sh.keys, &rec, id);
    let mut l = sh.session.lock();
    if l.id != id {
        return;
    }
    match got {
        Ok(Attempt::Held(revision, at)) => {
            if l.refused.take().is_some() {
                tracing::warn!(node = %sh.cfg.node, lease = id, "cluster: this node's name is free again and claimed");
            }
            l.claim = Some((revision, at));
        }
        Ok(Attempt::Taken(kv)) => {
            let why = claim::in_use(&sh.cfg, &kv);
            if l.refused.as_ref() != Some(&why) {
                tracing::error!(node = %sh.cfg.node, "{why}; the store refuses writes until the name is free");
            }
            l.refused = Some(why);
        }
        Err(e) => {
            tracing::warn!(node = %sh.cfg.node, error = %e, "cluster: cannot claim this node's name yet");
        }
    }
}

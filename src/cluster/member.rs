//! The member agent: every [`POLL`] it makes the local gate what the cluster needs.
//! Another node's read-only epoch on: close, drain, acknowledge, stay closed until it is
//! gone; another node's online run: take part in it (`online_member`).
//! The node's own lease or name in doubt: fence (close) and stop any local run.
//! Otherwise open.
//! The gate starts closed (the runtime closes it before the mount serves), so a node that
//! starts during an epoch, or without etcd, never serves a write it should not.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use std::sync::Arc;

use super::NodeParts;
use super::etcd::{EtcdError, Kv};
use super::online::PAUSE_POLL;
use super::online_member::{self, OnlineState, Step};
use super::records::{EpochRecord, MemberRecord};
use crate::daemon::epoch::{MemberDrain, MemberView};
use crate::daemon::job::CutWriter;

/// How often the agent looks at etcd: the delay before a member starts closing.
pub const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Membership {
    Starting,
    Open,
    /// Closed for another node's epoch.
    Closed,
    /// This node collects; its runner owns the gate.
    Collecting,
    /// Part of another node's online run: writable, writes recorded or checked.
    Online,
    /// Cannot be sure of its lease: closed.
    Fenced,
}

impl Membership {
    fn name(self) -> &'static str {
        match self {
            Membership::Starting => "starting",
            Membership::Open => "open",
            Membership::Closed => "closed",
            Membership::Collecting => "collecting",
            Membership::Online => "online",
            Membership::Fenced => "fenced",
        }
    }
}

struct Local {
    state: Membership,
    /// The epoch this member has acknowledged.
    acked: Option<u64>,
    /// The lease and state last written to the member's entry.
    published: (i64, Membership),
    /// Its part in another node's online run.
    online: OnlineState,
    /// The epoch key's mod revision as the last tick read it (`None`: no key).
    epoch_mod: Option<u64>,
}

pub fn run(sh: &Arc<NodeParts>) {
    let mut st = Local {
        state: Membership::Starting,
        acked: None,
        published: (0, Membership::Starting),
        online: OnlineState::default(),
        epoch_mod: None,
    };
    let mut last_tick: Option<Instant> = None;
    while !sh.stopping() {
        // Recording for another node's online run: its pause is seen within 10 ms, so
        // the cluster's pause is not held waiting for this node to notice it. Between
        // two ticks only the epoch key is read (one request, not the tick's two or
        // more): a tick runs when it changed, and every POLL.
        let awaits_pause = (st.online.part.as_ref()).is_some_and(online_member::Part::awaits_pause);
        let due = last_tick.is_none_or(|t| t.elapsed() >= POLL);
        let full = !awaits_pause || due;
        if full || !healthy(sh) || epoch_changed(sh, st.epoch_mod) {
            tick(sh, &mut st, full);
            if full {
                last_tick = Some(Instant::now());
            }
        }
        std::thread::sleep(if awaits_pause { PAUSE_POLL } else { POLL });
    }
}

/// Whether the epoch key changed since the last tick read it at `seen` (its mod
/// revision); a failed read says yes (the tick decides).
fn epoch_changed(sh: &NodeParts, seen: Option<u64>) -> bool {
    match sh.etcd.get(&sh.keys.epoch()) {
        Ok(kv) => kv.map(|kv| kv.mod_revision) != seen,
        Err(_) => true,
    }
}

fn healthy(sh: &NodeParts) -> bool {
    sh.session.healthy(sh.cfg.fence_after())
}

/// `full`: also reads the members for `status` (not in a tick made because the epoch
/// key changed while a pause is awaited: the pause is not held for that read).
fn tick(sh: &Arc<NodeParts>, st: &mut Local, full: bool) {
    if !healthy(sh) {
        return fence(sh, st);
    }
    let lease = sh.session.lease();
    if st.published.0 != lease {
        // A new lease: the old one's acknowledgement went with it.
        st.acked = None;
    }
    publish(sh, st, lease);
    // This node's own claim, seen unchanged before and after the read: otherwise its
    // new epoch, claimed meanwhile, would look like another's or gone.
    let before = sh.collecting.now();
    let asked = Utc::now();
    let epoch = sh.etcd.get(&sh.keys.epoch());
    if full {
        see_with(sh, &sh.etcd, &epoch, asked);
    }
    let Ok(epoch) = epoch else {
        return; // a passing failure; a lasting one shows in the session
    };
    // Kept once this tick acted on it (an early return leaves the old one: the next
    // look at the key ticks again).
    let seen_mod = epoch.as_ref().map(|kv| kv.mod_revision);
    let after = sh.collecting.now();
    if before.claiming || before != after {
        return; // the next tick decides
    }
    let collecting = after.epoch;
    if epoch.is_none() || collecting.is_some() {
        // No other node's run: this node takes no part in one.
        st.online.part = None;
    }
    match epoch {
        Some(kv) if Some(kv.create_revision) == collecting => {
            st.state = Membership::Collecting;
            // `regfs gc stop` given on another node.
            if let Ok(Some(stop)) = sh.etcd.get(&sh.keys.stop(kv.create_revision))
                && stop.lease == kv.lease
            {
                tracing::warn!(node = %sh.cfg.node, by = %String::from_utf8_lossy(&stop.value),
                    "cluster: stop asked on another node; stopping the run");
                (sh.stop_run)();
            }
        }
        Some(kv) if kv.lease == lease => {
            // This node's own epoch whose run has ended but whose key stayed (etcd failed
            // when the run ended): end it now.
            let _ = sh.etcd.delete_if(&sh.keys.epoch(), kv.create_revision);
        }
        Some(kv) => {
            let rec = serde_json::from_slice::<EpochRecord>(&kv.value).ok();
            match rec.filter(|r| r.mode == super::records::ONLINE) {
                Some(rec) => {
                    let Some((held_under, revision, _)) = sh.session.claim() else {
                        return;
                    };
                    if held_under != lease {
                        return;
                    }
                    st.state = match online_member::tick(sh, &mut st.online, &kv, &rec, revision) {
                        Step::Serving => Membership::Online,
                        Step::Closed => Membership::Closed,
                    };
                }
                None => {
                    st.online.part = None;
                    close_for(sh, st, &kv, lease)
                }
            }
        }
        None if collecting.is_some() => {
            tracing::error!(node = %sh.cfg.node,
                "cluster: this node's epoch is gone from etcd while it collects (its lease lapsed); stopping the run");
            (sh.stop_run)();
        }
        None => {
            if st.state != Membership::Open {
                sh.gate.reopen_for_writes();
                if st.state != Membership::Starting {
                    tracing::warn!(node = %sh.cfg.node, "cluster: no epoch on; the store is writable again");
                }
                st.state = Membership::Open;
                st.acked = None;
            }
        }
    }
    st.epoch_mod = seen_mod;
    publish(sh, st, lease);
}

/// Reads the cluster for `status` through `etcd` (at start, before the agent's first
/// tick, and from `status` with a short deadline); false if etcd did not answer.
pub fn look(sh: &NodeParts, etcd: &super::etcd::Etcd) -> bool {
    let asked = Utc::now();
    let epoch = etcd.get(&sh.keys.epoch());
    if epoch.is_err() {
        return false; // what was last read stands
    }
    see_with(sh, etcd, &epoch, asked);
    true
}

/// Reads the members for `status` through `etcd` (`epoch`: the epoch key as read from
/// `asked` on), and keeps what it saw (held only to store it): everything kept was in
/// etcd at `asked` or later.
fn see_with(
    sh: &NodeParts,
    etcd: &super::etcd::Etcd,
    epoch: &Result<Option<Kv>, EtcdError>,
    asked: DateTime<Utc>,
) {
    let members = match epoch {
        Ok(_) => etcd.list(&sh.keys.members()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let mut seen = sh.seen.lock().unwrap_or_else(|e| e.into_inner());
    match (members, epoch) {
        (Ok(members), Ok(epoch)) => {
            seen.members = members
                .iter()
                .filter_map(|kv| serde_json::from_slice::<MemberRecord>(&kv.value).ok())
                .map(|m| MemberView {
                    node: m.node,
                    state: m.state,
                    mountpoint: m.mountpoint,
                    host: m.host,
                    pid: m.pid,
                })
                .collect();
            seen.epoch = epoch.as_ref().map(|kv| {
                let collector = serde_json::from_slice::<EpochRecord>(&kv.value)
                    .ok()
                    .map(|r| r.collector);
                (kv.create_revision, collector)
            });
            seen.read_at = Some(asked);
            seen.error = None;
        }
        (Err(e), _) => seen.error = Some(e),
        (Ok(_), Err(_)) => {}
    }
}

/// Rewrites the member's entry when its lease or state changed: only while it is the
/// entry this node created (its claim), so no node ever writes another's.
fn publish(sh: &NodeParts, st: &mut Local, lease: i64) {
    if st.published == (lease, st.state) {
        return;
    }
    let Some((held_under, revision, claimed_at)) = sh.session.claim() else {
        return;
    };
    if held_under != lease {
        return;
    }
    let rec = sh.record(st.state.name(), claimed_at);
    let value = serde_json::to_vec(&rec).unwrap_or_default();
    match sh
        .etcd
        .put_if(&sh.keys.member(&sh.cfg.node), revision, &value, lease)
    {
        Ok(true) => st.published = (lease, st.state),
        Ok(false) => lost(sh, revision),
        Err(_) => {}
    }
}

/// The entry this node created is gone while its lease lives (deleted by hand): fence
/// until the session has claimed the name again.
fn lost(sh: &NodeParts, revision: u64) {
    tracing::error!(node = %sh.cfg.node,
        "cluster: this node's member entry is gone while its lease lives; fencing until the name is claimed again");
    sh.session.claim_lost(revision);
}

/// Another node's epoch is on: close, drain, acknowledge (once per epoch).
fn close_for(sh: &NodeParts, st: &mut Local, kv: &Kv, lease: i64) {
    let epoch = kv.create_revision;
    if st.acked == Some(epoch) {
        return;
    }
    sh.gate.refuse_new_writes();
    if st.state != Membership::Closed {
        let collector = serde_json::from_slice::<super::records::EpochRecord>(&kv.value)
            .map(|r| r.collector)
            .unwrap_or_default();
        tracing::warn!(node = %sh.cfg.node, epoch, collector = %collector,
            "cluster: GC epoch on; the store is read-only, pushes are refused until it ends");
    }
    st.state = Membership::Closed;
    // Stops waiting for writers if the node must fence, or the epoch ends meanwhile
    // (its collector died): the next tick decides.
    let epoch_gone = || {
        sh.etcd
            .get(&sh.keys.epoch())
            .is_ok_and(|kv| kv.is_none_or(|kv| kv.create_revision != epoch))
    };
    let report = sh.gate.close_for_writes_unless(sh.drain_timeout, &|| {
        !healthy(sh) || sh.stopping() || epoch_gone()
    });
    if report.gave_up {
        return;
    }
    (sh.before_ack)();
    let ack = MemberDrain {
        node: sh.cfg.node.clone(),
        closed_at: Utc::now(),
        drain_seconds: report.waited.as_secs_f64(),
        cut_writers: CutWriter::all_of(&report),
    };
    let value = serde_json::to_vec(&ack).unwrap_or_default();
    let Some((held_under, revision, _)) = sh.session.claim() else {
        return;
    };
    if held_under != lease {
        return;
    }
    // Only while the member entry is this node's: no one acknowledges for another.
    let member = sh.keys.member(&sh.cfg.node);
    let ack_key = sh.keys.ack(epoch, &sh.cfg.node);
    match sh
        .etcd
        .put_guarded((&member, revision), &ack_key, &value, lease)
    {
        Ok(true) => {
            tracing::info!(node = %sh.cfg.node, epoch, drain_seconds = ack.drain_seconds,
                cut = ack.cut_writers.len(), "cluster: closed and drained; acknowledged");
            st.acked = Some(epoch);
        }
        Ok(false) => lost(sh, revision),
        Err(_) => {}
    }
}

/// The lease is in doubt: refuse writes before it can expire, and stop a local run.
fn fence(sh: &NodeParts, st: &mut Local) {
    // Its part in another node's online run ends (the collector, missing it, deletes
    // nothing); it never rejoins that run.
    if st.online.part.take().is_some() || st.online.joined.is_some() {
        sh.gate.refuse_new_writes();
    }
    if st.state == Membership::Fenced {
        // A local run ending reopens the gate: close it again.
        if !sh.gate.is_closed() {
            sh.gate.refuse_new_writes();
        }
        return;
    }
    sh.gate.refuse_new_writes();
    if st.state != Membership::Starting {
        tracing::error!(node = %sh.cfg.node, error = sh.session.error().unwrap_or_default(),
            "cluster: lost etcd or this node's name; FENCED: the store refuses writes until both are back");
    }
    let collecting = sh.collecting.epoch().is_some();
    if collecting {
        (sh.stop_run)();
    }
    sh.gate.close_for_writes(sh.cfg.fence_drain());
    st.state = Membership::Fenced;
    st.acked = None;
}

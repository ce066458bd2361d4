//! A member's side of another node's online run (`ARCHITECTURE.md`, the online run across
//! the cluster): record from the acknowledgement on, hand the record over and hold writes
//! at the pause, load the doomed set and resume, keep units through etcd while the sweep
//! runs. A member that cannot do its part in time closes (EROFS) until the run ends: it
//! never admits a write the run has not seen.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;

use super::NodeParts;
use super::etcd::{Compare, Kv};
use super::online::{EtcdKeeper, HELD_POLL, MemberFinished, load_delta, load_planned};
use super::records::EpochRecord;
use crate::daemon::epoch::MemberDrain;
use crate::policy::online::{Doomed, Recording, Sweeping};

/// This member's part in one online run.
pub enum Part {
    Recording(u64, Recording),
    /// Still recording, holding the planned doomed set (not enforced).
    Planned(u64, Recording, Doomed),
    Sweeping(u64, Sweeping),
    /// Its part ended (the sweep is over), its refused writes reported.
    Finished(u64),
}

impl Part {
    pub fn epoch(&self) -> u64 {
        match self {
            Part::Recording(e, _)
            | Part::Planned(e, ..)
            | Part::Sweeping(e, _)
            | Part::Finished(e) => *e,
        }
    }

    /// Whether the next phase needs this node at once (the pause waits for it).
    pub fn awaits_pause(&self) -> bool {
        matches!(self, Part::Recording(..) | Part::Planned(..))
    }
}

/// What a member keeps of the online runs it met.
#[derive(Default)]
pub struct OnlineState {
    pub part: Option<Part>,
    /// The run this node acknowledged (once per run: a node that dropped out never
    /// comes back into it, its record is gone).
    pub joined: Option<u64>,
    /// The run this node stays closed through.
    pub excluded: Option<u64>,
}

/// What the member agent is to do after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Part of the run: the gate is open (writes recorded or checked).
    Serving,
    /// Closed until the run ends.
    Closed,
}

/// One tick of the member agent during another node's online epoch `kv` (its record
/// `rec`). `member_rev`: this node's member entry's create revision (its claim).
pub fn tick(
    sh: &Arc<NodeParts>,
    st: &mut OnlineState,
    kv: &Kv,
    rec: &EpochRecord,
    member_rev: u64,
) -> Step {
    let epoch = kv.create_revision;
    if st.part.as_ref().is_some_and(|p| p.epoch() != epoch) {
        st.part = None;
    }
    if st.excluded == Some(epoch) {
        if !sh.gate.is_closed() {
            sh.gate.refuse_new_writes();
        }
        return Step::Closed;
    }
    match (st.part.take(), rec.phase.as_str()) {
        // Only a node that was a member when the run began takes part (its entry, and so
        // its gate closed since its start, predates the epoch).
        (None, "recording") if st.joined != Some(epoch) && member_rev < epoch => {
            join(sh, st, kv, member_rev)
        }
        (None, _) => exclude(
            sh,
            st,
            epoch,
            "this node joined (or came back) while the run was past its start",
        ),
        (Some(p @ Part::Recording(..)), "recording") => {
            st.part = Some(p);
            Step::Serving
        }
        (Some(Part::Recording(_, recording)), "planned") => {
            take_planned(sh, st, kv, recording, member_rev)
        }
        (Some(p @ Part::Planned(..)), "planned") => {
            st.part = Some(p);
            Step::Serving
        }
        (Some(Part::Planned(_, recording, planned)), "pausing") => {
            hand_over(sh, st, kv, recording, planned, member_rev)
        }
        (Some(p @ Part::Sweeping(..)), "sweeping") => {
            st.part = Some(p);
            Step::Serving
        }
        (Some(Part::Sweeping(_, sweeping)), "ending") => finish(sh, st, kv, sweeping, member_rev),
        (Some(p @ Part::Finished(..)), "ending") => {
            st.part = Some(p);
            Step::Serving
        }
        (Some(_), phase) => exclude(
            sh,
            st,
            epoch,
            &format!("the run went on to {phase:?} without this node"),
        ),
    }
}

/// Closes this node until the run ends (its part in it, if any, dropped).
fn exclude(sh: &NodeParts, st: &mut OnlineState, epoch: u64, why: &str) -> Step {
    sh.gate.refuse_new_writes();
    st.part = None;
    if st.excluded != Some(epoch) {
        tracing::warn!(node = %sh.cfg.node, epoch, why,
            "cluster: online GC run on; this node refuses writes until it ends");
        st.excluded = Some(epoch);
    }
    sh.gate.close_for_writes(sh.drain_timeout);
    Step::Closed
}

/// Phase 1: record from now on, let writes admitted before land, acknowledge while the
/// run still waits for acknowledgements.
fn join(sh: &NodeParts, st: &mut OnlineState, kv: &Kv, member_rev: u64) -> Step {
    let epoch = kv.create_revision;
    st.joined = Some(epoch);
    let recording = match sh.online.start_recording() {
        Ok(r) => r,
        Err(e) => return exclude(sh, st, epoch, &e.to_string()),
    };
    let start = Instant::now();
    // Writes admitted before recording began land before the collector marks.
    match sh.gate.pause_writes(sh.drain_timeout) {
        Some(paused) => drop(paused),
        None => {
            drop(recording);
            return exclude(
                sh,
                st,
                epoch,
                "writes in flight did not finish within the drain timeout",
            );
        }
    }
    // The pulls this node served so far count for the run's retention stage.
    (sh.before_ack)();
    let ack = MemberDrain {
        node: sh.cfg.node.clone(),
        closed_at: Utc::now(),
        drain_seconds: start.elapsed().as_secs_f64(),
        cut_writers: Vec::new(),
    };
    let value = serde_json::to_vec(&ack).unwrap_or_default();
    let (member, epoch_key, ack_key) = (
        sh.keys.member(&sh.cfg.node),
        sh.keys.epoch(),
        sh.keys.ack(epoch, &sh.cfg.node),
    );
    // Only while the phase is still `recording` (the collector fixes who acknowledged
    // when it moves on) and only once per run; under the collector's lease, so the
    // collector waits for this node's record even if this node dies.
    let acked = sh.etcd.txn(
        &[
            Compare::Created(&member, member_rev),
            Compare::ModifiedAt(&epoch_key, kv.mod_revision),
            Compare::Created(&ack_key, 0),
        ],
        &[(&ack_key, &value, kv.lease)],
    );
    match acked {
        Ok(Some(_)) => {
            tracing::info!(node = %sh.cfg.node, epoch,
                "cluster: online GC run on; recording writes (the store stays writable)");
            st.part = Some(Part::Recording(epoch, recording));
            if sh.gate.is_closed() {
                sh.gate.reopen_for_writes();
            }
            Step::Serving
        }
        Ok(None) => {
            drop(recording);
            exclude(sh, st, epoch, "the run no longer took acknowledgements")
        }
        Err(e) => {
            drop(recording);
            exclude(sh, st, epoch, &format!("cannot acknowledge: {e}"))
        }
    }
}

/// Before the pause, writes flowing: read the planned doomed set and keep it (not
/// enforced: writes are still only recorded), hand over the record so far with word that
/// this node holds the set. A node that cannot closes until the run ends (and the
/// collector, missing its word, never pauses: nothing deleted).
fn take_planned(
    sh: &Arc<NodeParts>,
    st: &mut OnlineState,
    kv: &Kv,
    mut recording: Recording,
    member_rev: u64,
) -> Step {
    let epoch = kv.create_revision;
    let start = Instant::now();
    let planned = match load_planned(sh, epoch) {
        Ok(d) => d,
        Err(e) => {
            drop(recording);
            return exclude(
                sh,
                st,
                epoch,
                &format!("cannot load the planned doomed set: {e}"),
            );
        }
    };
    let record = serde_json::to_vec(&recording.take_record()).unwrap_or_default();
    let key = sh.keys.planned_by(epoch, &sh.cfg.node);
    if let Err(e) = put_as_member(sh, member_rev, &key, &record, kv.lease) {
        drop(recording);
        return exclude(
            sh,
            st,
            epoch,
            &format!("cannot hand the write record over: {e}"),
        );
    }
    tracing::info!(node = %sh.cfg.node, epoch, units = planned.len(),
        load_ms = start.elapsed().as_millis() as u64,
        "cluster: planned doomed set held (not enforced yet); writes go on, recorded");
    st.part = Some(Part::Planned(epoch, recording, planned));
    Step::Serving
}

/// The sweep is over: end this node's part (nothing hidden or checked any more; the
/// collector deletes nothing after its sweep) and report the writes it refused.
fn finish(
    sh: &Arc<NodeParts>,
    st: &mut OnlineState,
    kv: &Kv,
    sweeping: Sweeping,
    member_rev: u64,
) -> Step {
    let epoch = kv.create_revision;
    let writes = sweeping.finish();
    let value = serde_json::to_vec(&MemberFinished {
        refused: writes.refused,
        resurrected: writes.resurrected,
    })
    .unwrap_or_default();
    let key = sh.keys.finished_by(epoch, &sh.cfg.node);
    if let Err(e) = put_as_member(sh, member_rev, &key, &value, kv.lease) {
        tracing::warn!(error = %e, refused = writes.refused,
            "cluster: cannot report this node's refused writes to the collector");
    }
    tracing::info!(node = %sh.cfg.node, epoch, refused = writes.refused,
        resurrected = writes.resurrected, "cluster: online run's sweep over; this node's part ended");
    st.part = Some(Part::Finished(epoch));
    Step::Serving
}

/// Phase 3: hold writes, hand the record since the planned set over, wait for the
/// delta, apply it to the planned set, install that, resume. The writes are held at most
/// the drain timeout and a lease TTL; a node that cannot finish in time closes until the
/// run ends.
fn hand_over(
    sh: &Arc<NodeParts>,
    st: &mut OnlineState,
    kv: &Kv,
    mut recording: Recording,
    mut doomed: Doomed,
    member_rev: u64,
) -> Step {
    let epoch = kv.create_revision;
    let start = Instant::now();
    let Some(paused) = sh.gate.pause_writes(sh.drain_timeout) else {
        drop(recording);
        return exclude(
            sh,
            st,
            epoch,
            "writes in flight did not finish within the drain timeout",
        );
    };
    // Anything going wrong from here closes the gate before the pause lifts.
    macro_rules! fail {
        ($why:expr) => {{
            sh.gate.refuse_new_writes();
            drop(paused);
            drop(recording);
            return exclude(sh, st, epoch, $why);
        }};
    }
    let record = serde_json::to_vec(&recording.take_record()).unwrap_or_default();
    let key = sh.keys.record(epoch, &sh.cfg.node);
    if let Err(e) = put_as_member(sh, member_rev, &key, &record, kv.lease) {
        fail!(&format!("cannot hand the write record over: {e}"));
    }
    let patience = sh.drain_timeout + sh.cfg.lease_ttl;
    loop {
        if !sh.session.healthy(sh.cfg.fence_after()) || sh.stopping() {
            fail!("lost etcd during the pause");
        }
        if start.elapsed() > patience {
            fail!("the collector did not give the doomed set in time");
        }
        let now = match sh.etcd.get(&sh.keys.epoch()) {
            Ok(now) => now,
            Err(_) => {
                std::thread::sleep(HELD_POLL);
                continue;
            }
        };
        let Some(now) = now.filter(|n| n.create_revision == epoch) else {
            // The run is over (its collector stopped or died): nothing was deleted
            // after our record; the next tick opens.
            drop(paused);
            drop(recording);
            return Step::Serving;
        };
        let phase = serde_json::from_slice::<EpochRecord>(&now.value)
            .map(|r| r.phase)
            .unwrap_or_default();
        match phase.as_str() {
            "pausing" => std::thread::sleep(HELD_POLL),
            "sweeping" => break,
            other => fail!(&format!("unexpected phase {other:?}")),
        }
    }
    // Invariant 2: never enforce the planned set without the delta.
    match load_delta(sh, epoch) {
        Ok(delta) => doomed.settle_published(&delta),
        Err(e) => fail!(&format!("cannot load the doomed set's delta: {e}")),
    }
    let keeper = Arc::new(EtcdKeeper {
        sh: sh.clone(),
        epoch,
        lease: kv.lease,
    });
    let sweeping = match recording.install_member(doomed, &paused, keeper) {
        Ok(s) => s,
        Err(e) => {
            sh.gate.refuse_new_writes();
            drop(paused);
            return exclude(sh, st, epoch, &e);
        }
    };
    let loaded = sh.keys.loaded_by(epoch, &sh.cfg.node);
    // A missing `loaded` makes the collector delete nothing; this node's writes are
    // checked anyway.
    if let Err(e) = put_as_member(sh, member_rev, &loaded, b"", kv.lease) {
        tracing::warn!(error = %e, "cluster: cannot say the doomed set is loaded");
    }
    drop(paused);
    tracing::info!(node = %sh.cfg.node, epoch, held_ms = start.elapsed().as_millis() as u64,
        hidden = sweeping.hidden().len(), "cluster: doomed set loaded; writes resumed");
    st.part = Some(Part::Sweeping(epoch, sweeping));
    Step::Serving
}

/// Puts `value` at `key` under the run's lease `lease`, only while this node's member
/// entry is the one it created (`member_rev`): no node writes for another. Err: why not.
fn put_as_member(
    sh: &NodeParts,
    member_rev: u64,
    key: &str,
    value: &[u8],
    lease: i64,
) -> Result<(), String> {
    let member = sh.keys.member(&sh.cfg.node);
    match sh.etcd.txn(
        &[Compare::Created(&member, member_rev)],
        &[(key, value, lease)],
    ) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("this node's member entry changed".into()),
        Err(e) => Err(e.to_string()),
    }
}

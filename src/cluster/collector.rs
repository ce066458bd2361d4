//! The collector's side: the runner's [`EpochCoordinator`] in cluster mode. An epoch is
//! one etcd key created by a transaction only if absent, under the collector's lease: at
//! most one collector at a time, and if it dies the key goes with its lease and every
//! member reopens. The collector marks only once every member alive has acknowledged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::NodeParts;
use super::online::{ClusterClaims, EtcdKeeper, OnlineCollector, OnlineRun};
use super::records::{EpochRecord, ONLINE};
use crate::daemon::epoch::{
    ClusterRun, ClusterView, EpochCoordinator, MemberDrain, MembersWrites, OnlineCoordinator,
};
use crate::daemon::job::Job;
use crate::gc::Claims;
use crate::policy::online::{Doomed, Sweeping, UnitKeeper, WriteRecord};

/// Job records kept in etcd.
const JOBS_KEPT: usize = 100;

pub struct Collector {
    sh: Arc<NodeParts>,
    /// The lease the current epoch was claimed under: a new one (the old lapsed while
    /// the process was stalled) means the epoch is no longer this node's.
    claimed_under: AtomicI64,
    /// The epoch claimed is an online run's.
    online: AtomicBool,
    /// An online run's phase transactions and acknowledged members.
    online_run: Mutex<OnlineRun>,
}

impl Collector {
    pub fn new(sh: Arc<NodeParts>) -> Collector {
        Collector {
            sh,
            claimed_under: AtomicI64::new(0),
            online: AtomicBool::new(false),
            online_run: Mutex::new(OnlineRun::default()),
        }
    }

    /// The online run's handle, while this node holds an online epoch.
    fn online_collector(&self) -> Result<OnlineCollector<'_>, String> {
        let epoch = self.current().ok_or("cluster: no epoch claimed")?;
        Ok(OnlineCollector {
            sh: &self.sh,
            epoch,
            lease: self.claimed_under.load(Ordering::SeqCst),
            run: &self.online_run,
            coordinator: self,
        })
    }

    fn healthy(&self) -> bool {
        self.sh.session.healthy(self.sh.cfg.fence_after())
    }

    fn unreachable(&self) -> String {
        match self.sh.session.error() {
            Some(e) if e.starts_with("cluster: ") => e,
            e => format!(
                "cluster: etcd not reachable ({})",
                e.unwrap_or_else(|| "no lease or name yet".into())
            ),
        }
    }

    fn current(&self) -> Option<u64> {
        self.sh.collecting.epoch()
    }

    /// Members alive now (their entries are under their leases), but this node. In an
    /// online run only those that were members when the epoch began: a node that joins
    /// later takes no part (it stays read-only until the run ends).
    fn others(&self) -> Result<Vec<String>, String> {
        let prefix = self.sh.keys.members();
        let kvs = self.sh.etcd.list(&prefix).map_err(|e| e.to_string())?;
        let joined_before = match (self.current(), self.online.load(Ordering::SeqCst)) {
            (Some(epoch), true) => epoch,
            _ => u64::MAX,
        };
        Ok(kvs
            .into_iter()
            .filter(|kv| kv.create_revision < joined_before)
            .filter_map(|kv| kv.key.strip_prefix(&prefix).map(str::to_string))
            .filter(|n| *n != self.sh.cfg.node)
            .collect())
    }

    /// One look at the acknowledgements: `Some` once every other member has given one.
    fn all_acked(&self, epoch: u64) -> Result<Option<Vec<MemberDrain>>, String> {
        let still_ours = self
            .sh
            .etcd
            .get(&self.sh.keys.epoch())
            .map_err(|e| e.to_string())?
            .is_some_and(|kv| kv.create_revision == epoch);
        if !still_ours {
            return Err(format!(
                "cluster: epoch {epoch} is no longer this node's (its lease lapsed)"
            ));
        }
        let prefix = self.sh.keys.acks(epoch);
        let acks: BTreeMap<String, MemberDrain> = (self.sh.etcd.list(&prefix))
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter_map(|kv| {
                let node = kv.key.strip_prefix(&prefix)?.to_string();
                Some((node, serde_json::from_slice(&kv.value).ok()?))
            })
            .collect();
        let others = self.others()?;
        if others.iter().all(|n| acks.contains_key(n)) {
            return Ok(Some(
                others.iter().filter_map(|n| acks.get(n).cloned()).collect(),
            ));
        }
        Ok(None)
    }

    fn describe_epoch(&self) -> String {
        match self.sh.etcd.get(&self.sh.keys.epoch()) {
            Ok(Some(kv)) => match serde_json::from_slice::<EpochRecord>(&kv.value) {
                Ok(r) => format!(
                    "cluster: GC epoch {} is on: node {} collects (its job {})",
                    kv.create_revision, r.collector, r.job
                ),
                Err(_) => format!("cluster: GC epoch {} is on", kv.create_revision),
            },
            Ok(None) => "cluster: another node just ended an epoch; try again".into(),
            Err(e) => format!("cluster: {e}"),
        }
    }

    /// The collector's job record, kept where every node reads it; the oldest pruned.
    fn record(&self, epoch: u64, job: &Job) {
        let sh = &self.sh;
        let value = serde_json::to_vec(job).unwrap_or_default();
        if let Err(e) = sh.etcd.put(&sh.keys.job(epoch), &value, 0) {
            tracing::error!(job = job.id, error = %e, "cluster: cannot record the run in etcd");
            return;
        }
        if let Ok(jobs) = sh.etcd.list(&sh.keys.jobs())
            && jobs.len() > JOBS_KEPT
        {
            for kv in &jobs[..jobs.len() - JOBS_KEPT] {
                let _ = sh.etcd.delete_if(&kv.key, kv.create_revision);
            }
        }
    }
}

impl EpochCoordinator for Collector {
    fn begin(&self, job: u64, online: bool) -> Result<(), String> {
        let sh = &self.sh;
        if !self.healthy() {
            return Err(self.unreachable());
        }
        let rec = EpochRecord {
            collector: sh.cfg.node.clone(),
            job,
            started_at: Utc::now(),
            phase: if online { "recording" } else { "closing" }.into(),
            mode: if online { ONLINE } else { "" }.into(),
        };
        let value = serde_json::to_vec(&rec).unwrap_or_default();
        // Claimed as the member agent can tell (see `Collecting`), so it never takes this
        // node's own epoch for another's.
        if !sh.collecting.start_claim() {
            return Err("cluster: this node is already claiming or holding an epoch".into());
        }
        let lease = sh.session.lease();
        match sh.etcd.create(&sh.keys.epoch(), &value, lease) {
            Ok(Some(epoch)) => {
                self.claimed_under.store(lease, Ordering::SeqCst);
                self.online.store(online, Ordering::SeqCst);
                *self.online_run.lock().unwrap_or_else(|e| e.into_inner()) = OnlineRun {
                    epoch_mod: epoch,
                    acked: Vec::new(),
                    planned_taken_back: Vec::new(),
                };
                sh.collecting.claimed(Some(epoch));
                tracing::warn!(node = %sh.cfg.node, epoch, job, "cluster: this node collects epoch {epoch}");
                Ok(())
            }
            Ok(None) => {
                sh.collecting.claimed(None);
                Err(self.describe_epoch())
            }
            Err(e) => {
                sh.collecting.claimed(None);
                Err(format!("cluster: {e}"))
            }
        }
    }

    fn acknowledge(
        &self,
        mut own: MemberDrain,
        give_up: &dyn Fn() -> bool,
    ) -> Result<Option<ClusterRun>, String> {
        let sh = &self.sh;
        let epoch = self.current().ok_or("cluster: no epoch claimed")?;
        own.node = sh.cfg.node.clone();
        // A member drains within its drain timeout; a dead one is gone within a TTL.
        let patience = sh.drain_timeout + sh.cfg.lease_ttl * 2 + Duration::from_secs(5);
        let start = Instant::now();
        let mut told = Instant::now();
        loop {
            if give_up() {
                return Err("cluster: stopped while waiting for the members to close".into());
            }
            if !self.healthy() {
                return Err(self.unreachable());
            }
            match self.all_acked(epoch)? {
                Some(mut members) => {
                    tracing::info!(epoch, members = members.len(), waited = ?start.elapsed(),
                        "cluster: every member closed; collecting");
                    members.insert(0, own);
                    return Ok(Some(ClusterRun {
                        epoch,
                        collector: sh.cfg.node.clone(),
                        members,
                    }));
                }
                None if start.elapsed() > patience => {
                    return Err(format!(
                        "cluster: members {:?} did not acknowledge epoch {epoch} within {patience:?}",
                        self.others().unwrap_or_default()
                    ));
                }
                None => {}
            }
            if told.elapsed() > Duration::from_secs(1) {
                tracing::info!(epoch, "cluster: waiting for members to close");
                told = Instant::now();
            }
            std::thread::sleep(super::member::POLL / 2);
        }
    }

    fn still_held(&self) -> bool {
        self.current().is_some()
            && self.healthy()
            && self.sh.session.lease() == self.claimed_under.load(Ordering::SeqCst)
    }

    fn end(&self, job: &Job) {
        let sh = &self.sh;
        if !self.healthy() {
            // The run has just reopened the gate; a fenced node stays closed.
            sh.gate.refuse_new_writes();
        }
        // Given up first: the member agent then takes the key, if still there, for a
        // leftover of this node's and removes it too, never for an epoch lost mid-run.
        let taken = sh.collecting.take();
        let Some(epoch) = taken else {
            return;
        };
        self.record(epoch, job);
        for attempt in 0..5 {
            match sh.etcd.delete_if(&sh.keys.epoch(), epoch) {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(epoch, attempt, error = %e, "cluster: cannot end the epoch in etcd; retrying (it ends with this node's lease anyway)");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        let _ = sh.etcd.delete_prefix(&sh.keys.acks(epoch));
        let _ = sh.etcd.delete_prefix(&sh.keys.online(epoch));
        let _ = sh.etcd.delete_prefix(&sh.keys.stop(epoch));
        tracing::warn!(node = %sh.cfg.node, epoch, "cluster: epoch ended; members reopen");
    }

    fn online(&self) -> Option<&dyn OnlineCoordinator> {
        (self.current().is_some() && self.online.load(Ordering::SeqCst))
            .then_some(self as &dyn OnlineCoordinator)
    }

    fn stop_cluster_run(&self) -> Result<Option<u64>, String> {
        let sh = &self.sh;
        let Some(kv) = sh
            .etcd
            .get(&sh.keys.epoch())
            .map_err(|e| format!("cluster: {e}"))?
        else {
            return Ok(None);
        };
        // Under the epoch's lease: it goes with the run.
        sh.etcd
            .put(
                &sh.keys.stop(kv.create_revision),
                sh.cfg.node.as_bytes(),
                kv.lease,
            )
            .map_err(|e| format!("cluster: {e}"))?;
        Ok(Some(kv.create_revision))
    }

    fn claim_tick(&self, tick: DateTime<Utc>) -> bool {
        let sh = &self.sh;
        if !self.healthy() {
            tracing::warn!("{}: scheduled run not started here", self.unreachable());
            return false;
        }
        // Its own lease, long enough that no node comes to this tick after it expires.
        let claimed = sh.etcd.grant(3600).and_then(|lease| {
            sh.etcd
                .create(&sh.keys.tick(tick), sh.cfg.node.as_bytes(), lease)
        });
        match claimed {
            Ok(c) => c.is_some(),
            Err(e) => {
                tracing::warn!(error = %e, "cluster: cannot claim the scheduled tick");
                false
            }
        }
    }

    /// Read now (within [`STATUS_DEADLINE`](super::STATUS_DEADLINE)) while the node is
    /// healthy, else as the member agent last read it (every
    /// [`POLL`](super::member::POLL)): `status` never waits long on etcd, and holds no lock
    /// while it does.
    fn view(&self) -> Option<ClusterView> {
        let sh = &self.sh;
        if self.healthy() {
            super::member::look(sh, &sh.quick);
        }
        let seen = sh.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let error = if self.healthy() {
            seen.error.map(|e| format!("cluster: {e}"))
        } else {
            Some(self.unreachable())
        };
        Some(ClusterView {
            node: sh.cfg.node.clone(),
            members: seen.members,
            collector: seen.epoch.as_ref().and_then(|(_, c)| c.clone()),
            epoch: seen.epoch.map(|(e, _)| e),
            read_at: seen.read_at,
            error,
        })
    }
}

impl OnlineCoordinator for Collector {
    fn publish_planned(
        &self,
        doomed: &Doomed,
        timeout: Duration,
        give_up: &dyn Fn() -> bool,
    ) -> Result<Vec<WriteRecord>, String> {
        self.online_collector()?
            .publish_planned(doomed, timeout, give_up)
    }

    fn hand_over(
        &self,
        timeout: Duration,
        give_up: &dyn Fn() -> bool,
    ) -> Result<Vec<WriteRecord>, String> {
        self.online_collector()?.hand_over(timeout, give_up)
    }

    fn keeper(&self) -> Arc<dyn UnitKeeper> {
        Arc::new(EtcdKeeper {
            sh: self.sh.clone(),
            epoch: self.current().unwrap_or(0),
            lease: self.claimed_under.load(Ordering::SeqCst),
        })
    }

    fn publish(
        &self,
        sweeping: &Sweeping,
        timeout: Duration,
        give_up: &dyn Fn() -> bool,
    ) -> Result<(), String> {
        self.online_collector()?.publish(sweeping, timeout, give_up)
    }

    fn claims<'a>(&'a self, sweeping: &'a Sweeping, units: usize) -> Box<dyn Claims + 'a> {
        match self.online_collector() {
            Ok(on) => Box::new(ClusterClaims::new(on, sweeping, units)),
            // No epoch: nothing is deleted.
            Err(_) => Box::new(NothingClaimed),
        }
    }

    fn members_finish(&self, timeout: Duration) -> MembersWrites {
        match self.online_collector() {
            Ok(on) => on.members_finish(timeout),
            Err(_) => MembersWrites::default(),
        }
    }
}

/// The sweep's claims when the epoch is gone: every unit is kept.
struct NothingClaimed;

impl Claims for NothingClaimed {
    fn claim(&self, _i: usize) -> bool {
        false
    }
    fn release(&self, _i: usize) {}
}

//! The collector's side of a cluster's online run, and how every node keeps a doomed unit
//! for the whole cluster during its sweep (`ARCHITECTURE.md`, the online run across the
//! cluster). Every key lives under the collector's lease (`Keys::online`).
//!
//! The sweep and the writes meet in etcd: a node takes units back only after a
//! transaction put `kept/<unit>` while no `claimed/<batch>` of theirs existed; the
//! collector deletes a batch's units only after a transaction put `claimed/<batch>`
//! (listing them) while no `kept/` key had changed since it read them all.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::NodeParts;
use super::etcd::{Compare, Etcd, Kv};
use super::records::Keys;
use crate::daemon::epoch::{EpochCoordinator, MembersWrites};
use crate::gc::Claims;
use crate::policy::online::{
    ClaimedBatch, Doomed, DoomedUnit, KeepAnswer, Sweeping, UnitKeeper, WriteRecord,
};

/// Units per claim: the collector pays three round trips per batch.
pub const BATCH: usize = 256;
/// Units per key of the published doomed set (well under etcd's 1.5 MiB request).
pub const CHUNK: usize = 1000;
/// Keys put per transaction (etcd's default limit is 128 operations).
const PUTS_PER_TXN: usize = 100;
/// How often a recording member looks for the pause (for the whole mark), and the
/// collector for what members give outside the pause.
pub const PAUSE_POLL: Duration = Duration::from_millis(10);
/// How often a side looks at etcd while writes are held (the pause: a few looks).
pub const HELD_POLL: Duration = Duration::from_millis(2);

/// What the keep and claim transactions need of etcd (`Etcd`; a model of it in
/// `tests/cluster_online_model.rs`). Err: why the call failed.
pub trait RunStore {
    fn get(&self, key: &str) -> Result<Option<Kv>, String>;
    /// Every key under `prefix`, and the revision they were read at.
    fn list_at(&self, prefix: &str) -> Result<(Vec<Kv>, u64), String>;
    /// The puts, if every compare holds: `Some(revision)`.
    fn txn(
        &self,
        compares: &[Compare<'_>],
        puts: &[(&str, &[u8], i64)],
    ) -> Result<Option<u64>, String>;
    fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<(), String>;
}

impl RunStore for Etcd {
    fn get(&self, key: &str) -> Result<Option<Kv>, String> {
        Etcd::get(self, key).map_err(|e| e.to_string())
    }
    fn list_at(&self, prefix: &str) -> Result<(Vec<Kv>, u64), String> {
        Etcd::list_at(self, prefix).map_err(|e| e.to_string())
    }
    fn txn(
        &self,
        compares: &[Compare<'_>],
        puts: &[(&str, &[u8], i64)],
    ) -> Result<Option<u64>, String> {
        Etcd::txn(self, compares, puts).map_err(|e| e.to_string())
    }
    fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<(), String> {
        Etcd::put(self, key, value, lease).map_err(|e| e.to_string())
    }
}

/// One online run's keys in one store: what the keep and claim transactions work on.
pub struct RunKeys<'a> {
    pub store: &'a dyn RunStore,
    pub keys: &'a Keys,
    pub epoch: u64,
    /// The collector's lease: every key of the run lives under it.
    pub lease: i64,
}

impl RunKeys<'_> {
    /// What the batches of `units` hold, after a keep was refused: read from their
    /// `claimed` and `done` keys.
    fn claimed(&self, units: &[usize]) -> Result<Vec<ClaimedBatch>, String> {
        let mut by_batch: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for &i in units {
            by_batch.entry(i / BATCH).or_default().push(i);
        }
        let mut out = Vec::new();
        for (b, asked) in by_batch {
            let Some(kv) = self.store.get(&self.keys.claimed(self.epoch, b))? else {
                continue;
            };
            let listed: HashSet<usize> = serde_json::from_slice::<Vec<usize>>(&kv.value)
                .map_err(|e| format!("claim of batch {b}: {e}"))?
                .into_iter()
                .collect();
            let done = self.store.get(&self.keys.done(self.epoch, b))?.is_some();
            out.push(ClaimedBatch {
                kept: asked
                    .iter()
                    .copied()
                    .filter(|i| !listed.contains(i))
                    .collect(),
                deleting: listed.into_iter().collect(),
                done,
            });
        }
        Ok(out)
    }

    /// A node keeps `units` for the whole run: `kept/<unit>` put while none of their
    /// batches is claimed (and the epoch is still the run's).
    pub fn keep(&self, units: &[usize]) -> KeepAnswer {
        let epoch_key = self.keys.epoch();
        for part in units.chunks(PUTS_PER_TXN) {
            let batches: BTreeSet<usize> = part.iter().map(|i| i / BATCH).collect();
            let claimed: Vec<String> = batches
                .iter()
                .map(|&b| self.keys.claimed(self.epoch, b))
                .collect();
            let mut compares = vec![Compare::Created(&epoch_key, self.epoch)];
            compares.extend(claimed.iter().map(|k| Compare::Created(k, 0)));
            let kept: Vec<String> = part
                .iter()
                .map(|&i| self.keys.kept_unit(self.epoch, i))
                .collect();
            let puts: Vec<(&str, &[u8], i64)> = kept
                .iter()
                .map(|k| (k.as_str(), &b""[..], self.lease))
                .collect();
            match self.store.txn(&compares, &puts) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return match self.claimed(part) {
                        Ok(b) if !b.is_empty() => KeepAnswer::Claimed(b),
                        Ok(_) => KeepAnswer::Unknown("the run's epoch is over".into()),
                        Err(e) => KeepAnswer::Unknown(e),
                    };
                }
                Err(e) => return KeepAnswer::Unknown(e),
            }
        }
        KeepAnswer::Kept
    }

    /// The collector claims batch `b`, whose units still doomed on its node are
    /// `units`: those no node kept are listed in `claimed/<b>`, by a transaction that
    /// fails if any `kept/` key changed since they were read. `None`: not claimed
    /// (nothing of it may be deleted).
    pub fn claim_batch(&self, b: usize, units: &[usize]) -> Option<Vec<usize>> {
        if units.is_empty() {
            return Some(Vec::new());
        }
        let kept_prefix = self.keys.kept(self.epoch);
        let claimed_key = self.keys.claimed(self.epoch, b);
        let epoch_key = self.keys.epoch();
        for _ in 0..5 {
            let (kept, rev) = match self.store.list_at(&kept_prefix) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(batch = b, error = %e, "cluster: cannot claim a batch of the sweep; its units are kept");
                    return None;
                }
            };
            let kept: HashSet<usize> = kept
                .iter()
                .filter_map(|kv| kv.key.strip_prefix(&kept_prefix)?.parse().ok())
                .collect();
            let listed: Vec<usize> = units
                .iter()
                .copied()
                .filter(|i| !kept.contains(i))
                .collect();
            let value = serde_json::to_vec(&listed).unwrap_or_default();
            match self.store.txn(
                &[
                    Compare::Created(&epoch_key, self.epoch),
                    Compare::UnchangedSince(&kept_prefix, rev),
                ],
                &[(&claimed_key, &value, self.lease)],
            ) {
                Ok(Some(_)) => return Some(listed),
                Ok(None) => continue, // a unit was kept meanwhile (or the run ended)
                Err(e) => {
                    tracing::warn!(batch = b, error = %e, "cluster: cannot claim a batch of the sweep; its units are kept");
                    return None;
                }
            }
        }
        None
    }

    /// Every listed unit of batch `b` is released: writes may make its units new.
    pub fn batch_done(&self, b: usize) {
        if let Err(e) = self
            .store
            .put(&self.keys.done(self.epoch, b), b"", self.lease)
        {
            // Writes naming its units stay refused until the run ends: no loss.
            tracing::warn!(batch = b, error = %e, "cluster: cannot mark a swept batch done");
        }
    }
}

/// One key of the published doomed set.
#[derive(Debug, Serialize, Deserialize)]
pub struct DoomedChunk {
    /// The index of its first unit.
    pub first: usize,
    pub units: Vec<DoomedUnit>,
}

/// Where a node's write keeps units in etcd: the run's epoch and the collector's lease
/// (a kept unit must stay kept whoever dies, until the run ends).
#[derive(Clone)]
pub struct EtcdKeeper {
    pub sh: Arc<NodeParts>,
    pub epoch: u64,
    pub lease: i64,
}

impl std::fmt::Debug for EtcdKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EtcdKeeper(epoch {})", self.epoch)
    }
}

impl UnitKeeper for EtcdKeeper {
    fn keep(&self, units: &[usize]) -> KeepAnswer {
        RunKeys {
            store: &self.sh.etcd,
            keys: &self.sh.keys,
            epoch: self.epoch,
            lease: self.lease,
        }
        .keep(units)
    }
}

/// The collector's state of one online run in the cluster.
#[derive(Debug, Default)]
pub struct OnlineRun {
    /// The epoch key's last change (the collector's phase transactions compare it).
    pub epoch_mod: u64,
    /// The members that acknowledged (fixed when the planned set went out).
    pub acked: Vec<String>,
    /// The units the planned set said were taken back already.
    pub planned_taken_back: Vec<usize>,
}

/// What a member says when its part in the run ended (`finished/<node>`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MemberFinished {
    /// Writes its barrier refused (they named what the sweep deleted).
    pub refused: u64,
    /// Units its writes took back.
    pub resurrected: u64,
}

/// The collector's handle on its online run (in `collector::Collector`).
pub struct OnlineCollector<'a> {
    pub sh: &'a Arc<NodeParts>,
    pub epoch: u64,
    pub lease: i64,
    pub run: &'a Mutex<OnlineRun>,
    pub coordinator: &'a dyn EpochCoordinator,
}

impl OnlineCollector<'_> {
    fn run(&self) -> std::sync::MutexGuard<'_, OnlineRun> {
        self.run.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn still_held(&self) -> bool {
        self.coordinator.still_held()
    }

    /// Moves the epoch's phase on, by a transaction on its last change.
    pub fn set_phase(&self, phase: &str) -> Result<(), String> {
        let sh = self.sh;
        let key = sh.keys.epoch();
        let kv = (sh.etcd.get(&key))
            .map_err(|e| format!("cluster: {e}"))?
            .filter(|kv| kv.create_revision == self.epoch)
            .ok_or_else(|| format!("cluster: epoch {} is no longer this node's", self.epoch))?;
        let mut rec: super::records::EpochRecord =
            serde_json::from_slice(&kv.value).map_err(|e| format!("cluster: epoch record: {e}"))?;
        rec.phase = phase.into();
        let value = serde_json::to_vec(&rec).unwrap_or_default();
        let expected = self.run().epoch_mod;
        if expected != 0 && kv.mod_revision != expected {
            return Err(format!(
                "cluster: epoch {} changed behind its collector",
                self.epoch
            ));
        }
        match sh.etcd.txn(
            &[Compare::ModifiedAt(&key, kv.mod_revision)],
            &[(&key, &value, self.lease)],
        ) {
            Ok(Some(rev)) => {
                self.run().epoch_mod = rev;
                tracing::info!(epoch = self.epoch, phase, "cluster: online run phase");
                Ok(())
            }
            Ok(None) => Err(format!(
                "cluster: epoch {} changed behind its collector",
                self.epoch
            )),
            Err(e) => Err(format!("cluster: {e}")),
        }
    }

    /// Waits until every node of the acknowledged set has a key under `prefix`; their
    /// values by node.
    fn wait_all(
        &self,
        prefix: &str,
        what: &str,
        poll: Duration,
        timeout: Duration,
        give_up: &dyn Fn() -> bool,
    ) -> Result<BTreeMap<String, Vec<u8>>, String> {
        let acked = self.run().acked.clone();
        let start = Instant::now();
        loop {
            if give_up() {
                return Err(format!("cluster: stopped while waiting for {what}"));
            }
            if !self.still_held() {
                return Err("cluster: this node no longer surely holds its epoch".into());
            }
            let got: BTreeMap<String, Vec<u8>> = (self.sh.etcd.list(prefix))
                .map_err(|e| format!("cluster: {e}"))?
                .into_iter()
                .filter_map(|kv| Some((kv.key.strip_prefix(prefix)?.to_string(), kv.value)))
                .collect();
            let missing: Vec<&String> = acked.iter().filter(|n| !got.contains_key(*n)).collect();
            if missing.is_empty() {
                return Ok(got);
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "cluster: members {missing:?} did not give {what} within {timeout:?}"
                ));
            }
            std::thread::sleep(poll);
        }
    }

    /// Writes the planned doomed set (`doomed` as it is now), moves the phase to
    /// `planned` (the acknowledged set is fixed then), and waits until every member holds
    /// it; the records they handed over with it.
    pub fn publish_planned(
        &self,
        doomed: &Doomed,
        timeout: Duration,
        give_up: &dyn Fn() -> bool,
    ) -> Result<Vec<WriteRecord>, String> {
        let (units, taken_back) = doomed.published();
        let keys = &self.sh.keys;
        let mut first = 0;
        for (k, chunk) in units.chunks(CHUNK).enumerate() {
            let value = serde_json::to_vec(&DoomedChunk {
                first,
                units: chunk.to_vec(),
            })
            .unwrap_or_default();
            first += chunk.len();
            (self
                .sh
                .etcd
                .put(&keys.doomed_chunk(self.epoch, k), &value, self.lease))
            .map_err(|e| format!("cluster: {e}"))?;
        }
        let settled = serde_json::to_vec(&(units.len(), &taken_back)).unwrap_or_default();
        (self
            .sh
            .etcd
            .put(&keys.settled(self.epoch), &settled, self.lease))
        .map_err(|e| format!("cluster: {e}"))?;
        self.run().planned_taken_back = taken_back;
        self.set_phase("planned")?;
        // The phase has moved on: no acknowledgement can be added after this read.
        let prefix = keys.acks(self.epoch);
        let acked: Vec<String> = (self.sh.etcd.list(&prefix))
            .map_err(|e| format!("cluster: {e}"))?
            .into_iter()
            .filter_map(|kv| kv.key.strip_prefix(&prefix).map(str::to_string))
            .collect();
        self.run().acked = acked;
        let records = self.wait_all(
            &keys.planned(self.epoch),
            "word that they hold the planned doomed set",
            PAUSE_POLL,
            timeout,
            give_up,
        )?;
        parse_records(records)
    }

    /// The pause: every member holds its writes and hands over its record since it
    /// took the planned set.
    pub fn hand_over(
        &self,
        timeout: Duration,
        give_up: &dyn Fn() -> bool,
    ) -> Result<Vec<WriteRecord>, String> {
        self.set_phase("pausing")?;
        let records = self.wait_all(
            &self.sh.keys.records(self.epoch),
            "their write records",
            HELD_POLL,
            timeout,
            give_up,
        )?;
        parse_records(records)
    }

    /// Writes the delta (what `sweeping` took back since the planned set), moves the
    /// phase to `sweeping`, and waits until every member enforces it and resumed.
    pub fn publish(
        &self,
        sweeping: &Sweeping,
        timeout: Duration,
        give_up: &dyn Fn() -> bool,
    ) -> Result<(), String> {
        let planned: HashSet<usize> = self.run().planned_taken_back.iter().copied().collect();
        let delta: Vec<usize> = (sweeping.taken_back().into_iter())
            .filter(|i| !planned.contains(i))
            .collect();
        let keys = &self.sh.keys;
        let value = serde_json::to_vec(&delta).unwrap_or_default();
        (self
            .sh
            .etcd
            .put(&keys.delta(self.epoch), &value, self.lease))
        .map_err(|e| format!("cluster: {e}"))?;
        self.set_phase("sweeping")?;
        self.wait_all(
            &keys.loaded(self.epoch),
            "word that they enforce the doomed set",
            HELD_POLL,
            timeout,
            give_up,
        )
        .map(|_| ())
    }

    /// The sweep is over: moves the phase to `ending` and sums the refused writes every
    /// member reports as it ends its part. A member that does not report within
    /// `timeout` (or whose entry is gone: it died) is left out and named in the log.
    pub fn members_finish(&self, timeout: Duration) -> MembersWrites {
        if let Err(e) = self.set_phase("ending") {
            tracing::warn!(error = %e, "cluster: members' refused writes not counted");
            return MembersWrites::default();
        }
        let keys = &self.sh.keys;
        let prefix = keys.finished(self.epoch);
        let acked = self.run().acked.clone();
        let start = Instant::now();
        loop {
            let got: BTreeMap<String, MemberFinished> = match self.sh.etcd.list(&prefix) {
                Ok(kvs) => kvs
                    .into_iter()
                    .filter_map(|kv| {
                        let node = kv.key.strip_prefix(&prefix)?.to_string();
                        Some((node, serde_json::from_slice(&kv.value).ok()?))
                    })
                    .collect(),
                Err(_) => BTreeMap::new(),
            };
            let missing: Vec<&String> = acked.iter().filter(|n| !got.contains_key(*n)).collect();
            let gone = |n: &&String| matches!(self.sh.etcd.get(&keys.member(n)), Ok(None));
            let waiting: Vec<&String> = missing.iter().filter(|n| !gone(n)).copied().collect();
            if waiting.is_empty() || start.elapsed() > timeout || !self.still_held() {
                if !missing.is_empty() {
                    tracing::warn!(epoch = self.epoch, members = ?missing,
                        "cluster: members did not report the writes they refused; the job counts the others'");
                }
                return got
                    .values()
                    .fold(MembersWrites::default(), |sum, f| MembersWrites {
                        refused: sum.refused + f.refused,
                        resurrected: sum.resurrected + f.resurrected,
                    });
            }
            std::thread::sleep(PAUSE_POLL);
        }
    }
}

fn parse_records(records: BTreeMap<String, Vec<u8>>) -> Result<Vec<WriteRecord>, String> {
    records
        .into_iter()
        .map(|(node, v)| {
            serde_json::from_slice(&v)
                .map_err(|e| format!("cluster: the write record of {node}: {e}"))
        })
        .collect()
}

/// A member reads the delta the collector wrote for `epoch` at the pause: the units
/// taken back since the planned set.
pub fn load_delta(sh: &NodeParts, epoch: u64) -> Result<Vec<usize>, String> {
    match sh.etcd.get(&sh.keys.delta(epoch)) {
        Ok(Some(kv)) => serde_json::from_slice(&kv.value).map_err(|e| e.to_string()),
        Ok(None) => Err("the delta is not there".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A member reads the planned doomed set the collector published for `epoch`.
pub fn load_planned(sh: &NodeParts, epoch: u64) -> Result<Doomed, String> {
    let keys = &sh.keys;
    let (len, settled): (usize, Vec<usize>) = match sh.etcd.get(&keys.settled(epoch)) {
        Ok(Some(kv)) => serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?,
        Ok(None) => return Err("the doomed set is not there".into()),
        Err(e) => return Err(e.to_string()),
    };
    let mut units = Vec::with_capacity(len);
    for kv in sh
        .etcd
        .list(&keys.doomed(epoch))
        .map_err(|e| e.to_string())?
    {
        let chunk: DoomedChunk = serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
        if chunk.first != units.len() {
            return Err(format!("doomed set chunk at {} out of order", chunk.first));
        }
        units.extend(chunk.units);
    }
    if units.len() != len {
        return Err(format!("doomed set has {} units of {len}", units.len()));
    }
    Ok(Doomed::from_published(units, &settled))
}

/// One batch's claim, made by the first sweep thread that needs it.
struct BatchClaim {
    /// The units the collector deletes (`None`: not claimed, nothing of it deleted).
    listed: Option<HashSet<usize>>,
    /// Listed units not yet released: at 0 the batch is done.
    left: AtomicUsize,
}

/// The sweep's claims in a cluster: a unit is deleted only if its batch's claim in etcd
/// lists it and this node's barrier still holds it doomed.
pub struct ClusterClaims<'a> {
    pub on: OnlineCollector<'a>,
    pub sweeping: &'a Sweeping,
    batches: Vec<OnceLock<BatchClaim>>,
}

impl<'a> ClusterClaims<'a> {
    pub fn new(on: OnlineCollector<'a>, sweeping: &'a Sweeping, units: usize) -> Self {
        ClusterClaims {
            on,
            sweeping,
            batches: (0..units.div_ceil(BATCH))
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// Claims batch `b`: its units still doomed here and kept by no node.
    fn claim_batch(&self, b: usize) -> BatchClaim {
        let n = self.batches.len() * BATCH;
        let units: Vec<usize> = (b * BATCH..((b + 1) * BATCH).min(n))
            .filter(|&i| self.sweeping.is_doomed(i))
            .collect();
        let listed = if self.on.still_held() {
            self.run_keys().claim_batch(b, &units)
        } else {
            None
        };
        BatchClaim {
            left: AtomicUsize::new(listed.as_ref().map_or(0, Vec::len)),
            listed: listed.map(|l| l.into_iter().collect()),
        }
    }

    fn run_keys(&self) -> RunKeys<'_> {
        RunKeys {
            store: &self.on.sh.etcd,
            keys: &self.on.sh.keys,
            epoch: self.on.epoch,
            lease: self.on.lease,
        }
    }

    /// One listed unit of batch `b` is finished with: the last puts `done`.
    fn finished(&self, b: usize, claim: &BatchClaim) {
        if claim.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.run_keys().batch_done(b);
        }
    }
}

impl Claims for ClusterClaims<'_> {
    fn claim(&self, i: usize) -> bool {
        let b = i / BATCH;
        let Some(cell) = self.batches.get(b) else {
            return false;
        };
        let claim = cell.get_or_init(|| self.claim_batch(b));
        let Some(listed) = &claim.listed else {
            return false;
        };
        if !listed.contains(&i) {
            return false;
        }
        if self.on.still_held() && self.sweeping.claim_claimed(i) {
            return true;
        }
        self.finished(b, claim);
        false
    }

    fn release(&self, i: usize) {
        self.sweeping.release(i);
        let b = i / BATCH;
        if let Some(claim) = self.batches.get(b).and_then(OnceLock::get) {
            self.finished(b, claim);
        }
    }
}

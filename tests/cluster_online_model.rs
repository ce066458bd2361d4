//! Model of the online run across the cluster (`ARCHITECTURE.md`): a collector and two
//! members over a model of etcd (revisions, leases, transactions with the same compares),
//! each node with the library's own doomed set (`policy::online::Doomed`), write check
//! (`check_write`) and keep and claim transactions (`cluster::online::RunKeys`), driven
//! through random interleavings of: writes during the mark on every node (recorded; a
//! member's handed over in two records, one with word that it holds the planned doomed
//! set, one at the pause), the planned set and the delta of the pause (a member cut off
//! before it loads the planned set, or before it reads the delta), member link writes
//! and fresh uploads during the sweep, the collector's
//! sweep unit by unit (batch claims), a member or the collector cut off from etcd (a
//! partition) and back, and the collector's lease expiring (it stops deleting first, as
//! it does at half its TTL).
//!
//! Checked at the pause: every member enforces exactly the collector's doomed set (the
//! planned set with the delta applied), and no node hides a blob a write before the pause
//! made live. Checked after every step: no link a node admitted names a blob the
//! collector deleted (before or after the link), no blob made anew by an admitted upload
//! is deleted, and a run missing a member's record, its word that it holds the planned
//! set or that it applied the delta deletes nothing.
//!
//! Seeds are fixed: `CLUSTER_MODEL_SEEDS` runs (default 40) from
//! `CLUSTER_MODEL_FIRST_SEED` (default 0); a failure names its seed.

#[path = "common/rng.rs"]
#[allow(dead_code)]
mod rng;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use regfs::cluster::etcd::{Compare, Kv};
use regfs::cluster::online::{BATCH, RunKeys, RunStore};
use regfs::cluster::records::Keys;
use regfs::policy::online::{Doomed, DoomedCell, DoomedUnit, KeepAnswer, UnitKeeper, check_write};
use rng::Rng;

/// Units in the plan: three batches, the last one short.
const UNITS: usize = 2 * BATCH + 40;
const COLLECTOR: usize = 0;
const MEMBERS: [usize; 2] = [1, 2];
const LEASE: i64 = 7;
const EPOCH: u64 = 1;

#[derive(Clone)]
struct Entry {
    value: Vec<u8>,
    create: u64,
    modified: u64,
    lease: i64,
}

/// etcd as the transactions see it: one revision per change, keys under leases, and
/// which nodes are cut off from it.
#[derive(Default)]
struct ModelEtcd {
    rev: u64,
    keys: BTreeMap<String, Entry>,
    leases: HashSet<i64>,
    cut_off: HashSet<usize>,
}

impl ModelEtcd {
    fn holds(&self, c: &Compare<'_>) -> bool {
        match *c {
            Compare::Created(k, rev) => self.keys.get(k).map_or(0, |e| e.create) == rev,
            Compare::ModifiedAt(k, rev) => self.keys.get(k).map_or(0, |e| e.modified) == rev,
            Compare::UnchangedSince(prefix, rev) => self
                .keys
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .all(|(_, e)| e.modified <= rev),
        }
    }

    fn put(&mut self, key: &str, value: &[u8], lease: i64) -> Result<(), String> {
        if lease != 0 && !self.leases.contains(&lease) {
            return Err("requested lease not found".into());
        }
        let rev = self.rev;
        let create = self.keys.get(key).map_or(rev, |e| e.create);
        self.keys.insert(
            key.into(),
            Entry {
                value: value.to_vec(),
                create,
                modified: rev,
                lease,
            },
        );
        Ok(())
    }

    fn expire(&mut self, lease: i64) {
        self.leases.remove(&lease);
        self.rev += 1;
        self.keys.retain(|_, e| e.lease != lease);
    }

    fn kv(key: &str, e: &Entry) -> Kv {
        Kv {
            key: key.into(),
            value: e.value.clone(),
            create_revision: e.create,
            mod_revision: e.modified,
            lease: e.lease,
        }
    }
}

/// One node's connection to the model etcd.
struct Conn<'a> {
    etcd: &'a Mutex<ModelEtcd>,
    node: usize,
}

/// The collector's connection for its claims: `between` runs between a listing's answer
/// and its next call (another node's write landing between the collector's read of the
/// kept units and its claim).
struct Claimer<'a> {
    conn: Conn<'a>,
    between: &'a dyn Fn(),
}

impl RunStore for Claimer<'_> {
    fn get(&self, key: &str) -> Result<Option<Kv>, String> {
        self.conn.get(key)
    }
    fn list_at(&self, prefix: &str) -> Result<(Vec<Kv>, u64), String> {
        let r = self.conn.list_at(prefix);
        (self.between)();
        r
    }
    fn txn(
        &self,
        compares: &[Compare<'_>],
        puts: &[(&str, &[u8], i64)],
    ) -> Result<Option<u64>, String> {
        self.conn.txn(compares, puts)
    }
    fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<(), String> {
        self.conn.put(key, value, lease)
    }
}

impl Conn<'_> {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, ModelEtcd>, String> {
        let g = self.etcd.lock().unwrap();
        if g.cut_off.contains(&self.node) {
            return Err(format!("node {} cut off from etcd", self.node));
        }
        Ok(g)
    }
}

impl RunStore for Conn<'_> {
    fn get(&self, key: &str) -> Result<Option<Kv>, String> {
        Ok(self.lock()?.keys.get(key).map(|e| ModelEtcd::kv(key, e)))
    }

    fn list_at(&self, prefix: &str) -> Result<(Vec<Kv>, u64), String> {
        let g = self.lock()?;
        let kvs = (g.keys.iter())
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| ModelEtcd::kv(k, e))
            .collect();
        Ok((kvs, g.rev))
    }

    fn txn(
        &self,
        compares: &[Compare<'_>],
        puts: &[(&str, &[u8], i64)],
    ) -> Result<Option<u64>, String> {
        let mut g = self.lock()?;
        if !compares.iter().all(|c| g.holds(c)) {
            return Ok(None);
        }
        g.rev += 1;
        for (k, v, l) in puts {
            g.put(k, v, *l)?;
        }
        Ok(Some(g.rev))
    }

    fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<(), String> {
        let mut g = self.lock()?;
        g.rev += 1;
        g.put(key, value, lease)
    }
}

/// A node's doomed set behind its lock; `None` once its part in the run has ended.
struct NodeCell(Mutex<Option<Doomed>>);

impl DoomedCell for NodeCell {
    fn with_doomed<R>(&self, f: impl FnOnce(&mut Doomed) -> R) -> Option<R> {
        self.0.lock().unwrap().as_mut().map(f)
    }
}

struct Keeper<'a> {
    conn: Conn<'a>,
    keys: &'a Keys,
}

impl std::fmt::Debug for Keeper<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keeper({})", self.conn.node)
    }
}

impl UnitKeeper for Keeper<'_> {
    fn keep(&self, units: &[usize]) -> KeepAnswer {
        RunKeys {
            store: &self.conn,
            keys: self.keys,
            epoch: EPOCH,
            lease: LEASE,
        }
        .keep(units)
    }
}

fn hex(u: usize) -> String {
    format!("{u:064x}")
}
fn blob_dir(u: usize) -> String {
    let h = hex(u);
    format!("v2/blobs/sha256/{}/{h}", &h[..2])
}
fn layer_link(node: usize, u: usize) -> String {
    format!("v2/repositories/r{node}/_layers/sha256/{}/link", hex(u))
}
fn unit(u: usize) -> DoomedUnit {
    DoomedUnit {
        paths: MEMBERS
            .iter()
            .chain([&COLLECTOR])
            .map(|n| format!("v2/repositories/r{n}/_layers/sha256/{}", hex(u)))
            .chain([blob_dir(u)])
            .collect(),
        hidden: Some(blob_dir(u)),
        referrer: None,
    }
}

/// What the store holds, as the model knows it.
#[derive(Default)]
struct Truth {
    /// Units a link admitted on some node names.
    linked: HashSet<usize>,
    /// Units whose blob an admitted upload made anew.
    renewed: HashSet<usize>,
    deleted: HashSet<usize>,
}

impl Truth {
    fn check(&self, seed: u64, step: usize) {
        for u in &self.deleted {
            assert!(
                !self.linked.contains(u) && !self.renewed.contains(u),
                "seed {seed}, step {step}: unit {u} deleted though a node admitted a write naming it"
            );
        }
    }
}

/// The collector's sweep, unit by unit, batches claimed as `ClusterClaims` does.
struct Sweep {
    next: usize,
    claims: BTreeMap<usize, Option<Vec<usize>>>,
    left: BTreeMap<usize, usize>,
    fenced: bool,
}

fn run(seed: u64) {
    let mut rng = Rng(seed);
    let keys = Keys::new("/m/");
    let etcd = Mutex::new(ModelEtcd::default());
    {
        let mut g = etcd.lock().unwrap();
        g.leases.insert(LEASE);
        g.rev = EPOCH;
        g.put(&keys.epoch(), b"epoch", LEASE).unwrap();
    }
    let truth = RefCell::new(Truth::default());

    // The mark: every node writes, recorded. The collector's own writes before it lays
    // out the plan are in the planned set; the members' go to it in two records: the one
    // handed over with `planned` (written before the node took the planned set) and the
    // one handed over at the pause (written after).
    let writes =
        |rng: &mut Rng| -> Vec<usize> { (0..rng.below(6)).map(|_| rng.below(UNITS)).collect() };
    let mut collector = Doomed::new((0..UNITS).map(unit).collect());
    for u in writes(&mut rng) {
        truth.borrow_mut().linked.insert(u);
        collector.touch(&layer_link(COLLECTOR, u));
    }
    let before_pause: HashSet<usize> = truth.borrow().linked.clone();
    // Before the pause, every node writable: the planned set goes out. A member cut off
    // now cannot load it, never says it holds it, and the collector, waiting for it in
    // vain, never pauses: nothing is deleted.
    let (planned_units, planned_taken) = collector.published();
    let cut_before_planned = rng.chance(8).then(|| rng.pick(&MEMBERS));
    let mut planned: BTreeMap<usize, Doomed> = BTreeMap::new();
    for &m in &MEMBERS {
        if Some(m) == cut_before_planned {
            return;
        }
        planned.insert(
            m,
            Doomed::from_published(planned_units.clone(), &planned_taken),
        );
    }
    let mut early: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut late: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &m in &MEMBERS {
        early.insert(m, writes(&mut rng));
        late.insert(m, writes(&mut rng));
    }
    // The collector folds the records handed over with `planned`, and its own writes
    // since, with every node writable.
    for (&m, w) in &early {
        for &u in w {
            collector.touch(&layer_link(m, u));
        }
    }
    let own_late = writes(&mut rng);
    for &u in &own_late {
        collector.touch(&layer_link(COLLECTOR, u));
    }
    let mut before_pause = before_pause;
    before_pause.extend(
        early
            .values()
            .flatten()
            .chain(late.values().flatten())
            .chain(&own_late),
    );
    truth
        .borrow_mut()
        .linked
        .extend(before_pause.iter().copied());
    // The pause: every member hands over its record since `planned`, unless cut off
    // (then it closes, and the run, missing its record, deletes nothing).
    let lost = rng.chance(10).then(|| rng.pick(&MEMBERS));
    for (&m, w) in &late {
        if Some(m) == lost {
            return; // the collector waits for it in vain and deletes nothing
        }
        for &u in w {
            collector.touch(&layer_link(m, u));
        }
    }
    // The delta: what the collector took back since the planned set. A member cut off
    // before it reads it keeps holding its writes, then closes; the collector, missing
    // its `loaded`, deletes nothing.
    let planned_taken: HashSet<usize> = planned_taken.into_iter().collect();
    let delta: Vec<usize> = (collector.taken_back().into_iter())
        .filter(|i| !planned_taken.contains(i))
        .collect();
    let cut_before_delta = rng.chance(10).then(|| rng.pick(&MEMBERS));
    for (&m, set) in planned.iter_mut() {
        if Some(m) == cut_before_delta {
            return;
        }
        set.settle_published(&delta);
    }
    // Invariant 2: every member enforces exactly the collector's set; and so no node
    // hides a blob that a write before the pause made live (a pull of it through any
    // node after the pause finds it).
    for (&m, set) in &planned {
        for i in 0..UNITS {
            assert_eq!(
                set.is_doomed(i),
                collector.is_doomed(i),
                "seed {seed}: member {m} enforces unit {i} unlike the collector"
            );
        }
    }
    for (n, set) in
        std::iter::once((COLLECTOR, &collector)).chain(planned.iter().map(|(m, s)| (*m, s)))
    {
        for &u in &before_pause {
            assert!(
                !set.is_hidden(&blob_dir(u)),
                "seed {seed}: node {n} hides unit {u}, which a write before the pause made live"
            );
        }
    }
    let cells: Vec<NodeCell> = (0..3)
        .map(|n| {
            NodeCell(Mutex::new(Some(if n == COLLECTOR {
                std::mem::take(&mut collector)
            } else {
                planned.remove(&n).unwrap()
            })))
        })
        .collect();
    let expired = Cell::new(false);
    let keepers: Vec<Keeper> = (0..3)
        .map(|n| Keeper {
            conn: Conn {
                etcd: &etcd,
                node: n,
            },
            keys: &keys,
        })
        .collect();
    // A link write on node `n` naming unit `u`; whether it was admitted.
    let link_write = |n: usize, u: usize, step: usize| {
        let own = layer_link(n, u);
        let named = vec![blob_dir(u)];
        let admitted = if expired.get() {
            // The run is over on every node: nothing is checked, nothing deleted.
            !truth.borrow().deleted.contains(&u)
        } else {
            check_write(&cells[n], Some(&keepers[n]), &own, &named).is_ok()
        };
        if admitted {
            let mut t = truth.borrow_mut();
            assert!(
                !t.deleted.contains(&u),
                "seed {seed}, step {step}: node {n} admitted a link to deleted unit {u}"
            );
            t.linked.insert(u);
        }
    };
    let between_rng = RefCell::new(Rng(seed ^ 0x5eed));
    let between = || {
        let mut r = between_rng.borrow_mut();
        if r.chance(50) {
            let (n, u) = (r.pick(&MEMBERS), r.below(UNITS));
            drop(r);
            link_write(n, u, usize::MAX);
        }
    };
    let claimer = Claimer {
        conn: Conn {
            etcd: &etcd,
            node: COLLECTOR,
        },
        between: &between,
    };
    let mut sweep = Sweep {
        next: 0,
        claims: BTreeMap::new(),
        left: BTreeMap::new(),
        fenced: false,
    };
    let order: Vec<usize> = (0..UNITS).collect();
    for step in 0..UNITS * 4 {
        match rng.below(100) {
            // The collector sweeps one unit.
            0..=44 => {
                if sweep.fenced || sweep.next >= UNITS {
                    continue;
                }
                let i = order[sweep.next];
                sweep.next += 1;
                let b = i / BATCH;
                let run_keys = RunKeys {
                    store: &claimer,
                    keys: &keys,
                    epoch: EPOCH,
                    lease: LEASE,
                };
                let listed = sweep
                    .claims
                    .entry(b)
                    .or_insert_with(|| {
                        let doomed: Vec<usize> = (b * BATCH..((b + 1) * BATCH).min(UNITS))
                            .filter(|&u| {
                                cells[COLLECTOR].with_doomed(|d| d.is_doomed(u)) == Some(true)
                            })
                            .collect();
                        let l = run_keys.claim_batch(b, &doomed);
                        if let Some(l) = &l {
                            sweep.left.insert(b, l.len());
                        }
                        l
                    })
                    .clone();
                let Some(listed) = listed else { continue };
                if !listed.contains(&i) {
                    continue;
                }
                if cells[COLLECTOR].with_doomed(|d| d.claim_claimed(i)) == Some(true) {
                    truth.borrow_mut().deleted.insert(i);
                    cells[COLLECTOR].with_doomed(|d| d.release(i));
                }
                let left = sweep.left.get_mut(&b).unwrap();
                *left -= 1;
                if *left == 0 {
                    run_keys.batch_done(b);
                }
            }
            // A member (or the collector's own registry) writes a link naming a unit.
            45..=79 => {
                let (n, u) = (rng.below(3), rng.below(UNITS));
                link_write(n, u, step);
            }
            // A fresh upload of a unit's blob (after a refusal, a client uploads again).
            80..=87 => {
                let n = rng.below(3);
                let u = rng.below(UNITS);
                if expired.get() || !truth.borrow().deleted.contains(&u) {
                    continue;
                }
                let own = format!("{}/data", blob_dir(u));
                if check_write(&cells[n], Some(&keepers[n]), &own, &[]).is_ok() {
                    let mut t = truth.borrow_mut();
                    t.deleted.remove(&u);
                    t.renewed.insert(u);
                }
            }
            // A node is cut off from etcd, or comes back.
            88..=96 => {
                let n = rng.below(3);
                let mut g = etcd.lock().unwrap();
                if !g.cut_off.remove(&n) {
                    g.cut_off.insert(n);
                }
            }
            // The collector's lease lapses: it stopped deleting at half its TTL, then
            // the run's keys go, and every node's part in the run ends.
            _ => {
                if rng.chance(30) && !expired.get() {
                    sweep.fenced = true;
                    etcd.lock().unwrap().expire(LEASE);
                    for c in &cells {
                        *c.0.lock().unwrap() = None;
                    }
                    expired.set(true);
                }
            }
        }
        truth.borrow().check(seed, step);
    }
}

#[test]
fn no_node_admits_a_write_naming_what_the_cluster_sweep_deletes() {
    let seeds: u64 = std::env::var("CLUSTER_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let first: u64 = std::env::var("CLUSTER_MODEL_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for seed in first..first + seeds {
        run(seed);
    }
}

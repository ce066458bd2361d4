//! How a write during a sweep is checked against the doomed set, and in a cluster's run
//! kept on every node first (`ARCHITECTURE.md`, the online run across the cluster): the
//! units it would take back are worked out under the lock, kept through a
//! [`UnitKeeper`] (etcd) holding no lock, and taken back under the lock again once every
//! one of them is kept; a claim learnt meanwhile refuses the write.

use std::collections::HashSet;

use super::doomed::{ClaimedBatch, Doomed};

/// How a node's barrier keeps doomed units for the whole cluster before it takes them
/// back (a cluster's online run: etcd transactions against the collector's batch
/// claims). Called holding no lock.
pub trait UnitKeeper: Send + Sync + std::fmt::Debug {
    fn keep(&self, units: &[usize]) -> KeepAnswer;
}

/// What a [`UnitKeeper`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepAnswer {
    /// Every unit asked is kept on every node: the sweep never deletes it.
    Kept,
    /// The sweep claimed some of their batches first: what those batches hold.
    Claimed(Vec<ClaimedBatch>),
    /// The cluster could not be asked (etcd unreachable): the write is refused.
    Unknown(String),
}

/// How often a write asks the cluster again before it gives up (refused: the client
/// retries). Each round learns a claim or keeps more.
const KEEP_ROUNDS: usize = 8;

/// Where the doomed set lives for [`check_write`].
pub trait DoomedCell {
    /// Runs `f` on the doomed set under its lock; `None` when no sweep is on (the cell
    /// then did, under the same lock, what its phase wants of the write).
    fn with_doomed<R>(&self, f: impl FnOnce(&mut Doomed) -> R) -> Option<R>;
}

/// A write at `own` naming `named` during a sweep: `Err` (the path being deleted, or why
/// the cluster could not be asked) refuses it, taking nothing back; `Ok` admits it,
/// every doomed unit it reaches taken back, and with a `keeper` only once each of them
/// is kept on every node.
pub fn check_write(
    cell: &impl DoomedCell,
    keeper: Option<&dyn UnitKeeper>,
    own: &str,
    named: &[String],
) -> Result<(), String> {
    let mut kept: HashSet<usize> = HashSet::new();
    for _ in 0..KEEP_ROUNDS {
        let step = cell.with_doomed(|doomed| {
            // All or nothing: a refused write takes nothing back.
            if let Some(p) = doomed.refusal(own, named) {
                return Err(p.to_owned());
            }
            let missing: Vec<usize> = match keeper {
                None => Vec::new(),
                Some(_) => (doomed.reach(own, named).into_iter())
                    .filter(|i| !kept.contains(i))
                    .collect(),
            };
            if missing.is_empty() {
                doomed.take_back(own, named);
            }
            Ok(missing)
        });
        let missing = match step {
            None => return Ok(()),
            Some(Err(p)) => return Err(p),
            Some(Ok(m)) if m.is_empty() => return Ok(()),
            Some(Ok(m)) => m,
        };
        let Some(keeper) = keeper else {
            unreachable!("units are missing only with a keeper")
        };
        match keeper.keep(&missing) {
            KeepAnswer::Kept => kept.extend(missing),
            KeepAnswer::Claimed(batches) => {
                cell.with_doomed(|doomed| {
                    for b in &batches {
                        doomed.learn(b);
                    }
                });
                for b in &batches {
                    kept.extend(b.kept.iter().copied());
                }
            }
            KeepAnswer::Unknown(why) => return Err(format!("the cluster's sweep ({why})")),
        }
    }
    Err("the cluster's sweep (no answer after several rounds)".into())
}

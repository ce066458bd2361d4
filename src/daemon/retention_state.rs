//! The daemon's retention state: the access journal, the pruning stage of a run, and the
//! tags pruned within their grace (`pruned.json` in the state directory), which
//! `restore` puts back.

use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustix::fs::OFlags;

use super::access_journal::AccessJournal;
use crate::gc::Deleter;
use crate::layout::{Digest, RepoName, Store};
use crate::policy::access::{Millis, now_millis};
use crate::retention::Rules;
use crate::retention::prune::{PruneOutcome, PrunedTag, prune, restore};
use crate::state_dir::StateDir;

pub const PRUNED: &str = "pruned.json";

/// The daemon's retention state: the access journal and the prunes within their grace.
#[derive(Debug)]
pub struct RetentionState {
    access: Arc<AccessJournal>,
    state: Arc<StateDir>,
    /// Held while `pruned.json` is read and rewritten (a run's stage, a restore).
    pruned: Mutex<()>,
}

/// What the pruning stage hands the run.
#[derive(Debug, Default)]
pub struct Stage {
    pub outcome: PruneOutcome,
    /// Manifests that lost their last tag to pruning, within the grace: kept.
    pub keep_revisions: Vec<(RepoName, Digest)>,
}

fn read_pruned(state: &StateDir) -> io::Result<Vec<PrunedTag>> {
    let mut text = String::new();
    match state.open(PRUNED, OFlags::RDONLY) {
        Ok(mut f) => f.read_to_string(&mut text)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    serde_json::from_str(&text)
        .map_err(|e| io::Error::other(format!("{}: {e}", state.shown(PRUNED))))
}

fn write_pruned(state: &StateDir, v: &[PrunedTag]) -> io::Result<()> {
    let text = serde_json::to_vec_pretty(v).map_err(io::Error::other)?;
    state.replace(PRUNED, &text, true)
}

impl RetentionState {
    pub fn new(access: Arc<AccessJournal>, state: Arc<StateDir>) -> Self {
        RetentionState {
            access,
            state,
            pruned: Mutex::new(()),
        }
    }

    pub fn access(&self) -> &Arc<AccessJournal> {
        &self.access
    }

    /// The pruning stage of a run (the caller holds tag writes back): prunes what
    /// `rules` let go (nothing if `dry_run`), removes the revision links whose grace has
    /// passed, and records the prunes for their grace.
    pub fn stage(
        &self,
        store: &Store,
        deleter: &dyn Deleter,
        rules: &Rules,
        dry_run: bool,
    ) -> Stage {
        // Every node's times in cluster mode (a pull served by any node counts), read
        // from etcd before the lock a restore waits on is taken.
        let others = self.access.others();
        let _held = self.pruned.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_millis();
        let earlier = read_pruned(&self.state).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the tags pruned earlier; none is kept for its grace");
            Vec::new()
        });
        let grace = rules.grace.as_millis() as Millis;
        let (within, expired): (Vec<_>, Vec<_>) =
            earlier.into_iter().partition(|p| now - p.pruned_at < grace);
        let result = match (self.access.recording(), rules.judges_pulls()) {
            (false, Some(i)) => Err(format!(
                "pruning skipped: pulls are not recorded (access_times = false), and retention.policy[{i}] keeps tags by their pulls"
            )),
            _ => others.map_err(|e| {
                format!("pruning skipped: the other nodes' access times cannot be read ({e})")
            }),
        }
        .map(|others| {
            self.access.with_merged(others, |t| {
                prune(store, rules, t, now, deleter, &expired, dry_run)
            })
        });
        let failed = |why: String| {
            tracing::error!(error = %why, "retention: nothing pruned");
            let mut o = PruneOutcome::default();
            o.warnings.push(why);
            o
        };
        let (outcome, pruned_nothing) = match result {
            Ok(Ok(o)) => (o, dry_run),
            Ok(Err(e)) => (failed(format!("pruning failed: {e}")), true),
            Err(e) => (failed(e), true),
        };
        let mut kept = within;
        if pruned_nothing {
            // Nothing removed: the expired records stay for a later run.
            kept.extend(expired);
        } else {
            kept.extend(outcome.pruned.iter().cloned());
            if let Err(e) = write_pruned(&self.state, &kept) {
                tracing::error!(error = %e, "cannot record the pruned tags; their grace and restore are lost");
            }
        }
        let keep_revisions = kept
            .iter()
            .filter(|p| p.last_tag && now - p.pruned_at < grace)
            .filter_map(|p| Some((RepoName::new(&p.repository).ok()?, p.digest()?)))
            .collect();
        Stage {
            outcome,
            keep_revisions,
        }
    }

    /// The tags pruned within their grace.
    pub fn pruned(&self) -> io::Result<Vec<PrunedTag>> {
        read_pruned(&self.state)
    }

    /// Puts `repo:tag` back on the manifest it named, through `root` (the mount).
    pub fn restore(
        &self,
        root: &Path,
        repo: &str,
        tag: &str,
        grace: std::time::Duration,
    ) -> Result<PrunedTag, String> {
        let _held = self.pruned.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = read_pruned(&self.state).map_err(|e| e.to_string())?;
        let now = now_millis();
        let Some(i) = all
            .iter()
            .rposition(|p| p.repository == repo && p.tag == tag)
        else {
            return Err(format!(
                "{repo}:{tag} was not pruned by retention (or its grace has passed)"
            ));
        };
        if now - all[i].pruned_at >= grace.as_millis() as Millis {
            return Err(format!(
                "{repo}:{tag}: its grace has passed; it cannot be restored"
            ));
        }
        let p = all.remove(i);
        let d = p
            .digest()
            .ok_or_else(|| format!("{repo}:{tag}: bad digest {}", p.digest))?;
        restore(root, repo, tag, &d)?;
        write_pruned(&self.state, &all).map_err(|e| e.to_string())?;
        tracing::info!(repo, tag, digest = %d, "retention: tag restored");
        Ok(p)
    }
}

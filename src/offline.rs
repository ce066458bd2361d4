//! `regfs gc --offline`: one collection run on a store no daemon serves. With the
//! daemon's state directory ([`OfflineRetention`]) it starts with the same pruning stage
//! as the daemon's runs (`daemon::retention_state`): the same rules, the same dry-run
//! default, the same grace for the manifests pruning leaves untagged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use thiserror::Error;

use crate::daemon::access_journal::AccessJournal;
use crate::daemon::retention_state::RetentionState;
use crate::gc::{self, GcError, Options, Progress, Report, Unattended};
use crate::layout::Store;
use crate::lock::{LockError, lock_store};
use crate::policy::access::AccessRecorder;
use crate::retention::Rules;
use crate::retention::prune::PruneOutcome;
use crate::runtime::compose::OpenedStore;
use crate::state_dir::StateDir;

#[derive(Debug, Error)]
pub enum OfflineError {
    #[error("storage directory {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} is a FUSE mount (a regfs mount point?); give the backing directory, or run `regfs gc MOUNTPOINT` to collect through the daemon"
    )]
    IsMount(String),
    #[error(
        "{storage} is served by a regfs daemon mounted at {mountpoint}; run `regfs gc {mountpoint}` to collect through it"
    )]
    Served { storage: String, mountpoint: String },
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error(transparent)]
    Gc(#[from] GcError),
    #[error(transparent)]
    Fs(#[from] crate::error::FsError),
    #[error("state directory {path}: {why}")]
    State { path: String, why: String },
}

/// Tag retention for an offline run: the rules (`[retention]` of the configuration
/// file) and the daemon's state directory, whose pull times they judge by and where
/// the tags pruned within their grace are kept (so `regfs retention restore` and the
/// daemon's later runs know them).
#[derive(Debug, Clone)]
pub struct OfflineRetention {
    pub rules: Rules,
    pub state_dir: PathBuf,
}

/// The pruning stage, before marking: the options keep the manifests pruning left
/// untagged within their grace.
fn prune_first(
    store: &Store,
    deleter: &dyn gc::Deleter,
    r: &OfflineRetention,
    opts: &mut Options,
) -> Result<PruneOutcome, OfflineError> {
    let state_err = |why: String| OfflineError::State {
        path: r.state_dir.display().to_string(),
        why,
    };
    let state = Arc::new(StateDir::prepare(&r.state_dir).map_err(|e| state_err(e.to_string()))?);
    // No mount: nothing is recorded; the journal gives the daemon's times.
    let journal = AccessJournal::open(state.clone(), AccessRecorder::new(), true)
        .map_err(|e| state_err(format!("access journal: {e}")))?;
    let retention = RetentionState::new(Arc::new(journal), state);
    let dry_run = opts.dry_run || r.rules.dry_run;
    let mut stage = retention.stage(store, deleter, &r.rules, dry_run);
    stage.outcome.dry_run = dry_run;
    opts.keep_revisions = stage.keep_revisions;
    Ok(stage.outcome)
}

/// The report, and with `list` every path deleted (or to be deleted).
#[derive(Debug, Serialize)]
pub struct Outcome {
    #[serde(flatten)]
    pub report: Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Vec<String>>,
    /// The pruning stage (with [`OfflineRetention`]): the tags pruned (or, dry, that
    /// would be).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<PruneOutcome>,
}

pub fn run(
    storage: &Path,
    opts: &Options,
    retention: Option<&OfflineRetention>,
    list: bool,
    progress: &dyn Progress,
) -> Result<Outcome, OfflineError> {
    let shown = storage.display().to_string();
    let canonical = std::fs::canonicalize(storage).map_err(|source| OfflineError::Open {
        path: shown.clone(),
        source,
    })?;
    let mounts = crate::mount::mounts().unwrap_or_default();
    let fuse = |m: &&crate::mount::MountEntry| m.fstype.starts_with("fuse");
    // A regfs daemon names its mount after the store it serves.
    if let Some(m) = mounts
        .iter()
        .filter(fuse)
        .find(|m| Path::new(&m.source) == canonical)
    {
        return Err(OfflineError::Served {
            storage: shown,
            mountpoint: m.mountpoint.display().to_string(),
        });
    }
    if mounts
        .iter()
        .filter(fuse)
        .any(|m| m.mountpoint == canonical)
    {
        return Err(OfflineError::IsMount(shown));
    }
    let store = Store::open(&canonical).map_err(|source| OfflineError::Open {
        path: shown.clone(),
        source,
    })?;
    lock_store(store.root_fd(), &shown, false)?;
    let deleter = OpenedStore::open(&canonical)?.deleter();
    let mut opts = opts.clone();
    // The store's lock is held: no registry writes a tag while tags are pruned.
    let retention = match retention {
        Some(r) => Some(prune_first(&store, &deleter, r, &mut opts)?),
        None => None,
    };
    // Nothing stops an offline run but the process ending.
    let planned = match gc::mark(&store, &opts, &Unattended, progress)? {
        gc::Marked::Planned(p) => p,
        gc::Marked::Interrupted(report) => {
            return Ok(Outcome {
                report,
                deleted: None,
                retention,
            });
        }
    };
    let deleted = list.then(|| {
        planned
            .plan
            .paths()
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    });
    let report = gc::sweep(planned, &deleter, &Unattended, progress)?;
    Ok(Outcome {
        report,
        deleted,
        retention,
    })
}

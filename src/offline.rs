//! `regfs gc --offline`: one collection run on a store no daemon serves.

use std::path::Path;

use serde::Serialize;
use thiserror::Error;

use crate::gc::{self, GcError, Options, Progress, Report, Unattended};
use crate::layout::Store;
use crate::lock::{LockError, lock_store};
use crate::runtime::compose::OpenedStore;

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
}

/// The report, and with `list` every path deleted (or to be deleted).
#[derive(Debug, Serialize)]
pub struct Outcome {
    #[serde(flatten)]
    pub report: Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Vec<String>>,
}

pub fn run(
    storage: &Path,
    opts: &Options,
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
    // Nothing stops an offline run but the process ending.
    let planned = match gc::mark(&store, opts, &Unattended, progress)? {
        gc::Marked::Planned(p) => p,
        gc::Marked::Interrupted(report) => {
            return Ok(Outcome {
                report,
                deleted: None,
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
    Ok(Outcome { report, deleted })
}

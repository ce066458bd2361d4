//! The composition root of a served store: which policies the filesystem runs under, in
//! which order, and who keeps the handles on them. The daemon, the offline collector and
//! the tests build a store through these functions only, so the chain is written once.
//!
//! The chain, outermost first (each layer asks the one inside it, as virtiofsd composes
//! its read-only layer around the passthrough):
//!
//! 0. [`AccessRecording`]: notes tag pushes and tag and manifest pulls for retention.
//!    Outermost, so it notes only what every inner layer admitted (a push the gate or
//!    the link check refused is no push); it refuses nothing. Left out when the operator
//!    turns access times off (`access_times = false`);
//! 1. [`LinkRefusal`]: refuses link writes that name a blob without data, or a tag whose
//!    manifest the repository does not hold;
//! 2. [`OnlineBarrier`]: records what an online run must keep, holds writes for its
//!    pause and refuses writes naming what its sweep deletes;
//! 3. [`WriteGate`]: closes the store for read-only epochs.
//!
//! The filesystem core (`fs`) sees only `Arc<dyn StorePolicy>`. The gate goes from here
//! to the daemon (its epochs) and the cluster member; the online handle to the daemon's
//! online runs. The collector's sweep deletes through [`SweepDeleter`], which this root
//! implements over the filesystem, so `gc` never names it.

use std::path::Path;
use std::sync::Arc;

use crate::error::{FsError, FsResult};
use crate::fs::StorageFs;
use crate::gc::{Deleter, Removed};
use crate::layout::Store;
use crate::policy::StorePolicy;
use crate::policy::access::{AccessRecorder, AccessRecording};
use crate::policy::gate::WriteGate;
use crate::policy::links::LinkRefusal;
use crate::policy::online::{OnlineBarrier, OnlineCollection};

/// The policy chain over a store, and the handles its owners keep.
#[derive(Debug, Clone)]
pub struct StorePolicies {
    /// What the filesystem asks.
    pub chain: Arc<dyn StorePolicy>,
    /// The write gate of read-only epochs: the daemon and a cluster member close and
    /// reopen it.
    pub gate: Arc<WriteGate>,
    /// The online collector's handle on the barrier.
    pub online: OnlineCollection,
    /// Pushes and pulls noted since the daemon's journal last took them.
    pub access: Arc<AccessRecorder>,
    /// Whether the chain notes pushes and pulls at all (`access` stays empty if not).
    pub records_access: bool,
}

impl StorePolicies {
    /// Builds the chain over the store at `root`, around `gate`; with `record_access`,
    /// pushes and pulls are noted for retention.
    pub fn compose(root: &Path, gate: WriteGate, record_access: bool) -> FsResult<StorePolicies> {
        let open = || {
            Store::open(root)
                .map_err(|e| FsError::backing("open store", root.display().to_string(), e))
        };
        let online = OnlineBarrier::new(open()?, gate.clone());
        let collection = online.collection();
        let access = AccessRecorder::new();
        let links = LinkRefusal::new(open()?, online);
        let chain: Arc<dyn StorePolicy> = if record_access {
            Arc::new(AccessRecording::new(access.clone(), links))
        } else {
            Arc::new(links)
        };
        Ok(StorePolicies {
            chain,
            gate: Arc::new(gate),
            online: collection,
            access,
            records_access: record_access,
        })
    }
}

/// A store opened without a mount (the offline collector, tests): the filesystem core
/// under the composed chain.
#[derive(Debug)]
pub struct OpenedStore {
    pub fs: Arc<StorageFs>,
    pub policies: StorePolicies,
}

/// The filesystem core over the store at `root` under the composed chain, with an open
/// write gate, and the handles on the chain.
pub fn open_fs(root: &Path) -> FsResult<(StorageFs, StorePolicies)> {
    let policies = StorePolicies::compose(root, WriteGate::new(), true)?;
    let fs = StorageFs::new(root, policies.chain.clone())?;
    Ok((fs, policies))
}

impl OpenedStore {
    /// Opens the store at `root` with an open write gate.
    pub fn open(root: &Path) -> FsResult<OpenedStore> {
        let (fs, policies) = open_fs(root)?;
        Ok(OpenedStore {
            fs: Arc::new(fs),
            policies,
        })
    }

    pub fn gate(&self) -> &WriteGate {
        &self.policies.gate
    }

    pub fn online(&self) -> &OnlineCollection {
        &self.policies.online
    }

    /// What the sweep deletes through.
    pub fn deleter(&self) -> SweepDeleter {
        SweepDeleter(self.fs.clone())
    }
}

/// The collector's deletions, carried out by the filesystem core so the kernel is told
/// of each one (a stat through the mount sees it at once).
#[derive(Debug, Clone)]
pub struct SweepDeleter(pub Arc<StorageFs>);

impl Deleter for SweepDeleter {
    fn remove_tree(&self, rel: &Path) -> Result<Removed, FsError> {
        let r = self.0.remove_tree(rel)?;
        Ok(Removed {
            files: r.files,
            dirs: r.dirs,
            bytes: r.bytes,
        })
    }

    fn remove_empty_dir(&self, rel: &Path) -> Result<bool, FsError> {
        self.0.remove_empty_dir(rel)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    /// A pull (an open of a tag's current link for reading) as the registry makes it.
    fn pull_tag(fs: &StorageFs) {
        let mut id = 1;
        for name in [
            "docker",
            "registry",
            "v2",
            "repositories",
            "app",
            "_manifests",
            "tags",
            "v1",
            "current",
            "link",
        ] {
            id = fs.lookup(id, OsStr::new(name)).unwrap().attr.ino.0;
        }
        let opened = fs.open(id, libc::O_RDONLY, None).unwrap();
        fs.release(opened.fh).unwrap();
    }

    #[test]
    fn pulls_are_noted_only_when_access_times_are_on() {
        let dir = tempfile::tempdir().unwrap();
        let tag = dir
            .path()
            .join("docker/registry/v2/repositories/app/_manifests/tags/v1/current");
        std::fs::create_dir_all(&tag).unwrap();
        let digest = format!("sha256:{}", "ab".repeat(32));
        std::fs::write(tag.join("link"), &digest).unwrap();
        for on in [true, false] {
            let policies = StorePolicies::compose(dir.path(), WriteGate::new(), on).unwrap();
            let fs = StorageFs::new(dir.path(), policies.chain.clone()).unwrap();
            pull_tag(&fs);
            assert_eq!(policies.records_access, on);
            assert_eq!(!policies.access.take().is_empty(), on, "access_times {on}");
        }
    }
}

//! Access times shared between the nodes serving one store (cluster mode): a pull served
//! by any node counts when the collector's pruning stage decides. The daemon knows the
//! sharing only as this trait; `crate::cluster` implements it over etcd.
//!
//! Each node publishes, in the background (the access journal's thread, after a batch is
//! written, or a member before it acknowledges an epoch), the latest times of each
//! repository its batches touched; the collector reads every node's and keeps the later
//! time of each key.

use crate::retention::AccessTimes;
use crate::retention::times::RepoTimes;

/// Where the nodes' access times meet.
pub trait AccessShare: Send + Sync + std::fmt::Debug {
    /// Publishes this node's times of these repositories (each whole: what it holds
    /// replaces what this node published before for it).
    fn publish(&self, repos: &[(String, RepoTimes)]) -> Result<(), String>;
    /// The times every other node has published, merged (the later of two for each key).
    fn others(&self) -> Result<AccessTimes, String>;
}

//! The cluster's runs for `regfs jobs` on any node: each collector records its job in
//! etcd (`<prefix>jobs/<epoch>`); a node's daemon leaves in its state directory where
//! that etcd is (`cluster.json`), so the command, which reads the state directory and
//! not the daemon, can add the runs other nodes collected to this node's own history.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ClusterConfig;
use super::etcd::Etcd;
use super::records::Keys;
use crate::daemon::job::Job;
use crate::state_dir::StateDir;

/// The state directory's note of the cluster.
pub const FILE: &str = "cluster.json";

#[derive(Debug, Serialize, Deserialize)]
struct Note {
    endpoints: Vec<String>,
    prefix: String,
    node: String,
    /// Where etcd's CA, client certificate and password are (paths, never secrets).
    #[serde(default)]
    access: super::etcd::Access,
}

/// Written by the daemon at start (0600 like every file it makes there).
pub fn write_note(dir: &StateDir, cfg: &ClusterConfig) -> std::io::Result<()> {
    let note = Note {
        endpoints: cfg.endpoints.clone(),
        prefix: cfg.prefix.clone(),
        node: cfg.node.clone(),
        access: cfg.access.clone(),
    };
    dir.replace(FILE, &serde_json::to_vec(&note).unwrap_or_default(), false)
}

/// The runs other nodes of this node's cluster collected, oldest first; `None` when the
/// state directory names no cluster (a node alone).
pub fn other_nodes_runs(state_dir: &Path) -> Option<Result<Vec<Job>, String>> {
    let dir = StateDir::for_reading(state_dir).ok()?;
    let mut text = String::new();
    dir.open(FILE, rustix::fs::OFlags::RDONLY)
        .ok()?
        .take(1 << 20)
        .read_to_string(&mut text)
        .ok()?;
    Some(read_runs(&text, &dir.shown(FILE)))
}

fn read_runs(note: &str, shown: &str) -> Result<Vec<Job>, String> {
    let note: Note = serde_json::from_str(note).map_err(|e| format!("{shown}: {e}"))?;
    let etcd = Etcd::with_access(&note.endpoints, &note.access, Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    let kvs = etcd
        .list(&Keys::new(&note.prefix).jobs())
        .map_err(|e| format!("the cluster's runs: {e}"))?;
    Ok(kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Job>(&kv.value).ok())
        .filter(|j| j.cluster.as_ref().is_none_or(|c| c.collector != note.node))
        .collect())
}

//! The access times of every node, in etcd (`<prefix>access/<node>/<repo>`, see
//! [`records`](super::records)): the daemon's [`AccessShare`] in cluster mode. A node's
//! journal thread publishes the repositories its batches touched (each repository's
//! latest times whole, so a put replaces what the node published before); the collector
//! reads every other node's before its pruning stage decides.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::etcd::Etcd;
use super::records::Keys;
use crate::daemon::access_share::AccessShare;
use crate::layout::Digest;
use crate::policy::access::Millis;
use crate::retention::AccessTimes;
use crate::retention::times::RepoTimes;

/// Repositories put in one transaction (etcd refuses more than 128 operations in one).
const PUTS_PER_TXN: usize = 64;
/// Bytes of values put in one transaction (etcd refuses a request over 1.5 MiB by
/// default). A repository whose times alone exceed it is refused by etcd, and retried
/// with each batch; the others are published.
const BYTES_PER_TXN: usize = 1024 * 1024;

/// One node's times of one repository, as kept in etcd.
#[derive(Debug, Serialize, Deserialize)]
pub struct SharedTimes {
    pub node: String,
    pub repository: String,
    /// Tag → when its current link was last written.
    #[serde(default)]
    pub pushed: BTreeMap<String, Millis>,
    /// Tag → when its current link was last read.
    #[serde(default)]
    pub pulled: BTreeMap<String, Millis>,
    /// Manifest digest → when its revision link was last read.
    #[serde(default)]
    pub manifests: BTreeMap<String, Millis>,
}

impl SharedTimes {
    fn of(node: &str, repo: &str, t: &RepoTimes) -> SharedTimes {
        let copy = |m: &std::collections::HashMap<String, Millis>| {
            m.iter().map(|(k, v)| (k.clone(), *v)).collect()
        };
        SharedTimes {
            node: node.to_owned(),
            repository: repo.to_owned(),
            pushed: copy(&t.pushed),
            pulled: copy(&t.tag_pulled),
            manifests: t
                .manifest_pulled
                .iter()
                .map(|(d, v)| (d.to_string(), *v))
                .collect(),
        }
    }

    fn times(&self) -> RepoTimes {
        let copy = |m: &BTreeMap<String, Millis>| m.iter().map(|(k, v)| (k.clone(), *v)).collect();
        RepoTimes {
            pushed: copy(&self.pushed),
            tag_pulled: copy(&self.pulled),
            manifest_pulled: self
                .manifests
                .iter()
                .filter_map(|(d, v)| Some((Digest::parse(d).ok()?, *v)))
                .collect(),
        }
    }
}

/// The nodes' access times in etcd, as one node sees them.
pub struct EtcdAccess {
    etcd: Etcd,
    keys: Keys,
    node: String,
}

impl std::fmt::Debug for EtcdAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAccess")
            .field("keys", &self.keys)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl EtcdAccess {
    pub fn new(etcd: Etcd, keys: Keys, node: String) -> EtcdAccess {
        EtcdAccess { etcd, keys, node }
    }
}

impl AccessShare for EtcdAccess {
    fn publish(&self, repos: &[(String, RepoTimes)]) -> Result<(), String> {
        let mut failed = Vec::new();
        let mut put = |batch: &mut Vec<(String, Vec<u8>)>| {
            if let Err(e) = self.etcd.put_all(batch) {
                failed.push(format!("{} repositories: {e}", batch.len()));
            }
            batch.clear();
        };
        let (mut batch, mut bytes) = (Vec::new(), 0);
        for (repo, t) in repos {
            let value =
                serde_json::to_vec(&SharedTimes::of(&self.node, repo, t)).unwrap_or_default();
            if !batch.is_empty()
                && (batch.len() == PUTS_PER_TXN || bytes + value.len() > BYTES_PER_TXN)
            {
                put(&mut batch);
                bytes = 0;
            }
            bytes += value.len();
            batch.push((self.keys.access_of(&self.node, repo), value));
        }
        if !batch.is_empty() {
            put(&mut batch);
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "cluster: publishing access times: {}",
                failed.join("; ")
            ))
        }
    }

    fn others(&self) -> Result<AccessTimes, String> {
        let kvs = self
            .etcd
            .list(&self.keys.access())
            .map_err(|e| format!("cluster: reading the nodes' access times: {e}"))?;
        let mut all = AccessTimes::default();
        for kv in kvs {
            match serde_json::from_slice::<SharedTimes>(&kv.value) {
                Ok(s) if s.node == self.node => {}
                Ok(s) => all.merge_repo(&s.repository, &s.times()),
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "cluster: access times not understood; skipped")
                }
            }
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::access::Accessed;

    #[test]
    fn shared_times_read_back_as_they_were_published() {
        let d = Digest::of(b"m");
        let mut t = AccessTimes::default();
        t.apply(
            &Accessed::TagPulled {
                repo: "a/b".into(),
                tag: "v1".into(),
            },
            5,
        );
        t.apply(
            &Accessed::ManifestPulled {
                repo: "a/b".into(),
                digest: d,
            },
            9,
        );
        t.apply(
            &Accessed::TagPushed {
                repo: "a/b".into(),
                tag: "v2".into(),
            },
            3,
        );
        let shared = SharedTimes::of("n2", "a/b", t.repo("a/b").unwrap());
        let text = serde_json::to_vec(&shared).unwrap();
        let back: SharedTimes = serde_json::from_slice(&text).unwrap();
        let mut again = AccessTimes::default();
        again.merge_repo(&back.repository, &back.times());
        assert_eq!(again.pulled("a/b", "v1", None), Some(5));
        assert_eq!(again.pulled("a/b", "v1", Some(&d)), Some(9));
        assert_eq!(again.pushed("a/b", "v2"), Some(3));
    }

    #[test]
    fn no_two_node_and_repository_pairs_share_a_key() {
        let k = Keys::new("/regfs/");
        assert_ne!(k.access_of("a/b", "c"), k.access_of("a", "b/c"));
        assert_ne!(k.access_of("a%2Fb", "c"), k.access_of("a/b", "c"));
    }
}

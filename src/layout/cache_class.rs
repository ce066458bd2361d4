//! What a kernel may keep of a node when other daemons change the store too (cluster
//! mode: several mounts over one backing directory). Told by the node's role alone, from
//! how the registry and the collector treat that kind of node over its life; the
//! filesystem turns a class into cache times (`fs::caching`).
//!
//! Why each role is in its class:
//! - The store's skeleton (`docker/registry/v2`, `blobs/sha256`, `repositories`) and a
//!   repository's own directories (the repository, `_manifests`, `revisions/sha256`,
//!   `tags`, `_layers/sha256`, `_uploads`) are made once and never removed or replaced:
//!   neither the registry nor the collector (nor retention) removes them (the registry
//!   and the collector remove an upload, `_uploads/<id>`, never `_uploads`). A name once
//!   found there stays the same directory, so an entry found may be kept. What they list
//!   changes.
//! - Blob data, blob directories and their fan-out directories are named by a digest:
//!   the bytes under that name never change (a blob is committed by a rename of complete
//!   data) and only the collector removes them (a fan-out once empty). Another node's
//!   collector may remove one any moment, so the name must be asked again at every
//!   lookup (a kept entry would report a deleted blob present, and a registry that
//!   believes a blob exists skips writing it); what is found under the name may be kept.
//! - Links, tags, revisions' and layers' link directories, uploads (what is in
//!   `_uploads`), temporary files and anything outside the layout are written,
//!   rewritten in place, renamed over and removed by pushes, deletes and the collector on
//!   any node: their names are never kept. (A kept name of an upload's `data` would even
//!   let a write through this node land in the blob another node committed it as.)
//!
//! No class keeps the absence of a name: any node may create it next.

use super::role::Role;

/// How a node may change once it exists, whoever changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheClass {
    /// Never removed nor replaced once made: its entry and attributes may be kept.
    Permanent,
    /// Named by a digest, never changed, removed only by the collector: its name must be
    /// looked up again each time, its attributes and data may be kept.
    Collected,
    /// Changed, replaced or removed by any node any moment: nothing may be kept.
    Changing,
}

impl Role {
    /// What a kernel may keep of a node of this role when other nodes change the store.
    pub fn cache_class(self) -> CacheClass {
        use Role::*;
        match self {
            StoreRoot | Docker | Registry | V2 | Blobs | BlobsSha256 | Repositories | RepoDir
            | Manifests | Revisions | RevisionsSha256 | Tags | Layers | LayersSha256 | Uploads => {
                CacheClass::Permanent
            }
            BlobFanOut(_) | BlobDir(_) | BlobData(_) => CacheClass::Collected,
            Revision(_) | RevisionLink(_) | Tag | TagCurrent | TagCurrentLink | TagIndex
            | TagIndexSha256 | TagIndexEntry(_) | TagIndexLink(_) | LayerDir(_) | LayerLink(_)
            | Upload | UploadData | UploadEntry | TempFile | Unknown | UnknownUpload => {
                CacheClass::Changing
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CacheClass::*;
    use super::*;

    const HEX: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";

    fn class(rel: &str) -> CacheClass {
        Role::of_path(rel).cache_class()
    }

    #[test]
    fn blobs_are_collected_and_only_the_skeleton_above_them_is_permanent() {
        let blob = format!("docker/registry/v2/blobs/sha256/0a/{HEX}");
        for p in ["", "docker", "docker/registry", "docker/registry/v2"] {
            assert_eq!(class(p), Permanent, "{p:?}");
        }
        assert_eq!(class("docker/registry/v2/blobs"), Permanent);
        assert_eq!(class("docker/registry/v2/blobs/sha256"), Permanent);
        // The collector removes an empty fan-out directory: a kept entry of it would
        // hide the blobs of the one made again after it.
        assert_eq!(class("docker/registry/v2/blobs/sha256/0a"), Collected);
        assert_eq!(class(&blob), Collected);
        assert_eq!(class(&format!("{blob}/data")), Collected);
        // The registry (3.1+) writes `data.<uuid>.tmp` first, then renames it to `data`.
        assert_eq!(class(&format!("{blob}/data.5f1d.tmp")), Changing);
    }

    #[test]
    fn every_link_tag_and_upload_is_changing() {
        let repo = "docker/registry/v2/repositories/team/app";
        let changing = [
            format!("{repo}/_manifests/revisions/sha256/{HEX}"),
            format!("{repo}/_manifests/revisions/sha256/{HEX}/link"),
            format!("{repo}/_manifests/tags/v1"),
            format!("{repo}/_manifests/tags/v1/current"),
            format!("{repo}/_manifests/tags/v1/current/link"),
            format!("{repo}/_manifests/tags/v1/current/link.77ab.tmp"),
            format!("{repo}/_manifests/tags/v1/index"),
            format!("{repo}/_manifests/tags/v1/index/sha256"),
            format!("{repo}/_manifests/tags/v1/index/sha256/{HEX}"),
            format!("{repo}/_manifests/tags/v1/index/sha256/{HEX}/link"),
            format!("{repo}/_layers/sha256/{HEX}"),
            format!("{repo}/_layers/sha256/{HEX}/link"),
            format!("{repo}/_uploads/8c1e"),
            format!("{repo}/_uploads/8c1e/data"),
            format!("{repo}/_uploads/8c1e/startedat"),
            format!("{repo}/_uploads/8c1e/hashstates/sha256/0"),
            // Outside the layout: nothing is known of it, so nothing is kept.
            "docker/registry/v2/elsewhere".to_string(),
            "docker/registry/v2/blobs/sha256/zz".to_string(),
            format!("{repo}/_other"),
            format!("{repo}/_other/_uploads/x"),
        ];
        for p in &changing {
            assert_eq!(class(p), Changing, "{p}");
        }
    }

    #[test]
    fn a_repositorys_own_directories_are_permanent() {
        let repo = "docker/registry/v2/repositories/team/app";
        for p in [
            "docker/registry/v2/repositories".to_string(),
            "docker/registry/v2/repositories/team".to_string(),
            repo.to_string(),
            format!("{repo}/_manifests"),
            format!("{repo}/_manifests/revisions"),
            format!("{repo}/_manifests/revisions/sha256"),
            format!("{repo}/_manifests/tags"),
            format!("{repo}/_layers"),
            format!("{repo}/_layers/sha256"),
            // The registry and the collector remove uploads in it, never it.
            format!("{repo}/_uploads"),
        ] {
            assert_eq!(class(&p), Permanent, "{p}");
        }
    }
}

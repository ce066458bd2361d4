//! How long the kernel may keep what it learns of a node: the one place that chooses,
//! from the node's [`CacheClass`] (its layout role) and whether the store is shared.
//!
//! A daemon alone sees every change of its store (they all go through its mount, and
//! its own deletions invalidate), so the kernel keeps everything for `ttl`, absent
//! names included, and directory listings across opens.
//!
//! Over a shared store (cluster mode) other daemons change the store behind this
//! kernel's back, so it keeps only what no other node can make wrong:
//!
//! | class | entry (the name) | attributes | absent name | listing across opens | data across opens |
//! |---|---|---|---|---|---|
//! | `Permanent` (skeleton, a repository's own directories) | `ttl` | `ttl` | no | no | – |
//! | `Collected` (blob data, blob and fan-out directories) | no: asked at every lookup | `ttl` | no | no | yes (blob data) |
//! | `Changing` (links, tags, uploads, anything else) | no | no | no | no | no |
//!
//! A kept `Collected` attribute is safe because the name is asked again first: a lookup
//! of a removed blob answers ENOENT and the kernel drops the node; one made again under
//! the same digest holds the same bytes. A directory's listing is not kept because
//! whether it is still right is judged by its mtime, which a kept attribute would not
//! show.

use std::time::Duration;

use crate::layout::{CacheClass, Role};

/// What the kernel may keep of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheTimes {
    /// How long the name may be used without asking (0: each lookup asks the daemon).
    pub entry: Duration,
    /// How long the attributes may be used without asking.
    pub attr: Duration,
}

impl CacheTimes {
    /// For a reply that gives the kernel one time for both (a create, an entry of a
    /// listing): the shorter, so neither is kept longer than it may be.
    pub fn shorter(&self) -> Duration {
        self.entry.min(self.attr)
    }
}

/// The kernel cache policy of one mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caching {
    ttl: Duration,
    shared: bool,
}

impl Caching {
    /// `ttl`: how long what may be kept is kept; `shared`: other daemons serve the same
    /// store (cluster mode).
    pub fn new(ttl: Duration, shared: bool) -> Caching {
        Caching { ttl, shared }
    }

    /// For a node of `role` found (looked up, created or listed).
    pub fn found(&self, role: Role) -> CacheTimes {
        if !self.shared {
            return CacheTimes {
                entry: self.ttl,
                attr: self.ttl,
            };
        }
        match role.cache_class() {
            CacheClass::Permanent => CacheTimes {
                entry: self.ttl,
                attr: self.ttl,
            },
            CacheClass::Collected => CacheTimes {
                entry: Duration::ZERO,
                attr: self.ttl,
            },
            CacheClass::Changing => CacheTimes {
                entry: Duration::ZERO,
                attr: Duration::ZERO,
            },
        }
    }

    /// How long the absence of a name may be kept; `None`: not at all (the lookup
    /// answers ENOENT, which the kernel does not keep).
    pub fn absent(&self) -> Option<Duration> {
        (!self.shared && !self.ttl.is_zero()).then_some(self.ttl)
    }

    /// Whether the kernel may keep a directory's listing across opens (it checks the
    /// directory's mtime before using it).
    pub fn keeps_listing(&self) -> bool {
        !self.shared
    }

    /// Whether the kernel may keep the cached data of a file read through the page cache
    /// across opens: only a blob's, whose bytes never change under its name.
    pub fn keeps_data(&self, role: Role) -> bool {
        matches!(role, Role::BlobData(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Digest;

    const TTL: Duration = Duration::from_secs(60);
    const ZERO: Duration = Duration::ZERO;

    fn times(entry: Duration, attr: Duration) -> CacheTimes {
        CacheTimes { entry, attr }
    }

    #[test]
    fn a_daemon_alone_keeps_everything_for_its_ttl() {
        let alone = Caching::new(TTL, false);
        for role in [
            Role::TagCurrentLink,
            Role::BlobData(Digest([1; 32])),
            Role::Repositories,
            Role::UploadData,
            Role::Unknown,
        ] {
            assert_eq!(alone.found(role), times(TTL, TTL), "{role:?}");
        }
        assert_eq!(alone.absent(), Some(TTL));
        assert!(alone.keeps_listing());
        // `--attr-timeout 0` alone keeps nothing, absent names included.
        assert_eq!(Caching::new(ZERO, false).absent(), None);
    }

    #[test]
    fn over_a_shared_store_only_what_no_node_can_make_wrong_is_kept() {
        let shared = Caching::new(TTL, true);
        let d = Digest([7; 32]);
        assert_eq!(shared.found(Role::Repositories), times(TTL, TTL));
        assert_eq!(shared.found(Role::Tags), times(TTL, TTL));
        assert_eq!(shared.found(Role::BlobData(d)), times(ZERO, TTL));
        assert_eq!(shared.found(Role::BlobDir(d)), times(ZERO, TTL));
        assert_eq!(shared.found(Role::BlobFanOut(7)), times(ZERO, TTL));
        for role in [
            Role::TagCurrentLink,
            Role::Tag,
            Role::TagIndexLink(d),
            Role::RevisionLink(d),
            Role::Revision(d),
            Role::LayerLink(d),
            Role::LayerDir(d),
            Role::Uploads,
            Role::Upload,
            Role::UploadData,
            Role::UploadEntry,
            Role::TempFile,
            Role::Unknown,
        ] {
            assert_eq!(shared.found(role), times(ZERO, ZERO), "{role:?}");
        }
        assert_eq!(
            shared.absent(),
            None,
            "another node may create any name next"
        );
        assert!(!shared.keeps_listing());
    }

    #[test]
    fn only_blob_data_keeps_its_pages_across_opens() {
        for shared in [false, true] {
            let c = Caching::new(TTL, shared);
            assert!(c.keeps_data(Role::BlobData(Digest([2; 32]))));
            for role in [Role::TagCurrentLink, Role::UploadData, Role::Unknown] {
                assert!(!c.keeps_data(role), "{role:?}");
            }
        }
    }
}

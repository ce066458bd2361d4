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
//! | `Changing` directory (a tag's, an upload's, a link's) | no | `ttl` | no | no | – |
//! | `Changing` file (links, an upload's files, anything else) | no | no | no | no | no |
//!
//! Kept attributes of a node whose name is asked at every lookup are never older than
//! that lookup: the kernel walks a path asking for each such name, and the answer
//! carries the attributes. A removed blob answers ENOENT and the kernel drops the node;
//! one made again under the same digest holds the same bytes. What a `Changing`
//! directory's kept attributes may miss between two walks is its mtime, which nothing
//! reads: its listing is not kept across opens (the kernel would judge a kept listing
//! by that mtime). A `Changing` file keeps nothing: a link's size and bytes are read
//! fresh even through a descriptor opened before another node rewrote it.

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

    /// For a node of `role` found (looked up, created or listed); `dir`: it is a
    /// directory.
    pub fn found(&self, role: Role, dir: bool) -> CacheTimes {
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
            CacheClass::Changing if dir => CacheTimes {
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
            for dir in [false, true] {
                assert_eq!(alone.found(role, dir), times(TTL, TTL), "{role:?}");
            }
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
        assert_eq!(shared.found(Role::Repositories, true), times(TTL, TTL));
        assert_eq!(shared.found(Role::Tags, true), times(TTL, TTL));
        assert_eq!(shared.found(Role::Uploads, true), times(TTL, TTL));
        assert_eq!(shared.found(Role::BlobData(d), false), times(ZERO, TTL));
        assert_eq!(shared.found(Role::BlobDir(d), true), times(ZERO, TTL));
        assert_eq!(shared.found(Role::BlobFanOut(7), true), times(ZERO, TTL));
        // Files: nothing kept.
        for role in [
            Role::TagCurrentLink,
            Role::TagIndexLink(d),
            Role::RevisionLink(d),
            Role::LayerLink(d),
            Role::UploadData,
            Role::UploadEntry,
            Role::TempFile,
            Role::Unknown,
        ] {
            assert_eq!(shared.found(role, false), times(ZERO, ZERO), "{role:?}");
        }
        // Directories: the name asked each time; the attributes the answer carries kept.
        for role in [
            Role::Tag,
            Role::TagCurrent,
            Role::Revision(d),
            Role::LayerDir(d),
            Role::Upload,
            Role::UploadEntry,
            Role::Unknown,
        ] {
            assert_eq!(shared.found(role, true), times(ZERO, TTL), "{role:?}");
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

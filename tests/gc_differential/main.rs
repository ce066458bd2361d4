//! Differential tests of `regfs gc --offline` against the real CNCF distribution registry
//! (Debian's docker-registry 2.8.2) on a store that the real registry and the real skopeo
//! built (`scripts/registry-fixture.py build`).
//!
//! - default mode: regfs deletes exactly the blobs the registry's own collector deletes,
//!   and also cleans what that collector leaves behind (dangling `_layers` links, empty
//!   revision directories, abandoned uploads when they are old enough);
//! - a dry run deletes nothing and predicts the real run path for path;
//! - `--delete-untagged` keeps every tagged image whole (index children, referrers), which
//!   the registry's collector (2.8) does not: its multi-arch image loses its children;
//! - a store whose lock is held (a regfs daemon, another collector) is refused.
//!
//! Prerequisites: python3, docker-registry, skopeo, root. Under CI=true a missing one fails
//! the test; elsewhere the test says why and returns.
mod collect;
#[path = "../common/mod.rs"]
mod common;
mod fixture;
mod inspect;
mod locked;
mod processes;
mod untagged;

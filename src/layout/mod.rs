//! The distribution registry's storage layout: the one source of truth for its paths,
//! names, digests and link files, and a reader that cannot be led out of the store.

pub mod blob_dirs;
pub mod cache_class;
pub mod digest;
pub mod names;
pub mod paths;
pub mod role;
pub mod spec;
pub mod store;

pub use blob_dirs::BlobDirs;
pub use cache_class::CacheClass;
pub use digest::{Digest, DigestError, LinkError, parse_link};
pub use names::{Component, NameError, RepoName, TagName};
pub use role::Role;
pub use spec::{PathKind, classify, classify_path, link_role, path_for};
pub use store::{Entry, EntryKind, ReadError, Store};

#[cfg(test)]
mod spec_tests;

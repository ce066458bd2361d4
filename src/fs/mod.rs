//! The passthrough filesystem: inodes, handles, the core operations and the FUSE adapter.
//! It is the mechanism only: whether a change, a writer or a name may go ahead is asked of
//! a [`crate::policy::StorePolicy`].

pub mod access;
pub mod adapter;
mod attr;
pub mod caching;
mod changes;
mod core;
mod durability;
mod handle_table;
mod inode;
mod inode_fds;
mod kernel_cache;
mod link_undo;
mod namespace;
mod open_handles;
mod opening;
mod passthrough;
mod readdir;
mod reclaim;
mod remove;
pub mod stats;
mod unlinked;

pub use self::core::{Caller, Entry, FsStats, SetAttr, StorageFs};
pub use adapter::FuseAdapter;
pub use opening::Opened;
pub use passthrough::BackingFactory;
pub use readdir::DirItem;
pub use reclaim::spawn_reclaimer;
pub use remove::Removed;

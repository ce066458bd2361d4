//! The passthrough filesystem: inodes, handles, the core operations and the FUSE adapter.

pub mod access;
pub mod adapter;
mod attr;
mod core;
mod handle;
mod handles;
mod inode;
mod io;
mod link_undo;
mod links;
mod readdir;
mod reclaim;
mod remove;
pub mod stats;

pub use self::core::{Caller, Entry, FsStats, SetAttr, StorageFs};
pub use adapter::FuseAdapter;
pub use io::{BackingFactory, Opened};
pub use readdir::DirItem;
pub use reclaim::spawn_reclaimer;
pub use remove::Removed;

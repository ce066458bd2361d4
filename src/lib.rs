//! regfs: a FUSE filesystem mounted under a container registry's storage directory. It
//! passes reads and writes through to the real directory and can close the store for
//! writes (a GC epoch) while it collects garbage.

pub mod api;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod error;
pub mod fs;
pub mod gc;
pub mod http;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod metrics;
pub mod mount;
pub mod offline;
pub mod policy;
pub mod registry;
pub mod retention;
pub mod runtime;
pub mod settings;
pub mod state_dir;
pub mod sync;
pub mod web;
pub mod worker;

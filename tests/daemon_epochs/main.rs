//! GC epochs in the daemon, driven as an operator drives them: `regfs mount` as a child
//! process, SIGUSR1/SIGUSR2/SIGTERM, `regfs gc`, `regfs gc stop`, `regfs status` and
//! `regfs jobs`. Each test has its own store, mount point and state directory, and a guard
//! that kills the daemon and detaches the mount whatever happens.
mod cache;
#[path = "../common/mod.rs"]
mod common;
mod daemon;
mod fixture;
mod history;
mod interrupted;
mod online;
mod runs;
mod state;
mod strays;
mod temp_files;
mod triggers;

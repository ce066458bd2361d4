//! Cluster mode for real: a real etcd on 127.0.0.1 (started here, at free ports, with its
//! own data directory, stopped by pid) and several `regfs mount` daemons over ONE backing
//! directory at several mount points, as replicas over a shared store would be. Leases
//! of 2 s keep the failure tests short. Each test prints what it measured.
mod caching;
#[path = "../common/mod.rs"]
mod common;
mod epochs;
mod failures;
mod harness;
mod names;
mod online;
mod online_faults;
mod online_three;
mod online_world;
mod registry;
mod retention;
mod security;
mod status;

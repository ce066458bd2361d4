//! FUSE request counters, kept by the filesystem and exposed by `crate::metrics`. Here,
//! with the filesystem, so that counting a request needs nothing from the daemon.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every FUSE operation the adapter counts, by name.
pub const FUSE_OPS: &[&str] = &[
    "lookup",
    "forget",
    "getattr",
    "setattr",
    "readlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "open",
    "read",
    "write",
    "flush",
    "release",
    "fsync",
    "opendir",
    "readdir",
    "readdirplus",
    "releasedir",
    "fsyncdir",
    "statfs",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "access",
    "create",
];

/// FUSE request counters: one atomic per operation; errors by (operation, errno).
#[derive(Debug)]
pub struct FuseStats {
    ops: Vec<AtomicU64>,
    errors: Mutex<HashMap<(&'static str, i32), u64>>,
}

impl Default for FuseStats {
    fn default() -> Self {
        FuseStats {
            ops: FUSE_OPS.iter().map(|_| AtomicU64::new(0)).collect(),
            errors: Mutex::new(HashMap::new()),
        }
    }
}

impl FuseStats {
    pub fn record(&self, op: &'static str, errno: Option<i32>) {
        if let Some(i) = FUSE_OPS.iter().position(|o| *o == op) {
            self.ops[i].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(e) = errno {
            *self
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry((op, e))
                .or_default() += 1;
        }
    }

    /// Requests served, by operation.
    pub fn operations(&self) -> Vec<(&'static str, u64)> {
        FUSE_OPS
            .iter()
            .zip(&self.ops)
            .map(|(op, n)| (*op, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Requests answered with an error, by operation and errno.
    pub fn errors(&self) -> Vec<((&'static str, i32), u64)> {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors.iter().map(|(k, n)| (*k, *n)).collect()
    }
}

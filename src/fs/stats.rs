//! FUSE request counters, kept by the filesystem and exposed by `crate::metrics`. Here,
//! with the filesystem, so that counting a request needs nothing from the daemon.

use std::collections::HashMap;
use std::fmt::Write as _;
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

    /// Appends the counters in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP regfs_fuse_operations_total FUSE requests served, by operation."
        );
        let _ = writeln!(out, "# TYPE regfs_fuse_operations_total counter");
        for (op, n) in FUSE_OPS.iter().zip(&self.ops) {
            let _ = writeln!(
                out,
                "regfs_fuse_operations_total{{op=\"{op}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP regfs_fuse_errors_total FUSE requests answered with an error, by operation and errno."
        );
        let _ = writeln!(out, "# TYPE regfs_fuse_errors_total counter");
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<_> = errors.iter().collect();
        rows.sort();
        for ((op, errno), n) in rows {
            let name = std::io::Error::from_raw_os_error(*errno).kind();
            let _ = writeln!(
                out,
                "regfs_fuse_errors_total{{op=\"{op}\",errno=\"{errno}\",kind=\"{name:?}\"}} {n}"
            );
        }
    }
}

//! Keeps the inode table (one open O_PATH handle per inode) bounded while a registry
//! walks millions of files. The kernel decides when it forgets an inode; when the table
//! grows past a high mark, a background thread asks the kernel to drop cached entries
//! (invalidation), and the kernel's FORGETs then shrink the table. Notifications are
//! sent from this thread, never from a request handler, which could deadlock.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::core::StorageFs;
use crate::worker::Worker;

/// How often the reclaimer looks at the table size.
const PERIOD: Duration = Duration::from_millis(200);

impl StorageFs {
    /// Asks the kernel to drop enough cached entries to bring the table down to `target`.
    /// Returns how many invalidations it sent.
    pub fn reclaim_inodes(&self, target: usize) -> usize {
        if !self.kernel.is_set() {
            return 0;
        }
        let excess = self.names.inodes.len().saturating_sub(target);
        if excess == 0 {
            return 0;
        }
        let candidates = self.names.inodes.reclaim_candidates(excess);
        candidates
            .iter()
            .filter(|(parent, name)| self.kernel.drop_entry(*parent, name))
            .count()
    }
}

/// Starts the reclaimer: above `high` inodes it trims towards `low`. It ends when it is
/// stopped or the filesystem is dropped.
pub fn spawn_reclaimer(fs: &Arc<StorageFs>, high: usize, low: usize) -> std::io::Result<Worker> {
    let fs: Weak<StorageFs> = Arc::downgrade(fs);
    Worker::spawn("regfs-reclaim", move |stop| {
        while !stop.is_set() {
            let Some(fs) = fs.upgrade() else { return };
            if fs.inode_count() > high {
                let sent = fs.reclaim_inodes(low);
                tracing::debug!(
                    sent,
                    inodes = fs.inode_count(),
                    "asked the kernel to drop cached entries"
                );
            }
            drop(fs);
            stop.nap(PERIOD);
        }
    })
}

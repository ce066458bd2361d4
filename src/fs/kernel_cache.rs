//! Telling the kernel about changes it did not see go through the mount (the sweep's
//! deletions, names the policy hides from now on, an inode table trimmed), so its
//! caches never answer for what is gone. Notifications are sent from the thread making
//! the change, never from a request handler of the same inode, which could deadlock.

use std::ffi::OsStr;
use std::sync::OnceLock;

use fuser::{INodeNo, Notifier};

#[derive(Debug, Default)]
pub(super) struct KernelCache {
    /// Set once the session is up; before that (and in tests without a mount) there is
    /// no kernel cache to tell.
    notifier: OnceLock<Notifier>,
}

impl KernelCache {
    pub(super) fn set(&self, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// For a link writer's undo, which tells the kernel itself when it puts bytes back.
    pub(super) fn notifier(&self) -> Option<Notifier> {
        self.notifier.get().cloned()
    }

    /// `name` in `parent` was removed (`child`: the node the kernel knows it as, if
    /// any), and the parent's cached listing with it.
    pub(super) fn removed(&self, parent: u64, child: Option<u64>, name: &OsStr) {
        let Some(n) = self.notifier.get() else {
            return;
        };
        let r = match child {
            Some(child) => n.delete(INodeNo(parent), INodeNo(child), name),
            None => n.inval_entry(INodeNo(parent), name),
        };
        // The entry may not be cached while the parent's listing is: drop that too.
        let listing = n.inval_inode(INodeNo(parent), 0, 0);
        if let Err(e) = r.and(listing) {
            tracing::debug!(error = %e, "kernel cache invalidation after a delete failed");
        }
    }

    /// Drops the kernel's cached entry `name` in `parent`, so its next lookup asks the
    /// daemon. Whether the kernel took the notice (false without a mount).
    pub(super) fn drop_entry(&self, parent: u64, name: &OsStr) -> bool {
        let Some(n) = self.notifier.get() else {
            return false;
        };
        match n.inval_entry(INodeNo(parent), name) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "kernel entry invalidation failed");
                false
            }
        }
    }

    pub(super) fn is_set(&self) -> bool {
        self.notifier.get().is_some()
    }
}

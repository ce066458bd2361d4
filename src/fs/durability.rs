//! What the daemon knows of a file's durability: whether the file changed since the last
//! fsync of it that succeeded. The registry syncs every file it writes twice (its
//! writer's `Commit` and then its `Close` each call fsync), and on ext4 an fsync of a
//! clean file still flushes the device's cache (1.2 ms on this project's VM, against
//! 2.1 ms after a 20-byte write). An fsync of a file whose every change since its last
//! fsync went through the daemon, and that has not changed since, has nothing to make
//! durable: the daemon answers it without asking the backing store. (Retention's restore
//! of a link writes the backing file directly, and syncs it itself.)
//!
//! A change is counted once it is done (a write, a truncation, an attribute change, a
//! writer's open, a rename of the file, a link's undo), so an fsync that read the count
//! before calling fsync(2) covers every change it counted. A file the kernel writes by
//! passthrough (writes the daemon never sees) is synced every time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One file's change count against its last fsync (kept with its inode).
#[derive(Debug, Default)]
pub struct Durability {
    /// Changes made through the daemon, counted once done.
    changes: AtomicU64,
    /// `changes` as read before the last fsync(2) that succeeded, plus one (0: never).
    synced: AtomicU64,
    /// The kernel may write it by passthrough: changes the daemon does not see.
    unseen: AtomicBool,
}

/// An fsync the file needs: the change count it covers, recorded once it succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncTicket(u64);

impl Durability {
    /// A change to the file is done.
    pub fn changed(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// The kernel may write the file without the daemon from now on (passthrough).
    pub fn writes_unseen(&self) {
        self.unseen.store(true, Ordering::SeqCst);
    }

    /// `None` when the file has not changed since an fsync that succeeded (and every
    /// change went through the daemon); else the ticket of the fsync to make.
    pub fn needs_sync(&self) -> Option<SyncTicket> {
        let changes = self.changes.load(Ordering::SeqCst);
        let clean = !self.unseen.load(Ordering::SeqCst)
            && self.synced.load(Ordering::SeqCst) == changes + 1;
        (!clean).then_some(SyncTicket(changes))
    }

    /// The fsync of `ticket` succeeded (a full one: data and attributes).
    pub fn synced(&self, ticket: SyncTicket) {
        self.synced.fetch_max(ticket.0 + 1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_unchanged_since_its_last_fsync_needs_none() {
        let d = Durability::default();
        let first = d.needs_sync().expect("never synced");
        d.synced(first);
        assert_eq!(d.needs_sync(), None);
        d.changed();
        let second = d.needs_sync().expect("changed since");
        d.synced(second);
        assert_eq!(d.needs_sync(), None);
    }

    #[test]
    fn a_change_counted_after_the_fsync_read_the_count_is_synced_again() {
        let d = Durability::default();
        let ticket = d.needs_sync().unwrap();
        d.changed(); // done while that fsync(2) ran: maybe not covered
        d.synced(ticket);
        assert!(d.needs_sync().is_some());
    }

    #[test]
    fn a_failed_fsync_records_nothing() {
        let d = Durability::default();
        let _failed = d.needs_sync().unwrap();
        assert!(d.needs_sync().is_some());
    }

    #[test]
    fn a_file_written_by_passthrough_is_synced_every_time() {
        let d = Durability::default();
        d.writes_unseen();
        let t = d.needs_sync().unwrap();
        d.synced(t);
        assert!(d.needs_sync().is_some());
    }
}

//! A store whose lock is held (a regfs daemon, another collector) is refused, then
//! collected once the lock is released.

use std::fs::File;

use crate::common::describe_output;
use crate::fixture::{fixture, workdir};
use crate::inspect::listing;
use crate::processes::{copy_store, count, regfs_gc, regfs_gc_ok};

#[test]
fn a_regfs_daemon_or_another_collector_holding_the_store_is_refused() {
    let Some(fx) = fixture() else { return };
    let work = workdir(fx);
    let s = work.path().join("S");
    copy_store(fx, &s);
    let before = listing(&s);

    let dir = File::open(&s).expect("open the storage directory");
    rustix::fs::flock(&dir, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .expect("flock the storage directory");
    for args in [
        &["--upload-max-age", "0s"][..],
        &["--delete-untagged", "--json"][..],
    ] {
        let (out, _) = regfs_gc(&s, args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "regfs gc {args:?} on a locked store: {}",
            describe_output(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("in use"),
            "stderr does not say the store is in use: {stderr}"
        );
        assert_eq!(
            listing(&s),
            before,
            "regfs gc {args:?} changed a locked store"
        );
    }

    // Once the lock is released, the same store is collected.
    drop(dir);
    let report = regfs_gc_ok(&s, &[]);
    assert!(count(&report, "blobs_deleted") > 0);
}

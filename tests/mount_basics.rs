//! Smoke test of the test harness: a mount serves the backing directory.
mod common;

use std::fs;

#[test]
fn mount_serves_the_backing_directory_and_unmounts_on_drop() {
    let Some(m) = common::mount_with(|s| fs::write(s.join("hello"), b"world").unwrap()) else {
        return;
    };
    assert_eq!(fs::read(m.mnt.join("hello")).unwrap(), b"world");
    fs::write(m.mnt.join("new"), b"through the mount").unwrap();
    assert_eq!(
        fs::read(m.storage.join("new")).unwrap(),
        b"through the mount"
    );
    let mnt = m.mnt.clone();
    drop(m);
    assert!(regfs::mount::mount_at(&mnt).is_none(), "guard must unmount");
}

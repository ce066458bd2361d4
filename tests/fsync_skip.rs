//! The registry syncs every small file it writes twice (its writer's Commit, then its
//! Close). The second fsync of a file the daemon has seen every change of, with nothing
//! changed since the first, is answered without syncing the backing file (on ext4 that
//! still costs a device flush); any change since (a write, a truncation, an attribute
//! change, a rename, another handle's write) makes the next fsync sync again, and a file
//! the kernel writes by passthrough is synced every time.
mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};

const UPLOAD: &str = "docker/registry/v2/repositories/app/_uploads/u1";

/// A change to a file, named.
type Change<'a> = (&'static str, Box<dyn Fn() + 'a>);

fn answered(m: &common::TestMount) -> u64 {
    m.fs().fsyncs_answered()
}

/// The registry's PutContent: open (O_CREAT, no O_TRUNC), ftruncate(0), write,
/// fsync (Commit), fsync (Close).
fn put_content(path: &std::path::Path, bytes: &[u8]) -> File {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    f.set_len(0).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
    f.sync_all().unwrap();
    f
}

#[test]
fn a_second_fsync_with_nothing_changed_is_answered_without_syncing() {
    let Some(m) = common::mount_with(|s| fs::create_dir_all(s.join(UPLOAD)).unwrap()) else {
        return;
    };
    let startedat = m.mnt.join(UPLOAD).join("startedat");
    let f = put_content(&startedat, b"2026-12-07T11:00:00Z");
    assert_eq!(answered(&m), 1, "the Close's fsync after the Commit's");
    assert_eq!(
        fs::read(m.storage.join(UPLOAD).join("startedat")).unwrap(),
        b"2026-12-07T11:00:00Z"
    );

    // Each change makes the next fsync sync again, then the one after is answered.
    let changes: [Change<'_>; 5] = [
        ("a write", Box::new(|| f.write_all_at(b"2027", 0).unwrap())),
        ("a truncation", Box::new(|| f.set_len(4).unwrap())),
        (
            "a mode change",
            Box::new(|| {
                fs::set_permissions(&startedat, fs::Permissions::from_mode(0o600)).unwrap()
            }),
        ),
        (
            "another handle's write",
            Box::new(|| {
                OpenOptions::new()
                    .write(true)
                    .open(&startedat)
                    .unwrap()
                    .write_all_at(b"x", 0)
                    .unwrap()
            }),
        ),
        (
            "a rename",
            Box::new(|| {
                fs::rename(&startedat, m.mnt.join(UPLOAD).join("moved")).unwrap();
                fs::rename(m.mnt.join(UPLOAD).join("moved"), &startedat).unwrap();
            }),
        ),
    ];
    for (what, change) in changes {
        let before = answered(&m);
        change();
        f.sync_all().unwrap();
        assert_eq!(answered(&m), before, "after {what}: synced");
        f.sync_all().unwrap();
        assert_eq!(answered(&m), before + 1, "after {what}, twice: answered");
    }
    drop(f);

    // A new handle on the unchanged file: still nothing to sync.
    let before = answered(&m);
    OpenOptions::new()
        .write(true)
        .open(&startedat)
        .unwrap()
        .sync_all()
        .unwrap();
    assert_eq!(
        answered(&m),
        before,
        "a writer's open may truncate: its fsync syncs"
    );
    File::open(&startedat).unwrap().sync_all().unwrap();
    assert_eq!(answered(&m), before + 1, "a reader's fsync of a clean file");
}

#[test]
fn a_file_written_by_passthrough_is_synced_every_time() {
    let Some(m) = common::mount_with(|s| fs::create_dir_all(s.join(UPLOAD)).unwrap()) else {
        return;
    };
    if !m.fs().passthrough_enabled() {
        eprintln!("kernel did not grant FUSE passthrough; upload data goes through the daemon");
        return;
    }
    let data = put_content(&m.mnt.join(UPLOAD).join("data"), b"layer bytes");
    data.sync_all().unwrap();
    assert_eq!(
        answered(&m),
        0,
        "the daemon never sees passthrough writes: every fsync syncs"
    );
    assert_eq!(m.fs().daemon_writes(), 0);
}

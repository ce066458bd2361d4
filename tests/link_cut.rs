//! No truncated link after a GC epoch: a link-file writer that truncated and is still
//! open when the drain timeout cuts it leaves the link as it was before its write; a link
//! it created and never completed is removed; a link it completed stands.
mod common;

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::daemon::Daemon;
use common::store::StoreBuilder;
use regfs::fs::{Caller, SetAttr, StorageFs};
use regfs::policy::gate::{CutReason, WriteGate};
use regfs::runtime::compose::open_fs;

const LINK_A: &[u8] = b"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const LINK_B: &[u8] = b"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const TAGS: &str = "docker/registry/v2/repositories/app/_manifests/tags";
const BLOBS: &str = "docker/registry/v2/blobs/sha256";
const REVISIONS: &str = "docker/registry/v2/repositories/app/_manifests/revisions/sha256";
const DRAIN: Duration = Duration::from_millis(50);

/// A store with tag `t` pointing at LINK_A, and an empty tag directory `n`; the blobs of
/// LINK_A and LINK_B exist.
fn store() -> (tempfile::TempDir, Arc<StorageFs>, Arc<WriteGate>) {
    let dir = common::tempdir();
    fs::create_dir_all(dir.path().join(TAGS).join("t/current")).unwrap();
    fs::create_dir_all(dir.path().join(TAGS).join("n/current")).unwrap();
    fs::write(dir.path().join(TAGS).join("t/current/link"), LINK_A).unwrap();
    // The manifests the links name exist, blob and revision: the mount refuses a tag
    // naming a blob without data or a manifest the repository holds no revision of.
    for link in [LINK_A, LINK_B] {
        let hex = std::str::from_utf8(&link[7..]).unwrap();
        let blob = dir.path().join(BLOBS).join(&hex[..2]).join(hex);
        fs::create_dir_all(&blob).unwrap();
        fs::write(blob.join("data"), b"x").unwrap();
        let revision = dir.path().join(REVISIONS).join(hex);
        fs::create_dir_all(&revision).unwrap();
        fs::write(revision.join("link"), link).unwrap();
    }
    let (fs, policies) = open_fs(dir.path()).unwrap();
    (dir, Arc::new(fs), policies.gate)
}

/// The node id of a store-relative path, looked up one component at a time.
fn walk(fs: &StorageFs, rel: &str) -> u64 {
    rel.split('/').fold(1, |parent, name| {
        fs.lookup(parent, OsStr::new(name)).unwrap().attr.ino.0
    })
}

fn truncate(fs: &StorageFs, id: u64, fh: u64) {
    let to_zero = SetAttr {
        size: Some(0),
        fh: Some(fh),
        ..Default::default()
    };
    fs.setattr(id, to_zero).unwrap();
}

fn read(dir: &tempfile::TempDir, rel: &str) -> Option<Vec<u8>> {
    fs::read(dir.path().join(TAGS).join(rel)).ok()
}

#[test]
fn a_cut_link_writer_that_truncated_leaves_the_old_link() {
    // Truncated only; truncated and partly written; opened with O_TRUNC; created with
    // O_TRUNC over the existing link.
    for (how, partial) in [("ftruncate", None), ("partial", Some(&LINK_B[..20]))] {
        let (dir, fs, gate) = store();
        let id = walk(&fs, &format!("{TAGS}/t/current/link"));
        let fh = fs.open(id, libc::O_WRONLY, None).unwrap().fh;
        truncate(&fs, id, fh);
        if let Some(bytes) = partial {
            fs.write(fh, 0, bytes).unwrap();
        }
        let report = gate.close_for_writes(DRAIN);
        assert_eq!(report.cut.len(), 1, "{how}: {report:?}");
        assert_eq!(report.cut[0].reason, CutReason::DrainTimeout);
        assert!(report.cut[0].repaired.is_some(), "{how}: {report:?}");
        assert_eq!(read(&dir, "t/current/link").unwrap(), LINK_A, "{how}");
        // The cut handle stays refused; releasing it changes nothing.
        assert!(fs.write(fh, 0, LINK_B).is_err());
        fs.release(fh).unwrap();
        assert_eq!(read(&dir, "t/current/link").unwrap(), LINK_A, "{how}");
    }
    let (dir, fs, gate) = store();
    let id = walk(&fs, &format!("{TAGS}/t/current/link"));
    let fh = fs
        .open(id, libc::O_WRONLY | libc::O_TRUNC, None)
        .unwrap()
        .fh;
    assert_eq!(
        read(&dir, "t/current/link").unwrap(),
        b"",
        "O_TRUNC truncates"
    );
    gate.close_for_writes(DRAIN);
    assert_eq!(read(&dir, "t/current/link").unwrap(), LINK_A, "O_TRUNC");
    fs.release(fh).unwrap();

    // O_CREAT | O_TRUNC on the existing link (the kernel's create of a name it has not
    // looked up).
    let (dir, fs, gate) = store();
    let parent = walk(&fs, &format!("{TAGS}/t/current"));
    let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC;
    let root = Caller { uid: 0, gid: 0 };
    let (_, opened) = fs
        .create(parent, OsStr::new("link"), 0o644, flags, root, None)
        .unwrap();
    assert_eq!(read(&dir, "t/current/link").unwrap(), b"", "create O_TRUNC");
    gate.close_for_writes(DRAIN);
    assert_eq!(
        read(&dir, "t/current/link").unwrap(),
        LINK_A,
        "create O_TRUNC"
    );
    fs.release(opened.fh).unwrap();
}

#[test]
fn a_link_the_cut_writer_completed_stands() {
    let (dir, fs, gate) = store();
    let id = walk(&fs, &format!("{TAGS}/t/current/link"));
    let fh = fs.open(id, libc::O_WRONLY, None).unwrap().fh;
    truncate(&fs, id, fh);
    fs.write(fh, 0, LINK_B).unwrap();
    let report = gate.close_for_writes(DRAIN);
    assert_eq!(report.cut.len(), 1);
    assert_eq!(report.cut[0].repaired, None, "{report:?}");
    assert_eq!(read(&dir, "t/current/link").unwrap(), LINK_B);
}

#[test]
fn a_link_created_by_the_cut_writer_is_removed_unless_complete() {
    let (dir, fs, gate) = store();
    let parent = walk(&fs, &format!("{TAGS}/n/current"));
    let root = Caller { uid: 0, gid: 0 };
    let flags = libc::O_CREAT | libc::O_WRONLY;
    let (_, opened) = fs
        .create(parent, OsStr::new("link"), 0o644, flags, root, None)
        .unwrap();
    let report = gate.close_for_writes(DRAIN);
    assert!(report.cut[0].repaired.is_some(), "{report:?}");
    assert_eq!(read(&dir, "n/current/link"), None, "empty new link removed");
    fs.release(opened.fh).unwrap();
    gate.reopen_for_writes();

    // Created and completed before the cut: it stands.
    let (_, opened) = fs
        .create(parent, OsStr::new("link"), 0o644, flags, root, None)
        .unwrap();
    fs.write(opened.fh, 0, LINK_B).unwrap();
    let report = gate.close_for_writes(DRAIN);
    assert_eq!(report.cut[0].repaired, None);
    assert_eq!(read(&dir, "n/current/link").unwrap(), LINK_B);
}

#[test]
fn other_files_and_links_released_in_time_are_left_alone() {
    let (dir, fs, gate) = store();
    fs::write(dir.path().join("docker/registry/v2/other"), b"12345").unwrap();
    let other = walk(&fs, "docker/registry/v2/other");
    let fh = fs.open(other, libc::O_WRONLY, None).unwrap().fh;
    truncate(&fs, other, fh);
    let report = gate.close_for_writes(DRAIN);
    assert_eq!(report.cut[0].repaired, None, "not a link: no repair");
    assert_eq!(
        fs::read(dir.path().join("docker/registry/v2/other")).unwrap(),
        b""
    );
}

/// Through a real mount and a real daemon epoch: a process holds a truncated tag link
/// open past the drain timeout and creates a new tag link it never writes.
#[test]
fn after_a_daemon_epoch_a_held_truncated_link_has_its_old_content() {
    let Some((_dir, storage, mnt)) = common::daemon::fuse_dirs() else {
        return;
    };
    let b = StoreBuilder::new(&storage);
    let layer = b.blob(b"layer");
    let (manifest, _config) = b.image("app", &[layer], "one");
    b.tag("app", "latest", &manifest);
    let rel = "docker/registry/v2/repositories/app/_manifests/tags/latest/current/link";
    let before = fs::read(storage.join(rel)).unwrap();
    assert_eq!(before.len(), 71);
    let state = mnt.with_file_name("state");
    let d = Daemon::start(
        &mnt,
        &state,
        &[
            storage.to_str().unwrap(),
            mnt.to_str().unwrap(),
            "--drain-timeout",
            "0.5",
        ],
    );

    let held = OpenOptions::new().write(true).open(mnt.join(rel)).unwrap();
    held.set_len(0).unwrap();
    let new_dir = mnt.join(
        Path::new(rel)
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .with_file_name("new"),
    );
    fs::create_dir_all(new_dir.join("current")).unwrap();
    let created = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(new_dir.join("current/link"))
        .unwrap();

    let (code, _out, err) = d.regfs(&["gc", mnt.to_str().unwrap(), "--wait"]);
    assert_eq!(code, 0, "{err}");
    let jobs = d.wait_for_jobs(1);
    let cut = jobs[0]["cut_writers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(cut.len(), 2, "{:#}", jobs[0]);

    assert_eq!(fs::read(storage.join(rel)).unwrap(), before, "backing link");
    assert_eq!(
        fs::read(mnt.join(rel)).unwrap(),
        before,
        "through the mount"
    );
    assert!(
        !new_dir.join("current/link").exists(),
        "never-written new link removed"
    );
    let r = held.write_all_at(b"sha256:", 0);
    assert_eq!(common::errno(r, "write on a cut handle"), libc::EROFS);
    drop((held, created));
    // The image is whole: its manifest was marked through the restored tag.
    assert!(b.has_blob(&manifest) && b.has_blob(&layer));
}

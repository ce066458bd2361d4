//! The write gate on a real mount: what a registry sees when a GC epoch opens and ends.
mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::thread;
use std::time::Duration;

use regfs::policy::gate::CutReason;

const EROFS: i32 = libc::EROFS;

const LINK_A: &[u8] = b"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const LINK_B: &[u8] = b"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn seed(s: &Path) {
    fs::create_dir_all(s.join("repo/_manifests/tags/t/current")).unwrap();
    fs::write(s.join("repo/_manifests/tags/t/current/link"), LINK_A).unwrap();
    fs::create_dir_all(s.join("docker/registry/v2/repositories/repo/_uploads/u1")).unwrap();
    fs::create_dir_all(s.join("dir/sub")).unwrap();
    fs::write(s.join("blob"), vec![7u8; 100_000]).unwrap();
}

#[test]
fn closed_gate_refuses_every_change_and_keeps_reads_working() {
    let Some(m) = common::mount_with(seed) else {
        return;
    };
    let mnt = &m.mnt;
    let report = m.gate.close_for_writes(Duration::from_secs(1));
    assert!(report.cut.is_empty());

    // New writes and every namespace or attribute change: EROFS.
    let e =
        |r: std::io::Result<()>, what: &str| assert_eq!(common::errno(r, what), EROFS, "{what}");
    e(fs::write(mnt.join("new"), b"x"), "create");
    e(
        OpenOptions::new()
            .write(true)
            .open(mnt.join("blob"))
            .map(drop),
        "open for write",
    );
    e(
        OpenOptions::new()
            .append(true)
            .open(mnt.join("blob"))
            .map(drop),
        "open for append",
    );
    e(
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(mnt.join("blob"))
            .map(drop),
        "open with O_TRUNC",
    );
    e(fs::create_dir(mnt.join("d2")), "mkdir");
    e(fs::remove_file(mnt.join("blob")), "unlink");
    e(fs::remove_dir(mnt.join("dir/sub")), "rmdir");
    e(fs::rename(mnt.join("blob"), mnt.join("blob2")), "rename");
    e(
        fs::set_permissions(
            mnt.join("blob"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        ),
        "chmod",
    );
    let path =
        std::ffi::CString::new(mnt.join("blob").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::truncate(path.as_ptr(), 0) };
    e(
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        },
        "truncate by path",
    );

    // Reads, lookups and listings work, and nothing changed underneath.
    let mut data = Vec::new();
    File::open(mnt.join("blob"))
        .unwrap()
        .read_to_end(&mut data)
        .unwrap();
    assert_eq!(data, vec![7u8; 100_000]);
    assert_eq!(
        fs::read(mnt.join("repo/_manifests/tags/t/current/link")).unwrap(),
        LINK_A
    );
    let names: Vec<_> = fs::read_dir(mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(fs::metadata(mnt.join("dir/sub")).unwrap().is_dir());
    assert!(!m.storage.join("new").exists() && !m.storage.join("d2").exists());

    // After the epoch, writes work again.
    assert!(m.gate.reopen_for_writes());
    fs::write(mnt.join("new"), b"after").unwrap();
    fs::create_dir(mnt.join("d2")).unwrap();
    fs::rename(mnt.join("blob"), mnt.join("blob2")).unwrap();
    assert_eq!(fs::read(m.storage.join("new")).unwrap(), b"after");
}

#[test]
fn link_writer_open_before_the_epoch_finishes_intact() {
    let Some(m) = common::mount_with(seed) else {
        return;
    };
    let link = m.mnt.join("repo/_manifests/tags/t/current/link");
    // The registry rewrites a link in place: open (no O_TRUNC) -> ftruncate(0) -> write -> fsync -> close.
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&link)
        .unwrap();
    f.set_len(0).unwrap();
    let gate = m.gate.clone();
    let closer = thread::spawn(move || gate.close_for_writes(Duration::from_secs(10)));
    thread::sleep(Duration::from_millis(200));
    assert!(
        !closer.is_finished(),
        "close must wait for the in-place writer"
    );
    f.write_all(LINK_B).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let report = closer.join().unwrap();
    assert!(report.cut.is_empty(), "{report:?}");
    assert_eq!(
        report.drained,
        vec!["repo/_manifests/tags/t/current/link".to_string()]
    );
    assert!(report.waited >= Duration::from_millis(150));
    assert_eq!(
        fs::read(m.storage.join("repo/_manifests/tags/t/current/link")).unwrap(),
        LINK_B
    );
    // The epoch is on: a new rewrite of the same link is refused before it truncates.
    let r = OpenOptions::new().write(true).open(&link).map(drop);
    assert_eq!(common::errno(r, "open link during epoch"), EROFS);
    assert_eq!(fs::read(&link).unwrap(), LINK_B);
}

/// An upload's data file is not the gate's concern (with kernel write passthrough its
/// writes never reach the daemon): a push in progress keeps writing through the epoch and
/// fails at its commit, the rename into `blobs/`. The upload's other files are cut at once.
#[test]
fn upload_in_progress_keeps_writing_its_data_and_its_commit_is_refused() {
    let Some(m) = common::mount_with(seed) else {
        return;
    };
    fs::create_dir_all(m.mnt.join("blobs/sha256/ab/abcd")).unwrap();
    let data = m
        .mnt
        .join("docker/registry/v2/repositories/repo/_uploads/u1/data");
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&data)
        .unwrap();
    f.write_all_at(&[1u8; 4096], 0).unwrap();
    let started = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(
            m.mnt
                .join("docker/registry/v2/repositories/repo/_uploads/u1/startedat"),
        )
        .unwrap();
    let report = m.gate.close_for_writes(Duration::from_secs(10));
    assert!(
        report.waited < Duration::from_secs(2),
        "uploads must not be waited for: {report:?}"
    );
    assert_eq!(report.cut.len(), 1, "{report:?}");
    assert_eq!(
        report.cut[0].path,
        "docker/registry/v2/repositories/repo/_uploads/u1/startedat"
    );
    assert_eq!(report.cut[0].reason, CutReason::Upload);
    let r = started.write_all_at(b"2026", 0);
    assert_eq!(common::errno(r, "upload's startedat during epoch"), EROFS);
    // The data keeps being written and synced...
    f.write_all_at(&[2u8; 4096], 4096).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // ...but no new writer of it is let in, and the commit is refused.
    let r = OpenOptions::new().write(true).open(&data).map(drop);
    assert_eq!(common::errno(r, "new upload writer during epoch"), EROFS);
    let blob = m.mnt.join("blobs/sha256/ab/abcd/data");
    let r = fs::rename(&data, &blob);
    assert_eq!(common::errno(r, "upload commit during epoch"), EROFS);
    assert!(!m.storage.join("blobs/sha256/ab/abcd/data").exists());
    let mut want = vec![1u8; 4096];
    want.extend([2u8; 4096]);
    assert_eq!(
        fs::read(
            m.storage
                .join("docker/registry/v2/repositories/repo/_uploads/u1/data")
        )
        .unwrap(),
        want
    );
    m.gate.reopen_for_writes();
    // After the epoch the client's retry commits.
    fs::rename(&data, &blob).unwrap();
    assert_eq!(fs::read(&blob).unwrap(), want);
}

#[test]
fn in_place_writer_still_open_after_the_drain_timeout_is_cut() {
    let Some(m) = common::mount_with(seed) else {
        return;
    };
    let link = m.mnt.join("repo/_manifests/tags/t/current/link");
    let f = OpenOptions::new().write(true).open(&link).unwrap();
    let report = m.gate.close_for_writes(Duration::from_millis(300));
    assert!(report.waited >= Duration::from_millis(290));
    assert_eq!(report.cut.len(), 1, "{report:?}");
    assert_eq!(report.cut[0].reason, CutReason::DrainTimeout);
    let r = f.write_all_at(LINK_B, 0);
    assert_eq!(common::errno(r, "write after drain timeout"), EROFS);
    drop(f);
    assert_eq!(
        fs::read(m.storage.join("repo/_manifests/tags/t/current/link")).unwrap(),
        LINK_A
    );
}

#[test]
fn a_delete_by_the_daemon_is_visible_through_the_mount_at_once() {
    let Some(m) = common::mount_with(|s| {
        fs::create_dir_all(s.join("blobs/sha256/ab/abcd")).unwrap();
        fs::write(s.join("blobs/sha256/ab/abcd/data"), b"blob").unwrap();
        fs::write(s.join("single"), b"file").unwrap();
    }) else {
        return;
    };
    // Warm the kernel's caches (entries and attributes are cached for 60 s here, and
    // directory listings are kept across opens).
    assert!(fs::metadata(m.mnt.join("blobs/sha256/ab/abcd/data")).is_ok());
    assert_eq!(
        fs::read_dir(m.mnt.join("blobs/sha256/ab")).unwrap().count(),
        1
    );
    assert_eq!(
        fs::read_dir(m.mnt.join("blobs/sha256/ab")).unwrap().count(),
        1
    );
    assert!(fs::metadata(m.mnt.join("single")).is_ok());
    m.gate.close_for_writes(Duration::from_secs(1));
    let removed = m
        .fs()
        .remove_tree(Path::new("blobs/sha256/ab/abcd"))
        .unwrap();
    assert_eq!((removed.files, removed.dirs, removed.bytes), (1, 1, 4));
    m.fs().remove_tree(Path::new("single")).unwrap();
    for p in [
        "blobs/sha256/ab/abcd/data",
        "blobs/sha256/ab/abcd",
        "single",
    ] {
        let r = fs::metadata(m.mnt.join(p));
        assert_eq!(
            common::errno(r, p),
            libc::ENOENT,
            "{p} must be gone at once"
        );
    }
    let listed: Vec<_> = fs::read_dir(m.mnt.join("blobs/sha256/ab"))
        .unwrap()
        .collect();
    assert!(listed.is_empty());
    // Paths that would leave the store are refused.
    assert!(m.fs().remove_tree(Path::new("../x")).is_err());
    assert!(m.fs().remove_tree(Path::new("/etc")).is_err());
}

//! Each inode carries its role in the registry's layout, computed at lookup from its
//! parent's role and its name, and kept right when files and directories move: an
//! upload's data renamed into `blobs/` is blob data from then on, and everything below a
//! moved directory takes the role of its new place.
mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use regfs::fs::{Caller, StorageFs};
use regfs::layout::{Digest, Role, classify_path};
use regfs::policy::WriteRole;
use regfs::runtime::compose::open_fs;

const HEX: &str = "a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";

fn digest() -> Digest {
    Digest::from_hex(HEX).unwrap()
}

fn store() -> (tempfile::TempDir, StorageFs) {
    let dir = common::tempdir();
    let s = dir.path();
    let repo = s.join("docker/registry/v2/repositories/team/app");
    fs::create_dir_all(repo.join("_uploads/u1")).unwrap();
    fs::write(repo.join("_uploads/u1/data"), b"layer").unwrap();
    fs::create_dir_all(repo.join(format!("_manifests/revisions/sha256/{HEX}"))).unwrap();
    fs::write(
        repo.join(format!("_manifests/revisions/sha256/{HEX}/link")),
        format!("sha256:{HEX}"),
    )
    .unwrap();
    fs::create_dir_all(s.join("docker/registry/v2/blobs/sha256/a3")).unwrap();
    fs::create_dir_all(s.join("docker/registry/v2/repositories/other/_uploads")).unwrap();
    let fs = open_fs(s).unwrap().0;
    (dir, fs)
}

/// Looks `rel` up one component at a time, as the kernel does; the node id.
fn walk(fs: &StorageFs, rel: &str) -> u64 {
    rel.split('/').fold(1, |id, name| {
        fs.lookup(id, OsStr::new(name))
            .unwrap_or_else(|e| panic!("{rel}: {e}"))
            .attr
            .ino
            .0
    })
}

fn role_at(fs: &StorageFs, rel: &str) -> Role {
    fs.role_of(walk(fs, rel)).unwrap()
}

/// The role the layout gives the whole path.
fn classified(rel: &str) -> Role {
    classify_path(Path::new(rel)).map_or(Role::Unknown, |k| k.role())
}

#[test]
fn looked_up_inodes_carry_the_role_of_their_path() {
    let (_dir, fs) = store();
    let repo = "docker/registry/v2/repositories/team/app";
    for rel in [
        "docker/registry/v2".to_string(),
        format!("{repo}/_uploads/u1/data"),
        format!("{repo}/_manifests/revisions/sha256/{HEX}/link"),
        "docker/registry/v2/blobs/sha256/a3".into(),
    ] {
        assert_eq!(role_at(&fs, &rel), classified(&rel), "{rel}");
    }
    let link = role_at(
        &fs,
        &format!("{repo}/_manifests/revisions/sha256/{HEX}/link"),
    );
    assert_eq!(link, Role::RevisionLink(digest()));
    let upload = role_at(&fs, &format!("{repo}/_uploads/u1/data"));
    assert_eq!(upload, Role::UploadData);
    assert_eq!(WriteRole::of_role(upload), WriteRole::UploadData);
    assert!(matches!(WriteRole::of_role(link), WriteRole::Link(_)));
    assert_eq!(fs.role_of(1), Some(Role::StoreRoot));
}

#[test]
fn listed_and_created_inodes_carry_their_role() {
    let (_dir, fs) = store();
    let fan_out = walk(&fs, "docker/registry/v2/blobs/sha256/a3");
    let caller = Caller { uid: 0, gid: 0 };
    let dir = fs.mkdir(fan_out, OsStr::new(HEX), 0o755, caller).unwrap();
    assert_eq!(fs.role_of(dir.attr.ino.0), Some(Role::BlobDir(digest())));
    let (made, opened) = fs
        .create(
            dir.attr.ino.0,
            OsStr::new("data"),
            0o644,
            libc::O_WRONLY,
            caller,
            None,
        )
        .unwrap();
    fs.release(opened.fh).unwrap();
    assert_eq!(fs.role_of(made.attr.ino.0), Some(Role::BlobData(digest())));
    // readdirplus: the listed entries get their role without an open.
    let uploads = walk(&fs, "docker/registry/v2/repositories/team/app/_uploads");
    let fh = fs.opendir(uploads).unwrap();
    let mut listed = Vec::new();
    fs.readdir(fh, 0, true, &mut |item| {
        if item.attr.is_some() {
            listed.push(item.ino);
        }
        false
    })
    .unwrap();
    fs.releasedir(fh).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(fs.role_of(listed[0]), Some(Role::Upload));
}

#[test]
fn a_renamed_file_takes_the_role_of_its_new_place() {
    let (_dir, fs) = store();
    let upload = walk(&fs, "docker/registry/v2/repositories/team/app/_uploads/u1");
    let data = walk(
        &fs,
        "docker/registry/v2/repositories/team/app/_uploads/u1/data",
    );
    let fan_out = walk(&fs, "docker/registry/v2/blobs/sha256/a3");
    let caller = Caller { uid: 0, gid: 0 };
    let blob = fs.mkdir(fan_out, OsStr::new(HEX), 0o755, caller).unwrap();
    assert_eq!(fs.role_of(data), Some(Role::UploadData));
    // The upload's commit: its data renamed into blobs/.
    fs.rename(
        upload,
        OsStr::new("data"),
        blob.attr.ino.0,
        OsStr::new("data"),
        0,
    )
    .unwrap();
    assert_eq!(fs.role_of(data), Some(Role::BlobData(digest())));
    assert_eq!(
        WriteRole::of_role(fs.role_of(data).unwrap()),
        WriteRole::Other
    );
}

#[test]
fn everything_below_a_moved_directory_takes_the_role_of_its_new_place() {
    let (_dir, fs) = store();
    let v2 = "docker/registry/v2/repositories";
    let data = walk(&fs, &format!("{v2}/team/app/_uploads/u1/data"));
    let link = walk(
        &fs,
        &format!("{v2}/team/app/_manifests/revisions/sha256/{HEX}/link"),
    );
    let team = walk(&fs, &format!("{v2}/team"));
    let uploads = walk(&fs, &format!("{v2}/team/app/_uploads"));
    let other_uploads = walk(&fs, &format!("{v2}/other/_uploads"));
    // An upload directory moved out of its `_uploads`: its data is no upload any more.
    fs.rename(uploads, OsStr::new("u1"), team, OsStr::new("u1"), 0)
        .unwrap();
    assert_eq!(
        fs.role_of(data),
        Some(classified(&format!("{v2}/team/u1/data")))
    );
    assert_eq!(fs.role_of(data), Some(Role::RepoDir));
    // And into another repository's `_uploads`: an upload again.
    fs.rename(team, OsStr::new("u1"), other_uploads, OsStr::new("u1"), 0)
        .unwrap();
    assert_eq!(fs.role_of(data), Some(Role::UploadData));
    // A repository renamed to a name no repository has: its links are no links.
    let repos = walk(&fs, v2);
    fs.rename(repos, OsStr::new("team"), repos, OsStr::new("_team"), 0)
        .unwrap();
    assert_eq!(fs.role_of(link), Some(Role::Unknown));
    let back = format!("{v2}/team/app/_manifests/revisions/sha256/{HEX}/link");
    fs.rename(repos, OsStr::new("_team"), repos, OsStr::new("team"), 0)
        .unwrap();
    assert_eq!(fs.role_of(link), Some(classified(&back)));
    assert_eq!(regfs::layout::link_role(&back).map(|_| ()), Some(()));
}

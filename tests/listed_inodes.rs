//! Inodes answered in a directory listing are kept by name and opened on first use:
//! a file replaced meanwhile is never served under the listed inode, and renames after
//! the listing keep working.
mod common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;

use regfs::fs::StorageFs;
use regfs::runtime::compose::open_fs;

/// Node ids of every entry of the root, from one readdirplus (one reference each).
fn list_root(fs: &StorageFs) -> HashMap<String, u64> {
    let fh = fs.opendir(1).unwrap();
    let mut out = HashMap::new();
    fs.readdir(fh, 0, true, &mut |item| {
        if item.attr.is_some() {
            out.insert(item.name.to_string_lossy().into_owned(), item.ino);
        }
        false
    })
    .unwrap();
    fs.releasedir(fh).unwrap();
    out
}

fn read_all(fs: &StorageFs, id: u64) -> Result<Vec<u8>, i32> {
    let opened = fs.open(id, libc::O_RDONLY, None).map_err(|e| e.errno())?;
    let data = fs.read(opened.fh, 0, 1 << 16).map_err(|e| e.errno())?;
    fs.release(opened.fh).unwrap();
    Ok(data)
}

fn core_with(prepare: impl FnOnce(&Path)) -> (tempfile::TempDir, StorageFs) {
    let dir = common::tempdir();
    prepare(dir.path());
    let fs = open_fs(dir.path()).unwrap().0;
    (dir, fs)
}

#[test]
fn listed_files_are_served_when_unchanged() {
    let (_dir, fs) = core_with(|s| {
        fs::write(s.join("a"), b"alpha").unwrap();
        fs::create_dir(s.join("sub")).unwrap();
        fs::write(s.join("sub/x"), b"inner").unwrap();
    });
    let ids = list_root(&fs);
    assert_eq!(read_all(&fs, ids["a"]), Ok(b"alpha".to_vec()));
    assert_eq!(fs.getattr(ids["a"]).unwrap().size, 5);
    // A listed directory resolves for a lookup of its child.
    let x = fs.lookup(ids["sub"], OsStr::new("x")).unwrap();
    assert_eq!(read_all(&fs, x.attr.ino.0), Ok(b"inner".to_vec()));
    // A lookup of a listed name gives the same node.
    assert_eq!(fs.lookup(1, OsStr::new("a")).unwrap().attr.ino.0, ids["a"]);
}

#[test]
fn a_file_replaced_after_the_listing_is_never_served_under_the_listed_inode() {
    let outside = common::tempdir();
    fs::write(outside.path().join("secret"), b"outside").unwrap();
    let (dir, fs) = core_with(|s| {
        for n in ["gone", "replaced", "linked", "dir", "touched"] {
            fs::write(s.join(n), b"listed").unwrap();
        }
    });
    let ids = list_root(&fs);
    let s = dir.path();
    fs::remove_file(s.join("gone")).unwrap();
    // Unlink and create: the new file may even reuse the inode number.
    fs::remove_file(s.join("replaced")).unwrap();
    fs::write(s.join("replaced"), b"new file").unwrap();
    fs::remove_file(s.join("linked")).unwrap();
    symlink(outside.path().join("secret"), s.join("linked")).unwrap();
    fs::remove_file(s.join("dir")).unwrap();
    fs::create_dir(s.join("dir")).unwrap();
    // Same file, changed behind the mount's back (ctime moved): refused too, rather
    // than guessed to be the same.
    fs::set_permissions(
        s.join("touched"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    for n in ["gone", "replaced", "linked", "dir", "touched"] {
        assert_eq!(read_all(&fs, ids[n]), Err(libc::ESTALE), "{n}");
        assert_eq!(
            fs.getattr(ids[n]).map_err(|e| e.errno()).err(),
            Some(libc::ESTALE),
            "{n}"
        );
    }
    // A new lookup (what the kernel does on ESTALE) finds the new file as a new node.
    let new = fs.lookup(1, OsStr::new("replaced")).unwrap().attr.ino.0;
    assert_ne!(new, ids["replaced"]);
    assert_eq!(read_all(&fs, new), Ok(b"new file".to_vec()));
    let touched = fs.lookup(1, OsStr::new("touched")).unwrap().attr.ino.0;
    assert_eq!(read_all(&fs, touched), Ok(b"listed".to_vec()));
    assert_eq!(
        fs.lookup(1, OsStr::new("linked")).unwrap_err().errno(),
        libc::ELOOP
    );
}

#[test]
fn renames_after_the_listing_keep_the_listed_inodes() {
    let (_dir, fs) = core_with(|s| {
        fs::write(s.join("a"), b"alpha").unwrap();
        fs::write(s.join("b"), b"beta").unwrap();
        fs::write(s.join("c"), b"gamma").unwrap();
        fs::create_dir(s.join("sub")).unwrap();
    });
    let ids = list_root(&fs);
    fs.rename(1, OsStr::new("a"), ids["sub"], OsStr::new("moved"), 0)
        .unwrap();
    assert_eq!(read_all(&fs, ids["a"]), Ok(b"alpha".to_vec()));
    assert_eq!(fs.path_of(ids["a"]), "sub/moved");
    fs.rename(
        1,
        OsStr::new("b"),
        1,
        OsStr::new("c"),
        libc::RENAME_EXCHANGE,
    )
    .unwrap();
    assert_eq!(read_all(&fs, ids["b"]), Ok(b"beta".to_vec()));
    assert_eq!(read_all(&fs, ids["c"]), Ok(b"gamma".to_vec()));
    assert_eq!(fs.path_of(ids["b"]), "c");
    assert_eq!(fs.path_of(ids["c"]), "b");
}

#[test]
fn through_the_mount_a_replaced_file_reads_as_the_new_one_and_renames_work() {
    let Some(m) = common::mount_with(|s| {
        fs::create_dir(s.join("d")).unwrap();
        for i in 0..20 {
            fs::write(s.join(format!("d/f{i}")), format!("old {i}")).unwrap();
        }
    }) else {
        return;
    };
    let d = m.mnt.join("d");
    // A listing with stats: readdirplus answers every entry.
    let listed: HashMap<String, u64> = fs::read_dir(&d)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                e.metadata().unwrap().ino(),
            )
        })
        .collect();
    assert_eq!(listed.len(), 20);
    // Replaced in the backing directory: the mount reads the new file.
    fs::remove_file(m.storage.join("d/f3")).unwrap();
    fs::write(m.storage.join("d/f3"), b"new 3, longer than before").unwrap();
    assert_eq!(
        fs::read(d.join("f3")).unwrap(),
        b"new 3, longer than before"
    );
    // Renamed through the mount: same inode, same content, under the new name.
    fs::rename(d.join("f5"), d.join("renamed")).unwrap();
    let md = fs::metadata(d.join("renamed")).unwrap();
    assert_eq!(md.ino(), listed["f5"]);
    assert_eq!(fs::read(d.join("renamed")).unwrap(), b"old 5");
    // Untouched entries read as listed.
    assert_eq!(fs::read(d.join("f7")).unwrap(), b"old 7");
    assert_eq!(fs::metadata(d.join("f7")).unwrap().ino(), listed["f7"]);
}

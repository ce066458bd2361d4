//! The kernel caches names for the attribute timeout (60 s by default). A name removed
//! from the store while the kernel still holds it (a collector's delete racing a lookup
//! in flight, an undo whose notice reaches the kernel late) must never take a write:
//! the registry would report a push as done while its link went into a file the store no
//! longer names. Opening such a file answers ESTALE, so the kernel looks the name up
//! again and the write lands in the store. (The online soak lost a tag this way.)
mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

const LINK: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const NEW: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// Writes as the registry's filesystem driver does: open O_WRONLY|O_CREAT (no O_TRUNC), ftruncate,
/// write, sync.
fn put_content(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)?;
    f.set_len(0)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A store holding the link `dir/link`, mounted, the link read once through the mount
/// (the kernel now caches its name, and regfs holds its inode).
fn mounted_with_link_read(dir: &str) -> Option<common::TestMount> {
    let m = common::mount_with(|s| {
        fs::create_dir_all(s.join(dir)).unwrap();
        fs::write(s.join(dir).join("link"), LINK).unwrap();
    })?;
    let through = m.mnt.join(dir).join("link");
    assert_eq!(fs::read_to_string(&through).unwrap(), LINK);
    Some(m)
}

#[test]
fn a_write_through_a_name_the_kernel_still_caches_lands_in_the_store() {
    let Some(m) = mounted_with_link_read("tags/a/current") else {
        return;
    };
    let through = m.mnt.join("tags/a/current/link");
    // Removed behind the kernel's back: its cached entry still names the old file.
    fs::remove_file(m.storage.join("tags/a/current/link")).unwrap();
    assert!(through.exists(), "the kernel still names the removed file");
    put_content(&through, NEW.as_bytes()).expect("the write through the mount");
    let stored = fs::read_to_string(m.storage.join("tags/a/current/link"))
        .expect("the link written through the mount is in the store");
    assert_eq!(stored, NEW);
    assert_eq!(fs::read_to_string(&through).unwrap(), NEW);
}

/// Go's os.MkdirAll: a directory that stats as one is taken as there.
fn go_mkdir_all(dir: &std::path::Path) -> std::io::Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        _ => fs::create_dir_all(dir),
    }
}

#[test]
fn a_file_created_in_a_removed_directory_the_kernel_still_caches_is_never_lost() {
    let Some(m) = mounted_with_link_read("revisions/sha256/ab") else {
        return;
    };
    let dir = m.mnt.join("revisions/sha256/ab");
    // The collector removes the directory; the kernel keeps its entries.
    fs::remove_dir_all(m.storage.join("revisions/sha256/ab")).unwrap();
    assert!(
        dir.join("link").exists(),
        "the kernel still names the removed files"
    );
    // As the registry's driver: MkdirAll (which trusts the cached directory), then
    // PutContent. It may fail (the registry answers 500 and the client retries); it may
    // not succeed with the link nowhere in the store.
    go_mkdir_all(&dir).expect("mkdir -p through the mount");
    match put_content(&dir.join("link"), NEW.as_bytes()) {
        Ok(()) => assert_eq!(
            fs::read_to_string(m.storage.join("revisions/sha256/ab/link"))
                .expect("a write that succeeded is in the store"),
            NEW
        ),
        Err(e) => eprintln!("the write failed, as it may: {e}"),
    }
    // The next attempt, as the client's retry, lands.
    go_mkdir_all(&dir).expect("mkdir -p through the mount");
    put_content(&dir.join("link"), NEW.as_bytes()).expect("the retried write");
    assert_eq!(
        fs::read_to_string(m.storage.join("revisions/sha256/ab/link")).unwrap(),
        NEW
    );
}

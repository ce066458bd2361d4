//! Blob data and an upload's data are served by kernel passthrough, to readers and
//! writers alike; every other file (links above all, and anything outside the
//! registry's tree) is served by the daemon, to readers and writers alike, so the write
//! gate and the link checks see every write, and one file never mixes the two kinds of
//! open (which the kernel refuses with EIO).
mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};

const BLOB: &str = "docker/registry/v2/blobs/sha256/ab/abababababababababababababababababababababababababababababababab/data";
const LINK: &str = "docker/registry/v2/repositories/app/_manifests/tags/t/current/link";

#[test]
fn blob_data_is_served_by_the_kernel_and_other_files_by_the_daemon() {
    let Some(m) = common::mount_with(|s| {
        let blob = s.join(BLOB);
        fs::create_dir_all(blob.parent().unwrap()).unwrap();
        fs::write(&blob, vec![42u8; 4 << 20]).unwrap();
        fs::create_dir_all(s.join(LINK).parent().unwrap()).unwrap();
        fs::write(s.join(LINK), "not read by the kernel").unwrap();
        fs::write(s.join("outside"), "nor this").unwrap();
    }) else {
        return;
    };
    let mut data = Vec::new();
    File::open(m.mnt.join(BLOB))
        .unwrap()
        .read_to_end(&mut data)
        .unwrap();
    assert_eq!(data, vec![42u8; 4 << 20]);
    if !m.fs().passthrough_enabled() {
        // Fallback path: reads are served by the daemon and still correct.
        eprintln!("kernel did not grant FUSE passthrough; checking the fallback read path only");
        assert!(m.fs().daemon_reads() > 0);
        return;
    }
    assert_eq!(
        m.fs().daemon_reads(),
        0,
        "a read of blob data must be served by the kernel"
    );

    // A read-write handle on blob data, while a reader holds it: both by the kernel.
    let reader = File::open(m.mnt.join(BLOB)).unwrap();
    let mut rw = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.mnt.join(BLOB))
        .unwrap();
    let mut head = [0u8; 4096];
    rw.read_exact(&mut head).unwrap();
    assert_eq!(head, [42u8; 4096]);
    rw.write_all(b"written in place").unwrap();
    assert_eq!(m.fs().daemon_reads(), 0, "reads of blob data by the kernel");
    assert_eq!(
        m.fs().daemon_writes(),
        0,
        "writes of blob data by the kernel"
    );
    drop((reader, rw));

    // A link and a file outside the registry's tree: the daemon serves their reads.
    for (path, want) in [(LINK, "not read by the kernel"), ("outside", "nor this")] {
        let before = m.fs().daemon_reads();
        assert_eq!(fs::read_to_string(m.mnt.join(path)).unwrap(), want);
        assert!(m.fs().daemon_reads() > before, "{path}: read by the daemon");
    }
}

/// The data of an upload (a layer being pushed) is written by the kernel straight into
/// the backing file: the daemon sees none of those writes. Other writers still go
/// through the daemon.
#[test]
fn upload_data_writers_use_kernel_write_passthrough() {
    const UPLOAD: &str = "docker/registry/v2/repositories/app/_uploads/u1";
    let Some(m) = common::mount_with(|s| fs::create_dir_all(s.join(UPLOAD)).unwrap()) else {
        return;
    };
    let data = m.mnt.join(UPLOAD).join("data");
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    // As the registry does: create it (POST), then reopen it to append (PATCH).
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&data)
        .unwrap();
    f.write_all(&chunk).unwrap();
    drop(f);
    let mut f = OpenOptions::new().write(true).open(&data).unwrap();
    f.seek(SeekFrom::End(0)).unwrap();
    for _ in 0..3 {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
    // The size through the mount follows the writes the daemon did not see.
    assert_eq!(fs::metadata(&data).unwrap().len(), 4 << 20);
    drop(f);
    let want = chunk.repeat(4);
    assert_eq!(fs::read(m.storage.join(UPLOAD).join("data")).unwrap(), want);
    assert_eq!(
        fs::read(&data).unwrap(),
        want,
        "read back through the mount"
    );
    if !m.fs().passthrough_enabled() {
        eprintln!("kernel did not grant FUSE passthrough; checking the fallback write path only");
        assert!(m.fs().daemon_writes() > 0);
        return;
    }
    assert_eq!(
        m.fs().daemon_writes(),
        0,
        "writes of upload data must be served by the kernel"
    );
    // Any other file of the store is written through the daemon.
    fs::write(
        m.mnt.join(UPLOAD).join("startedat"),
        b"2026-12-01T00:00:00Z",
    )
    .unwrap();
    assert!(m.fs().daemon_writes() > 0, "other writers reach the daemon");
}

/// A file the daemon serves (direct I/O) can still be mapped shared, for reading and
/// writing, and the mappings and read(2)/write(2) see each other's bytes.
#[test]
fn files_the_daemon_serves_can_be_mapped_shared() {
    use std::os::fd::AsRawFd;
    let Some(m) = common::mount_with(|s| fs::write(s.join("outside"), b"hello").unwrap()) else {
        return;
    };
    let path = m.mnt.join("outside");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    // SAFETY: a fresh shared mapping of 5 bytes of an open file, unmapped below and
    // only touched within its length.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            5,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        map,
        libc::MAP_FAILED,
        "mmap MAP_SHARED: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: within the 5 mapped bytes.
    let bytes = unsafe { std::slice::from_raw_parts_mut(map.cast::<u8>(), 5) };
    assert_eq!(bytes, b"hello");
    bytes.copy_from_slice(b"HELLO");
    // SAFETY: the mapping made above.
    assert_eq!(unsafe { libc::msync(map, 5, libc::MS_SYNC) }, 0);
    assert_eq!(fs::read(&path).unwrap(), b"HELLO");
    assert_eq!(fs::read(m.storage.join("outside")).unwrap(), b"HELLO");
    fs::write(&path, b"jello").unwrap();
    assert_eq!(bytes, b"jello", "the mapping sees a write(2)");
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(map, 5) };
}

/// Without kernel passthrough (a kernel that does not grant it, or `--no-passthrough`)
/// reads go through the page cache: a blob's pages are kept across opens (its bytes never
/// change under its name), so reading it again costs the daemon nothing, alone or over a
/// shared store; a link's are dropped at every open, so it is read fresh each time.
#[test]
fn without_passthrough_a_blobs_pages_are_kept_across_opens_and_a_links_are_not() {
    for shared_store in [false, true] {
        let Some(m) = common::mount_configured(
            |s| {
                let blob = s.join(BLOB);
                fs::create_dir_all(blob.parent().unwrap()).unwrap();
                fs::write(&blob, vec![7u8; 1 << 20]).unwrap();
                fs::create_dir_all(s.join(LINK).parent().unwrap()).unwrap();
                fs::write(s.join(LINK), "sha256:one").unwrap();
            },
            |c| {
                c.passthrough = false;
                c.shared_store = shared_store;
            },
        ) else {
            return;
        };
        assert!(!m.fs().passthrough_enabled());
        assert_eq!(fs::read(m.mnt.join(BLOB)).unwrap(), vec![7u8; 1 << 20]);
        let first = m.fs().daemon_reads();
        assert!(first > 0, "the first read reaches the daemon");
        assert_eq!(fs::read(m.mnt.join(BLOB)).unwrap(), vec![7u8; 1 << 20]);
        assert_eq!(
            m.fs().daemon_reads(),
            first,
            "shared store {shared_store}: a blob read again comes from the kernel's cache"
        );

        assert_eq!(fs::read_to_string(m.mnt.join(LINK)).unwrap(), "sha256:one");
        // Rewritten behind this kernel's back (another node, over a shared store).
        fs::write(m.storage.join(LINK), "sha256:two").unwrap();
        assert_eq!(
            fs::read_to_string(m.mnt.join(LINK)).unwrap(),
            "sha256:two",
            "shared store {shared_store}: a link is read fresh at every open"
        );
    }
}

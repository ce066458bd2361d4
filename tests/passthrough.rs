//! Reads of read-only opens bypass the daemon (kernel passthrough), and so do writes of
//! an upload's data; other handles that can write never do, so the write gate sees every
//! write it decides on.
mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};

#[test]
fn read_only_opens_use_kernel_passthrough_and_writers_do_not() {
    let Some(m) = common::mount_with(|s| fs::write(s.join("blob"), vec![42u8; 4 << 20]).unwrap())
    else {
        return;
    };
    let mut data = Vec::new();
    File::open(m.mnt.join("blob"))
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
        "a read-only open must be served by the kernel"
    );

    // A read-write handle is never passthrough: its reads (and writes) reach the daemon.
    let mut rw = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.mnt.join("blob"))
        .unwrap();
    let mut head = [0u8; 4096];
    rw.read_exact(&mut head).unwrap();
    assert_eq!(head, [42u8; 4096]);
    assert!(
        m.fs().daemon_reads() > 0,
        "reads of a write-capable handle go through the daemon"
    );

    // Read-only and write handles on one inode at once do not conflict in the kernel.
    let before = m.fs().daemon_reads();
    let mut again = Vec::new();
    File::open(m.mnt.join("blob"))
        .unwrap()
        .read_to_end(&mut again)
        .unwrap();
    assert_eq!(again.len(), 4 << 20);
    assert_eq!(
        m.fs().daemon_reads(),
        before,
        "passthrough while a writer is open"
    );
    drop(rw);
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

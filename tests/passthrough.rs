//! Reads of read-only opens bypass the daemon (kernel passthrough); handles that can
//! write never do, so the write gate sees every write.
mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Read;

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

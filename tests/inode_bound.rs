//! Open handles stay bounded while a registry walks far more files than the bound.
mod common;

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn walking_many_files_keeps_the_inode_table_bounded() {
    const DIRS: usize = 40;
    const FILES: usize = 250; // 10,000 files, 10,040 inodes
    const HIGH: usize = 1500;
    let Some(m) = common::mount_configured(
        |s| {
            for d in 0..DIRS {
                let dir = s.join(format!("d{d}"));
                fs::create_dir(&dir).unwrap();
                for f in 0..FILES {
                    fs::write(dir.join(format!("f{f}")), b"x").unwrap();
                }
            }
        },
        |cfg| cfg.max_inodes = HIGH,
    ) else {
        return;
    };
    let mut peak = 0;
    for d in 0..DIRS {
        for f in 0..FILES {
            let p = m.mnt.join(format!("d{d}/f{f}"));
            assert_eq!(fs::metadata(&p).unwrap().len(), 1);
        }
        peak = peak.max(m.fs().inode_count());
    }
    // The reclaimer checks every 200 ms; give the kernel's FORGETs a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while m.fs().inode_count() > HIGH && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let held = m.fs().inode_count();
    assert!(
        held <= HIGH,
        "inodes held after the walk: {held} (peak {peak}, bound {HIGH})"
    );
    // Everything is still reachable after the kernel dropped its entries.
    assert_eq!(fs::read(m.mnt.join("d0/f0")).unwrap(), b"x");
    assert_eq!(fs::read_dir(m.mnt.join("d7")).unwrap().count(), FILES);
}

#[test]
fn open_descriptors_stay_within_budget_while_the_kernel_holds_many_more_inodes() {
    const FILES: usize = 3000;
    const BUDGET: usize = 300;
    let Some(m) = common::mount_configured(
        |s| {
            for d in 0..30 {
                let dir = s.join(format!("d{d}"));
                fs::create_dir(&dir).unwrap();
                for f in 0..FILES / 30 {
                    fs::write(dir.join(format!("f{f}")), b"y").unwrap();
                }
            }
        },
        |cfg| cfg.fd_budget = BUDGET,
    ) else {
        return;
    };
    let (_, handles) = m.fs().inode_fds();
    if !handles {
        eprintln!("backing filesystem gives no file handles; descriptors are pinned per inode");
        return;
    }
    let mut peak = 0;
    for d in 0..30 {
        for f in 0..FILES / 30 {
            let p = m.mnt.join(format!("d{d}/f{f}"));
            assert_eq!(fs::read(&p).unwrap(), b"y");
            peak = peak.max(m.fs().inode_fds().0);
        }
    }
    assert!(
        m.fs().inode_count() > FILES,
        "the kernel still holds the inodes"
    );
    assert!(
        peak <= BUDGET + 1,
        "open inode descriptors peaked at {peak}, budget {BUDGET}"
    );
    // Inodes whose descriptor was closed are reopened from their file handle.
    for d in 0..30 {
        assert_eq!(
            fs::metadata(m.mnt.join(format!("d{d}/f0"))).unwrap().len(),
            1
        );
        let mut names: Vec<_> = fs::read_dir(m.mnt.join(format!("d{d}")))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names.len(), FILES / 30);
    }
    fs::write(m.mnt.join("d0/f0"), b"rewritten").unwrap();
    assert_eq!(fs::read(m.storage.join("d0/f0")).unwrap(), b"rewritten");
}

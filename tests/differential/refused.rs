//! What regfs refuses on purpose, checked on the mount only: symbolic and hard links,
//! device nodes, FIFOs, sockets and extended attributes.

use std::ffi::CString;
use std::fs;

use crate::common;
use crate::outcome::{Fail, check, cstr, errno_name};

/// Symbolic links, hard links, device nodes, FIFOs, sockets and xattrs are refused on
/// purpose: a registry store never holds them. Not part of the differential comparison.
#[test]
fn links_special_files_and_xattrs_are_refused_on_the_mount() {
    let Some(m) = common::mount_with(|s| {
        fs::write(s.join("file"), b"content").unwrap();
        std::os::unix::fs::symlink("file", s.join("planted-symlink")).unwrap();
        check(unsafe {
            libc::mkfifo(
                cstr(&s.join("planted-fifo")).as_ptr(),
                0o644 as libc::mode_t,
            )
        })
        .unwrap();
    }) else {
        return;
    };
    let mnt = &m.mnt;
    let file = mnt.join("file");
    let errno = |r: Result<(), Fail>| -> String {
        match r {
            Ok(()) => "ok".into(),
            Err(e) => e.0,
        }
    };
    let eperm = errno_name(libc::EPERM);
    let eopnotsupp = errno_name(libc::EOPNOTSUPP);

    // Creation of links and special files.
    let r = std::os::unix::fs::symlink("file", mnt.join("sym")).map_err(Fail::from);
    assert_eq!(errno(r), eperm, "symlink");
    let r = fs::hard_link(&file, mnt.join("hard")).map_err(Fail::from);
    assert_eq!(errno(r), eperm, "link");
    for (what, mode, dev) in [
        ("fifo", libc::S_IFIFO | 0o644, 0),
        ("socket", libc::S_IFSOCK | 0o644, 0),
        ("char device", libc::S_IFCHR | 0o644, libc::makedev(1, 3)),
        ("block device", libc::S_IFBLK | 0o644, libc::makedev(7, 0)),
    ] {
        let path = mnt.join(format!("node-{}", what.replace(' ', "-")));
        let r = check(unsafe { libc::mknod(cstr(&path).as_ptr(), mode, dev) });
        assert_eq!(errno(r), eperm, "mknod {what}");
    }
    let r = check(unsafe { libc::mkfifo(cstr(&mnt.join("fifo2")).as_ptr(), 0o644) });
    assert_eq!(errno(r), eperm, "mkfifo");

    // Extended attributes, on a file and on the root directory.
    for target in [file.clone(), mnt.clone()] {
        let p = cstr(&target);
        let name = CString::new("user.regfs-test").unwrap();
        let val = b"v";
        let r = check(unsafe {
            libc::setxattr(p.as_ptr(), name.as_ptr(), val.as_ptr().cast(), val.len(), 0)
        });
        assert_eq!(errno(r), eopnotsupp, "setxattr {}", target.display());
        let mut buf = [0u8; 64];
        let rc = unsafe {
            libc::getxattr(
                p.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let r = check(if rc < 0 { -1 } else { 0 });
        assert_eq!(errno(r), eopnotsupp, "getxattr {}", target.display());
        let rc = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        let r = check(if rc < 0 { -1 } else { 0 });
        assert_eq!(errno(r), eopnotsupp, "listxattr {}", target.display());
        let r = check(unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) });
        assert_eq!(errno(r), eopnotsupp, "removexattr {}", target.display());
    }

    // Links and special files planted in the backing store are not served.
    let r = fs::symlink_metadata(mnt.join("planted-symlink"))
        .map(|_| ())
        .map_err(Fail::from);
    assert_eq!(
        errno(r),
        errno_name(libc::ELOOP),
        "lstat of a planted symlink"
    );
    let r = fs::metadata(mnt.join("planted-fifo"))
        .map(|_| ())
        .map_err(Fail::from);
    assert_eq!(errno(r), eperm, "stat of a planted fifo");

    // Nothing was created in the store, and the file is untouched.
    let mut names: Vec<String> = fs::read_dir(&m.storage)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["file", "planted-fifo", "planted-symlink"]);
    assert_eq!(fs::read(&file).unwrap(), b"content");
    assert!(
        fs::symlink_metadata(m.storage.join("file"))
            .unwrap()
            .file_type()
            .is_file()
    );
}

//! Nothing reached through the mount may lead out of the store, and other users get
//! plain-filesystem ownership and permissions.
mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use regfs::runtime::compose::open_fs;

#[test]
fn symlinks_in_the_store_are_never_followed() {
    let outside = common::tempdir();
    fs::write(outside.path().join("secret"), b"outside the store").unwrap();
    let target = outside.path().to_path_buf();
    let Some(m) = common::mount_with(|s| {
        std::os::unix::fs::symlink(target.join("secret"), s.join("to-file")).unwrap();
        std::os::unix::fs::symlink(&target, s.join("to-dir")).unwrap();
        std::os::unix::fs::symlink("../../..", s.join("up")).unwrap();
    }) else {
        return;
    };
    for name in ["to-file", "to-dir", "up"] {
        let p = m.mnt.join(name);
        assert_eq!(
            common::errno(fs::read(&p), name),
            libc::ELOOP,
            "read {name}"
        );
        assert_eq!(
            common::errno(fs::symlink_metadata(&p), name),
            libc::ELOOP,
            "lstat {name}"
        );
    }
    assert_eq!(
        common::errno(fs::read(m.mnt.join("to-dir/secret")), "through dir link"),
        libc::ELOOP
    );
    assert_eq!(
        common::errno(fs::read_dir(m.mnt.join("up")).map(drop), "list up"),
        libc::ELOOP
    );
    // Creating links through the mount is refused as well.
    let r = std::os::unix::fs::symlink("/etc", m.mnt.join("new-link"));
    assert_eq!(common::errno(r, "symlink"), libc::EPERM);
    fs::write(m.mnt.join("f"), b"x").unwrap();
    let r = fs::hard_link(m.mnt.join("f"), m.mnt.join("f2"));
    assert_eq!(common::errno(r, "link"), libc::EPERM);
}

#[test]
fn special_files_and_other_filesystems_inside_the_store_are_refused() {
    let Some(m) = common::mount_with(|s| {
        let fifo =
            std::ffi::CString::new(s.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        fs::create_dir(s.join("inner")).unwrap();
    }) else {
        return;
    };
    assert_eq!(
        common::errno(fs::metadata(m.mnt.join("fifo")), "fifo"),
        libc::EPERM
    );
    // A filesystem mounted inside the store is not served.
    let inner = m.storage.join("inner");
    rustix::mount::mount(
        "tmpfs",
        &inner,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        None::<&std::ffi::CStr>,
    )
    .expect("mount tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = rustix::mount::unmount(self.0, rustix::mount::UnmountFlags::DETACH);
        }
    }
    let _u = Unmount(&inner);
    fs::write(inner.join("on-tmpfs"), b"x").unwrap();
    assert_eq!(
        common::errno(fs::metadata(m.mnt.join("inner")), "inner mount"),
        libc::EXDEV
    );
}

#[test]
fn names_that_walk_out_of_a_directory_are_rejected_by_the_core() {
    // The kernel never sends such names; the core refuses them anyway (no mount needed).
    let dir = common::tempdir();
    fs::create_dir(dir.path().join("a")).unwrap();
    let fs = open_fs(dir.path()).unwrap().0;
    for bad in ["..", ".", "a/..", "../etc", "", "a/b"] {
        let err = fs.lookup(1, OsStr::new(bad)).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL, "{bad:?}: {err}");
    }
    assert!(fs.lookup(1, OsStr::new("a")).is_ok());
}

#[test]
fn another_user_creates_and_reads_files_as_on_a_plain_filesystem() {
    // nobody is not the storage owner: allowed explicitly (as --allow-user nobody).
    let Some(m) = common::mount_configured(|_| {}, |c| c.users.uids.push(65534)) else {
        return;
    };
    let shared = m.mnt.join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let script = format!(
        "set -e; umask 027; cd '{d}'; mkdir -p sub/deep; printf 'content' > sub/deep/f; cat sub/deep/f; \
         printf 'more' >> sub/deep/f; mv sub/deep/f sub/g; ls sub",
        d = shared.display()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "as nobody: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "contentdeep\ng\n");
    let backing = m.storage.join("shared");
    for (p, mode) in [("sub", 0o750), ("sub/deep", 0o750), ("sub/g", 0o640)] {
        let md = fs::metadata(backing.join(p)).unwrap();
        assert_eq!((md.uid(), md.gid()), (65534, 65534), "{p} owner");
        assert_eq!(md.mode() & 0o7777, mode, "{p} mode");
    }
    assert_eq!(fs::read(backing.join("sub/g")).unwrap(), b"contentmore");
    // And the kernel checks permissions for them (default_permissions).
    fs::write(m.mnt.join("root-only"), b"x").unwrap();
    fs::set_permissions(m.mnt.join("root-only"), fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new("cat")
        .arg(m.mnt.join("root-only"))
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "nobody must not read a 0600 root file"
    );
}

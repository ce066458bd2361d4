//! Who may use the mount: by default root and the owner of the storage directory (the
//! registry's user); every request of another user is refused with EACCES, so no local
//! user can spend the daemon's descriptors. `--allow-user` / `--allow-all-users` widen it.
//!
//! Other users are played by a forked child that drops to their uid and makes raw
//! system calls (nothing that allocates between fork and exit).
mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use regfs::fs::access::MountUsers;

/// The registry's user in these tests: not root, not nobody (no passwd entry needed).
const OWNER: u32 = 4242;
const NOBODY: u32 = 65534;

/// One system call a user makes through the mount; the child reports 0 or the errno.
enum Op {
    Stat(CString),
    /// open(2) with these flags (O_CREAT: mode 0644), closed at once.
    Open(CString, i32),
    /// open(2) read-only `n` times, keeping every descriptor; reports how many failed
    /// and the errno of the first failure.
    OpenMany(CString, u32),
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno() -> i64 {
    // SAFETY: reading this thread's errno.
    unsafe { *libc::__errno_location() as i64 }
}

/// Runs `ops` as `uid` (and gid `uid`) in a forked child; one result per op (OpenMany:
/// failures * 1000 + first errno).
fn as_user(uid: u32, ops: &[Op]) -> Vec<i64> {
    let mut pipe = [0i32; 2];
    // SAFETY: plain pipe/fork/waitpid. The child makes only async-signal-safe calls on
    // memory prepared before the fork, then _exit()s.
    unsafe {
        assert_eq!(libc::pipe(pipe.as_mut_ptr()), 0);
        let pid = libc::fork();
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let mut out = [0i64; 16];
            let lim = libc::rlimit {
                rlim_cur: 20_000,
                rlim_max: 20_000,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                libc::_exit(3);
            }
            for (i, op) in ops.iter().enumerate().take(out.len()) {
                out[i] = match op {
                    Op::Stat(p) => {
                        let mut st: libc::stat = std::mem::zeroed();
                        if libc::stat(p.as_ptr(), &mut st) == 0 {
                            0
                        } else {
                            errno()
                        }
                    }
                    Op::Open(p, flags) => {
                        let fd = libc::open(p.as_ptr(), *flags | libc::O_CLOEXEC, 0o644);
                        if fd >= 0 {
                            libc::close(fd);
                            0
                        } else {
                            errno()
                        }
                    }
                    Op::OpenMany(p, n) => {
                        let (mut failed, mut first) = (0i64, 0i64);
                        for _ in 0..*n {
                            if libc::open(p.as_ptr(), libc::O_RDONLY) < 0 {
                                if failed == 0 {
                                    first = errno();
                                }
                                failed += 1;
                            }
                        }
                        failed * 1000 + first
                    }
                };
            }
            let bytes = std::mem::size_of_val(&out);
            libc::write(pipe[1], out.as_ptr().cast(), bytes);
            libc::_exit(0);
        }
        libc::close(pipe[1]);
        let mut out = [0i64; 16];
        let want = std::mem::size_of_val(&out);
        let got = libc::read(pipe[0], out.as_mut_ptr().cast(), want);
        libc::close(pipe[0]);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        assert_eq!(
            got as usize, want,
            "child as uid {uid} failed (status {status})"
        );
        out[..ops.len()].to_vec()
    }
}

/// A store owned by OWNER with a file `f`, a directory `d` and a world-writable `w`.
fn prepare(storage: &Path) {
    fs::write(storage.join("f"), b"content").unwrap();
    for d in ["d", "w"] {
        fs::create_dir(storage.join(d)).unwrap();
    }
    for (p, mode) in [("", 0o755), ("f", 0o644), ("d", 0o755), ("w", 0o777)] {
        let p = storage.join(p);
        std::os::unix::fs::chown(&p, Some(OWNER), Some(OWNER)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// stat, open, list and create as `uid`; the first three on names nobody looked up yet
/// (`tag` makes them unique), since the kernel may answer a stat from its cache.
fn everything_as(uid: u32, m: &common::TestMount, tag: &str) -> Vec<i64> {
    // Written on the backing side: the kernel has never seen it.
    fs::write(m.storage.join(format!("d/fresh-{tag}")), b"x").unwrap();
    let mnt = &m.mnt;
    as_user(
        uid,
        &[
            Op::Stat(c(&mnt.join(format!("d/fresh-{tag}")))),
            Op::Open(c(&mnt.join("f")), libc::O_RDONLY),
            Op::Open(c(&mnt.join("d")), libc::O_RDONLY | libc::O_DIRECTORY),
            Op::Open(
                c(&mnt.join(format!("w/new-{tag}"))),
                libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL,
            ),
        ],
    )
}

#[test]
fn only_root_and_the_storage_owner_may_use_the_mount_by_default() {
    let Some(m) = common::mount_with(prepare) else {
        return;
    };
    // nobody first, before anything is in the kernel's cache.
    let eacces = libc::EACCES as i64;
    assert_eq!(
        everything_as(NOBODY, &m, "nobody"),
        vec![eacces; 4],
        "stat, open, opendir, create as nobody"
    );
    assert!(!m.storage.join("w/new-nobody").exists());
    assert_eq!(everything_as(OWNER, &m, "owner"), vec![0; 4]);
    assert_eq!(everything_as(0, &m, "root"), vec![0; 4]);
    // What the owner created is its own.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(m.storage.join("w/new-owner")).unwrap().uid(),
        OWNER
    );
    // Still refused once root and the owner have looked everything up.
    let again = as_user(
        NOBODY,
        &[
            Op::Open(c(&m.mnt.join("f")), libc::O_RDONLY),
            Op::Open(c(&m.mnt.join("d")), libc::O_RDONLY | libc::O_DIRECTORY),
        ],
    );
    assert_eq!(again, vec![eacces; 2]);
}

#[test]
fn allowed_users_and_all_users_options_widen_the_mount() {
    let Some(m) = common::mount_configured(prepare, |c| {
        c.users = MountUsers {
            all: false,
            uids: vec![NOBODY],
        }
    }) else {
        return;
    };
    assert_eq!(everything_as(NOBODY, &m, "nobody"), vec![0; 4]);
    let eacces = libc::EACCES as i64;
    assert_eq!(everything_as(4343, &m, "other"), vec![eacces; 4]);
    drop(m);
    let Some(m) = common::mount_configured(prepare, |c| c.users.all = true) else {
        return;
    };
    assert_eq!(everything_as(4343, &m, "other"), vec![0; 4]);
}

/// Open descriptors of this process (the daemon runs in it).
fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_user_opening_ten_thousand_files_spends_none_of_the_daemons_descriptors() {
    let Some(m) = common::mount_with(prepare) else {
        return;
    };
    let eacces_all = 10_000 * 1000 + libc::EACCES as i64;
    let burst = || as_user(NOBODY, &[Op::OpenMany(c(&m.mnt.join("f")), 10_000)]);
    let before = open_fds();
    assert_eq!(
        burst()[0],
        eacces_all,
        "every one of nobody's 10,000 opens is refused with EACCES (failures*1000 + errno)"
    );
    // Other tests of this binary mount and open files in the same process at the same
    // time: a margin of 100 tells "none" from the 10,000 an unrefused burst would hold.
    assert!(
        open_fds() <= before + 100,
        "daemon descriptors grew from {before} to {}",
        open_fds()
    );
    // nobody's burst and the registry user's opens at the same time.
    let (nobody, owner) = std::thread::scope(|s| {
        let nobody = s.spawn(burst);
        let owner = s.spawn(|| as_user(OWNER, &[Op::OpenMany(c(&m.mnt.join("f")), 500)]));
        (nobody.join().unwrap(), owner.join().unwrap())
    });
    assert_eq!(nobody[0], eacces_all);
    assert_eq!(
        owner[0], 0,
        "the owner's 500 opens during the burst all succeed"
    );
    // And afterwards.
    let r = as_user(OWNER, &[Op::OpenMany(c(&m.mnt.join("f")), 500)]);
    assert_eq!(r[0], 0, "the owner's 500 opens after the burst all succeed");
    assert_eq!(fs::read(m.mnt.join("f")).unwrap(), b"content");
}

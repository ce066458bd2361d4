//! Several opens of one file at once behave as on a plain directory, on a real mount
//! (issue 18, findings 2 and 3):
//! - a file held open for reading can be written by another open (the kernel refuses
//!   to mix a passthrough open and a non-passthrough open of one inode, so the daemon
//!   must choose consistently), on a link path and on a file outside the registry tree;
//! - a tag pulled while it is pushed: readers looping open/read/close on its
//!   `current/link` while a writer rewrites it as the registry's PutContent does, with
//!   no error on either side;
//! - a link write the mount refuses (it names a blob without data) is undone before the
//!   `close` that ends it returns: a read right after finds the link's previous bytes,
//!   or no file if the refused writer created it.
mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::store::StoreBuilder;
use regfs::layout::Digest;

const REPO: &str = "docker/registry/v2/repositories/app";

fn current(tag: &str) -> String {
    format!("{REPO}/_manifests/tags/{tag}/current/link")
}

/// The registry's PutContent (2.8 filesystem driver): open O_WRONLY|O_CREAT (no
/// O_TRUNC), ftruncate(0), write, fsync, close. The first error, with its step.
fn put_content(path: &Path, bytes: &[u8]) -> Result<(), (&'static str, std::io::Error)> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
        .map_err(|e| ("open", e))?;
    f.set_len(0).map_err(|e| ("ftruncate", e))?;
    f.write_all(bytes).map_err(|e| ("write", e))?;
    f.sync_all().map_err(|e| ("fsync", e))?;
    // close(2) reports what the kernel's FLUSH answered; std's drop would hide it.
    close(f).map_err(|e| ("close", e))
}

fn close(f: File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    // SAFETY: `fd` was just released from its File; it is closed exactly once here.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A store with two manifests (blob and revision), tag `t` naming the first, and an
/// empty tag `n`.
fn seed(root: &Path) -> (Digest, Digest) {
    let store = StoreBuilder::new(root);
    let a = store.blob(b"manifest a");
    let b = store.blob(b"manifest b");
    for d in [a, b] {
        let revision = root.join(format!(
            "{REPO}/_manifests/revisions/sha256/{}/link",
            d.hex()
        ));
        fs::create_dir_all(revision.parent().unwrap()).unwrap();
        fs::write(revision, d.to_string()).unwrap();
    }
    fs::create_dir_all(root.join(current("t")).parent().unwrap()).unwrap();
    fs::create_dir_all(root.join(current("n")).parent().unwrap()).unwrap();
    fs::write(root.join(current("t")), a.to_string()).unwrap();
    fs::create_dir_all(root.join("outside")).unwrap();
    (a, b)
}

/// Runs `script` with `sh` in `dir`: its status, stdout and stderr.
fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&dir.display().to_string(), "");
    format!(
        "status={:?} stdout={:?} stderr={:?}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        stderr.trim()
    )
}

/// The shell cases of the issue: a write while the shell holds the file open for
/// reading (or read-write), on empty and non-empty files, outside the registry tree and
/// on a link path; the same outcome as on a plain directory.
#[test]
fn a_file_held_open_for_reading_can_be_written_as_on_a_plain_directory() {
    let Some(m) = common::mount_with(|s| {
        seed(s);
    }) else {
        return;
    };
    let plain = common::tempdir();
    seed(plain.path());
    let scripts = [
        "exec 3<f; echo x >> f",
        "exec 3<f; echo x > f",
        "exec 4<>f; echo x >> f",
        "exec 3<f; exec 4<>f; echo y >&4",
        "exec 4<>f; exec 3<f; echo z >&4; cat <&3",
        "exec 3<f; echo x >> f; exec 5<f; echo w >> f; cat <&5",
    ];
    let tag_dir = Path::new(&current("t")).parent().unwrap().to_path_buf();
    let mut failures = Vec::new();
    for dir in [Path::new("outside"), tag_dir.as_path()] {
        // The scripts name the file `f`; on a link path it is `link`.
        let name = if dir == Path::new("outside") {
            "f"
        } else {
            "link"
        };
        for initial in ["", "old\n"] {
            for script in scripts {
                let script = script.replace(" f", &format!(" {name}"));
                let script = script.replace("<f", &format!("<{name}"));
                let mut outcomes = Vec::new();
                for root in [plain.path(), m.mnt.as_path()] {
                    let d = root.join(dir);
                    fs::write(d.join(name), initial).unwrap();
                    let mut out = sh(&d, &script);
                    let content = fs::read(d.join(name)).unwrap();
                    out.push_str(&format!(" {name}={:?}", String::from_utf8_lossy(&content)));
                    outcomes.push(out);
                }
                if outcomes[0] != outcomes[1] {
                    failures.push(format!(
                        "{}: `{script}` on {initial:?}:\n    plain: {}\n    mount: {}",
                        dir.display(),
                        outcomes[0],
                        outcomes[1]
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) differ from a plain directory:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// The filer's measurement, shortened: two threads pull a tag (open, read, close its
/// `current/link` in a loop) while a third pushes it (PutContent); no call may fail.
#[test]
fn a_tag_pushed_while_it_is_pulled_never_fails() {
    let digests = Arc::new(Mutex::new(None));
    let d2 = digests.clone();
    let Some(m) = common::mount_with(move |s| *d2.lock().unwrap() = Some(seed(s))) else {
        return;
    };
    let (a, b) = digests.lock().unwrap().unwrap();
    let link = m.mnt.join(current("t"));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (link, stop, reads, errors) =
                (link.clone(), stop.clone(), reads.clone(), errors.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = File::open(&link).and_then(|mut f| {
                        let mut s = String::new();
                        f.read_to_string(&mut s).map(|_| s)
                    });
                    match r {
                        Ok(_) => {
                            reads.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.lock().unwrap().push(format!("read: {e}")),
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(3);
    let (mut writes, mut failed) = (0u64, 0u64);
    while Instant::now() < deadline {
        let d = if writes % 2 == 0 { b } else { a };
        writes += 1;
        if let Err((step, e)) = put_content(&link, d.to_string().as_bytes()) {
            failed += 1;
            let mut errors = errors.lock().unwrap();
            if errors.len() < 20 {
                errors.push(format!("write ({step}): {e}"));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let errors = errors.lock().unwrap();
    eprintln!(
        "{writes} PutContent, {failed} failed; {} reads",
        reads.load(Ordering::Relaxed)
    );
    assert!(
        errors.is_empty(),
        "{failed} of {writes} writes failed while the tag was read ({} reads); first errors:\n  {}",
        reads.load(Ordering::Relaxed),
        errors
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    assert!(writes > 20, "too few writes to show anything: {writes}");
    let last = fs::read(&link).unwrap();
    assert!(last == a.to_string().as_bytes() || last == b.to_string().as_bytes());
}

/// A PutContent refused for naming a blob without data leaves, by the time its close
/// returns, the link as it was (or no file, if the refused writer created it). Looped:
/// the window between close and the daemon's RELEASE is short.
#[test]
fn a_refused_link_write_is_undone_before_close_returns() {
    let digests = Arc::new(Mutex::new(None));
    let d2 = digests.clone();
    let Some(m) = common::mount_with(move |s| *d2.lock().unwrap() = Some(seed(s))) else {
        return;
    };
    let (a, _) = digests.lock().unwrap().unwrap();
    let missing = Digest::of(b"a blob GC deleted");
    let existing = m.mnt.join(current("t"));
    let created = m.mnt.join(current("n"));
    let mut wrong = Vec::new();
    const TRIES: usize = 300;
    for i in 0..TRIES {
        let r = put_content(&existing, missing.to_string().as_bytes());
        assert!(
            r.is_err(),
            "try {i}: a link to a blob without data was accepted"
        );
        match fs::read(&existing) {
            Ok(b) if b == a.to_string().as_bytes() => {}
            other => wrong.push(format!(
                "try {i}: existing link after the refused write's close: {:?}",
                other.map(|b| String::from_utf8_lossy(&b).into_owned())
            )),
        }
        let r = put_content(&created, missing.to_string().as_bytes());
        assert!(
            r.is_err(),
            "try {i}: a new link to a blob without data was accepted"
        );
        match fs::metadata(&created) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => wrong.push(format!(
                "try {i}: new link after the refused write's close: {:?} (content {:?})",
                other.map(|md| md.len()),
                fs::read(&created).map(|b| String::from_utf8_lossy(&b).into_owned())
            )),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} reads after a refused write's close saw it not undone; first:\n  {}",
        wrong.len(),
        2 * TRIES,
        wrong
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

/// A file renamed to another role while held open keeps the kind of its open handles.
/// Blob data read by kernel passthrough and renamed onto a tag's link cannot be written
/// while that reader holds it (its bytes must reach the link checks, and the kernel
/// refuses to mix the two kinds of open): ETXTBSY, never EIO, never a bypass; once the
/// reader closes, the link is written as usual. A link held by its writer and renamed
/// to blob data can be read at once, and sees that writer's later writes.
#[test]
fn a_file_renamed_across_roles_while_held_open_keeps_working() {
    let digests = Arc::new(Mutex::new(None));
    let d2 = digests.clone();
    let Some(m) = common::mount_with(move |s| *d2.lock().unwrap() = Some(seed(s))) else {
        return;
    };
    let (a, b) = digests.lock().unwrap().unwrap();
    let blob = m.mnt.join(common::registry_sim::blob_data(&b));
    let link = m.mnt.join(current("t"));
    let reader = File::open(&blob).unwrap();
    fs::rename(&blob, &link).unwrap();
    let r = put_content(&link, a.to_string().as_bytes());
    let passthrough = m.fs().passthrough_enabled();
    match (&r, passthrough) {
        (Err(("open", e)), true) => assert_eq!(e.raw_os_error(), Some(libc::ETXTBSY), "{e}"),
        (Ok(()), false) => {}
        other => panic!("a write of a link held by a passthrough reader: {other:?}"),
    }
    if passthrough {
        assert_eq!(fs::read(&link).unwrap(), b"manifest b", "left as it was");
    }
    drop(reader);
    put_content(&link, a.to_string().as_bytes()).unwrap();
    assert_eq!(fs::read(&link).unwrap(), a.to_string().as_bytes());

    // The other way: a link's writer holds it while it becomes blob data.
    let mut writer = OpenOptions::new().write(true).open(&link).unwrap();
    fs::rename(&link, &blob).unwrap();
    let mut reader = File::open(&blob).unwrap();
    writer.write_all(b"rewritten by the held writer").unwrap();
    let mut seen = String::new();
    reader.read_to_string(&mut seen).unwrap();
    assert_eq!(&seen[..28], "rewritten by the held writer");
}

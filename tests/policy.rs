//! The filesystem core asks its policy at each kind of operation, without a mount: a
//! test policy that refuses writers under one directory and hides one name, and records
//! what it was asked. What a new policy (the online barrier, a cluster gate) relies on.
mod common;

use std::ffi::OsStr;
use std::fs;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use regfs::error::{FsError, FsResult};
use regfs::fs::{Caller, SetAttr, StorageFs};
use regfs::policy::{
    Change, ChangeLease, HeldChange, HeldWriter, Name, StorePolicy, Write, WriteLease, WriteRole,
    Writer, WriterLease,
};

const ROOT: u64 = 1;
const ME: Caller = Caller { uid: 0, gid: 0 };
const FROZEN: &str = "frozen/";
const HIDDEN: &str = "hidden";
const UPLOAD_DATA: &str = "docker/registry/v2/repositories/repo/_uploads/u1/data";

/// What the policy was asked, in order, and how many leases are still held.
#[derive(Debug, Default)]
struct Log {
    asked: Mutex<Vec<String>>,
    leases: AtomicU32,
}

impl Log {
    fn ask(&self, what: String) {
        self.asked.lock().unwrap().push(what);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.asked.lock().unwrap())
    }

    fn lease(self: &Arc<Self>) -> Lease {
        self.leases.fetch_add(1, Ordering::SeqCst);
        Lease(self.clone())
    }
}

/// Counts itself out of `Log::leases` when dropped.
#[derive(Debug)]
struct Lease(Arc<Log>);

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.leases.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct Recording(Arc<Log>);

fn writer_lease(log: &Arc<Log>, writer: &Writer<'_>) -> WriterLease {
    log.ask(format!("writer {} {:?}", writer.path(), writer.role()));
    WriterLease::held(RecordedWriter(log.lease(), writer.path().to_owned()))
}

impl StorePolicy for Recording {
    fn admit_change(&self, change: &Change<'_>) -> FsResult<ChangeLease> {
        self.0.ask(format!("{change:?}"));
        Ok(ChangeLease::held(RecordedChange(self.0.lease())))
    }

    fn admit_writer(&self, writer: Writer<'_>) -> FsResult<WriterLease> {
        if writer.path().starts_with(FROZEN) {
            self.0.ask(format!("refused writer {}", writer.path()));
            return Err(FsError::ReadOnlyEpoch {
                path: writer.path().into(),
            });
        }
        Ok(writer_lease(&self.0, &writer))
    }

    fn is_visible(&self, name: &Name<'_>) -> bool {
        name.name != HIDDEN
    }

    fn check_write_access(&self, path: &str) -> FsResult<()> {
        self.0.ask(format!("access {path}"));
        Ok(())
    }

    fn note_read(&self, _read: regfs::policy::LinkRead, path: &dyn Fn() -> String) {
        self.0.ask(format!("read {}", path()));
    }
}

#[derive(Debug)]
struct RecordedChange(Lease);

impl HeldChange for RecordedChange {
    fn admit_writer(&self, writer: Writer<'_>) -> WriterLease {
        writer_lease(&self.0.0, &writer)
    }
}

#[derive(Debug)]
struct RecordedWriter(Lease, String);

impl HeldWriter for RecordedWriter {
    fn admit_write(&self, write: &Write<'_>) -> FsResult<WriteLease> {
        let what = match write {
            Write::Bytes { offset, data } => format!("write {} {offset}+{}", self.1, data.len()),
            Write::Truncate { size } => format!("truncate {} {size}", self.1),
        };
        self.0.0.ask(what);
        Ok(WriteLease::held(self.0.0.lease()))
    }
}

fn core() -> (tempfile::TempDir, StorageFs, Arc<Log>) {
    let dir = common::tempdir();
    for d in [
        "frozen",
        "open",
        "docker/registry/v2/repositories/repo/_uploads/u1",
    ] {
        fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    fs::write(dir.path().join("frozen/f"), b"old").unwrap();
    fs::write(dir.path().join("open/f"), b"old").unwrap();
    fs::write(dir.path().join(HIDDEN), b"secret").unwrap();
    let log = Arc::new(Log::default());
    let fs = StorageFs::new(dir.path(), Arc::new(Recording(log.clone()))).unwrap();
    (dir, fs, log)
}

fn walk(fs: &StorageFs, rel: &str) -> FsResult<u64> {
    rel.split('/').try_fold(ROOT, |parent, name| {
        Ok(fs.lookup(parent, OsStr::new(name))?.attr.ino.0)
    })
}

fn names(fs: &StorageFs, dir: u64, plus: bool) -> Vec<String> {
    let fh = fs.opendir(dir).unwrap();
    let mut names = Vec::new();
    fs.readdir(fh, 0, plus, &mut |item| {
        names.push(item.name.to_string_lossy().into_owned());
        false
    })
    .unwrap();
    fs.releasedir(fh).unwrap();
    names.retain(|n| n != "." && n != "..");
    names.sort();
    names
}

#[test]
fn a_name_the_policy_hides_is_missing_to_lookups_and_listings() {
    let (dir, fs, _) = core();
    let err = fs.lookup(ROOT, OsStr::new(HIDDEN)).unwrap_err();
    assert_eq!(err.errno(), libc::ENOENT, "{err}");
    for plus in [false, true] {
        assert_eq!(
            names(&fs, ROOT, plus),
            ["docker", "frozen", "open"],
            "plus: {plus}"
        );
    }
    // Hidden, not gone.
    assert!(dir.path().join(HIDDEN).exists());
}

#[test]
fn writers_the_policy_refuses_are_refused_before_anything_changes() {
    let (dir, fs, log) = core();
    let frozen = walk(&fs, "frozen/f").unwrap();
    let err = fs
        .open(frozen, libc::O_WRONLY | libc::O_TRUNC, None)
        .unwrap_err();
    assert_eq!(err.errno(), libc::EROFS);
    assert_eq!(fs::read(dir.path().join("frozen/f")).unwrap(), b"old");
    // Reads are not the policy's business.
    let fh = fs.open(frozen, libc::O_RDONLY, None).unwrap().fh;
    assert_eq!(fs.read(fh, 0, 10).unwrap(), b"old");
    fs.release(fh).unwrap();
    assert_eq!(log.take(), ["refused writer frozen/f"]);
    assert_eq!(log.leases.load(Ordering::SeqCst), 0);
}

#[test]
fn every_change_writer_write_and_access_is_asked_and_every_lease_given_back() {
    let (_dir, fs, log) = core();
    let open = walk(&fs, "open").unwrap();
    let f = walk(&fs, "open/f").unwrap();
    let fh = fs.open(f, libc::O_WRONLY, None).unwrap().fh;
    assert_eq!(log.leases.load(Ordering::SeqCst), 1, "the writer's lease");
    fs.setattr(
        f,
        SetAttr {
            size: Some(0),
            fh: Some(fh),
            ..Default::default()
        },
    )
    .unwrap();
    fs.write(fh, 0, b"new").unwrap();
    fs.release(fh).unwrap();
    fs.mkdir(open, OsStr::new("d"), 0o755, ME).unwrap();
    let (_, created) = fs
        .create(open, OsStr::new("c"), 0o644, libc::O_WRONLY, ME, None)
        .unwrap();
    fs.release(created.fh).unwrap();
    fs.rename(open, OsStr::new("c"), open, OsStr::new("c2"), 0)
        .unwrap();
    fs.setattr(
        f,
        SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .unwrap();
    fs.unlink(open, OsStr::new("c2")).unwrap();
    fs.rmdir(open, OsStr::new("d")).unwrap();
    fs.access(f, libc::W_OK).unwrap();
    fs.access(f, libc::R_OK).unwrap();
    let upload = walk(&fs, UPLOAD_DATA.rsplit_once('/').unwrap().0).unwrap();
    let (_, data) = fs
        .create(upload, OsStr::new("data"), 0o644, libc::O_WRONLY, ME, None)
        .unwrap();
    fs.release(data.fh).unwrap();
    assert_eq!(
        log.take(),
        [
            "writer open/f Other",
            "truncate open/f 0",
            "write open/f 0+3",
            r#"Mkdir { path: "open/d" }"#,
            r#"Create { path: "open/c", writes: true }"#,
            "writer open/c Other",
            r#"Rename { from: "open/c", to: "open/c2" }"#,
            r#"SetAttr { path: "open/f" }"#,
            r#"Remove { path: "open/c2" }"#,
            r#"Remove { path: "open/d" }"#,
            "access open/f",
            r#"Create { path: "docker/registry/v2/repositories/repo/_uploads/u1/data", writes: true }"#,
            &format!("writer {UPLOAD_DATA} {:?}", WriteRole::UploadData),
        ]
    );
    assert_eq!(log.leases.load(Ordering::SeqCst), 0, "every lease dropped");
}

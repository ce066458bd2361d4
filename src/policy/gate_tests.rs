use super::*;
use crate::policy::WriteMeaning;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::thread;

const LINK: &str = "docker/registry/v2/repositories/a/_manifests/tags/t/current/link";

/// A writer of `path` (its meaning kept for the test's length).
fn writer(path: &str) -> Writer<'static> {
    Writer {
        meaning: Box::leak(Box::new(WriteMeaning::of_path(path))),
        undo: None,
    }
}

fn write() -> Write<'static> {
    Write::Bytes {
        offset: 0,
        data: b"x",
    }
}

fn is_erofs<T: std::fmt::Debug>(r: FsResult<T>) -> bool {
    r.is_err_and(|e| e.errno() == libc::EROFS)
}

#[test]
fn closed_gate_refuses_changes_new_writers_and_write_access() {
    let gate = WriteGate::new();
    let policy: &dyn StorePolicy = &gate;
    let mkdir = Change::Mkdir { path: "d" };
    drop(policy.admit_change(&mkdir).unwrap());
    let report = gate.close_for_writes(Duration::from_secs(1));
    assert!(report.cut.is_empty());
    assert!(is_erofs(policy.admit_change(&mkdir)));
    assert!(is_erofs(policy.admit_writer(writer(LINK))));
    assert!(is_erofs(policy.admit_writer(writer(
        "docker/registry/v2/repositories/r/_uploads/u/data"
    ))));
    assert!(is_erofs(policy.check_write_access("blob")));
    let name = || "blob".to_string();
    assert!(policy.is_visible(&Name::new("blob".as_ref(), &name)));
    assert!(gate.reopen_for_writes());
    assert!(policy.admit_change(&mkdir).is_ok());
    assert!(policy.check_write_access("blob").is_ok());
}

#[test]
fn upload_files_other_than_data_are_cut_at_once_and_stay_cut_after_reopen() {
    let gate = WriteGate::new();
    let up = gate
        .admit_writer(writer(
            "docker/registry/v2/repositories/r/_uploads/u/startedat",
        ))
        .unwrap();
    let report = gate.close_for_writes(Duration::from_secs(5));
    assert!(report.waited < Duration::from_secs(1));
    assert_eq!(report.cut.len(), 1);
    assert_eq!(report.cut[0].reason, CutReason::Upload);
    assert!(is_erofs(up.admit_write(&write())));
    gate.reopen_for_writes();
    assert!(is_erofs(up.admit_write(&write())));
}

#[test]
fn an_upload_data_writer_is_neither_waited_for_nor_cut() {
    let gate = WriteGate::new();
    let data = gate
        .admit_writer(writer("docker/registry/v2/repositories/r/_uploads/u/data"))
        .unwrap();
    let in_flight = data.admit_write(&write()).unwrap();
    let report = gate.close_for_writes(Duration::from_secs(5));
    assert!(report.waited < Duration::from_secs(1), "{report:?}");
    assert!(
        report.cut.is_empty() && report.drained.is_empty(),
        "{report:?}"
    );
    drop(in_flight);
    // Its writes go on during the epoch (with kernel passthrough they never reach
    // the daemon anyway); the upload's commit is what the gate refuses.
    assert!(data.admit_write(&write()).is_ok());
    let from = "docker/registry/v2/repositories/r/_uploads/u/data";
    let to = WriteMeaning::renamed(from, "blobs/sha256/ab/abcd/data");
    let commit = Change::Rename { from, to: &to };
    assert!(is_erofs(gate.admit_change(&commit)));
}

#[test]
fn a_create_admitted_before_the_close_registers_its_writer_after_it() {
    let gate = Arc::new(WriteGate::new());
    let change = gate
        .admit_change(&Change::Create {
            meaning: &WriteMeaning::of_path(LINK),
            writes: true,
        })
        .unwrap();
    let g2 = gate.clone();
    let closer = thread::spawn(move || g2.close_for_writes(Duration::from_millis(50)));
    thread::sleep(Duration::from_millis(30));
    // The close waits for the change; the create's handle joins the writers it cuts.
    let lease = change.admit_writer(writer(LINK));
    drop(change);
    let report = closer.join().unwrap();
    assert_eq!(report.cut.len(), 1, "{report:?}");
    assert!(is_erofs(lease.admit_write(&write())));
}

#[test]
fn in_place_writer_drains_before_close_returns() {
    let gate = Arc::new(WriteGate::new());
    let lease = gate.admit_writer(writer(LINK)).unwrap();
    let writer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        // Still allowed to write while the close drains; released when dropped.
        lease.admit_write(&write()).is_ok()
    });
    let report = gate.close_for_writes(Duration::from_secs(5));
    assert!(
        writer.join().unwrap(),
        "drain must let the in-place writer finish"
    );
    assert_eq!(report.drained, vec![LINK.to_string()]);
    assert!(report.cut.is_empty());
    assert!(report.waited >= Duration::from_millis(90));
}

#[test]
fn in_place_writer_is_cut_after_the_drain_timeout() {
    let gate = WriteGate::new();
    let lease = gate.admit_writer(writer("manifest")).unwrap();
    let report = gate.close_for_writes(Duration::from_millis(50));
    assert_eq!(report.cut.len(), 1);
    assert_eq!(report.cut[0].reason, CutReason::DrainTimeout);
    assert!(is_erofs(lease.admit_write(&write())));
}

#[derive(Debug, Default)]
struct CountRepairs(AtomicU32);

impl WriteUndo for CountRepairs {
    fn repair_cut(&self) -> Option<String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Some("repaired".into())
    }
    fn undo_refused_write(&self) {}
}

#[test]
fn a_writer_cut_by_the_drain_timeout_is_repaired_once_after_its_write_ends() {
    let gate = Arc::new(WriteGate::new());
    let repair = Arc::new(CountRepairs::default());
    let with_undo = |path| Writer {
        undo: Some(repair.clone() as Arc<dyn WriteUndo>),
        ..writer(path)
    };
    let lease = gate.admit_writer(with_undo(LINK)).unwrap();
    drop(gate.admit_writer(with_undo("other")).unwrap());
    // A write in flight across the deadline: the repair waits for it.
    let write = lease.admit_write(&write()).unwrap();
    let g2 = gate.clone();
    let t = thread::spawn(move || g2.close_for_writes(Duration::from_millis(50)));
    thread::sleep(Duration::from_millis(150));
    assert_eq!(repair.0.load(Ordering::SeqCst), 0, "not while writing");
    drop(write);
    let report = t.join().unwrap();
    assert_eq!(repair.0.load(Ordering::SeqCst), 1);
    assert_eq!(report.cut.len(), 1);
    assert_eq!(report.cut[0].repaired.as_deref(), Some("repaired"));
    // Cut before, not again.
    gate.reopen_for_writes();
    gate.close_for_writes(Duration::from_millis(10));
    assert_eq!(repair.0.load(Ordering::SeqCst), 1);
}

#[test]
fn close_waits_for_changes_in_flight() {
    let gate = Arc::new(WriteGate::new());
    let g2 = gate.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = thread::spawn(move || {
        let lease = g2.admit_change(&Change::Remove { path: "x" }).unwrap();
        tx.send(()).unwrap();
        thread::sleep(Duration::from_millis(100));
        drop(lease);
    });
    rx.recv().unwrap();
    let report = gate.close_for_writes(Duration::from_secs(5));
    t.join().unwrap();
    assert!(report.waited >= Duration::from_millis(90));
}

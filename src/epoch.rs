//! The write gate: closes the store for writes during a GC epoch and opens it again.
//!
//! The filesystem asks the gate before every change. While the gate is closed, new
//! write-capable opens and every namespace or attribute change answer EROFS. Handles that
//! were already open for writing are treated by what they hold: uploads are cut at once
//! (the client retries them and nothing committed is lost); any other writer (a link file
//! or manifest being rewritten in place) may finish within the drain timeout. A writer
//! still open after it is cut; one that carries a [`CutRepair`] (a link file) is then put
//! back as it was before its write, so an epoch never leaves a truncated link behind.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What an open write handle holds, which decides how an epoch treats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterClass {
    /// A file of an upload in progress: refused at once when the gate closes.
    Upload,
    /// Anything else (link files, manifests written in place): may drain.
    InPlace,
}

impl WriterClass {
    /// Classifies a path relative to the store root.
    pub fn of_path(path: &str) -> Self {
        Self::of_role(crate::layout::Role::of_path(path))
    }

    /// Classifies a node by its role in the layout (an inode's, computed at lookup).
    pub fn of_role(role: crate::layout::Role) -> Self {
        if role.is_upload() {
            WriterClass::Upload
        } else {
            WriterClass::InPlace
        }
    }
}

/// Why a writer lost the right to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// An upload in progress when the gate closed.
    Upload,
    /// An in-place writer still open when the drain timeout ran out.
    DrainTimeout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutWriter {
    pub path: String,
    pub reason: CutReason,
    /// What the writer's repair did, if it had one and anything needed doing.
    pub repaired: Option<String>,
}

/// Undoes what a writer cut by the drain timeout left half done. Called once, after the
/// writer's last admitted write has ended and before the close returns (so before a
/// collector reads the store); says what it did, or `None` if nothing was needed.
pub trait CutRepair: Send + Sync + fmt::Debug {
    fn repair(&self) -> Option<String>;
}

/// What closing the gate took.
#[derive(Debug, Clone, Default)]
pub struct CloseReport {
    /// How long `close_for_writes` waited for writers to finish.
    pub waited: Duration,
    /// In-place writers that finished and were released during the drain.
    pub drained: Vec<String>,
    /// Writers whose writes are refused from now on.
    pub cut: Vec<CutWriter>,
    /// The close stopped waiting for writers on request; some may still be open.
    pub gave_up: bool,
}

/// Identifies a registered write handle; returned to the gate on release.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WriterToken(u64);

#[derive(Debug)]
struct Writer {
    class: WriterClass,
    path: String,
    cut: bool,
    in_flight: u32,
    repair: Option<Arc<dyn CutRepair>>,
}

#[derive(Debug, Default)]
struct State {
    closed: bool,
    next_id: u64,
    writers: HashMap<u64, Writer>,
    /// Namespace/attribute changes admitted and not yet finished.
    changes_in_flight: u32,
    /// Paths of in-place writers released while a close was draining.
    drained: Vec<String>,
    draining: bool,
}

impl State {
    fn busy(&self) -> bool {
        self.changes_in_flight > 0 || self.writers.values().any(|w| w.in_flight > 0)
    }
}

/// Refused by the gate: the store is in a GC epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

#[derive(Debug, Default)]
pub struct WriteGate {
    /// Mirrors `State::closed` for lock-free status reads.
    closed: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
}

impl WriteGate {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated in a way that
        // matters more than losing the gate, so recover the guard.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Admits one namespace or attribute change (create, mkdir, unlink, rmdir, rename,
    /// setattr on a path). The change counts as in flight until the guard drops.
    pub fn admit_change(&self) -> Result<ChangeGuard<'_>, Refused> {
        let mut st = self.lock();
        if st.closed {
            return Err(Refused);
        }
        st.changes_in_flight += 1;
        Ok(ChangeGuard { gate: self })
    }

    /// Registers a new write-capable handle; `repair` undoes its half-done write if the
    /// drain timeout cuts it.
    pub fn register_writer(
        &self,
        class: WriterClass,
        path: String,
        repair: Option<Arc<dyn CutRepair>>,
    ) -> Result<WriterToken, Refused> {
        let mut st = self.lock();
        if st.closed {
            return Err(Refused);
        }
        Ok(Self::add_writer(&mut st, class, path, repair))
    }

    fn add_writer(
        st: &mut State,
        class: WriterClass,
        path: String,
        repair: Option<Arc<dyn CutRepair>>,
    ) -> WriterToken {
        st.next_id += 1;
        let id = st.next_id;
        st.writers.insert(
            id,
            Writer {
                class,
                path,
                cut: false,
                in_flight: 0,
                repair,
            },
        );
        WriterToken(id)
    }

    /// Admits one write (or ftruncate) on a registered handle.
    pub fn admit_write(&self, token: &WriterToken) -> Result<WriteGuard<'_>, Refused> {
        let mut st = self.lock();
        match st.writers.get_mut(&token.0) {
            Some(w) if !w.cut => {
                w.in_flight += 1;
                Ok(WriteGuard {
                    gate: self,
                    id: token.0,
                })
            }
            _ => Err(Refused),
        }
    }

    /// Forgets a handle at release.
    pub fn release_writer(&self, token: &WriterToken) {
        let mut st = self.lock();
        if let Some(w) = st.writers.remove(&token.0)
            && st.draining
            && !w.cut
        {
            st.drained.push(w.path);
        }
        drop(st);
        self.changed.notify_all();
    }

    /// Closes the store for writes. Returns when nothing is writing any more: uploads cut,
    /// other writers released or cut after `drain_timeout`, in-flight changes finished.
    pub fn close_for_writes(&self, drain_timeout: Duration) -> CloseReport {
        self.close_for_writes_unless(drain_timeout, &|| false)
    }

    /// As [`close_for_writes`](Self::close_for_writes), but stops waiting for writers
    /// (within 100 ms) once `give_up` says so; the store stays closed and the report's
    /// `gave_up` is set. For a run stopped or out of time while it drains.
    pub fn close_for_writes_unless(
        &self,
        drain_timeout: Duration,
        give_up: &dyn Fn() -> bool,
    ) -> CloseReport {
        const POLL: Duration = Duration::from_millis(100);
        let start = Instant::now();
        let deadline = start + drain_timeout;
        let mut report = CloseReport::default();
        // Repairs of writers cut here: (index in report.cut, writer id, repair).
        let mut repairs: Vec<(usize, u64, Arc<dyn CutRepair>)> = Vec::new();
        let mut st = self.lock();
        if !st.closed {
            st.closed = true;
            self.closed.store(true, Ordering::Release);
        }
        st.draining = true;
        st.drained.clear();
        loop {
            // Every pass, since a create admitted just before the close may still
            // register its upload handle.
            for w in st.writers.values_mut() {
                if w.class == WriterClass::Upload && !w.cut {
                    w.cut = true;
                    report.cut.push(CutWriter {
                        path: w.path.clone(),
                        reason: CutReason::Upload,
                        repaired: None,
                    });
                }
            }
            let draining = st.writers.values().any(|w| !w.cut);
            if !draining && !st.busy() {
                break;
            }
            if draining && give_up() {
                report.gave_up = true;
                break;
            }
            let now = Instant::now();
            if draining && now >= deadline {
                for (&id, w) in st.writers.iter_mut().filter(|(_, w)| !w.cut) {
                    w.cut = true;
                    if let Some(r) = &w.repair {
                        repairs.push((report.cut.len(), id, r.clone()));
                    }
                    report.cut.push(CutWriter {
                        path: w.path.clone(),
                        reason: CutReason::DrainTimeout,
                        repaired: None,
                    });
                }
                continue;
            }
            // Past the deadline only in-flight requests remain; they end quickly.
            let wait = deadline
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(1), POLL);
            st = self
                .changed
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.draining = false;
        report.drained = std::mem::take(&mut st.drained);
        // A cut writer cannot write again, and (unless the close gave up) none is still
        // writing: its file is stable now. One still writing is left alone.
        repairs.retain(|(i, id, _)| {
            let busy = st.writers.get(id).is_some_and(|w| w.in_flight > 0);
            if busy {
                tracing::warn!(path = %report.cut[*i].path, "cut writer still writing; not repaired");
            }
            !busy
        });
        drop(st);
        for (i, _, r) in repairs {
            report.cut[i].repaired = r.repair();
        }
        report.waited = start.elapsed();
        report
    }

    /// Ends the epoch. Handles cut during it stay cut: a writer that missed a write must
    /// not carry on as if it had not. Returns whether the gate was closed.
    pub fn reopen_for_writes(&self) -> bool {
        let mut st = self.lock();
        let was = st.closed;
        st.closed = false;
        self.closed.store(false, Ordering::Release);
        was
    }
}

/// A namespace change in flight; closing the gate waits for it.
#[derive(Debug)]
pub struct ChangeGuard<'a> {
    gate: &'a WriteGate,
}

impl ChangeGuard<'_> {
    /// Registers the write handle a create opens. The create was admitted before any
    /// close began, so the handle is registered even if the gate has closed since; the
    /// close then treats it like every handle open at close time.
    pub fn register_writer(
        &self,
        class: WriterClass,
        path: String,
        repair: Option<Arc<dyn CutRepair>>,
    ) -> WriterToken {
        WriteGate::add_writer(&mut self.gate.lock(), class, path, repair)
    }
}

impl Drop for ChangeGuard<'_> {
    fn drop(&mut self) {
        self.gate.lock().changes_in_flight -= 1;
        self.gate.changed.notify_all();
    }
}

/// A write in flight on a handle; closing the gate waits for it.
#[derive(Debug)]
pub struct WriteGuard<'a> {
    gate: &'a WriteGate,
    id: u64,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.gate.lock().writers.get_mut(&self.id) {
            w.in_flight -= 1;
        }
        self.gate.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn classifies_uploads_by_path_component() {
        assert_eq!(
            WriterClass::of_path("docker/registry/v2/repositories/a/_uploads/u1/data"),
            WriterClass::Upload
        );
        assert_eq!(
            WriterClass::of_path(
                "docker/registry/v2/repositories/a/_manifests/tags/t/current/link"
            ),
            WriterClass::InPlace
        );
        assert_eq!(
            WriterClass::of_path("x/not_uploads/data"),
            WriterClass::InPlace
        );
    }

    #[test]
    fn closed_gate_refuses_changes_and_new_writers() {
        let gate = WriteGate::new();
        assert!(gate.admit_change().is_ok());
        let report = gate.close_for_writes(Duration::from_secs(1));
        assert!(report.cut.is_empty());
        assert!(gate.admit_change().is_err());
        assert!(
            gate.register_writer(WriterClass::InPlace, "l".into(), None)
                .is_err()
        );
        assert!(gate.reopen_for_writes());
        assert!(gate.admit_change().is_ok());
    }

    #[test]
    fn uploads_are_cut_at_once_and_stay_cut_after_reopen() {
        let gate = WriteGate::new();
        let up = gate
            .register_writer(WriterClass::Upload, "r/_uploads/u/data".into(), None)
            .unwrap();
        let report = gate.close_for_writes(Duration::from_secs(5));
        assert!(report.waited < Duration::from_secs(1));
        assert_eq!(report.cut.len(), 1);
        assert_eq!(report.cut[0].reason, CutReason::Upload);
        assert!(gate.admit_write(&up).is_err());
        gate.reopen_for_writes();
        assert!(gate.admit_write(&up).is_err());
    }

    #[test]
    fn in_place_writer_drains_before_close_returns() {
        let gate = Arc::new(WriteGate::new());
        let tok = gate
            .register_writer(WriterClass::InPlace, "link".into(), None)
            .unwrap();
        let g2 = gate.clone();
        let writer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            // Still allowed to write while the close drains.
            let ok = g2.admit_write(&tok).is_ok();
            g2.release_writer(&tok);
            ok
        });
        let report = gate.close_for_writes(Duration::from_secs(5));
        assert!(
            writer.join().unwrap(),
            "drain must let the in-place writer finish"
        );
        assert_eq!(report.drained, vec!["link".to_string()]);
        assert!(report.cut.is_empty());
        assert!(report.waited >= Duration::from_millis(90));
    }

    #[test]
    fn in_place_writer_is_cut_after_the_drain_timeout() {
        let gate = WriteGate::new();
        let tok = gate
            .register_writer(WriterClass::InPlace, "link".into(), None)
            .unwrap();
        let report = gate.close_for_writes(Duration::from_millis(50));
        assert_eq!(report.cut.len(), 1);
        assert_eq!(report.cut[0].reason, CutReason::DrainTimeout);
        assert!(gate.admit_write(&tok).is_err());
    }

    #[derive(Debug, Default)]
    struct CountRepairs(std::sync::atomic::AtomicU32);

    impl CutRepair for CountRepairs {
        fn repair(&self) -> Option<String> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Some("repaired".into())
        }
    }

    #[test]
    fn a_writer_cut_by_the_drain_timeout_is_repaired_once_after_its_write_ends() {
        let gate = Arc::new(WriteGate::new());
        let repair = Arc::new(CountRepairs::default());
        let tok = gate
            .register_writer(WriterClass::InPlace, "link".into(), Some(repair.clone()))
            .unwrap();
        let drained = gate
            .register_writer(WriterClass::InPlace, "other".into(), Some(repair.clone()))
            .unwrap();
        gate.release_writer(&drained);
        // A write in flight across the deadline: the repair waits for it.
        let write = gate.admit_write(&tok).unwrap();
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
            let guard = g2.admit_change().unwrap();
            tx.send(()).unwrap();
            thread::sleep(Duration::from_millis(100));
            drop(guard);
        });
        rx.recv().unwrap();
        let report = gate.close_for_writes(Duration::from_secs(5));
        t.join().unwrap();
        assert!(report.waited >= Duration::from_millis(90));
    }
}

//! The write gate: closes the store for writes during a GC epoch and opens it again.
//!
//! One [`StorePolicy`]. While the gate is closed, new write-capable opens and every
//! namespace or attribute change answer EROFS. Handles that were already open for
//! writing are treated by what they hold: an upload's data file is not the gate's
//! concern at all (nothing the collector reads depends on it, and with kernel write
//! passthrough its writes never reach the daemon): it keeps being written, and the push
//! fails at its commit, whose rename into `blobs/` and link writes the gate refuses. Other
//! files of an upload are cut at once (the client retries and nothing committed is
//! lost); any other writer (a link file or manifest rewritten in place) may finish within
//! the drain timeout. (Blob data is served by kernel passthrough, see `fs::io`: a writer
//! of it in place, which the registry never is, loses only its truncates when cut.) A writer still open after it is cut; one that carries a
//! [`WriteUndo`] (a link file) is then put back as it was before its write, so an epoch
//! never leaves a truncated link behind.

use std::collections::HashMap;
use std::sync::Arc;

use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{
    Change, ChangeLease, HeldChange, HeldWriter, Name, StorePolicy, Write, WriteLease, WriteRole,
    WriteUndo, Writer, WriterLease,
};
use crate::error::{FsError, FsResult};

/// How an epoch treats an open write handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Treatment {
    /// A file of an upload (not its data): refused at once when the gate closes.
    CutAtOnce,
    /// Anything else (link files, manifests written in place): may drain.
    Drain,
}

/// Why a writer lost the right to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// A file of an upload in progress (not its data) open when the gate closed.
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

#[derive(Debug)]
struct OpenWriter {
    treatment: Treatment,
    path: String,
    cut: bool,
    in_flight: u32,
    undo: Option<Arc<dyn WriteUndo>>,
}

#[derive(Debug, Default)]
struct GateState {
    closed: bool,
    next_id: u64,
    writers: HashMap<u64, OpenWriter>,
    /// Namespace/attribute changes admitted and not yet finished.
    changes_in_flight: u32,
    /// Paths of in-place writers released while a close was draining.
    drained: Vec<String>,
    draining: bool,
    /// An online run's pause: new changes and writes wait (they are not refused).
    paused: bool,
}

impl GateState {
    fn busy(&self) -> bool {
        self.changes_in_flight > 0 || self.writers.values().any(|w| w.in_flight > 0)
    }
}

#[derive(Debug, Default)]
struct GateInner {
    /// Mirrors `GateState::closed` for lock-free status reads.
    closed: AtomicBool,
    /// Every write refused with EROFS since the gate was made.
    refused: AtomicU64,
    state: Mutex<GateState>,
    changed: Condvar,
}

impl GateInner {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        // A panic while holding the lock cannot leave GateState half-updated in a way that
        // matters more than losing the gate, so recover the guard.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lock, once no pause holds writes back.
    fn lock_unpaused(&self) -> MutexGuard<'_, GateState> {
        let mut st = self.lock();
        while st.paused {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st
    }

    /// Registers a write handle; `None` for one the gate leaves alone (upload data).
    fn add_writer(self: &Arc<Self>, st: &mut GateState, writer: Writer<'_>) -> WriterLease {
        let treatment = match writer.role() {
            WriteRole::UploadData => return WriterLease::free(),
            WriteRole::UploadOther => Treatment::CutAtOnce,
            WriteRole::Link(_) | WriteRole::Other => Treatment::Drain,
        };
        st.next_id += 1;
        let id = st.next_id;
        let path = writer.path().to_owned();
        st.writers.insert(
            id,
            OpenWriter {
                treatment,
                path: path.clone(),
                cut: false,
                in_flight: 0,
                undo: writer.undo,
            },
        );
        WriterLease::held(GateWriter {
            shared: self.clone(),
            id,
            path,
        })
    }
}

/// The write gate; clones share one gate.
#[derive(Debug, Default, Clone)]
pub struct WriteGate {
    shared: Arc<GateInner>,
}

impl GateInner {
    /// An EROFS answer to a write at `path`, counted.
    fn refuse(&self, path: &str) -> FsError {
        self.refused.fetch_add(1, Ordering::Relaxed);
        FsError::ReadOnlyEpoch {
            path: path.to_owned(),
        }
    }
}

impl WriteGate {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.shared.lock()
    }

    /// How many writes the gate has refused with EROFS since it was made (a run's
    /// count is the difference over its epoch).
    pub fn refused_writes(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Refuses new writes at once, without waiting for writers already open: what a
    /// status saying "closing" must already be true of. `close_for_writes` then drains.
    pub fn refuse_new_writes(&self) {
        let mut st = self.lock();
        self.close_locked(&mut st);
    }

    fn close_locked(&self, st: &mut GateState) {
        if !st.closed {
            st.closed = true;
            self.shared.closed.store(true, Ordering::Release);
        }
    }

    /// Closes the store for writes. Returns when nothing is writing any more: uploads'
    /// other files cut, other writers released or cut after `drain_timeout`, in-flight
    /// changes finished. Upload data writers are neither waited for nor cut.
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
        let mut repairs: Vec<Repair> = Vec::new();
        let mut st = self.lock();
        self.close_locked(&mut st);
        st.draining = true;
        st.drained.clear();
        loop {
            // Every pass, since a create admitted just before the close may still
            // register its handle.
            cut_at_once(&mut st, &mut report);
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
                cut_after_drain(&mut st, &mut report, &mut repairs);
                continue;
            }
            // Past the deadline only in-flight requests remain; they end quickly.
            let wait = deadline
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(1), POLL);
            st = self
                .shared
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
            report.cut[i].repaired = r.repair_cut();
        }
        report.waited = start.elapsed();
        report
    }

    /// Pauses writes for an online run: new changes, write-capable opens and writes wait
    /// (nothing is refused, nothing is cut) and this returns once those in flight have
    /// finished. `None` if they did not within `timeout` (the pause is then lifted).
    /// Writes resume when the returned guard drops.
    pub fn pause_writes(&self, timeout: Duration) -> Option<Paused<'_>> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        st.paused = true;
        let paused = Paused(self);
        while st.busy() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    "online GC pause: writes still in flight after {timeout:?}; not paused"
                );
                drop(st);
                return None;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Some(paused)
    }

    /// Ends the epoch. Handles cut during it stay cut: a writer that missed a write must
    /// not carry on as if it had not. Returns whether the gate was closed.
    pub fn reopen_for_writes(&self) -> bool {
        let mut st = self.lock();
        let was = st.closed;
        st.closed = false;
        self.shared.closed.store(false, Ordering::Release);
        was
    }
}

impl StorePolicy for WriteGate {
    fn admit_change(&self, change: &Change<'_>) -> FsResult<ChangeLease> {
        let mut st = self.shared.lock_unpaused();
        if st.closed {
            return Err(self.shared.refuse(change.path()));
        }
        st.changes_in_flight += 1;
        Ok(ChangeLease::held(GateChange {
            shared: self.shared.clone(),
        }))
    }

    fn admit_writer(&self, writer: Writer<'_>) -> FsResult<WriterLease> {
        let mut st = self.shared.lock_unpaused();
        if st.closed {
            return Err(self.shared.refuse(writer.path()));
        }
        Ok(self.shared.add_writer(&mut st, writer))
    }

    /// The gate hides nothing.
    fn is_visible(&self, _name: &Name<'_>) -> bool {
        true
    }

    fn check_write_access(&self, path: &str) -> FsResult<()> {
        if self.is_closed() {
            return Err(self.shared.refuse(path));
        }
        Ok(())
    }

    fn note_read(&self, _read: super::LinkRead, _path: &dyn Fn() -> String) {}
}

/// Writes held back by [`WriteGate::pause_writes`]; they resume when it drops.
#[derive(Debug)]
#[must_use = "writes resume when the pause drops"]
pub struct Paused<'a>(&'a WriteGate);

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        self.0.lock().paused = false;
        self.0.shared.changed.notify_all();
    }
}

/// A namespace change in flight; closing the gate waits for it.
#[derive(Debug)]
struct GateChange {
    shared: Arc<GateInner>,
}

impl HeldChange for GateChange {
    /// The create was admitted before any close began, so its handle is registered even
    /// if the gate has closed since; the close then treats it like every handle open at
    /// close time.
    fn admit_writer(&self, writer: Writer<'_>) -> WriterLease {
        let mut st = self.shared.lock();
        self.shared.add_writer(&mut st, writer)
    }
}

impl Drop for GateChange {
    fn drop(&mut self) {
        self.shared.lock().changes_in_flight -= 1;
        self.shared.changed.notify_all();
    }
}

/// An open write handle the gate tracks; released when dropped.
#[derive(Debug)]
struct GateWriter {
    shared: Arc<GateInner>,
    id: u64,
    path: String,
}

impl HeldWriter for GateWriter {
    fn admit_write(&self, _write: &Write<'_>) -> FsResult<WriteLease> {
        let mut st = self.shared.lock_unpaused();
        match st.writers.get_mut(&self.id) {
            Some(w) if !w.cut => {
                w.in_flight += 1;
                Ok(WriteLease::held(GateWrite {
                    shared: self.shared.clone(),
                    id: self.id,
                }))
            }
            _ => Err(self.shared.refuse(&self.path)),
        }
    }
}

impl Drop for GateWriter {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Some(w) = st.writers.remove(&self.id)
            && st.draining
            && !w.cut
        {
            st.drained.push(w.path);
        }
        drop(st);
        self.shared.changed.notify_all();
    }
}

/// A write in flight on a handle; closing the gate waits for it.
#[derive(Debug)]
struct GateWrite {
    shared: Arc<GateInner>,
    id: u64,
}

impl Drop for GateWrite {
    fn drop(&mut self) {
        if let Some(w) = self.shared.lock().writers.get_mut(&self.id) {
            w.in_flight -= 1;
        }
        self.shared.changed.notify_all();
    }
}

/// The undo of a writer cut by a close: (index in `CloseReport::cut`, writer id, undo).
type Repair = (usize, u64, Arc<dyn WriteUndo>);

/// Cuts every writer treated as cut-at-once (an upload's other files) not cut yet.
fn cut_at_once(st: &mut GateState, report: &mut CloseReport) {
    for w in st.writers.values_mut() {
        if w.treatment == Treatment::CutAtOnce && !w.cut {
            w.cut = true;
            report.cut.push(CutWriter {
                path: w.path.clone(),
                reason: CutReason::Upload,
                repaired: None,
            });
        }
    }
}

/// Cuts every writer still open when the drain timeout ran out, keeping their undos.
fn cut_after_drain(st: &mut GateState, report: &mut CloseReport, repairs: &mut Vec<Repair>) {
    for (&id, w) in st.writers.iter_mut().filter(|(_, w)| !w.cut) {
        w.cut = true;
        if let Some(r) = &w.undo {
            r.mark_cut();
            repairs.push((report.cut.len(), id, r.clone()));
        }
        report.cut.push(CutWriter {
            path: w.path.clone(),
            reason: CutReason::DrainTimeout,
            repaired: None,
        });
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;

//! The write gate: closes the store for writes during a GC epoch and opens it again.
//!
//! The filesystem asks the gate before every change. While the gate is closed, new
//! write-capable opens and every namespace or attribute change answer EROFS. Handles that
//! were already open for writing are treated by what they hold: uploads are cut at once
//! (the client retries them and nothing committed is lost); any other writer (a link file
//! or manifest being rewritten in place) may finish within the drain timeout, so an epoch
//! never leaves a truncated link file behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What an open write handle holds, which decides how an epoch treats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterClass {
    /// A file under an `_uploads` directory: refused at once when the gate closes.
    Upload,
    /// Anything else (link files, manifests written in place): may drain.
    InPlace,
}

impl WriterClass {
    /// Classifies a path relative to the store root.
    pub fn of_path(path: &str) -> Self {
        if path.split('/').any(|c| c == "_uploads") {
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

    /// Registers a new write-capable handle.
    pub fn register_writer(
        &self,
        class: WriterClass,
        path: String,
    ) -> Result<WriterToken, Refused> {
        let mut st = self.lock();
        if st.closed {
            return Err(Refused);
        }
        Ok(Self::add_writer(&mut st, class, path))
    }

    fn add_writer(st: &mut State, class: WriterClass, path: String) -> WriterToken {
        st.next_id += 1;
        let id = st.next_id;
        st.writers.insert(
            id,
            Writer {
                class,
                path,
                cut: false,
                in_flight: 0,
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
                for w in st.writers.values_mut().filter(|w| !w.cut) {
                    w.cut = true;
                    report.cut.push(CutWriter {
                        path: w.path.clone(),
                        reason: CutReason::DrainTimeout,
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
    pub fn register_writer(&self, class: WriterClass, path: String) -> WriterToken {
        WriteGate::add_writer(&mut self.gate.lock(), class, path)
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
            gate.register_writer(WriterClass::InPlace, "l".into())
                .is_err()
        );
        assert!(gate.reopen_for_writes());
        assert!(gate.admit_change().is_ok());
    }

    #[test]
    fn uploads_are_cut_at_once_and_stay_cut_after_reopen() {
        let gate = WriteGate::new();
        let up = gate
            .register_writer(WriterClass::Upload, "r/_uploads/u/data".into())
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
            .register_writer(WriterClass::InPlace, "link".into())
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
            .register_writer(WriterClass::InPlace, "link".into())
            .unwrap();
        let report = gate.close_for_writes(Duration::from_millis(50));
        assert_eq!(report.cut.len(), 1);
        assert_eq!(report.cut[0].reason, CutReason::DrainTimeout);
        assert!(gate.admit_write(&tok).is_err());
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

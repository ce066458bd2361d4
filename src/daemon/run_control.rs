//! The control of one run: the stop request, the time limit, the state and the
//! progress its workers report. Shared by the service (status, stop) and the run.

use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Instant;

use super::status::{Progress, State};
use crate::gc::{self, Counts, Outcome, Phase};

/// What the current run's workers check and report; also the collector's [`gc::Cancel`] and
/// [`gc::Progress`].
#[derive(Debug, Default)]
pub struct RunControl {
    stop: AtomicBool,
    state: AtomicU8,
    started: Mutex<Option<Instant>>,
    limit: Mutex<Option<std::time::Duration>>,
    phase: AtomicU8,
    done: AtomicU64,
    total: AtomicU64,
    /// What the sweep has deleted so far.
    swept: Mutex<Counts>,
}

impl RunControl {
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::SeqCst);
    }

    pub fn state(&self) -> State {
        match self.state.load(Ordering::SeqCst) {
            1 => State::Closing,
            2 => State::Marking,
            3 => State::Sweeping,
            _ => State::Idle,
        }
    }

    pub fn progress(&self) -> Progress {
        Progress {
            phase: if self.phase.load(Ordering::Relaxed) == 1 {
                "sweep"
            } else {
                "mark"
            }
            .into(),
            done: self.done.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
        }
    }

    /// When the run started (its time limit counts from there).
    pub fn started_slot(&self) -> MutexGuard<'_, Option<Instant>> {
        self.started.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_limit(&self, limit: Option<std::time::Duration>) {
        *self.limit.lock().unwrap_or_else(|e| e.into_inner()) = limit;
    }

    /// What the sweep has deleted so far.
    pub fn swept_so_far(&self) -> Counts {
        self.swept.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn out_of_time(&self) -> bool {
        let started = *self.started.lock().unwrap_or_else(|e| e.into_inner());
        let limit = *self.limit.lock().unwrap_or_else(|e| e.into_inner());
        matches!((started, limit), (Some(s), Some(l)) if s.elapsed() >= l)
    }
}

impl gc::Cancel for RunControl {
    fn interrupted(&self) -> Option<Outcome> {
        if self.stop.load(Ordering::SeqCst) {
            Some(Outcome::Stopped)
        } else if self.out_of_time() {
            Some(Outcome::TimeLimit)
        } else {
            None
        }
    }
}

impl gc::Progress for RunControl {
    fn phase(&self, phase: Phase, total: u64) {
        self.phase
            .store((phase == Phase::Sweep) as u8, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    fn advance(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    fn swept(&self, unit: &Counts) {
        self.swept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(unit);
    }
}

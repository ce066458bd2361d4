//! How the outside steers and watches a run: cancellation and progress are separate
//! interfaces, so a caller that only stops runs (or only draws a bar) implements one.

use super::report::{Counts, Outcome, Phase};

/// Why a run should end early; checked between units of work.
pub trait Cancel: Sync {
    /// `Some(outcome)` to stop now (a stop request or a time limit).
    fn interrupted(&self) -> Option<Outcome>;
}

/// What a run reports as it goes.
pub trait Progress: Sync {
    /// A phase begins with `total` units of work.
    fn phase(&self, _phase: Phase, _total: u64) {}
    /// One unit of the current phase is done.
    fn advance(&self) {}
    /// A sweep unit is done and deleted `unit` (so a record of the run can say what
    /// went, even if the process dies before the report).
    fn swept(&self, _unit: &Counts) {}
}

/// Never interrupts and reports nothing.
pub struct Unattended;

impl Cancel for Unattended {
    fn interrupted(&self) -> Option<Outcome> {
        None
    }
}

impl Progress for Unattended {}

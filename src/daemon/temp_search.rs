//! Where the daemon's runs look for leftover temp files (`gc::TempFileSearch`): every
//! link directory on the first run after the daemon starts and then at most once per
//! `temp_files_everywhere_every`; only where a link is missing or damaged otherwise.
//!
//! The time of the last full search is kept in memory: a restarted daemon searches
//! everywhere again at its first run. A search counts once its scan is complete (the
//! mark planned) and the run is not a dry run, which removes nothing it found.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::gc::TempFileSearch;

/// Whether a run at `now` lists every link directory, the last full search having been
/// at `last` (`None`: none yet since the daemon started).
pub fn search_for(last: Option<Instant>, now: Instant, every: Duration) -> TempFileSearch {
    match last {
        Some(t) if now.saturating_duration_since(t) < every => TempFileSearch::BrokenLinksOnly,
        _ => TempFileSearch::EveryLinkDir,
    }
}

/// The time of the daemon's last run that searched every link directory.
#[derive(Debug, Default)]
pub struct TempSearchClock {
    last_everywhere: Mutex<Option<Instant>>,
}

impl TempSearchClock {
    /// Where a run starting now searches.
    pub fn choose(&self, every: Duration) -> TempFileSearch {
        search_for(*self.lock(), Instant::now(), every)
    }

    /// A run's scan searched as `search` and completed; a real (not dry) run that
    /// searched everywhere restarts the interval.
    pub fn scanned(&self, search: TempFileSearch, dry_run: bool) {
        if search == TempFileSearch::EveryLinkDir && !dry_run {
            *self.lock() = Some(Instant::now());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.last_everywhere
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_link_dir_first_then_once_per_interval() {
        let day = Duration::from_secs(24 * 3600);
        let t0 = Instant::now();
        assert_eq!(search_for(None, t0, day), TempFileSearch::EveryLinkDir);
        assert_eq!(
            search_for(Some(t0), t0 + Duration::from_secs(3600), day),
            TempFileSearch::BrokenLinksOnly
        );
        assert_eq!(
            search_for(Some(t0), t0 + day, day),
            TempFileSearch::EveryLinkDir
        );
        // 0s: every run, as before the interval existed.
        assert_eq!(
            search_for(Some(t0), t0, Duration::ZERO),
            TempFileSearch::EveryLinkDir
        );
    }

    #[test]
    fn only_a_real_full_search_restarts_the_interval() {
        let day = Duration::from_secs(24 * 3600);
        let clock = TempSearchClock::default();
        clock.scanned(TempFileSearch::EveryLinkDir, true);
        assert_eq!(clock.choose(day), TempFileSearch::EveryLinkDir, "dry run");
        clock.scanned(TempFileSearch::BrokenLinksOnly, false);
        assert_eq!(clock.choose(day), TempFileSearch::EveryLinkDir);
        clock.scanned(TempFileSearch::EveryLinkDir, false);
        assert_eq!(clock.choose(day), TempFileSearch::BrokenLinksOnly);
        assert_eq!(clock.choose(Duration::ZERO), TempFileSearch::EveryLinkDir);
    }
}

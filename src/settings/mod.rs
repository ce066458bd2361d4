//! The GC settings: when runs start, how long they may last, what they collect, and the
//! tag retention rules their pruning stage applies. This module owns them: their values
//! ([`Settings`]), how the configuration file, the settings saved through the API and
//! the command line's flags lie over each other ([`layers`], and [`retention`] for
//! `[retention]`) and the one place that holds and changes them ([`owner`]).

pub mod layers;
pub mod owner;
pub mod retention;
pub mod schedule;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::gc;
use schedule::Schedule;

/// How long an epoch may keep the store read-only (DTR's "Until done", "For N minutes",
/// "Never").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcDuration {
    UntilDone,
    Limit(Duration),
    Never,
}

impl FromStr for GcDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "until-done" => Ok(GcDuration::UntilDone),
            "never" => Ok(GcDuration::Never),
            other => match humantime::parse_duration(other) {
                Ok(d) if !d.is_zero() => Ok(GcDuration::Limit(d)),
                Ok(_) => Err(format!("{other:?}: a time limit must be more than zero")),
                Err(e) => Err(format!(
                    "{other:?}: {e}; expected until-done, never, or a time limit such as 30m"
                )),
            },
        }
    }
}

impl fmt::Display for GcDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GcDuration::UntilDone => f.write_str("until-done"),
            GcDuration::Never => f.write_str("never"),
            GcDuration::Limit(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

/// How a run keeps the store consistent while it collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GcMode {
    /// Pushes are refused (EROFS) for the whole run.
    #[default]
    ReadOnly,
    /// Pushes go on; writes pause briefly while the mark is fixed (see
    /// [`crate::policy::online`]).
    Online,
}

impl FromStr for GcMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read-only" => Ok(GcMode::ReadOnly),
            "online" => Ok(GcMode::Online),
            other => Err(format!("{other:?}: expected read-only or online")),
        }
    }
}

impl fmt::Display for GcMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GcMode::ReadOnly => "read-only",
            GcMode::Online => "online",
        })
    }
}

/// How much of the history is kept (`[history]` in the configuration): at most
/// `keep_runs` runs, none that ended more than `keep_days` days ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    pub keep_runs: usize,
    pub keep_days: u32,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            keep_runs: 1000,
            keep_days: 90,
        }
    }
}

impl HistoryLimits {
    /// Whether a run that ended at `ended`, with `newer` kept runs after it, stays.
    pub fn keeps(
        &self,
        ended: chrono::DateTime<chrono::Utc>,
        newer: usize,
        now: chrono::DateTime<chrono::Utc>,
    ) -> bool {
        newer < self.keep_runs && now - ended <= chrono::TimeDelta::days(self.keep_days.into())
    }
}

/// How often the daemon's runs list every link directory for leftover temp files.
pub const DEFAULT_TEMP_FILES_EVERYWHERE_EVERY: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: GcMode,
    pub schedule: Option<Schedule>,
    pub duration: GcDuration,
    pub delete_untagged: bool,
    pub dry_run: bool,
    pub upload_max_age: Duration,
    pub keep_unknown: bool,
    pub allow_missing_manifests: bool,
    /// Unreferenced blobs younger than this stay.
    pub min_age: Duration,
    /// The daemon's runs list every link directory for leftover temp files on its first
    /// run and then at most this often; the others look only where a link is missing or
    /// damaged. Zero: every run lists them all.
    pub temp_files_everywhere_every: Duration,
    /// How long an epoch lets in-place writers finish.
    pub drain_timeout: Duration,
    /// The registry served, whose blob-descriptor cache a run must not leave stale.
    pub registry: crate::registry::RegistrySettings,
    /// How much job history is kept (`[history]`).
    pub history: HistoryLimits,
    /// Tag retention policies (`[retention]`): pruning at the start of each run.
    pub retention: crate::retention::Rules,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: GcMode::ReadOnly,
            schedule: None,
            duration: GcDuration::UntilDone,
            delete_untagged: false,
            dry_run: false,
            upload_max_age: gc::DEFAULT_UPLOAD_MAX_AGE,
            keep_unknown: false,
            allow_missing_manifests: false,
            min_age: gc::DEFAULT_MIN_AGE,
            temp_files_everywhere_every: DEFAULT_TEMP_FILES_EVERYWHERE_EVERY,
            drain_timeout: Duration::from_secs(10),
            registry: Default::default(),
            history: Default::default(),
            retention: Default::default(),
        }
    }
}

impl Settings {
    pub fn gc_options(&self) -> gc::Options {
        gc::Options {
            delete_untagged: self.delete_untagged,
            dry_run: self.dry_run,
            upload_max_age: self.upload_max_age,
            keep_unknown: self.keep_unknown,
            allow_missing_manifests: self.allow_missing_manifests,
            min_age: self.min_age,
            // Nobody waits for an online run; a read-only one is the write outage.
            threads: match self.mode {
                GcMode::Online => gc::ThreadShare::Idle,
                GcMode::ReadOnly => gc::ThreadShare::Lowered,
            },
            keep_revisions: Vec::new(),
            // The daemon's run chooses where it searches for leftover temp files
            // (`daemon::temp_search`, from `temp_files_everywhere_every`).
            temp_files: gc::TempFileSearch::EveryLinkDir,
        }
    }

    pub fn time_limit(&self) -> Option<Duration> {
        match self.duration {
            GcDuration::Limit(d) => Some(d),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_dtr_offers_them() {
        assert_eq!("until-done".parse(), Ok(GcDuration::UntilDone));
        assert_eq!("never".parse(), Ok(GcDuration::Never));
        assert_eq!(
            "30m".parse(),
            Ok(GcDuration::Limit(Duration::from_secs(1800)))
        );
        assert_eq!(
            "500ms".parse(),
            Ok(GcDuration::Limit(Duration::from_millis(500)))
        );
        assert!("0m".parse::<GcDuration>().is_err());
        assert_eq!("online".parse(), Ok(GcMode::Online));
        assert_eq!("read-only".parse(), Ok(GcMode::ReadOnly));
        assert!("offline".parse::<GcMode>().unwrap_err().contains("online"));
        assert!(
            "soon"
                .parse::<GcDuration>()
                .unwrap_err()
                .contains("until-done")
        );
    }
}

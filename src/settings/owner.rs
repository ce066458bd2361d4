//! GC settings changed through the HTTP API ("Save" on the page): kept in the state
//! directory (`settings.json`, mode 0600, written without following symlinks) so they
//! survive a restart, laid over the settings of the configuration file and the flags,
//! and shown in status as overriding them. The configuration file stays the operator's:
//! regfs never writes it.

use std::io::{self, Read};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use rustix::fs::OFlags;
use serde::{Deserialize, Serialize};

use super::schedule::Schedule;
use super::{GcDuration, GcMode, Settings};
use crate::state_dir::StateDir;

pub const OVERRIDES_FILE: &str = "settings.json";

/// A file larger than this is not one the daemon wrote.
const MAX_OVERRIDES_FILE: u64 = 64 * 1024;

/// The settings the API may change; each absent one is left as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsChange {
    /// `read-only` or `online`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// A UTC cron expression; `""` for none (runs only when triggered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// `until-done`, `never`, or a time limit such as `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_untagged: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    /// Unreferenced blobs younger than this stay (`1h`, `0s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_age: Option<String>,
}

impl SettingsChange {
    /// Lays this change over `settings`; a bad value is an error naming the field and
    /// quoting the value.
    pub fn apply(&self, mut settings: Settings) -> Result<Settings, String> {
        if let Some(m) = &self.mode {
            settings.mode = m.parse::<GcMode>().map_err(|e| format!("mode: {e}"))?;
        }
        if let Some(s) = &self.schedule {
            settings.schedule = match s.trim() {
                "" => None,
                expr => Some(
                    expr.parse::<Schedule>()
                        .map_err(|e| format!("schedule: {e}"))?,
                ),
            };
        }
        if let Some(d) = &self.duration {
            settings.duration = d
                .parse::<GcDuration>()
                .map_err(|e| format!("duration: {e}"))?;
        }
        if let Some(v) = self.delete_untagged {
            settings.delete_untagged = v;
        }
        if let Some(v) = self.dry_run {
            settings.dry_run = v;
        }
        if let Some(m) = &self.min_age {
            settings.min_age = humantime::parse_duration(m).map_err(|e| {
                format!("min_age: {m:?}: {e}; expected a duration such as 1h or 0s")
            })?;
        }
        Ok(settings)
    }

    /// `other`'s values replace these where it has them.
    pub fn merge(&mut self, other: &SettingsChange) {
        let o = other.clone();
        self.mode = o.mode.or(self.mode.take());
        self.schedule = o.schedule.or(self.schedule.take());
        self.duration = o.duration.or(self.duration.take());
        self.delete_untagged = o.delete_untagged.or(self.delete_untagged);
        self.dry_run = o.dry_run.or(self.dry_run);
        self.min_age = o.min_age.or(self.min_age.take());
    }

    /// The names of the settings this change sets.
    pub fn fields(&self) -> Vec<&'static str> {
        let mut out = vec![];
        let mut add = |set: bool, name| {
            if set {
                out.push(name);
            }
        };
        add(self.mode.is_some(), "mode");
        add(self.schedule.is_some(), "schedule");
        add(self.duration.is_some(), "duration");
        add(self.delete_untagged.is_some(), "delete_untagged");
        add(self.dry_run.is_some(), "dry_run");
        add(self.min_age.is_some(), "min_age");
        out
    }
}

/// The settings changed through the API, as stored and as status shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overrides {
    pub values: SettingsChange,
    /// The settings these values override (for people reading status).
    pub fields: Vec<String>,
    pub set_at: DateTime<Utc>,
    /// Who saved them last (the htpasswd user, or `token`).
    pub set_by: String,
}

/// The settings the daemon runs with: those of the configuration file and the flags
/// (reloaded on SIGHUP), under the API's overrides.
#[derive(Debug)]
pub struct SettingsLayers {
    dir: Arc<StateDir>,
    inner: Mutex<(Settings, Option<Overrides>)>,
}

impl SettingsLayers {
    /// Reads the stored overrides, if any. A file that cannot be read or holds a value
    /// regfs refuses is an error naming it: starting with the configuration file's
    /// settings instead could run a collection the operator turned off.
    pub fn load(dir: Arc<StateDir>, base: Settings) -> Result<SettingsLayers, String> {
        let overrides = read(&dir).map_err(|e| {
            format!("{e} (settings saved through the API; fix or remove the file to use the configuration file's)")
        })?;
        if let Some(o) = &overrides {
            o.values.apply(base.clone()).map_err(|e| {
                format!(
                    "{}: {e} (settings saved through the API; fix or remove the file)",
                    dir.shown(OVERRIDES_FILE)
                )
            })?;
        }
        Ok(SettingsLayers {
            dir,
            inner: Mutex::new((base, overrides)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, (Settings, Option<Overrides>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The settings in force.
    pub fn effective(&self) -> Settings {
        let inner = self.lock();
        layered(&inner.0, inner.1.as_ref())
    }

    /// The settings of the configuration file and the flags, without the overrides.
    pub fn base(&self) -> Settings {
        self.lock().0.clone()
    }

    pub fn overrides(&self) -> Option<Overrides> {
        self.lock().1.clone()
    }

    /// New settings from the configuration file (SIGHUP); returns those in force.
    pub fn set_base(&self, base: Settings) -> Settings {
        let mut inner = self.lock();
        inner.0 = base;
        layered(&inner.0, inner.1.as_ref())
    }

    /// Validates `change`, stores it over the earlier overrides and returns the settings
    /// in force. Nothing changes when a value is refused or the file cannot be written.
    pub fn change(&self, change: &SettingsChange, by: &str) -> Result<Settings, ChangeError> {
        let mut inner = self.lock();
        let mut values = inner
            .1
            .as_ref()
            .map(|o| o.values.clone())
            .unwrap_or_default();
        values.merge(change);
        let settings = values
            .apply(inner.0.clone())
            .map_err(ChangeError::Invalid)?;
        let overrides = Overrides {
            fields: values.fields().iter().map(|f| f.to_string()).collect(),
            values,
            set_at: Utc::now(),
            set_by: by.to_string(),
        };
        let bytes =
            serde_json::to_vec_pretty(&overrides).map_err(|e| ChangeError::Store(e.to_string()))?;
        self.dir
            .replace(OVERRIDES_FILE, &bytes, true)
            .map_err(|e| ChangeError::Store(e.to_string()))?;
        inner.1 = Some(overrides);
        Ok(settings)
    }

    /// Drops every override: the configuration file's settings are in force again.
    pub fn reset(&self) -> Result<Settings, ChangeError> {
        let mut inner = self.lock();
        self.dir
            .remove(OVERRIDES_FILE)
            .map_err(|e| ChangeError::Store(e.to_string()))?;
        inner.1 = None;
        Ok(inner.0.clone())
    }
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChangeError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot store the settings in the state directory: {0}")]
    Store(String),
}

fn layered(base: &Settings, overrides: Option<&Overrides>) -> Settings {
    match overrides {
        // Checked when stored and at start; a value cannot turn bad in between.
        Some(o) => o
            .values
            .apply(base.clone())
            .unwrap_or_else(|_| base.clone()),
        None => base.clone(),
    }
}

fn read(dir: &StateDir) -> Result<Option<Overrides>, String> {
    let f = match dir.open(OVERRIDES_FILE, OFlags::RDONLY) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut text = Vec::new();
    f.take(MAX_OVERRIDES_FILE + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("{}: {e}", dir.shown(OVERRIDES_FILE)))?;
    if text.len() as u64 > MAX_OVERRIDES_FILE {
        return Err(format!(
            "{}: larger than {MAX_OVERRIDES_FILE} bytes",
            dir.shown(OVERRIDES_FILE)
        ));
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| format!("{}: {e}", dir.shown(OVERRIDES_FILE)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::time::Duration;

    fn layers(base: Settings) -> (tempfile::TempDir, Arc<StateDir>, SettingsLayers) {
        let t = tempfile::tempdir().unwrap();
        let dir = Arc::new(StateDir::prepare(&t.path().join("state")).unwrap());
        let l = SettingsLayers::load(dir.clone(), base).unwrap();
        (t, dir, l)
    }

    #[test]
    fn changes_override_the_file_survive_a_reload_and_a_restart() {
        let base = Settings {
            duration: GcDuration::Never,
            ..Settings::default()
        };
        let (_t, dir, l) = layers(base.clone());
        let change = SettingsChange {
            duration: Some("30m".into()),
            schedule: Some("0 3 * * SAT".into()),
            ..Default::default()
        };
        let s = l.change(&change, "admin").unwrap();
        assert_eq!(s.duration, GcDuration::Limit(Duration::from_secs(1800)));
        // SIGHUP brings the file's settings; the override stays on top.
        let s = l.set_base(Settings {
            delete_untagged: true,
            ..base.clone()
        });
        assert_eq!(s.duration, GcDuration::Limit(Duration::from_secs(1800)));
        assert!(s.delete_untagged);
        // A restart reads them back.
        let again = SettingsLayers::load(dir.clone(), base.clone()).unwrap();
        let o = again.overrides().unwrap();
        assert_eq!(o.fields, ["schedule", "duration"]);
        assert_eq!(o.set_by, "admin");
        assert_eq!(
            again.effective().schedule.unwrap().to_string(),
            "0 3 * * SAT"
        );
        let m = std::fs::symlink_metadata(dir.path().join(OVERRIDES_FILE)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        // Reset: the file's settings again.
        assert_eq!(again.reset().unwrap().duration, GcDuration::Never);
        assert!(!dir.path().join(OVERRIDES_FILE).exists());
    }

    #[test]
    fn a_bad_value_changes_nothing_and_names_the_field() {
        let (_t, dir, l) = layers(Settings::default());
        for (change, field) in [
            (
                SettingsChange {
                    duration: Some("soon".into()),
                    ..Default::default()
                },
                "duration",
            ),
            (
                SettingsChange {
                    schedule: Some("0 3 32 * *".into()),
                    ..Default::default()
                },
                "schedule",
            ),
            (
                SettingsChange {
                    min_age: Some("old".into()),
                    ..Default::default()
                },
                "min_age",
            ),
        ] {
            let e = l.change(&change, "admin").unwrap_err().to_string();
            assert!(e.starts_with(field), "{e}");
        }
        assert!(l.overrides().is_none());
        assert!(!dir.path().join(OVERRIDES_FILE).exists());
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_followed_and_a_bad_file_stops_the_start() {
        let (t, dir, l) = layers(Settings::default());
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"v").unwrap();
        symlink(&victim, dir.path().join(OVERRIDES_FILE)).unwrap();
        let e = SettingsLayers::load(dir.clone(), Settings::default()).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        l.change(
            &SettingsChange {
                dry_run: Some(true),
                ..Default::default()
            },
            "token",
        )
        .unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"v");
        std::fs::write(
            dir.path().join(OVERRIDES_FILE),
            b"{\"values\": {\"duration\": \"soon\"}}",
        )
        .unwrap();
        let e = SettingsLayers::load(dir.clone(), Settings::default()).unwrap_err();
        assert!(
            e.contains(OVERRIDES_FILE) && e.contains("remove the file"),
            "{e}"
        );
    }
}

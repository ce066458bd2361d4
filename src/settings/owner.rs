//! The one owner of the GC settings a daemon runs with. It holds their sources (the
//! configuration file's `[gc]` and `[retention]`, re-read on SIGHUP; the settings saved through the HTTP
//! API, kept in the state directory as `settings.json`, mode 0600, written without
//! following symlinks, so they survive a restart; the command line's flags) and the
//! effective settings worked out from them ([`super::layers`]), under one lock: one
//! writer at a time, and every reader (the daemon, status, the API) reads the value in
//! force instead of keeping a copy. The configuration file stays the operator's: regfs
//! never writes it.

use std::io::{self, Read};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use rustix::fs::OFlags;
use serde::{Deserialize, Serialize};

use super::Settings;
use super::layers::{API_KEYS, Fixed, GcValues, Refused, Source, settle};
use super::retention::RetentionValues;
use crate::state_dir::StateDir;

pub const OVERRIDES_FILE: &str = "settings.json";

/// A file larger than this is not one the daemon wrote.
const MAX_OVERRIDES_FILE: u64 = 64 * 1024;

/// The settings changed through the API, as stored and as status shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overrides {
    pub values: GcValues,
    /// `[retention]` keys saved through the API (`dry_run`, `grace`, `policy`).
    #[serde(default, skip_serializing_if = "RetentionValues::is_empty")]
    pub retention: RetentionValues,
    /// The settings these values override (for people reading status).
    pub fields: Vec<String>,
    pub set_at: DateTime<Utc>,
    /// Who saved them last (the htpasswd user, or `token`).
    pub set_by: String,
}

/// Where the settings come from besides the API: the configuration file and the flags
/// (resolved by `config` at start and again on SIGHUP).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The configuration file's path as shown and its `[gc]` values; none without a file.
    pub file: Option<(String, GcValues)>,
    /// The configuration file's `[retention]` (empty without a file).
    pub retention: RetentionValues,
    pub flags: GcValues,
    /// What no layered source gives (the drain timeout, the registry served).
    pub fixed: Fixed,
}

impl Sources {
    /// The settings with `api`'s values (`[gc]` keys and `[retention]` keys) over the
    /// file's and the flags' over both.
    pub fn settle(
        &self,
        api: Option<&GcValues>,
        api_retention: Option<&RetentionValues>,
    ) -> Result<Settings, Refused> {
        let mut layers = vec![];
        let mut retention = vec![];
        if let Some((path, values)) = &self.file {
            layers.push((Source::File(path.clone()), values));
            retention.push((Source::File(path.clone()), &self.retention));
        }
        if let Some(api) = api {
            layers.push((Source::Api, api));
        }
        if let Some(r) = api_retention {
            retention.push((Source::Api, r));
        }
        layers.push((Source::CommandLine, &self.flags));
        settle(&layers, &retention, &self.fixed)
    }
}

/// What the owner holds under its lock.
#[derive(Debug)]
struct Held {
    sources: Sources,
    overrides: Option<Overrides>,
    /// Worked out from the two above whenever one changes.
    effective: Settings,
}

/// The GC settings in force and their sources (see the module's documentation).
///
/// Two locks, taken in this order: `writer`, held by the one writer at a time across
/// its file write (SIGHUP's reload, the API's save and reset); `held`, held only to read
/// or replace the values, never across a file write, so readers never wait on one.
#[derive(Debug)]
pub struct SettingsOwner {
    dir: Arc<StateDir>,
    writer: Mutex<()>,
    held: Mutex<Held>,
}

fn refused((origin, key, why): Refused) -> String {
    format!("{origin}: {key}: {why}")
}

impl SettingsOwner {
    /// Reads the stored overrides, if any. A file that cannot be read or holds a value
    /// regfs refuses is an error naming it: starting with the configuration file's
    /// settings instead could run a collection the operator turned off.
    pub fn load(dir: Arc<StateDir>, sources: Sources) -> Result<SettingsOwner, String> {
        let overrides = read(&dir).map_err(|e| {
            format!("{e} (settings saved through the API; fix or remove the file to use the configuration file's)")
        })?;
        let effective = sources
            .settle(
                overrides.as_ref().map(|o| &o.values),
                overrides.as_ref().map(|o| &o.retention),
            )
            .map_err(|e| {
                format!(
                    "{}: {} (settings saved through the API; fix or remove the file)",
                    dir.shown(OVERRIDES_FILE),
                    refused(e)
                )
            })?;
        Ok(SettingsOwner {
            dir,
            writer: Mutex::new(()),
            held: Mutex::new(Held {
                sources,
                overrides,
                effective,
            }),
        })
    }

    /// An owner of `settings` alone: no file, no flags, nothing saved (tests, a daemon
    /// built in-process).
    pub fn fixed(dir: Arc<StateDir>, settings: &Settings) -> SettingsOwner {
        SettingsOwner {
            dir,
            writer: Mutex::new(()),
            held: Mutex::new(Held {
                sources: Sources::default(),
                overrides: None,
                effective: settings.clone(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The one writer's turn: held across a change's checks and file write.
    fn write_turn(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sources and the API's values now (a writer holding its turn sees them stay).
    fn snapshot(&self) -> (Sources, Option<Overrides>) {
        let held = self.lock();
        (held.sources.clone(), held.overrides.clone())
    }

    /// The settings in force.
    pub fn effective(&self) -> Settings {
        self.lock().effective.clone()
    }

    /// The settings of the configuration file and the flags, without the API's.
    pub fn base(&self) -> Settings {
        let held = self.lock();
        held.sources
            .settle(None, None)
            .unwrap_or_else(|_| held.effective.clone())
    }

    pub fn overrides(&self) -> Option<Overrides> {
        self.lock().overrides.clone()
    }

    /// New sources (SIGHUP re-read the configuration file); returns the settings in
    /// force. Refused, changing nothing, if the API's values no longer fit them.
    pub fn set_sources(&self, sources: Sources) -> Result<Settings, String> {
        let _turn = self.write_turn();
        let (_, overrides) = self.snapshot();
        let effective = sources
            .settle(
                overrides.as_ref().map(|o| &o.values),
                overrides.as_ref().map(|o| &o.retention),
            )
            .map_err(refused)?;
        let mut held = self.lock();
        held.sources = sources;
        held.effective = effective.clone();
        Ok(effective)
    }

    /// Validates `change`, stores it over the earlier overrides and returns the settings
    /// in force. Nothing changes when a value is refused or the file cannot be written.
    /// A key the API may not change, or one a flag of this daemon pins (the command line
    /// wins over the API), is refused naming it. `retention`'s keys (`[retention]`'s
    /// `dry_run`, `grace`, `policy`) replace the saved ones each whole.
    pub fn change(
        &self,
        change: &GcValues,
        retention: Option<&RetentionValues>,
        by: &str,
    ) -> Result<Settings, ChangeError> {
        let _turn = self.write_turn();
        let (sources, overrides) = self.snapshot();
        let pinned = sources.flags.keys();
        let mut change = change.clone();
        for key in change.keys() {
            if !API_KEYS.contains(&key) {
                return Err(ChangeError::Invalid(format!(
                    "{key}: not changed through the API (set it in the configuration file)"
                )));
            }
            if pinned.contains(&key) {
                // The page sends every field it shows: the value the flag holds is no
                // change, and is not stored (the flag decides it anyway).
                let flag_value = shown(&sources.flags, key);
                let asked = shown(&change, key).map_err(ChangeError::Invalid)?;
                if flag_value.as_ref().ok() == Some(&asked) {
                    change.clear(key);
                    continue;
                }
                let (_, flag) = Source::CommandLine.blame(key);
                return Err(ChangeError::Invalid(format!(
                    "{key}: set to {} by {flag} on the daemon's command line, which wins over the API; remove the flag to change it here",
                    flag_value.unwrap_or_default()
                )));
            }
        }
        let change = &change;
        let values = overrides
            .as_ref()
            .map(|o| o.values.merge(change))
            .unwrap_or_else(|| change.clone());
        let saved_retention = overrides.map(|o| o.retention).unwrap_or_default();
        let retention = match retention {
            Some(r) => saved_retention.merge(r),
            None => saved_retention,
        };
        let effective = sources
            .settle(Some(&values), Some(&retention))
            .map_err(|(_, key, why)| ChangeError::Invalid(format!("{key}: {why}")))?;
        let overrides = Overrides {
            fields: values
                .keys()
                .iter()
                .map(|f| f.to_string())
                .chain(retention.keys().iter().map(|k| format!("retention.{k}")))
                .collect(),
            values,
            retention,
            set_at: Utc::now(),
            set_by: by.to_string(),
        };
        let bytes =
            serde_json::to_vec_pretty(&overrides).map_err(|e| ChangeError::Store(e.to_string()))?;
        self.dir
            .replace(OVERRIDES_FILE, &bytes, true)
            .map_err(|e| ChangeError::Store(e.to_string()))?;
        let mut held = self.lock();
        held.overrides = Some(overrides);
        held.effective = effective.clone();
        Ok(effective)
    }

    /// The retention rules `draft` would put in force if saved through the API now
    /// (laid over what the API saved before, under nothing the file does not give): the
    /// page's preview as the policies are typed. Err names the key at fault.
    pub fn retention_with(
        &self,
        draft: &RetentionValues,
    ) -> Result<crate::retention::Rules, String> {
        let (sources, overrides) = self.snapshot();
        let saved = overrides.map(|o| o.retention).unwrap_or_default();
        let mut layers = vec![];
        if let Some((path, _)) = &sources.file {
            layers.push((path.clone(), &sources.retention));
        }
        let api = saved.merge(draft);
        layers.push((Source::Api.origin(), &api));
        super::retention::settle_retention(&layers).map_err(|(_, key, why)| format!("{key}: {why}"))
    }

    /// Drops every override: the configuration file's settings are in force again.
    pub fn reset(&self) -> Result<Settings, ChangeError> {
        let _turn = self.write_turn();
        let (sources, _) = self.snapshot();
        let effective = sources
            .settle(None, None)
            .map_err(|e| ChangeError::Invalid(refused(e)))?;
        self.dir
            .remove(OVERRIDES_FILE)
            .map_err(|e| ChangeError::Store(e.to_string()))?;
        let mut held = self.lock();
        held.overrides = None;
        held.effective = effective.clone();
        Ok(effective)
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

/// `key`'s value in `values` as the settings show it (`0s` and `0m` alike), or why
/// it is refused.
fn shown(values: &GcValues, key: &str) -> Result<String, String> {
    let s = settle(&[(Source::Api, values)], &[], &Fixed::default())
        .map_err(|(_, key, why)| format!("{key}: {why}"))?;
    Ok(match key {
        "mode" => s.mode.to_string(),
        "schedule" => s.schedule.map(|s| s.to_string()).unwrap_or_default(),
        "duration" => s.duration.to_string(),
        "delete_untagged" => s.delete_untagged.to_string(),
        "dry_run" => s.dry_run.to_string(),
        "min_age" => humantime::format_duration(s.min_age).to_string(),
        "upload_max_age" => humantime::format_duration(s.upload_max_age).to_string(),
        "temp_files_everywhere_every" => {
            humantime::format_duration(s.temp_files_everywhere_every).to_string()
        }
        "keep_unknown" => s.keep_unknown.to_string(),
        _ => s.allow_missing_manifests.to_string(),
    })
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
    use crate::settings::GcDuration;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::time::Duration;

    fn values(json: serde_json::Value) -> GcValues {
        serde_json::from_value(json).unwrap()
    }

    fn sources(file: serde_json::Value, flags: serde_json::Value) -> Sources {
        Sources {
            file: Some(("regfs.toml".into(), values(file))),
            retention: Default::default(),
            flags: values(flags),
            fixed: Fixed::default(),
        }
    }

    fn owner(s: Sources) -> (tempfile::TempDir, Arc<StateDir>, SettingsOwner) {
        let t = tempfile::tempdir().unwrap();
        let dir = Arc::new(StateDir::prepare(&t.path().join("state")).unwrap());
        let o = SettingsOwner::load(dir.clone(), s).unwrap();
        (t, dir, o)
    }

    #[test]
    fn changes_override_the_file_survive_a_reload_and_a_restart() {
        let base = sources(
            serde_json::json!({"duration": "never"}),
            serde_json::json!({}),
        );
        let (_t, dir, l) = owner(base.clone());
        let change = values(serde_json::json!({"duration": "30m", "schedule": "0 3 * * SAT"}));
        let s = l.change(&change, None, "admin").unwrap();
        assert_eq!(s.duration, GcDuration::Limit(Duration::from_secs(1800)));
        assert_eq!(
            l.effective().duration,
            s.duration,
            "readers see the value in force"
        );
        // SIGHUP brings the file's settings; the override stays on top.
        let s = l
            .set_sources(sources(
                serde_json::json!({"duration": "never", "delete_untagged": true}),
                serde_json::json!({}),
            ))
            .unwrap();
        assert_eq!(s.duration, GcDuration::Limit(Duration::from_secs(1800)));
        assert!(s.delete_untagged && l.effective().delete_untagged);
        assert_eq!(l.base().duration, GcDuration::Never);
        // A restart reads them back.
        let again = SettingsOwner::load(dir.clone(), base.clone()).unwrap();
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
        assert_eq!(again.effective().duration, GcDuration::Never);
        assert!(!dir.path().join(OVERRIDES_FILE).exists());
    }

    #[test]
    fn a_flag_wins_over_the_api_which_is_told_so() {
        let (_t, dir, l) = owner(sources(
            serde_json::json!({"mode": "online"}),
            serde_json::json!({"mode": "read-only"}),
        ));
        assert_eq!(l.effective().mode, crate::settings::GcMode::ReadOnly);
        let e = l
            .change(
                &values(serde_json::json!({"mode": "online"})),
                None,
                "admin",
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("--gc-mode") && e.contains("command line"), "{e}");
        // The value the flag holds is no change (the page sends every field it shows).
        l.change(
            &values(serde_json::json!({"mode": "read-only", "dry_run": true})),
            None,
            "admin",
        )
        .unwrap();
        assert_eq!(l.overrides().unwrap().fields, ["dry_run"]);
        let e = l
            .change(
                &values(serde_json::json!({"keep_unknown": true})),
                None,
                "admin",
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("keep_unknown: not changed through the API"),
            "{e}"
        );
        assert_eq!(
            l.overrides().unwrap().fields,
            ["dry_run"],
            "refusals change nothing"
        );
        assert!(dir.path().join(OVERRIDES_FILE).exists());
    }

    #[test]
    fn a_bad_value_changes_nothing_and_names_the_field() {
        let (_t, dir, l) = owner(Sources::default());
        for (change, field) in [
            (serde_json::json!({"duration": "soon"}), "duration"),
            (serde_json::json!({"schedule": "0 3 32 * *"}), "schedule"),
            (serde_json::json!({"min_age": "old"}), "min_age"),
        ] {
            let e = l
                .change(&values(change), None, "admin")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(field), "{e}");
        }
        assert!(l.overrides().is_none());
        assert!(!dir.path().join(OVERRIDES_FILE).exists());
        // A reload with a bad file changes nothing either.
        let bad = sources(serde_json::json!({"min_age": "old"}), serde_json::json!({}));
        let e = l.set_sources(bad).unwrap_err();
        assert!(e.contains("regfs.toml") && e.contains("gc.min_age"), "{e}");
    }

    #[test]
    fn one_writer_at_a_time_and_readers_never_wait_on_its_file_write() {
        let (_t, _dir, l) = owner(Sources::default());
        let l = Arc::new(l);
        // Many writers at once: every change is in the stored overrides (none is lost to
        // a writer working on a stale base), and the value in force is the last one.
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let l = l.clone();
                std::thread::spawn(move || {
                    let key = if i % 2 == 0 {
                        "dry_run"
                    } else {
                        "delete_untagged"
                    };
                    l.change(&values(serde_json::json!({ key: true })), None, "admin")
                        .unwrap();
                })
            })
            .collect();
        writers.into_iter().for_each(|w| w.join().unwrap());
        let o = l.overrides().unwrap();
        assert_eq!(o.fields, ["delete_untagged", "dry_run"]);
        let s = l.effective();
        assert!(s.dry_run && s.delete_untagged);
        // A reader while a writer holds its turn (as during its file write).
        let turn = l.write_turn();
        assert!(l.effective().dry_run);
        drop(turn);
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_followed_and_a_bad_file_stops_the_start() {
        let (t, dir, l) = owner(Sources::default());
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"v").unwrap();
        symlink(&victim, dir.path().join(OVERRIDES_FILE)).unwrap();
        let e = SettingsOwner::load(dir.clone(), Sources::default()).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        l.change(&values(serde_json::json!({"dry_run": true})), None, "token")
            .unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"v");
        std::fs::write(
            dir.path().join(OVERRIDES_FILE),
            b"{\"values\": {\"duration\": \"soon\"}, \"fields\": [], \"set_at\": \"2026-01-01T00:00:00Z\", \"set_by\": \"x\"}",
        )
        .unwrap();
        let e = SettingsOwner::load(dir.clone(), Sources::default()).unwrap_err();
        assert!(
            e.contains(OVERRIDES_FILE) && e.contains("remove the file"),
            "{e}"
        );
    }
}

//! How the sources of the GC settings lie over each other: the configuration file's
//! `[gc]` at the bottom, the settings saved through the API over it, the command line's
//! flags on top (a flag is the operator pinning a value for this daemon). Each source
//! gives a [`GcValues`]: every value optional, absent ones left to the sources below.
//!
//! The layering is figment's (each source a provider; the last one naming a key wins);
//! this module only checks the merged values, blaming the source and the key that gave a
//! bad one.

use std::time::Duration;

use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider, providers::Serialized};
use serde::{Deserialize, Serialize};

use super::retention::{RetentionValues, settle_retention};
use super::schedule::Schedule;
use super::{GcDuration, GcMode, Settings};
use crate::gc;

/// The GC settings as one source gives them (`[gc]` of the file, the API's change, the
/// flags). The same names everywhere: `mode`, `schedule`, ...
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcValues {
    /// `read-only` or `online`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// A UTC cron expression; `""`: none (runs only when triggered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// `until-done`, `never`, or a time limit such as `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_untagged: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    /// Uploads older than this are collected (`7d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_max_age: Option<String>,
    /// Unreferenced blobs younger than this stay (`1h`, `0s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_age: Option<String>,
    /// The daemon's runs list every link directory for temp files at most this often
    /// (`24h`; `0s`: every run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_files_everywhere_every: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_unknown: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_missing_manifests: Option<bool>,
}

/// Every key of [`GcValues`] with its command-line flag.
pub const KEYS: [(&str, &str); 10] = [
    ("mode", "--gc-mode"),
    ("schedule", "--gc-schedule"),
    ("duration", "--gc-duration"),
    ("delete_untagged", "--delete-untagged"),
    ("dry_run", "--dry-run"),
    ("upload_max_age", "--upload-max-age"),
    ("min_age", "--gc-min-age"),
    (
        "temp_files_everywhere_every",
        "--gc-temp-files-everywhere-every",
    ),
    ("keep_unknown", "--keep-unknown"),
    ("allow_missing_manifests", "--allow-missing-manifests"),
];

/// The keys the API may change; the others are the operator's (file and flags) only.
pub const API_KEYS: [&str; 6] = [
    "mode",
    "schedule",
    "duration",
    "delete_untagged",
    "dry_run",
    "min_age",
];

impl GcValues {
    /// The keys this source sets.
    pub fn keys(&self) -> Vec<&'static str> {
        let set = serde_json::to_value(self).unwrap_or_default();
        KEYS.iter()
            .map(|(k, _)| *k)
            .filter(|k| set.get(k).is_some())
            .collect()
    }

    /// Leaves `key` unset.
    pub fn clear(&mut self, key: &str) {
        match key {
            "mode" => self.mode = None,
            "schedule" => self.schedule = None,
            "duration" => self.duration = None,
            "delete_untagged" => self.delete_untagged = None,
            "dry_run" => self.dry_run = None,
            "upload_max_age" => self.upload_max_age = None,
            "min_age" => self.min_age = None,
            "temp_files_everywhere_every" => self.temp_files_everywhere_every = None,
            "keep_unknown" => self.keep_unknown = None,
            "allow_missing_manifests" => self.allow_missing_manifests = None,
            _ => {}
        }
    }

    /// `other`'s values replace these where it has them.
    pub fn merge(&self, other: &GcValues) -> GcValues {
        Figment::new()
            .merge(Serialized::defaults(self))
            .merge(Serialized::defaults(other))
            .extract()
            .unwrap_or_else(|_| self.clone())
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The configuration file (its path as shown), `[gc]`.
    File(String),
    /// Saved through the HTTP API (the page's "Save").
    Api,
    /// A flag of `regfs mount`.
    CommandLine,
}

impl Source {
    /// (origin, key) to blame for `key` given by this source.
    pub fn blame(&self, key: &str) -> (String, String) {
        match self {
            Source::File(path) => (path.clone(), format!("gc.{key}")),
            Source::Api => ("settings saved through the API".into(), key.into()),
            Source::CommandLine => (
                "command line".into(),
                KEYS.iter()
                    .find(|(k, _)| *k == key)
                    .map_or(key, |(_, flag)| *flag)
                    .into(),
            ),
        }
    }

    /// The source as an error names it.
    pub fn origin(&self) -> String {
        match self {
            Source::File(path) => path.clone(),
            Source::Api => "settings saved through the API".into(),
            Source::CommandLine => "command line".into(),
        }
    }

    fn name(&self) -> String {
        match self {
            Source::File(path) => format!("file {path}"),
            Source::Api => "api".into(),
            Source::CommandLine => "command line".into(),
        }
    }
}

/// A value refused: (origin, key, why).
pub type Refused = (String, String, String);

/// One source as a figment provider, named so a merged value tells where it came from.
struct Layer<'a> {
    source: &'a Source,
    values: &'a GcValues,
}

impl Provider for Layer<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.source.name())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(self.values).data()
    }
}

/// The parts of [`Settings`] no source of [`GcValues`] gives (the file's and the flags'
/// own keys, resolved with the rest of the configuration).
#[derive(Debug, Clone)]
pub struct Fixed {
    pub drain_timeout: Duration,
    pub registry: crate::registry::RegistrySettings,
    /// How much job history is kept (`[history]`).
    pub history: super::HistoryLimits,
}

impl Default for Fixed {
    fn default() -> Self {
        let d = Settings::default();
        Fixed {
            drain_timeout: d.drain_timeout,
            registry: d.registry,
            history: d.history,
        }
    }
}

/// Lays `sources` (lowest first) over each other, and `retention`'s likewise
/// ([`settle_retention`]), and checks the result: every bad value is refused naming the
/// source and key that gave it.
pub fn settle(
    sources: &[(Source, &GcValues)],
    retention: &[(Source, &RetentionValues)],
    fixed: &Fixed,
) -> Result<Settings, Refused> {
    let figment = sources.iter().fold(Figment::new(), |f, (source, values)| {
        f.merge(Layer { source, values })
    });
    let merged: GcValues = figment
        .extract()
        .map_err(|e| ("settings".into(), "gc".into(), e.to_string()))?;
    let blame = |key: &str, why: String| -> Refused {
        let source = figment
            .find_metadata(key)
            .and_then(|m| sources.iter().find(|(s, _)| s.name() == m.name))
            .map_or(Source::CommandLine, |(s, _)| s.clone());
        let (origin, key) = source.blame(key);
        (origin, key, why)
    };
    let duration_of = |key: &str, v: &Option<String>, default: Duration| match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s).map_err(|e| {
            blame(
                key,
                format!("{s:?}: {e}; expected a duration such as 1h or 0s"),
            )
        }),
    };
    let mode = match &merged.mode {
        None => GcMode::default(),
        Some(m) => m.parse().map_err(|e| blame("mode", e))?,
    };
    let schedule = match merged.schedule.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(expr) => Some(
            expr.parse::<Schedule>()
                .map_err(|e| blame("schedule", e.to_string()))?,
        ),
    };
    let duration = match &merged.duration {
        None => GcDuration::UntilDone,
        Some(d) => d.parse().map_err(|e| blame("duration", e))?,
    };
    Ok(Settings {
        mode,
        schedule,
        duration,
        delete_untagged: merged.delete_untagged.unwrap_or(false),
        dry_run: merged.dry_run.unwrap_or(false),
        upload_max_age: duration_of(
            "upload_max_age",
            &merged.upload_max_age,
            gc::DEFAULT_UPLOAD_MAX_AGE,
        )?,
        min_age: duration_of("min_age", &merged.min_age, gc::DEFAULT_MIN_AGE)?,
        temp_files_everywhere_every: duration_of(
            "temp_files_everywhere_every",
            &merged.temp_files_everywhere_every,
            super::DEFAULT_TEMP_FILES_EVERYWHERE_EVERY,
        )?,
        keep_unknown: merged.keep_unknown.unwrap_or(false),
        allow_missing_manifests: merged.allow_missing_manifests.unwrap_or(false),
        drain_timeout: fixed.drain_timeout,
        registry: fixed.registry.clone(),
        history: fixed.history,
        retention: settle_retention(
            &retention
                .iter()
                .map(|(s, v)| (s.origin(), *v))
                .collect::<Vec<_>>(),
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(json: serde_json::Value) -> GcValues {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn flags_lie_over_the_api_which_lies_over_the_file() {
        let file = values(serde_json::json!({"mode": "online", "min_age": "2h", "dry_run": true}));
        let api = values(serde_json::json!({"min_age": "0s", "delete_untagged": true}));
        let flags = values(serde_json::json!({"dry_run": false}));
        let s = settle(
            &[
                (Source::File("r.toml".into()), &file),
                (Source::Api, &api),
                (Source::CommandLine, &flags),
            ],
            &[],
            &Fixed::default(),
        )
        .unwrap();
        assert_eq!(s.mode, GcMode::Online);
        assert_eq!(s.min_age, Duration::ZERO);
        assert!(s.delete_untagged && !s.dry_run);
        assert_eq!(s.upload_max_age, gc::DEFAULT_UPLOAD_MAX_AGE);
    }

    #[test]
    fn the_temp_file_interval_is_24h_unless_the_file_or_a_flag_says() {
        let settled = |sources: &[(Source, &GcValues)]| {
            settle(sources, &[], &Fixed::default()).map(|s| s.temp_files_everywhere_every)
        };
        let none = GcValues::default();
        assert_eq!(
            settled(&[(Source::Api, &none)]),
            Ok(Duration::from_secs(24 * 3600))
        );
        let file = values(serde_json::json!({"temp_files_everywhere_every": "7d"}));
        let flags = values(serde_json::json!({"temp_files_everywhere_every": "0s"}));
        let f = Source::File("r.toml".into());
        assert_eq!(
            settled(&[(f.clone(), &file)]),
            Ok(Duration::from_secs(7 * 24 * 3600))
        );
        assert_eq!(
            settled(&[(f.clone(), &file), (Source::CommandLine, &flags)]),
            Ok(Duration::ZERO)
        );
        let bad = values(serde_json::json!({"temp_files_everywhere_every": "daily"}));
        let (o, k, _) = settled(&[(f, &bad)]).unwrap_err();
        assert_eq!(
            (o.as_str(), k.as_str()),
            ("r.toml", "gc.temp_files_everywhere_every")
        );
        let (o, k, _) = settled(&[(Source::CommandLine, &bad)]).unwrap_err();
        assert_eq!(
            (o.as_str(), k.as_str()),
            ("command line", "--gc-temp-files-everywhere-every")
        );
    }

    #[test]
    fn a_bad_value_names_the_source_and_key_that_gave_it() {
        let file = values(serde_json::json!({"min_age": "soon"}));
        let none = GcValues::default();
        let (o, k, m) = settle(
            &[(Source::File("r.toml".into()), &file), (Source::Api, &none)],
            &[],
            &Fixed::default(),
        )
        .unwrap_err();
        assert_eq!((o.as_str(), k.as_str()), ("r.toml", "gc.min_age"));
        assert!(m.contains("\"soon\""), "{m}");
        let flags = values(serde_json::json!({"mode": "offline"}));
        let (o, k, _) = settle(
            &[
                (Source::File("r.toml".into()), &file),
                (Source::CommandLine, &flags),
            ],
            &[],
            &Fixed::default(),
        )
        .unwrap_err();
        // The file's min_age is checked too, but the flag's mode is the first key read.
        assert_eq!((o.as_str(), k.as_str()), ("command line", "--gc-mode"));
        let api = values(serde_json::json!({"schedule": "not cron"}));
        let (o, k, _) = settle(&[(Source::Api, &api)], &[], &Fixed::default()).unwrap_err();
        assert_eq!(
            (o.as_str(), k.as_str()),
            ("settings saved through the API", "schedule")
        );
    }

    #[test]
    fn keys_and_merges_follow_the_values_given() {
        let a = values(serde_json::json!({"mode": "online", "dry_run": true}));
        let b = values(serde_json::json!({"dry_run": false, "schedule": ""}));
        assert_eq!(a.keys(), ["mode", "dry_run"]);
        let m = a.merge(&b);
        assert_eq!(m.keys(), ["mode", "schedule", "dry_run"]);
        assert_eq!(m.dry_run, Some(false));
        assert!(serde_json::from_value::<GcValues>(serde_json::json!({"moed": "x"})).is_err());
    }
}

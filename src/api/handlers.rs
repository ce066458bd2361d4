//! The API's answers, one function per route (see [`super::Api::answer`]).

use chrono::Utc;
use serde::Serialize;

use super::jobs::JobQuery;
use super::{Api, error, json};
use crate::daemon::TriggerError;
use crate::daemon::job::Trigger;
use crate::http::{Request, Response};
use crate::settings::Settings;
use crate::settings::layers::GcValues;
use crate::settings::owner::ChangeError;
use crate::settings::retention::{RetentionValues, values_of};
use crate::settings::schedule::Schedule;

/// The settings the page and the API show and change.
#[derive(Debug, Serialize)]
struct SettingsView {
    /// `read-only` or `online`.
    mode: String,
    /// UTC cron expression; null: no schedule.
    schedule: Option<String>,
    duration: String,
    delete_untagged: bool,
    dry_run: bool,
    min_age: String,
    /// `[retention]`: `dry_run`, `grace` and the policies (`policy`).
    retention: RetentionValues,
}

fn view(s: &Settings) -> SettingsView {
    SettingsView {
        mode: s.mode.to_string(),
        schedule: s.schedule.as_ref().map(|s| s.to_string()),
        duration: s.duration.to_string(),
        delete_untagged: s.delete_untagged,
        dry_run: s.dry_run,
        min_age: humantime::format_duration(s.min_age).to_string(),
        retention: values_of(&s.retention),
    }
}

/// The next `n` run times of `schedule`, RFC 3339 in UTC.
fn next_runs(schedule: Option<&Schedule>, n: usize) -> Vec<String> {
    let mut out = vec![];
    let mut after = Utc::now();
    while let Some(t) = schedule.and_then(|s| s.next_after(after)) {
        if out.len() == n {
            break;
        }
        out.push(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        after = t;
    }
    out
}

/// What a request body changes: `[gc]` keys, and `[retention]` keys under `retention`.
pub(super) struct Change {
    gc: GcValues,
    retention: Option<RetentionValues>,
}

const CHANGE_KEYS: &str = "send a JSON object with any of mode, schedule, duration, delete_untagged, dry_run, min_age, and retention (an object with any of dry_run, grace, policy)";

/// The retention values of a JSON body (the settings' `retention`, or a preview's draft).
pub(super) fn retention_of(v: serde_json::Value) -> Result<RetentionValues, Response> {
    serde_json::from_value(v).map_err(|e| error(400, format!("retention: {e}; {CHANGE_KEYS}")))
}

/// The change a request body carries; an unknown field or a bad type is an error naming
/// it.
fn change_of(body: &[u8]) -> Result<Change, Response> {
    let bad = |e: serde_json::Error| error(400, format!("settings: {e}; {CHANGE_KEYS}"));
    let mut v: serde_json::Value = serde_json::from_slice(body).map_err(bad)?;
    let retention = match v.as_object_mut().and_then(|o| o.remove("retention")) {
        None | Some(serde_json::Value::Null) => None,
        Some(r) => Some(retention_of(r)?),
    };
    Ok(Change {
        gc: serde_json::from_value(v).map_err(bad)?,
        retention,
    })
}

/// `GET /api/v1/schedule?expr=CRON[&count=N]`: the next run times, to check an
/// expression as it is typed.
pub fn schedule_preview(req: &Request) -> Response {
    let params = req.params();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let count = match get("count").map(str::parse::<usize>) {
        None => 5,
        Some(Ok(n)) if (1..=50).contains(&n) => n,
        Some(_) => return error(400, "count: a whole number from 1 to 50"),
    };
    let expr = get("expr").unwrap_or("").trim();
    if expr.is_empty() {
        return json(
            200,
            &serde_json::json!({ "schedule": null, "next": [], "note": "no schedule: runs start only when triggered" }),
        );
    }
    match expr.parse::<Schedule>() {
        Ok(s) => json(
            200,
            &serde_json::json!({ "schedule": s.to_string(), "next": next_runs(Some(&s), count) }),
        ),
        Err(e) => error(400, format!("schedule: {e}")),
    }
}

impl Api {
    pub(super) fn status(&self) -> Response {
        json(200, &self.daemon.status())
    }

    pub(super) fn jobs(&self, req: &Request) -> Response {
        let query = match JobQuery::parse(&req.params()) {
            Ok(q) => q,
            Err(e) => return error(400, e),
        };
        let recorded = self.daemon.recorded_jobs();
        json(
            200,
            &query.page(&recorded, self.daemon.status().current_job),
        )
    }

    pub(super) fn job(&self, id: &str) -> Response {
        let Ok(id) = id.parse::<u64>() else {
            return error(400, format!("{id:?} is not a job id (a whole number)"));
        };
        match self.daemon.job(id) {
            Some(j) => json(200, &j),
            None => error(404, format!("no job {id}")),
        }
    }

    pub(super) fn get_settings(&self) -> Response {
        let effective = self.daemon.settings();
        json(
            200,
            &serde_json::json!({
                "settings": view(&effective),
                "config_file": view(&self.daemon.settings_owner().base()),
                "overrides": self.daemon.settings_owner().overrides(),
                "next_runs": next_runs(effective.schedule.as_ref().filter(|_| effective.duration != crate::settings::GcDuration::Never), 5),
                "auth": { "htpasswd": self.auth.has_htpasswd(), "token": self.auth.has_token() },
            }),
        )
    }

    /// Stores `change` and puts it in force.
    fn save(&self, change: &Change, who: &str) -> Result<(), Response> {
        self.daemon
            .settings_owner()
            .change(&change.gc, change.retention.as_ref(), who)
            .map_err(|e| match e {
                ChangeError::Invalid(m) => error(400, m),
                ChangeError::Store(_) => error(500, e.to_string()),
            })?;
        self.daemon.settings_changed();
        let retention = change.retention.as_ref().map(|r| r.keys());
        tracing::info!(by = who, fields = ?change.gc.keys(), ?retention,
            "GC settings saved through the HTTP API; they override the configuration file");
        Ok(())
    }

    pub(super) fn put_settings(&self, req: &Request, who: &str) -> Response {
        let change = match change_of(&req.body) {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        match self.save(&change, who) {
            Ok(()) => self.get_settings(),
            Err(resp) => resp,
        }
    }

    pub(super) fn reset_settings(&self, who: &str) -> Response {
        match self.daemon.settings_owner().reset() {
            Ok(_) => {
                self.daemon.settings_changed();
                tracing::info!(
                    by = who,
                    "GC settings saved through the HTTP API dropped: the configuration file's are in force"
                );
                self.get_settings()
            }
            Err(e) => error(500, e.to_string()),
        }
    }

    /// "Save & start": the settings in the body (if any) are saved, then a run starts.
    pub(super) fn start_gc(&self, req: &Request, who: &str) -> Response {
        let saved = !req.body.iter().all(u8::is_ascii_whitespace);
        if saved {
            let change = match change_of(&req.body) {
                Ok(c) => c,
                Err(resp) => return resp,
            };
            if let Err(resp) = self.save(&change, who) {
                return resp;
            }
        }
        match self.daemon.trigger(Trigger::Api) {
            Ok(id) => {
                tracing::info!(job = id, by = who, "GC run started through the HTTP API");
                json(
                    202,
                    &serde_json::json!({ "job_id": id, "settings_saved": saved }),
                )
            }
            Err(e) => {
                let status = match e {
                    // Another node collects (or etcd cannot be asked): a conflict too.
                    TriggerError::Busy(_) | TriggerError::Disabled | TriggerError::Cluster(_) => {
                        409
                    }
                    TriggerError::ShuttingDown => 503,
                    TriggerError::State(_) => 500,
                };
                let running = match e {
                    TriggerError::Busy(id) => Some(id),
                    _ => None,
                };
                json(
                    status,
                    &serde_json::json!({ "error": e.to_string(), "status": status, "job_id": running, "settings_saved": saved }),
                )
            }
        }
    }

    pub(super) fn stop_gc(&self, who: &str) -> Response {
        match self.daemon.stop() {
            Some(id) => {
                tracing::info!(job = id, by = who, "GC run stop asked through the HTTP API");
                json(
                    202,
                    &serde_json::json!({ "job_id": id, "message": format!("stopping GC job {id}; the store reopens for writes once the blob in hand is done") }),
                )
            }
            None => error(409, "no GC run is active; nothing to stop"),
        }
    }
}

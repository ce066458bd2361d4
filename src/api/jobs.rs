//! `GET /api/v1/jobs`: the job history (the running job first), newest first, filtered
//! and paged: `outcome`, `trigger` (comma-separated), `running` (true/false), `since`
//! and `until` (RFC 3339, on the start time), `limit` (default 50, at most 1000) and
//! `offset`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::daemon::job::{Job, JobOutcome, Trigger};

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;

#[derive(Debug, Default)]
pub struct JobQuery {
    outcomes: Vec<JobOutcome>,
    triggers: Vec<Trigger>,
    running: Option<bool>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    limit: usize,
    offset: usize,
}

/// One page of jobs and where it lies in the whole.
#[derive(Debug, Serialize)]
pub struct JobPage {
    /// How many jobs match, over every page.
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    pub jobs: Vec<Job>,
}

/// A value of a snake_case enum, by its name in the JSON.
fn named<T: serde::de::DeserializeOwned>(
    param: &str,
    v: &str,
    accepted: &str,
) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(v.to_string()))
        .map_err(|_| format!("{param}: {v:?} is not one of {accepted}"))
}

fn list<T: serde::de::DeserializeOwned>(
    param: &str,
    v: &str,
    accepted: &str,
) -> Result<Vec<T>, String> {
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| named(param, s.trim(), accepted))
        .collect()
}

fn time(param: &str, v: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{param}: {v:?}: {e}; expected RFC 3339 such as 2026-12-01T03:00:00Z"))
}

fn number(param: &str, v: &str) -> Result<usize, String> {
    v.parse()
        .map_err(|_| format!("{param}: {v:?} is not a whole number"))
}

impl JobQuery {
    /// The query of a request; an unknown parameter or a bad value is an error naming it.
    pub fn parse(params: &[(String, String)]) -> Result<JobQuery, String> {
        let mut q = JobQuery {
            limit: DEFAULT_LIMIT,
            ..JobQuery::default()
        };
        for (k, v) in params {
            match k.as_str() {
                "outcome" => {
                    q.outcomes = list(
                        k,
                        v,
                        "running, done, time_limit, stopped, failed, interrupted",
                    )?
                }
                "trigger" => q.triggers = list(k, v, "schedule, signal, cli, api")?,
                "running" => {
                    q.running = Some(match v.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(format!("running: {v:?} is not true or false")),
                    })
                }
                "since" => q.since = Some(time(k, v)?),
                "until" => q.until = Some(time(k, v)?),
                "limit" => match number(k, v)? {
                    0 => return Err("limit: must be at least 1".into()),
                    n if n > MAX_LIMIT => {
                        return Err(format!("limit: {n} is more than {MAX_LIMIT}"));
                    }
                    n => q.limit = n,
                },
                "offset" => q.offset = number(k, v)?,
                other => {
                    return Err(format!(
                        "unknown parameter {other:?}; the jobs API takes outcome, trigger, running, since, until, limit and offset"
                    ));
                }
            }
        }
        Ok(q)
    }

    fn admits(&self, job: &Job) -> bool {
        let running = job.outcome == JobOutcome::Running;
        (self.outcomes.is_empty() || self.outcomes.contains(&job.outcome))
            && (self.triggers.is_empty() || self.triggers.contains(&job.trigger))
            && self.running.is_none_or(|r| r == running)
            && self.since.is_none_or(|t| job.started_at >= t)
            && self.until.is_none_or(|t| job.started_at < t)
    }

    /// The page of `history` (oldest first) and the running job this query asks for;
    /// only the jobs on the page are copied.
    pub fn page(&self, history: &[Job], running: Option<Job>) -> JobPage {
        let mut total = 0;
        let mut jobs = Vec::new();
        for j in running.iter().chain(history.iter().rev()) {
            if !self.admits(j) {
                continue;
            }
            if total >= self.offset && jobs.len() < self.limit {
                jobs.push(j.clone());
            }
            total += 1;
        }
        JobPage {
            total,
            offset: self.offset,
            limit: self.limit,
            jobs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::job::JobSettings;

    fn job(id: u64, trigger: Trigger, outcome: JobOutcome, minute: u32) -> Job {
        let settings = JobSettings {
            mode: "read-only".into(),
            duration: "until-done".into(),
            delete_untagged: false,
            dry_run: false,
            upload_max_age: "7days".into(),
            min_age: "0s".into(),
            drain_timeout: "10s".into(),
        };
        let started_at = format!("2026-12-01T03:{minute:02}:00Z").parse().unwrap();
        Job {
            outcome,
            read_only_seconds: 1.0,
            ..Job::started(id, trigger, settings, started_at)
        }
    }

    fn q(s: &str) -> Result<JobQuery, String> {
        let params: Vec<(String, String)> = s
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        JobQuery::parse(&params)
    }

    fn ids(p: &JobPage) -> Vec<u64> {
        p.jobs.iter().map(|j| j.id).collect()
    }

    #[test]
    fn jobs_are_filtered_and_paged_newest_first() {
        let history: Vec<Job> = (1..=6)
            .map(|i| {
                let trigger = if i % 2 == 0 {
                    Trigger::Api
                } else {
                    Trigger::Schedule
                };
                let outcome = if i == 3 {
                    JobOutcome::Stopped
                } else {
                    JobOutcome::Done
                };
                job(i, trigger, outcome, i as u32)
            })
            .collect();
        let running = Some(job(7, Trigger::Api, JobOutcome::Running, 7));
        let page = |s| q(s).unwrap().page(&history, running.clone());
        assert_eq!(ids(&page("")), [7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(ids(&page("trigger=api")), [7, 6, 4, 2]);
        assert_eq!(ids(&page("trigger=api&running=false")), [6, 4, 2]);
        assert_eq!(ids(&page("outcome=stopped,running")), [7, 3]);
        let p = page("limit=2&offset=2");
        assert_eq!((ids(&p), p.total), (vec![5, 4], 7));
        assert_eq!(
            ids(&page(
                "since=2026-12-01T03:02:00Z&until=2026-12-01T03:04:00Z"
            )),
            [3, 2]
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        for (query, says) in [
            ("outcome=fine", "outcome: \"fine\" is not one of"),
            ("limit=0", "limit"),
            ("limit=5000", "more than 1000"),
            ("offset=-1", "offset"),
            ("since=yesterday", "since"),
            ("action=gc", "unknown parameter \"action\""),
            ("running=yes", "running"),
        ] {
            let e = q(query).unwrap_err();
            assert!(e.contains(says), "{query}: {e}");
        }
    }
}

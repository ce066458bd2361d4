//! What `regfs status` shows: the state of the store and of the current run. The text
//! is rendered from the very value `--json` prints, every field of it (a test compares
//! them field by field), so the two never disagree.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::job::{Job, JobSettings};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Idle,
    /// Closing the store: new writes refused, waiting for in-place writers.
    Closing,
    Marking,
    Sweeping,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub phase: String,
    pub done: u64,
    pub total: u64,
}

/// The daemon's descriptors: what the system allows and how they are budgeted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Descriptors {
    /// The soft open-file limit (raised to the hard one at start).
    pub limit: u64,
    pub hard_limit: u64,
    /// Inode descriptors kept open at most (half the limit unless configured).
    pub budget: u64,
    /// Inode descriptors open now.
    pub inode_fds: u64,
    /// Descriptors open now in the whole daemon.
    pub open: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub mountpoint: String,
    pub storage: String,
    pub state: State,
    /// The mode runs use now ("read-only" or "online").
    #[serde(default)]
    pub mode: String,
    pub read_only: bool,
    pub read_only_since: Option<DateTime<Utc>>,
    /// Why the store is read-only: this node's run, or the cluster (another node's
    /// epoch, no etcd, joining).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_reason: Option<String>,
    /// Said plainly while the store is read-only.
    pub banner: Option<String>,
    pub current_job: Option<Job>,
    pub progress: Option<Progress>,
    pub schedule: Option<String>,
    pub next_run: Option<DateTime<Utc>>,
    pub settings: JobSettings,
    pub last_job: Option<Job>,
    /// The registry's blob-descriptor cache, when regfs knows the registry's config.
    #[serde(default)]
    pub registry_cache: Option<crate::registry::CacheStatus>,
    #[serde(default)]
    pub descriptors: Option<Descriptors>,
    /// Settings saved through the HTTP API: they override the configuration file's.
    #[serde(default)]
    pub settings_overrides: Option<crate::settings::owner::Overrides>,
    /// Cluster mode: the members and the collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<super::epoch::ClusterView>,
}

fn utc(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

impl Status {
    /// Cluster mode: the gate may be closed with no run here (another node's epoch, or
    /// this node fenced, or joining); `closed` says whether it is, and the status says why.
    pub fn in_cluster(mut self, c: super::epoch::ClusterView, closed: bool) -> Status {
        if closed && !self.read_only {
            let why = match (&c.error, &c.collector) {
                (Some(_), _) => "this node cannot reach etcd (fenced)".to_string(),
                (None, Some(n)) => {
                    format!("node {n} collects cluster epoch {}", c.epoch.unwrap_or(0))
                }
                (None, None) => "joining the cluster".to_string(),
            };
            self.read_only = true;
            self.banner = Some(format!(
                "STORE IS READ-ONLY: {why}; pushes are refused, pulls work"
            ));
            self.read_only_reason = Some(why);
        }
        self.cluster = Some(c);
        self
    }
}

/// A state as the JSON names it.
fn named(v: &impl Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".into(),
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(b) = &self.banner {
            writeln!(f, "*** {b} ***")?;
        }
        writeln!(f, "regfs at {} (store {})", self.mountpoint, self.storage)?;
        writeln!(f, "  state        {}", named(&self.state))?;
        writeln!(f, "  mode         {}", self.mode)?;
        if self.read_only {
            write!(f, "  read-only    yes")?;
            if let Some(t) = &self.read_only_since {
                write!(f, " since {}", utc(t))?;
            }
            if let Some(why) = &self.read_only_reason {
                write!(f, ": {why}")?;
            }
            writeln!(f, " (pushes refused, pulls work)")?;
        } else {
            writeln!(f, "  read-only    no (pushes work)")?;
        }
        if let Some(j) = &self.current_job {
            write!(f, "  current job  {} ({})", j.id, named(&j.trigger))?;
            match &self.progress {
                Some(p) => writeln!(f, ": {} {}/{}", p.phase, p.done, p.total)?,
                None => writeln!(f)?,
            }
        }
        match (&self.schedule, &self.next_run) {
            (Some(s), Some(n)) => writeln!(f, "  schedule     {s} (UTC); next run {}", utc(n))?,
            (Some(s), None) => writeln!(f, "  schedule     {s} (UTC); no run scheduled")?,
            (None, Some(n)) => writeln!(f, "  schedule     none; next run {}", utc(n))?,
            (None, None) => writeln!(f, "  schedule     none (runs on SIGUSR1 or `regfs gc`)")?,
        }
        let s = &self.settings;
        writeln!(
            f,
            "  settings     mode {}, duration {}, delete-untagged {}, dry-run {}, upload-max-age {}, min-age {}, drain-timeout {}",
            s.mode,
            s.duration,
            s.delete_untagged,
            s.dry_run,
            s.upload_max_age,
            s.min_age,
            s.drain_timeout
        )?;
        if let Some(o) = &self.settings_overrides {
            writeln!(
                f,
                "  overrides    {} saved through the HTTP API by {} at {}: they override the configuration file",
                o.fields.join(", "),
                o.set_by,
                utc(&o.set_at)
            )?;
        }
        if let Some(d) = &self.descriptors {
            let open = d.open.map_or_else(|| "?".into(), |n| n.to_string());
            writeln!(
                f,
                "  descriptors  {open} open of limit {} (hard {}); inode budget {} ({} in use)",
                d.limit, d.hard_limit, d.budget, d.inode_fds
            )?;
        }
        match &self.last_job {
            Some(j) => {
                writeln!(f, "  last run     {}", j.summary())?;
                write_warnings(f, j.report.as_ref().map_or(&[], |r| r.warnings()))?;
            }
            None => writeln!(f, "  last run     none")?,
        }
        match &self.registry_cache {
            Some(c) if c.safe => {
                writeln!(f, "  registry     cache {}: safe; {}", c.cache, c.detail)?
            }
            Some(c) => writeln!(
                f,
                "  registry     cache {}: UNSAFE, GC deletes nothing unless allow_unsafe_cache; {}",
                c.cache, c.detail
            )?,
            None => writeln!(
                f,
                "  registry     cache not checked: no registry using the store runs, no [registry] config"
            )?,
        }
        if let Some(c) = &self.cluster {
            write_cluster(f, c)?;
        }
        Ok(())
    }
}

/// Warnings shown under the last run (the job's record holds them all).
const WARNINGS_SHOWN: usize = 5;

/// The last run's warnings: what it met and did not understand, and what that kept.
fn write_warnings(f: &mut fmt::Formatter<'_>, warnings: &[crate::gc::Warning]) -> fmt::Result {
    for w in warnings.iter().take(WARNINGS_SHOWN) {
        writeln!(f, "  warning      {}: {}", w.path, w.message)?;
    }
    if warnings.len() > WARNINGS_SHOWN {
        writeln!(
            f,
            "  warning      and {} more (regfs status --json)",
            warnings.len() - WARNINGS_SHOWN
        )?;
    }
    Ok(())
}

/// The cluster part of `status`: this node, the collector, each member.
fn write_cluster(f: &mut fmt::Formatter<'_>, c: &super::epoch::ClusterView) -> fmt::Result {
    write!(f, "  cluster      node {}", c.node)?;
    if let Some(at) = c.read_at {
        // Older than the status itself when etcd was slow to answer it.
        write!(
            f,
            " (as read from etcd at {})",
            at.format("%H:%M:%S%.3f UTC")
        )?;
    }
    writeln!(f)?;
    if let Some(e) = &c.error {
        writeln!(f, "  cluster      FENCED, refusing writes: {e}")?;
    }
    match (&c.collector, c.epoch) {
        (Some(n), Some(e)) => writeln!(f, "  collector    {n} (epoch {e})")?,
        _ => writeln!(f, "  collector    none (no epoch)")?,
    }
    for m in &c.members {
        write!(f, "  member       {} {} ({}", m.node, m.state, m.mountpoint)?;
        if !m.host.is_empty() {
            write!(f, " on {}, pid {}", m.host, m.pid)?;
        }
        writeln!(f, ")")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::Value;

    use super::super::epoch::{ClusterView, MemberView};
    use super::super::job::{JobOutcome, Trigger};
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn settings(mode: &str) -> JobSettings {
        JobSettings {
            mode: mode.into(),
            duration: "30m".into(),
            delete_untagged: true,
            dry_run: false,
            upload_max_age: "7days".into(),
            min_age: "1h".into(),
            drain_timeout: "10s".into(),
        }
    }

    fn idle() -> Status {
        let mut last = Job::started(
            6,
            Trigger::Schedule,
            settings("read-only"),
            at("2026-12-05T03:00:00Z"),
        );
        last.outcome = JobOutcome::Done;
        last.ended_at = Some(at("2026-12-05T03:01:00Z"));
        Status {
            mountpoint: "/var/lib/docker-registry".into(),
            storage: "/var/lib/docker-registry".into(),
            state: State::Idle,
            mode: "read-only".into(),
            read_only: false,
            read_only_since: None,
            read_only_reason: None,
            banner: None,
            current_job: None,
            progress: None,
            schedule: Some("0 3 * * SAT".into()),
            next_run: Some(at("2026-12-12T03:00:00Z")),
            settings: settings("read-only"),
            last_job: Some(last),
            registry_cache: None,
            descriptors: Some(Descriptors {
                limit: 524288,
                hard_limit: 524288,
                budget: 262144,
                inode_fds: 17,
                open: Some(31),
            }),
            settings_overrides: None,
            cluster: None,
        }
    }

    /// A run of this node in `state`: read-only since 03:00 once the gate closed.
    fn running(state: State, mode: &str) -> Status {
        let job = Job::started(7, Trigger::Api, settings(mode), at("2026-12-07T03:00:00Z"));
        let read_only = mode == "read-only" && state != State::Closing;
        let since = read_only.then(|| at("2026-12-07T03:00:01Z"));
        Status {
            state,
            mode: mode.into(),
            settings: settings(mode),
            read_only,
            read_only_since: since,
            read_only_reason: read_only.then(|| "GC job 7 runs".into()),
            banner: read_only.then(|| "STORE IS READ-ONLY since ...: pushes are refused".into()),
            current_job: Some(job),
            progress: (state != State::Closing).then(|| Progress {
                phase: if state == State::Sweeping {
                    "sweep"
                } else {
                    "mark"
                }
                .into(),
                done: 12,
                total: 40,
            }),
            registry_cache: Some(crate::registry::CacheStatus {
                config: "/etc/docker/registry/config.yml".into(),
                cache: "redis".into(),
                safe: state != State::Sweeping,
                detail: "regfs clears what GC deletes".into(),
                registry_pids: vec![4242],
                checked_at: at("2026-12-07T03:00:00Z"),
            }),
            ..idle()
        }
    }

    fn cluster(collector: Option<&str>, error: Option<&str>) -> ClusterView {
        let member = |node: &str, state: &str| MemberView {
            node: node.into(),
            state: state.into(),
            mountpoint: "/var/lib/docker-registry".into(),
            host: "host-".to_string() + node,
            pid: 99,
        };
        ClusterView {
            node: "registry-1".into(),
            members: vec![member("registry-1", "closed"), member("registry-2", "open")],
            collector: collector.map(Into::into),
            epoch: collector.map(|_| 12),
            read_at: None,
            error: error.map(Into::into),
        }
    }

    /// Every state `regfs status` can show, cluster states included.
    fn every_state() -> Vec<(&'static str, Status)> {
        let mut overridden = idle();
        overridden.settings_overrides = Some(crate::settings::owner::Overrides {
            values: Default::default(),
            retention: Default::default(),
            fields: vec!["schedule".into(), "mode".into()],
            set_at: at("2026-12-06T10:00:00Z"),
            set_by: "admin".into(),
        });
        overridden.schedule = None;
        overridden.next_run = None;
        vec![
            ("idle", idle()),
            ("closing", running(State::Closing, "read-only")),
            ("marking read-only", running(State::Marking, "read-only")),
            ("sweeping read-only", running(State::Sweeping, "read-only")),
            ("marking online", running(State::Marking, "online")),
            ("overrides, no schedule", overridden),
            (
                "cluster, open",
                idle().in_cluster(cluster(None, None), false),
            ),
            (
                "cluster, closed by another node's epoch",
                idle().in_cluster(cluster(Some("registry-2"), None), true),
            ),
            (
                "cluster, this node collects",
                running(State::Sweeping, "read-only")
                    .in_cluster(cluster(Some("registry-1"), None), true),
            ),
            (
                "cluster, fenced",
                idle().in_cluster(cluster(None, Some("etcd unreachable")), true),
            ),
            (
                "cluster, joining",
                idle().in_cluster(cluster(None, None), true),
            ),
        ]
    }

    /// The text's `  key          value` lines, by key.
    fn lines(text: &str) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with("  ")) {
            let (key, value) = line.split_at(15);
            out.entry(key.trim().into())
                .or_default()
                .push(value.to_string());
        }
        out
    }

    fn time(v: &Value) -> String {
        utc(&v.as_str().unwrap().parse().unwrap())
    }

    /// The text says what the JSON says, field by field; a field of the JSON the text
    /// does not show fails.
    fn assert_one_truth(name: &str, st: &Status) {
        let text = st.to_string();
        let json = serde_json::to_value(st).unwrap();
        let lines = lines(&text);
        let one = |key: &str| -> &str {
            match lines.get(key).map(Vec::as_slice) {
                Some([v]) => v,
                other => panic!("{name}: {key:?} lines: {other:?}\n{text}"),
            }
        };
        let has = |key: &str| lines.contains_key(key);
        let says = |key: &str, what: &str| {
            assert!(
                lines
                    .get(key)
                    .is_some_and(|v| v.iter().any(|l| l.contains(what))),
                "{name}: {key} does not say {what:?}\n{text}"
            )
        };
        let str_of = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        for (field, v) in json.as_object().unwrap() {
            match field.as_str() {
                "mountpoint" | "storage" => assert!(
                    text.lines()
                        .any(|l| l.starts_with("regfs at") && l.contains(&str_of(v))),
                    "{name}: {field}\n{text}"
                ),
                "state" | "mode" => assert_eq!(one(field), str_of(v), "{name}: {field}\n{text}"),
                "read_only" => assert_eq!(
                    one("read-only").starts_with("yes"),
                    v.as_bool().unwrap(),
                    "{name}: read_only {v}\n{text}"
                ),
                "read_only_since" => match v {
                    Value::Null => assert!(!one("read-only").contains("since"), "{name}\n{text}"),
                    t => says("read-only", &format!("since {}", time(t))),
                },
                "read_only_reason" => says("read-only", v.as_str().unwrap()),
                "banner" => match v {
                    Value::Null => assert!(!text.contains("***"), "{name}: banner\n{text}"),
                    b => assert!(
                        text.starts_with(&format!("*** {} ***\n", b.as_str().unwrap())),
                        "{name}: banner\n{text}"
                    ),
                },
                "current_job" => match v {
                    Value::Null => assert!(!has("current job"), "{name}\n{text}"),
                    j => {
                        let c = one("current job");
                        assert!(c.starts_with(&format!("{} ", j["id"])), "{name}: {c}");
                        assert!(c.contains(j["trigger"].as_str().unwrap()), "{name}: {c}");
                    }
                },
                "progress" => match v {
                    Value::Null => assert!(
                        lines.get("current job").is_none_or(|c| !c[0].contains('/')),
                        "{name}\n{text}"
                    ),
                    p => says(
                        "current job",
                        &format!("{} {}/{}", str_of(&p["phase"]), p["done"], p["total"]),
                    ),
                },
                "schedule" => match v {
                    Value::Null => assert!(one("schedule").starts_with("none"), "{name}\n{text}"),
                    s => assert!(one("schedule").starts_with(s.as_str().unwrap()), "{name}"),
                },
                "next_run" => match v {
                    Value::Null => assert!(!one("schedule").contains("next run"), "{name}"),
                    t => says("schedule", &format!("next run {}", time(t))),
                },
                "settings" => {
                    for (k, s) in v.as_object().unwrap() {
                        says(
                            "settings",
                            &format!("{} {}", k.replace('_', "-"), str_of(s)),
                        );
                    }
                }
                "settings_overrides" => match v {
                    Value::Null => assert!(!has("overrides"), "{name}\n{text}"),
                    o => {
                        for f in o["fields"].as_array().unwrap() {
                            says("overrides", f.as_str().unwrap());
                        }
                        says("overrides", o["set_by"].as_str().unwrap());
                        says("overrides", &time(&o["set_at"]));
                    }
                },
                "descriptors" => match v {
                    Value::Null => assert!(!has("descriptors"), "{name}\n{text}"),
                    d => {
                        let line = one("descriptors");
                        for k in ["limit", "hard_limit", "budget", "inode_fds", "open"] {
                            assert!(line.contains(&d[k].to_string()), "{name}: {k} {line}");
                        }
                    }
                },
                "last_job" => match v {
                    Value::Null => assert_eq!(one("last run"), "none", "{name}"),
                    j => {
                        says("last run", &format!("job {} (", j["id"]));
                        says("last run", j["outcome"].as_str().unwrap());
                    }
                },
                "registry_cache" => match v {
                    Value::Null => says("registry", "not checked"),
                    c => {
                        says("registry", &format!("cache {}", str_of(&c["cache"])));
                        let verdict = if c["safe"] == true {
                            ": safe"
                        } else {
                            ": UNSAFE"
                        };
                        says("registry", verdict);
                    }
                },
                "cluster" => {
                    says("cluster", &format!("node {}", str_of(&v["node"])));
                    match &v["error"] {
                        Value::Null => assert!(!text.contains("FENCED"), "{name}\n{text}"),
                        e => says(
                            "cluster",
                            &format!("FENCED, refusing writes: {}", str_of(e)),
                        ),
                    }
                    match (&v["collector"], &v["epoch"]) {
                        (Value::String(n), e) => says("collector", &format!("{n} (epoch {e})")),
                        _ => says("collector", "none"),
                    }
                    for m in v["members"].as_array().unwrap() {
                        says(
                            "member",
                            &format!("{} {}", str_of(&m["node"]), str_of(&m["state"])),
                        );
                    }
                }
                other => panic!("{name}: the JSON field {other:?} is not in the text\n{text}"),
            }
        }
    }

    #[test]
    fn the_text_says_what_the_json_says_in_every_state() {
        for (name, st) in every_state() {
            assert_one_truth(name, &st);
            // The CLI renders the value it read back from the daemon's JSON.
            let back: Status = serde_json::from_value(serde_json::to_value(&st).unwrap()).unwrap();
            assert_eq!(back.to_string(), st.to_string(), "{name}");
        }
    }

    #[test]
    fn a_node_closed_by_another_nodes_epoch_says_read_only_in_both() {
        let st = idle().in_cluster(cluster(Some("registry-2"), None), true);
        assert!(st.read_only);
        let text = st.to_string();
        assert!(
            text.contains("read-only    yes: node registry-2 collects cluster epoch 12"),
            "{text}"
        );
    }
}

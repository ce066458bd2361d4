//! What `regfs status` shows: the state of the store and of the current run.

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

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(b) = &self.banner {
            writeln!(f, "*** {b} ***")?;
        }
        writeln!(f, "regfs at {} (store {})", self.mountpoint, self.storage)?;
        writeln!(f, "  state        {:?}", self.state)?;
        writeln!(f, "  mode         {}", self.mode)?;
        match &self.read_only_since {
            Some(t) => writeln!(f, "  read-only    since {}", utc(t))?,
            None => writeln!(f, "  read-only    no (pushes work)")?,
        }
        if let (Some(j), Some(p)) = (&self.current_job, &self.progress) {
            writeln!(
                f,
                "  current job  {} ({:?}): {} {}/{}",
                j.id, j.trigger, p.phase, p.done, p.total
            )?;
        }
        match (&self.schedule, &self.next_run) {
            (Some(s), Some(n)) => writeln!(f, "  schedule     {s} (UTC); next run {}", utc(n))?,
            (Some(s), None) => writeln!(f, "  schedule     {s} (UTC); no run scheduled")?,
            _ => writeln!(f, "  schedule     none (runs on SIGUSR1 or `regfs gc`)")?,
        }
        let s = &self.settings;
        writeln!(
            f,
            "  settings     duration {}, delete-untagged {}, dry-run {}, upload-max-age {}, min-age {}, drain-timeout {}",
            s.duration, s.delete_untagged, s.dry_run, s.upload_max_age, s.min_age, s.drain_timeout
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
    writeln!(f, "  cluster      node {}", c.node)?;
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

//! The daemon's GC service: starts epochs (one at a time), stops them, reports status
//! and keeps the history. The FUSE mount serves requests meanwhile.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use chrono::{DateTime, Utc};
use thiserror::Error;

use super::epoch::{Alone, EpochCoordinator};
use super::history::{History, HistoryLimits};
use super::job::{Job, Trigger};
use super::run_control::RunControl;
use super::run_parts::{RunHost, RunParts};
use super::status::{Descriptors, State, Status};
use crate::fs::StorageFs;
use crate::gc::Deleter;
use crate::layout::Store;
use crate::policy::gate::WriteGate;
use crate::policy::online::OnlineCollection;
use crate::registry::CacheStatus;
use crate::settings::owner::SettingsOwner;
use crate::settings::{GcDuration, Settings};
use crate::state_dir::StateDir;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TriggerError {
    #[error("GC is disabled on this mount (--gc-duration never); no run was started")]
    Disabled,
    #[error("GC job {0} is already running; no new run was started")]
    Busy(u64),
    #[error("the daemon is shutting down; no run was started")]
    ShuttingDown,
    /// Another node of the cluster collects, or etcd cannot be asked.
    #[error("{0}; no run was started")]
    Cluster(String),
    #[error("cannot record the job in the state directory: {0}")]
    State(String),
}

/// Told of every job in the history at start and of each run as it ends (metrics
/// count them). The daemon knows nothing of what observes it.
pub trait JobObserver: Send + Sync {
    fn job_ended(&self, job: &Job);
}

struct Running {
    job: Job,
    control: Arc<RunControl>,
    read_only_since: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct Inner {
    running: Option<Running>,
    last: Option<Job>,
    next_id: u64,
    shutting_down: bool,
    /// The thread of the current (or last) run, joined by the next trigger or shutdown.
    run_thread: Option<JoinHandle<()>>,
    /// Bumped on reload so the scheduler recomputes its next run.
    generation: u64,
    /// The id of a run being started (its epoch claimed, its record written) outside
    /// the lock: no second run starts meanwhile, and shutdown waits for it.
    starting: Option<u64>,
}

/// The store a daemon collects, as the composition root hands it over.
pub struct ServedStore {
    /// The filesystem serving the mount (kernel caches, descriptors).
    pub fs: Arc<StorageFs>,
    /// The collector reads the store here (the directory handle taken before the mount).
    pub store: Store,
    /// The sweep deletes through it, so the kernel sees each deletion.
    pub deleter: Arc<dyn Deleter + Send + Sync>,
    /// Closed for read-only epochs, reopened at their end.
    pub gate: Arc<WriteGate>,
    /// The online barrier's handle, for online runs.
    pub online: OnlineCollection,
    /// Tag push and pull times (retention).
    pub access: Arc<super::access_journal::AccessJournal>,
}

pub struct Daemon {
    fs: Arc<StorageFs>,
    store: Store,
    deleter: Arc<dyn Deleter + Send + Sync>,
    gate: Arc<WriteGate>,
    online: OnlineCollection,
    retention: super::retention_state::RetentionState,
    /// When a run last searched every link directory for leftover temp files.
    temp_search: super::temp_search::TempSearchClock,
    mountpoint: PathBuf,
    storage: PathBuf,
    state_dir: Arc<StateDir>,
    history: History,
    /// The settings in force, read from their owner at each use (never copied here).
    settings: Arc<SettingsOwner>,
    /// The history as recorded (oldest first, within the limits): what the API pages
    /// through without reading the file. Replaced whole at each run's end.
    recorded: Mutex<Arc<Vec<Job>>>,
    observers: Vec<Arc<dyn JobObserver>>,
    inner: Mutex<Inner>,
    changed: Condvar,
    /// The last verdict on the registry's blob-descriptor cache.
    cache: Mutex<Option<CacheStatus>>,
    /// Shares each epoch with the other nodes serving the store (none: a node alone).
    coordinator: std::sync::OnceLock<Arc<dyn EpochCoordinator>>,
}

/// Cuts the history to `limits`; a failure is logged (the runs go on).
fn prune(history: &History, limits: &HistoryLimits) {
    match history.prune(limits, Utc::now()) {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            removed = n,
            keep_runs = limits.keep_runs,
            keep_days = limits.keep_days,
            "removed the oldest runs from the job history ([history] limits)"
        ),
        Err(e) => tracing::error!(error = %e, "cannot cut the job history to its limits"),
    }
}

/// How long a verdict on the registry's cache is shown before `status` checks again.
const CACHE_RECHECK: chrono::TimeDelta = chrono::TimeDelta::seconds(10);

impl Daemon {
    /// Sets the service up; records a run a dead predecessor left behind as interrupted.
    /// A history that cannot be read or written is logged and GC still runs (freeing
    /// space matters more than the record of it).
    pub fn new(
        served: ServedStore,
        storage: &Path,
        mountpoint: &Path,
        state_dir: Arc<StateDir>,
        settings: Arc<SettingsOwner>,
        observers: Vec<Arc<dyn JobObserver>>,
    ) -> Arc<Daemon> {
        let history = History::new(state_dir.clone());
        match history.recover_interrupted() {
            Ok(Some(job)) => tracing::warn!(
                job = job.id,
                "GC job {} was interrupted when the daemon stopped; recorded as interrupted: {}",
                job.id,
                job.summary()
            ),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e,
                "cannot record the run a stopped daemon left behind in the history"),
        }
        // A history longer than the limits (an older daemon kept everything) is cut
        // before it is read.
        prune(&history, &settings.effective().history);
        let jobs = history.jobs().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the job history; starting without it");
            vec![]
        });
        for j in &jobs {
            observers.iter().for_each(|o| o.job_ended(j));
        }
        let inner = Inner {
            next_id: jobs.iter().map(|j| j.id).max().unwrap_or(0) + 1,
            last: jobs.last().cloned(),
            ..Inner::default()
        };
        let ServedStore {
            fs,
            store,
            deleter,
            gate,
            online,
            access,
        } = served;
        let recorded = Mutex::new(Arc::new(jobs));
        Arc::new(Daemon {
            fs,
            store,
            deleter,
            gate,
            online,
            retention: super::retention_state::RetentionState::new(access, state_dir.clone()),
            temp_search: Default::default(),
            mountpoint: mountpoint.to_path_buf(),
            storage: storage.to_path_buf(),
            state_dir,
            history,
            recorded,
            settings,
            observers,
            inner: Mutex::new(inner),
            changed: Condvar::new(),
            cache: Mutex::new(None),
            coordinator: std::sync::OnceLock::new(),
        })
    }

    /// Makes every run share its epoch through `c` (cluster mode); set once, at start.
    pub fn set_coordinator(&self, c: Arc<dyn EpochCoordinator>) {
        let _ = self.coordinator.set(c);
    }

    pub fn coordinator(&self) -> &dyn EpochCoordinator {
        self.coordinator.get().map_or(&Alone, |c| c.as_ref())
    }

    /// Checks the registry's blob-descriptor cache now; logs the verdict when it changes
    /// (`when` says why it was checked).
    pub fn check_cache(&self, when: &str) -> Option<CacheStatus> {
        let now = crate::registry::cache::assess(&self.settings().registry);
        let mut last = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let changed =
            last.as_ref().map(|c| (c.safe, &c.detail)) != now.as_ref().map(|c| (c.safe, &c.detail));
        match &now {
            Some(c) if changed && c.safe => {
                tracing::info!(config = %c.config, cache = %c.cache, pids = ?c.registry_pids, when, "registry cache: {}", c.detail)
            }
            Some(c) if changed => {
                tracing::warn!(config = %c.config, cache = %c.cache, pids = ?c.registry_pids, when,
                    "registry cache UNSAFE: {}", c.detail)
            }
            None if last.is_none() && when == "start" => tracing::info!(
                "no registry using the store runs and no registry configuration is given \
                 ([registry] config, --registry-config): checked again before each run"
            ),
            _ => {}
        }
        last.clone_from(&now);
        now
    }

    /// The verdict for `status`: checked again when older than a few seconds.
    fn cache_status(&self) -> Option<CacheStatus> {
        let last = self.cache.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match last {
            Some(c) if Utc::now() - c.checked_at < CACHE_RECHECK => Some(c),
            _ => self.check_cache("status"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The settings in force now.
    pub fn settings(&self) -> Settings {
        self.settings.effective()
    }

    /// Their owner, for whoever changes them (SIGHUP, the API).
    pub fn settings_owner(&self) -> &Arc<SettingsOwner> {
        &self.settings
    }

    /// The settings changed (SIGHUP, the API): the scheduler works out its next run
    /// again. A running job keeps the ones it started with.
    pub fn settings_changed(&self) {
        self.lock().generation += 1;
        self.changed.notify_all();
    }

    /// Bytes in use on the store's filesystem.
    fn store_used_bytes(&self) -> Option<u64> {
        let st = rustix::fs::fstatvfs(self.store.root_fd()).ok()?;
        Some(st.f_blocks.saturating_sub(st.f_bfree) * st.f_frsize)
    }

    pub(super) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Sleeps up to `timeout`; true if settings were reloaded (or shutdown began) since
    /// `generation` was read.
    pub(super) fn wait_for_change(&self, generation: u64, timeout: std::time::Duration) -> bool {
        let inner = self.lock();
        let (inner, _) = self
            .changed
            .wait_timeout_while(inner, timeout, |i| {
                i.generation == generation && !i.shutting_down
            })
            .unwrap_or_else(|e| e.into_inner());
        inner.generation != generation || inner.shutting_down
    }

    pub(super) fn is_shutting_down(&self) -> bool {
        self.lock().shutting_down
    }

    /// Starts a run now ("Save & Start"). One run at a time. The slot is taken under
    /// the lock and the epoch claimed (etcd) and the run recorded (a file) without it, so
    /// `status` never waits on either.
    pub fn trigger(self: &Arc<Self>, trigger: Trigger) -> Result<u64, TriggerError> {
        let settings = self.settings();
        if settings.duration == GcDuration::Never {
            return Err(TriggerError::Disabled);
        }
        let id = {
            let mut inner = self.lock();
            if inner.shutting_down {
                return Err(TriggerError::ShuttingDown);
            }
            if let Some(r) = &inner.running {
                return Err(TriggerError::Busy(r.job.id));
            }
            if let Some(id) = inner.starting {
                return Err(TriggerError::Busy(id));
            }
            inner.starting = Some(inner.next_id);
            inner.next_id
        };
        // Frees the slot when the run does not start.
        let give_up = |e: TriggerError| {
            self.lock().starting = None;
            self.changed.notify_all();
            Err(e)
        };
        if let Err(e) = self
            .coordinator()
            .begin(id, settings.mode == crate::settings::GcMode::Online)
        {
            return give_up(TriggerError::Cluster(e));
        }
        let job = Job::started(
            id,
            trigger,
            super::job::JobSettings::of(&settings),
            Utc::now(),
        );
        // A state directory that cannot take the record (full, say) must not stop GC from
        // freeing space: the run goes on, unrecorded if the daemon dies.
        if let Err(e) = self.history.mark_running(&job) {
            tracing::error!(job = job.id, error = %e,
                "cannot record the running job in the state directory; running it anyway");
        }
        let abandon = |e: TriggerError| {
            self.coordinator().end(&job);
            if let Err(e) = self.history.clear_running() {
                tracing::error!(error = %e, "cannot clear the running-job record");
            }
            give_up(e)
        };
        let mut inner = self.lock();
        if inner.shutting_down {
            drop(inner);
            return abandon(TriggerError::ShuttingDown);
        }
        inner.starting = None;
        inner.next_id = id + 1;
        let control = Arc::new(RunControl::default());
        control.set_limit(settings.time_limit());
        inner.running = Some(Running {
            job: job.clone(),
            control: control.clone(),
            read_only_since: None,
        });
        // Spawned under the lock (spawning waits on nothing), so that shutdown always
        // finds the thread to join.
        let daemon = self.clone();
        let unstarted = job.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("regfs-gc-{id}"))
            .spawn(move || super::runner::run(&daemon.run_parts(), job, &control, &settings));
        match spawned {
            Ok(thread) => {
                let last = inner.run_thread.replace(thread);
                drop(inner);
                if let Some(last) = last {
                    let _ = last.join(); // ended: its run freed the slot
                }
                Ok(id)
            }
            Err(e) => {
                inner.running = None;
                drop(inner);
                let job = unstarted;
                self.coordinator().end(&job);
                if let Err(e) = self.history.clear_running() {
                    tracing::error!(error = %e, "cannot clear the running-job record");
                }
                self.changed.notify_all();
                Err(TriggerError::State(format!(
                    "cannot start the run's thread: {e}"
                )))
            }
        }
    }

    /// What a run is given: the gate, the store and the mount to collect, the history
    /// for its heartbeat, and this service to report to.
    fn run_parts(&self) -> RunParts<'_> {
        RunParts {
            gate: &self.gate,
            store: &self.store,
            fs: &self.fs,
            deleter: self.deleter.as_ref(),
            history: &self.history,
            online: &self.online,
            retention: &self.retention,
            temp_search: &self.temp_search,
            host: self,
            epoch: self.coordinator(),
        }
    }

    /// Asks the current run to stop safely. Returns its id, if one was running.
    pub fn stop(&self) -> Option<u64> {
        let inner = self.lock();
        inner.running.as_ref().map(|r| {
            r.control.request_stop();
            r.job.id
        })
    }

    /// Refuses new runs, stops the current one and waits for it to end (store writable).
    pub fn shutdown(&self) {
        let mut inner = self.lock();
        inner.shutting_down = true;
        if let Some(r) = &inner.running {
            r.control.request_stop();
        }
        while inner.running.is_some() || inner.starting.is_some() {
            if let Some(r) = &inner.running {
                r.control.request_stop();
            }
            inner = self.changed.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
        let thread = inner.run_thread.take();
        drop(inner);
        self.changed.notify_all();
        if let Some(thread) = thread {
            let _ = thread.join(); // its run has ended: the store is open again
        }
    }

    fn set_read_only_since(&self, t: DateTime<Utc>) {
        if let Some(r) = &mut self.lock().running {
            r.read_only_since = Some(t);
        }
    }

    pub fn fs(&self) -> &Arc<StorageFs> {
        &self.fs
    }

    /// The write gate this daemon's epochs close.
    pub fn gate(&self) -> &Arc<WriteGate> {
        &self.gate
    }

    /// The online barrier's handle (a cluster's member records and checks through it).
    pub fn online(&self) -> &OnlineCollection {
        &self.online
    }

    /// Tag push and pull times, and the tags pruned within their grace.
    pub fn retention(&self) -> &super::retention_state::RetentionState {
        &self.retention
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The backing store (read by the collector and by retention).
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn state_dir(&self) -> &Arc<StateDir> {
        &self.state_dir
    }

    /// The running job as its record should say now: what the sweep deleted so far and
    /// how long the store has been read-only.
    fn running_snapshot(&self) -> Option<Job> {
        let inner = self.lock();
        let r = inner.running.as_ref()?;
        let mut job = r.job.clone();
        if let Some(since) = r.read_only_since {
            job.read_only_seconds = (Utc::now() - since).num_milliseconds().max(0) as f64 / 1000.0;
        }
        if r.control.state() == State::Sweeping {
            job.report = Some(crate::gc::RunReport::Sweeping(r.control.swept_so_far()));
        }
        Some(job)
    }

    /// Records a finished run and frees the slot for the next one.
    fn finish(&self, mut job: Job) {
        job.store_used_bytes = self.store_used_bytes();
        job.store_bytes = job.report.as_ref().and_then(|r| r.store_bytes_after());
        self.observers.iter().for_each(|o| o.job_ended(&job));
        if let Err(e) = self.history.append(&job) {
            tracing::error!(job = job.id, error = %e,
                "cannot write the job to the history; it did: {}", job.summary());
        }
        if let Err(e) = self.history.clear_running() {
            tracing::error!(error = %e, "cannot clear the running-job record");
        }
        let limits = self.settings().history;
        prune(&self.history, &limits);
        self.record(&job, &limits);
        let mut inner = self.lock();
        inner.running = None;
        inner.last = Some(job);
        drop(inner);
        self.changed.notify_all();
    }

    /// Adds a finished job to the recorded history, cut to `limits` as the file is.
    fn record(&self, job: &Job, limits: &HistoryLimits) {
        let now = Utc::now();
        let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        let mut jobs: Vec<Job> = Vec::with_capacity(recorded.len() + 1);
        let newest = std::iter::once(job).chain(recorded.iter().rev());
        for (newer, j) in newest.enumerate() {
            if !limits.keeps(j.ended_at.unwrap_or(j.started_at), newer, now) {
                break;
            }
            jobs.push(j.clone());
        }
        jobs.reverse();
        *recorded = Arc::new(jobs);
    }

    /// The finished jobs recorded, oldest first (bounded by `[history]`).
    pub fn recorded_jobs(&self) -> Arc<Vec<Job>> {
        self.recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A job by id: the running one or one from the history.
    pub fn job(&self, id: u64) -> Option<Job> {
        let inner = self.lock();
        if let Some(r) = inner.running.as_ref().filter(|r| r.job.id == id) {
            return Some(r.job.clone());
        }
        if let Some(j) = inner.last.as_ref().filter(|j| j.id == id) {
            return Some(j.clone());
        }
        drop(inner);
        self.recorded_jobs()
            .iter()
            .rev()
            .find(|j| j.id == id)
            .cloned()
    }

    pub fn next_run(&self) -> Option<DateTime<Utc>> {
        let s = self.settings();
        if s.duration == GcDuration::Never {
            return None;
        }
        s.schedule
            .as_ref()
            .and_then(|sch| sch.next_after(Utc::now()))
    }

    pub fn status(&self) -> Status {
        let settings = self.settings();
        let inner = self.lock();
        let running = inner.running.as_ref();
        let state = running.map(|r| r.control.state()).unwrap_or(State::Idle);
        let read_only_since = running.and_then(|r| r.read_only_since);
        let banner = read_only_since.map(|t| {
            format!(
                "STORE IS READ-ONLY since {}: pushes are refused while GC job {} runs; pulls work",
                t.format("%Y-%m-%d %H:%M:%S UTC"),
                running.map(|r| r.job.id).unwrap_or(0)
            )
        });
        let status = Status {
            mountpoint: self.mountpoint.display().to_string(),
            storage: self.storage.display().to_string(),
            state,
            mode: settings.mode.to_string(),
            read_only: read_only_since.is_some(),
            read_only_since,
            read_only_reason: read_only_since
                .and(running)
                .map(|r| format!("GC job {} runs", r.job.id)),
            banner,
            current_job: running.map(|r| r.job.clone()),
            progress: running.map(|r| r.control.progress()),
            schedule: settings.schedule.as_ref().map(|s| s.to_string()),
            next_run: None,
            settings: super::job::JobSettings::of(&settings),
            last_job: inner.last.clone(),
            registry_cache: None,
            descriptors: None,
            settings_overrides: None,
            cluster: None,
        };
        drop(inner);
        let cluster = self.coordinator().view();
        let status = Status {
            next_run: self.next_run(),
            registry_cache: self.cache_status(),
            descriptors: Some(self.descriptors()),
            settings_overrides: self.settings.overrides(),
            ..status
        };
        match cluster {
            Some(c) => status.in_cluster(c, self.gate.is_closed()),
            None => status,
        }
    }

    /// The open-file limit, the inode descriptor budget and what is open now.
    pub fn descriptors(&self) -> Descriptors {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let (inode_fds, _) = self.fs.inode_fds();
        Descriptors {
            limit: limit.current.unwrap_or(u64::MAX),
            hard_limit: limit.maximum.unwrap_or(u64::MAX),
            budget: self.fs.fd_budget() as u64,
            inode_fds: inode_fds as u64,
            open: std::fs::read_dir("/proc/self/fd")
                .map(|d| d.count() as u64)
                .ok(),
        }
    }
}

impl RunHost for Daemon {
    fn cache_verdict(&self, when: &str) -> Option<CacheStatus> {
        self.check_cache(when)
    }

    fn read_only_since(&self, t: DateTime<Utc>) {
        self.set_read_only_since(t);
    }

    fn snapshot(&self) -> Option<Job> {
        self.running_snapshot()
    }

    fn ended(&self, job: Job) {
        self.finish(job);
    }
}

//! The daemon's composition root and the one owner of its lifetime. [`Runtime::start`]
//! mounts the store, builds the GC service and starts every thread around it (the FUSE
//! session, the control socket, the scheduler, signals, metrics, the inode reclaimer),
//! keeping each one's handle. [`Runtime::shutdown`] ends them in an order that never
//! leaves the store closed or a client waiting: stop a run, reopen, close the control
//! socket, stop the other threads, unmount, join. No thread exits the process.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::MountOptions;
use crate::daemon::access_journal::{self, AccessJournal};
use crate::daemon::control::{self, ControlSocket};
use crate::daemon::signals::{self, SignalThread};
use crate::daemon::{Daemon, ServedStore, notify, scheduler};
use crate::http::Server;
use crate::metrics::GcStats;
use crate::mount::{self, MountConfig, Mounted, Serving};
use crate::policy::gate::WriteGate;
use crate::settings::owner::{SettingsOwner, Sources};
use crate::state_dir::StateDir;

pub mod compose;

use compose::{StorePolicies, SweepDeleter};

/// Re-reads the settings' sources (the configuration file and the flags) on SIGHUP.
pub type Reload = Box<dyn Fn() -> Result<Sources, String> + Send>;

/// Told of each step of the shutdown as it is done (tests record the order).
pub type StageObserver = Arc<dyn Fn(Stage) + Send + Sync>;

/// Why the daemon stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// SIGTERM or SIGINT.
    Signal(i32),
    /// The mount went away from outside (`umount`).
    Unmounted,
    /// Its owner asked ([`Stopper::stop`]).
    Requested,
}

/// The steps of a shutdown, in their order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// No run is in progress, none can start, and the last one's thread is joined.
    RunStopped,
    /// The write gate is open.
    GateReopened,
    /// The control socket is closed and removed.
    ControlClosed,
    /// The scheduler, signal and metrics threads have ended.
    ThreadsStopped,
    /// The mount is gone (unmounted, or detached lazily if busy).
    Unmounted,
    /// The session's threads and the reclaimer have ended.
    Joined,
}

/// What the runtime starts with.
pub struct Start {
    pub options: MountOptions,
    pub state_dir: PathBuf,
    /// Handle SIGUSR1, SIGUSR2, SIGHUP (with this reload), SIGTERM and SIGINT. None: no
    /// signal handling (a test running the daemon in its own process).
    pub signals: Option<Reload>,
    pub on_stage: Option<StageObserver>,
    /// After the unmount, how long the request loop may take to end (a lazily detached
    /// mount keeps serving the files still open on it).
    pub grace: Duration,
}

/// Asks a running daemon to shut down, from any thread.
#[derive(Debug, Clone)]
pub struct Stopper(Sender<StopReason>);

impl Stopper {
    pub fn stop(&self) {
        let _ = self.0.send(StopReason::Requested);
    }
}

/// What the threads besides the mount's are started with.
struct ThreadParts {
    gc_stats: Arc<Mutex<GcStats>>,
    listener: Option<crate::api::Prepared>,
    /// The settings' reload, and the signals caught since before the mount.
    reload: Option<(Reload, signals::Caught)>,
    /// Cluster mode: the node's name, claimed before the mount.
    claimed: Option<crate::cluster::Claimed>,
}

/// The threads the runtime owns, each taken when it is stopped.
#[derive(Default)]
struct Threads {
    serving: Option<Serving>,
    control: Option<ControlSocket>,
    scheduler: Option<JoinHandle<()>>,
    signals: Option<SignalThread>,
    metrics: Option<Server>,
    /// Writes the access journal; stopped (its last batch written) after the unmount.
    journal: Option<access_journal::Flusher>,
    /// Cluster mode: the node's lease and member agent; left after the unmount.
    cluster: Option<crate::cluster::Node>,
}

/// A serving daemon: the mount, the GC service and their threads.
pub struct Runtime {
    daemon: Arc<Daemon>,
    mountpoint: PathBuf,
    threads: Threads,
    stops: (Sender<StopReason>, Receiver<StopReason>),
    on_stage: Option<StageObserver>,
    grace: Duration,
    result: Result<(), String>,
}

/// What is checked and taken before anything is mounted: a daemon that cannot run (not
/// root, a bad certificate, a state directory others could change, a node name another
/// live node holds) refuses to start with nothing mounted.
struct BeforeMount {
    listener: Option<crate::api::Prepared>,
    /// The settings' reload, and the signals caught from here on.
    reload: Option<(Reload, signals::Caught)>,
    /// The open-file limit, as raised.
    nofile: u64,
    state: Arc<StateDir>,
    settings_owner: Arc<SettingsOwner>,
    claimed: Option<crate::cluster::Claimed>,
    gate: WriteGate,
}

impl BeforeMount {
    fn take(
        options: &MountOptions,
        state_dir: &Path,
        signals: Option<Reload>,
    ) -> Result<BeforeMount, String> {
        mount::require_root().map_err(|e| e.to_string())?;
        // The listener's credentials and certificate are checked before anything else.
        let listener = match &options.metrics {
            Some(_) => Some(crate::api::prepare(&options.api)?),
            None => None,
        };
        // Signals are caught from here on, before anything is mounted: a SIGTERM while
        // the daemon starts (systemd stopping it, a test) waits for the signal thread and
        // ends in an orderly shutdown, instead of killing a daemon with a live mount.
        let reload = match signals {
            Some(reload) => Some((
                reload,
                signals::catch().map_err(|e| format!("signal handler: {e}"))?,
            )),
            None => None,
        };
        let nofile = mount::raise_nofile_limit();
        // Checked (or created) before mounting: a state directory another user could
        // change is refused before anything else happens.
        let state = Arc::new(StateDir::prepare(state_dir).map_err(|e| e.to_string())?);
        // The settings' one owner: the file's, the API's saved ones and the flags'.
        let settings_owner = Arc::new(SettingsOwner::load(state.clone(), options.sources.clone())?);
        // A cluster node's name is claimed before anything is mounted: a daemon whose name
        // another live node holds is refused here, and mounts nothing.
        let claimed = match &options.cluster {
            Some(c) => Some(crate::cluster::Claimed::take(
                c,
                &options.mount.mountpoint.display().to_string(),
            )?),
            None => None,
        };
        let gate = WriteGate::new();
        if options.cluster.is_some() {
            // Closed until this node is a member and no epoch is on (`cluster::member`).
            gate.refuse_new_writes();
        }
        Ok(BeforeMount {
            listener,
            reload,
            nofile,
            state,
            settings_owner,
            claimed,
            gate,
        })
    }
}

/// Mounts the store under the policy chain the composition root builds around `gate`,
/// and gathers what the daemon serves it with (its access journal writing from now on).
fn mount_store(
    cfg: &MountConfig,
    gate: WriteGate,
    state: &Arc<StateDir>,
) -> Result<(Mounted, ServedStore, access_journal::Flusher), String> {
    let (mounted, policies) = mount::mount(cfg, |root| {
        let p = StorePolicies::compose(root, gate, cfg.record_access)?;
        Ok((p.chain.clone(), p))
    })
    .map_err(|e| e.to_string())?;
    let store = mounted
        .store()
        .map_err(|e| format!("storage directory: {e}"))?;
    let access = Arc::new(
        AccessJournal::open(
            state.clone(),
            policies.access.clone(),
            policies.records_access,
        )
        .map_err(|e| format!("access journal: {e}"))?,
    );
    let journal = access
        .start(access_journal::FLUSH_EVERY)
        .map_err(|e| format!("access journal thread: {e}"))?;
    let served = ServedStore {
        fs: mounted.fs.clone(),
        store,
        deleter: Arc::new(SweepDeleter(mounted.fs.clone())),
        gate: policies.gate,
        online: policies.online,
        access,
    };
    Ok((mounted, served, journal))
}

impl Runtime {
    /// Mounts and serves; returns once everything is up (the log says "serving").
    /// Whatever was started before a failure is shut down again.
    pub fn start(start: Start) -> Result<Runtime, String> {
        let Start {
            options,
            state_dir,
            signals,
            on_stage,
            grace,
        } = start;
        let cfg = &options.mount;
        let before = BeforeMount::take(&options, &state_dir, signals)?;
        let settings = before.settings_owner.effective();
        let (mounted, served, journal) = mount_store(cfg, before.gate, &before.state)?;
        let mountpoint = mounted.mountpoint.clone();
        let gc_stats = Arc::new(Mutex::new(GcStats::default()));
        let daemon = Daemon::new(
            served,
            &mounted.storage,
            &mountpoint,
            before.state,
            before.settings_owner,
            vec![gc_stats.clone()],
        );
        let stops = channel();
        let ended = stops.0.clone();
        let serving = mounted
            .serve(move || {
                let _ = ended.send(StopReason::Unmounted);
            })
            .map_err(|e| format!("serving {}: {e}", mountpoint.display()))?;
        // Once the mount is served: a registry's configuration or root directory may lie
        // in it, and a read of the mount before it is served would never return.
        daemon.check_cache("start");
        let mut rt = Runtime {
            daemon,
            mountpoint,
            threads: Threads {
                serving: Some(serving),
                journal: Some(journal),
                ..Threads::default()
            },
            stops,
            on_stage,
            grace,
            result: Ok(()),
        };
        let parts = ThreadParts {
            gc_stats,
            listener: before.listener,
            reload: before.reload,
            claimed: before.claimed,
        };
        if let Err(e) = rt.start_threads(&options, &state_dir, parts) {
            rt.stop_all();
            return Err(e);
        }
        tracing::info!(storage = %cfg.storage.display(), mountpoint = %rt.mountpoint.display(),
            threads = cfg.threads, nofile = before.nofile, fd_budget = rt.daemon.fs().fd_budget(), state_dir = %state_dir.display(),
            schedule = settings.schedule.as_ref().map(|s| s.to_string()).unwrap_or_else(|| "none".into()),
            duration = %settings.duration, next_run = ?rt.daemon.next_run(), "serving");
        notify::ready(&format!("serving {}; GC idle", rt.mountpoint.display()));
        Ok(rt)
    }

    /// Starts every thread besides the mount's: cluster membership, the control socket,
    /// the scheduler, the HTTP listener, the signal thread.
    fn start_threads(
        &mut self,
        options: &MountOptions,
        state_dir: &std::path::Path,
        parts: ThreadParts,
    ) -> Result<(), String> {
        let ThreadParts {
            gc_stats,
            listener,
            reload,
            claimed,
        } = parts;
        if let (Some(c), Some(claimed)) = (&options.cluster, claimed) {
            self.join_cluster(c, claimed, options.settings.drain_timeout)?;
        }
        let t = &mut self.threads;
        t.control = Some(
            control::spawn(self.daemon.clone())
                .map_err(|e| format!("control socket in {}: {e}", state_dir.display()))?,
        );
        t.scheduler = Some(scheduler::spawn(self.daemon.clone()).map_err(|e| e.to_string())?);
        if let (Some(m), Some(prepared)) = (&options.metrics, listener) {
            let api = crate::api::Api {
                daemon: self.daemon.clone(),
                auth: prepared.auth,
                metrics: gc_stats,
            };
            let scheme = if prepared.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let server = crate::api::serve(api, m.listen, prepared.tls)?;
            tracing::info!(bound = %server.bound,
                "GC page at {scheme}://{0}/ (API under /api/v1/, metrics at /metrics)", server.bound);
            t.metrics = Some(server);
        }
        if let Some((reload, caught)) = reload {
            // SIGHUP re-reads the configuration file; the settings' owner lays the API's
            // saved values and the flags over it again.
            let owner = self.daemon.settings_owner().clone();
            let reload =
                move || reload().and_then(|sources| owner.set_sources(sources).map(|_| ()));
            let stops = self.stops.0.clone();
            let terminate = move |sig| {
                let _ = stops.send(StopReason::Signal(sig));
            };
            t.signals = Some(
                signals::spawn(caught, self.daemon.clone(), reload, terminate)
                    .map_err(|e| format!("signal handler: {e}"))?,
            );
        }
        Ok(())
    }

    /// Cluster mode: starts the node's lease and member agent, and makes every run share
    /// its epoch through etcd.
    fn join_cluster(
        &mut self,
        cfg: &crate::cluster::ClusterConfig,
        claimed: crate::cluster::Claimed,
        drain_timeout: Duration,
    ) -> Result<(), String> {
        if let Err(e) = crate::cluster::history::write_note(self.daemon.state_dir(), cfg) {
            tracing::warn!(error = %e, "cannot note the cluster in the state directory; `regfs jobs` shows this node's runs only");
        }
        let daemon = Arc::downgrade(&self.daemon);
        let access = self.daemon.retention().access().clone();
        let node = crate::cluster::Node::start(crate::cluster::NodeStart {
            claimed,
            gate: WriteGate::clone(self.daemon.gate()),
            drain_timeout,
            online: self.daemon.online().clone(),
            stop_run: Box::new(move || {
                if let Some(d) = daemon.upgrade() {
                    d.stop();
                }
            }),
            before_ack: Box::new(move || {
                if let Err(e) = access.flush_and_publish() {
                    tracing::warn!(error = %e, "cannot publish this node's access times before acknowledging the epoch");
                }
            }),
        })?;
        // Every node's pulls count: published after each batch, merged by the collector.
        self.daemon
            .retention()
            .access()
            .share_with(node.access_share()?);
        self.daemon.set_coordinator(node.coordinator());
        self.threads.cluster = Some(node);
        Ok(())
    }

    pub fn daemon(&self) -> &Arc<Daemon> {
        &self.daemon
    }

    pub fn stopper(&self) -> Stopper {
        Stopper(self.stops.0.clone())
    }

    /// Blocks until something asks the daemon to stop: a signal, an unmount from
    /// outside or a [`Stopper`].
    pub fn wait(&self) -> StopReason {
        let reason = self.stops.1.recv().unwrap_or(StopReason::Requested);
        if reason == StopReason::Unmounted {
            tracing::info!(mountpoint = %self.mountpoint.display(), "unmounted from outside; stopping");
        }
        reason
    }

    /// Stops everything in order and joins the threads. Err if the FUSE session ended
    /// with an error.
    pub fn shutdown(mut self) -> Result<(), String> {
        self.stop_all();
        std::mem::replace(&mut self.result, Ok(()))
    }

    fn stage(&self, stage: Stage) {
        tracing::debug!(?stage, "shutdown");
        if let Some(observe) = &self.on_stage {
            observe(stage);
        }
    }

    /// The shutdown; does nothing the second time.
    fn stop_all(&mut self) {
        let Some(mut serving) = self.threads.serving.take() else {
            return;
        };
        notify::stopping();
        self.daemon.shutdown();
        self.stage(Stage::RunStopped);
        // The run reopens the store whatever happens to it; this makes sure of it. Not
        // in a cluster: another node's epoch may be on, and the member agent knows.
        if self.threads.cluster.is_none() {
            self.daemon.gate().reopen_for_writes();
        }
        self.stage(Stage::GateReopened);
        if let Some(control) = self.threads.control.take() {
            control.close();
        }
        self.stage(Stage::ControlClosed);
        if let Some(scheduler) = self.threads.scheduler.take()
            && scheduler.join().is_err()
        {
            tracing::error!("the scheduler thread panicked");
        }
        if let Some(signals) = self.threads.signals.take() {
            signals.stop();
        }
        if let Some(metrics) = self.threads.metrics.take() {
            metrics.stop();
        }
        self.stage(Stage::ThreadsStopped);
        if let Err(e) = serving.unmount() {
            tracing::error!(error = %e, "unmount failed");
        }
        self.stage(Stage::Unmounted);
        if let Some(mut node) = self.threads.cluster.take() {
            node.stop();
        }
        self.result = serving
            .join(self.grace)
            .map_err(|e| format!("serving {}: {e}", self.mountpoint.display()));
        self.stage(Stage::Joined);
        if let Some(mut journal) = self.threads.journal.take() {
            journal.stop();
        }
        tracing::info!(mountpoint = %self.mountpoint.display(), "unmounted");
    }
}

impl Drop for Runtime {
    /// A runtime dropped without [`Runtime::shutdown`] (a failing test) still leaves no
    /// mount and no thread behind.
    fn drop(&mut self) {
        self.stop_all();
    }
}

//! An online GC run driven step by step over the filesystem core (no mount): the same
//! barrier, pause, doom and claims the daemon uses (`regfs::daemon::online_run`), with
//! hooks where a test makes the registry act: before the pause (writes recorded by the
//! barrier), before the sweep claims a unit (it may be taken back), right after it
//! claimed one (writes naming it are refused) and after it released one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regfs::daemon::online_run::{OnlineClaims, pause_and_install, start_recording};
use regfs::fs::StorageFs;
use regfs::gc::{self, Action, Cancel, Claims, Outcome, Report, Unattended};
use regfs::layout::Store;
use regfs::policy::gate::WriteGate;
use regfs::policy::online::OnlineCollection;
use regfs::runtime::compose::{OpenedStore, SweepDeleter};

use super::registry_sim::RegistrySim;

/// A store with the filesystem core over it.
pub struct Core {
    pub root: PathBuf,
    pub fs: Arc<StorageFs>,
    pub gate: Arc<WriteGate>,
    online: OnlineCollection,
    /// What the sweep deletes through, as the daemon's.
    pub deleter: SweepDeleter,
    pub store: Store,
    _dir: tempfile::TempDir,
}

impl Core {
    pub fn new() -> Core {
        Core::in_dir(super::tempdir())
    }

    /// A core over a store in memory (tmpfs, where fsync costs nothing), for tests that
    /// build thousands of stores; on disk where there is no `/dev/shm`.
    pub fn in_memory() -> Core {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return Core::new();
        }
        let dir = tempfile::Builder::new()
            .prefix(super::PREFIX)
            .tempdir_in(shm)
            .expect("temporary directory in /dev/shm");
        Core::in_dir(dir)
    }

    fn in_dir(dir: tempfile::TempDir) -> Core {
        let root = dir.path().to_path_buf();
        let opened = OpenedStore::open(&root).unwrap();
        Core {
            store: Store::open(&root).unwrap(),
            root,
            deleter: opened.deleter(),
            fs: opened.fs,
            gate: opened.policies.gate,
            online: opened.policies.online,
            _dir: dir,
        }
    }

    pub fn registry(&self) -> RegistrySim<'_> {
        RegistrySim::new(&self.fs)
    }

    pub fn online(&self) -> &OnlineCollection {
        &self.online
    }

    pub fn has_data(&self, rel: &str) -> bool {
        self.root.join(rel).is_file()
    }
}

impl Default for Core {
    fn default() -> Self {
        Self::new()
    }
}

/// A hook at a unit: its index in the plan and its action.
pub type UnitHook<'h> = Box<dyn Fn(usize, &Action) + Sync + 'h>;
/// A hook after a claim: also whether the sweep got the unit.
pub type ClaimHook<'h> = Box<dyn Fn(usize, &Action, bool) + Sync + 'h>;

/// Where the registry acts during a run.
#[derive(Default)]
pub struct Hooks<'h> {
    pub before_pause: Option<Box<dyn Fn() + Sync + 'h>>,
    pub before_claim: Option<UnitHook<'h>>,
    pub after_claim: Option<ClaimHook<'h>>,
    pub after_release: Option<UnitHook<'h>>,
    /// The run is stopped once this many units were claimed.
    pub stop_after: Option<usize>,
}

struct HookedClaims<'a, 'h> {
    inner: OnlineClaims<'a>,
    actions: Vec<Action>,
    hooks: &'a Hooks<'h>,
    claimed: std::sync::atomic::AtomicUsize,
}

impl Claims for HookedClaims<'_, '_> {
    fn claim(&self, i: usize) -> bool {
        if let Some(h) = &self.hooks.before_claim {
            h(i, &self.actions[i]);
        }
        let ok = self.inner.claim(i);
        if ok {
            self.claimed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        if let Some(h) = &self.hooks.after_claim {
            h(i, &self.actions[i], ok);
        }
        ok
    }

    fn release(&self, i: usize) {
        self.inner.release(i);
        if let Some(h) = &self.hooks.after_release {
            h(i, &self.actions[i]);
        }
    }
}

/// Stops the sweep once `limit` units were claimed.
struct StopAfter<'a, 'h> {
    claims: &'a HookedClaims<'a, 'h>,
    limit: Option<usize>,
}

impl Cancel for StopAfter<'_, '_> {
    fn interrupted(&self) -> Option<Outcome> {
        let n = self
            .claims
            .claimed
            .load(std::sync::atomic::Ordering::SeqCst);
        self.limit.filter(|l| n >= *l).map(|_| Outcome::Stopped)
    }
}

/// What a run did, and what the filesystem said of it.
#[derive(Debug)]
pub struct OnlineOutcome {
    pub report: Report,
    /// Paths written while the run marked.
    pub recorded: u64,
    pub resurrected: u64,
    pub refused: u64,
    /// Blob directories still hidden when the run ended (must be none).
    pub hidden_after: Vec<String>,
}

/// The collector's pool, one thread: units are swept in the plan's order.
fn one_collector_thread() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: set once, before the pool reads it, by the first run in this process;
    // nothing else in the tests reads or writes this variable.
    ONCE.call_once(|| unsafe { std::env::set_var("REGFS_GC_THREADS", "1") });
}

/// One online run over `core` with `opts`, the registry acting through `hooks`. The
/// sweep runs its units one at a time, in the plan's order (deterministic).
pub fn run(core: &Core, opts: &gc::Options, hooks: &Hooks) -> OnlineOutcome {
    try_run(core, opts, hooks).unwrap_or_else(|e| panic!("{e}"))
}

/// As [`run`]; a failed mark is an error.
pub fn try_run(core: &Core, opts: &gc::Options, hooks: &Hooks) -> Result<OnlineOutcome, String> {
    one_collector_thread();
    let online = core.online();
    let recording = start_recording(&core.gate, online, Duration::from_secs(10)).unwrap();
    let marked = gc::mark(&core.store, opts, &Unattended, &Unattended);
    let planned = match marked {
        Ok(gc::Marked::Planned(p)) => p,
        Ok(gc::Marked::Interrupted(_)) => panic!("an unattended mark was interrupted"),
        // The recording drops: the run ends.
        Err(e) => return Err(format!("online mark failed: {e}")),
    };
    // Writes after the mark, before the pause: the barrier recorded them.
    if let Some(h) = &hooks.before_pause {
        h();
    }
    let (sweeping, pause) = pause_and_install(
        &core.gate,
        recording,
        &planned.plan,
        Duration::from_secs(10),
    )
    .expect("nothing in flight to wait for");
    let claims = HookedClaims {
        inner: OnlineClaims(&sweeping),
        actions: planned.plan.actions.clone(),
        hooks,
        claimed: Default::default(),
    };
    let stop = StopAfter {
        claims: &claims,
        limit: hooks.stop_after,
    };
    let report = gc::sweep_claimed(planned, &core.deleter, &claims, &stop, &Unattended).unwrap();
    drop(claims);
    let writes = sweeping.finish();
    Ok(OnlineOutcome {
        report,
        recorded: pause.recorded,
        resurrected: writes.resurrected,
        refused: writes.refused,
        hidden_after: online.hidden(),
    })
}

/// Link files in the backing store that are not a well-formed link to a blob with data.
pub fn broken_links(root: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let repos = root.join("docker/registry/v2/repositories");
    let mut stack = vec![repos];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "link") {
                let content = std::fs::read(&p).unwrap_or_default();
                let target = std::str::from_utf8(&content)
                    .ok()
                    .and_then(|s| s.strip_prefix("sha256:"))
                    .and_then(|h| regfs::layout::Digest::from_hex(h).ok());
                match target {
                    Some(d) if root.join(super::registry_sim::blob_data(&d)).is_file() => {}
                    _ => bad.push(format!(
                        "{} -> {:?}",
                        p.strip_prefix(root).unwrap().display(),
                        String::from_utf8_lossy(&content)
                    )),
                }
            }
        }
    }
    bad.sort();
    bad
}

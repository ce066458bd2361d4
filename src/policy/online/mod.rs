//! Online collection: the policy layer that lets a run mark and sweep while the registry
//! keeps writing.
//!
//! - While the run marks, every write is recorded (the write barrier): its path, and what
//!   it makes referenced or present: a revision, `_layers` or tag index link (the digest
//!   is in the path), a tag's current link (in its bytes), a blob directory made or
//!   renamed into `blobs/`. The run plans from its mark as if nothing had been written,
//!   then, while writes are paused, takes back every unit the recorded writes reach
//!   (exactly as a write during the sweep would) and starts checking writes.
//! - While it sweeps, the same writes are checked against what the run is deleting
//!   ([`Doomed`]): a doomed unit they name is taken back (resurrected); one being deleted
//!   refuses them (EIO: the registry answers 500 and the client retries). A manifest link
//!   also takes back the manifest's references, recursively for indexes. Doomed blob
//!   directories are hidden from lookups, and a registry reading a `_layers` or revision
//!   link (a client asking about that blob or manifest) takes it back too.
//!
//! Recording and checking happen under one lock with the phase, so every write is either
//! recorded before the run takes the barrier or checked against the doomed set after.
//! Everything lives in memory: a daemon that dies mid-run starts with nothing hidden.

mod doomed;
mod keep;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sync::{Mutex, MutexGuard};

pub use doomed::{Claim, ClaimedBatch, Doomed, DoomedUnit, Referrer};
pub use keep::{DoomedCell, KeepAnswer, UnitKeeper, check_write};

use super::gate::Paused;
use super::meaning::{NamedManifest, WriteMeaning, read_manifest};
use super::{
    Change, ChangeLease, HeldChange, HeldWriter, Name, StorePolicy, Write, WriteLease, WriteRole,
    WriteUndo, Writer, WriterLease,
};
use crate::error::{FsError, FsResult};
use crate::layout::paths::{self, LinkRole};
use crate::layout::{Digest, PathKind, RepoName, Store};

/// What a write made referenced or present while a run marked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Touched {
    /// A link naming manifest `digest` in `repo` (revision, tag index or tag current).
    Manifest { repo: RepoName, digest: Digest },
    /// A `_layers` link or a blob directory.
    Blob(Digest),
}

/// What writes did while the run marked.
#[derive(Debug, Default)]
struct Recorded {
    paths: HashSet<String>,
    touched: HashSet<Touched>,
}

/// What one node's writes did while a cluster's run marked, as the node hands it to the
/// collector (phase 3 across the cluster, `ARCHITECTURE.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriteRecord {
    /// Every path written.
    pub paths: Vec<String>,
    /// Manifests links named: (repository, 64 hex digits).
    pub manifests: Vec<(String, String)>,
    /// Blobs made present or linked: 64 hex digits.
    pub blobs: Vec<String>,
}

impl WriteRecord {
    fn of(rec: Recorded) -> WriteRecord {
        let mut out = WriteRecord {
            paths: rec.paths.into_iter().collect(),
            ..Default::default()
        };
        for t in rec.touched {
            match t {
                Touched::Manifest { repo, digest } => {
                    out.manifests.push((repo.as_str().to_owned(), digest.hex()))
                }
                Touched::Blob(d) => out.blobs.push(d.hex()),
            }
        }
        out
    }

    /// Err names what cannot be read: the collector then deletes nothing.
    fn recorded(&self) -> Result<Recorded, String> {
        let digest = |hex: &str| {
            Digest::from_hex(hex).map_err(|e| format!("a handed-over record names {hex:?}: {e}"))
        };
        let mut rec = Recorded {
            paths: self.paths.iter().cloned().collect(),
            ..Default::default()
        };
        for (repo, hex) in &self.manifests {
            let repo = RepoName::new(repo)
                .map_err(|e| format!("a handed-over record names repository {repo:?}: {e}"))?;
            rec.touched.insert(Touched::Manifest {
                repo,
                digest: digest(hex)?,
            });
        }
        for hex in &self.blobs {
            rec.touched.insert(Touched::Blob(digest(hex)?));
        }
        Ok(rec)
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.manifests.is_empty() && self.blobs.is_empty()
    }
}

#[derive(Debug, Default)]
enum Phase {
    #[default]
    Off,
    Recording(Recorded),
    Sweeping(Doomed),
}

#[derive(Debug)]
struct BarrierInner {
    /// Anything but `Off`: lets every request skip the lock between runs.
    active: AtomicBool,
    phase: Mutex<Phase>,
    store: Store,
    refused: AtomicU64,
    /// The number of the latest run to start (changed only under the phase lock): a run's
    /// handles end the phase only while it is still theirs, so a run that ends never ends
    /// the one started after it (runs back to back; a cluster node collecting right after
    /// its part in another node's run ended).
    run: AtomicU64,
    /// In a cluster's run, while sweeping: how a take-back is made known to every node.
    /// Taken alone, never with `phase`.
    keeper: Mutex<Option<Arc<dyn UnitKeeper>>>,
}

impl BarrierInner {
    fn lock(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn keeper(&self) -> Option<Arc<dyn UnitKeeper>> {
        self.keeper
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_keeper(&self, k: Option<Arc<dyn UnitKeeper>>) {
        *self.keeper.lock().unwrap_or_else(|e| e.into_inner()) = k;
    }
}

/// The layer's handle for runs (clones share it). A run goes through the phases as
/// values: [`OnlineCollection::start_recording`] gives a [`Recording`], whose
/// [`install`](Recording::install) (only with writes paused: it takes the gate's
/// [`Paused`] guard) turns it into a [`Sweeping`]; dropping either ends the run. A call
/// out of its phase does not compile, and a second run while one holds the barrier is
/// refused.
#[derive(Debug, Clone)]
pub struct OnlineCollection {
    shared: Arc<BarrierInner>,
}

/// Another run holds the barrier (a run is started while one is in progress).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an online run is already {0}: one run at a time holds the write barrier")]
pub struct AlreadyRunning(&'static str);

impl OnlineCollection {
    /// Phase 1 begins: from now on every write is recorded.
    ///
    /// Invariant: a write admitted after this returns is recorded (its path and what it
    /// names) before it runs, because recording and checking happen under the phase lock
    /// and the write asks the barrier before it touches the store. A write admitted just
    /// before is not: the caller must wait for writes in flight before the mark reads
    /// the store (`daemon::online_run::start_recording` pauses for them).
    pub fn start_recording(&self) -> Result<Recording, AlreadyRunning> {
        let mut phase = self.shared.lock();
        match &*phase {
            Phase::Off => {}
            Phase::Recording(_) => return Err(AlreadyRunning("recording")),
            Phase::Sweeping(_) => return Err(AlreadyRunning("sweeping")),
        }
        *phase = Phase::Recording(Recorded::default());
        let run = self.shared.run.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.refused.store(0, Ordering::Relaxed);
        self.shared.active.store(true, Ordering::Release);
        Ok(Recording {
            shared: Some(self.shared.clone()),
            run,
        })
    }

    /// Blob directories hidden now (none outside a sweep).
    pub fn hidden(&self) -> Vec<String> {
        match &*self.shared.lock() {
            Phase::Sweeping(d) => d.hidden().map(str::to_owned).collect(),
            _ => Vec::new(),
        }
    }

    /// Whether a run holds the barrier (recording or sweeping).
    pub fn is_active(&self) -> bool {
        self.shared.active.load(Ordering::Acquire)
    }
}

/// Ends run `run` (back to `Off`: nothing recorded, hidden or guarded), unless another
/// run holds the phase by now.
fn end(shared: &BarrierInner, run: u64) {
    if shared.run.load(Ordering::SeqCst) != run {
        return;
    }
    // The keeper first: while the phase is not `Off` no other run can start and set its
    // own.
    shared.set_keeper(None);
    let mut phase = shared.lock();
    if shared.run.load(Ordering::SeqCst) == run {
        *phase = Phase::Off;
        shared.active.store(false, Ordering::Release);
    }
}

/// Phases 1 and 2 of an online run: the mark reads the store while writes go on and are
/// recorded; the plan is made as if nothing had been written. Dropped: the run ends.
#[derive(Debug)]
#[must_use = "the run ends when its phase is dropped"]
pub struct Recording {
    /// `None` once [`install`](Self::install) moved the run on.
    shared: Option<Arc<BarrierInner>>,
    /// Which run this is (`BarrierInner::run`).
    run: u64,
}

impl Recording {
    fn shared(&self) -> &BarrierInner {
        self.shared.as_ref().expect("a recording run")
    }

    /// Takes back every unit of `doomed` that the writes recorded so far reach, and
    /// forgets them; recording goes on. Returns how many paths they had written. Done
    /// once before the pause, so the pause only has the last moments' writes to apply.
    pub fn absorb(&mut self, doomed: &mut Doomed) -> u64 {
        let shared = self.shared();
        let rec = match &mut *shared.lock() {
            Phase::Recording(rec) => std::mem::take(rec),
            _ => return 0,
        };
        shared.apply(&rec, doomed)
    }

    /// What keeping manifest `digest` of `repo` keeps: its blob, its revision, and what
    /// it references (recursively for indexes). Reads the store.
    pub fn manifest_reach(&self, repo: &RepoName, digest: Digest) -> Vec<String> {
        self.shared().guarded_paths(
            &Touched::Manifest {
                repo: repo.clone(),
                digest,
            },
            None,
        )
    }

    /// Phase 3, with writes paused (`paused` is the gate's guard): every unit of `doomed`
    /// that a write recorded (and not yet absorbed) reaches is taken back, and from now on
    /// writes are checked against the rest. Returns the sweeping run and how many paths
    /// those writes had written.
    ///
    /// Invariant: every write admitted before this returns was recorded and is applied
    /// here (writes in flight finished before the pause, new ones wait for it to end);
    /// every write after it is checked against the doomed set under the phase lock.
    pub fn install(self, doomed: Doomed, paused: &Paused<'_>) -> (Sweeping, u64) {
        self.install_with(doomed, paused, None)
    }

    /// What this node's writes recorded so far, taken away to be handed over to a
    /// cluster's collector (phase 3 on a member, with its writes paused): they are then
    /// the collector's to fold in, not this node's to apply.
    pub fn take_record(&mut self) -> WriteRecord {
        match &mut *self.shared().lock() {
            Phase::Recording(rec) => WriteRecord::of(std::mem::take(rec)),
            _ => WriteRecord::default(),
        }
    }

    /// The collector folds another node's handed-over record in, as
    /// [`absorb`](Self::absorb) does its own; how many paths it wrote. Err: the record
    /// cannot be read (the run must delete nothing).
    pub fn absorb_record(
        &mut self,
        record: &WriteRecord,
        doomed: &mut Doomed,
    ) -> Result<u64, String> {
        let rec = record.recorded()?;
        Ok(self.shared().apply(&rec, doomed))
    }

    /// As [`install`](Self::install), in a cluster's run on its collector: from now on a
    /// write taking a unit back keeps it through `keeper` first.
    pub fn install_with(
        mut self,
        mut doomed: Doomed,
        _paused: &Paused<'_>,
        keeper: Option<Arc<dyn UnitKeeper>>,
    ) -> (Sweeping, u64) {
        let shared = self.shared.take().expect("a recording run");
        shared.set_keeper(keeper);
        let mut recorded = 0;
        loop {
            let mut phase = shared.lock();
            let rec = match &mut *phase {
                Phase::Recording(rec) if rec.paths.is_empty() && rec.touched.is_empty() => {
                    *phase = Phase::Sweeping(doomed);
                    drop(phase);
                    return (
                        Sweeping {
                            shared,
                            run: self.run,
                        },
                        recorded,
                    );
                }
                Phase::Recording(rec) => std::mem::take(rec),
                Phase::Off | Phase::Sweeping(_) => {
                    unreachable!("a recording run's phase changed behind it")
                }
            };
            // Manifests are read without the lock; a writer admitted just before the
            // pause may record more meanwhile, hence the loop.
            drop(phase);
            recorded += shared.apply(&rec, &mut doomed);
        }
    }
}

impl Recording {
    /// Phase 3 on a cluster's member, its writes paused since it took its record: the
    /// collector's doomed set (`doomed`) is installed as it is, every take-back from now
    /// on kept through `keeper` first. What was recorded since the record was taken can
    /// only be reads (writes were paused): they are dropped. Err (a write was recorded
    /// after all): nothing installed, the run ends here.
    pub fn install_member(
        mut self,
        doomed: Doomed,
        _paused: &Paused<'_>,
        keeper: Arc<dyn UnitKeeper>,
    ) -> Result<Sweeping, String> {
        let shared = self.shared.take().expect("a recording run");
        shared.set_keeper(Some(keeper));
        let mut phase = shared.lock();
        let written = match &*phase {
            Phase::Recording(rec) => rec.paths.len(),
            _ => 0,
        };
        if written > 0 {
            drop(phase);
            end(&shared, self.run);
            return Err(format!(
                "{written} writes were recorded after this node handed its record over"
            ));
        }
        *phase = Phase::Sweeping(doomed);
        drop(phase);
        Ok(Sweeping {
            shared,
            run: self.run,
        })
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            end(shared, self.run);
        }
    }
}

/// Phase 4 of an online run: the sweep deletes unit by unit while writes go on, each
/// checked against what it deletes. Dropped: the run ends.
///
/// Invariant: a unit is either taken back or deleted, never both: the sweep claims a
/// unit under the phase lock only while it is still doomed, and a write naming a claimed
/// unit is refused (EIO) until the sweep releases it, after which a write naming what it
/// deleted is refused until it makes the unit anew.
#[derive(Debug)]
#[must_use = "the run ends when its phase is dropped"]
pub struct Sweeping {
    shared: Arc<BarrierInner>,
    /// Which run this is (`BarrierInner::run`).
    run: u64,
}

impl Sweeping {
    /// The sweep takes unit `i` (the plan's index); false if a write took it back.
    pub fn claim(&self, i: usize) -> bool {
        match &mut *self.shared.lock() {
            Phase::Sweeping(d) => d.claim(i),
            _ => false,
        }
    }

    /// The collector of a cluster's run takes unit `i`, which its batch's claim in etcd
    /// lists (see `Doomed::claim_claimed`).
    pub fn claim_claimed(&self, i: usize) -> bool {
        match &mut *self.shared.lock() {
            Phase::Sweeping(d) => d.claim_claimed(i),
            _ => false,
        }
    }

    /// Whether unit `i` is still doomed here.
    pub fn is_doomed(&self, i: usize) -> bool {
        match &*self.shared.lock() {
            Phase::Sweeping(d) => d.is_doomed(i),
            _ => false,
        }
    }

    /// The doomed set as the collector hands it to the members (see
    /// `Doomed::published`).
    pub fn published(&self) -> (Vec<DoomedUnit>, Vec<usize>) {
        match &*self.shared.lock() {
            Phase::Sweeping(d) => d.published(),
            _ => (Vec::new(), Vec::new()),
        }
    }

    /// The units taken back so far, by index (see `Doomed::taken_back`).
    pub fn taken_back(&self) -> Vec<usize> {
        match &*self.shared.lock() {
            Phase::Sweeping(d) => d.taken_back(),
            _ => Vec::new(),
        }
    }

    /// The sweep is done with unit `i`.
    pub fn release(&self, i: usize) {
        if let Phase::Sweeping(d) = &mut *self.shared.lock() {
            d.release(i);
        }
    }

    /// Blob directories hidden now (for the kernel's caches to be told).
    pub fn hidden(&self) -> Vec<String> {
        match &*self.shared.lock() {
            Phase::Sweeping(d) => d.hidden().map(str::to_owned).collect(),
            _ => Vec::new(),
        }
    }

    /// Units taken back by a write during this run's sweep.
    pub fn resurrected(&self) -> u64 {
        match &*self.shared.lock() {
            Phase::Sweeping(d) => d.resurrected(),
            _ => 0,
        }
    }

    /// Writes refused because they named what the sweep was deleting.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Ends the run (as dropping it does) and says what writes did during the sweep,
    /// counted to the end: a write naming a unit this run deleted is refused until the
    /// run ends, after the last unit, and is counted here too.
    pub fn finish(mut self) -> SweepWrites {
        self.shared.set_keeper(None);
        let mut phase = self.shared.lock();
        let resurrected = match &*phase {
            Phase::Sweeping(d) => d.resurrected(),
            _ => 0,
        };
        // Refusals are counted under the phase lock: none comes after this.
        let refused = self.shared.refused.load(Ordering::Relaxed);
        *phase = Phase::Off;
        self.shared.active.store(false, Ordering::Release);
        drop(phase);
        // Ended here: dropping it must not end a run started from now on.
        self.run = 0;
        SweepWrites {
            resurrected,
            refused,
        }
    }
}

/// What writes did to a sweep, from [`Sweeping::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepWrites {
    /// Units a write (or a read of their link) took back.
    pub resurrected: u64,
    /// Writes refused because they named what the sweep was deleting or had deleted.
    pub refused: u64,
}

impl Drop for Sweeping {
    fn drop(&mut self) {
        end(&self.shared, self.run);
    }
}

/// The layer, over the policy `P` (asked first).
#[derive(Debug)]
pub struct OnlineBarrier<P> {
    shared: Arc<BarrierInner>,
    inner: P,
}

impl<P: StorePolicy> OnlineBarrier<P> {
    /// `store`: the backing store (manifests are read from it), opened before the mount.
    pub fn new(store: Store, inner: P) -> Self {
        OnlineBarrier {
            shared: Arc::new(BarrierInner {
                active: AtomicBool::new(false),
                phase: Mutex::new(Phase::Off),
                store,
                refused: AtomicU64::new(0),
                run: AtomicU64::new(0),
                keeper: Mutex::new(None),
            }),
            inner,
        }
    }

    pub fn collection(&self) -> OnlineCollection {
        OnlineCollection {
            shared: self.shared.clone(),
        }
    }
}

/// What a write touches: for a manifest's revision, index entry or link, that manifest in
/// its repository (for a tag's current link, the one its bytes or a rename's source
/// name); for a blob's directory, data or layer link, that blob.
fn touched_by(m: &WriteMeaning, store: &Store) -> Option<Touched> {
    match m.kind()? {
        PathKind::Revision { repo, digest }
        | PathKind::RevisionLink { repo, digest }
        | PathKind::TagIndexEntry { repo, digest, .. }
        | PathKind::TagIndexLink { repo, digest, .. } => Some(Touched::Manifest {
            repo: repo.clone(),
            digest: *digest,
        }),
        PathKind::LayerDir { digest, .. }
        | PathKind::LayerLink { digest, .. }
        | PathKind::BlobDir(digest)
        | PathKind::BlobData(digest) => Some(Touched::Blob(*digest)),
        PathKind::TagCurrentLink { repo, .. } => m.named(store).map(|digest| Touched::Manifest {
            repo: repo.clone(),
            digest,
        }),
        _ => None,
    }
}

/// Manifests are followed this deep (an index of indexes is already unusual).
const MAX_DEPTH: usize = 8;

impl BarrierInner {
    /// Takes back what `rec`'s writes reach; how many paths they wrote.
    fn apply(&self, rec: &Recorded, doomed: &mut Doomed) -> u64 {
        for p in &rec.paths {
            doomed.touch(p);
        }
        for t in &rec.touched {
            for p in self.guarded_paths(t, None) {
                doomed.touch(&p);
            }
        }
        rec.paths.len() as u64
    }

    /// The paths a write touching `t` reaches: the blob, and for a manifest its revision
    /// in the repository and everything it references there. `write`: the write's
    /// meaning, whose manifest (read once for every layer) is used when it is `t`'s.
    fn guarded_paths(&self, t: &Touched, write: Option<&WriteMeaning>) -> Vec<String> {
        let mut out = Vec::new();
        match t {
            Touched::Blob(d) => out.push(path_string(&paths::blob_dir(d))),
            Touched::Manifest { repo, digest } => {
                let known = write
                    .filter(|m| m.names_manifest() && m.named(&self.store) == Some(*digest))
                    .and_then(|m| m.manifest(&self.store));
                let mut seen = HashSet::new();
                self.manifest_paths(repo, *digest, known, 0, &mut seen, &mut out);
            }
        }
        out
    }

    fn manifest_paths(
        &self,
        repo: &RepoName,
        d: Digest,
        known: Option<Arc<NamedManifest>>,
        depth: usize,
        seen: &mut HashSet<Digest>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(d) {
            return;
        }
        out.push(path_string(&paths::blob_dir(&d)));
        out.push(path_string(&paths::revision_dir(repo, &d)));
        // What cannot be read or parsed names nothing more; the link check refuses a
        // manifest whose blob is gone.
        let Some(named) = known.or_else(|| read_manifest(&self.store, &d).map(Arc::new)) else {
            return;
        };
        let m = &named.manifest;
        for b in &m.blobs {
            out.push(path_string(&paths::blob_dir(b)));
            out.push(path_string(&paths::layer_link_dir_named(repo, &b.hex())));
        }
        if depth < MAX_DEPTH {
            for c in &m.children {
                self.manifest_paths(repo, *c, None, depth + 1, seen, out);
            }
        }
    }

    /// A write (its path, and what it names): recorded while marking, checked while
    /// sweeping.
    fn guard(&self, write: &WriteMeaning) -> FsResult<()> {
        if !self.active.load(Ordering::Acquire) {
            return Ok(());
        }
        self.guard_active(write)
    }

    /// As [`guard`](Self::guard) for a change known by its path alone (mkdir, setattr, a
    /// rename's source): its meaning is worked out only while a run is on, so between
    /// runs these requests cost one atomic load here.
    fn guard_path(&self, path: &str) -> FsResult<()> {
        if !self.active.load(Ordering::Acquire) {
            return Ok(());
        }
        self.guard_active(&WriteMeaning::of_path(path))
    }

    fn guard_active(&self, write: &WriteMeaning) -> FsResult<()> {
        let path = write.path();
        let touched: Vec<Touched> = touched_by(write, &self.store).into_iter().collect();
        if let Phase::Recording(rec) = &mut *self.lock() {
            rec.paths.insert(path.to_owned());
            rec.touched.extend(touched);
            return Ok(());
        }
        // Sweeping: manifests are read outside the lock.
        let named: Vec<String> = touched
            .iter()
            .flat_map(|t| self.guarded_paths(t, Some(write)))
            .collect();
        match self.sweep_take_back(path, &named, Some(&touched)) {
            Ok(()) => Ok(()),
            Err(unit) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path, deleting = %unit,
                    "write refused: it names what the online GC is deleting or deleted; the client retries");
                Err(FsError::BeingCollected {
                    path: path.to_owned(),
                    unit,
                })
            }
        }
    }

    /// A write at `own` naming `named` during a sweep: refused (Err: the path being
    /// deleted, or why the cluster could not be asked), or admitted taking back every
    /// doomed unit it reaches. In a cluster's run those units are first kept in etcd,
    /// holding no lock (`ARCHITECTURE.md`, the online run across the cluster); a write
    /// is admitted only once every unit it takes back here is kept on every node.
    /// `record`: what the write touches, recorded if the run is still recording (a
    /// read passes `None`: it records nothing here).
    fn sweep_take_back(
        &self,
        own: &str,
        named: &[String],
        record: Option<&[Touched]>,
    ) -> Result<(), String> {
        let keeper = self.keeper();
        let cell = PhaseCell {
            inner: self,
            own,
            record,
        };
        check_write(&cell, keeper.as_deref(), own, named)
    }

    /// A link opened for reading: someone asks for that blob or manifest in that
    /// repository (a HEAD before a client skips an upload, a pull). While recording it is
    /// recorded like a write (a client told "exists" during the mark must not find it
    /// gone when it pushes the manifest); while sweeping a doomed one is taken back (one
    /// being deleted is not).
    fn note_read(&self, path: &dyn Fn() -> String) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        let Some(t) = touched_by(&WriteMeaning::of_path(&path()), &self.store) else {
            return;
        };
        if let Phase::Recording(rec) = &mut *self.lock() {
            rec.touched.insert(t);
            return;
        }
        let guarded = self.guarded_paths(&t, None);
        // All or nothing, as for writes: a revision is never taken back while its
        // manifest's blob is being deleted or gone. A read refused is only not noted.
        let _ = self.sweep_take_back("", &guarded, None);
    }

    fn is_hidden(&self, name: &Name<'_>) -> bool {
        // Only blob directories are hidden, and their names are 64 hex digits.
        if !self.active.load(Ordering::Acquire) || name.name.len() != 64 {
            return false;
        }
        match &*self.lock() {
            Phase::Sweeping(d) => d.is_hidden(&name.path()),
            _ => false,
        }
    }
}

/// The barrier's phase as [`check_write`] sees it: the doomed set while sweeping; while
/// recording, the write is recorded (under the same taking of the lock) and passes.
struct PhaseCell<'a> {
    inner: &'a BarrierInner,
    own: &'a str,
    record: Option<&'a [Touched]>,
}

impl DoomedCell for PhaseCell<'_> {
    fn with_doomed<R>(&self, f: impl FnOnce(&mut Doomed) -> R) -> Option<R> {
        match &mut *self.inner.lock() {
            Phase::Sweeping(doomed) => Some(f(doomed)),
            Phase::Recording(rec) => {
                if let Some(touched) = self.record {
                    rec.paths.insert(self.own.to_owned());
                    rec.touched.extend(touched.iter().cloned());
                }
                None
            }
            Phase::Off => None,
        }
    }
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl<P: StorePolicy> StorePolicy for OnlineBarrier<P> {
    fn admit_change(&self, change: &Change<'_>) -> FsResult<ChangeLease> {
        let lease = self.inner.admit_change(change)?;
        match *change {
            Change::Create { meaning, .. } => self.shared.guard(meaning)?,
            Change::Mkdir { path } | Change::SetAttr { path } => self.shared.guard_path(path)?,
            Change::Rename { from, to } => {
                self.shared.guard_path(from)?;
                self.shared.guard(to)?;
            }
            // Removing makes nothing live.
            Change::Remove { .. } => {}
        }
        Ok(ChangeLease::held(GuardedChange {
            shared: self.shared.clone(),
            inner: lease,
        }))
    }

    fn admit_writer(&self, writer: Writer<'_>) -> FsResult<WriterLease> {
        let lease = self.inner.admit_writer(writer.clone())?;
        self.shared.guard(writer.meaning)?;
        Ok(wrap(&self.shared, &writer, lease))
    }

    fn is_visible(&self, name: &Name<'_>) -> bool {
        self.inner.is_visible(name) && !self.shared.is_hidden(name)
    }

    fn check_write_access(&self, path: &str) -> FsResult<()> {
        self.inner.check_write_access(path)
    }

    fn note_read(&self, read: super::LinkRead, path: &dyn Fn() -> String) {
        self.inner.note_read(read, path);
        self.shared.note_read(path);
    }
}

/// A writer of a tag's current link has each write at offset 0 guarded by the manifest
/// its bytes name; other writers need nothing more.
fn wrap(shared: &Arc<BarrierInner>, writer: &Writer<'_>, inner: WriterLease) -> WriterLease {
    if writer.role() != WriteRole::Link(LinkRole::TagCurrent) {
        return inner;
    }
    WriterLease::held(TagLinkWriter {
        shared: shared.clone(),
        meaning: writer.meaning.clone(),
        undo: writer.undo.clone(),
        inner,
    })
}

#[derive(Debug)]
struct GuardedChange {
    shared: Arc<BarrierInner>,
    inner: ChangeLease,
}

impl HeldChange for GuardedChange {
    fn admit_writer(&self, writer: Writer<'_>) -> WriterLease {
        let inner = self.inner.admit_writer(writer.clone());
        wrap(&self.shared, &writer, inner)
    }
}

#[derive(Debug)]
struct TagLinkWriter {
    shared: Arc<BarrierInner>,
    meaning: WriteMeaning,
    undo: Option<Arc<dyn WriteUndo>>,
    inner: WriterLease,
}

impl HeldWriter for TagLinkWriter {
    fn admit_write(&self, write: &Write<'_>) -> FsResult<WriteLease> {
        let lease = self.inner.admit_write(write)?;
        if let Write::Bytes { offset: 0, data } = write
            && let Err(refused) = self.shared.guard(&self.meaning.written(data))
        {
            // The registry truncated the link first: it gets its old bytes back.
            if let Some(u) = &self.undo {
                u.undo_refused_write();
            }
            return Err(refused);
        }
        Ok(lease)
    }
}

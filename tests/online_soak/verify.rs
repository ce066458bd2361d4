//! The wider soak's model of what the registry must serve, and its verifier.
//!
//! Every push the registry answered with success is recorded ([`PushRecord`]). The model
//! of a repository says what its tags name (and which push set each), which manifests
//! were deleted by digest (and when, in the soak's one sequence of events) and which
//! signatures were pushed for which subject. A push is still expected when its tag was
//! not moved or deleted since (a push by tag), or when its manifest has been reachable
//! from a tag (an index child, a signature of a reachable manifest) without a break
//! since it was pushed and was not deleted after it (a push by digest): a manifest that
//! was unreachable for a moment may have been collected, legitimately. Writes to one repository are serialized ([`RepoState::busy`])
//! so the model is exact; pulls, other repositories and the GC runs race them freely.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::store_check::repo_state;
use crate::workload::{Client, Library, shown};

/// A push the registry answered with success.
#[derive(Debug, Clone)]
pub struct PushRecord {
    /// Its place in the soak's sequence of events.
    pub seq: u64,
    pub repo: String,
    /// A tag, or the manifest's digest.
    pub reference: String,
    pub digest: String,
    /// The workload operation it was part of.
    pub op: &'static str,
    pub started: DateTime<Utc>,
    pub answered: DateTime<Utc>,
    /// Tries it took (1 when the first one succeeded).
    pub attempts: u32,
}

impl PushRecord {
    pub fn describe(&self) -> String {
        format!(
            "push #{} ({}) of {} as {}{}, started {}, answered {} after {} attempt(s)",
            self.seq,
            self.op,
            self.digest,
            self.repo,
            shown(&self.reference),
            self.started.format("%H:%M:%S%.3f"),
            self.answered.format("%H:%M:%S%.3f"),
            self.attempts
        )
    }
}

/// What the registry must serve in one repository.
#[derive(Debug, Default, Clone)]
pub struct RepoModel {
    /// tag -> (manifest digest, seq of the push that set it).
    pub tags: BTreeMap<String, (String, u64)>,
    /// digest -> seq of its last delete by digest.
    pub deleted: BTreeMap<String, u64>,
    /// signature digest -> its subject, for signatures pushed here.
    pub signatures: BTreeMap<String, String>,
    /// digest -> seq of the change that last made it unreachable (a run may then take
    /// it, even if a later change makes it reachable again).
    pub unreachable_since: BTreeMap<String, u64>,
}

impl RepoModel {
    /// The manifests the registry must serve: the tagged ones, the children of those, the
    /// signatures of any of them, recursively.
    pub fn reachable(&self, lib: &Library) -> BTreeSet<String> {
        let mut set = BTreeSet::new();
        let mut work: Vec<String> = self.tags.values().map(|(d, _)| d.clone()).collect();
        loop {
            while let Some(d) = work.pop() {
                if set.insert(d.clone())
                    && let Some(m) = lib.manifest(&d)
                {
                    work.extend(m.children.iter().cloned());
                }
            }
            work = self
                .signatures
                .iter()
                .filter(|(sig, subject)| set.contains(*subject) && !set.contains(*sig))
                .map(|(sig, _)| sig.clone())
                .collect();
            if work.is_empty() {
                return set;
            }
        }
    }

    /// Applies `f` (seq `seq` in the soak's events), noting what it made unreachable.
    pub fn change(&mut self, lib: &Library, seq: u64, f: impl FnOnce(&mut RepoModel)) {
        let before = self.reachable(lib);
        f(self);
        let after = self.reachable(lib);
        for d in before.difference(&after) {
            self.unreachable_since.insert(d.clone(), seq);
        }
    }

    /// Whether `rec` (a push to this repository) must still pull: by digest, reachable
    /// since it was pushed.
    pub fn expects(&self, rec: &PushRecord, lib: &Library) -> bool {
        if rec.reference.starts_with("sha256:") {
            self.deleted.get(&rec.digest).is_none_or(|&d| d < rec.seq)
                && self
                    .unreachable_since
                    .get(&rec.digest)
                    .is_none_or(|&d| d < rec.seq)
                && self.reachable(lib).contains(&rec.digest)
        } else {
            self.tags.get(&rec.reference).map(|(_, s)| *s) == Some(rec.seq)
        }
    }

    /// Every tag and the digest it names (images and indexes: children and signatures
    /// are pushed by digest).
    pub fn tagged(&self) -> Vec<(String, String)> {
        self.tags
            .iter()
            .map(|(t, (d, _))| (t.clone(), d.clone()))
            .collect()
    }
}

/// One repository of the soak.
pub struct RepoState {
    pub name: String,
    pub model: Mutex<RepoModel>,
    /// Held by the one client writing to this repository.
    pub busy: Mutex<()>,
    /// Incremented when a write to this repository starts and when it ends: odd while
    /// one is in flight. A pull that saw the same even value before and after raced no
    /// write of this repository.
    pub writes: AtomicU64,
    /// The tag being pushed now, for the pullers to chase.
    pub pushing: Mutex<Option<String>>,
}

/// A write in progress on a repository (its `busy` lock, its `writes` bumped twice).
pub struct Writing<'a> {
    repo: &'a RepoState,
    _busy: MutexGuard<'a, ()>,
}

impl RepoState {
    pub fn new(name: String) -> RepoState {
        RepoState {
            name,
            model: Mutex::default(),
            busy: Mutex::new(()),
            writes: AtomicU64::new(0),
            pushing: Mutex::new(None),
        }
    }

    pub fn write(&self) -> Writing<'_> {
        let busy = self.busy.lock().unwrap();
        self.writes.fetch_add(1, Ordering::SeqCst);
        Writing {
            repo: self,
            _busy: busy,
        }
    }

    pub fn model(&self) -> MutexGuard<'_, RepoModel> {
        self.model.lock().unwrap()
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        *self.repo.pushing.lock().unwrap() = None;
        self.repo.writes.fetch_add(1, Ordering::SeqCst);
    }
}

/// The model of every repository and every successful push.
pub struct Model {
    pub repos: Vec<RepoState>,
    lib: Arc<Library>,
    seq: AtomicU64,
    pushes: Mutex<Vec<PushRecord>>,
}

impl Model {
    pub fn new(names: impl IntoIterator<Item = String>, lib: Arc<Library>) -> Model {
        Model {
            repos: names.into_iter().map(RepoState::new).collect(),
            lib,
            seq: AtomicU64::new(1),
            pushes: Mutex::default(),
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst)
    }

    /// Records a successful push to `repo` and what it changed in the model.
    #[allow(clippy::too_many_arguments)]
    pub fn pushed(
        &self,
        repo: &RepoState,
        reference: &str,
        digest: &str,
        op: &'static str,
        started: DateTime<Utc>,
        attempts: u32,
        subject: Option<&str>,
    ) -> PushRecord {
        let rec = PushRecord {
            seq: self.next_seq(),
            repo: repo.name.clone(),
            reference: reference.to_string(),
            digest: digest.to_string(),
            op,
            started,
            answered: Utc::now(),
            attempts,
        };
        repo.model().change(&self.lib, rec.seq, |m| {
            if !reference.starts_with("sha256:") {
                m.tags
                    .insert(reference.to_string(), (digest.to_string(), rec.seq));
            }
            if let Some(s) = subject {
                m.signatures.insert(digest.to_string(), s.to_string());
            }
        });
        self.pushes.lock().unwrap().push(rec.clone());
        rec
    }

    /// A delete by digest the registry accepted: the tags naming it went with it.
    pub fn deleted(&self, repo: &RepoState, digest: &str) {
        let seq = self.next_seq();
        repo.model().change(&self.lib, seq, |m| {
            m.tags.retain(|_, (d, _)| d != digest);
            m.deleted.insert(digest.to_string(), seq);
        });
    }

    /// After a failed write: `tag` names `digest` now (or nothing), as the registry says.
    pub fn resynced(&self, repo: &RepoState, tag: &str, digest: Option<String>) {
        let seq = self.next_seq();
        repo.model().change(&self.lib, seq, |m| match digest {
            Some(d) => {
                m.tags.insert(tag.to_string(), (d, seq));
            }
            None => {
                m.tags.remove(tag);
            }
        });
    }

    pub fn pushes(&self) -> Vec<PushRecord> {
        self.pushes.lock().unwrap().clone()
    }

    pub fn repo(&self, name: &str) -> &RepoState {
        self.repos.iter().find(|r| r.name == name).unwrap()
    }
}

/// What the final verification found.
#[derive(Default)]
pub struct Verified {
    /// Pushes still expected that pulled whole, byte for byte.
    pub pushes: usize,
    /// Objects (manifests and blobs) those pulls compared.
    pub objects: usize,
    pub failures: Vec<String>,
}

/// After the clients stopped and a final run: every repository lists the tags the model
/// says, and every push the model still expects pulls whole. `diagnose` says what the
/// store, the runs and the logs hold about a failure.
pub fn verify_all(
    model: &Model,
    client: &Client,
    diagnose: &dyn Fn(&PushRecord) -> String,
) -> Verified {
    let mut v = Verified::default();
    for r in &model.repos {
        let want: Vec<String> = r.model().tags.keys().cloned().collect();
        match client.tags(&r.name) {
            Ok(listed) if listed == want => {}
            Ok(listed) => v.failures.push(format!(
                "{}: the registry lists tags {listed:?}, the model says {want:?}",
                r.name
            )),
            Err(e) => v.failures.push(format!("{}: {e}", r.name)),
        }
    }
    for rec in model.pushes() {
        if !model.repo(&rec.repo).model().expects(&rec, &client.lib) {
            continue;
        }
        match client.pull(&rec.repo, &rec.reference, Some(&rec.digest)) {
            Ok(p) => {
                v.pushes += 1;
                v.objects += p.objects;
            }
            Err(e) => v.failures.push(format!(
                "after the soak, {}: {e}\n{}",
                rec.describe(),
                diagnose(&rec)
            )),
        }
    }
    v
}

/// The runs whose time overlapped `[from, to]`, one line each, with the whole record of
/// those that removed a manifest; past the first few, only runs that removed one.
pub fn runs_between(jobs: &[Value], from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    const FIRST: usize = 4;
    const LATER: usize = 8;
    let time = |j: &Value, k: &str| j[k].as_str().and_then(|s| s.parse::<DateTime<Utc>>().ok());
    let mut out = String::new();
    let (mut n, mut later_shown, mut later) = (0, 0, 0);
    for j in jobs {
        let (Some(s), e) = (time(j, "started_at"), time(j, "ended_at")) else {
            continue;
        };
        if s > to || e.is_some_and(|e| e < from) {
            continue;
        }
        n += 1;
        let r = &j["report"];
        let removed = r["manifests_removed"].as_u64().unwrap_or(0) > 0;
        if n > FIRST {
            later += 1;
            if !removed || later_shown == LATER {
                continue;
            }
            later_shown += 1;
        }
        out += &format!(
            "  run {} {}..{}: manifests_removed {}, blobs_deleted {}, late_writes {}, \
             resurrected {}, refused_writes {}, pause {} s\n",
            j["id"],
            s.format("%H:%M:%S%.3f"),
            e.map(|e| e.format("%H:%M:%S%.3f").to_string())
                .unwrap_or_default(),
            r["manifests_removed"],
            r["blobs_deleted"],
            j["late_writes"],
            j["resurrected"],
            j["refused_writes"],
            j["pause_seconds"]
        );
        if removed && n <= FIRST {
            out += &format!("    its record: {j}\n");
        }
    }
    if later > later_shown {
        out += &format!(
            "  ({later} later runs, {later_shown} of those that removed a manifest shown)\n"
        );
    }
    if out.is_empty() {
        out = "  no run overlapped it\n".into();
    }
    out
}

/// The store's state for `repo` (and `digest`'s blob) and the registry's log lines
/// containing `needle`, its errors first.
pub fn store_and_log(
    store: &Path,
    registry_log: &Path,
    repo: &str,
    digest: &str,
    needle: &str,
) -> String {
    let log = std::fs::read_to_string(registry_log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("level=error"))
        .collect();
    let shown = if errors.is_empty() { &lines } else { &errors };
    let tail = &shown[shown.len().saturating_sub(6)..];
    format!(
        "  the store for {repo}:\n{}  the registry's log about {needle} (last {} of {} lines, \
         {} errors):\n    {}",
        repo_state(store, repo, digest),
        tail.len(),
        lines.len(),
        errors.len(),
        tail.join("\n    ")
    )
}

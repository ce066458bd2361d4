//! The wider soak (issue 18): clients that look like real ones against Debian's
//! docker-registry on a regfs mount with `--gc-mode online --gc-min-age 0s
//! --delete-untagged`, GC runs back to back (`regfs gc --wait`) all along.
//!
//! Clients ([`crate::workload`]): three HTTP pushers and one skopeo pusher, each a loop of
//! operations drawn from its own seeded generator — a push by tag (a new image, or one it
//! pushed before), a tag moved onto a manifest first pushed by digest a moment before, a
//! delete by digest and at once a push of the same image under the same tag, a copy to
//! another repository with cross-repository blob mounts (`?mount=&from=`), a signature
//! (an OCI manifest whose `subject` is a tagged image) pushed by digest, a multi-arch
//! index pushed with its children; every push that answers success is pulled right away
//! and every byte compared. Two pullers poll the tag being pushed at that moment (its
//! manifest, every 2 ms while the push lasts), then pull it whole; otherwise they pull any
//! tag. A push that fails is tried again as a client would (up to 3 more times).
//!
//! What fails a round:
//! - a pull right after a push answered success that is not whole and byte for byte;
//! - a LOST WRITE: a blob or child manifest the registry confirmed to a push (upload or
//!   mount 201, PUT 201) and called unknown later in the same try, with no run *started*
//!   between the start of the confirming request (the write is somewhere in it) and then (a run started in between may take it: min age 0s, `--delete-untagged`;
//!   counted). A HEAD's "exists" so contradicted is counted, not failed;
//! - after the clients stop and a final run ([`crate::verify`]): a push the registry
//!   answered with success that the model still expects and that does not pull whole,
//!   byte for byte; tags listed other than the model's; a link naming a missing blob, a
//!   damaged link; fewer than 3 runs, a run not done and online, nothing deleted.
//!
//! Printed and counted, not failed (liveness, not loss: the client sees these and
//! retries): a push still failing after its tries that runs started during each try do
//! not explain, and more 5xx answers to pushes than writes the runs and the link checks
//! refused.
//!
//! A failure names the push (tag, digest, when, which try), the runs around it with the
//! record of each that removed a manifest, the store's state for the repository (taken
//! at that moment for a lost write) and the registry's log lines naming the digest.
//!
//! Settings: `REGFS_SOAK_SECONDS` (default 40) per round, `REGFS_SOAK_ROUNDS` (default 1)
//! rounds per cache mode, each a fresh world, round r seeded `REGFS_SOAK_SEED + r`
//! (default seed 18, printed). The suite runs one round under each cache mode (`none`, as
//! the shipped drop-in sets it, and `redis`, a redis-server the test starts): 80 s of
//! soak, the two at once. The long setting: `REGFS_SOAK_SECONDS=150 REGFS_SOAK_ROUNDS=20 cargo test
//! --test online_soak wide_soak`. The choices of each client are fixed by the seed; what
//! they meet (the model's state, the runs' timing) is not.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;

use crate::api::{self, blobs_deleted, gc_wait};
use crate::cluster::setup_cluster;
use crate::ctx::{Ctx, Image, Mode};
use crate::soak::watchdog;
use crate::store_check;
use crate::support::text;
use crate::verify::{Model, PushRecord, RepoState, runs_between, store_and_log, verify_all};
use crate::workload::{Client, Fail, Library, MT_MANIFEST, Manifest, Rng, Seen};
use crate::world::{Cache, setup_custom};

const REPOS: usize = 4;
const TAGS: [&str; 3] = ["a", "b", "c"];
const FAMILIES: usize = 4;
const VARIANTS: usize = 3;
/// Tries of a push after its first.
const RETRIES: u32 = 3;
/// Failures of a kind printed as they happen (the counts say how many there were).
const PRINTED: u64 = 5;

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("{name}={s:?} is not a whole number")),
        Err(_) => default,
    }
}

/// What one round counted.
#[derive(Default)]
struct Counts {
    pushes_ok: AtomicU64,
    pushes_failed: AtomicU64,
    verified_at_once: AtomicU64,
    /// Pushes that needed more than one try, and the tries beyond the first.
    retried_pushes: AtomicU64,
    retries: AtomicU64,
    /// Answers of 500 and above to a push's requests.
    push_5xx: AtomicU64,
    skopeo_pushes: AtomicU64,
    pulls: AtomicU64,
    /// GETs of a tag's manifest while it was being pushed.
    polls: AtomicU64,
    /// 500s from a link read while the registry rewrote it (tolerated: a plain directory
    /// has that window too).
    mid_write_reads: AtomicU64,
    /// Pulls that raced a write of their repository and met a 404 (the tag moved and a
    /// run collected the old image): tolerated.
    pulls_raced: AtomicU64,
    deletes: AtomicU64,
    tag_moves: AtomicU64,
    copies: AtomicU64,
    mounted_blobs: AtomicU64,
    signatures: AtomicU64,
    indexes: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// One round: a world, its clients, its model.
struct Round {
    /// The nodes the clients talk to (one, or two cluster nodes over one store); each
    /// client thread talks to one of them ([`ON_NODE`]).
    nodes: Vec<Side>,
    model: Model,
    skopeo_images: Vec<Image>,
    counts: Counts,
    /// Why pushes were tried again: failure class -> how many.
    retry_causes: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<Vec<String>>,
    /// Every 5xx answer a push got, as the client saw it.
    answers_5xx: Mutex<Vec<String>>,
    suspects: Mutex<Vec<Suspect>>,
    /// Pushes given up after tries that each left a suspect: what failed, the suspects.
    gave_up: Mutex<Vec<GaveUp>>,
    jobs: Mutex<Vec<Value>>,
    stop: AtomicBool,
}

/// A push given up after its tries, each of which lost a blob or child it had just sent.
struct GaveUp {
    what: String,
    /// The suspect each try left, if it left one (a try may have had a write refused).
    suspects: Vec<Option<usize>>,
    started: chrono::DateTime<Utc>,
    ended: chrono::DateTime<Utc>,
}

/// A blob or manifest the registry confirmed to a push and then, in the same try,
/// called unknown. Legitimate only if a run started in between (min age 0s and
/// `--delete-untagged` make it garbage at once); otherwise the run in progress deleted
/// what a write had just made live again.
struct Suspect {
    op: &'static str,
    repo: String,
    seen: Seen,
    unknown_at: chrono::DateTime<Utc>,
    answer: String,
    /// The store and the registry's log about it at that moment.
    state: String,
}

/// One node as the clients see it: its daemon and registry, and a client of it.
struct Side {
    ctx: Arc<Ctx>,
    client: Client,
}

thread_local! {
    /// The node this thread's client talks to (an index into [`Round::nodes`]).
    static ON_NODE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// From now on this thread's client talks to node `i`.
fn talk_to(i: usize) {
    ON_NODE.with(|n| n.set(i));
}

/// A client's own state: its generator and the images it pushed.
struct Worker {
    rng: Rng,
    pool: Vec<Arc<Manifest>>,
}

impl Round {
    fn error(&self, e: String) {
        eprintln!("[wide] ERROR {e}");
        self.errors.lock().unwrap().push(e);
    }

    fn lib(&self) -> &Library {
        &self.nodes[0].client.lib
    }

    /// The node this thread talks to.
    fn ctx(&self) -> &Ctx {
        &self.nodes[ON_NODE.with(|n| n.get())].ctx
    }

    /// This thread's client (of the node it talks to).
    fn client(&self) -> &Client {
        &self.nodes[ON_NODE.with(|n| n.get())].client
    }

    /// The runs around a push, the store's state for its repository, the registry's log.
    fn diagnose(&self, rec: &PushRecord) -> String {
        let needle = match rec.op {
            "pull" => format!("/v2/{}/manifests/{}", rec.repo, rec.reference),
            _ => rec.digest.trim_start_matches("sha256:").to_string(),
        };
        self.diagnose_at(&rec.repo, &rec.digest, rec.started, &needle)
    }

    fn diagnose_at(
        &self,
        repo: &str,
        digest: &str,
        since: chrono::DateTime<Utc>,
        needle: &str,
    ) -> String {
        let jobs = self.jobs.lock().unwrap().clone();
        let current = self
            .ctx()
            .status()
            .map(|s| s["current_job"].to_string())
            .unwrap_or_else(|e| e);
        format!(
            "  runs from its start until now:\n{}  run in progress: {current}\n{}",
            runs_between(&jobs, since - chrono::Duration::seconds(1), Utc::now()),
            store_and_log(
                &self.ctx().store,
                &self.ctx().registry_log,
                repo,
                digest,
                needle
            )
        )
    }

    /// Runs `f` until it succeeds, at most 1 + RETRIES times: the result and the tries.
    fn retrying<T>(&self, mut f: impl FnMut() -> Result<T, Fail>) -> (Result<T, Fail>, u32) {
        let mut tries = 0;
        loop {
            tries += 1;
            match f() {
                Ok(t) => {
                    if tries > 1 {
                        add(&self.counts.retried_pushes, 1);
                    }
                    return (Ok(t), tries);
                }
                Err(e) => {
                    if e.status().is_some_and(|s| s >= 500) {
                        add(&self.counts.push_5xx, 1);
                        self.answers_5xx.lock().unwrap().push(e.to_string());
                    }
                    let n = {
                        let mut c = self.retry_causes.lock().unwrap();
                        let n = c.entry(e.class()).or_default();
                        *n += 1;
                        *n
                    };
                    if n <= PRINTED {
                        eprintln!("[wide] try {tries} failed: {e}");
                    }
                    if matches!(e, Fail::Corrupt { .. }) || tries > RETRIES {
                        return (Err(e), tries);
                    }
                    add(&self.counts.retries, 1);
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Pushes `m` as `reference` of `repo` (whose write the caller holds), trying again
    /// as a client does; the record of the push when it succeeded.
    fn push(
        &self,
        repo: &RepoState,
        reference: &str,
        m: &Manifest,
        from: Option<&str>,
        op: &'static str,
    ) -> Option<PushRecord> {
        let started = Utc::now();
        if !reference.starts_with("sha256:") {
            *repo.pushing.lock().unwrap() = Some(reference.to_string());
        }
        // Per failed try, the suspect it left (a blob or child confirmed, then unknown).
        let mut left: Vec<Option<usize>> = Vec::new();
        let (r, tries) = self.retrying(|| {
            let mut seen = Vec::new();
            let r = self
                .client()
                .push(&repo.name, reference, m, from, &mut seen);
            if r.is_err() {
                left.push(None);
            }
            if let Err(e) = &r
                && let Some(d) = e.unknown_digest()
                && let Some(s) = seen.iter().rev().find(|s| s.digest == d)
            {
                let mut suspects = self.suspects.lock().unwrap();
                *left.last_mut().unwrap() = Some(suspects.len());
                suspects.push(Suspect {
                    op,
                    repo: repo.name.clone(),
                    seen: s.clone(),
                    unknown_at: Utc::now(),
                    answer: e.to_string(),
                    state: store_and_log(
                        &self.ctx().store,
                        &self.ctx().registry_log,
                        &repo.name,
                        &d,
                        d.trim_start_matches("sha256:"),
                    ),
                });
            }
            r
        });
        match r {
            Ok(mounted) => {
                add(&self.counts.pushes_ok, 1);
                add(&self.counts.mounted_blobs, mounted as u64);
                Some(self.model.pushed(
                    repo,
                    reference,
                    &m.digest,
                    op,
                    started,
                    tries,
                    m.subject.as_deref(),
                ))
            }
            Err(e) => {
                add(&self.counts.pushes_failed, 1);
                let what = format!(
                    "{op}: the push of {} as {}{} failed after {tries} tries: {e}\n{}",
                    m.digest,
                    repo.name,
                    crate::workload::shown(reference),
                    {
                        let d = e.unknown_digest().unwrap_or(m.digest.clone());
                        self.diagnose_at(&repo.name, &d, started, d.trim_start_matches("sha256:"))
                    }
                );
                // Every try lost a blob or child it had just sent, or had a write refused:
                // judged with the runs' records at the end (a run started during each
                // try: min age 0s).
                eprintln!("[wide] gave up (judged at the end): {what}");
                self.gave_up.lock().unwrap().push(GaveUp {
                    what,
                    suspects: left,
                    started,
                    ended: Utc::now(),
                });
                self.resync(repo, reference);
                None
            }
        }
    }

    /// After a failed push by tag the tag may or may not have moved: the model follows
    /// what the registry serves.
    fn resync(&self, repo: &RepoState, reference: &str) {
        if reference.starts_with("sha256:") {
            return;
        }
        let now = self
            .ctx()
            .manifest_digest(&repo.name, reference)
            .ok()
            .filter(|d| self.lib().manifest(d).is_some());
        self.model.resynced(repo, reference, now);
    }

    /// The pull right after a push answered success, every byte compared.
    fn verify_now(&self, rec: Option<PushRecord>) {
        let Some(rec) = rec else { return };
        add(&self.counts.pulls, 1);
        match self
            .client()
            .pull(&rec.repo, &rec.reference, Some(&rec.digest))
        {
            Ok(_) => add(&self.counts.verified_at_once, 1),
            Err(e) => self.error(format!(
                "right after it answered success, {}: {e}\n{}",
                rec.describe(),
                self.diagnose(&rec)
            )),
        }
    }

    fn new_image(&self, w: &mut Worker, arch: &str) -> Arc<Manifest> {
        let (f, v) = (w.rng.below(FAMILIES), w.rng.below(VARIANTS));
        let m = self.lib().image(f, v, w.rng.next(), arch);
        if arch == "amd64" {
            w.pool.push(m.clone());
        }
        m
    }

    fn pick_repo(&self, w: &mut Worker) -> &RepoState {
        &self.model.repos[w.rng.below(REPOS)]
    }

    /// A push by tag: a new image, or one this client pushed before.
    fn op_push(&self, w: &mut Worker) {
        let m = if w.pool.is_empty() || w.rng.chance(50) {
            self.new_image(w, "amd64")
        } else {
            w.pool[w.rng.below(w.pool.len())].clone()
        };
        let repo = self.pick_repo(w);
        let tag = TAGS[w.rng.below(TAGS.len())];
        let _w = repo.write();
        self.verify_now(self.push(repo, tag, &m, None, "push by tag"));
    }

    /// A tag moved onto a manifest first pushed (by digest) a moment before.
    fn op_move(&self, w: &mut Worker) {
        let m = self.new_image(w, "amd64");
        let repo = self.pick_repo(w);
        let tag = TAGS[w.rng.below(TAGS.len())];
        let _w = repo.write();
        if self
            .push(repo, &m.digest, &m, None, "move: push by digest")
            .is_some()
        {
            add(&self.counts.tag_moves, 1);
            self.verify_now(self.push(repo, tag, &m, None, "move: tag onto it"));
        }
    }

    /// A delete by digest of a tagged image, and at once a push of it under its tag.
    fn op_delete_and_repush(&self, w: &mut Worker) {
        let repo = self.pick_repo(w);
        let _w = repo.write();
        let tagged = repo.model().tagged();
        if tagged.is_empty() {
            return;
        }
        let (tag, digest) = tagged[w.rng.below(tagged.len())].clone();
        let m = self
            .lib()
            .manifest(&digest)
            .expect("a tagged manifest is known");
        let started = Utc::now();
        let mut tries = 0;
        let (r, _) = self.retrying(|| {
            tries += 1;
            match self.client().delete(&repo.name, &digest) {
                // A try that failed may have deleted it.
                Err(e) if e.not_found() && tries > 1 => Ok(()),
                r => r,
            }
        });
        match r {
            Ok(()) => {
                add(&self.counts.deletes, 1);
                self.model.deleted(repo, &digest);
            }
            Err(e) => {
                let rec = PushRecord {
                    seq: 0,
                    repo: repo.name.clone(),
                    reference: tag.clone(),
                    digest: digest.clone(),
                    op: "delete by digest",
                    started,
                    answered: Utc::now(),
                    attempts: tries,
                };
                self.error(format!(
                    "DELETE of {}:{tag} ({digest}), tagged as far as the model knows: {e}\n{}",
                    repo.name,
                    self.diagnose(&rec)
                ));
                self.resync(repo, &tag);
                return;
            }
        }
        self.verify_now(self.push(repo, &tag, &m, None, "re-push after delete"));
    }

    /// A copy of a tagged image of another repository, its blobs mounted from there.
    fn op_copy(&self, w: &mut Worker) {
        let from = self.pick_repo(w);
        let to = self.pick_repo(w);
        if from.name == to.name {
            return;
        }
        let tagged = from.model().tagged();
        if tagged.is_empty() {
            return;
        }
        let (_, digest) = tagged[w.rng.below(tagged.len())].clone();
        let m = self
            .lib()
            .manifest(&digest)
            .expect("a tagged manifest is known");
        let tag = TAGS[w.rng.below(TAGS.len())];
        let _w = to.write();
        add(&self.counts.copies, 1);
        self.verify_now(self.push(to, tag, &m, Some(&from.name), "copy across repositories"));
    }

    /// A signature of a tagged image, pushed by digest.
    fn op_sign(&self, w: &mut Worker) {
        let repo = self.pick_repo(w);
        let _w = repo.write();
        let images: Vec<Arc<Manifest>> = repo
            .model()
            .tagged()
            .iter()
            .filter_map(|(_, d)| self.lib().manifest(d))
            .filter(|m| m.media_type == MT_MANIFEST && m.subject.is_none())
            .collect();
        if images.is_empty() {
            return;
        }
        let subject = &images[w.rng.below(images.len())];
        let sig = self.lib().signature(subject, w.rng.next());
        add(&self.counts.signatures, 1);
        self.verify_now(self.push(repo, &sig.digest, &sig, None, "signature by digest"));
    }

    /// A multi-arch index and its children, pushed by tag.
    fn op_index(&self, w: &mut Worker) {
        let children = [self.new_image(w, "amd64"), self.new_image(w, "arm64")];
        let index = self.lib().index(&children, w.rng.next());
        let repo = self.pick_repo(w);
        let tag = TAGS[w.rng.below(TAGS.len())];
        let _w = repo.write();
        add(&self.counts.indexes, 1);
        self.verify_now(self.push(repo, tag, &index, None, "index by tag"));
    }

    fn http_pusher(&self, seed: u64) {
        let mut w = Worker {
            rng: Rng(seed | 1),
            pool: Vec::new(),
        };
        while !self.stop.load(Ordering::Relaxed) {
            match w.rng.below(100) {
                0..30 => self.op_push(&mut w),
                30..45 => self.op_move(&mut w),
                45..60 => self.op_delete_and_repush(&mut w),
                60..75 => self.op_copy(&mut w),
                75..88 => self.op_sign(&mut w),
                _ => self.op_index(&mut w),
            }
        }
    }

    /// skopeo pushing the families of scripts/soak-images.py, run again on failure.
    fn skopeo_pusher(&self, seed: u64) {
        let mut rng = Rng(seed | 1);
        while !self.stop.load(Ordering::Relaxed) {
            let image = &self.skopeo_images[rng.below(self.skopeo_images.len())];
            let repo = &self.model.repos[rng.below(REPOS)];
            let tag = TAGS[rng.below(TAGS.len())];
            let _w = repo.write();
            *repo.pushing.lock().unwrap() = Some(tag.to_string());
            let started = Utc::now();
            let dest = format!("{}:{tag}", repo.name);
            let (out, retries) = api::push_retrying(self.ctx(), &image.name, &dest, RETRIES);
            add(&self.counts.retries, retries as u64);
            if retries > 0 {
                add(&self.counts.retried_pushes, 1);
            }
            if out.status.success() {
                add(&self.counts.pushes_ok, 1);
                add(&self.counts.skopeo_pushes, 1);
                let rec = self.model.pushed(
                    repo,
                    tag,
                    &image.digest,
                    "skopeo copy",
                    started,
                    1 + retries as u32,
                    None,
                );
                self.verify_now(Some(rec));
            } else {
                add(&self.counts.pushes_failed, 1);
                // skopeo's own tries are not told apart: judged at the end like an HTTP
                // push whose tries left no suspect (excused if a run started during each).
                let what = format!(
                    "skopeo copy of {} to {dest} failed after its retries: {}",
                    image.name,
                    text(&out.stderr)
                );
                eprintln!("[wide] gave up (judged at the end): {what}");
                self.gave_up.lock().unwrap().push(GaveUp {
                    what,
                    suspects: vec![None; 1 + retries],
                    started,
                    ended: Utc::now(),
                });
                self.resync(repo, tag);
            }
            drop(_w);
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Pulls, mostly of the tag being pushed at that moment. A pull that raced no write
    /// of its repository must succeed and serve what the model says; one that raced a
    /// write may meet a 404 (the tag moved, a run took the old image), never a 5xx.
    fn puller(&self, seed: u64) {
        let mut rng = Rng(seed | 1);
        while !self.stop.load(Ordering::Relaxed) {
            let repo = &self.model.repos[rng.below(REPOS)];
            let pushing = repo.pushing.lock().unwrap().clone();
            let w0 = repo.writes.load(Ordering::SeqCst);
            let tags = repo.model().tagged();
            let (tag, chasing) = match pushing {
                Some(t) if rng.chance(70) => (t, true),
                _ if tags.is_empty() => continue,
                _ => (tags[rng.below(tags.len())].0.clone(), false),
            };
            let want = tags.iter().find(|(t, _)| *t == tag).map(|(_, d)| d.clone());
            // A tag being pushed is polled (its manifest alone) until its push ends, then
            // pulled. A 404 (not pushed yet) or a link read mid-write is what a plain
            // directory gives too; any other failure is not.
            while chasing && repo.pushing.lock().unwrap().as_deref() == Some(tag.as_str()) {
                add(&self.counts.polls, 1);
                match self.client().poll_manifest(&repo.name, &tag) {
                    Err(e) if e.link_read_mid_write() => add(&self.counts.mid_write_reads, 1),
                    Err(e) if !e.not_found() => {
                        let rec = self.pull_record(repo, &tag, "");
                        self.error(format!(
                            "GET manifest of {}:{tag} while it is being pushed: {e}\n{}",
                            repo.name,
                            self.diagnose(&rec)
                        ));
                        break;
                    }
                    _ => {}
                }
                thread::sleep(Duration::from_millis(2));
            }
            let r = self.client().pull(&repo.name, &tag, None);
            let w1 = repo.writes.load(Ordering::SeqCst);
            let stable = w0 == w1 && w0.is_multiple_of(2);
            add(&self.counts.pulls, 1);
            let failure = match r {
                Ok(p) if stable && want.as_deref() != Some(p.digest.as_str()) => {
                    Some(format!("served {}, the model says {want:?}", p.digest))
                }
                Ok(_) => None,
                Err(e) if !stable && e.not_found() => {
                    add(&self.counts.pulls_raced, 1);
                    None
                }
                Err(e) if !stable && e.link_read_mid_write() => {
                    add(&self.counts.mid_write_reads, 1);
                    None
                }
                Err(e) => Some(e.to_string()),
            };
            if let Some(f) = failure {
                let rec = self.pull_record(repo, &tag, want.as_deref().unwrap_or_default());
                self.error(format!(
                    "pull of {}:{tag} ({} a write of the repository): {f}\n{}",
                    repo.name,
                    if stable { "racing no" } else { "racing" },
                    self.diagnose(&rec)
                ));
            }
            thread::sleep(Duration::from_millis(if chasing { 1 } else { 50 }));
        }
    }

    /// A pull of `repo`:`tag` that just failed, described as a record for [`Self::diagnose`].
    fn pull_record(&self, repo: &RepoState, tag: &str, digest: &str) -> PushRecord {
        PushRecord {
            seq: 0,
            repo: repo.name.clone(),
            reference: tag.to_string(),
            digest: digest.to_string(),
            op: "pull",
            started: Utc::now() - chrono::Duration::seconds(2),
            answered: Utc::now(),
            attempts: 1,
        }
    }

    /// Runs back to back, triggered on each node in turn.
    fn gc_loop(&self) {
        let mut n = 0;
        while !self.stop.load(Ordering::Relaxed) {
            talk_to(n % self.nodes.len());
            n += 1;
            match gc_wait(self.ctx()) {
                Ok(job) => self.jobs.lock().unwrap().push(job),
                Err(e) => {
                    let found = store_check::naming(&self.ctx().store, &e);
                    self.error(format!("{e}\n  in the store now: {found:?}"));
                    thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    /// Every repository starts with its tags set.
    fn fill(&self, seed: u64) {
        let mut w = Worker {
            rng: Rng(seed * 7 + 1),
            pool: Vec::new(),
        };
        for repo in &self.model.repos {
            for tag in TAGS {
                let m = self.new_image(&mut w, "amd64");
                let _w = repo.write();
                self.push(repo, tag, &m, None, "fill");
            }
        }
    }
}

/// Runs the wider soak under `cache`, `REGFS_SOAK_ROUNDS` rounds; fails naming every
/// failure of every round.
pub fn run(cache: Cache) {
    run_on(cache, 1);
}

/// The wider soak across `nodes` cluster nodes over one store (etcd, a registry on each
/// node): the clients split across them, runs triggered on each node in turn.
pub fn run_across_nodes(cache: Cache, nodes: usize) {
    run_on(cache, nodes);
}

fn run_on(cache: Cache, nodes: usize) {
    let secs = env_number("REGFS_SOAK_SECONDS", 40);
    let rounds = env_number("REGFS_SOAK_ROUNDS", 1);
    let seed = env_number("REGFS_SOAK_SEED", 18);
    watchdog(Duration::from_secs(rounds * (secs + 300)));
    let mut failed = Vec::new();
    let mut summaries = Vec::new();
    for r in 0..rounds {
        let Some((summary, failures)) = round(cache, seed + r, secs, nodes) else {
            return;
        };
        eprintln!("{summary}");
        if !failures.is_empty() {
            failed.push(format!(
                "round {r} (seed {}): {} failure(s):\n{}",
                seed + r,
                failures.len(),
                failures.join("\n")
            ));
        }
        summaries.push(summary);
    }
    eprintln!(
        "[wide] cache {cache:?}: {} of {rounds} rounds failed\n{}",
        failed.len(),
        summaries.join("\n")
    );
    assert!(
        failed.is_empty(),
        "the wider soak under cache {cache:?} failed:\n{}",
        failed.join("\n\n")
    );
}

/// One round in a fresh world of `nodes` nodes: its summary line and its failures
/// (`None`: not run, a prerequisite is missing outside CI).
fn round(cache: Cache, seed: u64, secs: u64, nodes: usize) -> Option<(String, Vec<String>)> {
    let args = ["--gc-mode", "online"];
    // The processes, held until the round ends.
    let (world, ctxs) = if nodes == 1 {
        let world = setup_custom(Mode::DeleteUntagged, cache, &args, |_| {})?;
        let ctx = world.ctx.clone();
        (Box::new(world) as Box<dyn std::any::Any>, vec![ctx])
    } else {
        let cluster = setup_cluster(Mode::DeleteUntagged, cache, &args, nodes)?;
        let ctxs = cluster.nodes.iter().map(|n| n.ctx.clone()).collect();
        (Box::new(cluster) as Box<dyn std::any::Any>, ctxs)
    };
    let ctx = ctxs[0].clone();
    eprintln!(
        "[wide] cache {cache:?}, seed {seed}, {secs} s, {REPOS} repositories, {nodes} node(s)"
    );
    let lib = Arc::new(Library::new(ctx.oci.clone(), seed, FAMILIES, VARIANTS));
    let round = Round {
        nodes: ctxs
            .iter()
            .map(|c| Side {
                ctx: c.clone(),
                client: Client {
                    port: c.port,
                    lib: lib.clone(),
                },
            })
            .collect(),
        skopeo_images: api::soak_images(&ctx.oci, 3, 2),
        model: Model::new((0..REPOS).map(|i| format!("wide/r{i}")), lib),
        counts: Counts::default(),
        retry_causes: Mutex::default(),
        errors: Mutex::default(),
        answers_5xx: Mutex::default(),
        suspects: Mutex::default(),
        gave_up: Mutex::default(),
        jobs: Mutex::default(),
        stop: AtomicBool::new(false),
    };
    round.fill(seed);
    let t0 = Instant::now();
    thread::scope(|s| {
        let r = &round;
        // Across nodes: the HTTP pushers on every node in turn, skopeo on the last,
        // a puller on each of the first two.
        for k in 0..3 {
            s.spawn(move || {
                talk_to(k as usize % nodes);
                r.http_pusher(seed * 31 + 3 + k)
            });
        }
        s.spawn(move || {
            talk_to(nodes - 1);
            r.skopeo_pusher(seed * 37 + 5)
        });
        for k in 0..2 {
            s.spawn(move || {
                talk_to(k as usize % nodes);
                r.puller(seed * 43 + 9 + k)
            });
        }
        s.spawn(move || r.gc_loop());
        while t0.elapsed() < Duration::from_secs(secs) {
            thread::sleep(Duration::from_millis(250));
        }
        r.stop.store(true, Ordering::Relaxed);
    });
    let soak_secs = t0.elapsed().as_secs_f64();
    let mut failures = round.errors.lock().unwrap().clone();
    match gc_wait(&ctx) {
        Ok(job) => round.jobs.lock().unwrap().push(job),
        Err(e) => failures.push(format!("the final GC run: {e}")),
    }
    let (problems, links) = store_check::problems(&ctx.store);
    if !problems.is_empty() {
        failures.push(format!(
            "after the final run the store is damaged ({} problems):\n{}",
            problems.len(),
            problems.join("\n")
        ));
    }
    // Every push the model still expects pulls whole through every node.
    let mut verified = Vec::new();
    for (i, side) in round.nodes.iter().enumerate() {
        talk_to(i);
        let v = verify_all(&round.model, &side.client, &|rec| round.diagnose(rec));
        let through = if nodes > 1 {
            format!(" (through node {})", i + 1)
        } else {
            String::new()
        };
        failures.extend(v.failures.iter().map(|f| format!("{f}{through}")));
        verified.push(v);
    }
    talk_to(0);
    let verified = verified.remove(0);
    let jobs = round.jobs.lock().unwrap().clone();
    let sum = |f: &dyn Fn(&Value) -> u64| jobs.iter().map(f).sum::<u64>();
    let refused = sum(&|j| j["refused_writes"].as_u64().unwrap_or(0));
    let manifests = sum(&|j| j["report"]["manifests_removed"].as_u64().unwrap_or(0));
    let blobs = sum(&blobs_deleted);
    let c = &round.counts;
    if jobs.len() < 3 {
        failures.push(format!("only {} GC runs during the soak", jobs.len()));
    }
    for j in &jobs {
        if j["outcome"] != "done" || api::job_mode(j) != "online" {
            failures.push(format!("a GC run did not end done and online: {j}"));
        }
    }
    if blobs + manifests == 0 {
        failures.push("no GC run deleted anything: the races were not real".into());
    }
    // Writes the link checks refused (a link naming a blob without data, or a tag or
    // index naming a manifest without a revision: what a run removed between two writes
    // of one request), as the daemon logs them; each is a 500 the client retries.
    let link_refusals = (round.nodes.iter())
        .map(|n| {
            std::fs::read_to_string(&n.ctx.daemon_log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("refused a link naming"))
                .count() as u64
        })
        .sum::<u64>();
    let refused = refused + link_refusals;
    // Liveness, not loss: printed and counted, not a failure of the round (a push that
    // fails is seen by its client and retried; what the soak fails on is a push lost).
    let mut not_excused = 0;
    if get(&c.push_5xx) > refused {
        not_excused += 1;
        eprintln!(
            "[wide] NOTE pushes got {} answers of 5xx, the runs and the link checks refused \
             {refused} writes: the others came from the filesystem failing a write nothing \
             refused:\n  {}",
            get(&c.push_5xx),
            round.answers_5xx.lock().unwrap().join("\n  ")
        );
    }
    let (verdicts, lost, head_lost, collected) = judge_suspects(&round, &jobs, &mut failures);
    // A push that lost what it sent to runs started while it tried is a failure the
    // client sees (min age 0s keeps nothing unreferenced), not a loss: excused when every
    // try's loss is explained by a run, or when runs started on every one of its tries
    // (a try that lost a blob it was told existed, then a run took what it uploaded).
    let started: Vec<chrono::DateTime<Utc>> = jobs
        .iter()
        .filter_map(|j| j["started_at"].as_str()?.parse().ok())
        .collect();
    let mut excused = 0;
    for g in round.gave_up.lock().unwrap().iter() {
        let runs_during = started
            .iter()
            .filter(|t| **t > g.started && **t <= g.ended)
            .count();
        let explained = g.suspects.iter().all(|s| s.is_some_and(|i| verdicts[i]));
        if explained || runs_during >= g.suspects.len() {
            excused += 1;
        } else {
            not_excused += 1;
            eprintln!(
                "[wide] NOTE a push given up, not explained by runs: {}",
                g.what
            );
        }
    }
    let empty_reads = (round.nodes.iter())
        .map(|n| {
            n.ctx
                .registry_log()
                .lines()
                .filter(|l| l.contains(r#"err.detail="invalid checksum digest format""#))
                .count() as u64
        })
        .sum::<u64>();
    if get(&c.mid_write_reads) > empty_reads {
        failures.push(format!(
            "{} pulls were answered 500 without detail, taken for a link read mid-write, but \
             the registry logged only {empty_reads} empty links",
            get(&c.mid_write_reads)
        ));
    }
    let summary = format!(
        "[wide] cache {cache:?} seed {seed}, {soak_secs:.0} s: pushes {} answered success \
         ({} verified at once, {} by skopeo), {} FAILED after retries ({excused} of them \
         excused: each try lost a blob or child to a run started during it; liveness notes \
         {not_excused}); {} pushes retried \
         ({} tries again, {} answers 5xx; causes {:?}); {} pulls ({} raced a write and met \
         a 404), {} polls of tags being pushed, {} link reads \
         mid-write; {} deletes+re-pushes, {} tag moves, {} copies ({} blobs mounted), {} \
         signatures, {} indexes; {} GC runs, {} units deleted ({blobs} blobs, {manifests} \
         manifests), {refused} refused writes, {} resurrected, {} late writes; confirmed \
         then unknown: {lost} written with no run started between (LOST), {head_lost} \
         said to exist by HEAD with no run started between, {collected} collected by a run \
         started between; final: {} pushes verified ({} objects), {links} links whole; {} \
         failure(s)",
        get(&c.pushes_ok),
        get(&c.verified_at_once),
        get(&c.skopeo_pushes),
        get(&c.pushes_failed),
        get(&c.retried_pushes),
        get(&c.retries),
        get(&c.push_5xx),
        round.retry_causes.lock().unwrap(),
        get(&c.pulls),
        get(&c.pulls_raced),
        get(&c.polls),
        get(&c.mid_write_reads),
        get(&c.deletes),
        get(&c.tag_moves),
        get(&c.copies),
        get(&c.mounted_blobs),
        get(&c.signatures),
        get(&c.indexes),
        jobs.len(),
        blobs + manifests,
        sum(&|j| j["resurrected"].as_u64().unwrap_or(0)),
        sum(&|j| j["late_writes"].as_u64().unwrap_or(0)),
        verified.pushes,
        verified.objects,
        failures.len(),
    );
    drop(world);
    Some((summary, failures))
}

/// Sorts the round's suspects: a write confirmed and then unknown with no run started in
/// between is a lost write (a failure); a HEAD's "exists" so contradicted is counted; one
/// collected by a run started since is the price of min age 0s. Per suspect whether it
/// was that price, and the three counts.
fn judge_suspects(
    round: &Round,
    jobs: &[Value],
    failures: &mut Vec<String>,
) -> (Vec<bool>, u64, u64, u64) {
    let started: Vec<chrono::DateTime<Utc>> = jobs
        .iter()
        .filter_map(|j| j["started_at"].as_str()?.parse().ok())
        .collect();
    let (mut lost, mut head, mut collected) = (0, 0, 0);
    let mut verdicts = Vec::new();
    for s in round.suspects.lock().unwrap().iter() {
        let paid = started.iter().any(|t| *t > s.seen.at && *t <= s.unknown_at);
        verdicts.push(paid);
        if paid {
            collected += 1;
            continue;
        }
        let what = format!(
            "{}: {} of {} confirmed ({:?}) at {}, then unknown at {} with no run started \
             in between: {}\n{}  at that moment:\n{}",
            s.op,
            s.seen.digest,
            s.repo,
            s.seen.via,
            s.seen.at.format("%H:%M:%S%.3f"),
            s.unknown_at.format("%H:%M:%S%.3f"),
            s.answer,
            runs_between(jobs, s.seen.at - chrono::Duration::seconds(1), s.unknown_at),
            s.state
        );
        if s.seen.via.written() {
            lost += 1;
            failures.push(format!("LOST WRITE {what}"));
        } else {
            head += 1;
            eprintln!("[wide] HEAD said it exists, then unknown: {what}");
        }
    }
    (verdicts, lost, head, collected)
}

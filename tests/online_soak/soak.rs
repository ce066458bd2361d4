//! The soak: pushers, a deleter and a puller work a handful of repositories while GC runs
//! back to back (`regfs gc --wait` in a loop, minimum age 0s, `--delete-untagged`, so an
//! image untagged or deleted a moment ago is garbage at once).
//!
//! Images come in families sharing a base layer (`scripts/soak-images.py`); a pusher
//! prefers a sibling of an image just deleted or untagged, so it pushes layers a run may
//! have just found unreferenced. A model per repository says which image each tag names;
//! operations on one repository are serialized (its lock) so the model is exact, while
//! different repositories and the GC runs race freely.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::api::{self, blobs_deleted, gc_mode, gc_wait};
use crate::ctx::{Ctx, Mode};
use crate::store_check::assert_consistent;
use crate::support::text;
use crate::workload::Rng;
use crate::world::{Cache, setup_custom};

const REPOS: usize = 4;
const TAGS: [&str; 3] = ["a", "b", "c"];
const FAMILIES: u32 = 4;
const VARIANTS: u32 = 3;
const RETRIES: u32 = 3;

/// `SOAK_SECONDS` (default 60): how long the load and the GC runs go on.
fn soak_seconds() -> u64 {
    std::env::var("SOAK_SECONDS")
        .ok()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("SOAK_SECONDS={s:?} is not a number"))
        })
        .unwrap_or(60)
}

/// A soak that outlives `budget` is hung (a deadlock between the registry, the mount and
/// a run once did exactly that): it fails loudly instead of holding CI until its limit.
pub fn watchdog(budget: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(budget);
        eprintln!("soak: still running after {budget:?}: hung; aborting the test binary");
        std::process::abort();
    });
}

/// What the soak counted.
#[derive(Default)]
struct Counts {
    pushes_ok: AtomicU64,
    pushes_failed: AtomicU64,
    retries: AtomicU64,
    pulls: AtomicU64,
    deletes: AtomicU64,
    deletes_refused: AtomicU64,
}

struct Soak {
    ctx: Arc<Ctx>,
    /// Per repository: tag -> image name, as the registry must serve it.
    repos: Vec<Mutex<BTreeMap<String, String>>>,
    /// Families whose image was deleted or untagged most recently.
    recent: Mutex<Vec<String>>,
    images: Vec<String>,
    counts: Counts,
    /// Failures that fail the test (pulls, unexpected answers), with what happened.
    errors: Mutex<Vec<String>>,
    /// Pushes that failed after their retries, with skopeo's error.
    failed_pushes: Mutex<Vec<String>>,
    stop: AtomicBool,
}

fn repo_name(i: usize) -> String {
    format!("soak/r{i}")
}

fn family(image: &str) -> &str {
    image.split('-').next().unwrap_or(image)
}

impl Soak {
    fn error(&self, e: String) {
        eprintln!("[soak] ERROR {e}");
        self.errors.lock().unwrap().push(e);
    }

    fn forget(&self, image: &str) {
        let mut r = self.recent.lock().unwrap();
        r.push(family(image).to_string());
        let n = r.len();
        if n > 4 {
            r.drain(..n - 4);
        }
    }

    /// An image to push: mostly a sibling of one just deleted or untagged.
    fn pick_image(&self, rng: &mut Rng) -> String {
        let recent = self.recent.lock().unwrap().clone();
        if !recent.is_empty() && rng.below(10) < 7 {
            let fam = &recent[rng.below(recent.len())];
            let sib: Vec<&String> = self.images.iter().filter(|i| family(i) == fam).collect();
            return sib[rng.below(sib.len())].clone();
        }
        self.images[rng.below(self.images.len())].clone()
    }

    fn push_one(&self, rng: &mut Rng) {
        let r = rng.below(REPOS);
        let repo = repo_name(r);
        let image = self.pick_image(rng);
        let tag = TAGS[rng.below(TAGS.len())];
        let dest = format!("{repo}:{tag}");
        let mut model = self.repos[r].lock().unwrap();
        let (out, retries) = api::push_retrying(&self.ctx, &image, &dest, RETRIES);
        self.counts
            .retries
            .fetch_add(retries as u64, Ordering::Relaxed);
        let digest = self.ctx.image(&image).digest.clone();
        if !out.status.success() {
            self.counts.pushes_failed.fetch_add(1, Ordering::Relaxed);
            let e = format!("push {image} to {dest}: {}", text(&out.stderr));
            eprintln!("[soak] push failed: {e}");
            self.failed_pushes.lock().unwrap().push(e);
            // The tag may or may not have moved: the model follows the registry.
            if self.ctx.manifest_digest(&repo, tag).as_deref() == Ok(digest.as_str()) {
                self.retag(&mut model, tag, &image);
            }
            self.resync(&repo, &mut model);
            return;
        }
        self.counts.pushes_ok.fetch_add(1, Ordering::Relaxed);
        self.retag(&mut model, tag, &image);
        // A push that reported success pulls whole, at once, with GC still running.
        if let Err(e) = self.ctx.pull(&dest, &image) {
            self.error(format!("right after its push reported success: {e}"));
        }
    }

    fn retag(&self, model: &mut BTreeMap<String, String>, tag: &str, image: &str) {
        if let Some(old) = model.insert(tag.to_string(), image.to_string())
            && old != image
            && !model.values().any(|v| *v == old)
        {
            self.forget(&old);
        }
    }

    fn delete_one(&self, rng: &mut Rng) {
        let r = rng.below(REPOS);
        let repo = repo_name(r);
        let mut model = self.repos[r].lock().unwrap();
        if model.len() < 2 {
            return;
        }
        let tagged: Vec<String> = model.values().cloned().collect();
        let image = tagged[rng.below(tagged.len())].clone();
        let digest = self.ctx.image(&image).digest.clone();
        match api::delete_manifest(self.ctx.port, &repo, &digest) {
            Ok(202) => {
                self.counts.deletes.fetch_add(1, Ordering::Relaxed);
                model.retain(|_, v| *v != image);
                self.forget(&image);
            }
            Ok(500) if gc_mode() == "read-only" => {
                // Refused during a read-only epoch (EROFS): expected there.
                self.counts.deletes_refused.fetch_add(1, Ordering::Relaxed);
                self.resync(&repo, &mut model);
            }
            other => self.error(format!("DELETE {repo}@{digest} ({image}): {other:?}")),
        }
    }

    /// After a failed write: the model keeps only the tags the registry still serves as
    /// the model says (a refused request may have done part of its work).
    fn resync(&self, repo: &str, model: &mut BTreeMap<String, String>) {
        let ctx = &self.ctx;
        let gone: Vec<String> = model
            .iter()
            .filter(|(tag, image)| {
                ctx.manifest_digest(repo, tag).as_deref() != Ok(ctx.image(image).digest.as_str())
            })
            .map(|(tag, _)| tag.clone())
            .collect();
        for tag in gone {
            eprintln!("[soak] {repo}:{tag} no longer as the model says after a failed write");
            if let Some(old) = model.remove(&tag) {
                self.forget(&old);
            }
        }
    }

    fn pull_one(&self, rng: &mut Rng) {
        let r = rng.below(REPOS);
        let repo = repo_name(r);
        let model = self.repos[r].lock().unwrap();
        let tagged: Vec<(&String, &String)> = model.iter().collect();
        if tagged.is_empty() {
            return;
        }
        let (tag, image) = tagged[rng.below(tagged.len())];
        // By tag or by digest.
        let reference = if rng.below(2) == 0 {
            format!("{repo}:{tag}")
        } else {
            format!("{repo}@{}", self.ctx.image(image).digest)
        };
        self.counts.pulls.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.ctx.pull(&reference, image) {
            self.error(format!("pull during the soak: {e}"));
        }
    }

    fn worker(
        self: Arc<Self>,
        seed: u64,
        op: fn(&Soak, &mut Rng),
        pause: Duration,
    ) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            let mut rng = Rng(seed | 1);
            while !self.stop.load(Ordering::Relaxed) {
                op(&self, &mut rng);
                thread::sleep(pause);
            }
        })
    }
}

/// GC runs back to back until `stop`; every job record.
fn gc_loop(soak: Arc<Soak>) -> thread::JoinHandle<Vec<Value>> {
    thread::spawn(move || {
        let mut jobs = Vec::new();
        while !soak.stop.load(Ordering::Relaxed) {
            match gc_wait(&soak.ctx) {
                Ok(job) => {
                    eprintln!(
                        "[soak] GC job {}: {} blobs deleted, pause {} s, resurrected {}, refused writes {}",
                        job["id"],
                        blobs_deleted(&job),
                        job["pause_seconds"],
                        job["resurrected"],
                        job["refused_writes"]
                    );
                    jobs.push(job);
                }
                Err(e) => {
                    let found = crate::store_check::naming(&soak.ctx.store, &e);
                    soak.error(format!("{e}\n  in the store now: {found:?}"));
                    thread::sleep(Duration::from_millis(500));
                }
            }
        }
        jobs
    })
}

pub fn run() {
    watchdog(Duration::from_secs(soak_seconds() + 600));
    let mode = gc_mode();
    let Some(mut world) = setup_custom(
        Mode::DeleteUntagged,
        Cache::DropIn,
        &api::daemon_args(),
        |_| {},
    ) else {
        return;
    };
    let ctx = Arc::get_mut(&mut world.ctx).expect("the context is not shared yet");
    for img in api::soak_images(&ctx.oci, FAMILIES, VARIANTS) {
        ctx.images.insert(img.name.clone(), img);
    }
    let ctx = world.ctx.clone();
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let secs = soak_seconds();
    eprintln!("[soak] GC mode {mode}, {secs} s, seed {seed}, {REPOS} repositories");
    let soak = Arc::new(Soak {
        ctx: ctx.clone(),
        repos: (0..REPOS).map(|_| Mutex::new(BTreeMap::new())).collect(),
        recent: Mutex::new(Vec::new()),
        images: (0..FAMILIES)
            .flat_map(|f| (0..VARIANTS).map(move |v| format!("f{f}-v{v}")))
            .collect(),
        counts: Counts::default(),
        errors: Mutex::new(Vec::new()),
        failed_pushes: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    // Every repository starts with its tags filled.
    let mut rng = Rng(seed * 7 + 1);
    for r in 0..REPOS {
        for tag in TAGS {
            let image = soak.images[rng.below(soak.images.len())].clone();
            ctx.push_ok(&image, &format!("{}:{tag}", repo_name(r)));
            soak.repos[r].lock().unwrap().insert(tag.into(), image);
        }
    }

    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let workers = vec![
        soak.clone().worker(seed * 31 + 3, Soak::push_one, ms(0)),
        soak.clone().worker(seed * 37 + 5, Soak::push_one, ms(0)),
        soak.clone()
            .worker(seed * 41 + 7, Soak::delete_one, ms(700)),
        soak.clone().worker(seed * 43 + 9, Soak::pull_one, ms(100)),
    ];
    let gc = gc_loop(soak.clone());
    while t0.elapsed() < Duration::from_secs(secs) {
        thread::sleep(ms(250));
    }
    soak.stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a soak worker panicked");
    }
    let jobs = gc.join().expect("the GC loop panicked");
    let soak_secs = t0.elapsed().as_secs_f64();
    let links = assert_consistent(&ctx.store, "right after the soak");
    report(&soak, &jobs, soak_secs, links);
    check_after(&soak, &jobs, &mode);
}

fn report(soak: &Soak, jobs: &[Value], secs: f64, links: usize) {
    let c = &soak.counts;
    let sum = |f: &str| jobs.iter().map(|j| j[f].as_u64().unwrap_or(0)).sum::<u64>();
    let mut pauses: Vec<f64> = jobs
        .iter()
        .filter_map(|j| j["pause_seconds"].as_f64())
        .collect();
    pauses.sort_by(f64::total_cmp);
    eprintln!(
        "[soak] {secs:.0} s: pushes {} ok, {} FAILED after retries, {} retries; {} pulls; {} deletes ({} refused); \
         {} GC runs ({} deleted something), {} blobs deleted, {} resurrected, {} refused writes, \
         pause max {:.3} s; {links} link files in the store, all whole",
        c.pushes_ok.load(Ordering::Relaxed),
        c.pushes_failed.load(Ordering::Relaxed),
        c.retries.load(Ordering::Relaxed),
        c.pulls.load(Ordering::Relaxed),
        c.deletes.load(Ordering::Relaxed),
        c.deletes_refused.load(Ordering::Relaxed),
        jobs.len(),
        jobs.iter().filter(|j| blobs_deleted(j) > 0).count(),
        jobs.iter().map(blobs_deleted).sum::<u64>(),
        sum("resurrected"),
        sum("refused_writes"),
        pauses.last().copied().unwrap_or(0.0),
    );
}

fn check_after(soak: &Soak, jobs: &[Value], mode: &str) {
    let ctx = &soak.ctx;
    let errors = soak.errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "errors during the soak:\n{}",
        errors.join("\n")
    );
    assert!(
        jobs.len() >= 2,
        "only {} GC runs during the soak",
        jobs.len()
    );
    for j in jobs {
        assert_eq!(j["outcome"], "done", "GC job: {j:#}");
        assert_eq!(
            api::job_mode(j),
            mode,
            "the mode of GC job {}: {j:#}",
            j["id"]
        );
    }
    assert!(
        jobs.iter().map(blobs_deleted).sum::<u64>() > 0,
        "no GC run deleted anything in the whole soak: the races were not real"
    );
    // One more run with nothing racing it: what the model says is live survives it.
    let last = gc_wait(ctx).unwrap_or_else(|e| panic!("the final GC run: {e}"));
    eprintln!(
        "[soak] final GC run: {} blobs deleted",
        blobs_deleted(&last)
    );
    assert_consistent(&ctx.store, "after a final GC run");
    for (r, model) in soak.repos.iter().enumerate() {
        let repo = repo_name(r);
        let model = model.lock().unwrap();
        let mut listed = api::tags(ctx.port, &repo);
        listed.sort();
        let expected: Vec<String> = model.keys().cloned().collect();
        assert_eq!(listed, expected, "the tags of {repo}");
        for (tag, image) in model.iter() {
            ctx.pull(&format!("{repo}:{tag}"), image)
                .unwrap_or_else(|e| panic!("after the soak: {e}"));
            let at = format!("{repo}@{}", ctx.image(image).digest);
            ctx.pull(&at, image)
                .unwrap_or_else(|e| panic!("after the soak: {e}"));
        }
    }
    let failed = soak.failed_pushes.lock().unwrap().clone();
    eprintln!("[soak] pushes failed after their retries: {}", failed.len());
    if mode == "online" {
        assert!(
            failed.is_empty(),
            "online GC: pushes failed after {RETRIES} retries:\n{}",
            failed.join("\n")
        );
    }
}

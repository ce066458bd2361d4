//! Model test of online GC: random interleavings of registry operations (uploads, link
//! writes, manifest puts, deletes, tag moves) with the phases of online runs (before the
//! pause, before and after each unit the sweep claims, after each it releases), driven
//! over the filesystem core without a mount, against a reference model of what the
//! registry has accepted. After every step, everything the model can reach is in the
//! store; after every run, no link names a missing blob and nothing stays hidden.
//!
//! Seeds are fixed (`ONLINE_MODEL_SEEDS` cases from `ONLINE_MODEL_FIRST_SEED`, default
//! 0..24); a failure names its seed.
mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;

use common::online_run::{Core, Hooks, broken_links, try_run};
use common::registry_sim::{
    PushError, blob_data, image_manifest, layer_link, revision_link, tag_dir,
};
use common::rng::Rng;
use regfs::gc::{Action, Options};
use regfs::layout::Digest;

#[derive(Debug, Clone)]
struct Image {
    layers: Vec<Vec<u8>>,
    salt: String,
}

#[derive(Debug, Clone)]
struct Pushed {
    manifest: Digest,
    config: Digest,
    layers: Vec<Digest>,
}

const REPOS: [&str; 3] = ["app", "lib/base", "tools"];
const TAGS: [&str; 3] = ["latest", "v1", "v2"];

/// What the registry has accepted.
#[derive(Default)]
struct Model {
    /// Revisions by repository: manifest → what it references.
    revisions: BTreeMap<&'static str, BTreeMap<Digest, Pushed>>,
    tags: BTreeMap<(&'static str, &'static str), Digest>,
    /// Every image content ever pushed, for tag moves and retries.
    images: Vec<Image>,
    /// Which image each pushed blob came from (layer or config, and the manifest).
    sources: BTreeMap<Digest, Image>,
    /// Pushes that failed and are retried later, as a client would.
    pending: Vec<(&'static str, Option<&'static str>, Image)>,
    pushes: u64,
    failed_attempts: u64,
    delete_untagged: bool,
}

struct World<'c> {
    core: &'c Core,
    model: Mutex<Model>,
    rng: Mutex<Rng>,
    seed: u64,
    log: Mutex<Vec<String>>,
}

impl World<'_> {
    fn push(
        &self,
        repo: &'static str,
        tag: Option<&'static str>,
        img: &Image,
    ) -> Result<Pushed, PushError> {
        let reg = self.core.registry();
        let mut layers = Vec::new();
        for l in &img.layers {
            layers.push(reg.push_blob(repo, l)?);
        }
        let config = reg.push_blob(repo, format!("{{\"salt\":\"{}\"}}", img.salt).as_bytes())?;
        let mut refs = layers.clone();
        refs.push(config);
        let manifest = reg.put_manifest(repo, &image_manifest(&config, &layers), &refs, tag)?;
        Ok(Pushed {
            manifest,
            config,
            layers,
        })
    }

    fn try_push(&self, repo: &'static str, tag: Option<&'static str>, img: Image) {
        let r = self.push(repo, tag, &img);
        self.log.lock().unwrap().push(format!(
            "push {repo}:{tag:?} {} -> {}",
            img.salt,
            r.as_ref()
                .map(|p| p.manifest.to_string())
                .unwrap_or_else(|e| format!("{e:?}"))
        ));
        let mut m = self.model.lock().unwrap();
        match r {
            Ok(p) => {
                m.pushes += 1;
                if let Some(t) = tag {
                    m.tags.insert((repo, t), p.manifest);
                }
                for d in p.layers.iter().chain([&p.config, &p.manifest]) {
                    m.sources.insert(*d, img.clone());
                }
                m.revisions.entry(repo).or_default().insert(p.manifest, p);
            }
            Err(_) => {
                m.failed_attempts += 1;
                m.pending.push((repo, tag, img));
            }
        }
    }

    /// One registry operation, chosen at random.
    fn step(&self) {
        let mut rng = self.rng.lock().unwrap();
        let repo = REPOS[rng.below(REPOS.len())];
        let tag = TAGS[rng.below(TAGS.len())];
        let pick = rng.below(100);
        let retry = self.model.lock().unwrap().pending.pop();
        if let Some((r, t, img)) = retry {
            drop(rng);
            return self.try_push(r, t, img);
        }
        match pick {
            // A new image: some layers shared with earlier images (maybe deleted ones).
            0..=44 => {
                let mut layers = Vec::new();
                let known = self.model.lock().unwrap().images.clone();
                for _ in 0..1 + rng.below(3) {
                    if !known.is_empty() && rng.chance(60) {
                        let from = &known[rng.below(known.len())];
                        layers.push(from.layers[rng.below(from.layers.len())].clone());
                    } else {
                        layers.push(format!("layer {}-{}", self.seed, rng.next()).into_bytes());
                    }
                }
                let img = Image {
                    layers,
                    salt: format!("{}-{}", self.seed, rng.next()),
                };
                self.model.lock().unwrap().images.push(img.clone());
                let tag = rng.chance(70).then_some(tag);
                drop(rng);
                self.try_push(repo, tag, img);
            }
            // Delete a revision by digest (and the tags naming it).
            45..=64 => {
                let mut m = self.model.lock().unwrap();
                let revs: Vec<Digest> = m
                    .revisions
                    .get(repo)
                    .map(|r| r.keys().copied().collect())
                    .unwrap_or_default();
                if revs.is_empty() {
                    return;
                }
                let d = revs[rng.below(revs.len())];
                let tags: Vec<&str> = TAGS
                    .iter()
                    .copied()
                    .filter(|t| m.tags.get(&(repo, *t)) == Some(&d))
                    .collect();
                self.core.registry().delete_manifest(repo, &d, &tags);
                m.revisions.get_mut(repo).unwrap().remove(&d);
                for t in &tags {
                    m.tags.remove(&(repo, *t));
                }
                self.log
                    .lock()
                    .unwrap()
                    .push(format!("delete {repo}@{d} untag {tags:?}"));
            }
            // Untag.
            65..=74 => {
                self.core.registry().remove_all(&tag_dir(repo, tag));
                self.model.lock().unwrap().tags.remove(&(repo, tag));
                self.log.lock().unwrap().push(format!("untag {repo}:{tag}"));
            }
            // Move a tag onto an image pushed before (the client pushes it again).
            _ => {
                let known = self.model.lock().unwrap().images.clone();
                if known.is_empty() {
                    return;
                }
                let img = known[rng.below(known.len())].clone();
                drop(rng);
                self.try_push(repo, Some(tag), img);
            }
        }
    }

    /// A push racing the unit the sweep is at: an image holding the blob it deletes, or
    /// (a revision unit) the manifest it removes, pushed again, maybe tagged.
    fn racing_push(&self, action: &Action) {
        let digest = match action {
            Action::DeleteBlob { digest, .. } | Action::RemoveRevision { digest, .. } => *digest,
            _ => return,
        };
        let Some(img) = self.model.lock().unwrap().sources.get(&digest).cloned() else {
            return;
        };
        let (repo, tag) = {
            let mut rng = self.rng.lock().unwrap();
            (
                REPOS[rng.below(REPOS.len())],
                rng.chance(50).then(|| TAGS[rng.below(TAGS.len())]),
            )
        };
        self.log.lock().unwrap().push(format!("-- racing {digest}"));
        self.try_push(repo, tag, img);
        self.check("after a racing push");
    }

    fn steps(&self, max: usize) {
        let n = self.rng.lock().unwrap().below(max + 1);
        for _ in 0..n {
            self.step();
            self.check("after a step");
        }
    }

    /// Everything the model reaches is in the store.
    fn check(&self, when: &str) {
        let m = self.model.lock().unwrap();
        let core = self.core;
        let mut live: Vec<(&str, &Pushed)> = Vec::new();
        for (repo, revs) in &m.revisions {
            for (d, p) in revs {
                let tagged = m.tags.iter().any(|((r, _), t)| r == repo && t == d);
                if !m.delete_untagged || tagged {
                    live.push((repo, p));
                }
            }
        }
        for (repo, p) in live {
            let mut need = vec![blob_data(&p.manifest), revision_link(repo, &p.manifest)];
            for b in p.layers.iter().chain([&p.config]) {
                need.push(blob_data(b));
                need.push(layer_link(repo, b));
            }
            for rel in need {
                if !core.has_data(&rel) {
                    panic!(
                        "seed {}: {when}: {rel} missing for {repo}@{}\nlast operations:\n{}",
                        self.seed,
                        p.manifest,
                        self.log
                            .lock()
                            .unwrap()
                            .iter()
                            .rev()
                            .take(15)
                            .rev()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("\n")
                    );
                }
            }
        }
        for ((repo, tag), d) in &m.tags {
            let link = format!("{}/current/link", tag_dir(repo, tag));
            let content = std::fs::read(core.root.join(&link)).unwrap_or_default();
            assert_eq!(
                String::from_utf8_lossy(&content),
                d.to_string(),
                "seed {}: {when}: {link}",
                self.seed
            );
        }
    }

    fn recent(&self) -> String {
        let log = self.log.lock().unwrap();
        log.iter()
            .rev()
            .take(400)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn online_run(&self) {
        let delete_untagged = self.model.lock().unwrap().delete_untagged;
        let opts = Options {
            delete_untagged,
            ..Default::default()
        };
        let act = |when: &'static str| {
            let percent = 30;
            if self.rng.lock().unwrap().chance(percent) {
                self.log.lock().unwrap().push(format!("-- {when}"));
                self.steps(2);
            }
        };
        let hooks = Hooks {
            before_pause: Some(Box::new(|| act("before the pause"))),
            before_claim: Some(Box::new(|_, a| {
                if self.rng.lock().unwrap().chance(15) {
                    self.racing_push(a);
                }
                act("before a claim")
            })),
            after_claim: Some(Box::new(|_, a, _| {
                if self.rng.lock().unwrap().chance(15) {
                    self.racing_push(a);
                }
                act("after a claim")
            })),
            after_release: Some(Box::new(|_, _| act("after a release"))),
            stop_after: None,
        };
        // The hooks act from the collector's thread while this one waits in the run.
        let out = try_run(self.core, &opts, &hooks)
            .unwrap_or_else(|e| panic!("seed {}: {e}\n{}", self.seed, self.recent()));
        drop(hooks);
        self.log.lock().unwrap().push(format!(
            "== run: {:?}, resurrected {}, refused {}",
            out.report.counts, out.resurrected, out.refused
        ));
        assert!(out.hidden_after.is_empty(), "seed {}", self.seed);
        let broken = broken_links(&self.core.root);
        assert!(
            broken.is_empty(),
            "seed {}: broken links {broken:?}\n{}",
            self.seed,
            self.recent()
        );
        self.check("after a run");
    }
}

fn one_case(seed: u64) -> (u64, u64) {
    let core = Core::new();
    let world = World {
        core: &core,
        model: Mutex::new(Model {
            delete_untagged: seed % 2 == 1,
            ..Default::default()
        }),
        rng: Mutex::new(Rng(seed)),
        seed,
        log: Mutex::new(Vec::new()),
    };
    for _ in 0..4 {
        world.steps(8);
        world.online_run();
    }
    // Pushes still failing are retried with no run going: each must go through.
    loop {
        let Some((r, t, img)) = world.model.lock().unwrap().pending.pop() else {
            break;
        };
        let res = world.push(r, t, &img);
        assert!(
            res.is_ok(),
            "seed {seed}: a push retried after the runs failed: {res:?}"
        );
        let p = res.unwrap();
        let mut m = world.model.lock().unwrap();
        if let Some(t) = t {
            m.tags.insert((r, t), p.manifest);
        }
        m.revisions.entry(r).or_default().insert(p.manifest, p);
    }
    world.check("at the end");
    let m = world.model.lock().unwrap();
    (m.pushes, m.failed_attempts)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn online_runs_never_lose_what_the_registry_accepted() {
    let first = env_u64("ONLINE_MODEL_FIRST_SEED", 0);
    let cases = env_u64("ONLINE_MODEL_SEEDS", 24);
    let (mut pushes, mut failed) = (0, 0);
    for seed in first..first + cases {
        let (p, f) = one_case(seed);
        pushes += p;
        failed += f;
    }
    println!("{cases} cases: {pushes} pushes accepted, {failed} attempts failed and retried");
    assert!(
        pushes > cases * 5,
        "the model pushed too little to mean anything"
    );
    // A write naming a unit the sweep holds is refused and retried; a doomed unit a write
    // names is taken back instead. The racing pushes above aim at the very unit being
    // deleted, so some refusals are expected (without resurrection most attempts fail).
    assert!(
        failed * 10 <= pushes,
        "{failed} failed attempts for {pushes} accepted pushes: more than transient"
    );
}

//! Deterministic concurrency checking of the protocols that order registry writes against
//! GC deletion (ARCHITECTURE.md, "Write ordering against deletion").
//!
//! Registry requests run as threads of the `shuttle` scheduler, each making the exact
//! filesystem requests of Debian's registry 2.8 (`common::registry_sim`: MkdirAll, open
//! `O_WRONLY|O_CREAT` without `O_TRUNC`, ftruncate, write, fsync, close; a blob commit by
//! rename; a manifest PUT as its revision link, then the tag's index link, then its
//! current link) through the filesystem core and its real policy chain (`LinkRefusal`
//! over `OnlineBarrier` over the gate), over a real temporary store. A GC run (online or
//! read-only) is one more thread. The library is built with the `shuttle` feature, so the
//! gate's and the barrier's locks, atomics and waits are the scheduler's too: it may switch
//! threads at each of them, and between any two filesystem requests of one registry call,
//! so a whole run can fall between any two of them. After each schedule the store must
//! serve every push that was answered with success, and no link may name a missing blob.
//!
//! Run: `cargo test --features shuttle --test online_schedules` (scripts/test.sh does).
//! Settings: `REGFS_SCHEDULES` schedules per scenario and GC setting (default 150, a third from
//! a random scheduler, the rest from PCT with depth 3), `REGFS_SCHEDULE_SEED` (default 1).
//! A failing schedule is printed by shuttle with the scenario's name; replay it with
//! `REGFS_SCHEDULE_REPLAY='<schedule>' cargo test --features shuttle --test
//! online_schedules <scenario> -- --exact`.
#![cfg(feature = "shuttle")]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::online_run::{Core, broken_links};
use common::registry_sim::{
    PushError, RegistrySim, blob_data, image_manifest, index_manifest, layer_link, revision_link,
    tag_dir,
};
use regfs::daemon::online_run::{OnlineClaims, doomed_units, pause_and_install, start_recording};
use regfs::gc::sweep::{Order, execute_in};
use regfs::gc::{self, Claims, Unattended, Unclaimed};
use regfs::layout::Digest;
use regfs::policy::online::{Doomed, KeepAnswer, Sweeping, UnitKeeper};
use serde_json::json;
use shuttle::scheduler::{PctScheduler, RandomScheduler};
use shuttle::{Config, Runner};

/// Never reached under the scheduler (its waits do not time out); a bound for safety.
const WAIT: Duration = Duration::from_secs(30);

/// Where the scheduler may run another thread: an operation on one of its atomics, made
/// for each schedule. Not a yield: PCT lowers a yielding thread's priority, which would
/// let the others run to their end at once.
#[derive(Default)]
struct Switch(shuttle::sync::atomic::AtomicUsize);

impl Switch {
    fn here(&self) {
        self.0.load(shuttle::sync::atomic::Ordering::SeqCst);
    }
}

/// How the run collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Online,
    /// Online, this node a member of a cluster's run (`ARCHITECTURE.md`): it takes the
    /// planned doomed set while writes go on, hands over its record so far, then at the
    /// pause its record since, and installs the planned set with the collector's delta
    /// applied. Its own barrier guards the sweep here, so a delta missed or a record
    /// lost shows as a deleted blob a push was told it had.
    Member,
    /// As `Member`, the clients' requests all made between the mark and the pause (so
    /// only the records and the delta keep what they reach).
    MemberClientsInMark,
    ReadOnly,
}

/// The collector's settings of one exploration.
#[derive(Debug, Clone, Copy)]
struct Gc {
    mode: Mode,
    /// Blobs younger than this stay (0 or the default hour).
    min_age: Duration,
}

const GC_SETTINGS: [Gc; 6] = [
    Gc {
        mode: Mode::Online,
        min_age: Duration::ZERO,
    },
    Gc {
        mode: Mode::Online,
        min_age: Duration::from_secs(3600),
    },
    Gc {
        mode: Mode::Member,
        min_age: Duration::ZERO,
    },
    Gc {
        mode: Mode::MemberClientsInMark,
        min_age: Duration::ZERO,
    },
    Gc {
        mode: Mode::ReadOnly,
        min_age: Duration::ZERO,
    },
    Gc {
        mode: Mode::ReadOnly,
        min_age: Duration::from_secs(3600),
    },
];

/// Claims that let the scheduler run others before and after each unit.
struct Switching<'s, C>(C, &'s Switch);

impl<C: Claims> Claims for Switching<'_, C> {
    fn claim(&self, i: usize) -> bool {
        self.1.here();
        let ok = self.0.claim(i);
        self.1.here();
        ok
    }

    fn release(&self, i: usize) {
        self.0.release(i);
        self.1.here();
    }
}

/// The online sweep, one unit at a time, the scheduler free to switch around each; the
/// run ends with it.
fn sweep_online(core: &Core, plan: &gc::Plan, sweeping: Sweeping, point: &Switch) {
    execute_in(
        Order::Sequential,
        plan,
        &core.deleter,
        &Switching(OnlineClaims(&sweeping), point),
        &Unattended,
        &Unattended,
    )
    .expect("sweep");
    point.here();
    drop(sweeping);
    let online = core.online();
    assert!(online.hidden().is_empty() && !online.is_active());
}

/// A member's keeps in the cluster, with no other node: every unit asked is kept (the
/// sweep here is this node's own, claimed through its barrier).
#[derive(Debug)]
struct EveryUnitKept;

impl UnitKeeper for EveryUnitKept {
    fn keep(&self, _units: &[usize]) -> KeepAnswer {
        KeepAnswer::Kept
    }
}

/// One GC run with `--delete-untagged`, the scheduler free to switch between its phases
/// and around every unit of its sweep. Units run one at a time, in the plan's order.
/// `clients_done`: whether every client thread has returned.
fn collect(core: &Core, gc: Gc, point: &Switch, clients_done: &dyn Fn() -> bool) {
    let switch = || point.here();
    let opts = gc::Options {
        delete_untagged: true,
        min_age: gc.min_age,
        ..Default::default()
    };
    let mark = || match gc::mark(&core.store, &opts, &Unattended, &Unattended) {
        Ok(gc::Marked::Planned(p)) => p,
        Ok(gc::Marked::Interrupted(_)) => panic!("an unattended mark was interrupted"),
        Err(e) => panic!("mark failed: {e}"),
    };
    match gc.mode {
        Mode::Online => {
            let online = core.online();
            let recording = start_recording(&core.gate, online, WAIT).unwrap();
            switch();
            let planned = mark();
            switch();
            let (sweeping, _) =
                pause_and_install(&core.gate, recording, &planned.plan, WAIT).expect("paused");
            switch();
            sweep_online(core, &planned.plan, sweeping, point);
        }
        Mode::Member | Mode::MemberClientsInMark => {
            let online = core.online();
            let mut recording = start_recording(&core.gate, online, WAIT).unwrap();
            switch();
            let planned = mark();
            if gc.mode == Mode::MemberClientsInMark {
                while !clients_done() {
                    shuttle::thread::yield_now();
                }
            }
            // The collector's doomed set (on another node in a cluster: here only the
            // records it folds in are this node's).
            let mut collector = Doomed::new(doomed_units(&planned.plan, &recording));
            let (units, taken) = collector.published();
            let mut held = Doomed::from_published(units, &taken);
            switch();
            // Writes go on; the record so far is handed over with word that the planned
            // set is held.
            let early = recording.take_record();
            recording.absorb_record(&early, &mut collector).unwrap();
            switch();
            let paused = core.gate.pause_writes(WAIT).expect("paused");
            let late = recording.take_record();
            recording.absorb_record(&late, &mut collector).unwrap();
            let delta: Vec<usize> = (collector.taken_back().into_iter())
                .filter(|i| !taken.contains(i))
                .collect();
            held.settle_published(&delta);
            let sweeping = recording
                .install_member(held, &paused, Arc::new(EveryUnitKept))
                .expect("installed");
            drop(paused);
            switch();
            sweep_online(core, &planned.plan, sweeping, point);
        }
        Mode::ReadOnly => {
            core.gate.close_for_writes(WAIT);
            switch();
            let planned = mark();
            switch();
            execute_in(
                Order::Sequential,
                &planned.plan,
                &core.deleter,
                &Switching(Unclaimed, point),
                &Unattended,
                &Unattended,
            )
            .expect("sweep");
            switch();
            core.gate.reopen_for_writes();
        }
    }
}

/// An image's blobs, made distinct by `salt`.
struct Image {
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
}

impl Image {
    fn new(salt: &str, layers: usize) -> Image {
        Image {
            config: format!("config {salt}").into_bytes(),
            layers: (0..layers)
                .map(|i| format!("layer {i} of {salt}").into_bytes())
                .collect(),
        }
    }

    fn config_digest(&self) -> Digest {
        Digest::of(&self.config)
    }

    fn layer_digests(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| Digest::of(l)).collect()
    }

    fn manifest(&self) -> Vec<u8> {
        image_manifest(&self.config_digest(), &self.layer_digests())
    }

    fn refs(&self) -> Vec<Digest> {
        let mut r = self.layer_digests();
        r.push(self.config_digest());
        r
    }
}

/// A client's push as skopeo makes it: blobs the repository lacks, then the manifest.
fn push(
    reg: &RegistrySim<'_>,
    repo: &str,
    img: &Image,
    tag: Option<&str>,
) -> Result<Digest, PushError> {
    for l in &img.layers {
        reg.push_blob(repo, l)?;
    }
    reg.push_blob(repo, &img.config)?;
    reg.put_manifest(repo, &img.manifest(), &img.refs(), tag)
}

/// A signature of `subject`: an OCI manifest with a `subject`, pushed by digest.
fn push_referrer(
    reg: &RegistrySim<'_>,
    repo: &str,
    subject: &Digest,
    salt: &str,
) -> Result<Digest, PushError> {
    let config = reg.push_blob(repo, b"{}")?;
    let payload = reg.push_blob(repo, format!("signature {salt}").as_bytes())?;
    let bytes = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config.to_string(), "size": 2},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": payload.to_string(), "size": 1}],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject.to_string(), "size": 1}
    }))
    .unwrap();
    reg.put_manifest(repo, &bytes, &[config, payload], None)
}

/// What a client was told succeeded, and must therefore be served.
#[derive(Default)]
struct Promises {
    /// (repo, tag) -> the manifest it was last set to by a successful push.
    tags: BTreeMap<(String, String), Digest>,
    /// (repo, manifest) pushed by digest with success (and not deleted since).
    revisions: Vec<(String, Digest)>,
    /// Tags a client deleted (applied before its `tags` when its promises are merged).
    untagged: Vec<(String, String)>,
}

impl Promises {
    fn tag(&mut self, repo: &str, tag: &str, d: Digest) {
        self.tags.insert((repo.into(), tag.into()), d);
    }

    fn untag(&mut self, repo: &str, tag: &str) {
        self.tags.remove(&(repo.into(), tag.into()));
        self.untagged.push((repo.into(), tag.into()));
    }

    fn merge(&mut self, mine: Promises) {
        for k in &mine.untagged {
            self.tags.remove(k);
        }
        self.tags.extend(mine.tags);
        self.revisions.extend(mine.revisions);
    }
}

/// Everything a pull of manifest `d` in `repo` needs, or why it would fail.
fn pullable(root: &Path, repo: &str, d: &Digest) -> Result<(), String> {
    let link = root.join(revision_link(repo, d));
    match std::fs::read(&link) {
        Ok(b) if b == d.to_string().as_bytes() => {}
        other => return Err(format!("{repo}@{d}: revision link {other:?}")),
    }
    let bytes = std::fs::read(root.join(blob_data(d)))
        .map_err(|e| format!("{repo}@{d}: manifest blob: {e}"))?;
    let m = regfs::manifest::parse(&bytes, d).map_err(|e| format!("{repo}@{d}: {e}"))?;
    for b in &m.blobs {
        if !root.join(blob_data(b)).is_file() {
            return Err(format!("{repo}@{d}: blob {b} has no data"));
        }
        if !root.join(layer_link(repo, b)).is_file() {
            return Err(format!("{repo}@{d}: blob {b} has no _layers link"));
        }
    }
    for c in &m.children {
        pullable(root, repo, c)?;
    }
    Ok(())
}

fn current_tag(root: &Path, repo: &str, tag: &str) -> Option<Digest> {
    let b = std::fs::read(root.join(format!("{}/current/link", tag_dir(repo, tag)))).ok()?;
    regfs::layout::parse_link(&b).ok()
}

/// The store after a schedule: every promise kept, no link to nothing, every tag's
/// manifest served.
fn check(core: &Core, promises: &Promises) {
    let root = &core.root;
    for ((repo, tag), d) in &promises.tags {
        assert_eq!(
            current_tag(root, repo, tag).as_ref(),
            Some(d),
            "{repo}:{tag} was pushed as {d} with success"
        );
        if let Err(why) = pullable(root, repo, d) {
            panic!("{repo}:{tag} was pushed with success and cannot be pulled: {why}");
        }
    }
    for (repo, d) in &promises.revisions {
        if let Err(why) = pullable(root, repo, d) {
            panic!("{repo}@{d} was pushed with success and cannot be pulled: {why}");
        }
    }
    let broken = broken_links(root);
    assert!(broken.is_empty(), "links naming nothing: {broken:?}");
}

/// A registry client thread's work: its pushes, and what it was told succeeded.
type Client = Box<dyn FnOnce(&RegistrySim<'_>, &mut Promises) + Send>;

/// Sets up the store (`seed`, run without switches), then runs `clients` and one GC run
/// as threads of the scheduler, then checks the store.
fn scenario(gc: Gc, seed: fn(&RegistrySim<'_>, &mut Promises), clients: Vec<Client>) {
    let core = Arc::new(Core::in_memory());
    let mut promises = Promises::default();
    seed(&RegistrySim::new(&core.fs), &mut promises);
    let promises = Arc::new(std::sync::Mutex::new(promises));
    let point = Arc::new(Switch::default());
    let clients_left = Arc::new(shuttle::sync::atomic::AtomicUsize::new(clients.len()));
    let mut threads = Vec::new();
    for (n, client) in clients.into_iter().enumerate() {
        let core = core.clone();
        let promises = promises.clone();
        let point = point.clone();
        let left = clients_left.clone();
        threads.push(shuttle::thread::spawn(move || {
            let step = || point.here();
            let reg = RegistrySim::stepped(&core.fs, &step, 1000 * (n as u64 + 1));
            let mut mine = Promises::default();
            client(&reg, &mut mine);
            promises.lock().unwrap().merge(mine);
            left.fetch_sub(1, shuttle::sync::atomic::Ordering::SeqCst);
        }));
    }
    {
        let core = core.clone();
        threads.push(shuttle::thread::spawn(move || {
            let done = || clients_left.load(shuttle::sync::atomic::Ordering::SeqCst) == 0;
            collect(&core, gc, &point, &done)
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    check(&core, &promises.lock().unwrap());
}

/// Pushes with up to `tries` attempts, as a client retries a 500: the digest if one
/// succeeded.
fn with_retries<T>(tries: usize, mut f: impl FnMut() -> Result<T, PushError>) -> Option<T> {
    (0..tries).find_map(|_| f().ok())
}

static EXPLORED: AtomicUsize = AtomicUsize::new(0);

/// Explores `REGFS_SCHEDULES` schedules of `test` under each GC setting (or replays one).
fn explore(name: &str, test: impl Fn(Gc) + Send + Sync + Clone + 'static) {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let schedules = env("REGFS_SCHEDULES", 150) as usize;
    let seed = env("REGFS_SCHEDULE_SEED", 1);
    for gc in GC_SETTINGS {
        eprintln!("{name}: {gc:?}");
        let t = test.clone();
        let f = move || t(gc);
        if let Ok(schedule) = std::env::var("REGFS_SCHEDULE_REPLAY") {
            shuttle::replay(f, &schedule);
            continue;
        }
        let random = RandomScheduler::new_from_seed(seed, schedules / 3);
        Runner::new(random, Config::new()).run(f.clone());
        let pct = PctScheduler::new_from_seed(seed, 3, schedules - schedules / 3);
        Runner::new(pct, Config::new()).run(f);
        EXPLORED.fetch_add(schedules, Ordering::Relaxed);
    }
    eprintln!(
        "{name}: {schedules} schedules under each of {} GC settings ({} in this process so far)",
        GC_SETTINGS.len(),
        EXPLORED.load(Ordering::Relaxed)
    );
}

fn nothing(_: &RegistrySim<'_>, _: &mut Promises) {}

/// `app:old` and `lib:base`, pushed before the clients start.
fn two_images(reg: &RegistrySim<'_>, p: &mut Promises) {
    let old = push(reg, "app", &Image::new("old", 1), Some("old")).unwrap();
    p.tag("app", "old", old);
    let base = push(reg, "lib", &Image::new("base", 2), Some("base")).unwrap();
    p.tag("lib", "base", base);
}

/// Finding 1 of issue 18: a manifest PUT (its blob, revision link, tag index link,
/// current link) of an image whose blobs were pushed just before, with a whole run
/// between any two of its filesystem requests.
#[test]
fn a_manifest_put_split_by_a_run() {
    explore("a_manifest_put_split_by_a_run", |gc| {
        scenario(
            gc,
            |reg, p| {
                two_images(reg, p);
                let img = Image::new("new", 2);
                for l in &img.layers {
                    reg.push_blob("app", l).unwrap();
                }
                reg.push_blob("app", &img.config).unwrap();
            },
            vec![Box::new(|reg, p| {
                let img = Image::new("new", 2);
                let put = || reg.put_manifest("app", &img.manifest(), &img.refs(), Some("v1"));
                if let Some(d) = with_retries(2, put) {
                    p.tag("app", "v1", d);
                }
            })],
        )
    });
}

/// The same with the whole push (blob uploads first), and a second client pushing
/// another tag of the same repository.
#[test]
fn two_pushes_during_a_run() {
    explore("two_pushes_during_a_run", |gc| {
        let client = |salt: &'static str, tag: &'static str| -> Client {
            Box::new(move |reg, p| {
                let img = Image::new(salt, 1);
                if let Some(d) = with_retries(2, || push(reg, "app", &img, Some(tag))) {
                    p.tag("app", tag, d);
                }
            })
        };
        scenario(
            gc,
            two_images,
            vec![client("one", "v1"), client("two", "v2")],
        )
    });
}

/// A tag moved onto a manifest first pushed by digest (its revision untagged until the
/// tag lands), while another client pulls the tag being moved.
#[test]
fn a_tag_moved_onto_a_manifest_pushed_by_digest() {
    explore("a_tag_moved_onto_a_manifest_pushed_by_digest", |gc| {
        scenario(
            gc,
            two_images,
            vec![
                Box::new(|reg, p| {
                    let img = Image::new("next", 1);
                    if with_retries(2, || push(reg, "app", &img, None)).is_none() {
                        return;
                    }
                    // Untagged until this lands, and unpromised: the run may take it.
                    let tagged = with_retries(2, || {
                        reg.put_manifest("app", &img.manifest(), &img.refs(), Some("old"))
                    });
                    if let Some(d) = tagged {
                        p.tag("app", "old", d);
                    }
                }),
                Box::new(|reg, _| {
                    for _ in 0..2 {
                        if let Some(d) =
                            reg.read_link(&format!("{}/current/link", tag_dir("app", "old")))
                        {
                            reg.read_link(&revision_link("app", &d));
                        }
                    }
                }),
            ],
        )
    });
}

/// Delete by digest, then the same image pushed again at once.
#[test]
fn a_delete_by_digest_and_an_immediate_re_push() {
    explore("a_delete_by_digest_and_an_immediate_re_push", |gc| {
        scenario(
            gc,
            |reg, p| {
                let d = push(reg, "app", &Image::new("again", 1), Some("v1")).unwrap();
                p.tag("app", "v1", d);
            },
            vec![Box::new(|reg, p| {
                let img = Image::new("again", 1);
                let d = Digest::of(&img.manifest());
                reg.delete_manifest("app", &d, &["v1"]);
                p.untag("app", "v1");
                if let Some(d) = with_retries(2, || push(reg, "app", &img, Some("v1"))) {
                    p.tag("app", "v1", d);
                }
            })],
        )
    });
}

/// A layer mounted from another repository (only a `_layers` link is written) while
/// that repository's image is deleted, then a manifest using it.
#[test]
fn a_cross_repository_mount_while_the_source_goes() {
    explore("a_cross_repository_mount_while_the_source_goes", |gc| {
        scenario(
            gc,
            two_images,
            vec![
                Box::new(|reg, p| {
                    let base = Image::new("base", 2);
                    let mine = Image {
                        config: b"config of a copy".to_vec(),
                        layers: base.layers.clone(),
                    };
                    let pushed = with_retries(2, || {
                        for l in mine.layer_digests() {
                            if !reg.blob_exists("app", &l) {
                                // POST ?mount=<l>&from=lib: a link, if lib serves it.
                                if reg.blob_exists("lib", &l) {
                                    reg.put_content(
                                        &layer_link("app", &l),
                                        l.to_string().as_bytes(),
                                    )?;
                                } else {
                                    reg.upload("app", &base.layers[0])?;
                                    reg.upload("app", &base.layers[1])?;
                                }
                            }
                        }
                        reg.push_blob("app", &mine.config)?;
                        reg.put_manifest("app", &mine.manifest(), &mine.refs(), Some("copy"))
                    });
                    if let Some(d) = pushed {
                        p.tag("app", "copy", d);
                    }
                }),
                Box::new(|reg, p| {
                    let d = Digest::of(&Image::new("base", 2).manifest());
                    reg.delete_manifest("lib", &d, &["base"]);
                    p.untag("lib", "base");
                }),
            ],
        )
    });
}

/// A multi-arch index: two child manifests by digest (untagged until the index is),
/// then the index by tag.
#[test]
fn an_index_and_its_children() {
    explore("an_index_and_its_children", |gc| {
        scenario(
            gc,
            nothing,
            vec![Box::new(|reg, p| {
                let amd = Image::new("amd64", 1);
                let arm = Image::new("arm64", 1);
                let pushed = with_retries(2, || {
                    let a = push(reg, "multi", &amd, None)?;
                    let b = push(reg, "multi", &arm, None)?;
                    reg.put_manifest("multi", &index_manifest(&[a, b]), &[], Some("latest"))
                });
                if let Some(d) = pushed {
                    p.tag("multi", "latest", d);
                }
            })],
        )
    });
}

/// A signature (a referrer, untagged) pushed for a tagged image.
#[test]
fn a_signature_of_a_tagged_image() {
    explore("a_signature_of_a_tagged_image", |gc| {
        scenario(
            gc,
            two_images,
            vec![Box::new(|reg, p| {
                let subject = Digest::of(&Image::new("old", 1).manifest());
                if let Some(d) = with_retries(2, || push_referrer(reg, "app", &subject, "s1")) {
                    p.revisions.push(("app".into(), d));
                }
            })],
        )
    });
}

/// Runs back to back on one node (a schedule with no gap, or a cluster node that collects
/// right after its part in another node's run ended): the run that ends (its sweep
/// finished) must not end the phase of a run started meanwhile, or that run would
/// record nothing and its mark would take what is pushed during it for garbage.
#[test]
fn a_run_started_as_the_last_one_ends_records_from_its_start() {
    explore("a run started as the last one ends", |_gc| {
        let core = Arc::new(Core::in_memory());
        let online = core.online();
        let recording = start_recording(&core.gate, online, WAIT).unwrap();
        let (sweeping, _) =
            pause_and_install(&core.gate, recording, &gc::Plan::default(), WAIT).expect("paused");
        let ending = shuttle::thread::spawn(move || {
            sweeping.finish();
        });
        let next = {
            let core = core.clone();
            shuttle::thread::spawn(move || {
                loop {
                    match core.online().start_recording() {
                        Ok(recording) => break recording,
                        Err(_) => shuttle::thread::yield_now(),
                    }
                }
            })
        };
        ending.join().unwrap();
        let recording = next.join().unwrap();
        assert!(
            core.online().is_active(),
            "the run that ended ended the next one's recording"
        );
        drop(recording);
    });
}

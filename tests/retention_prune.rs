//! The pruning stage in-process, on stores built on disk: a tag written after the
//! policies judged it is kept, a dry run lists exactly what the real run prunes, a
//! manifest left untagged is kept for the grace (even with --delete-untagged) and
//! collected after it, and a pruned tag is restored on its manifest.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use common::store::StoreBuilder;
use regfs::gc::{Deleter, Removed};
use regfs::layout::{Digest, Store};
use regfs::policy::access::now_millis;
use regfs::retention::prune::{PruneOutcome, prune, restore};
use regfs::retention::{AccessTimes, Policy, RepoGlob, Rules};
use regfs::runtime::compose::{OpenedStore, SweepDeleter};

const DAY: Duration = Duration::from_secs(86400);

fn set_mtime(path: &Path, ago: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - ago).unwrap();
}

fn current(root: &Path, repo: &str, tag: &str) -> PathBuf {
    root.join("docker/registry/v2/repositories")
        .join(repo)
        .join("_manifests/tags")
        .join(tag)
        .join("current/link")
}

/// Keeps tags pushed within a day in `ci/*`.
fn rules() -> Rules {
    Rules {
        policies: vec![Policy {
            repositories: vec![RepoGlob::new("ci/*").unwrap()],
            keep_pushed_within: Some(DAY),
            ..Policy::default()
        }],
        dry_run: false,
        grace: DAY,
    }
}

/// ci/app: `old` and `older` (pushed days ago, each on its own image), `fresh`; lib/x:
/// `old` (no policy matches it).
fn store(root: &Path) -> (StoreBuilder, Digest, Digest) {
    let b = StoreBuilder::new(root);
    let l1 = b.blob(b"layer one");
    let l2 = b.blob(b"layer two");
    let (m1, _) = b.image("ci/app", &[l1], "one");
    let (m2, _) = b.image("ci/app", &[l2], "two");
    b.tag("ci/app", "old", &m1);
    b.tag("ci/app", "older", &m2);
    b.tag("ci/app", "fresh", &m2);
    let (mx, _) = b.image("lib/x", &[l1], "x");
    b.tag("lib/x", "old", &mx);
    set_mtime(&current(root, "ci/app", "old"), 3 * DAY);
    set_mtime(&current(root, "ci/app", "older"), 4 * DAY);
    set_mtime(&current(root, "lib/x", "old"), 9 * DAY);
    (b, m1, m2)
}

fn names(o: &PruneOutcome) -> Vec<String> {
    let mut v: Vec<String> = o
        .pruned
        .iter()
        .map(|p| format!("{}:{}", p.repository, p.tag))
        .collect();
    v.sort();
    v
}

fn run(
    root: &Path,
    deleter: &dyn Deleter,
    expired: &[regfs::retention::prune::PrunedTag],
    dry: bool,
) -> PruneOutcome {
    let store = Store::open(root).unwrap();
    prune(
        &store,
        &rules(),
        &AccessTimes::default(),
        now_millis(),
        deleter,
        expired,
        dry,
    )
    .unwrap()
}

/// Rewrites a tag's current link (a push landing) before its first deletion.
struct PushDuring {
    inner: SweepDeleter,
    link: PathBuf,
    done: AtomicBool,
}

impl Deleter for PushDuring {
    fn remove_tree(&self, rel: &Path) -> Result<Removed, regfs::error::FsError> {
        if !self.done.swap(true, Ordering::SeqCst) {
            let bytes = std::fs::read(&self.link).unwrap();
            std::fs::write(&self.link, bytes).unwrap();
        }
        self.inner.remove_tree(rel)
    }

    fn remove_empty_dir(&self, rel: &Path) -> Result<bool, regfs::error::FsError> {
        self.inner.remove_empty_dir(rel)
    }
}

#[test]
fn a_tag_written_after_it_was_judged_is_kept() {
    let dir = common::tempdir();
    let root = dir.path();
    store(root);
    // `old` is removed first (names are sorted); `older` is pushed again meanwhile.
    let deleter = PushDuring {
        inner: OpenedStore::open(root).unwrap().deleter(),
        link: current(root, "ci/app", "older"),
        done: AtomicBool::new(false),
    };
    let o = run(root, &deleter, &[], false);
    assert_eq!(names(&o), ["ci/app:old"]);
    assert_eq!(o.kept_written, ["ci/app:older"]);
    assert!(current(root, "ci/app", "older").exists());
    assert!(!current(root, "ci/app", "old").exists());
}

#[test]
fn a_dry_run_lists_exactly_what_the_real_run_prunes() {
    let dir = common::tempdir();
    let root = dir.path();
    store(root);
    let deleter = OpenedStore::open(root).unwrap().deleter();
    let dry = run(root, &deleter, &[], true);
    assert_eq!(names(&dry), ["ci/app:old", "ci/app:older"]);
    assert!(current(root, "ci/app", "old").exists(), "a dry run deleted");
    let real = run(root, &deleter, &[], false);
    assert_eq!(names(&real), names(&dry));
    for t in ["old", "older"] {
        let tag_dir = current(root, "ci/app", t);
        assert!(!tag_dir.parent().unwrap().parent().unwrap().exists(), "{t}");
    }
    assert!(current(root, "ci/app", "fresh").exists());
    assert!(
        current(root, "lib/x", "old").exists(),
        "no policy matches lib/x"
    );
    // `old` named m1, which no kept tag of ci/app names; `older` named m2, still `fresh`.
    let last: Vec<bool> = real.pruned.iter().map(|p| p.last_tag).collect();
    assert_eq!(last, [true, false]);
}

#[test]
fn the_grace_keeps_an_untagged_manifest_then_its_space_comes_back() {
    let dir = common::tempdir();
    let root = dir.path();
    let (b, m1, _) = store(root);
    let l1 = Digest::of(b"layer one");
    // lib/x keeps layer one; the config of m1 is ci/app's own.
    let deleter = OpenedStore::open(root).unwrap().deleter();
    let o = run(root, &deleter, &[], false);
    let keep: Vec<_> = o
        .pruned
        .iter()
        .filter(|p| p.last_tag)
        .map(|p| {
            (
                regfs::layout::RepoName::new(&p.repository).unwrap(),
                p.digest().unwrap(),
            )
        })
        .collect();
    let opts = regfs::gc::Options {
        delete_untagged: true,
        keep_revisions: keep,
        ..Default::default()
    };
    common::store::collect(root, &opts).unwrap();
    assert!(
        b.revision_link_path("ci/app", &m1).exists(),
        "collected within the grace"
    );
    assert!(b.has_blob(&m1));
    // Restored within the grace: the tag names m1 again.
    restore(root, "ci/app", "old", &m1).unwrap();
    assert_eq!(
        std::fs::read_to_string(current(root, "ci/app", "old")).unwrap(),
        m1.to_string()
    );
    std::fs::remove_dir_all(
        current(root, "ci/app", "old")
            .parent()
            .unwrap()
            .parent()
            .unwrap(),
    )
    .unwrap();
    // The grace has passed: the revision link goes, and the run collects m1.
    let later = run(root, &deleter, &o.pruned, false);
    assert_eq!(later.expired, [format!("ci/app@{m1}")]);
    let opts = regfs::gc::Options {
        delete_untagged: true,
        ..Default::default()
    };
    common::store::collect(root, &opts).unwrap();
    assert!(
        !b.has_blob(&m1),
        "the pruned manifest's space did not come back"
    );
    assert!(b.has_blob(&l1), "lib/x still uses layer one");
}

#[test]
fn an_expired_prune_whose_manifest_is_tagged_again_is_kept() {
    let dir = common::tempdir();
    let root = dir.path();
    let (b, m1, _) = store(root);
    let deleter = OpenedStore::open(root).unwrap().deleter();
    let o = run(root, &deleter, &[], false);
    b.tag("ci/app", "again", &m1);
    let later = run(root, &deleter, &o.pruned, false);
    assert!(later.expired.is_empty());
    assert!(b.revision_link_path("ci/app", &m1).exists());
}

#[test]
fn an_expired_prune_whose_manifest_a_tagged_index_lists_is_kept() {
    let dir = common::tempdir();
    let root = dir.path();
    let b = StoreBuilder::new(root);
    let (child, _) = b.image("ci/multi", &[b.blob(b"arm layer")], "arm");
    let index = b.index("ci/multi", &[child]);
    b.tag("ci/multi", "arm", &child);
    b.tag("ci/multi", "all", &index);
    set_mtime(&current(root, "ci/multi", "arm"), 5 * DAY);
    let deleter = OpenedStore::open(root).unwrap().deleter();
    let o = run(root, &deleter, &[], false);
    assert_eq!(names(&o), ["ci/multi:arm"]);
    assert!(o.pruned[0].last_tag);
    let later = run(root, &deleter, &o.pruned, false);
    assert!(later.expired.is_empty(), "{:?}", later.expired);
    assert!(b.revision_link_path("ci/multi", &child).exists());
}

/// Another node's pulls, as a cluster's collector reads them; or none to be had.
#[derive(Debug)]
struct OtherNodes(Result<AccessTimes, String>);

impl regfs::daemon::access_share::AccessShare for OtherNodes {
    fn publish(
        &self,
        _repos: &[(String, regfs::retention::times::RepoTimes)],
    ) -> Result<(), String> {
        Ok(())
    }

    fn others(&self) -> Result<AccessTimes, String> {
        self.0.clone()
    }
}

/// The daemon's retention state over a fresh state directory, sharing with `others`.
fn shared_state(dir: &Path, others: OtherNodes) -> regfs::daemon::retention_state::RetentionState {
    use regfs::daemon::access_journal::AccessJournal;
    let state =
        std::sync::Arc::new(regfs::state_dir::StateDir::prepare(&dir.join("state")).unwrap());
    let journal = AccessJournal::open(
        state.clone(),
        regfs::policy::access::AccessRecorder::new(),
        true,
    )
    .unwrap();
    journal.share_with(std::sync::Arc::new(others));
    regfs::daemon::retention_state::RetentionState::new(std::sync::Arc::new(journal), state)
}

/// Keeps tags pulled within a day in `ci/*`.
fn pulled_rules() -> Rules {
    Rules {
        policies: vec![Policy {
            repositories: vec![RepoGlob::new("ci/*").unwrap()],
            keep_pulled_within: Some(DAY),
            ..Policy::default()
        }],
        dry_run: false,
        grace: DAY,
    }
}

#[test]
fn a_tag_another_node_served_is_kept_and_nothing_is_pruned_without_the_others_times() {
    let dir = common::tempdir();
    let root = dir.path().join("store");
    store(&root);
    let deleter = OpenedStore::open(&root).unwrap().deleter();
    let st = Store::open(&root).unwrap();

    // The other nodes' times cannot be read: nothing is pruned on this node's alone.
    let blind = shared_state(dir.path(), OtherNodes(Err("etcd: unreachable".into())));
    let stage = blind.stage(&st, &deleter, &pulled_rules(), false);
    assert!(stage.outcome.pruned.is_empty(), "{:?}", stage.outcome);
    assert!(
        stage.outcome.warnings[0].contains("other nodes' access times cannot be read"),
        "{:?}",
        stage.outcome.warnings
    );
    assert!(current(&root, "ci/app", "old").exists());

    // Another node served ci/app:fresh an hour ago: kept; the rest of ci/app goes.
    let mut theirs = AccessTimes::default();
    theirs.apply(
        &regfs::policy::access::Accessed::TagPulled {
            repo: "ci/app".into(),
            tag: "fresh".into(),
        },
        now_millis() - 3_600_000,
    );
    let shared = shared_state(dir.path(), OtherNodes(Ok(theirs)));
    let stage = shared.stage(&st, &deleter, &pulled_rules(), false);
    assert_eq!(names(&stage.outcome), ["ci/app:old", "ci/app:older"]);
    assert!(current(&root, "ci/app", "fresh").exists());
}

#[test]
fn without_access_times_rules_on_pulls_prune_nothing_and_say_why() {
    use regfs::daemon::access_journal::AccessJournal;
    let dir = common::tempdir();
    let root = dir.path().join("store");
    store(&root);
    let deleter = OpenedStore::open(&root).unwrap().deleter();
    let st = Store::open(&root).unwrap();
    let state = std::sync::Arc::new(
        regfs::state_dir::StateDir::prepare(&dir.path().join("state")).unwrap(),
    );
    // The mount notes no pulls (`access_times = false`): every tag would look never
    // pulled, so a rule on pulls would prune what is pulled every minute.
    let journal = AccessJournal::open(
        state.clone(),
        regfs::policy::access::AccessRecorder::new(),
        false,
    )
    .unwrap();
    let retention =
        regfs::daemon::retention_state::RetentionState::new(std::sync::Arc::new(journal), state);
    let stage = retention.stage(&st, &deleter, &pulled_rules(), false);
    assert!(stage.outcome.pruned.is_empty(), "{:?}", stage.outcome);
    assert!(
        stage.outcome.warnings[0].contains("access_times = false"),
        "{:?}",
        stage.outcome.warnings
    );
    assert!(current(&root, "ci/app", "old").exists());
    // Rules on pushes alone still prune.
    let stage = retention.stage(&st, &deleter, &rules(), false);
    assert!(!stage.outcome.pruned.is_empty(), "{:?}", stage.outcome);
}

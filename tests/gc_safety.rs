//! The collector fails safe: what it does not understand it never deletes, and it says
//! which file and why. Stores are built on disk; no mount needed.
mod common;

use std::fs;
use std::path::Path;

use common::store::{StoreBuilder, collect, plan};
use regfs::gc::{GcError, Options};
use regfs::layout::Digest;

fn untagged() -> Options {
    Options {
        delete_untagged: true,
        ..Options::default()
    }
}

/// One tagged image, one untagged image, one garbage blob.
fn basic(root: &Path) -> (StoreBuilder, Digest, Digest, Digest, Digest) {
    let s = StoreBuilder::new(root);
    let shared = s.blob(b"shared layer");
    let only_old = s.blob(b"layer of the untagged image");
    let (tagged, _) = s.image("team/app", &[shared], "tagged");
    let (old, _) = s.image("team/app", &[shared, only_old], "old");
    s.tag("team/app", "latest", &tagged);
    let garbage = s.blob(b"uploaded, never referenced");
    s.layer_link("team/app", &garbage);
    (s, tagged, old, only_old, garbage)
}

#[test]
fn default_mode_keeps_every_revision_and_deletes_unreferenced_blobs() {
    let dir = common::tempdir();
    let (s, tagged, old, only_old, garbage) = basic(dir.path());
    let r = collect(dir.path(), &Options::default()).unwrap();
    assert_eq!(r.counts.blobs_deleted, 1, "{r}");
    assert!(!s.has_blob(&garbage));
    assert!(
        !s.repo("team/app/_layers/sha256")
            .join(garbage.hex())
            .exists(),
        "its layer link goes too"
    );
    for d in [tagged, old, only_old] {
        assert!(s.has_blob(&d));
    }
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn delete_untagged_removes_the_untagged_revision_and_what_only_it_used() {
    let dir = common::tempdir();
    let (s, tagged, old, only_old, _) = basic(dir.path());
    let r = collect(dir.path(), &untagged()).unwrap();
    assert_eq!(r.counts.manifests_removed, 1, "{r}");
    assert!(!s.has_blob(&old) && !s.has_blob(&only_old));
    assert!(
        !s.repo("team/app/_manifests/revisions/sha256")
            .join(old.hex())
            .exists()
    );
    assert!(s.has_blob(&tagged));
}

#[test]
fn a_damaged_revision_link_keeps_the_manifest_its_directory_names() {
    for damage in [&b""[..], b"sha256:0000\n", b"garbage garbage"] {
        let dir = common::tempdir();
        let (s, _, old, only_old, _) = basic(dir.path());
        fs::write(s.revision_link_path("team/app", &old), damage).unwrap();
        let r = collect(dir.path(), &Options::default()).unwrap();
        assert!(
            s.has_blob(&old) && s.has_blob(&only_old),
            "damage {damage:?}: {r}"
        );
        assert!(
            r.warnings
                .iter()
                .any(|w| w.path.ends_with(&format!("{}/link", old.hex()))
                    && w.message.contains("damaged")),
            "the warning names the file: {:?}",
            r.warnings
        );
    }
}

#[test]
fn a_damaged_tag_link_keeps_the_whole_tag_history() {
    let dir = common::tempdir();
    let (s, tagged, old, only_old, _) = basic(dir.path());
    // `latest` once pointed at `old` too.
    s.tag("team/app", "latest", &old);
    s.tag("team/app", "latest", &tagged);
    fs::write(
        s.repo("team/app/_manifests/tags/latest/current/link"),
        b"sha256:short",
    )
    .unwrap();
    let r = collect(dir.path(), &untagged()).unwrap();
    assert_eq!(r.counts.manifests_removed, 0, "{r}");
    assert!(s.has_blob(&old) && s.has_blob(&only_old) && s.has_blob(&tagged));
    assert!(
        r.warnings
            .iter()
            .any(|w| w.path.ends_with("tags/latest/current/link"))
    );
}

#[test]
fn an_unknown_manifest_keeps_its_repository_whole_and_names_the_manifest() {
    let dir = common::tempdir();
    let (s, _, _, _, garbage) = basic(dir.path());
    let weird = s.manifest("team/app", serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.future.manifest+json", "parts": [garbage.to_string()]}));
    let before = s.listing();
    let r = collect(dir.path(), &Options::default()).unwrap();
    assert_eq!(s.listing(), before, "nothing of team/app deleted: {r}");
    assert!(
        r.warnings
            .iter()
            .any(|w| w.path.ends_with(&format!("{}/data", weird.hex()))
                && w.message.contains("team/app")
                && w.message.contains("unknown media type")
                && w.message.contains("kept whole")),
        "{:?}",
        r.warnings
    );

    // --keep-unknown keeps every blob it names and collects the rest of the repository.
    let r = collect(
        dir.path(),
        &Options {
            keep_unknown: true,
            ..Options::default()
        },
    )
    .unwrap();
    assert!(s.has_blob(&garbage), "named by the unknown manifest: kept");
    assert!(s.has_blob(&weird));
    assert_eq!(r.counts.blobs_deleted, 0, "{r}");
}

#[test]
fn a_manifest_that_does_not_match_its_digest_keeps_its_repository_whole() {
    let dir = common::tempdir();
    let (s, tagged, _, _, garbage) = basic(dir.path());
    let data = s.blob_dir(&tagged).join("data");
    let mut bytes = fs::read(&data).unwrap();
    bytes.push(b' ');
    fs::write(&data, bytes).unwrap();
    let r = collect(
        dir.path(),
        &Options {
            keep_unknown: true,
            ..Options::default()
        },
    )
    .unwrap();
    assert!(
        r.warnings
            .iter()
            .any(|w| w.message.contains("does not match its digest")),
        "{:?}",
        r.warnings
    );
    assert!(s.has_blob(&garbage), "nothing of team/app deleted: {r}");
}

#[test]
fn a_repository_with_revisions_but_no_tags_directory_is_normal() {
    let dir = common::tempdir();
    let s = StoreBuilder::new(dir.path());
    let l = s.blob(b"l");
    let (m, _) = s.image("bydigest", &[l], "x");
    assert!(!s.repo("bydigest/_manifests/tags").exists());
    let r = collect(dir.path(), &Options::default()).unwrap();
    assert_eq!(r.counts.blobs_deleted, 0);
    let r = collect(dir.path(), &untagged()).unwrap();
    assert_eq!(r.counts.manifests_removed, 1, "{r}");
    assert!(!s.has_blob(&m) && !s.has_blob(&l));
}

#[test]
fn links_in_the_store_are_never_followed_and_keep_what_they_may_stand_for() {
    let outside = common::tempdir();
    fs::write(outside.path().join("precious"), b"x").unwrap();
    let dir = common::tempdir();
    let (s, ..) = basic(dir.path());
    // A link among the blobs: not understood, left alone, reported.
    std::os::unix::fs::symlink(outside.path(), s.v2().join("blobs/sha256/zz")).unwrap();
    let r = collect(dir.path(), &Options::default()).unwrap();
    assert!(
        r.warnings
            .iter()
            .any(|w| w.path.ends_with("blobs/sha256/zz")),
        "{:?}",
        r.warnings
    );
    assert!(outside.path().join("precious").exists());
    // A link out of the repository tree could stand for a repository naming any blob:
    // no blob is deleted while it is there, and it says so (tests/gc_strays.rs).
    std::os::unix::fs::symlink(outside.path(), s.v2().join("repositories/linked")).unwrap();
    let garbage = s.blob(b"garbage while the link is there");
    let r = collect(dir.path(), &Options::default()).unwrap();
    assert!(s.has_blob(&garbage), "{r}");
    assert!(
        r.warnings
            .iter()
            .any(|w| w.path.ends_with("repositories/linked") && w.message.contains("no blob")),
        "{:?}",
        r.warnings
    );
    assert!(outside.path().join("precious").exists());
}

#[test]
fn nested_repositories_and_underscore_directories() {
    let dir = common::tempdir();
    let s = StoreBuilder::new(dir.path());
    let (a, _) = s.image("a", &[s.blob(b"1")], "a");
    let (ab, _) = s.image("a/b", &[s.blob(b"2")], "ab");
    s.tag("a", "t", &a);
    s.tag("a/b", "t", &ab);
    // A directory under `_layers` that looks like a repository is never one.
    let fake = s.repo("a/_layers/sha256/notarepo/_manifests/revisions/sha256");
    fs::create_dir_all(&fake).unwrap();
    let r = collect(dir.path(), &untagged()).unwrap();
    assert_eq!(r.repositories, 2, "{r}");
    assert_eq!(r.counts.blobs_deleted, 0, "{r}");
}

#[test]
fn stale_uploads_temp_files_and_empty_directories_are_cleaned_and_nothing_outside_v2_is_touched() {
    let dir = common::tempdir();
    let (s, tagged, _, kept_layer, _) = basic(dir.path());
    let old = s.upload("team/app", "old-upload", Some(200));
    let fresh = s.upload("team/app", "fresh-upload", Some(1));
    let undated = s.upload("team/app", "undated", None);
    // Registry 3.1 leaves link temp files when it dies mid-write: next to any link.
    let old_time = std::time::SystemTime::now() - std::time::Duration::from_secs(200 * 3600);
    let stale_temp = |rel: String| {
        let path = s.repo(&rel);
        fs::write(&path, b"sha256:").unwrap();
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old_time)
            .unwrap();
        path
    };
    let temps = [
        stale_temp("team/app/_manifests/tags/latest/current/link.5f0c.tmp".into()),
        stale_temp(format!(
            "team/app/_manifests/tags/latest/index/sha256/{}/link.77aa.tmp",
            tagged.hex()
        )),
        stale_temp(format!(
            "team/app/_manifests/revisions/sha256/{}/link.1b2c.tmp",
            tagged.hex()
        )),
        stale_temp(format!(
            "team/app/_layers/sha256/{}/link.9e9e.tmp",
            kept_layer.hex()
        )),
    ];
    let tmp = temps[0].clone();
    // A manifest deleted through the API leaves an empty revision directory.
    let gone = s.blob(b"deleted manifest");
    let gone_rev = s
        .repo("team/app/_manifests/revisions/sha256")
        .join(gone.hex());
    fs::create_dir_all(&gone_rev).unwrap();
    // Outside docker/registry/v2: never touched, however stale.
    fs::write(dir.path().join("operator-notes.tmp"), b"keep").unwrap();
    fs::create_dir_all(dir.path().join("docker/other/_uploads/x")).unwrap();

    let r = collect(dir.path(), &Options::default()).unwrap();
    assert!(!old.exists(), "{r}");
    assert!(fresh.exists());
    assert!(
        undated.exists(),
        "no startedat: the directory's mtime (now) decides"
    );
    for t in &temps {
        assert!(!t.exists(), "{} is left: {r}", t.display());
    }
    assert!(!tmp.exists());
    assert!(!gone_rev.exists());
    assert!(!s.has_blob(&gone), "its blob is unreferenced");
    assert!(s.has_blob(&tagged));
    assert!(dir.path().join("operator-notes.tmp").exists());
    assert!(dir.path().join("docker/other/_uploads/x").exists());
    assert_eq!(r.counts.uploads_removed, 1);
    assert_eq!(r.counts.temp_files_removed, temps.len() as u64);

    // With a zero age every upload goes.
    collect(
        dir.path(),
        &Options {
            upload_max_age: std::time::Duration::ZERO,
            ..Options::default()
        },
    )
    .unwrap();
    assert!(!fresh.exists() && !undated.exists());
}

/// Only the manifest's `data` goes (its blob directory stays, as after a disk error).
fn lose_manifest_data(s: &StoreBuilder, d: &Digest) {
    fs::remove_file(s.blob_dir(d).join("data")).unwrap();
}

#[test]
fn a_missing_manifest_stops_the_run_before_anything_is_deleted() {
    // Tagged or not, in either mode: its layers are unknown, so nothing may go.
    for (which, opts) in [
        ("tagged", Options::default()),
        ("tagged", untagged()),
        ("untagged", Options::default()),
        ("untagged", untagged()),
    ] {
        let dir = common::tempdir();
        let (s, tagged, old, _, _) = basic(dir.path());
        s.blob(b"unlinked garbage");
        let lost = if which == "tagged" { tagged } else { old };
        lose_manifest_data(&s, &lost);
        let before = s.listing();
        let err = collect(dir.path(), &opts).unwrap_err();
        match &err {
            GcError::ManifestMissing { repo, digest, .. } => {
                assert_eq!(repo.as_str(), "team/app");
                assert_eq!(*digest, lost, "{which}");
            }
            other => panic!("{which}: unexpected error {other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("team/app") && msg.contains(&lost.to_string()) && msg.contains("missing"),
            "{msg}"
        );
        assert_eq!(s.listing(), before, "{which}: nothing deleted");
    }
}

#[test]
fn allow_missing_manifests_goes_on_keeping_everything_the_repository_links() {
    let dir = common::tempdir();
    let (s, tagged, old, only_old, linked_garbage) = basic(dir.path());
    let unlinked = s.blob(b"unlinked garbage");
    let other_tagged = s.image("other/app", &[], "other").0;
    s.tag("other/app", "v1", &other_tagged);
    let other_garbage = s.blob(b"garbage of another repository");
    s.layer_link("other/app", &other_garbage);
    lose_manifest_data(&s, &tagged);
    let opts = Options {
        delete_untagged: true,
        allow_missing_manifests: true,
        ..Options::default()
    };
    let r = collect(dir.path(), &opts).unwrap();
    assert!(
        r.warnings
            .iter()
            .any(|w| w.message.contains("missing") && w.message.contains(&tagged.to_string())),
        "{:?}",
        r.warnings
    );
    // The repository with the missing manifest keeps every blob it links and every
    // revision, even untagged ones.
    for d in [old, only_old, linked_garbage] {
        assert!(s.has_blob(&d), "{r}");
    }
    assert!(s.blob_dir(&tagged).exists());
    assert_eq!(r.counts.manifests_removed, 0, "{r}");
    // Elsewhere the run goes on as usual.
    assert!(!s.has_blob(&unlinked) && !s.has_blob(&other_garbage), "{r}");
    assert!(s.has_blob(&other_tagged));
}

#[test]
fn empty_fan_out_directories_go_and_the_dry_run_plan_names_them() {
    let dir = common::tempdir();
    let (s, _, _, _, garbage) = basic(dir.path());
    let prefix = s.v2().join("blobs/sha256").join(garbage.prefix());
    let alone = fs::read_dir(&prefix).unwrap().count() == 1;
    let p = plan(dir.path(), &Options::default());
    let planned: Vec<String> = p.paths().iter().map(|p| p.display().to_string()).collect();
    assert!(planned.iter().any(|x| x.ends_with(&garbage.hex())));
    collect(dir.path(), &Options::default()).unwrap();
    assert_eq!(prefix.exists(), !alone);
}

#[test]
fn a_special_file_where_a_link_belongs_is_a_damaged_link_and_never_blocks_the_run() {
    let dir = common::tempdir();
    let (s, _, old, only_old, _) = basic(dir.path());
    let link = s.revision_link_path("team/app", &old);
    fs::remove_file(&link).unwrap();
    // Opening a FIFO for reading waits for a writer: the collector must not.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &link,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    // A collector that blocks on the FIFO must fail this test, not hang the suite.
    let root = dir.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(collect(&root, &Options::default()));
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the run blocked on a FIFO where a link belongs")
        .unwrap();
    assert!(s.has_blob(&old) && s.has_blob(&only_old), "{r}");
    assert!(
        r.warnings
            .iter()
            .any(|w| w.path.ends_with(&format!("{}/link", old.hex()))),
        "the warning names the file: {:?}",
        r.warnings
    );
}

/// A root that appears after the mark (a manifest committed while the run is under way,
/// as the online barrier will see it) keeps its manifest, config and layers; a late root
/// whose manifest blob is missing fails the run as the initial mark does.
#[test]
fn a_root_marked_late_keeps_everything_it_reaches() {
    use regfs::gc::{manifests::Manifests, markset, plan, scan};
    let dir = common::tempdir();
    let s = StoreBuilder::new(dir.path());
    let kept_layer = s.blob(b"layer of the tagged image");
    let (tagged, _) = s.image("team/app", &[kept_layer], "tagged");
    s.tag("team/app", "latest", &tagged);
    let late_layer = s.blob(b"layer of the image pushed during the run");
    let (late, late_config) = s.image("team/app", &[late_layer], "late");
    // Its revision link is not there yet when the store is scanned.
    fs::remove_dir_all(s.revision_link_path("team/app", &late).parent().unwrap()).unwrap();

    let store = regfs::layout::Store::open(dir.path()).unwrap();
    let repos = scan::find_repositories(&store).unwrap();
    let inventory = scan::inventory(&store, repos, Default::default(), &|| false)
        .unwrap()
        .unwrap();
    let manifests = Manifests::new(&store, false, false).unwrap();
    let marks = markset::mark_all(&inventory, &manifests, false, &|| false, &|| {})
        .unwrap()
        .unwrap();
    for d in [late, late_config, late_layer] {
        assert!(!marks.is_live(&d), "{d} is live before its root is marked");
    }
    let repo = &inventory.repositories[0];
    marks.mark_root(&manifests, repo, late).unwrap();
    for d in [tagged, kept_layer, late, late_config, late_layer] {
        assert!(
            marks.is_live(&d),
            "{d} is not live after its root is marked"
        );
    }
    let settings = plan::AgeLimits {
        upload_max_age: regfs::gc::DEFAULT_UPLOAD_MAX_AGE,
        now: std::time::SystemTime::now(),
    };
    let p = plan::plan(&inventory, &marks, &settings);
    assert!(p.blobs().next().is_none(), "{p:?}");

    let missing = Digest::of(b"a manifest whose blob never arrived");
    let e = marks.mark_root(&manifests, repo, missing).unwrap_err();
    assert!(
        matches!(e, GcError::ManifestMissing { digest, .. } if digest == missing),
        "{e}"
    );
}

/// A manifest PUT writes the revision link, then tags it. With `--delete-untagged`, an
/// untagged revision younger than the minimum age stays (with what it reaches: an
/// index's children), so a run between the two writes does not fail the push; an older
/// one goes, and with a minimum age of 0 every untagged one does.
#[test]
fn an_untagged_revision_younger_than_the_minimum_age_stays() {
    use regfs::gc::{Action, Plan};
    use std::time::{Duration, SystemTime};
    let dir = common::tempdir();
    let s = StoreBuilder::new(dir.path());
    let layer = s.blob(b"a layer of a child");
    let (child, _) = s.image("app", &[layer], "child");
    let index = s.index("app", &[child]);
    let (old, _) = s.image("app", &[], "pushed two hours ago, never tagged");
    std::fs::File::options()
        .write(true)
        .open(s.revision_link_path("app", &old))
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(2 * 3600))
        .unwrap();
    let removed = |min_age: Duration| {
        let opts = Options {
            delete_untagged: true,
            min_age,
            ..Default::default()
        };
        let plan: Plan = plan(dir.path(), &opts);
        let mut v: Vec<_> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::RemoveRevision { digest, .. } => Some(*digest),
                _ => None,
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(removed(Duration::from_secs(3600)), vec![old]);
    let mut all = vec![child, index, old];
    all.sort();
    assert_eq!(removed(Duration::ZERO), all);
}

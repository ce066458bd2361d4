//! One entry the collector does not understand never stops all collection (issue 18,
//! finding 6): it keeps what it may stand for, says so naming the file, and the rest of
//! the store is collected. Inside a repository it keeps that repository whole; a link in
//! the repository tree keeps the repositories it points to (every blob, when it leads out
//! of the tree); a stray in the blob tree is never deleted nor followed, and the links
//! naming it stay. Stores are built on disk; no mount needed (the daemon's job and status
//! carrying the warning: tests/daemon_epochs/strays.rs).
mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::store::{StoreBuilder, collect};
use regfs::gc::{Options, Report};
use regfs::layout::Digest;

fn untagged() -> Options {
    Options {
        delete_untagged: true,
        ..Options::default()
    }
}

/// `team/app` and `other`, each with a tagged image, an untagged one and a linked
/// garbage blob; `other` also has an abandoned upload.
struct World {
    s: StoreBuilder,
    /// Every blob of `team/app`.
    app: Vec<Digest>,
    /// What a run deletes of `other` (its untagged manifest, its layer, its garbage).
    other_garbage: Vec<Digest>,
    other_kept: Vec<Digest>,
    other_upload: PathBuf,
    app_old: Digest,
    /// Where the links planted out of the store point.
    outside: tempfile::TempDir,
}

fn world(root: &Path) -> World {
    let s = StoreBuilder::new(root);
    let mut app = Vec::new();
    let shared = s.blob(b"app shared layer");
    let only_old = s.blob(b"app layer of the untagged image");
    let (tagged, tagged_cfg) = s.image("team/app", &[shared], "app tagged");
    let (old, old_cfg) = s.image("team/app", &[shared, only_old], "app old");
    s.tag("team/app", "latest", &tagged);
    let garbage = s.blob(b"app: uploaded, never referenced");
    s.layer_link("team/app", &garbage);
    app.extend([shared, only_old, tagged, tagged_cfg, old, old_cfg, garbage]);

    let kept = s.blob(b"other kept layer");
    let gone = s.blob(b"other layer of the untagged image");
    let (o_tagged, o_cfg) = s.image("other", &[kept], "other tagged");
    let (o_old, o_old_cfg) = s.image("other", &[gone], "other old");
    s.tag("other", "latest", &o_tagged);
    let o_garbage = s.blob(b"other: uploaded, never referenced");
    s.layer_link("other", &o_garbage);
    let other_upload = s.upload("other", "abandoned", Some(24 * 30));
    let outside = common::tempdir();
    fs::write(outside.path().join("precious"), b"x").unwrap();
    World {
        s,
        app,
        other_garbage: vec![gone, o_old, o_old_cfg, o_garbage],
        other_kept: vec![kept, o_tagged, o_cfg],
        other_upload,
        app_old: old,
        outside,
    }
}

impl World {
    fn app_listing(&self) -> Vec<(String, u64)> {
        self.s
            .listing()
            .into_iter()
            .filter(|(p, _)| p.contains("repositories/team/app"))
            .collect()
    }

    /// Nothing of `team/app` went; `other` was collected; the outside is untouched.
    fn assert_app_kept_other_collected(&self, r: &Report, app_before: &[(String, u64)]) {
        for d in &self.app {
            assert!(self.s.has_blob(d), "blob {d} of team/app deleted: {r}");
        }
        assert_eq!(self.app_listing(), app_before, "team/app changed: {r}");
        for d in &self.other_garbage {
            assert!(!self.s.has_blob(d), "other's garbage {d} kept: {r}");
        }
        for d in &self.other_kept {
            assert!(self.s.has_blob(d), "other's {d} deleted: {r}");
        }
        assert!(!self.other_upload.exists(), "other's upload kept: {r}");
        assert!(self.outside.path().join("precious").exists());
    }
}

fn warned(r: &Report, path_end: &str, says: &str) -> bool {
    r.warnings
        .iter()
        .any(|w| w.path.ends_with(path_end) && w.message.contains(says))
}

/// Each stray planted in `team/app`: the run goes on, keeps all of team/app, collects
/// `other`, and names the stray.
#[test]
fn a_stray_inside_a_repository_keeps_that_repository_whole_and_the_rest_is_collected() {
    type Plant = fn(&World) -> String;
    let cases: Vec<(&str, Plant)> = vec![
        ("a symbolic link among the tags", |w| {
            let p = w.s.repo("team/app/_manifests/tags/evil");
            symlink(w.outside.path(), &p).unwrap();
            "tags/evil".into()
        }),
        ("a file where a tag directory should be", |w| {
            fs::write(w.s.repo("team/app/_manifests/tags/stray"), b"x").unwrap();
            "tags/stray".into()
        }),
        (
            "a symbolic link among the revisions, named by a digest",
            |w| {
                let d = Digest::of(b"not here");
                let p =
                    w.s.repo("team/app/_manifests/revisions/sha256")
                        .join(d.hex());
                symlink(w.outside.path(), &p).unwrap();
                d.hex().to_string()
            },
        ),
        ("a symbolic link among the layer links", |w| {
            let p = w.s.repo("team/app/_layers/sha256/evil");
            symlink(w.outside.path(), &p).unwrap();
            "_layers/sha256/evil".into()
        }),
        ("a symbolic link as a revision's link file", |w| {
            let p = w.s.revision_link_path("team/app", &w.app_old);
            fs::remove_file(&p).unwrap();
            symlink(w.outside.path().join("precious"), &p).unwrap();
            format!("{}/link", w.app_old.hex())
        }),
        ("a directory where a revision's link file should be", |w| {
            let p = w.s.revision_link_path("team/app", &w.app_old);
            fs::remove_file(&p).unwrap();
            fs::create_dir(&p).unwrap();
            format!("{}/link", w.app_old.hex())
        }),
        ("a damaged tag link", |w| {
            fs::write(
                w.s.repo("team/app/_manifests/tags/latest/current/link"),
                b"sha256:short",
            )
            .unwrap();
            "tags/latest/current/link".into()
        }),
        ("a file among the uploads", |w| {
            fs::create_dir_all(w.s.repo("team/app/_uploads")).unwrap();
            fs::write(w.s.repo("team/app/_uploads/stray"), b"x").unwrap();
            "_uploads/stray".into()
        }),
        ("a manifest of a kind nobody knows", |w| {
            let d = w.s.manifest(
                "team/app",
                serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.future+json"}),
            );
            w.s.tag("team/app", "future", &d);
            format!("{}/data", d.hex())
        }),
        ("a manifest that does not match its digest", |w| {
            let data = w.s.blob_dir(&w.app_old).join("data");
            let mut bytes = fs::read(&data).unwrap();
            bytes.push(b' ');
            fs::write(&data, bytes).unwrap();
            format!("{}/data", w.app_old.hex())
        }),
    ];
    for (what, plant) in cases {
        let dir = common::tempdir();
        let w = world(dir.path());
        let at = plant(&w);
        let app_before = w.app_listing();
        let r = collect(dir.path(), &untagged())
            .unwrap_or_else(|e| panic!("{what}: the run stopped: {e}"));
        w.assert_app_kept_other_collected(&r, &app_before);
        assert!(
            warned(&r, &at, "team/app kept whole"),
            "{what}: the warning names {at}: {:?}",
            r.warnings
        );
    }
}

#[test]
fn a_link_in_the_repository_tree_keeps_the_repositories_it_stands_for() {
    let dir = common::tempdir();
    let w = world(dir.path());
    // Within the tree: the registry serves team/app through it (and the namespace it
    // lies in is kept whole too).
    symlink("app", w.s.repo("team/alias")).unwrap();
    let app_before = w.app_listing();
    let r = collect(dir.path(), &untagged()).unwrap();
    w.assert_app_kept_other_collected(&r, &app_before);
    assert!(
        warned(&r, "repositories/team/alias", "team/app"),
        "{:?}",
        r.warnings
    );
    let said = r.warnings.iter().filter(|w| w.path.ends_with("team/alias"));
    assert_eq!(said.count(), 1, "said once: {:?}", r.warnings);

    // Out of the tree: it may name any blob; no blob goes, the rest is collected.
    let dir = common::tempdir();
    let w = world(dir.path());
    symlink(w.outside.path(), w.s.repo("team/linked")).unwrap();
    let r = collect(dir.path(), &untagged()).unwrap();
    assert_eq!(r.counts.blobs_deleted, 0, "{r}");
    for d in w.app.iter().chain(&w.other_garbage) {
        assert!(w.s.has_blob(d), "{r}");
    }
    assert!(!w.other_upload.exists(), "other's upload kept: {r}");
    assert!(
        warned(&r, "repositories/team/linked", "no blob is"),
        "{:?}",
        r.warnings
    );
    assert!(w.outside.path().join("precious").exists());
}

#[test]
fn a_repository_whose_layer_links_cannot_be_listed_keeps_every_blob() {
    let dir = common::tempdir();
    let w = world(dir.path());
    let layers = w.s.repo("team/app/_layers");
    fs::rename(&layers, w.outside.path().join("layers")).unwrap();
    symlink(w.outside.path().join("layers"), &layers).unwrap();
    let r = collect(dir.path(), &untagged()).unwrap();
    assert_eq!(r.counts.blobs_deleted, 0, "{r}");
    assert!(
        warned(&r, "team/app/_layers/sha256", "no blob is deleted"),
        "{:?}",
        r.warnings
    );
    assert!(!w.other_upload.exists(), "the rest is collected: {r}");
}

#[test]
fn a_stray_in_the_blob_tree_is_left_alone_and_the_links_naming_it_stay() {
    let dir = common::tempdir();
    let w = world(dir.path());
    // `other` links a blob whose directory is a link out of the store.
    let d = Digest::of(b"a blob kept elsewhere");
    w.s.layer_link("other", &d);
    let at = w.s.blob_dir(&d);
    fs::create_dir_all(at.parent().unwrap()).unwrap();
    symlink(w.outside.path(), &at).unwrap();
    let r = collect(dir.path(), &untagged()).unwrap();
    assert!(fs::symlink_metadata(&at).is_ok(), "the stray stays: {r}");
    assert!(
        w.s.repo("other/_layers/sha256").join(d.hex()).exists(),
        "the link naming it stays: {r}"
    );
    for g in &w.other_garbage {
        assert!(!w.s.has_blob(g), "{r}");
    }
    assert!(warned(&r, &d.hex(), "left alone"), "{:?}", r.warnings);
    assert!(w.outside.path().join("precious").exists());
}

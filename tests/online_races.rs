//! The races of online GC, each made to happen at a chosen point of a run driven over the
//! filesystem core (no mount): the registry writes through the same core the mount
//! serves, while the run marks, pauses and sweeps unit by unit.
mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::online_run::{Core, Hooks, OnlineOutcome, broken_links, run};
use common::registry_sim::{
    PushError, blob_data, image_manifest, index_manifest, layer_link, revision_link,
};
use regfs::gc::{Action, Options};
use regfs::layout::Digest;

fn opts() -> Options {
    Options::default()
}

/// `--delete-untagged`.
fn untagged_only() -> Options {
    Options {
        delete_untagged: true,
        ..Default::default()
    }
}

/// An image pushed to `repo` (layers then config then manifest), tagged `tag`.
fn push_image(
    core: &Core,
    repo: &str,
    tag: Option<&str>,
    layers: &[&[u8]],
    salt: &str,
) -> Result<Image, PushError> {
    let reg = core.registry();
    let mut ls = Vec::new();
    for l in layers {
        ls.push(reg.push_blob(repo, l)?);
    }
    let config = reg.push_blob(repo, format!("{{\"config\":\"{salt}\"}}").as_bytes())?;
    let body = image_manifest(&config, &ls);
    let mut refs = ls.clone();
    refs.push(config);
    let manifest = reg.put_manifest(repo, &body, &refs, tag)?;
    Ok(Image {
        manifest,
        config,
        layers: ls,
    })
}

#[derive(Debug, Clone)]
struct Image {
    manifest: Digest,
    config: Digest,
    layers: Vec<Digest>,
}

impl Image {
    /// PUT /v2/<repo>/manifests/<tag> with this image's manifest again.
    fn put_again(&self, core: &Core, repo: &str, tag: Option<&str>) -> Result<Digest, PushError> {
        let body = image_manifest(&self.config, &self.layers);
        let mut refs = self.layers.clone();
        refs.push(self.config);
        core.registry().put_manifest(repo, &body, &refs, tag)
    }

    fn blobs(&self) -> Vec<Digest> {
        let mut v = self.layers.clone();
        v.push(self.config);
        v.push(self.manifest);
        v
    }

    /// Pullable from `repo`: every blob stored and linked, the revision link in place.
    fn assert_whole(&self, core: &Core, repo: &str) {
        for b in self.blobs() {
            assert!(core.has_data(&blob_data(&b)), "{repo}: blob {b} missing");
        }
        for b in self.layers.iter().chain([&self.config]) {
            assert!(
                core.has_data(&layer_link(repo, b)),
                "{repo}: _layers link of {b} missing"
            );
        }
        assert!(
            core.has_data(&revision_link(repo, &self.manifest)),
            "{repo}: revision link of {} missing",
            self.manifest
        );
    }
}

/// No link in the store names a missing blob.
fn assert_no_broken_links(core: &Core) {
    let broken = broken_links(&core.root);
    assert!(broken.is_empty(), "{broken:?}");
}

/// The run deleted no blob (a write took back everything it was about to delete) and
/// left no link naming a missing blob.
fn assert_nothing_deleted_nothing_broken(core: &Core, out: &OnlineOutcome) {
    assert_eq!(
        out.report.counts.blobs_deleted, 0,
        "{:?}",
        out.report.counts
    );
    assert_no_broken_links(core);
}

/// An image pushed then deleted by digest: its blobs are garbage.
fn deleted_image(core: &Core, repo: &str, layer: &[u8], salt: &str) -> Image {
    let img = push_image(core, repo, None, &[layer], salt).unwrap();
    core.registry().delete_manifest(repo, &img.manifest, &[]);
    img
}

fn is_blob_unit(a: &Action, d: &Digest) -> bool {
    matches!(a, Action::DeleteBlob { digest, .. } if digest == d)
}

#[test]
fn a_layer_link_written_for_a_blob_the_sweep_holds_is_refused_and_the_retry_uploads_it() {
    let core = Core::new();
    let old = deleted_image(&core, "a", b"layer L", "old");
    let layer = old.layers[0];
    let refused = Mutex::new(None);
    let hooks = Hooks {
        after_claim: Some(Box::new(|_, a, claimed| {
            if claimed && is_blob_unit(a, &layer) {
                let r = core
                    .registry()
                    .put_content(&layer_link("b", &layer), format!("{layer}").as_bytes());
                *refused.lock().unwrap() = Some(r);
            }
        })),
        ..Default::default()
    };
    let out = run(&core, &opts(), &hooks);
    drop(hooks);
    let r = refused.into_inner().unwrap().expect("the hook ran");
    assert!(
        matches!(
            r,
            Err(PushError::Server {
                errno: libc::EIO,
                ..
            })
        ),
        "a link naming a blob being deleted is a server error: {r:?}"
    );
    assert_eq!(out.refused, 1);
    assert!(
        !core.has_data(&blob_data(&layer)),
        "the sweep deleted the blob it held"
    );
    assert_no_broken_links(&core);
    // The client retries the push: the blob is uploaded anew and stays.
    let img = push_image(&core, "b", Some("v1"), &[b"layer L"], "new").unwrap();
    img.assert_whole(&core, "b");
}

#[test]
fn a_manifest_put_whose_layer_is_doomed_takes_the_layer_back() {
    let core = Core::new();
    let old = deleted_image(&core, "a", b"shared layer", "old");
    let layer = old.layers[0];
    let pushed = Mutex::new(None);
    let hooks = Hooks {
        before_claim: Some(Box::new(|_, a| {
            if is_blob_unit(a, &layer) {
                // HEAD says the repository has it (the read takes it back), so the
                // client skips the upload and puts a manifest naming it.
                *pushed.lock().unwrap() = Some(push_image(
                    &core,
                    "a",
                    Some("new"),
                    &[b"shared layer"],
                    "new",
                ));
            }
        })),
        ..Default::default()
    };
    let out = run(&core, &opts(), &hooks);
    drop(hooks);
    let img = pushed.into_inner().unwrap().expect("the hook ran").unwrap();
    assert!(out.resurrected >= 1, "{out:?}");
    img.assert_whole(&core, "a");
    assert!(
        !core.has_data(&blob_data(&old.manifest)),
        "the deleted image's manifest goes"
    );
    assert_no_broken_links(&core);
}

#[test]
fn a_blob_re_uploaded_while_hidden_is_taken_back_and_stays() {
    let core = Core::new();
    let old = deleted_image(&core, "a", b"hidden layer", "old");
    let layer = old.layers[0];
    let seen = Mutex::new((true, None));
    let hooks = Hooks {
        before_claim: Some(Box::new(|_, a| {
            if is_blob_unit(a, &layer) {
                let reg = core.registry();
                // Another repository has no link: its HEAD says no, and the blob itself
                // is hidden, so the registry commits the upload.
                let visible = reg.exists(&blob_data(&layer));
                let pushed = push_image(&core, "c", Some("v1"), &[b"hidden layer"], "c");
                *seen.lock().unwrap() = (visible, Some(pushed));
            }
        })),
        ..Default::default()
    };
    let out = run(&core, &opts(), &hooks);
    drop(hooks);
    let (visible, pushed) = seen.into_inner().unwrap();
    assert!(!visible, "a doomed blob is hidden from lookups");
    let img = pushed.expect("the hook ran").unwrap();
    img.assert_whole(&core, "c");
    assert!(out.resurrected >= 1, "{out:?}");
    assert!(out.hidden_after.is_empty());
    assert_no_broken_links(&core);
}

#[test]
fn a_tag_moved_onto_an_untagged_manifest_during_the_sweep_keeps_it_whole() {
    let core = Core::new();
    let kept = push_image(&core, "a", Some("v1"), &[b"layer one"], "one").unwrap();
    let untagged = push_image(&core, "a", None, &[b"layer two"], "two").unwrap();
    let moved = Mutex::new(None);
    let hooks = Hooks {
        before_claim: Some(Box::new(|_, a| {
            if matches!(a, Action::RemoveRevision { digest, .. } if *digest == untagged.manifest) {
                // PUT /v2/a/manifests/v2 with the untagged manifest's body.
                *moved.lock().unwrap() = Some(untagged.put_again(&core, "a", Some("v2")));
            }
        })),
        ..Default::default()
    };
    let out = run(&core, &untagged_only(), &hooks);
    drop(hooks);
    moved.into_inner().unwrap().expect("the hook ran").unwrap();
    untagged.assert_whole(&core, "a");
    kept.assert_whole(&core, "a");
    assert!(out.resurrected >= 1, "{out:?}");
    assert_nothing_deleted_nothing_broken(&core, &out);
}

/// A signature of `subject`: an OCI manifest with one layer, referring to `subject`.
fn push_referrer(core: &Core, repo: &str, subject: &Digest, salt: &str) -> Image {
    let reg = core.registry();
    let layer = reg
        .push_blob(repo, format!("signature {salt}").as_bytes())
        .unwrap();
    let config = reg.push_blob(repo, b"{}").unwrap();
    let mut body: serde_json::Value =
        serde_json::from_slice(&image_manifest(&config, &[layer])).unwrap();
    body["subject"] = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": subject.to_string(),
        "size": 1
    });
    let body = serde_json::to_vec(&body).unwrap();
    let manifest = reg
        .put_manifest(repo, &body, &[layer, config], None)
        .unwrap();
    Image {
        manifest,
        config,
        layers: vec![layer],
    }
}

#[test]
fn a_tag_moved_onto_an_untagged_manifest_during_the_sweep_keeps_its_referrers() {
    let core = Core::new();
    let untagged = push_image(&core, "a", None, &[b"signed layer"], "signed").unwrap();
    let signature = push_referrer(&core, "a", &untagged.manifest, "one");
    let counter = push_referrer(&core, "a", &signature.manifest, "counter");
    let moved = Mutex::new(None);
    let hooks = Hooks {
        before_claim: Some(Box::new(|_, _| {
            // At the sweep's first unit: PUT /v2/a/manifests/v1 with the untagged body.
            let mut m = moved.lock().unwrap();
            if m.is_none() {
                *m = Some(untagged.put_again(&core, "a", Some("v1")));
            }
        })),
        ..Default::default()
    };
    let out = run(&core, &untagged_only(), &hooks);
    drop(hooks);
    moved.into_inner().unwrap().expect("the hook ran").unwrap();
    // As if the tag had been there before the run: the image with its referrers, and
    // the referrers' own referrer.
    untagged.assert_whole(&core, "a");
    signature.assert_whole(&core, "a");
    counter.assert_whole(&core, "a");
    assert_nothing_deleted_nothing_broken(&core, &out);
}

#[test]
fn an_index_put_during_the_sweep_takes_back_its_children_and_their_layers() {
    let core = Core::new();
    let child = deleted_image(&core, "a", b"child layer", "child");
    let pushed = Mutex::new(None);
    let hooks = Hooks {
        before_claim: Some(Box::new(|_, _| {
            // At the sweep's first unit.
            if pushed.lock().unwrap().is_none() {
                // Re-put the child (its blobs are still doomed), then an index naming it.
                let reg = core.registry();
                let r = child
                    .put_again(&core, "a", None)
                    .and_then(|m| reg.put_manifest("a", &index_manifest(&[m]), &[], Some("multi")));
                *pushed.lock().unwrap() = Some(r);
            }
        })),
        ..Default::default()
    };
    let out = run(&core, &opts(), &hooks);
    drop(hooks);
    pushed.into_inner().unwrap().expect("the hook ran").unwrap();
    child.assert_whole(&core, "a");
    assert_nothing_deleted_nothing_broken(&core, &out);
}

#[test]
fn a_push_during_the_mark_keeps_what_it_links() {
    let core = Core::new();
    let old = deleted_image(&core, "a", b"layer pushed again while marking", "old");
    let pushed = Mutex::new(None);
    let hooks = Hooks {
        before_pause: Some(Box::new(|| {
            *pushed.lock().unwrap() = Some(push_image(
                &core,
                "a",
                Some("again"),
                &[b"layer pushed again while marking"],
                "again",
            ));
        })),
        ..Default::default()
    };
    let out = run(&core, &opts(), &hooks);
    drop(hooks);
    let img = pushed.into_inner().unwrap().expect("the hook ran").unwrap();
    assert!(out.recorded >= 1 && out.resurrected >= 1, "{out:?}");
    img.assert_whole(&core, "a");
    assert_eq!(img.layers, old.layers);
    // Only the old image's own config and manifest were garbage.
    assert_eq!(
        out.report.counts.blobs_deleted, 2,
        "{:?}",
        out.report.counts
    );
}

/// A client asks whether the repository has a blob (HEAD: its `_layers` link read) while
/// the run marks, is told yes and skips the upload: the blob must still be there when it
/// pushes the manifest after the run, or that push fails with "blob unknown".
#[test]
fn a_blob_a_client_was_told_exists_during_the_mark_stays() {
    let core = Core::new();
    let old = deleted_image(&core, "a", b"layer asked about while marking", "old");
    let layer = old.layers[0];
    let hooks = Hooks {
        before_pause: Some(Box::new(|| {
            assert!(core.registry().blob_exists("a", &layer));
        })),
        ..Default::default()
    };
    run(&core, &opts(), &hooks);
    drop(hooks);
    assert!(
        core.has_data(&blob_data(&layer)),
        "a blob HEAD answered 'exists' for during the run was deleted by it"
    );
    let again = push_image(
        &core,
        "a",
        Some("t"),
        &[b"layer asked about while marking"],
        "new",
    )
    .expect("the push that skipped the upload");
    again.assert_whole(&core, "a");
}

#[test]
fn stop_in_the_middle_of_the_sweep_leaves_a_consistent_store_and_nothing_hidden() {
    let core = Core::new();
    let live = push_image(&core, "live", Some("v1"), &[b"live layer"], "live").unwrap();
    let garbage: Vec<Image> = (0..30)
        .map(|i| {
            deleted_image(
                &core,
                "g",
                format!("garbage {i}").as_bytes(),
                &format!("g{i}"),
            )
        })
        .collect();
    let hooks = Hooks {
        stop_after: Some(20),
        ..Default::default()
    };
    let out = run(&core, &opts(), &hooks);
    drop(hooks);
    assert_eq!(
        out.report.outcome,
        regfs::gc::Outcome::Stopped,
        "{:?}",
        out.report
    );
    assert!(out.hidden_after.is_empty());
    let reg = core.registry();
    let left: Vec<&Digest> = garbage
        .iter()
        .flat_map(|g| g.layers.iter())
        .filter(|d| core.has_data(&blob_data(d)))
        .collect();
    assert!(!left.is_empty(), "a stopped sweep leaves some garbage");
    for d in left {
        assert!(
            reg.exists(&blob_data(d)),
            "blob {d} left by a stopped run is hidden"
        );
    }
    live.assert_whole(&core, "live");
    assert_no_broken_links(&core);
}

#[test]
fn a_pause_holds_new_writes_until_it_ends_and_waits_for_none_in_flight() {
    let core = Core::new();
    let paused = core
        .gate
        .pause_writes(Duration::from_secs(1))
        .expect("nothing in flight");
    let reg = core.registry();
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let start = Instant::now();
            reg.put_content("scratch/f", b"x").unwrap();
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(!writer.is_finished(), "a write went through a pause");
        drop(paused);
        let waited = writer.join().unwrap();
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
    });
    assert!(core.has_data("scratch/f"));
}

#[test]
fn an_abandoned_upload_written_to_during_the_mark_or_the_sweep_stays() {
    let core = Core::new();
    let b = common::store::StoreBuilder::new(&core.root);
    let resumed_early = b.upload("a", "resumed-while-marking", Some(200));
    let resumed_late = b.upload("a", "resumed-while-sweeping", Some(200));
    let abandoned = b.upload("a", "abandoned", Some(200));
    let rel = |p: &std::path::Path| p.strip_prefix(&core.root).unwrap().display().to_string();
    let hooks = Hooks {
        before_pause: Some(Box::new(|| {
            core.registry()
                .put_content(&format!("{}/data", rel(&resumed_early)), b"more")
                .unwrap();
        })),
        before_claim: Some(Box::new(|_, a| {
            if matches!(a, Action::RemoveUpload { dir, .. } if core.root.join(dir) == resumed_late)
            {
                core.registry()
                    .put_content(&format!("{}/data", rel(&resumed_late)), b"more")
                    .unwrap();
            }
        })),
        ..Default::default()
    };
    let out = run(&core, &opts(), &hooks);
    drop(hooks);
    assert!(resumed_early.join("data").is_file(), "{out:?}");
    assert!(resumed_late.join("data").is_file(), "{out:?}");
    assert!(
        !abandoned.exists(),
        "an upload nobody writes to goes: {out:?}"
    );
    assert_eq!(
        out.report.counts.uploads_removed, 1,
        "{:?}",
        out.report.counts
    );
}

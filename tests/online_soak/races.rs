//! The races the issue names, each against a real registry and a sweep made long enough
//! to race by thousands of generated garbage blobs (`SOAK_FILLERS`, default 20000, written
//! into the backing store before the mount with tests/common's store builder). Each test
//! makes its target garbage, starts a run, waits until `regfs status` says `sweeping`
//! and only then acts; whatever the sweep's order (the target doomed and still there, or
//! already deleted), the client's operation must end in an image that pulls whole, and
//! the store must stay consistent.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::api::{self, Answer, blobs_deleted, request};
use crate::common::describe_output;
use crate::common::store::StoreBuilder;
use crate::ctx::{Ctx, Mode};
use crate::store_check::assert_consistent;
use crate::support::{hex, registry_user, short};
use crate::world::{Cache, World, setup_custom};

/// A repository whose `_layers` link the first [`LINKED_FILLERS`] fillers, so that the
/// registry can be asked about them.
const FILLER_REPO: &str = "race/fillers";
const LINKED_FILLERS: usize = 200;

fn fillers() -> usize {
    std::env::var("SOAK_FILLERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

/// Garbage blobs written straight into the backing store, handed to the registry's user.
fn make_fillers(store: &Path, n: usize) -> Vec<String> {
    let t0 = Instant::now();
    let b = StoreBuilder::new(store);
    let mut digests = Vec::with_capacity(n);
    for i in 0..n {
        let d = b.blob(format!("regfs soak filler {i}\n").as_bytes());
        if i < LINKED_FILLERS {
            b.layer_link(FILLER_REPO, &d);
        }
        digests.push(d.to_string());
    }
    let ids = registry_user();
    chown_tree(store, ids);
    eprintln!(
        "[race] {n} garbage blobs generated in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    digests
}

fn chown_tree(dir: &Path, ids: (u32, u32)) {
    std::os::unix::fs::lchown(dir, Some(ids.0), Some(ids.1)).unwrap();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            chown_tree(&p, ids);
        } else {
            std::os::unix::fs::lchown(&p, Some(ids.0), Some(ids.1)).unwrap();
        }
    }
}

/// A world for one race: fillers in the store, the soak's images in the layout.
fn race_world(tag: &str) -> Option<(World, Arc<Ctx>, Vec<String>)> {
    let mut filler_digests = Vec::new();
    let mut world = setup_custom(
        Mode::DeleteUntagged,
        Cache::DropIn,
        &api::daemon_args(),
        |store| filler_digests = make_fillers(store, fillers()),
    )?;
    let ctx = Arc::get_mut(&mut world.ctx).expect("the context is not shared yet");
    for img in api::soak_images(&ctx.oci, 4, 2) {
        ctx.images.insert(img.name.clone(), img);
    }
    let ctx = world.ctx.clone();
    eprintln!("[race {tag}] world ready");
    Some((world, ctx, filler_digests))
}

/// Starts a run and waits until it sweeps; its job id.
fn start_gc_and_wait_for_sweep(ctx: &Ctx, tag: &str) -> u64 {
    let out = api::regfs(ctx, &["gc", "--json"], Duration::from_secs(30));
    assert!(out.status.success(), "regfs gc: {}", describe_output(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("regfs gc --json");
    let id = v["job_id"].as_u64().expect("job_id");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !sweeping(ctx, id) {
        let ended = ctx
            .jobs()
            .into_iter()
            .find(|j| j["id"] == id && j["outcome"] != "running");
        if let Some(j) = ended {
            panic!(
                "[race {tag}] job {id} ended before it was seen sweeping (more SOAK_FILLERS?): {j:#}"
            );
        }
        assert!(
            Instant::now() < deadline,
            "[race {tag}] job {id} never swept"
        );
        thread::sleep(Duration::from_millis(10));
    }
    eprintln!("[race {tag}] job {id} sweeping");
    id
}

fn sweeping(ctx: &Ctx, id: u64) -> bool {
    ctx.status()
        .is_ok_and(|s| s["state"] == "sweeping" && s["current_job"]["id"] == id)
}

/// Asserts that job `id` was sweeping when `what` began.
fn during_sweep<T>(ctx: &Ctx, id: u64, what: &str, f: impl FnOnce() -> T) -> T {
    assert!(sweeping(ctx, id), "{what}: job {id} was no longer sweeping");
    f()
}

fn wait_job(ctx: &Ctx, id: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(j) = ctx
            .jobs()
            .into_iter()
            .find(|j| j["id"] == id && j["outcome"] != "running")
        {
            eprintln!(
                "[race] job {id}: {}, {} blobs deleted, resurrected {}, refused writes {}, pause {} s",
                j["outcome"],
                blobs_deleted(&j),
                j["resurrected"],
                j["refused_writes"],
                j["pause_seconds"]
            );
            return j;
        }
        assert!(Instant::now() < deadline, "job {id} did not end");
        thread::sleep(Duration::from_millis(50));
    }
}

fn push_ok(ctx: &Ctx, image: &str, dest: &str) {
    let (out, retries) = api::push_retrying(ctx, image, dest, 3);
    assert!(
        out.status.success(),
        "push of {image} to {dest} (after {retries} retries): {}",
        describe_output(&out)
    );
    eprintln!("[race] pushed {image} to {dest} ({retries} retries)");
}

fn delete(ctx: &Ctx, repo: &str, image: &str) {
    let d = ctx.image(image).digest.clone();
    assert_eq!(
        api::delete_manifest(ctx.port, repo, &d),
        Ok(202),
        "DELETE {repo}@{d}"
    );
}

fn oci_blob(ctx: &Ctx, digest: &str) -> Vec<u8> {
    fs::read(ctx.oci.join("blobs/sha256").join(hex(digest))).expect("a blob of the layout")
}

/// The end of every race: the job ended as `outcome`, the image pulls whole, the store is
/// consistent.
fn finish(ctx: &Ctx, id: u64, outcome: &str, pulls: &[(&str, &str)]) -> Value {
    let job = wait_job(ctx, id);
    assert_eq!(job["outcome"], outcome, "{job:#}");
    assert_eq!(api::job_mode(&job), api::gc_mode(), "{job:#}");
    for (reference, image) in pulls {
        ctx.pull(reference, image)
            .unwrap_or_else(|e| panic!("after the race: {e}"));
    }
    assert_consistent(&ctx.store, "after the race");
    job
}

/// An upload begun before the run (POST, PATCH of the data) is committed (PUT) while the
/// sweep holds the blob: the commit writes the blob's data and its `_layers` link. It must
/// succeed (resurrecting the doomed blob, or as a fresh blob when it was deleted already),
/// and the image using it pushes and pulls.
pub fn layer_link_for_a_doomed_blob() {
    let Some((_world, ctx, _)) = race_world("layer link") else {
        return;
    };
    let (repo, image) = ("race/a", "f0-v0");
    push_ok(&ctx, image, &format!("{repo}:1"));
    delete(&ctx, repo, image);
    let base = ctx.image(image).blobs[1].clone();
    let bytes = oci_blob(&ctx, &base);
    let location = begin_upload(ctx.port, repo, &bytes);
    let id = start_gc_and_wait_for_sweep(&ctx, "layer link");
    let commit = during_sweep(&ctx, id, "the commit", || {
        commit_upload(ctx.port, &location, &base)
    });
    eprintln!(
        "[race layer link] commit of {} during the sweep: HTTP {}",
        short(&base),
        commit.status
    );
    assert_eq!(
        commit.status,
        201,
        "commit during the sweep: {}",
        commit.text()
    );
    push_ok(&ctx, image, &format!("{repo}:2"));
    finish(&ctx, id, "done", &[(&format!("{repo}:2"), image)]);
    assert_eq!(api::head_blob(ctx.port, repo, &base), 200);
}

/// A manifest is put whose config and layers were uploaded (no manifest named them, so the
/// run dooms them). The registry must not accept it with a blob the sweep then deletes:
/// either it refuses it (blob unknown) and, the client having uploaded the blobs again,
/// accepts it; or it accepts it and the image pulls.
pub fn manifest_put_with_a_doomed_layer() {
    let Some((_world, ctx, _)) = race_world("manifest put") else {
        return;
    };
    let (repo, image) = ("race/b", "f1-v0");
    let img = ctx.image(image).clone();
    for b in &img.blobs {
        api::upload_blob(ctx.port, repo, &oci_blob(&ctx, b)).expect("upload");
    }
    let manifest = oci_blob(&ctx, &img.digest);
    let mt = "application/vnd.oci.image.manifest.v1+json";
    let id = start_gc_and_wait_for_sweep(&ctx, "manifest put");
    let first = during_sweep(&ctx, id, "the manifest put", || {
        api::put_manifest(ctx.port, repo, "1", mt, &manifest)
    });
    eprintln!(
        "[race manifest put] put during the sweep: HTTP {} {}",
        first.status,
        first.text()
    );
    if first.status != 201 {
        assert!(
            matches!(first.status, 400 | 404 | 500),
            "refused as a client can act on: {} {}",
            first.status,
            first.text()
        );
        let mut last = first;
        for _ in 0..3 {
            // As a client retries: upload what the registry says is missing, put again.
            for b in &img.blobs {
                if api::head_blob(ctx.port, repo, b) != 200
                    && let Err(e) = api::upload_blob(ctx.port, repo, &oci_blob(&ctx, b))
                {
                    eprintln!("[race manifest put] upload of {} again: {e}", short(b));
                }
            }
            last = api::put_manifest(ctx.port, repo, "1", mt, &manifest);
            eprintln!("[race manifest put] put again: HTTP {}", last.status);
            if last.status == 201 {
                break;
            }
        }
        assert_eq!(last.status, 201, "after uploading again: {}", last.text());
    }
    finish(&ctx, id, "done", &[(&format!("{repo}:1"), image)]);
}

/// A tag moves away from an image (untagged: garbage with --delete-untagged); during the
/// sweep a push tags that image again. It must push and pull, and so must the other tag.
pub fn tag_moved_onto_an_untagged_manifest() {
    let Some((_world, ctx, _)) = race_world("tag move") else {
        return;
    };
    let repo = "race/c";
    push_ok(&ctx, "f2-v0", &format!("{repo}:1"));
    push_ok(&ctx, "f2-v1", &format!("{repo}:1"));
    let id = start_gc_and_wait_for_sweep(&ctx, "tag move");
    during_sweep(&ctx, id, "the push", || {
        push_ok(&ctx, "f2-v0", &format!("{repo}:2"))
    });
    finish(
        &ctx,
        id,
        "done",
        &[
            (&format!("{repo}:2"), "f2-v0"),
            (&format!("{repo}:1"), "f2-v1"),
        ],
    );
}

/// An image deleted by digest, its blobs doomed: during the sweep a client asks "blob
/// exists?" for each and pushes the image again. Whatever the registry answers must hold:
/// a blob said to exist (the registry read its `_layers` link, which takes a doomed blob
/// back) survives the run; one said not to exist (hidden while doomed, or deleted) is
/// uploaded again. The push succeeds and the image pulls whole afterwards.
pub fn blob_reuploaded_while_hidden() {
    let Some((_world, ctx, _)) = race_world("hidden") else {
        return;
    };
    let (repo, image) = ("race/d", "f3-v0");
    push_ok(&ctx, image, &format!("{repo}:1"));
    delete(&ctx, repo, image);
    let blobs = ctx.image(image).blobs.clone();
    let id = start_gc_and_wait_for_sweep(&ctx, "hidden");
    let heads: Vec<u16> = during_sweep(&ctx, id, "HEAD", || {
        blobs
            .iter()
            .map(|b| api::head_blob(ctx.port, repo, b))
            .collect()
    });
    eprintln!("[race hidden] HEAD of the doomed blobs during the sweep: {heads:?}");
    during_sweep(&ctx, id, "the push", || {
        push_ok(&ctx, image, &format!("{repo}:2"))
    });
    finish(&ctx, id, "done", &[(&format!("{repo}:2"), image)]);
    for (b, head) in blobs.iter().zip(&heads) {
        assert!(
            *head == 404 || ctx.blob_exists(b),
            "{} was said to exist during the sweep (HTTP {head}) and is gone",
            short(b)
        );
        assert_eq!(
            api::head_blob(ctx.port, repo, b),
            200,
            "{} after the push",
            short(b)
        );
    }
}

/// `regfs gc stop` in the middle of the sweep: the job is recorded as stopped in the
/// sweep, the store is consistent (no link to a deleted blob, no half-deleted blob), no
/// blob is left hidden (the registry says every remaining filler exists), and a push of an
/// image whose blobs were doomed succeeds and pulls.
pub fn stop_in_the_middle_of_the_sweep() {
    let Some((_world, ctx, filler_digests)) = race_world("stop") else {
        return;
    };
    let (repo, image) = ("race/e", "f0-v1");
    push_ok(&ctx, image, &format!("{repo}:1"));
    delete(&ctx, repo, image);
    let id = start_gc_and_wait_for_sweep(&ctx, "stop");
    let out = api::regfs(&ctx, &["gc", "stop"], Duration::from_secs(30));
    assert!(
        out.status.success(),
        "regfs gc stop: {}",
        describe_output(&out)
    );
    let job = finish(&ctx, id, "stopped", &[]);
    assert_eq!(job["ended_in"], "sweep", "{job:#}");
    let deleted = blobs_deleted(&job) as usize;
    assert!(
        deleted < filler_digests.len(),
        "stopped before the end: {deleted} of {} garbage blobs deleted",
        filler_digests.len()
    );
    let status = ctx.status().unwrap();
    assert_eq!(status["state"], "idle", "{status:#}");
    let mut kept = 0;
    for d in &filler_digests[..LINKED_FILLERS] {
        if ctx.blob_exists(d) {
            kept += 1;
            assert_eq!(
                api::head_blob(ctx.port, FILLER_REPO, d),
                200,
                "filler {} left hidden",
                short(d)
            );
        }
    }
    eprintln!(
        "[race stop] {deleted} blobs deleted before the stop; {kept} of {LINKED_FILLERS} linked fillers kept and visible"
    );
    push_ok(&ctx, image, &format!("{repo}:2"));
    ctx.pull(&format!("{repo}:2"), image)
        .unwrap_or_else(|e| panic!("after the stop: {e}"));
}

/// POST and PATCH of an upload's data: the location to commit it at.
fn begin_upload(port: u16, repo: &str, bytes: &[u8]) -> String {
    let start = request(
        port,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(start.status, 202, "POST upload: {}", start.text());
    let patch = request(
        port,
        "PATCH",
        path_of(start.header("Location").expect("Location")),
        &[("Content-Type", "application/octet-stream")],
        bytes,
    )
    .unwrap();
    assert_eq!(patch.status, 202, "PATCH upload: {}", patch.text());
    path_of(patch.header("Location").expect("Location")).to_string()
}

fn commit_upload(port: u16, location: &str, digest: &str) -> Answer {
    let sep = if location.contains('?') { '&' } else { '?' };
    request(
        port,
        "PUT",
        &format!("{location}{sep}digest={digest}"),
        &[],
        &[],
    )
    .unwrap_or_else(|e| panic!("PUT commit: {e}"))
}

fn path_of(location: &str) -> &str {
    location
        .find("/v2/")
        .map(|i| &location[i..])
        .unwrap_or(location)
}

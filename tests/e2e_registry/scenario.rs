//! The scenario both tests run, in one mode each: fill the store through the registry,
//! hold a GC epoch open while pushes are refused and pulls go on, then check the job
//! record, the store, the clients' view and the logs.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::describe_output;
use crate::common::store::well_formed_link;
use crate::ctx::Mode;
use crate::observe::{PullLoop, PullRecord, job_time, log_time, registry_log_problems};
use crate::support::{http, short, signal, stop, text, tree_bytes, walk};
use crate::world::setup;
use crate::{FUSER_INTERRUPT_RACE, HOLD, HOLDER, V2};

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(25));
    }
}

pub fn scenario(mode: Mode) {
    let t_start = Instant::now();
    let Some(mut world) = setup(mode) else {
        return;
    };
    let ctx = world.ctx.clone();
    let tag = format!("[{mode:?}]");
    let img = |n: &str| ctx.image(n).clone();
    let at = |repo: &str, n: &str| format!("{repo}@{}", ctx.image(n).digest);

    // --- Fill the store through the registry.
    let t0 = Instant::now();
    ctx.push_ok("base", "library/base:1");
    ctx.push_ok("base", "mirror/library/base:1");
    ctx.push_ok("app-v1", "team/app/web:latest");
    // The tag moves: app-v1 stays in the repository, untagged.
    ctx.push_ok("app-v2", "team/app/web:latest");
    ctx.push_ok("multi", "team/app/multi:1.0");
    // The signature of the index: a referrer (`subject`), pushed by digest, untagged.
    ctx.push_ok("multi-signature", &at("team/app/multi", "multi-signature"));
    // An untagged image, pushed by digest only.
    ctx.push_ok("scratch", &at("library/base", "scratch"));
    // An image whose manifest is deleted by digest through the API.
    ctx.push_ok("tools", "tools/cli:1");
    let tools = img("tools").digest;
    let (st, body) = http(
        ctx.port,
        "DELETE",
        &format!("/v2/tools/cli/manifests/{tools}"),
        None,
    )
    .expect("DELETE manifest");
    assert_eq!(st, 202, "DELETE tools/cli@{tools}: {}", text(&body));
    assert_eq!(
        ctx.manifest_digest("tools/cli", &tools),
        Err("HTTP 404".into()),
        "tools/cli@digest after DELETE"
    );
    assert_eq!(
        ctx.manifest_digest("team/app/web", &img("app-v1").digest)
            .as_deref(),
        Ok(img("app-v1").digest.as_str()),
        "the image the tag moved away from is still served by digest before GC"
    );
    eprintln!(
        "{tag} pushed 8 images in {:.2} s",
        t0.elapsed().as_secs_f64()
    );

    // What survives, and what a run must delete.
    let removed: Vec<&str> = match mode {
        Mode::Default => vec!["tools"],
        Mode::DeleteUntagged => vec!["tools", "scratch", "app-v1"],
    };
    let kept_images: Vec<&str> = [
        "base",
        "app-v2",
        "multi",
        "multi-signature",
        "scratch",
        "app-v1",
    ]
    .into_iter()
    .filter(|n| !removed.contains(n))
    .collect();
    let kept: BTreeSet<String> = kept_images
        .iter()
        .flat_map(|n| img(n).all_blobs())
        .collect();
    let gone: BTreeSet<String> = removed
        .iter()
        .flat_map(|n| img(n).all_blobs())
        .filter(|b| !kept.contains(b))
        .collect();
    for b in kept.iter().chain(&gone) {
        assert!(
            ctx.blob_exists(b),
            "{tag} blob {} in the store before GC",
            short(b)
        );
    }
    let gone_bytes: u64 = gone.iter().map(|b| ctx.blob_size(b)).sum();
    let blobs_before = tree_bytes(&ctx.store.join(V2).join("blobs"));

    // Pulled in a loop through the whole epoch: every tagged image and the signature.
    let loop_pulls: Vec<(String, String)> = [
        ("library/base:1".to_string(), "base"),
        ("mirror/library/base:1".to_string(), "base"),
        ("team/app/web:latest".to_string(), "app-v2"),
        ("team/app/multi:1.0".to_string(), "multi"),
        (at("team/app/multi", "multi-signature"), "multi-signature"),
    ]
    .into_iter()
    .map(|(r, i)| (r, i.to_string()))
    .collect();

    // --- The epoch.
    let mut holder = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(ctx.mnt.join(HOLDER))
        .expect("open the in-place writer through the mount");
    holder.write_all(b"before the epoch\n").unwrap();
    let pull_loop = PullLoop::start(ctx.clone(), loop_pulls.clone());
    wait_until("a first round of pulls", Duration::from_secs(60), || {
        pull_loop.rounds() >= 1
    });
    ctx.assert_mounted("before the epoch");
    let jobs_before = ctx.jobs().len();
    let t_epoch = Instant::now();
    signal(world.daemon_pid, libc::SIGUSR1);
    let mut job_id = None;
    wait_until(
        "the store to become read-only",
        Duration::from_secs(10),
        || {
            job_id = ctx.read_only_job();
            job_id.is_some()
        },
    );
    let job_id = job_id.unwrap();
    let s = ctx.status().unwrap();
    assert_eq!(
        s["state"], "closing",
        "{tag} held open by the writer: {s:#}"
    );

    // Pushes while read-only: a new image (a blob upload) and a new tag for a stored
    // image (only a manifest and link files to write).
    let erofs_before = ctx.erofs_lines();
    let mut refused = Vec::new();
    for (image, dest) in [("late", "team/app/web:late"), ("base", "library/base:2")] {
        let out = ctx.while_read_only(job_id, &format!("{tag} the push of {dest}"), || {
            ctx.push(image, dest)
        });
        assert!(
            !out.status.success(),
            "{tag} push of {image} to {dest} during the epoch succeeded: {}",
            describe_output(&out)
        );
        let err = text(&out.stderr);
        assert!(
            err.contains("500 Internal Server Error"),
            "{tag} skopeo reports the refused push of {dest}: {err}"
        );
        eprintln!("{tag} push {dest} during the epoch refused; skopeo: {err}");
        refused.push(dest);
    }
    wait_until(
        "the registry to log the refused writes",
        Duration::from_secs(5),
        || ctx.erofs_lines() >= erofs_before + refused.len(),
    );

    // Pulls while read-only.
    for (reference, image) in &loop_pulls {
        let r = ctx.while_read_only(job_id, &format!("{tag} the pull of {reference}"), || {
            ctx.pull(reference, image)
        });
        if let Err(e) = r {
            panic!("{tag} pull during the epoch failed: {e}");
        }
    }
    // The in-place writer may still finish its work while the epoch drains.
    holder
        .write_all(b"during the drain\n")
        .expect("an in-place writer open before the epoch may write while it drains");
    holder.sync_all().expect("fsync during the drain");
    let elapsed = t_epoch.elapsed();
    if elapsed < HOLD {
        thread::sleep(HOLD - elapsed);
    }
    assert_eq!(ctx.read_only_job(), Some(job_id), "{tag} still read-only");
    assert_eq!(ctx.status().unwrap()["state"], "closing");
    let held = t_epoch.elapsed();
    drop(holder);

    let mut job = Value::Null;
    wait_until("the GC job to finish", Duration::from_secs(60), || {
        let jobs = ctx.jobs();
        match jobs.iter().find(|j| j["id"] == job_id) {
            Some(j) if j["outcome"] != "running" => {
                job = j.clone();
                true
            }
            _ => false,
        }
    });
    let epoch_secs = t_epoch.elapsed().as_secs_f64();
    let records = pull_loop.finish(1);
    ctx.assert_mounted("after the epoch");

    // --- Every pull of the loop worked, some of them during the epoch.
    let failed: Vec<&PullRecord> = records.iter().filter(|r| r.result.is_err()).collect();
    let during = records
        .iter()
        .filter(|r| r.read_only_before == Some(job_id) && r.read_only_after == Some(job_id))
        .count();
    eprintln!(
        "{tag} pull loop: {} pulls, {} entirely during the epoch, {} failed",
        records.len(),
        during,
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{tag} pulls failed around the GC epoch: {:#?}",
        failed
            .iter()
            .map(|r| format!("{}: {:?}", r.reference, r.result))
            .collect::<Vec<_>>()
    );
    assert!(
        during >= 1,
        "{tag} the pull loop met the epoch: {records:#?}"
    );

    // --- The job record.
    eprintln!("{tag} job {job_id}: {job}");
    assert_eq!(jobs_before + 1, ctx.jobs().len(), "{tag} one job recorded");
    assert_eq!(job["outcome"], "done", "{tag} job: {job:#}");
    assert_eq!(job["trigger"], "signal", "{tag} job: {job:#}");
    let report = &job["report"];
    assert_eq!(
        report["mode"],
        match mode {
            Mode::Default => "default",
            Mode::DeleteUntagged => "delete-untagged",
        },
        "{tag} job: {job:#}"
    );
    let bytes_freed = report["bytes_freed"].as_u64().expect("bytes_freed");
    assert!(bytes_freed > 0, "{tag} job freed space: {job:#}");
    assert_eq!(
        report["blobs_deleted"].as_u64(),
        Some(gone.len() as u64),
        "{tag} blobs deleted: expected {:?}; job: {job:#}",
        gone.iter().map(|b| short(b)).collect::<Vec<_>>()
    );
    assert_eq!(bytes_freed, gone_bytes, "{tag} bytes freed: {job:#}");
    assert_eq!(
        job["cut_writers"].as_array().map(Vec::len),
        Some(0),
        "{tag} the holder drained, nothing was uploading: {job:#}"
    );
    let ro = job["read_only_seconds"].as_f64().unwrap_or(0.0);
    assert!(
        ro >= held.as_secs_f64() - 0.5,
        "{tag} read-only for {ro} s, held {held:?}: {job:#}"
    );
    assert_eq!(
        report["warnings"].as_array().map(Vec::len),
        Some(0),
        "{tag} warnings: {job:#}"
    );

    // --- The store.
    for b in &gone {
        assert!(!ctx.blob_exists(b), "{tag} blob {} deleted", short(b));
        let links = ctx.layer_links(b);
        assert!(
            links.is_empty(),
            "{tag} _layers links of deleted {b}: {links:?}"
        );
    }
    for b in &kept {
        assert!(ctx.blob_exists(b), "{tag} blob {} kept", short(b));
    }
    let mut files = Vec::new();
    walk(&ctx.store.join("docker"), &mut files);
    let mut links = 0;
    for f in files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "link"))
    {
        let content = fs::read(f).unwrap();
        assert!(
            well_formed_link(&content),
            "{tag} link file {} holds {:?} ({} bytes)",
            f.display(),
            String::from_utf8_lossy(&content),
            content.len()
        );
        links += 1;
    }
    assert!(links > 10, "{tag} only {links} link files?");
    let blobs_after = tree_bytes(&ctx.store.join(V2).join("blobs"));
    eprintln!(
        "{tag} blobs: {blobs_before} bytes before, {blobs_after} after ({} freed); {links} link files, all whole",
        blobs_before.saturating_sub(blobs_after)
    );
    assert_eq!(
        blobs_before.saturating_sub(blobs_after),
        bytes_freed,
        "{tag} du of the blobs"
    );

    // --- After the epoch: the refused pushes go through, every kept image pulls.
    ctx.push_ok("late", "team/app/web:late");
    ctx.push_ok("base", "library/base:2");
    let mut after: Vec<(String, &str)> = vec![
        ("library/base:1".into(), "base"),
        ("library/base:2".into(), "base"),
        ("mirror/library/base:1".into(), "base"),
        ("team/app/web:latest".into(), "app-v2"),
        ("team/app/web:late".into(), "late"),
        ("team/app/multi:1.0".into(), "multi"),
        (at("team/app/multi", "multi-signature"), "multi-signature"),
    ];
    if mode == Mode::Default {
        after.push((at("library/base", "scratch"), "scratch"));
        after.push((at("team/app/web", "app-v1"), "app-v1"));
    }
    for (reference, image) in &after {
        if let Err(e) = ctx.pull(reference, image) {
            panic!("{tag} pull after the epoch: {e}");
        }
    }
    // And what was collected is gone for clients too.
    let mut collected = vec![("tools/cli", "tools")];
    if mode == Mode::DeleteUntagged {
        collected.push(("library/base", "scratch"));
        collected.push(("team/app/web", "app-v1"));
    }
    for (repo, image) in collected {
        let d = img(image).digest;
        assert_eq!(
            ctx.manifest_digest(repo, &d),
            Err("HTTP 404".into()),
            "{tag} {repo}@{d} collected"
        );
        assert!(
            ctx.pull(&format!("{repo}@{d}"), image).is_err(),
            "{tag} pulling collected {repo}@{d} must fail"
        );
    }

    ctx.assert_mounted("after the pulls that follow the epoch");

    // --- Logs: the registry saw no storage error but the refused writes, all inside the
    // epoch; the daemon logged no error.
    let (erofs, problems) = registry_log_problems(&ctx.registry_log());
    assert!(
        problems.is_empty(),
        "{tag} storage errors in the registry's log:\n{}",
        problems.join("\n")
    );
    assert!(
        erofs.len() >= refused.len(),
        "{tag} the registry logged the refused writes: {erofs:#?}"
    );
    let (start, end) = (job_time(&job, "started_at"), job_time(&job, "ended_at"));
    for l in &erofs {
        let t = log_time(l).unwrap_or_else(|| panic!("no time in {l}"));
        assert!(
            t >= start && t <= end,
            "{tag} EROFS outside the epoch ({start} .. {end}): {l}"
        );
    }
    let dlog = fs::read_to_string(&ctx.daemon_log).unwrap_or_default();
    let (interrupt_races, errors): (Vec<&str>, Vec<&str>) = dlog
        .lines()
        .filter(|l| l.contains(" ERROR "))
        .partition(|l| l.contains(FUSER_INTERRUPT_RACE));
    assert!(
        errors.is_empty(),
        "{tag} the daemon logged errors:\n{}",
        errors.join("\n")
    );
    if !interrupt_races.is_empty() {
        eprintln!(
            "{tag} NOTE: the daemon logged {} x ERROR \"{FUSER_INTERRUPT_RACE}\" \
             (fuser's ENOSYS answer to a FUSE_INTERRUPT arriving after the interrupted \
             request was answered; see FUSER_INTERRUPT_RACE)",
            interrupt_races.len()
        );
    }

    // --- Orderly shutdown: the registry, then the daemon (SIGTERM unmounts, exit 0).
    drop(world.registry.take());
    let mut daemon = world.daemon.take().unwrap();
    let st = stop(&mut daemon.child, Duration::from_secs(15));
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(0),
        "{tag} regfs exit: {dlog}"
    );
    assert!(
        regfs::mount::mount_at(&ctx.mnt).is_none(),
        "{tag} unmounted after SIGTERM"
    );
    drop(daemon);
    eprintln!(
        "{tag} done in {:.1} s (epoch {:.1} s, read-only {ro:.2} s, {} registry EROFS lines)",
        t_start.elapsed().as_secs_f64(),
        epoch_secs,
        erofs.len()
    );
}

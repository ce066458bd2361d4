//! What a run does to the store and the mount: writes refused with EROFS during its
//! epoch and working after it, a run stopped mid-sweep by `regfs gc stop` or SIGTERM,
//! and a time limit that ends a run in the mark phase.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

use chrono::Utc;
use regfs::layout::Digest;

use crate::common::store::StoreBuilder;
use crate::daemon::{Daemon, assert_writable, expect_erofs, hold_writer, jobs_of, text, utc};
use crate::fixture::{assert_consistent, blob_data, blob_set, env, gen_store, listing, v2};

#[test]
fn sigusr1_starts_a_run_writes_fail_with_erofs_during_it_and_work_after() {
    let Some(e) = env() else { return };
    let b = StoreBuilder::new(&e.storage);
    let l1 = b.blob(b"layer one");
    let l2 = b.blob(b"layer two");
    let (manifest, config) = b.image("library/app", &[l1, l2], "a");
    b.tag("library/app", "latest", &manifest);
    let garbage: Vec<Digest> = (0..5)
        .map(|i| {
            let d = b.blob(format!("garbage blob {i}").as_bytes());
            if i % 2 == 0 {
                b.layer_link("library/app", &d);
            }
            d
        })
        .collect();
    let scratch = e.storage.join("scratch");
    fs::create_dir(&scratch).unwrap();
    fs::write(scratch.join("existing"), b"old").unwrap();
    fs::write(scratch.join("victim"), b"v").unwrap();

    let d = Daemon::start(&e, &["--drain-timeout", "30"]);
    let m = &e.mnt;
    let through = |d: &Digest| blob_data(m, &d.hex());
    // Look the garbage up through the mount, so the kernel has it cached.
    for g in &garbage {
        assert!(through(g).is_file());
    }
    let idle = d.status();
    assert_eq!(idle["state"], "idle");
    assert_eq!(idle["read_only"], false);

    let mut held = hold_writer(m);
    d.signal(libc::SIGUSR1);
    let st = d.wait_status("state closing", Duration::from_secs(5), |s| {
        s["state"] == "closing"
    });
    assert_eq!(st["read_only"], true, "{st:#}");
    let since = utc(&st["read_only_since"], "read_only_since");
    assert!((Utc::now() - since).num_seconds().abs() < 10, "{since}");
    let banner = st["banner"].as_str().expect("a banner while read-only");
    assert!(
        banner.to_lowercase().contains("read-only") && banner.contains("push"),
        "banner says pushes are refused: {banner}"
    );
    assert_eq!(st["current_job"]["id"], 1, "{st:#}");
    assert_eq!(st["current_job"]["trigger"], "signal", "{st:#}");

    // Writes are refused...
    expect_erofs(
        OpenOptions::new()
            .write(true)
            .open(m.join("scratch/existing")),
        "open for writing",
    );
    expect_erofs(fs::File::create(m.join("scratch/new")), "create");
    expect_erofs(fs::create_dir(m.join("scratch/newdir")), "mkdir");
    expect_erofs(fs::remove_file(m.join("scratch/victim")), "unlink");
    expect_erofs(
        fs::rename(m.join("scratch/victim"), m.join("scratch/moved")),
        "rename",
    );
    expect_erofs(
        fs::create_dir_all(v2(m).join("repositories/library/app/_uploads/u1")),
        "mkdir of an upload",
    );
    // ... reads work ...
    assert_eq!(
        fs::read(through(&manifest)).unwrap(),
        fs::read(blob_data(&e.storage, &manifest.hex())).unwrap()
    );
    assert_eq!(fs::read(m.join("scratch/existing")).unwrap(), b"old");
    assert_eq!(
        fs::read_dir(v2(m).join("repositories/library/app/_manifests/tags"))
            .unwrap()
            .count(),
        1,
        "listing works"
    );
    // ... and the writer the epoch waits for may still finish.
    held.write_all(b" and finished").unwrap();
    held.flush().unwrap();
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        d.status()["state"],
        "closing",
        "still waiting for the writer"
    );
    drop(held);

    let job = d.wait_job(1, Duration::from_secs(15));
    assert_eq!(job["trigger"], "signal", "{job:#}");
    assert_eq!(job["outcome"], "done", "{job:#}");
    assert!(job["error"].is_null(), "{job:#}");
    assert!(
        job["drain_seconds"].as_f64().unwrap() >= 0.15,
        "the epoch waited for the held writer: {job:#}"
    );
    assert_eq!(job["cut_writers"], serde_json::json!([]), "{job:#}");
    assert_eq!(job["report"]["blobs_deleted"], 5, "{job:#}");
    // The six writes above answered EROFS, each counted: what the run cost pushes.
    assert_eq!(job["refused_writes"], 6, "{job:#}");
    // The store's own size after the run: the live blobs' data, not the filesystem's.
    let live_bytes: u64 = [manifest, config, l1, l2]
        .iter()
        .map(|d| fs::metadata(blob_data(&e.storage, &d.hex())).unwrap().len())
        .sum();
    assert_eq!(job["store_bytes"], live_bytes, "{job:#}");
    let started = utc(&job["started_at"], "started_at");
    let ended = utc(&job["ended_at"], "ended_at");
    assert!(started <= ended);
    assert_eq!(
        fs::read(m.join("scratch/held")).unwrap(),
        b"held and finished"
    );

    for g in &garbage {
        assert!(
            !blob_data(&e.storage, &g.hex()).exists(),
            "garbage {g} gone"
        );
        assert!(
            fs::metadata(through(g)).is_err(),
            "garbage {g} gone through the mount too"
        );
    }
    assert!(
        !b.repo("library/app/_layers/sha256")
            .join(garbage[0].hex())
            .exists()
    );
    for live in [manifest, config, l1, l2] {
        assert!(b.has_blob(&live), "live blob {live} kept");
        assert!(through(&live).is_file());
    }
    assert_consistent(&e.storage);

    let st = d.status();
    assert_eq!(st["state"], "idle", "{st:#}");
    assert_eq!(st["read_only"], false, "{st:#}");
    assert!(st["banner"].is_null(), "{st:#}");
    assert!(st["current_job"].is_null(), "{st:#}");
    assert_eq!(st["last_job"]["id"], 1, "{st:#}");
    assert_writable(m, "after");
    fs::write(m.join("scratch/existing"), b"new").unwrap();
    fs::remove_file(m.join("scratch/victim")).unwrap();
}

#[test]
fn stop_during_the_sweep_leaves_a_consistent_store_and_a_writable_mount() {
    let Some(e) = env() else { return };
    let meta = gen_store(&e.storage, 5_000, 0.9, 5);
    let garbage = meta["expected_deleted_blobs"]["default"].as_u64().unwrap() as usize;
    assert!(
        meta["layer_links"].as_u64().unwrap() > 3000,
        "garbage with _layers links"
    );
    let before = blob_set(&e.storage);
    assert!(assert_consistent(&e.storage) > 3000, "a consistent start");

    let d = Daemon::start(&e, &[]);
    let id = d.gc();
    assert_eq!(id, 1);
    let st = d.wait_status("sweeping with some done", Duration::from_secs(20), |s| {
        s["state"] == "sweeping" && s["progress"]["done"].as_u64().unwrap_or(0) >= 200
    });
    assert_eq!(st["progress"]["phase"], "sweep", "{st:#}");
    assert_eq!(st["read_only"], true, "{st:#}");
    let asked = Instant::now();
    let out = d.cli_ok(&["gc", "stop"], &[]);
    assert!(text(&out.stdout).contains('1'), "{}", text(&out.stdout));
    let job = d.wait_job(1, Duration::from_secs(10));
    let took = asked.elapsed();
    assert!(
        took < Duration::from_millis(2000),
        "stopped {took:?} after the request"
    );
    assert_eq!(job["outcome"], "stopped", "{job:#}");
    assert_eq!(job["ended_in"], "sweep", "{job:#}");
    let st = d.status();
    assert_eq!(st["state"], "idle", "{st:#}");
    assert_eq!(st["read_only"], false, "{st:#}");

    let after = blob_set(&e.storage);
    let deleted = before.len() - after.len();
    assert!(after.is_subset(&before));
    assert!(
        deleted > 0 && deleted < garbage,
        "some but not all garbage deleted: {deleted} of {garbage}"
    );
    assert_eq!(
        job["report"]["blobs_deleted"].as_u64(),
        Some(deleted as u64),
        "the report counts what went: {job:#}"
    );
    assert_consistent(&e.storage);
    assert_writable(&e.mnt, "after-stop");
    // The stop answer with nothing running.
    let out = d.cli(&["gc", "stop"], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no GC run"),
        "{}",
        text(&out.stderr)
    );

    let job2 = d.gc_wait();
    assert_eq!(job2["id"], 2, "{job2:#}");
    assert_eq!(job2["outcome"], "done", "{job2:#}");
    assert_eq!(
        job2["report"]["blobs_deleted"].as_u64(),
        Some((garbage - deleted) as u64),
        "{job2:#}"
    );
    assert_eq!(blob_set(&e.storage).len(), before.len() - garbage);
    assert_consistent(&e.storage);
    assert_writable(&e.mnt, "after-second-run");
}

#[test]
fn sigterm_during_a_run_stops_it_then_unmounts_and_exits_zero() {
    let Some(e) = env() else { return };
    let meta = gen_store(&e.storage, 4_000, 0.9, 8);
    let garbage = meta["expected_deleted_blobs"]["default"].as_u64().unwrap() as usize;
    let before = blob_set(&e.storage);
    let mut d = Daemon::start(&e, &[]);
    assert_eq!(d.gc(), 1);
    d.wait_status("sweeping", Duration::from_secs(20), |s| {
        s["state"] == "sweeping" && s["progress"]["done"].as_u64().unwrap_or(0) >= 50
    });
    let asked = Instant::now();
    d.signal(libc::SIGTERM);
    let code = d.wait_exit(Duration::from_secs(10));
    let took = asked.elapsed();
    assert_eq!(code, 0, "exit code after SIGTERM:\n{}", d.log());
    assert!(
        took < Duration::from_secs(3),
        "exited {took:?} after SIGTERM"
    );
    assert!(
        regfs::mount::mount_at(&e.mnt).is_none_or(|m| !m.fstype.starts_with("fuse")),
        "unmounted"
    );
    let jobs = jobs_of(&e.mnt, &e.state, None);
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    assert_eq!(jobs[0]["outcome"], "stopped", "{:#}", jobs[0]);
    assert_eq!(jobs[0]["ended_in"], "sweep", "{:#}", jobs[0]);
    assert!(
        !e.state.join("running.json").exists(),
        "the run was recorded as ended, not left running"
    );
    let deleted = before.len() - blob_set(&e.storage).len();
    assert!(
        deleted > 0 && deleted < garbage,
        "{deleted} of {garbage} deleted"
    );
    assert_consistent(&e.storage);
    let log = d.log();
    assert!(log.contains("stopping"), "{log}");
}

#[test]
fn a_time_limit_shorter_than_the_mark_phase_deletes_nothing() {
    let Some(e) = env() else { return };
    let meta = gen_store(&e.storage, 5_000, 0.2, 11);
    assert!(meta["expected_deleted_blobs"]["default"].as_u64().unwrap() > 500);
    let before = listing(&e.storage);
    let blobs_before = blob_set(&e.storage);
    let d = Daemon::start(&e, &["--gc-duration", "20ms"]);
    assert_eq!(d.status()["settings"]["duration"], "20ms");
    let job = d.gc_wait();
    assert_eq!(job["id"], 1, "{job:#}");
    assert_eq!(job["outcome"], "time_limit", "{job:#}");
    assert_eq!(job["ended_in"], "mark", "{job:#}");
    if !job["report"].is_null() {
        assert_eq!(job["report"]["blobs_deleted"], 0, "{job:#}");
    }
    let recorded = d.wait_job(1, Duration::from_secs(5));
    assert_eq!(recorded["outcome"], "time_limit");
    assert_eq!(recorded["ended_in"], "mark");
    assert_eq!(blob_set(&e.storage), blobs_before, "no blob deleted");
    assert!(listing(&e.storage) == before, "nothing at all changed");
    let st = d.status();
    assert_eq!(st["read_only"], false, "{st:#}");
    assert_eq!(st["state"], "idle", "{st:#}");
    assert_writable(&e.mnt, "after-time-limit");
}

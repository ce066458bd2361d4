//! Online mode through a real mount: the store stays writable for the whole run, the
//! job records its mode and pause, and garbage goes while tagged images stay whole.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use regfs::layout::Digest;

use crate::common::prereq::Needs;
use crate::common::registry_process::serve;
use crate::common::store::StoreBuilder;
use crate::daemon::{Daemon, assert_writable};
use crate::fixture::{assert_consistent, blob_data, blob_set, env, gen_store};

#[test]
fn an_online_run_collects_while_every_write_keeps_working() {
    let Some(e) = env() else { return };
    let b = StoreBuilder::new(&e.storage);
    let l1 = b.blob(b"online layer one");
    let l2 = b.blob(b"online layer two");
    let (manifest, config) = b.image("library/app", &[l1, l2], "online");
    b.tag("library/app", "latest", &manifest);
    let garbage: Vec<Digest> = (0..400)
        .map(|i| {
            let d = b.blob(format!("online garbage {i}").as_bytes());
            b.layer_link("old/app", &d);
            d
        })
        .collect();

    let d = Daemon::start(&e, &["--gc-mode", "online", "--gc-min-age", "0s"]);
    assert_eq!(d.status()["mode"], "online");
    let done = AtomicBool::new(false);
    let writes = AtomicU64::new(0);
    let seen_read_only = AtomicBool::new(false);
    let job = std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0;
            while !done.load(Ordering::Relaxed) {
                assert_writable(&e.mnt, &format!("online-{i}"));
                i += 1;
                writes.fetch_add(1, Ordering::Relaxed);
            }
        });
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if d.status()["read_only"] == true {
                    seen_read_only.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let job = d.gc_wait();
        done.store(true, Ordering::Relaxed);
        job
    });
    assert!(
        !seen_read_only.load(Ordering::Relaxed),
        "status said read-only during an online run"
    );
    assert!(writes.load(Ordering::Relaxed) > 0);
    assert_eq!(job["outcome"], "done", "{job:#}\n{}", d.log());
    assert_eq!(job["settings"]["mode"], "online", "{job:#}");
    assert_eq!(job["read_only_seconds"], 0.0, "{job:#}");
    let pause = job["pause_seconds"].as_f64().expect("pause_seconds");
    assert!(pause > 0.0, "an online run pauses writes once: {job:#}");
    assert_eq!(job["report"]["blobs_deleted"], garbage.len(), "{job:#}");
    for g in &garbage {
        assert!(!b.has_blob(g), "garbage {g} left");
    }
    for live in [&l1, &l2, &manifest, &config] {
        assert!(b.has_blob(live), "live blob {live} deleted");
    }
    assert_consistent(&e.storage);
    let jobs = d.jobs();
    assert_eq!(jobs[0]["settings"]["mode"], "online");
    let metrics_mode = d.status();
    assert_eq!(metrics_mode["state"], "idle");
}

#[test]
fn online_mode_with_the_registrys_in_memory_cache_refuses_to_run() {
    let Some(e) = env() else { return };
    if !Needs::new()
        .on_path(&["docker-registry"])
        .met("the online cache refusal test runs a real docker-registry")
    {
        return;
    }
    let b = StoreBuilder::new(&e.storage);
    let g = b.blob(b"garbage kept by a refused online run");
    let dir = e._dir.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            e.mnt.display()
        ),
    )
    .unwrap();
    let shown = config.to_str().unwrap().to_owned();
    let d = Daemon::start(
        &e,
        &[
            "--gc-mode",
            "online",
            "--gc-min-age",
            "0s",
            "--registry-config",
            &shown,
            "--allow-unsafe-cache",
        ],
    );
    // Debian's default cache, without the drop-in's override.
    let registry = serve(&config, &[]);
    let out = d.cli(&["gc"], &["--wait", "--json"]);
    drop(registry);
    assert!(!out.status.success(), "a refused run is a failed job");
    let job = d.wait_job(1, Duration::from_secs(10));
    assert_eq!(job["outcome"], "failed", "{job:#}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("online GC refused") && error.contains("inmemory"),
        "{error}"
    );
    assert!(b.has_blob(&g), "a refused run deleted garbage");
    assert!(d.log().contains("online GC refused"), "{}", d.log());
}

#[test]
fn a_daemon_killed_mid_online_sweep_leaves_nothing_hidden_after_restart() {
    let Some(e) = env() else { return };
    gen_store(&e.storage, 12_000, 0.9, 33);
    let d = Daemon::start(&e, &["--gc-mode", "online", "--gc-min-age", "0s"]);
    assert_eq!(d.gc(), 1);
    d.wait_status("sweeping with some done", Duration::from_secs(60), |s| {
        s["state"] == "sweeping" && s["progress"]["done"].as_u64().unwrap_or(0) >= 200
    });
    let mut d = d;
    d.guard.child.kill().unwrap();
    d.guard.child.wait().unwrap();
    drop(d);
    let left = blob_set(&e.storage);

    let d = Daemon::start(&e, &[]);
    let jobs = d.jobs();
    assert_eq!(jobs[0]["outcome"], "interrupted", "{:#}", jobs[0]);
    assert_eq!(jobs[0]["settings"]["mode"], "online", "{:#}", jobs[0]);
    // Doomed blobs the sweep had not reached were hidden in the killed daemon's memory
    // only: through the new mount every one of them is there.
    // (A blob directory the kill caught half deleted has no data: not a blob any more.)
    for hex in left.iter().filter(|h| blob_data(&e.storage, h).is_file()) {
        assert!(
            blob_data(&e.mnt, hex).is_file(),
            "blob {hex} not visible after restart"
        );
    }
    // A kill may leave a blob directory half deleted (its data went first); never a link
    // naming a blob without data.
    let broken = crate::common::online_run::broken_links(&e.storage);
    assert!(broken.is_empty(), "{broken:?}");
}

#[test]
fn a_doomed_blob_taken_back_by_a_read_is_seen_at_once() {
    let Some(e) = env() else { return };
    let b = StoreBuilder::new(&e.storage);
    let mut garbage: Vec<Digest> = (0..6000)
        .map(|i| {
            let d = b.blob(format!("garbage linked in old/app {i}").as_bytes());
            b.layer_link("old/app", &d);
            d
        })
        .collect();
    garbage.sort();
    let d = Daemon::start(&e, &["--gc-mode", "online", "--gc-min-age", "0s"]);
    assert_eq!(d.gc(), 1);
    d.wait_status("sweeping", Duration::from_secs(60), |s| {
        s["state"] == "sweeping" && s["progress"]["done"].as_u64().unwrap_or(0) >= 20
    });
    // The sweep goes in digest order within each worker's share: the last blob is among
    // the last to go. A client asks the registry about it: the lookup of the blob finds
    // nothing (it is hidden), then the registry reads the repository's link to it (which
    // takes it back) and looks again: it must be there, not an absence remembered.
    let last = garbage.last().unwrap();
    let dir = blob_data(&e.mnt, &last.hex())
        .parent()
        .unwrap()
        .to_path_buf();
    let hidden = !dir.exists();
    let link = e
        .mnt
        .join("docker/registry/v2/repositories/old/app/_layers/sha256")
        .join(last.hex())
        .join("link");
    let read = std::fs::read(&link);
    let seen_after = dir.exists();
    let job = d.wait_job(1, Duration::from_secs(120));
    assert_eq!(job["outcome"], "done", "{job:#}");
    if hidden && read.is_ok() {
        assert!(
            seen_after,
            "taken back by the read, yet its absence was still cached"
        );
        assert!(b.has_blob(last), "a blob taken back was deleted");
        assert!(job["resurrected"].as_u64().unwrap() >= 1, "{job:#}");
        println!("blob {last}: hidden, taken back by a read, seen");
    } else {
        println!("blob {last}: gone before the test reached it (hidden {hidden}, read {read:?})");
    }
}

//! Failure is safe and bounded: a collector killed mid-mark, a member killed mid-epoch,
//! etcd gone.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{ClusterWorld, Etcd, Node, TTL, a_blob, a_layer_link, cluster_world};

/// The bound the issue sets on reopening after a death: the lease TTL plus a second.
fn ttl_plus_1s() -> Duration {
    TTL + Duration::from_secs(1)
}

#[test]
fn a_collector_killed_mid_mark_lets_the_others_reopen_within_the_ttl() {
    // Large enough that marking takes a while.
    let Some(ClusterWorld {
        _one_at_a_time,
        dir,
        storage,
    }) = cluster_world(6_000, 11)
    else {
        return;
    };
    let etcd = Etcd::start(dir.path());
    let mut n1 = Node::start(dir.path(), &storage, &etcd, "n1", &[]);
    let n2 = Node::start(dir.path(), &storage, &etcd, "n2", &[]);
    let n3 = Node::start(dir.path(), &storage, &etcd, "n3", &[]);
    for n in [&n1, &n2, &n3] {
        n.wait_writable(true, Duration::from_secs(5));
    }
    assert_eq!(n1.gc().0, 0);
    n1.wait_log("every member closed; collecting", Duration::from_secs(10));
    assert_eq!(n1.status()["state"], "marking", "killed mid-mark");
    n1.kill9();
    let killed = Instant::now();
    for n in [&n2, &n3] {
        assert!(
            !n.writable(),
            "{} still closed right after the kill",
            n.name
        );
    }
    for n in [&n2, &n3] {
        n.wait_writable(true, ttl_plus_1s());
        println!(
            "failover: {} writable {:?} after the collector's kill -9 (TTL {TTL:?})",
            n.name,
            killed.elapsed()
        );
    }
    assert!(killed.elapsed() <= ttl_plus_1s());
    // A later run, from another node, completes.
    assert_eq!(n2.gc().0, 0);
    let jobs = n2.wait_jobs(1, Duration::from_secs(60));
    assert_eq!(jobs[0]["outcome"], "done", "{:#}\n{}", jobs[0], n2.log());
    let names: Vec<&str> = jobs[0]["cluster"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["n2", "n3"], "the dead node is no member any more");
}

#[test]
fn a_member_killed_mid_epoch_holds_the_run_only_until_its_lease_expires() {
    let Some(ClusterWorld {
        _one_at_a_time,
        dir,
        storage,
    }) = cluster_world(100, 12)
    else {
        return;
    };
    let etcd = Etcd::start(dir.path());
    let n1 = Node::start(dir.path(), &storage, &etcd, "n1", &[]);
    let n2 = Node::start(dir.path(), &storage, &etcd, "n2", &[]);
    // n3 would drain its writer for 60 s: the run waits on it until it dies.
    let mut n3 = Node::start(
        dir.path(),
        &storage,
        &etcd,
        "n3",
        &["--drain-timeout", "60"],
    );
    for n in [&n1, &n2, &n3] {
        n.wait_writable(true, Duration::from_secs(5));
    }
    let held = fs::OpenOptions::new()
        .write(true)
        .open(n3.mnt().join(a_layer_link(&storage)))
        .unwrap();
    assert_eq!(n1.gc().0, 0);
    n2.wait_log("acknowledged", Duration::from_secs(5));
    thread::sleep(Duration::from_millis(500));
    assert!(n1.jobs().is_empty(), "the run waits for n3");
    n3.kill9();
    let killed = Instant::now();
    drop(held);
    let jobs = n1.wait_jobs(1, TTL + Duration::from_secs(10));
    let took = killed.elapsed();
    println!("member kill -9: the run ended {took:?} after it (TTL {TTL:?})");
    assert!(took <= TTL + Duration::from_secs(3), "{took:?}");
    assert_eq!(jobs[0]["outcome"], "done", "{:#}", jobs[0]);
    let names: Vec<&str> = jobs[0]["cluster"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["n1", "n2"]);
    for n in [&n1, &n2] {
        n.wait_writable(true, Duration::from_secs(2));
    }
}

#[test]
fn without_etcd_members_refuse_writes_within_the_ttl_and_accept_them_when_it_is_back() {
    let Some(ClusterWorld {
        _one_at_a_time,
        dir,
        storage,
    }) = cluster_world(30, 13)
    else {
        return;
    };
    let blob = a_blob(&storage);
    let mut etcd = Etcd::start(dir.path());
    let n1 = Node::start(dir.path(), &storage, &etcd, "n1", &[]);
    let n2 = Node::start(dir.path(), &storage, &etcd, "n2", &[]);
    for n in [&n1, &n2] {
        n.wait_writable(true, Duration::from_secs(5));
    }
    etcd.kill();
    let lost = Instant::now();
    for n in [&n1, &n2] {
        n.wait_writable(false, TTL);
        println!(
            "fencing: {} refuses writes {:?} after etcd died (TTL {TTL:?})",
            n.name,
            lost.elapsed()
        );
        assert!(
            fs::read(n.mnt().join(&blob)).is_ok(),
            "{}: pulls keep working",
            n.name
        );
    }
    assert!(lost.elapsed() < TTL, "fenced before the lease could expire");
    let (code, said) = n1.gc();
    assert_ne!(code, 0, "no run without etcd: {said}");
    let st = n2.status();
    assert_eq!(st["read_only"], true, "{st:#}");
    assert!(
        st["cluster"]["error"].as_str().unwrap().contains("etcd"),
        "{st:#}"
    );
    thread::sleep(Duration::from_secs(1));
    for n in [&n1, &n2] {
        assert!(!n.writable(), "{} stays fenced", n.name);
    }
    etcd.run();
    let back = Instant::now();
    for n in [&n1, &n2] {
        n.wait_writable(true, Duration::from_secs(10));
        println!(
            "fencing: {} writable {:?} after etcd came back",
            n.name,
            back.elapsed()
        );
    }
}

#[test]
fn a_collector_that_loses_etcd_deletes_nothing_and_every_node_fences() {
    let Some(ClusterWorld {
        _one_at_a_time,
        dir,
        storage,
    }) = cluster_world(100, 14)
    else {
        return;
    };
    let before = crate::harness::blob_set(&storage);
    let mut etcd = Etcd::start(dir.path());
    let n1 = Node::start(dir.path(), &storage, &etcd, "n1", &[]);
    // n2 keeps the epoch in its closing phase: its writer drains for 30 s.
    let n2 = Node::start(
        dir.path(),
        &storage,
        &etcd,
        "n2",
        &["--drain-timeout", "30"],
    );
    for n in [&n1, &n2] {
        n.wait_writable(true, Duration::from_secs(5));
    }
    let held = fs::OpenOptions::new()
        .write(true)
        .open(n2.mnt().join(a_layer_link(&storage)))
        .unwrap();
    assert_eq!(n1.gc().0, 0);
    n1.wait_log("waiting for members to close", Duration::from_secs(5));
    etcd.kill();
    let lost = Instant::now();
    let jobs = n1.wait_jobs(1, TTL + Duration::from_secs(5));
    println!(
        "collector without etcd: its run ended {:?} after etcd died",
        lost.elapsed()
    );
    assert!(
        lost.elapsed() < TTL,
        "the run ends before the collector's lease can lapse"
    );
    assert_eq!(jobs[0]["outcome"], "failed", "{:#}", jobs[0]);
    assert!(
        jobs[0]["error"].as_str().unwrap().contains("etcd"),
        "{:#}",
        jobs[0]
    );
    assert_eq!(
        crate::harness::blob_set(&storage),
        before,
        "nothing deleted"
    );
    for n in [&n1, &n2] {
        n.wait_writable(false, TTL);
    }
    drop(held);
    etcd.run();
    for n in [&n1, &n2] {
        n.wait_writable(true, Duration::from_secs(10));
    }
}

#[test]
fn a_collector_stalled_past_its_lease_deletes_nothing_more_when_it_resumes() {
    let Some(ClusterWorld {
        _one_at_a_time,
        dir,
        storage,
    }) = cluster_world(6_000, 15)
    else {
        return;
    };
    let etcd = Etcd::start(dir.path());
    let n1 = Node::start(dir.path(), &storage, &etcd, "n1", &[]);
    let n2 = Node::start(dir.path(), &storage, &etcd, "n2", &[]);
    for n in [&n1, &n2] {
        n.wait_writable(true, Duration::from_secs(5));
    }
    assert_eq!(n1.gc().0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while n1.status()["state"] != "sweeping" {
        assert!(Instant::now() < deadline, "no sweep:\n{}", n1.log());
        thread::sleep(Duration::from_millis(5));
    }
    // A process stalled (SIGSTOP: a pause, swap, a frozen VM) past its lease.
    assert!(n1.guard.signal(libc::SIGSTOP));
    n2.wait_writable(true, ttl_plus_1s());
    let at_resume = crate::harness::blob_set(&storage);
    assert!(n1.guard.signal(libc::SIGCONT));
    let jobs = n1.wait_jobs(1, Duration::from_secs(20));
    let after = crate::harness::blob_set(&storage);
    // At most the deletions in flight when it froze (two sweep workers) complete.
    assert!(
        at_resume.len() - after.len() <= 2,
        "a collector whose lease lapsed deleted {} more blobs after it resumed: {:#}",
        at_resume.len() - after.len(),
        jobs[0]
    );
    assert_eq!(jobs[0]["outcome"], "stopped", "{:#}", jobs[0]);
}

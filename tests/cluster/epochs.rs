//! One epoch for the whole cluster: one trigger closes every node; two triggers give one
//! run; a schedule on every node gives one run per tick; a node that starts during an
//! epoch stays closed until it ends.

use std::fs;
use std::io::Read;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::daemon::BIN;
use crate::harness::{ClusterWorld, Etcd, Node, a_blob, a_layer_link, blob_set, cluster_world};

fn read_through(n: &Node, rel: &std::path::Path) -> Vec<u8> {
    let mut buf = Vec::new();
    fs::File::open(n.mnt().join(rel))
        .and_then(|mut f| f.read_to_end(&mut buf))
        .unwrap_or_else(|e| panic!("{}: reading {}: {e}", n.name, rel.display()));
    buf
}

#[test]
fn one_trigger_closes_every_node_and_deletes_what_one_node_would() {
    let Some(ClusterWorld {
        _one_at_a_time,
        dir,
        storage,
    }) = cluster_world(300, 7)
    else {
        return;
    };
    // What a single node's run deletes: the same store, collected offline.
    let single = dir.path().join("single");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(&storage)
            .arg(&single)
            .status()
            .unwrap()
            .success()
    );
    let out = Command::new(BIN)
        .args(["gc", "--offline", "--min-age", "0s"])
        .arg(&single)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let etcd = Etcd::start(dir.path());
    // n3 lets an in-place writer finish for 3 s: the epoch lasts that long at least.
    let n1 = Node::start(dir.path(), &storage, &etcd, "n1", &[]);
    let n2 = Node::start(dir.path(), &storage, &etcd, "n2", &[]);
    let n3 = Node::start(dir.path(), &storage, &etcd, "n3", &["--drain-timeout", "3"]);
    let nodes = [&n1, &n2, &n3];
    for n in nodes {
        n.wait_writable(true, Duration::from_secs(5));
    }
    let st = n2.wait_members_open(3, Duration::from_secs(10));
    assert!(st["cluster"]["collector"].is_null(), "{st:#}");
    assert!(st["cluster"]["read_at"].is_string(), "{st:#}");

    let link = a_layer_link(&storage);
    let blob = a_blob(&storage);
    let held = fs::OpenOptions::new()
        .write(true)
        .open(n3.mnt().join(&link))
        .unwrap();
    let t0 = Instant::now();
    let (code, said) = n1.gc();
    assert_eq!(code, 0, "{said}");
    for n in nodes {
        n.wait_writable(false, Duration::from_secs(2));
        println!("{} closed {:?} after the trigger", n.name, t0.elapsed());
        assert!(
            !read_through(n, &blob).is_empty(),
            "{}: reads work in the epoch",
            n.name
        );
    }
    println!("all three closed {:?} after the trigger", t0.elapsed());
    // Still closed while n3 drains its writer.
    thread::sleep(Duration::from_millis(1500));
    let st = n2.status();
    assert_eq!(st["cluster"]["collector"], "n1", "{st:#}");
    assert_eq!(
        st["read_only"], true,
        "a member's status says it is closed: {st:#}"
    );
    assert!(
        st["banner"].as_str().unwrap().contains("node n1 collects"),
        "{st:#}"
    );
    // The text says so too (it once said "read-only no" while the JSON said true).
    let (code, text, err) = n2.regfs(&["status", &n2.mnt().display().to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("read-only    yes: node n1 collects cluster epoch"),
        "{text}"
    );
    for n in nodes {
        assert!(!n.writable(), "{} must stay closed while n3 drains", n.name);
    }
    let jobs = n1.wait_jobs(1, Duration::from_secs(20));
    let ended = Instant::now();
    drop(held);
    for n in nodes {
        n.wait_writable(true, Duration::from_secs(2));
        println!(
            "{} writable again {:?} after the job was seen ended",
            n.name,
            ended.elapsed()
        );
    }
    let job = &jobs[0];
    assert_eq!(job["outcome"], "done", "{job:#}");
    assert_eq!(job["cluster"]["collector"], "n1", "{job:#}");
    let members = job["cluster"]["members"].as_array().unwrap();
    let names: Vec<&str> = members
        .iter()
        .map(|m| m["node"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{job:#}");
    for n in ["n1", "n2", "n3"] {
        assert!(names.contains(&n), "{n} acknowledged: {job:#}");
    }
    let m3 = members.iter().find(|m| m["node"] == "n3").unwrap();
    assert!(m3["drain_seconds"].as_f64().unwrap() >= 2.9, "{m3:#}");
    assert_eq!(m3["cut_writers"].as_array().unwrap().len(), 1, "{m3:#}");
    assert_eq!(
        blob_set(&storage),
        blob_set(&single),
        "the cluster run deletes what one node's run deletes"
    );
    // Every node lists the run, with who collected it.
    for n in [&n2, &n3] {
        let mnt = n.mnt().display().to_string();
        let (code, out, err) = n.regfs(&["jobs", &mnt]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("collected by n1"), "{}: {out}", n.name);
    }
    assert!(
        job["report"]["blobs_deleted"].as_u64().unwrap() > 0,
        "{job:#}"
    );
}

#[test]
fn two_triggers_on_two_nodes_at_once_give_one_run() {
    let Some(ClusterWorld {
        _one_at_a_time,
        dir,
        storage,
    }) = cluster_world(50, 8)
    else {
        return;
    };
    let etcd = Etcd::start(dir.path());
    let n1 = Node::start(dir.path(), &storage, &etcd, "n1", &[]);
    let n2 = Node::start(dir.path(), &storage, &etcd, "n2", &[]);
    for n in [&n1, &n2] {
        n.wait_writable(true, Duration::from_secs(5));
    }
    for round in 1..=3 {
        let (a, b) = thread::scope(|s| {
            let a = s.spawn(|| n1.gc());
            let b = s.spawn(|| n2.gc());
            (a.join().unwrap(), b.join().unwrap())
        });
        let started = [&a, &b].iter().filter(|(code, _)| *code == 0).count();
        assert_eq!(started, 1, "round {round}: one run starts: {a:?} {b:?}");
        let (_, refused) = if a.0 == 0 { &b } else { &a };
        assert!(
            refused.contains("collects"),
            "the other says who collects: {refused}"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while n1.jobs().len() < round {
            assert!(
                Instant::now() < deadline,
                "round {round}: the run did not end"
            );
            thread::sleep(Duration::from_millis(50));
        }
        for n in [&n1, &n2] {
            n.wait_writable(true, Duration::from_secs(3));
        }
    }
    thread::sleep(Duration::from_millis(300));
    // Each node lists the cluster's runs, whichever node collected them.
    for n in [&n1, &n2] {
        assert_eq!(
            n.jobs().len(),
            3,
            "{}: one run per pair of triggers",
            n.name
        );
    }
}

#[test]
fn a_schedule_on_every_node_runs_once_per_tick() {
    let Some(ClusterWorld {
        _one_at_a_time,
        dir,
        storage,
    }) = cluster_world(30, 9)
    else {
        return;
    };
    let etcd = Etcd::start(dir.path());
    let every2s = ["--gc-schedule", "*/2 * * * * *"];
    let begin = chrono::Utc::now();
    let nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| Node::start(dir.path(), &storage, &etcd, n, &every2s))
        .collect();
    thread::sleep(Duration::from_secs(7));
    // Any node lists the cluster's runs, whichever node collected them.
    let runs = nodes[0].jobs();
    let ticks = chrono::Utc::now().timestamp() / 2 - begin.timestamp() / 2;
    let by: Vec<&str> = runs
        .iter()
        .map(|j| j["cluster"]["collector"].as_str().unwrap_or("?"))
        .collect();
    println!(
        "{ticks} ticks of 2 s, {} runs, collected by {by:?}",
        runs.len()
    );
    assert!(runs.len() >= 2, "the schedule ran: {runs:#?}");
    assert!(
        runs.len() as i64 <= ticks,
        "one run per tick for the cluster, not one per node: {ticks} ticks, {runs:#?}"
    );
    // The others stood aside because the tick was claimed, not because a run happened to
    // be still on (a short run could end before a slower node's scheduler fires).
    for n in &nodes {
        let claimed = n
            .log()
            .matches("left to the node that claimed this tick")
            .count();
        let ran = by.iter().filter(|c| **c == n.name).count();
        assert!(
            claimed + ran + 1 >= runs.len(),
            "{}: {claimed} ticks left to others, {ran} run:\n{}",
            n.name,
            n.log()
        );
    }
}

#[test]
fn a_node_that_starts_during_an_epoch_stays_closed_until_it_ends() {
    let Some(ClusterWorld {
        _one_at_a_time,
        dir,
        storage,
    }) = cluster_world(50, 10)
    else {
        return;
    };
    let etcd = Etcd::start(dir.path());
    let n1 = Node::start(dir.path(), &storage, &etcd, "n1", &[]);
    let n2 = Node::start(dir.path(), &storage, &etcd, "n2", &["--drain-timeout", "4"]);
    for n in [&n1, &n2] {
        n.wait_writable(true, Duration::from_secs(5));
    }
    let held = fs::OpenOptions::new()
        .write(true)
        .open(n2.mnt().join(a_layer_link(&storage)))
        .unwrap();
    assert_eq!(n1.gc().0, 0);
    n1.wait_writable(false, Duration::from_secs(2));
    let n3 = Node::start(dir.path(), &storage, &etcd, "n3", &[]);
    assert!(
        !n3.writable(),
        "a node starting during an epoch serves no write"
    );
    n3.wait_log("acknowledged", Duration::from_secs(3));
    assert!(!n3.writable());
    let jobs = n1.wait_jobs(1, Duration::from_secs(20));
    drop(held);
    n3.wait_writable(true, Duration::from_secs(2));
    let names: Vec<&str> = jobs[0]["cluster"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"n3"), "{names:?}");
}

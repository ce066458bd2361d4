//! A node's name is its own: claimed in etcd under its lease, so a second daemon with a
//! live node's name is refused at start and cannot take the node out of the member list;
//! the default name is the machine id and the mount point; a dead node's name is free
//! again once its lease expires.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{ClusterWorld, Etcd, Node, TTL, a_layer_link, cluster_test, cluster_world};

/// The members `n` sees: (name, mount point).
fn members(n: &Node) -> Vec<(String, String)> {
    let st = n.fresh_status();
    st["cluster"]["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no member list: {st:#}"))
        .iter()
        .map(|m| {
            (
                m["node"].as_str().unwrap().to_string(),
                m["mountpoint"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn names(members: &[(String, String)]) -> Vec<&str> {
    members.iter().map(|(n, _)| n.as_str()).collect()
}

/// The names of the members a job's run waited for (the collector first).
fn job_members(job: &Value) -> Vec<String> {
    job["cluster"]["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no cluster in {job:#}"))
        .iter()
        .map(|m| m["node"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_second_daemon_with_a_live_nodes_name_is_refused_and_the_node_stays_a_member() {
    let Some(ClusterWorld {
        _one_at_a_time,
        dir,
        storage,
    }) = cluster_world(50, 16)
    else {
        return;
    };
    let etcd = Etcd::start(dir.path());
    // nodeA lets an in-place writer finish for up to 30 s: a run must wait for it.
    let node_a = Node::start(
        dir.path(),
        &storage,
        &etcd,
        "nodeA",
        &["--drain-timeout", "30"],
    );
    let node_b = Node::start(dir.path(), &storage, &etcd, "nodeB", &[]);
    for n in [&node_a, &node_b] {
        n.wait_writable(true, Duration::from_secs(5));
    }
    let dup = Node::try_start(dir.path(), &storage, &etcd, "dup", Some("nodeA"), &[]);
    let refused = match dup {
        Ok(mut dup) => {
            // Accepted: it leaves again as an operator would stop it.
            dup.stop();
            None
        }
        Err(refused) => Some(refused),
    };
    thread::sleep(Duration::from_millis(300));
    let seen = members(&node_b);
    assert!(
        names(&seen).contains(&"nodeA"),
        "nodeA left the member list when a daemon with its name left: {seen:?}"
    );
    assert!(
        seen.contains(&("nodeA".into(), node_a.mnt().display().to_string())),
        "the entry is nodeA's own: {seen:?}"
    );
    // An epoch waits for nodeA: its writer holds the run until it is let go.
    let held = fs::OpenOptions::new()
        .write(true)
        .open(node_a.mnt().join(a_layer_link(&storage)))
        .unwrap();
    let (code, said) = node_b.gc();
    assert_eq!(code, 0, "{said}");
    node_a.wait_log("GC epoch on", Duration::from_secs(5));
    thread::sleep(Duration::from_secs(1));
    assert!(
        node_b.jobs().is_empty() && !node_b.log().contains("every member closed"),
        "the run went on without nodeA, which still had a writer open:\n{}",
        node_b.log()
    );
    let let_go = Instant::now();
    drop(held);
    let jobs = node_b.wait_jobs(1, Duration::from_secs(30));
    assert_eq!(jobs[0]["outcome"], "done", "{:#}", jobs[0]);
    assert_eq!(job_members(&jobs[0]), ["nodeB", "nodeA"], "{:#}", jobs[0]);
    println!(
        "the run marked {:?} after nodeA's writer let go",
        let_go.elapsed()
    );

    let (code, log) = refused.expect("a daemon named nodeA while nodeA serves is refused");
    assert_ne!(code, 0, "{log}");
    let pid = format!("pid {}", node_a.guard.child.id());
    for what in ["\"nodeA\"", "in use", &pid, "--cluster-node"] {
        assert!(log.contains(what), "the refusal names {what}:\n{log}");
    }
    println!(
        "refused: {}",
        log.lines().rfind(|l| l.contains("in use")).unwrap_or("")
    );
    assert!(!log.contains("serving"), "{log}");
}

#[test]
fn two_daemons_racing_for_one_name_give_one_node() {
    let Some(ClusterWorld {
        _one_at_a_time,
        dir,
        storage,
    }) = cluster_world(20, 17)
    else {
        return;
    };
    let etcd = Etcd::start(dir.path());
    let watcher = Node::start(dir.path(), &storage, &etcd, "watcher", &[]);
    for round in 0..2 {
        let name = format!("twin{round}");
        // Both started at once: whichever reaches etcd first.
        let one = Node::spawn(
            dir.path(),
            &storage,
            &etcd,
            &format!("{name}-1"),
            Some(&name),
            &[],
        );
        let two = Node::spawn(
            dir.path(),
            &storage,
            &etcd,
            &format!("{name}-2"),
            Some(&name),
            &[],
        );
        let (one, two) = (one.started(), two.started());
        let (winner, loser) = match (one, two) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            (Ok(_), Ok(_)) => panic!("round {round}: both daemons named {name} serve"),
            (Err(a), Err(b)) => panic!("round {round}: both refused:\n{}\n{}", a.1, b.1),
        };
        assert_ne!(loser.0, 0);
        assert!(
            loser.1.contains("in use")
                && loser
                    .1
                    .contains(&format!("pid {}", winner.guard.child.id())),
            "the loser names the winner:\n{}",
            loser.1
        );
        let seen = members(&watcher);
        assert_eq!(
            seen.iter().filter(|(n, _)| *n == name).collect::<Vec<_>>(),
            [&(name.clone(), winner.mnt().display().to_string())],
            "round {round}"
        );
    }
}

/// Many claimants of one name at the same instant, through the library: one wins.
#[test]
fn one_of_many_simultaneous_claims_of_a_name_wins() {
    let Some(_one_at_a_time) = cluster_test() else {
        return;
    };
    let dir = crate::common::tempdir();
    let etcd = Etcd::start(dir.path());
    let cfg = regfs::cluster::ClusterConfig {
        endpoints: vec![etcd.url.clone()],
        node: "contested".into(),
        lease_ttl: TTL,
        prefix: "/regfs/".into(),
        access: Default::default(),
    };
    for round in 0..5 {
        let cfg = regfs::cluster::ClusterConfig {
            node: format!("contested{round}"),
            ..cfg.clone()
        };
        let start = std::sync::Barrier::new(8);
        let outcomes: Vec<_> = thread::scope(|s| {
            let claims: Vec<_> = (0..8)
                .map(|i| {
                    let (cfg, start) = (&cfg, &start);
                    s.spawn(move || {
                        start.wait();
                        regfs::cluster::Claimed::take(cfg, &format!("/mnt/{i}"))
                    })
                })
                .collect();
            claims.into_iter().map(|c| c.join().unwrap()).collect()
        });
        let won: Vec<_> = outcomes.iter().filter(|o| o.is_ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: {outcomes:?}");
        for lost in outcomes.iter().filter_map(|o| o.as_ref().err()) {
            assert!(lost.contains("in use"), "{lost}");
        }
    }
}

#[test]
fn the_default_name_is_the_machine_id_and_the_mount_point() {
    let Some(ClusterWorld {
        _one_at_a_time,
        dir,
        storage,
    }) = cluster_world(20, 19)
    else {
        return;
    };
    let machine = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| fs::read_to_string(p).ok().filter(|m| !m.trim().is_empty()))
        .expect("this machine has a machine id")
        .trim()
        .to_string();
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let etcd = Etcd::start(dir.path());
    let n = Node::try_start(dir.path(), &storage, &etcd, "anon", None, &[])
        .unwrap_or_else(|(code, log)| panic!("exit {code}:\n{log}"));
    let want = format!("{machine}:{}", n.mnt().display());
    let st = n.fresh_status();
    assert_eq!(st["cluster"]["node"], want.as_str(), "{st:#}");
    assert!(!want.starts_with(&format!("{}:", host.trim())));
    assert_eq!(names(&members(&n)), [want.as_str()]);
    // The name says little to a person: status says which machine and process hold it.
    let m = &st["cluster"]["members"][0];
    assert_eq!(m["host"], host.trim(), "{st:#}");
    assert_eq!(m["pid"], n.guard.child.id(), "{st:#}");
    let mnt = n.mnt().display().to_string();
    let (code, text, err) = n.regfs(&["status", &mnt]);
    assert_eq!(code, 0, "{err}");
    let line = format!("on {}, pid {})", host.trim(), n.guard.child.id());
    assert!(text.contains(&line), "{text}");
    println!("default node name: {want}");
}

#[test]
fn a_killed_nodes_name_is_taken_again_once_its_lease_expires() {
    let Some(ClusterWorld {
        _one_at_a_time,
        dir,
        storage,
    }) = cluster_world(30, 20)
    else {
        return;
    };
    let etcd = Etcd::start(dir.path());
    let mut node_a = Node::start(dir.path(), &storage, &etcd, "nodeA", &[]);
    let node_b = Node::start(dir.path(), &storage, &etcd, "nodeB", &[]);
    for n in [&node_a, &node_b] {
        n.wait_writable(true, Duration::from_secs(5));
    }
    node_a.kill9();
    let killed = Instant::now();
    // Restarted at once, as systemd would: it waits for the dead daemon's lease.
    let again = Node::try_start(
        dir.path(),
        &storage,
        &etcd,
        "nodeA-again",
        Some("nodeA"),
        &[],
    )
    .unwrap_or_else(|(code, log)| panic!("exit {code}:\n{log}"));
    let took = killed.elapsed();
    println!("nodeA serves again {took:?} after its kill -9 (TTL {TTL:?})");
    assert!(took <= TTL + Duration::from_secs(3), "{took:?}");
    assert!(
        again.log().contains("waiting for its lease to expire"),
        "{}",
        again.log()
    );
    again.wait_writable(true, Duration::from_secs(5));
    let seen = members(&node_b);
    assert!(
        seen.contains(&("nodeA".into(), again.mnt().display().to_string())),
        "{seen:?}"
    );
    assert_eq!(node_b.gc().0, 0);
    let jobs = node_b.wait_jobs(1, Duration::from_secs(30));
    assert_eq!(jobs[0]["outcome"], "done", "{:#}", jobs[0]);
    assert_eq!(job_members(&jobs[0]), ["nodeB", "nodeA"]);
}

#[test]
fn a_name_held_from_another_machine_is_refused_until_its_lease_expires() {
    let Some(ClusterWorld {
        _one_at_a_time,
        dir,
        storage,
    }) = cluster_world(20, 21)
    else {
        return;
    };
    let etcd = Etcd::start(dir.path());
    // A node elsewhere holds "ghost" under a lease nobody keeps alive (it just died, or
    // lost its network).
    let client =
        regfs::cluster::etcd::Etcd::new(std::slice::from_ref(&etcd.url), Duration::from_secs(2))
            .unwrap();
    let lease = client.grant(TTL.as_secs()).unwrap();
    let rec = regfs::cluster::records::MemberRecord {
        node: "ghost".into(),
        mountpoint: "/srv/registry".into(),
        state: "open".into(),
        since: chrono::Utc::now(),
        host: "elsewhere".into(),
        machine_id: "0123456789abcdef0123456789abcdef".into(),
        boot_id: "b".into(),
        pid: 4242,
        process_start: 1,
        claimed_at: chrono::Utc::now(),
    };
    let claimed = client
        .create(
            "/regfs/members/ghost",
            &serde_json::to_vec(&rec).unwrap(),
            lease,
        )
        .unwrap();
    assert!(claimed.is_some());
    let t0 = Instant::now();
    let (code, log) = Node::try_start(dir.path(), &storage, &etcd, "g1", Some("ghost"), &[])
        .map(|_| ())
        .expect_err("a name held elsewhere is refused at once");
    assert!(t0.elapsed() < TTL, "refused without waiting");
    assert_ne!(code, 0);
    for what in ["\"ghost\"", "in use", "pid 4242", "elsewhere"] {
        assert!(log.contains(what), "the refusal names {what}:\n{log}");
    }
    thread::sleep(TTL + Duration::from_secs(1));
    let n = Node::try_start(dir.path(), &storage, &etcd, "g2", Some("ghost"), &[])
        .unwrap_or_else(|(code, log)| panic!("exit {code}:\n{log}"));
    assert_eq!(names(&members(&n)), ["ghost"]);
}

#[test]
fn a_node_whose_name_was_taken_while_its_lease_lapsed_stays_fenced_until_it_is_free() {
    let Some(ClusterWorld {
        _one_at_a_time,
        dir,
        storage,
    }) = cluster_world(20, 22)
    else {
        return;
    };
    let etcd = Etcd::start(dir.path());
    let node_a = Node::start(dir.path(), &storage, &etcd, "nodeA", &[]);
    let node_b = Node::start(dir.path(), &storage, &etcd, "nodeB", &[]);
    for n in [&node_a, &node_b] {
        n.wait_writable(true, Duration::from_secs(5));
    }
    // nodeA stalls past its lease (a pause, swap, a frozen VM); meanwhile another daemon
    // takes the name, which is free.
    assert!(node_a.guard.signal(libc::SIGSTOP));
    let deadline = Instant::now() + TTL + Duration::from_secs(5);
    while names(&members(&node_b)).contains(&"nodeA") {
        assert!(
            Instant::now() < deadline,
            "nodeA's entry outlived its lease"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let mut other = Node::try_start(dir.path(), &storage, &etcd, "other", Some("nodeA"), &[])
        .unwrap_or_else(|(code, log)| panic!("exit {code}:\n{log}"));
    assert!(node_a.guard.signal(libc::SIGCONT));
    // nodeA cannot have its name back: it stays fenced and says who holds it.
    node_a.wait_writable(false, Duration::from_secs(1));
    thread::sleep(TTL * 2);
    assert!(!node_a.writable(), "nodeA serves writes without its name");
    let st = node_a.status();
    let error = st["cluster"]["error"].as_str().unwrap_or("").to_string();
    let pid = format!("pid {}", other.guard.child.id());
    assert!(error.contains("in use") && error.contains(&pid), "{st:#}");
    assert_eq!(
        members(&node_b)
            .into_iter()
            .filter(|(n, _)| n == "nodeA")
            .collect::<Vec<_>>(),
        [("nodeA".to_string(), other.mnt().display().to_string())]
    );
    // Once the other daemon leaves, nodeA claims its name again and reopens.
    other.stop();
    let freed = Instant::now();
    node_a.wait_writable(true, Duration::from_secs(10));
    println!(
        "nodeA writable {:?} after the other holder of its name left",
        freed.elapsed()
    );
    assert!(
        members(&node_b).contains(&("nodeA".into(), node_a.mnt().display().to_string())),
        "{:?}",
        members(&node_b)
    );
}

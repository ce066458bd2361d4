//! Faults in the middle of an online sweep across three nodes, with pushes going on
//! through nodes 2 and 3 from the sweep's start (Debian's docker-registry on each,
//! skopeo), pushes of images whose blobs the sweep holds doomed among them: a member
//! killed (kill -9), the collector killed (kill -9) while it deletes the batch holding
//! what the pushers push, etcd stopped (SIGSTOP). Each time nothing reachable is lost
//! (every push that succeeded pulls whole through every node left afterwards) and the
//! surviving nodes take writes again within the lease TTL plus a second (every push
//! tried later than that succeeded at its first try).

use std::thread;
use std::time::{Duration, Instant};

use crate::harness::TTL;
use crate::online_world::{
    OnlineCluster, Pushers, Shape, batch_in_hand, batches_of, epoch_now, freeze_at_phase,
    online_cluster_shaped, wait_loaded, wait_state,
};

/// What each pushing node pushes in turn: garbage of the starting store (`tools`,
/// `scratch`: taken back from the doomed set) and live images.
const PUSHED: [(usize, &[&str]); 2] = [(2, &["tools", "app-v2"]), (3, &["scratch", "late"])];

/// Live images only: what keeps garbage pushed again is then the test's own push.
const PUSHED_LIVE: [(usize, &[&str]); 2] = [(2, &["app-v2"]), (3, &["late"])];

/// The bound on a node's outage the issue sets: the lease TTL plus a second.
fn ttl_plus_1s() -> Duration {
    TTL + Duration::from_secs(1)
}

/// Three online nodes with registries on nodes 2 and 3; `ttls` node 1's to node 3's.
fn three_nodes(ttls: [&str; 3]) -> Option<OnlineCluster> {
    online_cluster_shaped(Shape {
        // Patience with a member slow to load the doomed set on a loaded machine.
        extra: &["--drain-timeout", "30"],
        ttls: &ttls,
        registries: &[2, 3],
    })
}

/// Runs `scenario` with pushers of `pushed` (started by `go`, each at least one push),
/// then stops them.
fn with_pushers<T: Send>(
    c: &OnlineCluster,
    pushed: [(usize, &'static [&'static str]); 2],
    scenario: impl FnOnce(&Pushers) -> T + Send,
) -> (Pushers, T) {
    let pushers = Pushers::new(Duration::from_secs(60));
    let out = thread::scope(|s| {
        for (node, images) in pushed {
            let p = &pushers;
            s.spawn(move || p.run(c, node, images, 1));
        }
        // Stopped however the scenario ends (a failing assertion too): the scope waits
        // for the pushers.
        let _stop = pushers.stop_on_drop();
        scenario(&pushers)
    });
    (pushers, out)
}

/// How long after `fault` each of `nodes` still refused a push (its last refused try's
/// start); fails if a push tried later than the TTL plus a second was refused.
fn writes_came_back(pushers: &Pushers, nodes: &[usize], fault: Instant, what: &str) {
    for &node in nodes {
        let refused = pushers.refused_since(node, fault);
        let outage = refused
            .iter()
            .map(|t| t.started - fault)
            .max()
            .unwrap_or_default();
        println!(
            "{what}: node {node} refused {} push tries, the last begun {outage:?} after it \
             (TTL {TTL:?})",
            refused.len()
        );
        let late: Vec<_> = refused
            .iter()
            .filter(|t| t.started - fault > ttl_plus_1s())
            .collect();
        assert!(
            late.is_empty(),
            "{what}: node {node} still refused writes later than TTL + 1 s: {late:#?}"
        );
    }
}

#[test]
fn a_member_killed_mid_sweep_loses_nothing_and_the_others_keep_taking_writes() {
    // The collector's lease is long (it is frozen a while), node 3's short: it is gone
    // from etcd long before the collector goes on.
    let Some(mut c) = three_nodes(["30s", "2s", "2s"]) else {
        return;
    };
    let (pushers, (killed, job)) = with_pushers(&c, PUSHED_LIVE, |pushers| {
        assert_eq!(c.node(1).gc().0, 0);
        // The doomed set published, no batch claimed yet: node 3 pushes `tools` again
        // (its blobs doomed) and keeps them through etcd (alone: nobody else pushes
        // them), then dies; what it kept stays kept.
        freeze_at_phase(c.node(1), &c.etcd, "sweeping");
        // Both members load it (their writes held meanwhile) without the collector.
        wait_loaded(&c.etcd, 2, Duration::from_secs(60));
        pushers.go();
        c.images.push("tools", c.port(3), "kept:during-sweep");
        pushers.stop_node(3);
        c.kill9(3);
        let killed = Instant::now();
        thread::sleep(TTL * 2);
        assert!(c.node(1).guard.signal(libc::SIGCONT));
        let job = c.job();
        (killed, job)
    });
    assert_eq!(job["outcome"], "done", "{job:#}");
    assert!(
        job["report"]["blobs_deleted"].as_u64().unwrap() > 0,
        "{job:#}"
    );
    writes_came_back(&pushers, &[2], killed, "member kill -9");
    c.node(1).wait_writable(true, ttl_plus_1s());
    pushers.also_succeeded(3, "kept:during-sweep", "tools");
    c.every_push_pulls_whole(&pushers, &[1, 2]);
}

#[test]
fn a_collector_killed_mid_sweep_loses_nothing_and_the_members_take_writes_within_the_ttl() {
    let Some(mut c) = three_nodes(["2s", "2s", "2s"]) else {
        return;
    };
    let (pushers, killed) = with_pushers(&c, PUSHED, |pushers| {
        assert_eq!(c.node(1).gc().0, 0);
        // The batch holding `tools`' blobs (pushed and deleted before: doomed) claimed and
        // not yet done: the collector dies in the middle of deleting it.
        let etcd = c.etcd.client();
        let deadline = Instant::now() + Duration::from_secs(60);
        let (epoch, batches) = loop {
            assert!(
                Instant::now() < deadline,
                "no sweep: {:#}",
                c.node(1).status()
            );
            if let Some((epoch, phase)) = epoch_now(&etcd)
                && phase == "sweeping"
            {
                break (epoch, batches_of(&etcd, epoch, c.images.blobs("tools")));
            }
            thread::sleep(Duration::from_millis(1));
        };
        assert!(!batches.is_empty(), "tools' blobs are doomed");
        let batch = loop {
            if let Some(&b) = batches.iter().find(|&&b| batch_in_hand(&etcd, epoch, b)) {
                break b;
            }
            assert!(
                Instant::now() < deadline,
                "none of batches {batches:?} seen claimed and not done: {:#}",
                c.node(1).status()
            );
            thread::sleep(Duration::from_millis(1));
        };
        c.kill9(1);
        let killed = Instant::now();
        let v2 = c.world.storage.join("docker/registry/v2/blobs/sha256");
        let left: Vec<bool> = c
            .images
            .blobs("tools")
            .iter()
            .map(|h| v2.join(&h[..2]).join(h).exists())
            .collect();
        println!(
            "collector killed with batch {batch} in hand: {}; tools' blobs left: {left:?}",
            batch_in_hand(&etcd, epoch, batch)
        );
        // Pushes of `tools` name units being deleted: refused until the run's keys go
        // with the dead collector's lease.
        pushers.go();
        while epoch_now(&etcd).is_some() {
            thread::sleep(Duration::from_millis(5));
        }
        println!(
            "collector kill -9: its run's keys gone {:?} after it",
            killed.elapsed()
        );
        for i in [2, 3] {
            let took = c.node(i).wait_writable(true, ttl_plus_1s());
            println!("collector kill -9: node {i} writable {took:?} after it");
        }
        // The pushers go on past TTL + 1 s.
        thread::sleep(ttl_plus_1s() + Duration::from_secs(2));
        killed
    });
    assert!(
        !pushers.refused_since(2, killed).is_empty(),
        "node 2's pushes of tools named units of a batch being deleted: refused until the run ended"
    );
    writes_came_back(&pushers, &[2, 3], killed, "collector kill -9");
    c.every_push_pulls_whole(&pushers, &[2, 3]);
}

#[test]
fn etcd_stopped_mid_sweep_loses_nothing_and_writes_come_back_within_the_ttl_of_its_return() {
    let Some(mut c) = three_nodes(["2s", "2s", "2s"]) else {
        return;
    };
    let (pushers, back) = with_pushers(&c, PUSHED, |pushers| {
        assert_eq!(c.node(1).gc().0, 0);
        assert!(
            wait_state(c.node(1), "sweeping", Duration::from_secs(60)),
            "no sweep: {:#}",
            c.node(1).status()
        );
        pushers.go();
        thread::sleep(Duration::from_millis(300));
        c.etcd.signal(libc::SIGSTOP);
        // Every node fences: none may admit a write the run cannot see.
        for i in [2, 3] {
            let took = c.node(i).wait_writable(false, ttl_plus_1s());
            println!("etcd stopped: node {i} fenced {took:?} after it");
        }
        thread::sleep(TTL);
        c.etcd.signal(libc::SIGCONT);
        let back = Instant::now();
        for i in [1, 2, 3] {
            let took = c.node(i).wait_writable(true, ttl_plus_1s());
            println!("etcd back: node {i} writable {took:?} after it");
        }
        thread::sleep(ttl_plus_1s() + Duration::from_secs(2));
        back
    });
    let job = c.job();
    assert_ne!(
        job["outcome"], "done",
        "a run that lost etcd mid-sweep: {job:#}"
    );
    writes_came_back(&pushers, &[2, 3], back, "etcd back");
    c.every_push_pulls_whole(&pushers, &[1, 2, 3]);
}

//! Online GC on three nodes, for real: Debian's docker-registry on nodes 2 and 3, a run
//! triggered on node 1. Pushes through nodes 2 and 3 go on through its mark, pause and
//! sweep without a refusal that a retry does not mend and without one EROFS; what either
//! member pushed while the collector marked (garbage to the mark) is kept by that
//! member's record alone; a tag
//! moved through node 3 mid-sweep onto an untagged (doomed) manifest keeps it, through
//! etcd; and afterwards every push that succeeded pulls whole through every node.

use std::thread;
use std::time::{Duration, Instant};

use crate::online_world::{
    Pushers, Shape, freeze_at_phase, freeze_run_after_inventory, online_cluster_shaped,
};

/// Waits until `pushers` have had `n` more pushes succeed through each of `nodes`.
pub fn wait_pushes(pushers: &Pushers, nodes: &[usize], n: usize, within: Duration) {
    let count = |node| {
        pushers
            .succeeded()
            .iter()
            .filter(|(at, ..)| *at == node)
            .count()
    };
    let base: Vec<usize> = nodes.iter().map(|&i| count(i)).collect();
    let deadline = Instant::now() + within;
    while nodes.iter().zip(&base).any(|(&i, b)| count(i) < b + n) {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} pushes through nodes {nodes:?} within {within:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pushes_through_nodes_2_and_3_go_on_through_a_run_of_node_1_and_a_tag_moved_mid_sweep_keeps_its_manifest()
 {
    let Some(mut c) = online_cluster_shaped(Shape {
        extra: &["--delete-untagged"],
        ttls: &["10s", "10s", "10s"],
        registries: &[2, 3],
    }) else {
        return;
    };
    // app-v1 is left untagged: doomed (--delete-untagged) unless its tag comes back.
    c.images.push("app-v2", c.port(2), "app:v1");
    let t0 = Instant::now();
    let pushers = Pushers::new(Duration::from_secs(30));
    let moved = thread::scope(|s| {
        // Each member pushes an image of its own all along, into new repositories (its
        // layers shared with the untagged app-v1).
        s.spawn(|| pushers.run(&c, 2, &["app-v2"], 2));
        s.spawn(|| pushers.run(&c, 3, &["late"], 2));
        let _stop = pushers.stop_on_drop();
        // The collector stalls mid-mark, every repository read: what both members push
        // meanwhile into new repositories, garbage to the mark (`tools`, `scratch`:
        // pushed and deleted before, and pushed again only now), is kept only by the
        // records they hand over at the pause.
        freeze_run_after_inventory(c.node(1), &c.etcd);
        pushers.go();
        for (node, image) in [(2, "tools"), (3, "scratch")] {
            let dest = format!("kept-{node}:mark");
            c.images.push(image, c.port(node), &dest);
            pushers.also_succeeded(node, &dest, image);
        }
        wait_pushes(&pushers, &[2, 3], 2, Duration::from_secs(60));
        assert!(c.node(1).guard.signal(libc::SIGCONT));
        // And as the sweep starts (the doomed set published, no batch claimed: the
        // collector frozen), the tag moves back onto app-v1 through node 3: node 3 must
        // keep the manifest through etcd, and the collector must not delete it then.
        freeze_at_phase(c.node(1), &c.etcd, "sweeping");
        let moved = c.images.try_push("app-v1", c.port(3), "app:v1");
        wait_pushes(&pushers, &[2, 3], 1, Duration::from_secs(60));
        assert!(c.node(1).guard.signal(libc::SIGCONT));
        let job = c.job();
        pushers.stop();
        assert_eq!(job["outcome"], "done", "{job:#}");
        assert_eq!(job["cluster"]["members"].as_array().unwrap().len(), 3);
        assert!(
            job["report"]["blobs_deleted"].as_u64().unwrap() > 0,
            "{job:#}"
        );
        // Node 3's keep of app-v1 is the cluster run's: counted in its job beside what
        // the records folded in at the pause took back.
        if moved.is_ok() {
            let at_pause = logged_count(&c.node(1).log(), "taken_back=");
            let node3 = logged_count(&c.node(3).log(), "resurrected=");
            assert!(node3 >= 1, "node 3 kept app-v1: {}", c.node(3).log());
            assert!(
                job["resurrected"].as_u64().unwrap() >= at_pause + node3,
                "{at_pause} at the pause, {node3} by node 3: {job:#}"
            );
        }
        moved
    });
    let run_secs = t0.elapsed().as_secs_f64();
    // No batch was claimed when it moved: keeping it cannot have been refused.
    if let Err(e) = &moved {
        panic!("the tag move at the start of the sweep was refused: {e}");
    }
    for i in [2, 3] {
        assert_eq!(c.erofs_on(i), 0, "node {i} never refused a write EROFS");
        assert!(c.node(i).log().contains("recording writes"));
        assert!(c.node(i).log().contains("doomed set loaded"));
    }
    eprintln!(
        "three nodes: {} pushes through nodes 2 and 3 during the run ({run_secs:.1} s), \
         {} tries refused and retried; the tag moved mid-sweep kept its manifest",
        pushers.succeeded().len(),
        pushers.refused(),
    );
    c.every_push_pulls_whole(&pushers, &[1, 2, 3]);
}

/// The number after the last `key` in a node's log (0 if it never appears).
fn logged_count(log: &str, key: &str) -> u64 {
    log.rsplit(key)
        .next()
        .filter(|_| log.contains(key))
        .and_then(|rest| rest.split(|ch: char| !ch.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

//! `regfs status` never waits on etcd: no lock the control socket needs is held across
//! a call to etcd (or a file write), and the cluster it shows is what the member agent
//! last read.

use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{ClusterWorld, Etcd, Node, cluster_world};

/// The slowest of `regfs status` answers asked for `during`.
fn slowest_status(node: &Node, during: Duration) -> (Duration, usize) {
    let mnt = node.mnt().display().to_string();
    let start = Instant::now();
    let (mut slowest, mut n) = (Duration::ZERO, 0);
    while start.elapsed() < during {
        let t = Instant::now();
        let (code, _, err) = node.regfs(&["status", &mnt, "--json"]);
        let took = t.elapsed();
        assert_eq!(code, 0, "{err}");
        slowest = slowest.max(took);
        n += 1;
        thread::sleep(Duration::from_millis(20));
    }
    (slowest, n)
}

#[test]
fn status_answers_at_once_while_etcd_hangs_or_is_gone() {
    let Some(ClusterWorld {
        _one_at_a_time,
        dir,
        storage,
    }) = cluster_world(20, 41)
    else {
        return;
    };
    let mut etcd = Etcd::start(dir.path());
    // A 12 s lease: each call to etcd may take 2 s before it gives up.
    let node = Node::start(
        dir.path(),
        &storage,
        &etcd,
        "patient",
        &["--cluster-lease-ttl", "12s"],
    );
    node.wait_writable(true, Duration::from_secs(10));
    let (before, _) = slowest_status(&node, Duration::from_millis(500));
    etcd.signal(libc::SIGSTOP);
    // A run asked for now claims its epoch from an etcd that does not answer.
    let mnt = node.mnt().display().to_string();
    let state = node.guard.state.clone();
    let gc = thread::spawn(move || {
        std::process::Command::new(crate::common::daemon::BIN)
            .args(["gc", &mnt, "--state-dir"])
            .arg(&state)
            .output()
            .unwrap()
    });
    let (stopped, n_stopped) = slowest_status(&node, Duration::from_secs(5));
    let gc = gc.join().unwrap();
    etcd.signal(libc::SIGCONT);
    etcd.kill();
    let (killed, n_killed) = slowest_status(&node, Duration::from_secs(3));
    println!(
        "status: slowest {before:?} with etcd up, {stopped:?} of {n_stopped} with etcd stopped \
         (SIGSTOP), {killed:?} of {n_killed} with etcd killed"
    );
    assert!(
        !gc.status.success(),
        "no run starts without etcd: {}",
        crate::common::describe_output(&gc)
    );
    for (what, took) in [("stopped", stopped), ("killed", killed)] {
        assert!(
            took < Duration::from_secs(1),
            "status took {took:?} with etcd {what} (etcd's call timeout is 2 s)"
        );
    }
    // It says why the store refuses writes.
    let st = node.status();
    assert!(st["cluster"]["error"].is_string(), "{st:#}");
}

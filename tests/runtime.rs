//! The daemon's lifetime, in-process: one owner starts the mount and every thread, and
//! its shutdown stops a run, reopens the store, closes the control socket, stops the
//! other threads, unmounts and joins, in that order, within a bound.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use regfs::config::{FileConfig, MountFlags, resolve};
use regfs::daemon::job::{JobOutcome, Trigger};
use regfs::daemon::status::State;
use regfs::runtime::{Runtime, Stage, Start, StopReason};

/// Starts a runtime on `storage` at `mnt` with its state in `state`, recording the
/// shutdown's stages; no signal handling (this is the test's own process).
fn start(storage: &Path, mnt: &Path, state: &Path, stages: Arc<Mutex<Vec<Stage>>>) -> Runtime {
    start_observed(storage, mnt, state, move |s| stages.lock().unwrap().push(s))
}

fn start_observed(
    storage: &Path,
    mnt: &Path,
    state: &Path,
    observe: impl Fn(Stage) + Send + Sync + 'static,
) -> Runtime {
    let flags = MountFlags {
        config: None,
        keys: FileConfig {
            storage: Some(storage.to_path_buf()),
            mountpoint: Some(mnt.to_path_buf()),
            // Long enough that the run below waits on the writer until it is stopped.
            drain_timeout: Some(300.0),
            ..FileConfig::default()
        },
    };
    let options = resolve(&flags, &FileConfig::default(), "test").expect("options");
    Runtime::start(Start {
        options,
        state_dir: state.to_path_buf(),
        signals: None,
        on_stage: Some(Arc::new(observe)),
        grace: Duration::from_secs(5),
    })
    .expect("start")
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shutdown_stops_the_run_reopens_closes_the_socket_unmounts_and_joins_in_order() {
    let Some((dir, storage, mnt)) = common::daemon::fuse_dirs() else {
        return;
    };
    let state = dir.path().join("state");
    fs::write(storage.join("link"), b"sha256:x").unwrap();
    let stages = Arc::new(Mutex::new(Vec::new()));
    // An in-place writer the epoch waits for: the run stays closing until stopped. The
    // writer is done (closed) once the run has stopped, as a registry's would be.
    let writer = Arc::new(Mutex::new(None));
    let recorded = stages.clone();
    let held = writer.clone();
    let rt = start_observed(&storage, &mnt, &state, move |s| {
        if s == Stage::RunStopped {
            held.lock().unwrap().take();
        }
        recorded.lock().unwrap().push(s);
    });
    *writer.lock().unwrap() = Some(
        OpenOptions::new()
            .write(true)
            .open(mnt.join("link"))
            .expect("open a writer through the mount"),
    );
    let socket = state.join("control.sock");
    assert!(socket.exists(), "control socket up once started");
    let daemon = rt.daemon().clone();
    let id = daemon.trigger(Trigger::Cli).expect("a run starts");
    wait_until(
        "the epoch closes the store",
        Duration::from_secs(10),
        || daemon.status().state == State::Closing && daemon.status().read_only,
    );
    // The store refuses writes while the epoch waits on the writer.
    let refused = fs::write(mnt.join("other"), b"x");
    assert_eq!(common::errno(refused, "write in epoch"), libc::EROFS);

    let asked = Instant::now();
    rt.shutdown().expect("clean shutdown");
    let took = asked.elapsed();

    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert_eq!(
        *stages.lock().unwrap(),
        [
            Stage::RunStopped,
            Stage::GateReopened,
            Stage::ControlClosed,
            Stage::ThreadsStopped,
            Stage::Unmounted,
            Stage::Joined,
        ]
    );
    let job = daemon.job(id).expect("the run is recorded");
    assert_eq!(job.outcome, JobOutcome::Stopped, "{job:?}");
    assert!(!daemon.status().read_only, "the store was reopened");
    assert!(!daemon.gate().is_closed(), "the gate is open");
    assert!(!socket.exists(), "control socket removed");
    assert!(common::mount_at_fuse(&mnt).is_none(), "unmounted");
    assert!(
        !state.join("running.json").exists(),
        "the run is recorded as ended"
    );
    // What the registry wrote before the epoch is there, beneath.
    assert_eq!(fs::read(storage.join("link")).unwrap(), b"sha256:x");
}

#[test]
fn an_unmount_from_outside_wakes_the_owner_and_the_shutdown_ends_cleanly() {
    let Some((dir, storage, mnt)) = common::daemon::fuse_dirs() else {
        return;
    };
    let state = dir.path().join("state");
    fs::write(storage.join("f"), b"x").unwrap();
    let stages = Arc::new(Mutex::new(Vec::new()));
    let rt = start(&storage, &mnt, &state, stages.clone());
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"x");
    rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::empty()).expect("umount");
    assert_eq!(rt.wait(), StopReason::Unmounted);
    rt.shutdown().expect("clean shutdown");
    assert_eq!(stages.lock().unwrap().last(), Some(&Stage::Joined));
    assert!(!state.join("control.sock").exists());
    assert!(common::mount_at_fuse(&mnt).is_none());
    // The directory beneath is what is at the mount point now, untouched.
    assert_eq!(fs::read(storage.join("f")).unwrap(), b"x");
}

#[test]
fn a_stopper_from_another_thread_ends_the_wait() {
    let Some((dir, storage, mnt)) = common::daemon::fuse_dirs() else {
        return;
    };
    let state = dir.path().join("state");
    let rt = start(&storage, &mnt, &state, Arc::new(Mutex::new(Vec::new())));
    let stopper = rt.stopper();
    let asker = thread::spawn(move || stopper.stop());
    assert_eq!(rt.wait(), StopReason::Requested);
    asker.join().unwrap();
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(mnt.join("written"))
        .unwrap();
    f.write_all(b"y").unwrap();
    drop(f);
    rt.shutdown().expect("clean shutdown");
    assert_eq!(fs::read(storage.join("written")).unwrap(), b"y");
    assert!(common::mount_at_fuse(&mnt).is_none());
}

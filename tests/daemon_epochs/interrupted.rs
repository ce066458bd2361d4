//! Interrupted runs recorded truthfully: a daemon killed mid-sweep is recorded at its
//! next start with what it had deleted and freed and how long the store was read-only;
//! a state directory on a full filesystem does not stop GC from freeing space.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::common::store::StoreBuilder;
use crate::daemon::{Daemon, utc};
use crate::fixture::{blob_set, env, gen_store};

#[test]
fn a_daemon_killed_mid_sweep_is_recorded_with_what_it_deleted() {
    let Some(e) = env() else { return };
    let meta = gen_store(&e.storage, 20_000, 0.9, 21);
    let garbage = meta["expected_deleted_blobs"]["default"].as_u64().unwrap();
    let before = blob_set(&e.storage);
    let d = Daemon::start(&e, &[]);
    assert_eq!(d.gc(), 1);
    let st = d.wait_status("sweeping with some done", Duration::from_secs(60), |s| {
        s["state"] == "sweeping" && s["progress"]["done"].as_u64().unwrap_or(0) >= 200
    });
    let read_only_since = utc(&st["read_only_since"], "read_only_since");
    // How fast it deletes, to know how much one heartbeat (250 ms) may be behind.
    let (t0, done0) = (Instant::now(), st["progress"]["done"].as_u64().unwrap());
    thread::sleep(Duration::from_millis(600));
    let st = d.status();
    let rate =
        (st["progress"]["done"].as_u64().unwrap() - done0) as f64 / t0.elapsed().as_secs_f64();
    assert_eq!(
        st["state"], "sweeping",
        "the sweep must outlast the test's wait: {st:#}"
    );
    let seen_sweeping = Utc::now();
    let mut d = d;
    d.guard.child.kill().unwrap();
    d.guard.child.wait().unwrap();
    let killed = Utc::now();
    drop(d);
    let after = blob_set(&e.storage);
    let gone = (before.len() - after.len()) as u64;
    assert!(
        gone > 0 && gone < garbage,
        "killed mid-sweep: {gone} of {garbage} gone"
    );

    let d = Daemon::start(&e, &[]);
    let jobs = d.jobs();
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    let j = &jobs[0];
    assert_eq!(j["outcome"], "interrupted", "{j:#}");
    let recorded = j["report"]["blobs_deleted"].as_u64().unwrap_or(0);
    let slack = (rate * 0.5) as u64 + 10;
    println!("killed mid-sweep: {gone} blob dirs gone, {recorded} recorded, ~{rate:.0} units/s");
    assert!(
        recorded <= gone && gone - recorded <= slack,
        "the record says {recorded} blobs deleted; {gone} blob directories are gone \
         (deleting ~{rate:.0} units/s, {slack} allowed behind): {j:#}"
    );
    assert!(
        j["report"]["bytes_freed"].as_u64().unwrap_or(0) > 0,
        "{j:#}"
    );
    let ro = j["read_only_seconds"].as_f64().unwrap();
    let at_least = (seen_sweeping - read_only_since).num_milliseconds() as f64 / 1000.0 - 0.5;
    let at_most = (killed - read_only_since).num_milliseconds() as f64 / 1000.0 + 0.5;
    assert!(
        ro > 0.0 && ro >= at_least && ro <= at_most,
        "read-only {ro} s, expected between {at_least} and {at_most}: {j:#}"
    );
    let ended = utc(&j["ended_at"], "ended_at");
    assert!(ended >= seen_sweeping - chrono::Duration::seconds(1) && ended <= killed);
    assert!(
        d.log().contains("interrupted") && d.log().contains(&format!("{recorded} blobs deleted")),
        "the start says what the interrupted run did:\n{}",
        d.log()
    );
    // The metrics and the next run carry on from the truthful record.
    let j2 = d.gc_wait();
    assert_eq!(j2["outcome"], "done", "{j2:#}");
    assert_eq!(
        blob_set(&e.storage).len() as u64,
        before.len() as u64 - garbage
    );
}

/// A tmpfs mounted for one test; unmounted (lazily) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        let st = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .expect("mount(8)");
        assert!(st.success(), "mount -t tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }

    /// Writes a file until the filesystem is full.
    fn fill(&self) {
        let mut f = fs::File::create(self.0.join("filler")).unwrap();
        let chunk = [0u8; 4096];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let _ = f.sync_all();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn a_state_directory_on_a_full_filesystem_does_not_stop_gc() {
    let Some(mut e) = env() else { return };
    let fs_dir = e._dir.path().join("statefs");
    let tmpfs = Tmpfs::mount(&fs_dir, "64k");
    e.state = fs_dir.join("state");
    let b = StoreBuilder::new(&e.storage);
    let garbage: Vec<_> = (0..5)
        .map(|i| b.blob(format!("garbage {i}").as_bytes()))
        .collect();
    let (mf, _) = b.image("app", &[b.blob(b"kept")], "k");
    b.tag("app", "v1", &mf);
    let mut d = Daemon::start(&e, &[]);
    tmpfs.fill();

    let job = d.gc_wait();
    assert_eq!(job["outcome"], "done", "{job:#}");
    assert_eq!(job["report"]["blobs_deleted"], 5, "{job:#}");
    for g in &garbage {
        assert!(!b.has_blob(g), "GC freed the space");
    }
    d.wait_log(
        "cannot write the job to the history",
        Duration::from_secs(5),
    );
    let log = d.log();
    assert!(
        log.contains("No space left on device") && log.contains("5 blobs deleted"),
        "the log says the history could not be written, and what the run did:\n{log}"
    );
    // A second run is not refused either.
    let job = d.gc_wait();
    assert_eq!(job["outcome"], "done", "{job:#}");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)), 0, "{}", d.log());
    drop(d);
    drop(tmpfs);
}

//! What each subcommand does; `main` only parses and dispatches. Part of the binary:
//! it turns the parsed flags into the library's settings and calls the library.

use std::path::Path;
use std::thread;
use std::time::Duration;

use crate::cli::{GcAction, GcArgs, JobsArgs, MountArgs, StatusArgs, state_dir_for};
use crate::output;
use regfs::daemon::control::{self, Request};
use regfs::daemon::job::JobOutcome;
use regfs::offline;
use regfs::runtime::{Reload, Runtime, Start};

/// After the unmount, how long the request loop may take to end before the daemon
/// exits anyway (a lazily detached mount keeps serving its open files).
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// `regfs mount`: serves until a signal or an unmount, then shuts down in order.
pub fn mount(args: &MountArgs) -> Result<(), String> {
    // Before the configuration is read: a file only root may read, a registry config or
    // a token file would otherwise answer "Permission denied" instead.
    regfs::mount::require_root().map_err(|e| e.to_string())?;
    let flags = args.flags();
    let options = regfs::config::load(&flags).map_err(|e| e.to_string())?;
    let state_dir = state_dir_for(&options.state_dir, &options.mount.mountpoint);
    // SIGHUP re-reads the configuration file (GC and retention settings; the mount itself
    // stays).
    let reload: Reload = Box::new(move || {
        regfs::config::load(&flags)
            .map(|o| o.sources)
            .map_err(|e| e.to_string())
    });
    let runtime = Runtime::start(Start {
        options,
        state_dir,
        signals: Some(reload),
        on_stage: None,
        grace: EXIT_GRACE,
    })?;
    runtime.wait();
    runtime.shutdown()
}

pub fn config_check(file: &Path) -> Result<(), String> {
    let o = regfs::config::check(file).map_err(|e| e.to_string())?;
    output::print_listing(&format!(
        "{}: ok (serves {} at {}; GC schedule {}, duration {})\n",
        file.display(),
        o.mount.storage.display(),
        o.mount.mountpoint.display(),
        o.settings
            .schedule
            .as_ref()
            .map_or_else(|| "none".to_string(), |s| s.to_string()),
        o.settings.duration
    ))
}

pub fn completions(shell: clap_complete::Shell) -> Result<(), String> {
    use clap::CommandFactory;
    // clap_complete panics when its writer fails: generate in memory, then write.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut crate::cli::Cli::command(), "regfs", &mut script);
    output::write_listing(&script)
}

pub fn man() -> Result<(), String> {
    use clap::CommandFactory;
    let mut page = Vec::new();
    clap_mangen::Man::new(crate::cli::Cli::command())
        .render(&mut page)
        .map_err(|e| e.to_string())?;
    output::write_listing(&page)
}

/// The retention of an offline run: `--config`'s `[retention]`, judged by the pull times
/// in `--state-dir` (which also keeps the manifests of tags pruned within their grace).
fn offline_retention(args: &GcArgs) -> Result<Option<offline::OfflineRetention>, String> {
    let rules = match &args.config {
        Some(file) => {
            let parsed = regfs::config::FileConfig::load(file).map_err(|e| e.to_string())?;
            regfs::config::retention::resolve(&parsed.retention, &file.display().to_string())
                .map_err(|e| e.to_string())?
        }
        None => regfs::retention::Rules::default(),
    };
    match &args.state_dir {
        Some(dir) => Ok(Some(offline::OfflineRetention {
            rules,
            state_dir: dir.clone(),
        })),
        None if rules.policies.is_empty() => Ok(None),
        None => Err(format!(
            "{} has retention policies: pruning them offline needs the daemon's state directory (--state-dir DIR), whose pull times they judge by and where pruned tags are kept for their grace",
            args.config.as_deref().unwrap_or(Path::new("")).display()
        )),
    }
}

fn gc_offline(args: &GcArgs, path: &Path) -> Result<(), String> {
    let retention = offline_retention(args)?;
    let progress = crate::progress::TerminalProgress::new();
    let result = offline::run(
        path,
        &args.options(),
        retention.as_ref(),
        args.list,
        &progress,
    );
    progress.finish();
    let outcome = result.map_err(|e| e.to_string())?;
    // What was deleted is on record (the log) before anything is printed: standard
    // output may be a closed pipe or a full disk.
    let r = &outcome.report;
    tracing::info!(storage = %r.storage, outcome = ?r.outcome, dry_run = r.dry_run,
        blobs_deleted = r.counts.blobs_deleted, bytes_freed = r.counts.bytes_freed,
        manifests_removed = r.counts.manifests_removed, "GC run finished");
    if let Some(p) = &outcome.retention {
        tracing::info!(
            dry_run = p.dry_run,
            pruned = p.pruned.len(),
            expired = p.expired.len(),
            "retention: pruning stage"
        );
    }
    let text = if args.json {
        serde_json::to_string_pretty(&outcome).map_err(|e| e.to_string())? + "\n"
    } else {
        let mut text = outcome.report.to_string();
        if let Some(p) = &outcome.retention {
            let verb = if p.dry_run {
                "would be pruned (dry run)"
            } else {
                "pruned"
            };
            text.push_str(&format!("retention: {} tags {verb}\n", p.pruned.len()));
            for t in &p.pruned {
                text.push_str(&format!("  {}:{} {}\n", t.repository, t.tag, t.digest));
            }
            for w in &p.warnings {
                text.push_str(&format!("  warning: {w}\n"));
            }
        }
        text
    };
    if r.dry_run {
        // A plan is a listing: nothing was deleted, a reader may stop early.
        return output::print_listing(&text);
    }
    output::print(&text).map_err(|e| {
        format!(
            "the run finished ({} blobs deleted, {} bytes freed) but its report was not printed: {e}",
            r.counts.blobs_deleted, r.counts.bytes_freed
        )
    })
}

/// Commands that ask a daemon or read its state need root: a daemon runs as root, and
/// its state directory (control socket, history) is root's alone (mode 0700). Checked
/// before anything is touched, so a user is told what to do rather than "Permission
/// denied" or "cannot reach the daemon".
fn require_root(command: &str) -> Result<(), String> {
    match rustix::process::geteuid().as_raw() {
        0 => Ok(()),
        euid => Err(format!(
            "regfs {command} must run as root: the daemon's state directory and control socket are root's (effective uid is {euid}; try: sudo regfs {command} ...)"
        )),
    }
}

/// An offline run that deletes needs root, or to be the owner of the store (a store a
/// user made for themselves): otherwise its deletions would fail half-way with
/// "Permission denied". A dry run deletes nothing and needs only to read.
fn require_offline_deleter(args: &GcArgs, path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let euid = rustix::process::geteuid().as_raw();
    if euid == 0 || args.dry_run {
        return Ok(());
    }
    let owner = match std::fs::metadata(path) {
        Ok(m) if m.uid() == euid => return Ok(()),
        Ok(m) => format!("owned by uid {}", m.uid()),
        // Missing: the run names the path.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => e.to_string(),
    };
    Err(format!(
        "regfs gc --offline must run as root to delete from {} ({owner}; effective uid is {euid}); try: sudo regfs gc --offline ..., or --dry-run to see the plan only",
        path.display()
    ))
}

fn ask(state_dir: &Path, req: &Request) -> Result<control::Response, String> {
    let resp = control::request(state_dir, req)?;
    if resp.ok {
        Ok(resp)
    } else {
        Err(resp.error.unwrap_or_else(|| "the daemon refused".into()))
    }
}

/// Follows job `id` until it ends; Err if it failed.
fn wait_for(state_dir: &Path, id: u64, json: bool) -> Result<(), String> {
    let bar = crate::progress::TerminalProgress::new();
    let mut phase = String::new();
    let job = loop {
        let status = ask(state_dir, &Request::Status)?
            .status
            .ok_or("no status in the answer")?;
        match (&status.current_job, &status.progress) {
            (Some(j), Some(p)) if j.id == id => {
                if p.phase != phase {
                    phase = p.phase.clone();
                    let ph = if phase == "sweep" {
                        regfs::gc::Phase::Sweep
                    } else {
                        regfs::gc::Phase::Mark
                    };
                    regfs::gc::Progress::phase(&bar, ph, p.total);
                }
                bar.set_position(p.done);
            }
            _ => {
                break ask(state_dir, &Request::Job { id })?
                    .job
                    .ok_or("no job in the answer")?;
            }
        }
        thread::sleep(Duration::from_millis(200));
    };
    bar.finish();
    let text = if json {
        serde_json::to_string_pretty(&job).map_err(|e| e.to_string())? + "\n"
    } else {
        let mut t = job.summary() + "\n";
        if let Some(e) = &job.error {
            t += &format!("  error: {e}\n");
        }
        t
    };
    // The daemon has recorded the job in its history already.
    output::print(&text)?;
    match job.outcome {
        JobOutcome::Failed | JobOutcome::Interrupted => {
            Err(format!("GC job {id} {:?}", job.outcome).to_lowercase())
        }
        _ => Ok(()),
    }
}

pub fn gc(args: &GcArgs) -> Result<(), String> {
    if let Some(GcAction::Stop {
        mountpoint,
        state_dir,
    }) = &args.action
    {
        require_root("gc stop")?;
        let dir = state_dir_for(state_dir, mountpoint);
        let resp = ask(&dir, &Request::Stop)?;
        if let Some(message) = resp.data.as_ref().and_then(|d| d["message"].as_str()) {
            return output::println(message);
        }
        return output::println(&format!(
            "stopping GC job {}; the store reopens for writes once the blob in hand is done",
            resp.job_id.unwrap_or(0)
        ));
    }
    let path = args
        .path
        .as_deref()
        .ok_or("a mount point (or --offline STORAGE) is required")?;
    if args.offline {
        require_offline_deleter(args, path)?;
        return gc_offline(args, path);
    }
    require_root("gc")?;
    let dir = state_dir_for(&args.state_dir, path);
    let resp = ask(&dir, &Request::Gc)?;
    let id = resp.job_id.ok_or("no job id in the answer")?;
    let started = |e: String| format!("GC job {id} started, but {e}");
    if !args.json {
        output::println(&format!("started GC job {id}")).map_err(started)?;
    }
    if args.wait {
        wait_for(&dir, id, args.json)
    } else if args.json {
        output::println(&format!("{{\"job_id\": {id}}}")).map_err(started)
    } else {
        Ok(())
    }
}

pub fn status(args: &StatusArgs) -> Result<(), String> {
    require_root("status")?;
    let dir = state_dir_for(&args.state_dir, &args.mountpoint);
    let status = ask(&dir, &Request::Status)?
        .status
        .ok_or("no status in the answer")?;
    if args.json {
        output::print_listing(
            &(serde_json::to_string_pretty(&status).map_err(|e| e.to_string())? + "\n"),
        )
    } else {
        output::print_listing(&status.to_string())
    }
}

pub fn jobs(args: &JobsArgs) -> Result<(), String> {
    require_root("jobs")?;
    let dir = state_dir_for(&args.state_dir, &args.mountpoint);
    // Only the newest runs asked for are read, from the end of the history.
    let wanted = args.limit.map(|n| n.saturating_add(args.offset));
    let mut jobs = match regfs::daemon::history::History::open(&dir) {
        Ok(history) => history.recent(wanted),
        // No state directory yet: no daemon ever ran a job here.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(e),
    }
    .map_err(|e| format!("job history in {}: {e}", dir.display()))?;
    match regfs::cluster::history::other_nodes_runs(&dir) {
        None => {}
        Some(Ok(others)) => {
            jobs.extend(others);
            jobs.sort_by_key(|j| j.started_at);
        }
        Some(Err(e)) => eprintln!("regfs: warning: runs other nodes collected not shown: {e}"),
    }
    // Newest first for paging, shown oldest first.
    jobs.reverse();
    let mut jobs: Vec<_> = jobs
        .into_iter()
        .skip(args.offset)
        .take(args.limit.unwrap_or(usize::MAX))
        .collect();
    jobs.reverse();
    if args.json {
        return output::print_listing(
            &(serde_json::to_string_pretty(&jobs).map_err(|e| e.to_string())? + "\n"),
        );
    }
    let mut text = String::new();
    if jobs.is_empty() {
        text += &format!("no GC runs recorded in {}\n", dir.display());
    }
    for j in &jobs {
        let ended = j
            .ended_at
            .map(|t| t.format("%H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into());
        let on = j
            .cluster
            .as_ref()
            .map(|c| format!(" [cluster epoch {}, collected by {}]", c.epoch, c.collector))
            .unwrap_or_default();
        text += &format!(
            "{}  until {ended} UTC  {}{on}\n",
            j.started_at.format("%Y-%m-%d %H:%M:%S"),
            j.summary()
        );
        if let Some(e) = &j.error {
            text += &format!("    error: {e}\n");
        }
    }
    output::print_listing(&text)
}

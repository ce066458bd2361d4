//! What each subcommand does; `main` only parses and dispatches.

use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::cli::{GcAction, GcArgs, JobsArgs, MountArgs, StatusArgs, state_dir_for};
use crate::daemon::control::{self, Request};
use crate::daemon::job::JobOutcome;
use crate::daemon::state_dir::StateDir;
use crate::daemon::{Daemon, scheduler, signals};
use crate::epoch::WriteGate;
use crate::{mount, offline, output};

/// After an unmount request, how long the request loop may take to end before the
/// process exits anyway (a lazily detached mount keeps serving its open files).
const EXIT_GRACE: Duration = Duration::from_secs(5);

pub fn mount(args: &MountArgs) -> Result<(), String> {
    let opts = crate::config::load(args).map_err(|e| e.to_string())?;
    let cfg = &opts.mount;
    let settings = opts.settings.clone();
    let limit = mount::raise_nofile_limit();
    // Checked (or created) before mounting: a state directory another user could change
    // is refused before anything else happens.
    let state_dir = state_dir_for(&opts.state_dir, &cfg.mountpoint);
    let state = Arc::new(StateDir::prepare(&state_dir).map_err(|e| e.to_string())?);
    let gate = Arc::new(WriteGate::new());
    let mut mounted = mount::mount(cfg, gate).map_err(|e| e.to_string())?;
    let mountpoint = mounted.mountpoint.clone();
    let store = mounted
        .store()
        .map_err(|e| format!("storage directory: {e}"))?;
    let daemon = Daemon::new(
        mounted.fs.clone(),
        store,
        &mounted.storage,
        &mountpoint,
        state,
        settings.clone(),
    );
    daemon.check_cache("start");
    control::spawn(daemon.clone())
        .map_err(|e| format!("control socket in {}: {e}", state_dir.display()))?;
    scheduler::spawn(daemon.clone()).map_err(|e| e.to_string())?;
    if let Some(m) = &opts.metrics {
        let bound = crate::metrics::serve(daemon.clone(), m.listen)?;
        tracing::info!(%bound, "metrics at http://{bound}/metrics");
    }
    let mut unmounter = mounted.unmounter();
    // SIGHUP re-reads the configuration file (GC settings; the mount itself stays).
    let reload_args = args.clone();
    signals::spawn(
        daemon.clone(),
        move || {
            crate::config::load(&reload_args)
                .map(|o| o.settings)
                .map_err(|e| e.to_string())
        },
        move || {
            crate::daemon::notify::stopping();
            if let Err(e) = unmounter.unmount() {
                tracing::error!(error = %e, "unmount failed");
            }
            thread::sleep(EXIT_GRACE);
            tracing::warn!("request loop still running after unmount; exiting");
            std::process::exit(0);
        },
    )
    .map_err(|e| format!("signal handler: {e}"))?;
    tracing::info!(storage = %cfg.storage.display(), mountpoint = %mountpoint.display(),
        threads = cfg.threads, nofile = limit, fd_budget = daemon.fs().fd_budget(), state_dir = %state_dir.display(),
        schedule = settings.schedule.as_ref().map(|s| s.to_string()).unwrap_or_else(|| "none".into()),
        duration = %settings.duration, next_run = ?daemon.next_run(), "serving");
    crate::daemon::notify::ready(&format!("serving {}; GC idle", mountpoint.display()));
    mounted
        .run()
        .map_err(|e| format!("serving {}: {e}", mountpoint.display()))?;
    // Unmounted from outside during a run: end it safely before exiting.
    crate::daemon::notify::stopping();
    daemon.shutdown();
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    Ok(())
}

pub fn config_check(file: &Path) -> Result<(), String> {
    let o = crate::config::check(file).map_err(|e| e.to_string())?;
    output::println(&format!(
        "{}: ok (serves {} at {}; GC schedule {}, duration {})",
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
    output::write_all(&script)
}

pub fn man() -> Result<(), String> {
    use clap::CommandFactory;
    let mut page = Vec::new();
    clap_mangen::Man::new(crate::cli::Cli::command())
        .render(&mut page)
        .map_err(|e| e.to_string())?;
    output::write_all(&page)
}

fn gc_offline(args: &GcArgs, path: &Path) -> Result<(), String> {
    let progress = crate::progress::TerminalProgress::new();
    let result = offline::run(path, &args.options(), args.list, &progress);
    progress.finish();
    let outcome = result.map_err(|e| e.to_string())?;
    // What was deleted is on record (the log) before anything is printed: standard
    // output may be a closed pipe or a full disk.
    let r = &outcome.report;
    tracing::info!(storage = %r.storage, outcome = ?r.outcome, dry_run = r.dry_run,
        blobs_deleted = r.counts.blobs_deleted, bytes_freed = r.counts.bytes_freed,
        manifests_removed = r.counts.manifests_removed, "GC run finished");
    let text = if args.json {
        serde_json::to_string_pretty(&outcome).map_err(|e| e.to_string())? + "\n"
    } else {
        outcome.report.to_string()
    };
    output::print(&text).map_err(|e| {
        format!(
            "the run finished ({} blobs deleted, {} bytes freed) but its report was not printed: {e}",
            r.counts.blobs_deleted, r.counts.bytes_freed
        )
    })
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
                        crate::gc::Phase::Sweep
                    } else {
                        crate::gc::Phase::Mark
                    };
                    crate::gc::Progress::phase(&bar, ph, p.total);
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
        let dir = state_dir_for(state_dir, mountpoint);
        let resp = ask(&dir, &Request::Stop)?;
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
        return gc_offline(args, path);
    }
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
    let dir = state_dir_for(&args.state_dir, &args.mountpoint);
    let status = ask(&dir, &Request::Status)?
        .status
        .ok_or("no status in the answer")?;
    if args.json {
        output::println(&serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?)
    } else {
        output::print(&status.to_string())
    }
}

pub fn jobs(args: &JobsArgs) -> Result<(), String> {
    let dir = state_dir_for(&args.state_dir, &args.mountpoint);
    let mut jobs = match crate::daemon::history::History::open(&dir) {
        Ok(history) => history.jobs(),
        // No state directory yet: no daemon ever ran a job here.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(e),
    }
    .map_err(|e| format!("job history in {}: {e}", dir.display()))?;
    if let Some(n) = args.limit {
        let skip = jobs.len().saturating_sub(n);
        jobs.drain(..skip);
    }
    if args.json {
        return output::println(&serde_json::to_string_pretty(&jobs).map_err(|e| e.to_string())?);
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
        text += &format!(
            "{}  until {ended} UTC  {}\n",
            j.started_at.format("%Y-%m-%d %H:%M:%S"),
            j.summary()
        );
        if let Some(e) = &j.error {
            text += &format!("    error: {e}\n");
        }
    }
    output::print(&text)
}

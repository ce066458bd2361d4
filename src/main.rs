use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use regfs::cli::{Cli, Command, GcArgs, MountArgs};
use regfs::epoch::WriteGate;
use regfs::{logging, mount};

/// After an unmount request, how long the request loop may take to end before the
/// process exits anyway (a lazily detached mount keeps serving its open files).
const EXIT_GRACE: Duration = Duration::from_secs(5);

fn run_mount(args: &MountArgs) -> Result<(), String> {
    let cfg = args.mount_config()?;
    let _drain = args.drain_timeout()?;
    let limit = mount::raise_nofile_limit();
    let gate = Arc::new(WriteGate::new());
    let mut mounted = mount::mount(&cfg, gate).map_err(|e| e.to_string())?;
    let mut unmounter = mounted.unmounter();
    let mountpoint = mounted.mountpoint.clone();
    tracing::info!(storage = %cfg.storage.display(), mountpoint = %mountpoint.display(),
        threads = cfg.threads, nofile = limit, "serving");
    let mut signals =
        Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("signal handler: {e}"))?;
    thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!(signal = sig, "unmounting");
            if let Err(e) = unmounter.unmount() {
                tracing::error!(error = %e, "unmount failed");
            }
            thread::sleep(EXIT_GRACE);
            tracing::warn!("request loop still running after unmount; exiting");
            std::process::exit(0);
        }
    });
    mounted
        .run()
        .map_err(|e| format!("serving {}: {e}", mountpoint.display()))?;
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    Ok(())
}

fn run_gc(args: &GcArgs) -> Result<(), String> {
    if !args.offline {
        return Err(format!(
            "collecting through a running daemon (regfs gc MOUNTPOINT) needs the daemon's control socket, \
             which this version does not have yet; for a store no daemon serves run `regfs gc --offline {}`",
            args.path.display()
        ));
    }
    let progress = regfs::progress::TerminalProgress::new();
    let result = regfs::offline::run(&args.path, &args.options(), args.list, &progress);
    progress.finish();
    let outcome = result.map_err(|e| e.to_string())?;
    if args.json {
        let text = serde_json::to_string_pretty(&outcome).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print!("{}", outcome.report);
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose);
    let result = match &cli.command {
        Command::Mount(args) => run_mount(args),
        Command::Gc(args) => run_gc(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("regfs: error: {e}");
            ExitCode::FAILURE
        }
    }
}

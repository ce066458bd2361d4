use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use regfs::cli::{Cli, Command, MountArgs};
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose);
    let result = match &cli.command {
        Command::Mount(args) => run_mount(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("regfs: error: {e}");
            ExitCode::FAILURE
        }
    }
}

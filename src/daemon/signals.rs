//! Signals: SIGUSR1 starts a run, SIGUSR2 stops it, SIGHUP reloads the settings, SIGTERM
//! and SIGINT ask the daemon's owner to shut down (it stops a run safely, then unmounts).

use std::sync::Arc;
use std::thread::JoinHandle;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::{Handle, Signals};

use super::job::Trigger;
use super::service::Daemon;

/// The signal thread; [`SignalThread::stop`] ends it.
#[derive(Debug)]
pub struct SignalThread {
    handle: Handle,
    thread: JoinHandle<()>,
}

impl SignalThread {
    /// Stops handling signals and joins the thread.
    pub fn stop(self) {
        self.handle.close();
        if self.thread.join().is_err() {
            tracing::error!("the signal thread panicked");
        }
    }
}

/// The daemon's signals, caught (no longer killing the process) and queued until the
/// signal thread handles them.
pub struct Caught(Signals);

/// Catches the daemon's signals from now on: called before the mount, so a SIGTERM or
/// SIGINT while the daemon starts is handled once it runs, not fatal half-way.
pub fn catch() -> std::io::Result<Caught> {
    Signals::new([SIGUSR1, SIGUSR2, SIGHUP, SIGTERM, SIGINT]).map(Caught)
}

/// Spawns the signal thread over the signals `caught` (those that came before it are
/// handled first). `reload` produces fresh settings on SIGHUP; `terminate` is called
/// with the signal on SIGTERM and SIGINT, and does not wait for the shutdown (the
/// thread keeps serving signals until it is stopped).
pub fn spawn(
    caught: Caught,
    daemon: Arc<Daemon>,
    reload: impl Fn() -> Result<(), String> + Send + 'static,
    terminate: impl Fn(i32) + Send + 'static,
) -> std::io::Result<SignalThread> {
    let Caught(mut signals) = caught;
    let handle = signals.handle();
    let thread = std::thread::Builder::new()
        .name("regfs-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                match sig {
                    SIGUSR1 => match daemon.trigger(Trigger::Signal) {
                        Ok(id) => tracing::info!(job = id, "SIGUSR1: GC run started"),
                        Err(e) => tracing::warn!("SIGUSR1: {e}"),
                    },
                    SIGUSR2 => match daemon.stop() {
                        Some(id) => tracing::info!(job = id, "SIGUSR2: stopping GC job {id}"),
                        None => tracing::info!("SIGUSR2: no GC run is active"),
                    },
                    SIGHUP => match reload() {
                        Ok(()) => {
                            daemon.settings_changed();
                            tracing::info!("SIGHUP: settings reloaded");
                        }
                        Err(e) => tracing::error!("SIGHUP: settings not reloaded: {e}"),
                    },
                    _ => {
                        tracing::info!(
                            signal = sig,
                            "stopping: ending any GC run safely, then unmounting"
                        );
                        terminate(sig);
                    }
                }
            }
        })?;
    Ok(SignalThread { handle, thread })
}

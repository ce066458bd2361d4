//! Signals: SIGUSR1 starts a run, SIGUSR2 stops it, SIGHUP reloads the settings, SIGTERM
//! and SIGINT stop a run safely and then unmount.

use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;

use super::job::Trigger;
use super::service::Daemon;
use super::settings::Settings;

/// Spawns the signal thread. `reload` produces fresh settings on SIGHUP; `shutdown` is
/// called (once) after a run in progress has stopped, to unmount.
pub fn spawn(
    daemon: Arc<Daemon>,
    reload: impl Fn() -> Result<Settings, String> + Send + 'static,
    shutdown: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGUSR1, SIGUSR2, SIGHUP, SIGTERM, SIGINT])?;
    std::thread::Builder::new()
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
                        Ok(s) => {
                            daemon.reload(s);
                            tracing::info!("SIGHUP: settings reloaded");
                        }
                        Err(e) => tracing::error!("SIGHUP: settings not reloaded: {e}"),
                    },
                    _ => {
                        tracing::info!(
                            signal = sig,
                            "stopping: ending any GC run safely, then unmounting"
                        );
                        daemon.shutdown();
                        shutdown();
                        return;
                    }
                }
            }
        })?;
    Ok(())
}

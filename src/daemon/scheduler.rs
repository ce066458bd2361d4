//! Fires scheduled runs at their UTC times. Wakes early on reload or shutdown.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::job::Trigger;
use super::service::{Daemon, TriggerError};

/// Longest sleep between checks, so clock changes are noticed.
const MAX_NAP: Duration = Duration::from_secs(60);

/// Spawns the scheduler; its thread ends once the daemon shuts down.
pub fn spawn(daemon: Arc<Daemon>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("regfs-schedule".into())
        .spawn(move || run(&daemon))
}

fn run(daemon: &Arc<Daemon>) {
    loop {
        if daemon.is_shutting_down() {
            return;
        }
        let generation = daemon.generation();
        let Some(next) = daemon.next_run() else {
            daemon.wait_for_change(generation, MAX_NAP);
            continue;
        };
        tracing::debug!(next = %next, "next scheduled GC run");
        loop {
            let left = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            if left.is_zero() {
                if !daemon.coordinator().claim_tick(next) {
                    tracing::info!(tick = %next, "scheduled GC run left to the node that claimed this tick");
                    break;
                }
                match daemon.trigger(Trigger::Schedule) {
                    Ok(id) => tracing::info!(job = id, "scheduled GC run started"),
                    Err(TriggerError::Busy(id)) => {
                        tracing::warn!(
                            job = id,
                            "scheduled GC run skipped: job {id} is still running"
                        )
                    }
                    Err(e) => tracing::warn!(error = %e, "scheduled GC run not started"),
                }
                break;
            }
            if daemon.wait_for_change(generation, left.min(MAX_NAP)) {
                break; // reloaded or shutting down: recompute
            }
        }
    }
}

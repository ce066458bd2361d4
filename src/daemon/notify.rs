//! systemd readiness and status (sd_notify); does nothing outside a Type=notify unit.

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// The mount is live.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Shutting down (a run stops safely, then the mount goes).
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// What `systemctl status` shows.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

//! The pruning stage of a run (tag retention, `crate::retention::prune`), shared by the
//! read-only epoch (`runner`, the store closed) and the online one (`online_epoch`,
//! writes paused while it runs).

use super::job::Job;
use super::run_parts::RunParts;
use crate::gc;
use crate::settings::Settings;

/// The pruning stage (tag retention), with tag writes held back by the caller; the
/// run's options, keeping the manifests pruning left untagged within their grace and
/// searching for temp files where the daemon's interval says (`temp_search`; the job
/// records which).
pub fn prune_stage(parts: &RunParts, job: &mut Job, settings: &Settings) -> gc::Options {
    let dry_run = settings.dry_run || settings.retention.dry_run;
    let mut stage = parts
        .retention
        .stage(parts.store, parts.deleter, &settings.retention, dry_run);
    stage.outcome.dry_run = dry_run;
    let o = &stage.outcome;
    if !o.pruned.is_empty() || !o.expired.is_empty() || !o.kept_written.is_empty() {
        tracing::info!(
            job = job.id,
            dry_run,
            pruned = o.pruned.len(),
            expired = o.expired.len(),
            kept_written = o.kept_written.len(),
            "retention: pruning stage"
        );
    }
    if !settings.retention.policies.is_empty() || !o.expired.is_empty() {
        job.retention = Some(stage.outcome);
    }
    let mut opts = settings.gc_options();
    opts.keep_revisions = stage.keep_revisions;
    opts.temp_files = parts
        .temp_search
        .choose(settings.temp_files_everywhere_every);
    job.temp_files_searched = Some(opts.temp_files);
    opts
}

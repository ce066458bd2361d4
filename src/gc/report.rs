//! What a run found and did: counts, bytes, warnings, durations; a human summary and
//! JSON for machines.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Something the run met and did not understand, with the file it concerns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Warning {
    pub path: String,
    pub message: String,
}

impl Warning {
    pub fn new(path: impl AsRef<Path>, message: String) -> Self {
        Warning {
            path: path.as_ref().display().to_string(),
            message,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Marked and swept everything.
    Done,
    /// Stopped on request; in the mark phase nothing was deleted.
    Stopped,
    /// Ran out of its time limit; in the mark phase nothing was deleted.
    TimeLimit,
}

/// The phase a run was in.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Mark,
    Sweep,
}

/// What a run deleted (or would delete), by kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Counts {
    pub manifests_removed: u64,
    pub tag_index_entries_removed: u64,
    pub blobs_deleted: u64,
    pub bytes_freed: u64,
    pub layer_links_removed: u64,
    pub uploads_removed: u64,
    pub upload_bytes_freed: u64,
    pub temp_files_removed: u64,
    pub dirs_removed: u64,
}

impl Counts {
    /// Adds `c` to these counts.
    pub fn add(&mut self, c: &Counts) {
        self.manifests_removed += c.manifests_removed;
        self.tag_index_entries_removed += c.tag_index_entries_removed;
        self.blobs_deleted += c.blobs_deleted;
        self.bytes_freed += c.bytes_freed;
        self.layer_links_removed += c.layer_links_removed;
        self.uploads_removed += c.uploads_removed;
        self.upload_bytes_freed += c.upload_bytes_freed;
        self.temp_files_removed += c.temp_files_removed;
        self.dirs_removed += c.dirs_removed;
    }
}

/// Which revisions are roots.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Mode {
    /// Every revision.
    #[serde(rename = "default")]
    Default,
    /// Tagged manifests only.
    #[serde(rename = "delete-untagged")]
    DeleteUntagged,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Default => "default",
            Mode::DeleteUntagged => "delete-untagged",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub storage: String,
    pub mode: Mode,
    pub dry_run: bool,
    pub outcome: Outcome,
    /// Where a stopped or timed-out run was.
    pub ended_in: Option<Phase>,
    pub repositories: u64,
    pub manifests_scanned: u64,
    pub blobs_scanned: u64,
    pub blobs_marked: u64,
    /// Bytes of blob data under `blobs/` when the mark ran: the store's own size (not
    /// the filesystem's), one stat per blob.
    #[serde(default)]
    pub blob_bytes_scanned: u64,
    /// Unmarked blobs kept because they are younger than the minimum age.
    #[serde(default)]
    pub young_blobs_kept: u64,
    /// Untagged revisions kept (`--delete-untagged`) because their link is younger than
    /// the minimum age: the push that wrote them may still be tagging them.
    #[serde(default)]
    pub young_revisions_kept: u64,
    /// What the run deleted, or with `dry_run` what it would delete.
    #[serde(flatten)]
    pub counts: Counts,
    pub warnings: Vec<Warning>,
    pub mark_seconds: f64,
    pub sweep_seconds: f64,
}

impl Report {
    /// A run's report before it has found anything.
    pub fn new(storage: &Path, delete_untagged: bool, dry_run: bool) -> Self {
        Report {
            storage: storage.display().to_string(),
            mode: if delete_untagged {
                Mode::DeleteUntagged
            } else {
                Mode::Default
            },
            dry_run,
            outcome: Outcome::Done,
            ended_in: None,
            repositories: 0,
            manifests_scanned: 0,
            blobs_scanned: 0,
            blobs_marked: 0,
            blob_bytes_scanned: 0,
            young_blobs_kept: 0,
            young_revisions_kept: 0,
            counts: Counts::default(),
            warnings: Vec::new(),
            mark_seconds: 0.0,
            sweep_seconds: 0.0,
        }
    }
}

/// A job's record of its run: the collector's report once it has one; while sweeping,
/// what the sweep has deleted so far (so a daemon that dies mid-run leaves a record of
/// it). Serialized as the one or the other, untagged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RunReport {
    Finished(Report),
    Sweeping(Counts),
}

impl RunReport {
    /// What the run deleted (or, for a dry run, would delete).
    pub fn counts(&self) -> &Counts {
        match self {
            RunReport::Finished(r) => &r.counts,
            RunReport::Sweeping(c) => c,
        }
    }

    /// The store's own size once the run ended: the blob bytes the mark counted, less
    /// what the run deleted. None when the mark did not finish.
    pub fn store_bytes_after(&self) -> Option<u64> {
        match self {
            RunReport::Finished(r) if r.ended_in != Some(Phase::Mark) => {
                let freed = if r.dry_run { 0 } else { r.counts.bytes_freed };
                Some(r.blob_bytes_scanned.saturating_sub(freed))
            }
            _ => None,
        }
    }

    /// What the run met and did not understand (none known while it sweeps).
    pub fn warnings(&self) -> &[Warning] {
        match self {
            RunReport::Finished(r) => &r.warnings,
            RunReport::Sweeping(_) => &[],
        }
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        let c = &self.counts;
        writeln!(
            f,
            "regfs gc {} ({} mode{}): {:?}",
            self.storage,
            self.mode,
            if self.dry_run { ", dry run" } else { "" },
            self.outcome
        )?;
        if let Some(p) = self.ended_in {
            writeln!(f, "  ended in the {p:?} phase")?;
        }
        writeln!(
            f,
            "  scanned   {} repositories, {} manifests, {} blobs ({} marked live)",
            self.repositories, self.manifests_scanned, self.blobs_scanned, self.blobs_marked
        )?;
        if self.young_blobs_kept > 0 {
            writeln!(
                f,
                "  kept      {} unreferenced blobs younger than the minimum age",
                self.young_blobs_kept
            )?;
        }
        if self.young_revisions_kept > 0 {
            writeln!(
                f,
                "  kept      {} untagged manifests younger than the minimum age",
                self.young_revisions_kept
            )?;
        }
        writeln!(
            f,
            "  {verb:<9} {} blobs, freeing {}",
            c.blobs_deleted,
            bytes(c.bytes_freed)
        )?;
        writeln!(
            f,
            "            {} manifests (revisions) and {} tag history entries",
            c.manifests_removed, c.tag_index_entries_removed
        )?;
        writeln!(
            f,
            "            {} layer links, {} stale uploads ({}), {} temp files, {} empty directories",
            c.layer_links_removed,
            c.uploads_removed,
            bytes(c.upload_bytes_freed),
            c.temp_files_removed,
            c.dirs_removed
        )?;
        writeln!(
            f,
            "  took      mark {:.2} s, sweep {:.2} s",
            self.mark_seconds, self.sweep_seconds
        )?;
        if !self.warnings.is_empty() {
            writeln!(f, "  {} warnings:", self.warnings.len())?;
            for w in &self.warnings {
                writeln!(f, "    {}: {}", w.path, w.message)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job record keeps the report's field names (`regfs jobs --json`, the history),
    /// and a record written while sweeping (counts only) reads back as such.
    #[test]
    fn a_run_report_reads_back_from_its_json_either_way() {
        let mut report = Report::new(Path::new("/srv/registry"), true, false);
        report.counts.blobs_deleted = 3;
        report.counts.bytes_freed = 4096;
        report
            .warnings
            .push(Warning::new("x/link", "damaged".into()));
        let json = serde_json::to_value(RunReport::Finished(report)).unwrap();
        assert_eq!(json["mode"], "delete-untagged");
        assert_eq!(json["blobs_deleted"], 3);
        assert_eq!(json["warnings"][0]["path"], "x/link");
        let back: RunReport = serde_json::from_value(json).unwrap();
        assert!(matches!(&back, RunReport::Finished(r) if r.mode == Mode::DeleteUntagged));
        assert_eq!(back.counts().bytes_freed, 4096);

        let sweeping = Counts {
            blobs_deleted: 2,
            ..Counts::default()
        };
        let json = serde_json::to_value(RunReport::Sweeping(sweeping.clone())).unwrap();
        assert_eq!(json["blobs_deleted"], 2);
        assert!(json.get("storage").is_none());
        let back: RunReport = serde_json::from_value(json).unwrap();
        assert!(matches!(&back, RunReport::Sweeping(c) if *c == sweeping));
    }
}

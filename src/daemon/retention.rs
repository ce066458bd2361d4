//! What the daemon answers about retention: every tag with its push and pull times and
//! what the policies would prune now (read from the backing store: a read through the
//! mount would count as a pull), and restoring a pruned tag within its grace.

use super::service::Daemon;
use crate::policy::access::now_millis;
use crate::retention::prune::PrunedTag;
use crate::retention::{Rules, TagInfo, Verdict, judge, list_tags};

impl Daemon {
    /// Every tag (of `repo`, if given), with its digest and times (in cluster mode,
    /// every node's pulls: what the pruning stage decides from).
    pub fn tags(&self, repo: Option<&str>) -> Result<Vec<TagInfo>, String> {
        self.retention()
            .access()
            .with_all_times(|t| list_tags(self.store(), t, repo))?
            .map_err(|e| e.to_string())
    }

    /// What the policies in force decide for every tag now.
    pub fn retention_preview(&self) -> Result<Vec<Verdict>, String> {
        self.retention_preview_of(&self.settings().retention)
    }

    /// What `rules` would decide for every tag now (a draft's preview).
    pub fn retention_preview_of(&self, rules: &Rules) -> Result<Vec<Verdict>, String> {
        Ok(judge(rules, self.tags(None)?, now_millis()))
    }

    /// Puts a pruned tag back within its grace.
    pub fn retention_restore(&self, repo: &str, tag: &str) -> Result<PrunedTag, String> {
        let grace = self.settings().retention.grace;
        self.retention()
            .restore(self.mountpoint(), repo, tag, grace)
    }
}

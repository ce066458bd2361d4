//! Pruning: the stage at the start of a GC run, before marking, that removes the tags the
//! policies let go, so the space of what they held comes back in the same run (once the
//! grace has passed).
//!
//! The caller holds the store against tag writes while this runs (a read-only epoch's
//! closed gate, an online run's pause): each tag's current link is read again just
//! before its directory goes, and a tag written since the policies judged it (another
//! digest, another modification time) is kept. Directories go through the collector's
//! [`Deleter`], as its sweep's do, so the kernel forgets them at once.
//!
//! A manifest that loses its last tag here is kept for the grace (the run's
//! `keep_revisions`), and may be tagged again meanwhile (`restore`); once the grace has
//! passed and nothing tags it or lists it (an index of the repository that a tag names),
//! its revision link is removed here too, and the run's mark collects what only it held.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::rules::{Rules, Verdict, judge};
use super::tags::{TagInfo, list_tags};
use super::times::AccessTimes;
use crate::gc::{Deleter, GcError};
use crate::layout::{Digest, RepoName, Store, TagName, parse_link, paths};
use crate::policy::access::Millis;

/// A link is 71 bytes; a little more tells a longer (bad) file apart.
const LINK_LIMIT: usize = 128;
/// Manifests are at most 4 MiB (the registry's own limit).
const MANIFEST_LIMIT: usize = 4 << 20;

/// A tag pruned (or, in a dry run, to be pruned), as the job record and the grace keep it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PrunedTag {
    pub repository: String,
    pub tag: String,
    pub digest: String,
    /// RFC 3339, or none.
    pub pushed: Option<String>,
    pub pulled: Option<String>,
    /// The rule that let it go.
    pub reason: String,
    /// When it was pruned (ms since the Unix epoch).
    pub pruned_at: Millis,
    /// No tag of the repository named its manifest after it went: the manifest is kept
    /// for the grace, then collected.
    pub last_tag: bool,
}

impl PrunedTag {
    pub fn digest(&self) -> Option<Digest> {
        Digest::parse(&self.digest).ok()
    }
}

/// What the stage did.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PruneOutcome {
    /// A dry run: `pruned` lists what would have been removed.
    #[serde(default)]
    pub dry_run: bool,
    /// Tags removed (in a dry run: that would be).
    pub pruned: Vec<PrunedTag>,
    /// Tags the policies let go that were written since they were judged: kept.
    #[serde(default)]
    pub kept_written: Vec<String>,
    /// Revision links removed because their grace had passed (`repo@digest`).
    #[serde(default)]
    pub expired: Vec<String>,
    /// Problems met (a tag or revision that could not be removed); the run goes on.
    #[serde(default)]
    pub warnings: Vec<String>,
}

fn shown(t: Option<Millis>) -> Option<String> {
    t.map(|t| super::tags::shown_time(Some(t)))
}

/// The current link of `tag` of `repo` now: its digest and modification time.
fn current(store: &Store, repo: &RepoName, tag: &TagName) -> Option<(Option<Digest>, Millis)> {
    let (bytes, mtime) = store
        .read_with_mtime(&paths::tag_current_link(repo, tag), LINK_LIMIT)
        .ok()??;
    let ms = mtime
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis);
    Some((parse_link(&bytes).ok(), ms))
}

/// Whether a tag is as the policies judged it (same digest, same modification time).
fn unchanged(store: &Store, t: &TagInfo) -> bool {
    let (Ok(repo), Ok(tag)) = (RepoName::new(&t.repository), TagName::new(&t.tag)) else {
        return false;
    };
    current(store, &repo, &tag).is_some_and(|(d, m)| d == t.digest && Some(m) == t.link_mtime)
}

/// The digests the current links of `repo` name now.
fn tagged(store: &Store, repo: &RepoName) -> HashSet<Digest> {
    let Ok(Some(entries)) = store.list(&paths::tags_dir(repo)) else {
        return HashSet::new();
    };
    entries
        .iter()
        .filter_map(|e| TagName::new(e.name_str()?).ok())
        .filter_map(|t| current(store, repo, &t)?.0)
        .collect()
}

/// What keeps a manifest of a repository from expiring: the tags naming it, and the
/// indexes the tags name listing it.
struct Named {
    tagged: HashSet<Digest>,
    listed: HashSet<Digest>,
    /// A manifest a tag names could not be read: it may list anything.
    unsure: bool,
}

impl Named {
    fn of(store: &Store, repo: &RepoName) -> Named {
        let tagged = tagged(store, repo);
        let mut listed = HashSet::new();
        let mut unsure = false;
        for t in &tagged {
            match store.read(&paths::blob_data(t), MANIFEST_LIMIT) {
                Ok(Some(bytes)) => match crate::manifest::parse_unverified(&bytes) {
                    Ok(m) => listed.extend(m.children),
                    // Not understood: anything it mentions stays.
                    Err(_) => listed.extend(crate::manifest::digests_mentioned(&bytes)),
                },
                Ok(None) => {}
                Err(_) => unsure = true,
            }
        }
        Named {
            tagged,
            listed,
            unsure,
        }
    }

    fn keeps(&self, d: &Digest) -> bool {
        self.unsure || self.tagged.contains(d) || self.listed.contains(d)
    }
}

/// Removes what the policies let go (nothing in a dry run), and the revision links of
/// `expired` prunes (their grace passed). `now` is the time the policies judge at.
pub fn prune(
    store: &Store,
    rules: &Rules,
    times: &AccessTimes,
    now: Millis,
    deleter: &dyn Deleter,
    expired: &[PrunedTag],
    dry_run: bool,
) -> Result<PruneOutcome, GcError> {
    let mut out = PruneOutcome::default();
    if !rules.policies.is_empty() {
        let verdicts = judge(rules, list_tags(store, times, None)?, now);
        prune_tags(store, verdicts, now, deleter, dry_run, &mut out);
    }
    if !dry_run {
        expire(store, expired, deleter, &mut out);
    }
    Ok(out)
}

fn prune_tags(
    store: &Store,
    verdicts: Vec<Verdict>,
    now: Millis,
    deleter: &dyn Deleter,
    dry_run: bool,
    out: &mut PruneOutcome,
) {
    // Per repository: the digests the tags it keeps name.
    let mut kept: HashMap<String, HashSet<Digest>> = HashMap::new();
    for v in verdicts.iter().filter(|v| v.keep) {
        if let Some(d) = v.tag.digest {
            kept.entry(v.tag.repository.clone()).or_default().insert(d);
        }
    }
    let mut gone: Vec<(PrunedTag, Digest)> = Vec::new();
    for v in verdicts.into_iter().filter(|v| !v.keep) {
        let t = &v.tag;
        let Some(digest) = t.digest else { continue };
        let name = format!("{}:{}", t.repository, t.tag);
        if !dry_run {
            if !unchanged(store, t) {
                tracing::info!(tag = %name, "retention: tag written since it was judged; kept");
                out.kept_written.push(name);
                continue;
            }
            let (Ok(repo), Ok(tag)) = (RepoName::new(&t.repository), TagName::new(&t.tag)) else {
                continue;
            };
            if let Err(e) = deleter.remove_tree(&paths::tag_dir(&repo, &tag)) {
                out.warnings.push(format!("{name}: not pruned: {e}"));
                kept.entry(t.repository.clone()).or_default().insert(digest);
                continue;
            }
            tracing::info!(tag = %name, digest = %digest, reason = %v.reason, "retention: tag pruned");
        }
        gone.push((
            PrunedTag {
                repository: t.repository.clone(),
                tag: t.tag.clone(),
                digest: digest.to_string(),
                pushed: shown(t.pushed),
                pulled: shown(t.pulled),
                reason: v.reason,
                pruned_at: now,
                last_tag: false,
            },
            digest,
        ));
    }
    for (mut p, d) in gone {
        p.last_tag = !kept.get(&p.repository).is_some_and(|k| k.contains(&d));
        out.pruned.push(p);
    }
}

/// Removes the revision link of each expired prune whose manifest nothing tags or lists.
fn expire(store: &Store, expired: &[PrunedTag], deleter: &dyn Deleter, out: &mut PruneOutcome) {
    let mut done: HashSet<(String, Digest)> = HashSet::new();
    let mut named: HashMap<String, Named> = HashMap::new();
    for p in expired.iter().filter(|p| p.last_tag) {
        let (Ok(repo), Some(d)) = (RepoName::new(&p.repository), p.digest()) else {
            continue;
        };
        if !done.insert((p.repository.clone(), d)) {
            continue;
        }
        let n = named
            .entry(p.repository.clone())
            .or_insert_with(|| Named::of(store, &repo));
        if n.keeps(&d) {
            continue;
        }
        let link = paths::revision_dir(&repo, &d).join(paths::LINK);
        match deleter.remove_tree(Path::new(&link)) {
            Ok(_) => {
                tracing::info!(repo = %repo, digest = %d, "retention: grace passed; the pruned manifest's revision link removed");
                out.expired.push(format!("{repo}@{d}"));
            }
            Err(e) => out
                .warnings
                .push(format!("{repo}@{d}: revision link not removed: {e}")),
        }
    }
}

/// Puts tag `tag` of `repo` back on `digest` (within the grace): its index link, then its
/// current link, as the registry writes a tag, under `root` (the mount, so the kernel and
/// the policies see the writes; or a store no daemon serves). Refused if the repository
/// no longer holds the manifest.
pub fn restore(root: &Path, repo: &str, tag: &str, digest: &Digest) -> Result<(), String> {
    let repo_name = RepoName::new(repo).map_err(|e| e.to_string())?;
    let tag_name = TagName::new(tag).map_err(|e| e.to_string())?;
    let revision = root.join(paths::revision_dir(&repo_name, digest).join(paths::LINK));
    if !revision.is_file() {
        return Err(format!(
            "{repo}@{digest}: the repository no longer holds this manifest (its grace has passed, or it was deleted); cannot restore {repo}:{tag}"
        ));
    }
    // Owned as the repository is (the registry runs as its own user and rewrites tags).
    let manifests = root.join(paths::manifests_dir(&repo_name));
    let owner =
        std::fs::metadata(&manifests).map_err(|e| format!("{}: {e}", manifests.display()))?;
    let owned = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::os::unix::fs::chown(p, Some(owner.uid()), Some(owner.gid()))
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let link = digest.to_string();
    let index = paths::tag_index_entry(&repo_name, &tag_name, digest).join(paths::LINK);
    let current = paths::tag_current_link(&repo_name, &tag_name);
    for rel in [&index, &current] {
        // Each missing directory from `_manifests` down, 0755.
        let dir = rel.parent().expect("a link has a directory");
        let below: Vec<&Path> = dir
            .ancestors()
            .take_while(|a| {
                a.starts_with(paths::manifests_dir(&repo_name))
                    && *a != paths::manifests_dir(&repo_name)
            })
            .collect();
        for d in below.into_iter().rev() {
            let path = root.join(d);
            match std::fs::DirBuilder::new().mode(0o755).create(&path) {
                Ok(()) => owned(&path)?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        let path = root.join(rel);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        std::io::Write::write_all(&mut f, link.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        owned(&path)?;
    }
    Ok(())
}

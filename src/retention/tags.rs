//! Every tag of the store, with the digest it names and when it was pushed and pulled.
//!
//! Read from the backing store (never through the mount: a read of a current link there
//! would count as a pull). A tag's push time is when regfs saw its current link written,
//! or the link's modification time when that is earlier (a time set back on purpose:
//! `touch -d`, a restore that kept times) or regfs never saw it written (pushed before
//! regfs was mounted). Its pull time is the last read regfs saw of the tag, or of the
//! manifest it names by digest; `None` ("never") if regfs saw none.

use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use serde::Serialize;

use super::times::AccessTimes;
use crate::gc::scan::find_repositories;
use crate::layout::{Digest, RepoName, Store, TagName, parse_link, paths};
use crate::policy::access::Millis;

/// A link is 71 bytes; a little more tells a longer (bad) file apart.
const LINK_LIMIT: usize = 128;

/// One tag.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TagInfo {
    pub repository: String,
    pub tag: String,
    /// The manifest its current link names; `None` if the link is missing or bad.
    pub digest: Option<Digest>,
    /// Milliseconds since the Unix epoch (RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub pushed: Option<Millis>,
    /// Milliseconds since the Unix epoch (RFC 3339 in JSON); `None` (null): never pulled
    /// since regfs records.
    #[serde(serialize_with = "rfc3339")]
    pub pulled: Option<Millis>,
    /// The current link's modification time, to tell a tag written since it was listed.
    #[serde(skip)]
    pub link_mtime: Option<Millis>,
}

/// A time as RFC 3339 UTC with milliseconds, `never` when there is none.
pub fn shown_time(t: Option<Millis>) -> String {
    t.and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || "never".into(),
            |d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )
}

fn rfc3339<S: serde::Serializer>(t: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(_) => s.serialize_str(&shown_time(*t)),
        None => s.serialize_none(),
    }
}

fn millis(t: SystemTime) -> Millis {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// The tags of `repo` (sorted by name).
pub fn repo_tags(store: &Store, repo: &RepoName, times: &AccessTimes) -> Vec<TagInfo> {
    // Each link is opened from the tags directory: three names to resolve, not nine.
    let Ok(Some(tags)) = store.sub(&paths::tags_dir(repo)) else {
        return Vec::new();
    };
    let Ok(Some(entries)) = tags.list(std::path::Path::new("")) else {
        return Vec::new();
    };
    let mut names: Vec<TagName> = entries
        .iter()
        .filter_map(|e| TagName::new(e.name_str()?).ok())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|tag| {
            let rel = std::path::Path::new(tag.as_str())
                .join(paths::TAG_CURRENT)
                .join(paths::LINK);
            let link = tags.read_with_mtime(&rel, LINK_LIMIT).ok().flatten();
            let digest = link.as_ref().and_then(|(b, _)| parse_link(b).ok());
            let mtime = link.map(|(_, m)| millis(m));
            let recorded = times.pushed(repo.as_str(), tag.as_str());
            let pushed = match (recorded, mtime) {
                (Some(r), Some(m)) => Some(r.min(m)),
                (r, m) => r.or(m),
            };
            TagInfo {
                repository: repo.as_str().to_owned(),
                pulled: times.pulled(repo.as_str(), tag.as_str(), digest.as_ref()),
                tag: tag.as_str().to_owned(),
                digest,
                pushed,
                link_mtime: mtime,
            }
        })
        .collect()
}

/// Every tag of the store (or of `only`), sorted by repository and tag.
pub fn list_tags(
    store: &Store,
    times: &AccessTimes,
    only: Option<&str>,
) -> Result<Vec<TagInfo>, crate::gc::GcError> {
    let repos = find_repositories(store)?;
    let mut names: Vec<&RepoName> = repos
        .names
        .iter()
        .filter(|r| only.is_none_or(|o| r.as_str() == o))
        .collect();
    names.sort();
    Ok(names
        .par_iter()
        .flat_map_iter(|r| repo_tags(store, r, times))
        .collect())
}

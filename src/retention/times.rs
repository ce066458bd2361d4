//! The access times regfs has seen, per repository, and their journal's line format.
//!
//! The journal (`access.jsonl` in the state directory) is a compact append-only file:
//! one JSON object a line, `{"k":"push"|"pull"|"mpull","r":REPO,"t":TAG|"d":DIGEST,"at":MS}`,
//! the latest time of each key winning when it is read back. Chosen over an embedded
//! database (redb, sled) because the records are few and small (one per tag and per
//! manifest pulled), written in batches by one thread and read whole at start: an
//! append of a batch is one write(2), a torn last line after a crash is skipped, and it
//! is rewritten compacted at start when it has grown past twice its live entries. No
//! dependency to build, and `jq` reads it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::layout::Digest;
use crate::policy::access::{Accessed, Millis};

/// One repository's times.
#[derive(Debug, Default, Clone)]
pub struct RepoTimes {
    /// Tag → when its current link was last written through regfs.
    pub pushed: HashMap<String, Millis>,
    /// Tag → when its current link was last read.
    pub tag_pulled: HashMap<String, Millis>,
    /// Manifest → when its revision link was last read.
    pub manifest_pulled: HashMap<Digest, Millis>,
}

/// Every repository's times.
#[derive(Debug, Default, Clone)]
pub struct AccessTimes {
    repos: HashMap<String, RepoTimes>,
    entries: usize,
}

/// Sets `map[key]` to `at` unless it holds a later time; true if the key is new.
fn keep_latest<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Millis>, key: K, at: Millis) -> bool {
    match map.get_mut(&key) {
        Some(t) => {
            if *t < at {
                *t = at;
            }
            false
        }
        None => {
            map.insert(key, at);
            true
        }
    }
}

impl AccessTimes {
    /// Applies one access.
    pub fn apply(&mut self, what: &Accessed, at: Millis) {
        let new = match what {
            Accessed::TagPushed { repo, tag } => {
                keep_latest(&mut self.repo_mut(repo).pushed, tag.clone(), at)
            }
            Accessed::TagPulled { repo, tag } => {
                keep_latest(&mut self.repo_mut(repo).tag_pulled, tag.clone(), at)
            }
            Accessed::ManifestPulled { repo, digest } => {
                keep_latest(&mut self.repo_mut(repo).manifest_pulled, *digest, at)
            }
        };
        self.entries += usize::from(new);
    }

    fn repo_mut(&mut self, repo: &str) -> &mut RepoTimes {
        if !self.repos.contains_key(repo) {
            self.repos.insert(repo.to_owned(), RepoTimes::default());
        }
        self.repos.get_mut(repo).expect("inserted")
    }

    pub fn repo(&self, repo: &str) -> Option<&RepoTimes> {
        self.repos.get(repo)
    }

    /// When `tag` of `repo` was last pushed through regfs.
    pub fn pushed(&self, repo: &str, tag: &str) -> Option<Millis> {
        self.repos.get(repo)?.pushed.get(tag).copied()
    }

    /// When `tag` of `repo`, now naming `digest`, was last pulled: by its name, or the
    /// manifest it names by digest, whichever came last.
    pub fn pulled(&self, repo: &str, tag: &str, digest: Option<&Digest>) -> Option<Millis> {
        let r = self.repos.get(repo)?;
        let by_tag = r.tag_pulled.get(tag).copied();
        let by_digest = digest.and_then(|d| r.manifest_pulled.get(d).copied());
        by_tag.max(by_digest)
    }

    /// The repositories that hold a time.
    pub fn repo_names(&self) -> impl Iterator<Item = &str> {
        self.repos.keys().map(String::as_str)
    }

    /// Takes in every time of `repo` from `other` (another node's), the later of two
    /// winning for each key.
    pub fn merge_repo(&mut self, repo: &str, other: &RepoTimes) {
        let mut new = 0;
        let r = self.repo_mut(repo);
        for (tag, at) in &other.pushed {
            new += usize::from(keep_latest(&mut r.pushed, tag.clone(), *at));
        }
        for (tag, at) in &other.tag_pulled {
            new += usize::from(keep_latest(&mut r.tag_pulled, tag.clone(), *at));
        }
        for (digest, at) in &other.manifest_pulled {
            new += usize::from(keep_latest(&mut r.manifest_pulled, *digest, *at));
        }
        self.entries += new;
    }

    /// Takes in every time of `other`, the later of two winning for each key.
    pub fn merge(&mut self, other: &AccessTimes) {
        for (repo, r) in &other.repos {
            self.merge_repo(repo, r);
        }
    }

    /// How many keys hold a time.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Every entry as journal lines (a compacted journal).
    pub fn to_journal(&self) -> String {
        let mut out = String::new();
        for (repo, r) in &self.repos {
            for (tag, at) in &r.pushed {
                push_line(
                    &mut out,
                    &Accessed::TagPushed {
                        repo: repo.clone(),
                        tag: tag.clone(),
                    },
                    *at,
                );
            }
            for (tag, at) in &r.tag_pulled {
                push_line(
                    &mut out,
                    &Accessed::TagPulled {
                        repo: repo.clone(),
                        tag: tag.clone(),
                    },
                    *at,
                );
            }
            for (digest, at) in &r.manifest_pulled {
                push_line(
                    &mut out,
                    &Accessed::ManifestPulled {
                        repo: repo.clone(),
                        digest: *digest,
                    },
                    *at,
                );
            }
        }
        out
    }

    /// Reads a journal: the times, how many lines it has, and how many were not
    /// understood (a torn last line after a crash) and skipped.
    pub fn from_journal(text: &str) -> (AccessTimes, usize, usize) {
        let mut times = AccessTimes::default();
        let (mut lines, mut bad) = (0, 0);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            lines += 1;
            match parse_line(line) {
                Some((what, at)) => times.apply(&what, at),
                None => bad += 1,
            }
        }
        (times, lines, bad)
    }
}

#[derive(Serialize, Deserialize)]
struct Line {
    k: String,
    r: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<String>,
    at: Millis,
}

/// Appends the journal line of `what` at `at` (with its newline).
pub fn push_line(out: &mut String, what: &Accessed, at: Millis) {
    let line = match what {
        Accessed::TagPushed { repo, tag } => Line {
            k: "push".into(),
            r: repo.clone(),
            t: Some(tag.clone()),
            d: None,
            at,
        },
        Accessed::TagPulled { repo, tag } => Line {
            k: "pull".into(),
            r: repo.clone(),
            t: Some(tag.clone()),
            d: None,
            at,
        },
        Accessed::ManifestPulled { repo, digest } => Line {
            k: "mpull".into(),
            r: repo.clone(),
            t: None,
            d: Some(digest.to_string()),
            at,
        },
    };
    if let Ok(s) = serde_json::to_string(&line) {
        out.push_str(&s);
        out.push('\n');
    }
}

fn parse_line(line: &str) -> Option<(Accessed, Millis)> {
    let l: Line = serde_json::from_str(line).ok()?;
    let what = match (l.k.as_str(), l.t, l.d) {
        ("push", Some(tag), None) => Accessed::TagPushed { repo: l.r, tag },
        ("pull", Some(tag), None) => Accessed::TagPulled { repo: l.r, tag },
        ("mpull", None, Some(d)) => Accessed::ManifestPulled {
            repo: l.r,
            digest: Digest::parse(&d).ok()?,
        },
        _ => return None,
    };
    Some((what, l.at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_keeps_the_later_time_of_each_key() {
        let d = Digest::of(b"m");
        let pull = |tag: &str| Accessed::TagPulled {
            repo: "r".into(),
            tag: tag.into(),
        };
        let mut mine = AccessTimes::default();
        mine.apply(&pull("a"), 10);
        mine.apply(&pull("b"), 30);
        let mut theirs = AccessTimes::default();
        theirs.apply(&pull("a"), 20);
        theirs.apply(&pull("b"), 5);
        theirs.apply(
            &Accessed::ManifestPulled {
                repo: "r".into(),
                digest: d,
            },
            40,
        );
        theirs.apply(
            &Accessed::TagPushed {
                repo: "q".into(),
                tag: "x".into(),
            },
            7,
        );
        mine.merge(&theirs);
        assert_eq!(mine.pulled("r", "a", None), Some(20));
        assert_eq!(mine.pulled("r", "b", None), Some(30));
        assert_eq!(mine.pulled("r", "b", Some(&d)), Some(40));
        assert_eq!(mine.pushed("q", "x"), Some(7));
        assert_eq!(mine.entries(), 4);
    }

    #[test]
    fn the_journal_reads_back_the_latest_time_of_each_key_and_skips_a_torn_line() {
        let d = Digest::of(b"m");
        let mut text = String::new();
        let pull = Accessed::TagPulled {
            repo: "a/b".into(),
            tag: "v1".into(),
        };
        push_line(&mut text, &pull, 5);
        push_line(&mut text, &pull, 9);
        push_line(
            &mut text,
            &Accessed::ManifestPulled {
                repo: "a/b".into(),
                digest: d,
            },
            12,
        );
        push_line(
            &mut text,
            &Accessed::TagPushed {
                repo: "a/b".into(),
                tag: "v1".into(),
            },
            3,
        );
        text.push_str("{\"k\":\"pull\",\"r\":\"a/b\",\"t\":\"v");
        let (t, lines, bad) = AccessTimes::from_journal(&text);
        assert_eq!((lines, bad, t.entries()), (5, 1, 3));
        assert_eq!(t.pulled("a/b", "v1", None), Some(9));
        assert_eq!(t.pulled("a/b", "v1", Some(&d)), Some(12));
        assert_eq!(t.pushed("a/b", "v1"), Some(3));
        assert_eq!(t.pulled("a/b", "v2", None), None);
        let (again, lines, _) = AccessTimes::from_journal(&t.to_journal());
        assert_eq!((lines, again.pulled("a/b", "v1", Some(&d))), (3, Some(12)));
    }
}

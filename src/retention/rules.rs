//! Retention policies, resolved (the configuration file's `[retention]`, checked by
//! `config::retention`), and what they decide for each tag.
//!
//! The first policy whose `repositories` globs match a repository decides for all its
//! tags; a repository no policy matches keeps every tag. Within a policy a tag is kept if
//! any of its rules keeps it; a tag no rule keeps goes. A tag whose current link cannot be
//! read is always kept (nothing is known of it).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use regex::Regex;
use serde::Serialize;

use super::tags::TagInfo;
use crate::policy::access::Millis;

/// A repository glob: `*` and `?` stay within one path component, `**` crosses `/`.
#[derive(Debug, Clone)]
pub struct RepoGlob {
    pub text: String,
    re: Regex,
}

impl RepoGlob {
    pub fn new(text: &str) -> Result<RepoGlob, String> {
        if text.is_empty() {
            return Err("an empty pattern matches no repository".into());
        }
        let mut re = String::from("^");
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    re.push_str(".*");
                }
                '*' => re.push_str("[^/]*"),
                '?' => re.push_str("[^/]"),
                c => re.push_str(&regex::escape(&c.to_string())),
            }
        }
        re.push('$');
        Regex::new(&re)
            .map(|re| RepoGlob {
                text: text.to_owned(),
                re,
            })
            .map_err(|e| e.to_string())
    }

    pub fn matches(&self, repo: &str) -> bool {
        self.re.is_match(repo)
    }
}

/// One `[[retention.policy]]`.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub repositories: Vec<RepoGlob>,
    /// Tags matching any of these are always kept.
    pub keep_tags: Vec<Regex>,
    pub keep_most_recently_pushed: Option<usize>,
    pub keep_most_recently_pulled: Option<usize>,
    pub keep_pushed_within: Option<Duration>,
    pub keep_pulled_within: Option<Duration>,
}

impl Policy {
    pub fn matches(&self, repo: &str) -> bool {
        self.repositories.iter().any(|g| g.matches(repo))
    }

    fn patterns(&self) -> String {
        self.repositories
            .iter()
            .map(|g| g.text.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The `[retention]` section.
#[derive(Debug, Clone)]
pub struct Rules {
    pub policies: Vec<Policy>,
    /// Runs list what they would prune and prune nothing.
    pub dry_run: bool,
    /// A manifest that lost its last tag to pruning is kept this long, and its tag can be
    /// restored meanwhile.
    pub grace: Duration,
}

pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

impl Rules {
    /// The first policy that keeps tags by their pulls, if any (such a rule cannot be
    /// judged without pull times).
    pub fn judges_pulls(&self) -> Option<usize> {
        self.policies
            .iter()
            .position(|p| p.keep_most_recently_pulled.is_some() || p.keep_pulled_within.is_some())
    }
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            policies: Vec::new(),
            dry_run: true,
            grace: DEFAULT_GRACE,
        }
    }
}

impl Rules {
    /// The index of the first policy matching `repo`.
    pub fn policy_for(&self, repo: &str) -> Option<usize> {
        self.policies.iter().position(|p| p.matches(repo))
    }
}

/// What the policies decide for one tag.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    #[serde(flatten)]
    pub tag: TagInfo,
    pub keep: bool,
    /// The policy that decided (its index in the file, from 0); none when no policy
    /// matches the repository.
    pub policy: Option<usize>,
    /// Why it is kept (the rules that keep it), or why it goes (the policy, and what
    /// each of its rules found).
    pub reason: String,
}

struct Age(Option<Millis>, Millis);

impl fmt::Display for Age {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("never"),
            Some(t) => {
                let secs = ((self.1 - t).max(0) / 1000) as u64;
                write!(
                    f,
                    "{} ago",
                    humantime::format_duration(Duration::from_secs(secs))
                )
            }
        }
    }
}

/// The rank (0: most recent) of each tag by `time`, newest first, ties by name; tags
/// with no time are not ranked.
fn ranks(tags: &[TagInfo], time: impl Fn(&TagInfo) -> Option<Millis>) -> HashMap<usize, usize> {
    let mut timed: Vec<(usize, Millis)> = tags
        .iter()
        .enumerate()
        .filter_map(|(i, t)| Some((i, time(t)?)))
        .collect();
    timed.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then_with(|| tags[a.0].tag.cmp(&tags[b.0].tag))
    });
    timed
        .into_iter()
        .enumerate()
        .map(|(r, (i, _))| (i, r))
        .collect()
}

fn within(t: Option<Millis>, d: Duration, now: Millis) -> bool {
    t.is_some_and(|t| now.saturating_sub(t) < d.as_millis() as Millis)
}

/// The verdicts on the tags of one repository under `policy` (index `index`).
fn judge_repo(policy: &Policy, index: usize, tags: Vec<TagInfo>, now: Millis) -> Vec<Verdict> {
    let pushed = ranks(&tags, |t| t.pushed);
    let pulled = ranks(&tags, |t| t.pulled);
    let mut out = Vec::with_capacity(tags.len());
    for (i, tag) in tags.into_iter().enumerate() {
        let mut keeps = Vec::new();
        let mut misses = Vec::new();
        if tag.digest.is_none() {
            keeps.push("its current link cannot be read".to_string());
        }
        match policy.keep_tags.iter().find(|re| re.is_match(&tag.tag)) {
            Some(re) => keeps.push(format!("keep_tags {:?}", re.as_str())),
            None if !policy.keep_tags.is_empty() => misses.push("matches no keep_tags".into()),
            None => {}
        }
        if let Some(n) = policy.keep_most_recently_pushed {
            match pushed.get(&i) {
                Some(&r) if r < n => keeps.push(format!(
                    "keep_most_recently_pushed = {n} (#{} pushed)",
                    r + 1
                )),
                Some(&r) => misses.push(format!("#{} most recently pushed of {n} kept", r + 1)),
                None => misses.push("no push time".into()),
            }
        }
        if let Some(n) = policy.keep_most_recently_pulled {
            match pulled.get(&i) {
                Some(&r) if r < n => keeps.push(format!(
                    "keep_most_recently_pulled = {n} (#{} pulled)",
                    r + 1
                )),
                Some(&r) => misses.push(format!("#{} most recently pulled of {n} kept", r + 1)),
                None => misses.push("never pulled".into()),
            }
        }
        if let Some(d) = policy.keep_pushed_within {
            let shown = humantime::format_duration(d);
            if within(tag.pushed, d, now) {
                keeps.push(format!("keep_pushed_within = {shown}"));
            } else {
                misses.push(format!(
                    "pushed {} (not within {shown})",
                    Age(tag.pushed, now)
                ));
            }
        }
        if let Some(d) = policy.keep_pulled_within {
            let shown = humantime::format_duration(d);
            if within(tag.pulled, d, now) {
                keeps.push(format!("keep_pulled_within = {shown}"));
            } else {
                misses.push(format!(
                    "pulled {} (not within {shown})",
                    Age(tag.pulled, now)
                ));
            }
        }
        let keep = !keeps.is_empty();
        let reason = if keep {
            keeps.join("; ")
        } else {
            format!(
                "policy {index} ({}): no rule keeps it: {}",
                policy.patterns(),
                misses.join("; ")
            )
        };
        out.push(Verdict {
            tag,
            keep,
            policy: Some(index),
            reason,
        });
    }
    out
}

/// The verdict on every tag (as listed by [`super::tags::list_tags`]: grouped by
/// repository), at time `now`.
pub fn judge(rules: &Rules, tags: Vec<TagInfo>, now: Millis) -> Vec<Verdict> {
    let mut out = Vec::with_capacity(tags.len());
    let mut rest = tags.into_iter().peekable();
    while let Some(first) = rest.next() {
        let repo = first.repository.clone();
        let mut group = vec![first];
        while rest.peek().is_some_and(|t| t.repository == repo) {
            group.extend(rest.next());
        }
        match rules.policy_for(&repo) {
            Some(i) => out.extend(judge_repo(&rules.policies[i], i, group, now)),
            None => out.extend(group.into_iter().map(|tag| Verdict {
                tag,
                keep: true,
                policy: None,
                reason: "no policy matches its repository".into(),
            })),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Digest;

    const H: Millis = 3600 * 1000;
    const NOW: Millis = 1_000_000 * H;

    fn tag(repo: &str, name: &str, pushed_h_ago: i64, pulled_h_ago: Option<i64>) -> TagInfo {
        TagInfo {
            repository: repo.into(),
            tag: name.into(),
            digest: Some(Digest::of(name.as_bytes())),
            pushed: Some(NOW - pushed_h_ago * H),
            pulled: pulled_h_ago.map(|h| NOW - h * H),
            link_mtime: None,
        }
    }

    fn kept(v: &[Verdict]) -> Vec<String> {
        v.iter()
            .filter(|v| v.keep)
            .map(|v| format!("{}:{}", v.tag.repository, v.tag.tag))
            .collect()
    }

    fn policy(globs: &[&str]) -> Policy {
        Policy {
            repositories: globs.iter().map(|g| RepoGlob::new(g).unwrap()).collect(),
            ..Policy::default()
        }
    }

    fn tags() -> Vec<TagInfo> {
        vec![
            tag("ci/app", "a", 1, None),
            tag("ci/app", "b", 2, Some(100)),
            tag("ci/app", "c", 30, Some(1)),
            tag("ci/app", "v1.0.0", 900, None),
        ]
    }

    fn rules(p: Policy) -> Rules {
        Rules {
            policies: vec![p],
            ..Rules::default()
        }
    }

    #[test]
    fn globs_keep_single_stars_within_a_component() {
        let g = RepoGlob::new("team/*").unwrap();
        assert!(g.matches("team/app") && !g.matches("team/app/web") && !g.matches("team"));
        let g = RepoGlob::new("team/**").unwrap();
        assert!(g.matches("team/app") && g.matches("team/app/web") && !g.matches("teams/x"));
        assert!(
            RepoGlob::new("a.b").unwrap().matches("a.b")
                && !RepoGlob::new("a.b").unwrap().matches("axb")
        );
    }

    #[test]
    fn each_rule_alone() {
        let mut p = policy(&["ci/*"]);
        p.keep_most_recently_pushed = Some(2);
        assert_eq!(
            kept(&judge(&rules(p), tags(), NOW)),
            ["ci/app:a", "ci/app:b"]
        );
        let mut p = policy(&["ci/*"]);
        p.keep_most_recently_pulled = Some(1);
        assert_eq!(kept(&judge(&rules(p), tags(), NOW)), ["ci/app:c"]);
        let mut p = policy(&["ci/*"]);
        p.keep_pushed_within = Some(Duration::from_secs(24 * 3600));
        assert_eq!(
            kept(&judge(&rules(p), tags(), NOW)),
            ["ci/app:a", "ci/app:b"]
        );
        let mut p = policy(&["ci/*"]);
        p.keep_pulled_within = Some(Duration::from_secs(50 * 3600));
        assert_eq!(kept(&judge(&rules(p), tags(), NOW)), ["ci/app:c"]);
        let mut p = policy(&["ci/*"]);
        p.keep_tags = vec![Regex::new(r"^v[0-9]+\.[0-9]+\.[0-9]+$").unwrap()];
        assert_eq!(kept(&judge(&rules(p), tags(), NOW)), ["ci/app:v1.0.0"]);
    }

    #[test]
    fn rules_combine_by_any_and_the_first_matching_policy_wins() {
        let mut p = policy(&["ci/*"]);
        p.keep_most_recently_pushed = Some(1);
        p.keep_pulled_within = Some(Duration::from_secs(2 * 3600));
        let v = judge(&rules(p.clone()), tags(), NOW);
        assert_eq!(kept(&v), ["ci/app:a", "ci/app:c"]);
        let gone = v.iter().find(|v| v.tag.tag == "v1.0.0").unwrap();
        assert!(gone.reason.contains("policy 0 (ci/*)"), "{}", gone.reason);
        assert!(gone.reason.contains("pulled never"), "{}", gone.reason);
        // A first policy keeping everything pushed within 1000 h shadows the second.
        let mut first = policy(&["ci/**"]);
        first.keep_pushed_within = Some(Duration::from_secs(1000 * 3600));
        let r = Rules {
            policies: vec![first, p],
            ..Rules::default()
        };
        let v = judge(&r, tags(), NOW);
        assert_eq!(kept(&v).len(), 4);
        assert!(v.iter().all(|v| v.policy == Some(0)));
    }

    #[test]
    fn a_repository_no_policy_matches_keeps_everything() {
        let mut p = policy(&["team/**"]);
        p.keep_most_recently_pushed = Some(0);
        let v = judge(&rules(p), tags(), NOW);
        assert_eq!(kept(&v).len(), 4);
        assert!(v.iter().all(|v| v.policy.is_none()));
        assert_eq!(kept(&judge(&Rules::default(), tags(), NOW)).len(), 4);
    }
}

//! The retention settings (`[retention]` and its `[[retention.policy]]` tables, see
//! `crate::retention`) as each source gives them, and how they lie over each other: the
//! configuration file's at the bottom, those saved through the API over them. No flag
//! sets them, but `--dry-run` (a dry run of the whole collection) makes pruning a dry
//! run too. Each key is taken whole from the last source that sets it: `dry_run`,
//! `grace`, and `policy` (the list of policies: the API's list replaces the file's,
//! it is not merged policy by policy, as the first matching policy decides).
//!
//! ```toml
//! [retention]
//! dry_run = true           # the default: runs list what they would prune
//! grace = "24h"            # a manifest left untagged by pruning is kept this long
//!
//! [[retention.policy]]     # the first policy matching a repository decides
//! repositories = ["team/**", "ci/*"]                        # `**` crosses '/'
//! keep_tags = ["^v[0-9]+\\.[0-9]+\\.[0-9]+$", "^latest$"]   # regexes: always kept
//! keep_most_recently_pushed = 10
//! keep_most_recently_pulled = 5
//! keep_pushed_within = "30d"
//! keep_pulled_within = "7d"
//! ```
//!
//! Every bad value is refused naming the source, its key
//! (`retention.policy[1].keep_tags[0]`) and the value; unknown keys are refused by the
//! parser, which names them.

use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::retention::{Policy, RepoGlob, Rules};

/// `[retention]` as one source gives it; every key optional (absent: the sources below
/// decide).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionValues {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
    /// The policies, first match wins; `[]`: none (every tag kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Vec<PolicyValues>>,
}

/// One `[[retention.policy]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyValues {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repositories: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_most_recently_pushed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_most_recently_pulled: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_pushed_within: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_pulled_within: Option<String>,
}

impl RetentionValues {
    pub fn is_empty(&self) -> bool {
        self == &RetentionValues::default()
    }

    /// The keys this source sets (`dry_run`, `grace`, `policy`).
    pub fn keys(&self) -> Vec<&'static str> {
        let mut k = vec![];
        if self.dry_run.is_some() {
            k.push("dry_run");
        }
        if self.grace.is_some() {
            k.push("grace");
        }
        if self.policy.is_some() {
            k.push("policy");
        }
        k
    }

    /// `other`'s keys replace these where it sets them.
    pub fn merge(&self, other: &RetentionValues) -> RetentionValues {
        RetentionValues {
            dry_run: other.dry_run.or(self.dry_run),
            grace: other.grace.clone().or_else(|| self.grace.clone()),
            policy: other.policy.clone().or_else(|| self.policy.clone()),
        }
    }
}

/// The values that give `rules` (what the API shows, and the page edits).
pub fn values_of(rules: &Rules) -> RetentionValues {
    let shown = |d: Option<Duration>| d.map(|d| humantime::format_duration(d).to_string());
    RetentionValues {
        dry_run: Some(rules.dry_run),
        grace: shown(Some(rules.grace)),
        policy: Some(
            rules
                .policies
                .iter()
                .map(|p| PolicyValues {
                    repositories: Some(p.repositories.iter().map(|g| g.text.clone()).collect()),
                    keep_tags: p.keep_tags.iter().map(|r| r.as_str().to_owned()).collect(),
                    keep_most_recently_pushed: p.keep_most_recently_pushed.map(|n| n as i64),
                    keep_most_recently_pulled: p.keep_most_recently_pulled.map(|n| n as i64),
                    keep_pushed_within: shown(p.keep_pushed_within),
                    keep_pulled_within: shown(p.keep_pulled_within),
                })
                .collect(),
        ),
    }
}

/// A value refused: (key, why); the caller names the source.
type Bad = (String, String);

fn duration(key: String, text: &str) -> Result<Duration, Bad> {
    humantime::parse_duration(text).map_err(|e| {
        (
            key,
            format!("{text:?}: {e}; expected a duration such as 7d or 36h"),
        )
    })
}

fn count(key: String, n: Option<i64>) -> Result<Option<usize>, Bad> {
    match n {
        None => Ok(None),
        Some(n) if n < 0 => Err((key, format!("{n}: a number of tags cannot be negative"))),
        Some(n) => Ok(Some(n as usize)),
    }
}

fn policy(i: usize, p: &PolicyValues) -> Result<Policy, Bad> {
    let key = |k: &str| format!("retention.policy[{i}].{k}");
    let globs = p.repositories.as_deref().unwrap_or_default();
    if globs.is_empty() {
        return Err((
            key("repositories"),
            "missing or empty: a policy names the repositories it applies to (\"**\" for all)"
                .into(),
        ));
    }
    let repositories = globs
        .iter()
        .enumerate()
        .map(|(j, g)| {
            RepoGlob::new(g)
                .map_err(|e| (key(&format!("repositories[{j}]")), format!("{g:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let keep_tags = p
        .keep_tags
        .iter()
        .enumerate()
        .map(|(j, r)| {
            Regex::new(r).map_err(|e| {
                (
                    key(&format!("keep_tags[{j}]")),
                    format!("{r:?} is not a regular expression: {e}"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let within =
        |k: &str, v: &Option<String>| v.as_deref().map(|t| duration(key(k), t)).transpose();
    let policy = Policy {
        repositories,
        keep_tags,
        keep_most_recently_pushed: count(
            key("keep_most_recently_pushed"),
            p.keep_most_recently_pushed,
        )?,
        keep_most_recently_pulled: count(
            key("keep_most_recently_pulled"),
            p.keep_most_recently_pulled,
        )?,
        keep_pushed_within: within("keep_pushed_within", &p.keep_pushed_within)?,
        keep_pulled_within: within("keep_pulled_within", &p.keep_pulled_within)?,
    };
    let rules = [
        !p.keep_tags.is_empty(),
        policy.keep_most_recently_pushed.is_some(),
        policy.keep_most_recently_pulled.is_some(),
        policy.keep_pushed_within.is_some(),
        policy.keep_pulled_within.is_some(),
    ];
    if !rules.contains(&true) {
        return Err((
            format!("retention.policy[{i}]"),
            "no keep rule (keep_tags, keep_most_recently_pushed, keep_most_recently_pulled, \
             keep_pushed_within, keep_pulled_within): it would remove every tag of its repositories"
                .into(),
        ));
    }
    Ok(policy)
}

/// Lays `layers` (lowest first, each with its origin as errors name it: the file's
/// path, `settings saved through the API`) over each other, key by key, and checks the
/// result: a bad value is refused as (origin, key, why).
pub fn settle_retention(
    layers: &[(String, &RetentionValues)],
) -> Result<Rules, (String, String, String)> {
    // The last source setting each key: its value and whom to blame.
    let last = |set: fn(&RetentionValues) -> bool| layers.iter().rev().find(|(_, v)| set(v));
    let blame =
        |origin: Option<&String>, (key, why): Bad| (origin.cloned().unwrap_or_default(), key, why);
    let policies = match last(|v| v.policy.is_some()) {
        None => Vec::new(),
        Some((source, v)) => v
            .policy
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, p)| policy(i, p).map_err(|b| blame(Some(source), b)))
            .collect::<Result<_, _>>()?,
    };
    let grace = match last(|v| v.grace.is_some()) {
        None => crate::retention::rules::DEFAULT_GRACE,
        Some((source, v)) => duration("retention.grace".into(), v.grace.as_deref().unwrap_or(""))
            .map_err(|b| blame(Some(source), b))?,
    };
    Ok(Rules {
        policies,
        dry_run: last(|v| v.dry_run.is_some())
            .and_then(|(_, v)| v.dry_run)
            .unwrap_or(true),
        grace,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const API: &str = "settings saved through the API";

    fn values(json: serde_json::Value) -> RetentionValues {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_api_replaces_the_files_keys_each_whole() {
        let file = values(serde_json::json!({
            "grace": "2h",
            "policy": [{"repositories": ["a/*"], "keep_tags": ["^v"]}, {"repositories": ["b"], "keep_most_recently_pushed": 3}],
        }));
        let api = values(serde_json::json!({
            "dry_run": false,
            "policy": [{"repositories": ["c/**"], "keep_pulled_within": "7d"}],
        }));
        let r = settle_retention(&[("r.toml".into(), &file), (API.into(), &api)]).unwrap();
        assert!(!r.dry_run);
        assert_eq!(r.grace, Duration::from_secs(7200));
        assert_eq!(r.policies.len(), 1, "the API's list replaces the file's");
        assert_eq!(r.policy_for("c/x/y"), Some(0));
        assert_eq!(r.policy_for("a/x"), None);
        let none = settle_retention(&[("r.toml".into(), &file)]).unwrap();
        assert!(none.dry_run, "a dry run until set false");
        assert_eq!(none.policies.len(), 2);
        let emptied = values(serde_json::json!({"policy": []}));
        let r = settle_retention(&[("r.toml".into(), &file), (API.into(), &emptied)]).unwrap();
        assert!(
            r.policies.is_empty(),
            "an empty list from the API: no policy"
        );
    }

    #[test]
    fn a_bad_value_names_the_source_and_its_key() {
        let file =
            values(serde_json::json!({"policy": [{"repositories": ["a"], "keep_tags": ["x"]}]}));
        let api = values(
            serde_json::json!({"policy": [{"repositories": ["a"], "keep_tags": ["x"]}, {"repositories": ["b"], "keep_most_recently_pulled": -1}]}),
        );
        let (o, k, m) =
            settle_retention(&[("r.toml".into(), &file), (API.into(), &api)]).unwrap_err();
        assert_eq!(
            (o.as_str(), k.as_str()),
            (
                "settings saved through the API",
                "retention.policy[1].keep_most_recently_pulled"
            )
        );
        assert!(m.contains("-1"), "{m}");
        let file = values(serde_json::json!({"grace": "1 fortnight"}));
        let (o, k, _) = settle_retention(&[("r.toml".into(), &file)]).unwrap_err();
        assert_eq!((o.as_str(), k.as_str()), ("r.toml", "retention.grace"));
        assert!(
            serde_json::from_value::<RetentionValues>(serde_json::json!({"grce": "1h"})).is_err()
        );
    }
}

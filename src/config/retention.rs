//! `[retention]` and its `[[retention.policy]]` tables (see `crate::retention`):
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
//! Every bad value is refused naming its key (`retention.policy[1].keep_tags[0]`) and
//! the value; unknown keys are refused by the parser, which names them.

use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::{ConfigError, bad};
use crate::retention::{Policy, RepoGlob, Rules};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    pub dry_run: Option<bool>,
    pub grace: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy: Vec<PolicySection>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    pub repositories: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_tags: Vec<String>,
    pub keep_most_recently_pushed: Option<i64>,
    pub keep_most_recently_pulled: Option<i64>,
    pub keep_pushed_within: Option<String>,
    pub keep_pulled_within: Option<String>,
}

fn duration(origin: &str, key: String, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text).map_err(|e| {
        bad(
            origin.into(),
            key,
            format!("{text:?}: {e}; expected a duration such as 7d or 36h"),
        )
    })
}

fn count(origin: &str, key: String, n: Option<i64>) -> Result<Option<usize>, ConfigError> {
    match n {
        None => Ok(None),
        Some(n) if n < 0 => Err(bad(
            origin.into(),
            key,
            format!("{n}: a number of tags cannot be negative"),
        )),
        Some(n) => Ok(Some(n as usize)),
    }
}

fn policy(origin: &str, i: usize, p: &PolicySection) -> Result<Policy, ConfigError> {
    let key = |k: &str| format!("retention.policy[{i}].{k}");
    let globs = p.repositories.as_deref().unwrap_or_default();
    if globs.is_empty() {
        return Err(bad(
            origin.into(),
            key("repositories"),
            "missing or empty: a policy names the repositories it applies to (\"**\" for all)"
                .into(),
        ));
    }
    let repositories = globs
        .iter()
        .enumerate()
        .map(|(j, g)| {
            RepoGlob::new(g).map_err(|e| {
                bad(
                    origin.into(),
                    key(&format!("repositories[{j}]")),
                    format!("{g:?}: {e}"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let keep_tags = p
        .keep_tags
        .iter()
        .enumerate()
        .map(|(j, r)| {
            Regex::new(r).map_err(|e| {
                bad(
                    origin.into(),
                    key(&format!("keep_tags[{j}]")),
                    format!("{r:?} is not a regular expression: {e}"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let within = |k: &str, v: &Option<String>| {
        v.as_deref()
            .map(|t| duration(origin, key(k), t))
            .transpose()
    };
    let policy = Policy {
        repositories,
        keep_tags,
        keep_most_recently_pushed: count(
            origin,
            key("keep_most_recently_pushed"),
            p.keep_most_recently_pushed,
        )?,
        keep_most_recently_pulled: count(
            origin,
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
        return Err(bad(
            origin.into(),
            format!("retention.policy[{i}]"),
            "no keep rule (keep_tags, keep_most_recently_pushed, keep_most_recently_pulled, \
             keep_pushed_within, keep_pulled_within): it would remove every tag of its repositories"
                .into(),
        ));
    }
    Ok(policy)
}

/// `[retention]` resolved; `origin` names the file in errors.
pub fn resolve(section: &RetentionSection, origin: &str) -> Result<Rules, ConfigError> {
    let policies = section
        .policy
        .iter()
        .enumerate()
        .map(|(i, p)| policy(origin, i, p))
        .collect::<Result<_, _>>()?;
    Ok(Rules {
        policies,
        dry_run: section.dry_run.unwrap_or(true),
        grace: match &section.grace {
            Some(g) => duration(origin, "retention.grace".into(), g)?,
            None => crate::retention::rules::DEFAULT_GRACE,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;

    fn resolved(text: &str) -> Result<Rules, String> {
        let file = FileConfig::parse(text, "f.toml").map_err(|e| e.to_string())?;
        resolve(&file.retention, "f.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_policy_resolves_with_its_defaults() {
        let r = resolved(
            r#"
[[retention.policy]]
repositories = ["team/**", "ci/*"]
keep_tags = ['^v[0-9]+\.[0-9]+\.[0-9]+$', "^latest$"]
keep_most_recently_pushed = 10
keep_most_recently_pulled = 5
keep_pushed_within = "30d"
keep_pulled_within = "7d"
"#,
        )
        .unwrap();
        assert!(r.dry_run);
        assert_eq!(r.grace, Duration::from_secs(86400));
        assert_eq!(r.policies[0].keep_most_recently_pushed, Some(10));
        assert_eq!(
            r.policies[0].keep_pulled_within,
            Some(Duration::from_secs(7 * 86400))
        );
        assert_eq!(r.policy_for("team/a/b"), Some(0));
        assert_eq!(r.policy_for("other"), None);
        let r = resolved("[retention]\ndry_run = false\ngrace = \"2h\"\n").unwrap();
        assert!(!r.dry_run && r.policies.is_empty());
        assert_eq!(r.grace, Duration::from_secs(7200));
    }

    #[test]
    fn bad_policies_are_refused_naming_the_key_and_the_value() {
        let cases = [
            (
                "[[retention.policy]]\nrepositories=[\"a\"]\nkeep_tags=[\"(\"]\n",
                &["f.toml", "retention.policy[0].keep_tags[0]", "\"(\""][..],
            ),
            (
                "[[retention.policy]]\nrepositories=[\"a\"]\nkeep_tags=[\"x\"]\n[[retention.policy]]\nrepositories=[\"b\"]\nkeep_most_recently_pulled=-1\n",
                &["retention.policy[1].keep_most_recently_pulled", "-1"],
            ),
            (
                "[[retention.policy]]\nrepositories=[\"a\"]\nkeep_pushed_within=\"soon\"\n",
                &["retention.policy[0].keep_pushed_within", "\"soon\""],
            ),
            (
                "[[retention.policy]]\nrepositories=[\"a\"]\nkeep_tag=[\"x\"]\n",
                &["keep_tag"],
            ),
            ("[retention]\ngrce=\"1h\"\n", &["grce"]),
            (
                "[retention]\ngrace=\"1 fortnight\"\n",
                &["retention.grace", "fortnight"],
            ),
            (
                "[[retention.policy]]\nkeep_tags=[\"x\"]\n",
                &["retention.policy[0].repositories"],
            ),
            (
                "[[retention.policy]]\nrepositories=[\"a\"]\n",
                &["retention.policy[0]", "no keep rule"],
            ),
        ];
        for (text, words) in cases {
            let e = resolved(text).expect_err(text);
            for w in words {
                assert!(e.contains(w), "{text}: {e:?} lacks {w}");
            }
        }
    }
}

//! `[retention]` and its `[[retention.policy]]` tables of the configuration file. The
//! values, their checks and how they lie under the settings saved through the API are
//! the settings' (`crate::settings::retention`, which shows the section); here the file's
//! section is resolved alone, for `regfs config check` and commands reading a file.

use super::{ConfigError, bad};
use crate::retention::Rules;
use crate::settings::retention::settle_retention;
pub use crate::settings::retention::{PolicyValues, RetentionValues as RetentionSection};

/// `[retention]` resolved; `origin` names the file in errors.
pub fn resolve(section: &RetentionSection, origin: &str) -> Result<Rules, ConfigError> {
    settle_retention(&[(origin.into(), section)])
        .map_err(|(origin, key, why)| bad(origin, key, why))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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

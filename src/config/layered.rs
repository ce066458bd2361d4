//! The configuration file and the command line's flags laid over each other: both give
//! a [`FileConfig`] (a flag is the key it stands for), figment merges them (a flag wins;
//! a list given as a flag replaces the file's), and every value remembers which of the
//! two gave it, so a bad one is refused naming the flag or the file's key.
//!
//! `[gc]` is layered again, with the settings saved through the API between the file and
//! the flags, by `settings::layers`; `[history]` and `[retention]` have no flags.

use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider, providers::Serialized};

use super::{ConfigError, FileConfig, bad};

/// Where a value given on the command line is blamed.
pub const COMMAND_LINE: &str = "command line";

/// Each key a flag can give, with the flag.
const FLAGS: [(&str, &str); 29] = [
    ("storage", "STORAGE"),
    ("mountpoint", "MOUNTPOINT"),
    ("state_dir", "--state-dir"),
    ("threads", "--threads"),
    ("attr_timeout", "--attr-timeout"),
    ("passthrough", "--no-passthrough"),
    ("max_inodes", "--max-inodes"),
    ("drain_timeout", "--drain-timeout"),
    ("allow_users", "--allow-user"),
    ("allow_all_users", "--allow-all-users"),
    ("access_times", "--no-access-times"),
    ("metrics.listen", "--http-listen (--metrics-listen)"),
    ("metrics.allow_remote", "--http-allow-remote"),
    ("registry.config", "--registry-config"),
    ("registry.allow_unsafe_cache", "--allow-unsafe-cache"),
    ("api.htpasswd", "--api-htpasswd"),
    ("api.token_file", "--api-token-file"),
    ("api.tls_cert", "--api-tls-cert"),
    ("api.tls_key", "--api-tls-key"),
    ("api.allow_insecure", "--api-allow-insecure"),
    ("cluster.endpoints", "--cluster-endpoints"),
    ("cluster.node", "--cluster-node"),
    ("cluster.lease_ttl", "--cluster-lease-ttl"),
    ("cluster.prefix", "--cluster-prefix"),
    ("cluster.ca_file", "--cluster-ca-file"),
    ("cluster.cert_file", "--cluster-cert-file"),
    ("cluster.key_file", "--cluster-key-file"),
    ("cluster.username", "--cluster-username"),
    ("cluster.password_file", "--cluster-password-file"),
];

/// The flag that gives `key` (the key itself if none does).
pub fn flag_of(key: &str) -> &str {
    FLAGS
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(key, |(_, flag)| flag)
}

/// One source as a figment provider: its values with the unset ones left out (an unset
/// flag gives nothing, so the file's value stands).
struct Source<'a> {
    name: &'static str,
    values: &'a FileConfig,
}

/// `v` without its nulls (unset options), at every depth.
fn given_only(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, given_only(v)))
                .collect(),
        ),
        other => other,
    }
}

impl Provider for Source<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let json = serde_json::to_value(self.values).map_err(|e| e.to_string())?;
        Serialized::defaults(given_only(json)).data()
    }
}

/// The file's keys with the flags laid over them.
pub struct Layered<'a> {
    /// What the daemon runs with (before checks).
    pub merged: FileConfig,
    figment: Figment,
    /// The configuration file as shown (or "command line" when there is none).
    origin: &'a str,
}

impl<'a> Layered<'a> {
    pub fn new(
        file: &FileConfig,
        flags: &FileConfig,
        origin: &'a str,
    ) -> Result<Self, ConfigError> {
        let figment = Figment::new()
            .merge(Source {
                name: "file",
                values: file,
            })
            .merge(Source {
                name: COMMAND_LINE,
                values: flags,
            });
        let merged = figment
            .extract()
            .map_err(|e| bad(origin.into(), "configuration".into(), e.to_string()))?;
        Ok(Layered {
            merged,
            figment,
            origin,
        })
    }

    /// Whether the flag of `key` gave its value.
    pub fn given_by_flag(&self, key: &str) -> bool {
        self.figment
            .find_metadata(key)
            .is_some_and(|m| m.name == COMMAND_LINE)
    }

    /// (origin, name) to blame for `key` (a dotted key such as `cluster.lease_ttl`): the
    /// flag when a flag gave it, else the file's key (also for a default, which the file
    /// would set).
    pub fn blame(&self, key: &str) -> (String, String) {
        if self.given_by_flag(key) {
            (COMMAND_LINE.into(), flag_of(key).into())
        } else {
            (self.origin.into(), key.into())
        }
    }

    /// `key`'s value refused for `message`.
    pub fn bad(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let (origin, key) = self.blame(key);
        bad(origin, key, message.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_wins_and_is_blamed_by_its_name_and_unset_flags_leave_the_file_alone() {
        let file = FileConfig::parse(
            "threads = 4\nattr_timeout = 5\n[cluster]\nendpoints = [\"http://a:1\", \"http://b:2\"]\nnode = \"n\"\n",
            "r.toml",
        )
        .unwrap();
        let mut flags = FileConfig {
            threads: Some(16),
            ..FileConfig::default()
        };
        flags.cluster.endpoints = Some(vec!["http://c:3".into()]);
        let l = Layered::new(&file, &flags, "r.toml").unwrap();
        assert_eq!(l.merged.threads, Some(16));
        assert_eq!(l.merged.attr_timeout, Some(5.0));
        // A list given as a flag replaces the file's, it does not add to it.
        assert_eq!(
            l.merged.cluster.endpoints.as_deref(),
            Some(&["http://c:3".to_string()][..])
        );
        assert_eq!(l.merged.cluster.node.as_deref(), Some("n"));
        assert_eq!(
            l.blame("threads"),
            ("command line".into(), "--threads".into())
        );
        assert_eq!(
            l.blame("cluster.endpoints"),
            ("command line".into(), "--cluster-endpoints".into())
        );
        assert_eq!(
            l.blame("cluster.node"),
            ("r.toml".into(), "cluster.node".into())
        );
        assert_eq!(
            l.blame("cluster.prefix"),
            ("r.toml".into(), "cluster.prefix".into()),
            "a default is blamed on the key that would set it"
        );
    }
}

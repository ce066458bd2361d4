//! The registry's own configuration (`config.yml`), reduced to what decides whether its
//! blob-descriptor cache can outlive a GC run: `storage.cache.blobdescriptor` and the
//! top-level `redis` section, with the registry's environment overrides applied.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;
use thiserror::Error;

/// A registry configuration is a few KiB; anything much larger is not one.
const MAX_CONFIG_SIZE: u64 = 1 << 20;

/// The environment variable through which the registry overrides the cache setting.
pub const CACHE_ENV: &str = "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR";

/// The variables through which it overrides which storage it serves: the driver, and the
/// filesystem driver's root directory.
pub const DRIVER_ENV: &str = "REGISTRY_STORAGE";
pub const ROOTDIRECTORY_ENV: &str = "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY";

/// The filesystem driver's root directory when the configuration gives none.
pub const DEFAULT_ROOTDIRECTORY: &str = "/var/lib/registry";

/// Keys of `storage` that are no storage driver.
const NOT_DRIVERS: [&str; 5] = ["cache", "maintenance", "delete", "redirect", "tag"];

#[derive(Debug, Error)]
pub enum RegistryConfigError {
    #[error("registry configuration {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("registry configuration {path}: {message}")]
    Invalid { path: String, message: String },
}

/// The blob-descriptor cache the registry runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheKind {
    /// No `storage.cache` (or `none`, the value the shipped drop-in sets).
    None,
    InMemory,
    Redis,
    /// A type regfs does not know: it cannot tell what that cache keeps.
    Unknown(String),
}

impl CacheKind {
    fn from_value(v: &str) -> Self {
        match v {
            "" | "none" => CacheKind::None,
            "inmemory" => CacheKind::InMemory,
            "redis" => CacheKind::Redis,
            other => CacheKind::Unknown(other.to_string()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            CacheKind::None => "none",
            CacheKind::InMemory => "inmemory",
            CacheKind::Redis => "redis",
            CacheKind::Unknown(v) => v,
        }
    }
}

/// Where the registry's redis is (2.8: the top-level `redis` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub addr: String,
    pub password: Option<String>,
    pub db: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    pub path: PathBuf,
    pub cache: CacheKind,
    /// `None` when the configuration has no `redis.addr`.
    pub redis: Option<RedisTarget>,
    /// `storage.filesystem.rootdirectory`.
    pub rootdirectory: Option<PathBuf>,
    /// The storage driver (`filesystem`, `s3`...): the key of `storage` naming one.
    pub driver: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Raw {
    #[serde(default)]
    storage: Value,
    #[serde(default)]
    redis: Value,
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl RegistryConfig {
    /// Reads `path`: a regular file of at most 1 MiB.
    pub fn load(path: &Path) -> Result<Self, RegistryConfigError> {
        let shown = path.display().to_string();
        let err = |source| RegistryConfigError::Read {
            path: shown.clone(),
            source,
        };
        // Non-blocking: a FIFO put in a configuration's place must not hang the check.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(err)?;
        let meta = file.metadata().map_err(err)?;
        if !meta.is_file() || meta.len() > MAX_CONFIG_SIZE {
            return Err(RegistryConfigError::Invalid {
                path: shown,
                message: format!("not a regular file of at most {MAX_CONFIG_SIZE} bytes"),
            });
        }
        let mut text = String::new();
        file.take(MAX_CONFIG_SIZE)
            .read_to_string(&mut text)
            .map_err(err)?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, RegistryConfigError> {
        let invalid = |message: String| RegistryConfigError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let raw: Raw = serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let cache = &raw.storage["cache"];
        // 2.8 still reads the old name `layerinfo` when `blobdescriptor` is absent.
        let setting = if cache["blobdescriptor"].is_null() {
            &cache["layerinfo"]
        } else {
            &cache["blobdescriptor"]
        };
        let cache =
            match setting {
                Value::Null => CacheKind::None,
                v => CacheKind::from_value(&scalar(v).ok_or_else(|| {
                    invalid("storage.cache.blobdescriptor is not a string".into())
                })?),
            };
        let redis = scalar(&raw.redis["addr"]).map(|addr| RedisTarget {
            addr,
            password: scalar(&raw.redis["password"]).filter(|p| !p.is_empty()),
            db: raw.redis["db"].as_i64().unwrap_or(0),
        });
        let rootdirectory = scalar(&raw.storage["filesystem"]["rootdirectory"]).map(PathBuf::from);
        let driver = raw.storage.as_mapping().and_then(|m| {
            m.keys()
                .filter_map(Value::as_str)
                .find(|k| !NOT_DRIVERS.contains(k))
                .map(str::to_string)
        });
        Ok(RegistryConfig {
            path: path.to_path_buf(),
            cache,
            redis,
            rootdirectory,
            driver,
        })
    }

    /// A configuration that sets nothing (what the environment alone gives).
    pub fn empty(path: &Path) -> Self {
        RegistryConfig {
            path: path.to_path_buf(),
            cache: CacheKind::None,
            redis: None,
            rootdirectory: None,
            driver: None,
        }
    }

    /// The directory the registry keeps its store in: `None` when its driver is not the
    /// filesystem (it then serves no local directory).
    pub fn store_directory(&self) -> Option<PathBuf> {
        match self.driver.as_deref() {
            Some("filesystem") | None => Some(
                self.rootdirectory
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOTDIRECTORY)),
            ),
            Some(_) => None,
        }
    }

    /// The configuration a registry process runs with, given its environment: the
    /// registry lets `REGISTRY_<SECTION>_<KEY>` variables override the file.
    pub fn with_env<'a>(&self, env: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut c = self.clone();
        for (k, v) in env {
            match k {
                CACHE_ENV => c.cache = CacheKind::from_value(v),
                DRIVER_ENV => c.driver = Some(v.to_string()),
                ROOTDIRECTORY_ENV => c.rootdirectory = Some(PathBuf::from(v)),
                "REGISTRY_REDIS_ADDR" => {
                    let target = c.redis.get_or_insert(RedisTarget {
                        addr: String::new(),
                        password: None,
                        db: 0,
                    });
                    target.addr = v.to_string();
                }
                "REGISTRY_REDIS_PASSWORD" => {
                    if let Some(t) = c.redis.as_mut() {
                        t.password = Some(v.to_string()).filter(|p| !p.is_empty());
                    }
                }
                "REGISTRY_REDIS_DB" => {
                    if let (Some(t), Ok(db)) = (c.redis.as_mut(), v.parse()) {
                        t.db = db;
                    }
                }
                _ => {}
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> RegistryConfig {
        RegistryConfig::parse(text, Path::new("config.yml")).unwrap()
    }

    /// Debian's /etc/docker/registry/config.yml as the package ships it.
    const DEBIAN: &str = "version: 0.1\nlog:\n  fields:\n    service: registry\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: /var/lib/docker-registry\n  delete:\n    enabled: true\nhttp:\n  addr: :5000\n  headers:\n    X-Content-Type-Options: [nosniff]\nauth:\n  htpasswd:\n    realm: basic-realm\n    path: /etc/docker/registry\nhealth:\n  storagedriver:\n    enabled: true\n    interval: 10s\n    threshold: 3\n";

    #[test]
    fn debians_default_has_the_in_memory_cache() {
        let c = parse(DEBIAN);
        assert_eq!(c.cache, CacheKind::InMemory);
        assert_eq!(c.redis, None);
        assert_eq!(
            c.rootdirectory.as_deref(),
            Some(Path::new("/var/lib/docker-registry"))
        );
        assert_eq!(c.driver.as_deref(), Some("filesystem"));
        let s3 = parse("storage:\n  cache:\n    blobdescriptor: inmemory\n  s3:\n    bucket: b\n");
        assert_eq!(s3.store_directory(), None);
        assert_eq!(
            s3.with_env([(DRIVER_ENV, "filesystem"), (ROOTDIRECTORY_ENV, "/srv/r")])
                .store_directory(),
            Some(PathBuf::from("/srv/r"))
        );
        // The drop-in's override turns it off.
        let c = c.with_env([(CACHE_ENV, "none"), ("PATH", "/usr/bin")]);
        assert_eq!(c.cache, CacheKind::None);
    }

    #[test]
    fn every_cache_setting_is_told_apart() {
        assert_eq!(parse("version: 0.1\n").cache, CacheKind::None);
        assert_eq!(parse("storage:\n  filesystem: {}\n").cache, CacheKind::None);
        assert_eq!(
            parse("storage:\n  cache:\n    layerinfo: inmemory\n").cache,
            CacheKind::InMemory
        );
        assert_eq!(
            parse("storage:\n  cache:\n    blobdescriptor: memcached\n").cache,
            CacheKind::Unknown("memcached".into())
        );
        let c = parse(
            "storage:\n  cache:\n    blobdescriptor: redis\nredis:\n  addr: 127.0.0.1:6379\n  password: s3cret\n  db: 2\n",
        );
        assert_eq!(c.cache, CacheKind::Redis);
        assert_eq!(
            c.redis,
            Some(RedisTarget {
                addr: "127.0.0.1:6379".into(),
                password: Some("s3cret".into()),
                db: 2
            })
        );
        let c = c.with_env([
            ("REGISTRY_REDIS_ADDR", "10.0.0.1:6380"),
            ("REGISTRY_REDIS_DB", "3"),
        ]);
        let r = c.redis.unwrap();
        assert_eq!((r.addr.as_str(), r.db), ("10.0.0.1:6380", 3));
    }

    #[test]
    fn a_file_that_is_no_configuration_is_an_error_naming_it() {
        let e = RegistryConfig::parse("storage: [1, 2\n", Path::new("/etc/x.yml")).unwrap_err();
        assert!(e.to_string().contains("/etc/x.yml"), "{e}");
        let e = RegistryConfig::parse(
            "storage:\n  cache:\n    blobdescriptor: [a]\n",
            Path::new("c.yml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("blobdescriptor"), "{e}");
        let e = RegistryConfig::load(Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("/dev/zero"), "{e}");
        assert!(RegistryConfig::load(Path::new("/nonexistent/config.yml")).is_err());
        // A FIFO in a configuration's place: an error at once, not a hang.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("config.yml");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = RegistryConfig::load(&fifo).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}

//! The configuration file (TOML): every option of `regfs mount`. Flags override it.
//! Unknown keys and bad values are refused, naming the key and the line.
//!
//! ```toml
//! storage = "/var/lib/docker-registry"
//! mountpoint = "/var/lib/docker-registry"
//! # state_dir = "/run/regfs/var-lib-docker\\x2dregistry"
//! threads = 8
//! attr_timeout = 60        # seconds
//! passthrough = true
//! max_inodes = 0           # 0: automatic
//! drain_timeout = 10       # seconds
//! allow_users = ["gitlab-registry", 1001]   # besides root and the storage owner
//! allow_all_users = false
//! access_times = true      # note pushes and pulls for [retention] rules
//!
//! [gc]
//! mode = "read-only"       # or "online": pushes go on during a run
//! schedule = "0 3 * * SAT" # UTC
//! duration = "until-done"  # or "30m", or "never"
//! delete_untagged = false
//! dry_run = false
//! upload_max_age = "168h"
//! min_age = "1h"
//! temp_files_everywhere_every = "24h"
//! keep_unknown = false
//! allow_missing_manifests = false
//!
//! # The job history in the state directory: the newest runs kept (checked at each
//! # run's end).
//! [history]
//! keep_runs = 1000
//! keep_days = 90
//!
//! # The HTTP listener: metrics, the GC page and its API.
//! [metrics]
//! listen = "127.0.0.1:9469"
//! allow_remote = false
//!
//! # Who may change settings through the API, and TLS (see crate::api::config).
//! [api]
//! htpasswd = "/etc/docker/registry/htpasswd"
//!
//! [registry]
//! config = "/etc/docker/registry/config.yml"
//! allow_unsafe_cache = false
//!
//! # several nodes over one shared store, coordinated through etcd
//! [cluster]
//! endpoints = ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
//! node = "registry-1"      # default: machine-id:mountpoint
//! lease_ttl = "10s"
//! prefix = "/regfs/"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::fs::access::{MountUsers, resolve_user};
use crate::mount::MountConfig;
use crate::settings::Settings;
use crate::settings::layers::{Fixed, GcValues};
use crate::settings::owner::Sources;

mod cluster;
mod layered;
pub mod retention;
pub use cluster::ClusterSection;
pub use layered::flag_of;

use layered::Layered;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// toml's message names the key, the line and the column.
    #[error("configuration file {path}: {message}")]
    Parse { path: String, message: String },
    /// A bad value: `origin` is the file (then `key` is its key) or "command line"
    /// (then `key` is the flag).
    #[error("{origin}: {key}: {message}")]
    Value {
        origin: String,
        key: String,
        message: String,
    },
    #[error("configuration file {path}: {what}, not a regular file")]
    NotAFile { path: String, what: &'static str },
    #[error("configuration file {path}: larger than {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    #[error("{0}")]
    Missing(String),
}

/// A configuration file is a few hundred bytes; anything near this is not one.
pub const MAX_CONFIG_SIZE: u64 = 1 << 20;

/// What a file that is not a regular file is, for the error.
fn kind_of(ft: std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_file() {
        None
    } else if ft.is_dir() {
        Some("a directory")
    } else if ft.is_fifo() {
        Some("a FIFO")
    } else if ft.is_socket() {
        Some("a socket")
    } else if ft.is_char_device() || ft.is_block_device() {
        Some("a device")
    } else {
        Some("a special file")
    }
}

/// Reads a configuration file: a regular file (symbolic links to one are followed: the
/// path is the operator's choice) of at most [`MAX_CONFIG_SIZE`] bytes. Opened without
/// blocking and checked on the open descriptor, so a FIFO or device put there between
/// the check and the open is refused too, never read.
fn read_config(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let shown = || path.display().to_string();
    let io_err = |source| ConfigError::Read {
        path: shown(),
        source,
    };
    let refuse = |ft| {
        kind_of(ft).map(|what| ConfigError::NotAFile {
            path: shown(),
            what,
        })
    };
    if let Some(e) = refuse(std::fs::metadata(path).map_err(io_err)?.file_type()) {
        return Err(e);
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io_err)?;
    if let Some(e) = refuse(file.metadata().map_err(io_err)?.file_type()) {
        return Err(e);
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_CONFIG_SIZE {
        return Err(ConfigError::TooLarge {
            path: shown(),
            limit: MAX_CONFIG_SIZE,
        });
    }
    String::from_utf8(bytes).map_err(|_| ConfigError::Parse {
        path: shown(),
        message: "not UTF-8 text".into(),
    })
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub storage: Option<PathBuf>,
    pub mountpoint: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub threads: Option<u16>,
    pub attr_timeout: Option<f64>,
    pub passthrough: Option<bool>,
    pub max_inodes: Option<usize>,
    pub drain_timeout: Option<f64>,
    pub allow_users: Option<Vec<UserRef>>,
    pub allow_all_users: Option<bool>,
    /// Note when each tag is pushed and pulled, for retention (default true).
    pub access_times: Option<bool>,
    #[serde(default)]
    pub gc: GcValues,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub registry: RegistrySection,
    #[serde(default)]
    pub api: crate::api::config::ApiSection,
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub history: HistorySection,
    #[serde(default)]
    pub retention: retention::RetentionSection,
}

/// How much job history the state directory keeps.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySection {
    pub keep_runs: Option<usize>,
    pub keep_days: Option<u32>,
}

/// The registry regfs serves: its config.yml, to check its blob-descriptor cache.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    pub config: Option<PathBuf>,
    pub allow_unsafe_cache: Option<bool>,
}

/// A user in `allow_users`: a name or a numeric uid.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UserRef {
    Uid(u32),
    Name(String),
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    pub listen: Option<String>,
    pub allow_remote: Option<bool>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(&read_config(path)?, &path.display().to_string())
    }

    /// Parses the text of a configuration file named `shown` (no checks of values yet:
    /// [`resolve`] does those).
    pub fn parse(text: &str, shown: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: shown.to_string(),
            message: e.to_string().trim_end().to_string(),
        })
    }
}

/// The options of `regfs mount` as given on its command line. The binary fills it from
/// its flags; [`resolve`] lays it over the configuration file.
#[derive(Debug, Clone, Default)]
pub struct MountFlags {
    /// The configuration file, if any.
    pub config: Option<PathBuf>,
    /// Every other flag, as the key of the file it stands for (`--threads` is
    /// `threads`, `--cluster-node` is `cluster.node`, `--no-passthrough` is
    /// `passthrough = false`); `None` (or empty) when not given. Its `gc` lies over the
    /// file's `[gc]` and the settings saved through the API.
    pub keys: FileConfig,
}

impl MountFlags {
    /// No flags but a configuration file (what `regfs config check` resolves).
    pub fn with_config(path: &Path) -> Self {
        MountFlags {
            config: Some(path.to_path_buf()),
            ..MountFlags::default()
        }
    }
}

/// Where metrics are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    pub listen: std::net::SocketAddr,
}

/// Everything `regfs mount` runs with, from the file and the flags.
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub mount: MountConfig,
    /// The GC settings in force before any saved through the API (checked here).
    pub settings: Settings,
    /// Where they come from: the settings' owner lays the API's values among them.
    pub sources: Sources,
    pub state_dir: Option<PathBuf>,
    pub metrics: Option<MetricsConfig>,
    pub api: crate::api::ApiConfig,
    /// Cluster mode (`[cluster]` with endpoints); None: a node alone, no etcd.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

fn bad(origin: String, key: String, message: String) -> ConfigError {
    ConfigError::Value {
        origin,
        key,
        message,
    }
}

/// `key`'s number of seconds, or `default`.
fn seconds(
    l: &Layered<'_>,
    key: &str,
    v: Option<f64>,
    default: f64,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(Duration::from_secs_f64(default)),
        Some(v) => Duration::try_from_secs_f64(v)
            .map_err(|_| l.bad(key, format!("{v} is not a number of seconds"))),
    }
}

/// Who may use the mount: `--allow-user` flags replace the file's `allow_users`; names
/// are looked up now, so an unknown one is refused at start.
fn mount_users(l: &Layered<'_>) -> Result<MountUsers, ConfigError> {
    let uids = l
        .merged
        .allow_users
        .iter()
        .flatten()
        .map(|u| match u {
            UserRef::Uid(uid) => Ok(*uid),
            UserRef::Name(name) => resolve_user(name).map_err(|e| l.bad("allow_users", e)),
        })
        .collect::<Result<_, _>>()?;
    Ok(MountUsers {
        all: l.merged.allow_all_users.unwrap_or(false),
        uids,
    })
}

/// Resolves the options: a flag wins over the file, the file over the default.
pub fn resolve(
    args: &MountFlags,
    file: &FileConfig,
    origin: &str,
) -> Result<MountOptions, ConfigError> {
    let l = Layered::new(file, &args.keys, origin)?;
    let metrics = resolve_metrics(&l)?;
    let listen = metrics.as_ref().map(|m| m.listen);
    let api = crate::api::config::resolve(&l.merged.api, listen)
        .map_err(|(key, message)| l.bad(&format!("api.{key}"), message))?;
    let mut mount = resolve_mount(&l)?;
    let cluster = cluster::resolve(&l, &mount.mountpoint)?;
    // Other nodes change the store behind this kernel's back: the kernel keeps only
    // what they cannot make wrong (`fs::caching`).
    mount.shared_store = cluster.is_some();
    let mut sources = resolve_gc(&l, file, &args.keys, origin)?;
    // A registry serving either path serves the store.
    sources.fixed.registry.store = vec![mount.mountpoint.clone(), mount.storage.clone()];
    let settings = sources
        .settle(None, None)
        .map_err(|(o, k, m)| bad(o, k, m))?;
    if let (false, Some(i)) = (mount.record_access, settings.retention.judges_pulls()) {
        return Err(l.bad(
            "access_times",
            format!("off, but retention.policy[{i}] keeps tags by their pulls: turn access times on, or drop its keep_most_recently_pulled and keep_pulled_within"),
        ));
    }
    Ok(MountOptions {
        mount,
        settings,
        sources,
        state_dir: l.merged.state_dir.clone(),
        metrics,
        api,
        cluster,
    })
}

/// The mount's own options.
fn resolve_mount(l: &Layered<'_>) -> Result<MountConfig, ConfigError> {
    let m = &l.merged;
    let storage = m.storage.clone().ok_or_else(|| {
        ConfigError::Missing(
            "no storage directory: give STORAGE or `storage` in the configuration file".into(),
        )
    })?;
    let mountpoint = m.mountpoint.clone().ok_or_else(|| {
        ConfigError::Missing(
            "no mount point: give MOUNTPOINT or `mountpoint` in the configuration file".into(),
        )
    })?;
    let threads = match m.threads {
        Some(0) => return Err(l.bad("threads", "must be at least 1")),
        Some(t) => t,
        None => 8,
    };
    Ok(MountConfig {
        storage,
        mountpoint,
        threads: threads as usize,
        attr_timeout: seconds(l, "attr_timeout", m.attr_timeout, 60.0)?,
        passthrough: m.passthrough.unwrap_or(true),
        max_inodes: m.max_inodes.unwrap_or(0),
        fd_budget: 0,
        users: mount_users(l)?,
        shared_store: false,
        record_access: m.access_times.unwrap_or(true),
    })
}

/// Where the collector's settings come from: `[gc]` of the file and the flags (laid over
/// each other, with the API's values between them, by `settings::layers`), and the keys
/// only the file gives or the flags too (`drain_timeout`, `[registry]`, `[history]`,
/// `[retention]`).
fn resolve_gc(
    l: &Layered<'_>,
    file: &FileConfig,
    flags: &FileConfig,
    origin: &str,
) -> Result<Sources, ConfigError> {
    let m = &l.merged;
    Ok(Sources {
        file: Some((origin.to_string(), file.gc.clone())),
        flags: flags.gc.clone(),
        fixed: Fixed {
            drain_timeout: seconds(l, "drain_timeout", m.drain_timeout, 10.0)?,
            registry: crate::registry::RegistrySettings {
                config: m.registry.config.clone(),
                allow_unsafe_cache: m.registry.allow_unsafe_cache.unwrap_or(false),
                store: Vec::new(),
            },
            history: resolve_history(&file.history, origin)?,
        },
        // Checked with the rest when the sources are settled.
        retention: file.retention.clone(),
    })
}

/// `[history]`: each limit at least 1.
fn resolve_history(
    h: &HistorySection,
    origin: &str,
) -> Result<crate::daemon::history::HistoryLimits, ConfigError> {
    let default = crate::daemon::history::HistoryLimits::default();
    let at_least_one = |key: &str| bad(origin.into(), key.into(), "must be at least 1".into());
    Ok(crate::daemon::history::HistoryLimits {
        keep_runs: match h.keep_runs {
            Some(0) => return Err(at_least_one("history.keep_runs")),
            n => n.unwrap_or(default.keep_runs),
        },
        keep_days: match h.keep_days {
            Some(0) => return Err(at_least_one("history.keep_days")),
            n => n.unwrap_or(default.keep_days),
        },
    })
}

/// Where metrics are served, if anywhere.
fn resolve_metrics(l: &Layered<'_>) -> Result<Option<MetricsConfig>, ConfigError> {
    let metrics = &l.merged.metrics;
    let Some(listen) = &metrics.listen else {
        return Ok(None);
    };
    let addr: std::net::SocketAddr = listen.parse().map_err(|e| {
        l.bad(
            "metrics.listen",
            format!("{listen:?}: {e}; expected an address such as 127.0.0.1:9469"),
        )
    })?;
    if !addr.ip().is_loopback() && !metrics.allow_remote.unwrap_or(false) {
        return Err(l.bad("metrics.listen", format!(
            "{addr} is not a loopback address; set metrics.allow_remote (or --http-allow-remote) to serve metrics, the page and the API beyond this machine"
        )));
    }
    Ok(Some(MetricsConfig { listen: addr }))
}

/// Loads the file named by `--config` (if any) and resolves the options.
pub fn load(args: &MountFlags) -> Result<MountOptions, ConfigError> {
    match &args.config {
        Some(path) => resolve(args, &FileConfig::load(path)?, &path.display().to_string()),
        None => resolve(args, &FileConfig::default(), "command line"),
    }
}

/// `regfs config check FILE`: everything `regfs mount --config FILE` would refuse.
pub fn check(path: &Path) -> Result<MountOptions, ConfigError> {
    let file = FileConfig::load(path)?;
    let args = MountFlags::with_config(path);
    resolve(&args, &file, &path.display().to_string())
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

//! Whether the registry's blob-descriptor cache can outlive a GC run, and making it
//! forget what a run deleted.
//!
//! - `none`: nothing to do.
//! - `inmemory`: lives in the registry process; regfs cannot reach it. Safe only when
//!   the running registry has it turned off by `REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR`
//!   (the shipped systemd drop-in), checked in `/proc/<pid>/environ`.
//! - `redis`: regfs removes the keys of every blob it deleted, so it is safe while
//!   regfs can reach that redis.
//!
//! Whatever the verdict, the filesystem refuses a link naming a blob without data, so a
//! stale cache makes a push fail; it never makes one succeed broken.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::config::{CACHE_ENV, CacheKind, RedisTarget, RegistryConfig};
use super::redis::{Redis, RedisError};
use crate::layout::Digest;

/// What regfs knows of the registry it serves (`[registry]` in regfs.toml).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrySettings {
    /// The registry's config.yml; `None`: not checked.
    pub config: Option<PathBuf>,
    /// Let GC delete even when the cache is unsafe (the filesystem refusal stays).
    pub allow_unsafe_cache: bool,
}

/// The verdict, for the log and `regfs status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStatus {
    /// The registry configuration read.
    pub config: String,
    /// The cache in use: none, inmemory, redis, or the unknown type's name.
    pub cache: String,
    /// Whether regfs makes that cache safe (GC refuses to delete otherwise, unless
    /// `allow_unsafe_cache`).
    pub safe: bool,
    /// Why, naming the setting (and the registry process).
    pub detail: String,
    /// Registry processes found serving that configuration.
    pub registry_pids: Vec<u32>,
    pub checked_at: DateTime<Utc>,
}

/// A registry process serving a given configuration file.
#[derive(Debug, Clone)]
pub struct RegistryProcess {
    pub pid: u32,
    pub env: Vec<(String, String)>,
}

fn nul_split(bytes: &[u8]) -> impl Iterator<Item = String> + '_ {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

/// Registry processes (`... serve CONFIG`) whose configuration argument names `config`
/// (relative arguments are resolved against the process's working directory).
pub fn registry_processes(config: &Path) -> Vec<RegistryProcess> {
    let want = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let dir = e.path();
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = nul_split(&cmdline).collect();
        if !args.iter().any(|a| a == "serve") {
            continue;
        }
        let cwd = std::fs::read_link(dir.join("cwd")).unwrap_or_default();
        let names_config = args.iter().skip(1).any(|a| {
            let p = cwd.join(a);
            std::fs::canonicalize(&p).unwrap_or(p) == want
        });
        if !names_config {
            continue;
        }
        let env = std::fs::read(dir.join("environ"))
            .map(|b| {
                nul_split(&b)
                    .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into())))
                    .collect()
            })
            .unwrap_or_default();
        found.push(RegistryProcess { pid, env });
    }
    found.sort_by_key(|p| p.pid);
    found
}

fn ping(target: &RedisTarget) -> Result<(), RedisError> {
    Redis::connect(target)?.ping()
}

/// The verdict on one effective configuration (of process `pid`, if one runs).
fn judge(c: &RegistryConfig, pid: Option<u32>, overridden: bool) -> (bool, String) {
    let file = c.path.display();
    let setting = if overridden {
        format!(
            "{CACHE_ENV}={} in registry pid {}'s environment",
            c.cache.name(),
            pid.unwrap_or(0)
        )
    } else {
        format!("storage.cache.blobdescriptor: {} in {file}", c.cache.name())
    };
    match &c.cache {
        CacheKind::None => (true, format!("{setting}: no blob-descriptor cache")),
        CacheKind::InMemory => match pid {
            Some(pid) => (
                false,
                format!(
                    "{setting}: registry pid {pid} serves with the in-memory cache, which keeps \
                     listing blobs GC deleted (pushes of them then fail: regfs refuses their \
                     links); set {CACHE_ENV}=none in its environment (the shipped systemd drop-in)"
                ),
            ),
            None => (
                true,
                format!(
                    "{setting}: no registry serving {file} runs now; checked again before each \
                     run (the shipped systemd drop-in sets {CACHE_ENV}=none)"
                ),
            ),
        },
        CacheKind::Redis => match &c.redis {
            None => (false, format!("{setting} but no redis.addr in {file}")),
            Some(t) => match ping(t) {
                Ok(()) => (
                    true,
                    format!(
                        "{setting} at redis.addr {}: regfs removes the keys of the blobs it deletes",
                        t.addr
                    ),
                ),
                Err(e) => (
                    false,
                    format!(
                        "{setting} at redis.addr {}: regfs cannot clear it ({e})",
                        t.addr
                    ),
                ),
            },
        },
        CacheKind::Unknown(v) => (
            false,
            format!("{setting}: {v:?} is a cache type regfs does not know"),
        ),
    }
}

/// The configurations in force: one per registry process serving `config` (with its
/// environment), or the file alone when none runs.
fn effective(cfg: &RegistryConfig) -> Vec<(RegistryConfig, Option<u32>, bool)> {
    let procs = registry_processes(&cfg.path);
    if procs.is_empty() {
        return vec![(cfg.clone(), None, false)];
    }
    procs
        .iter()
        .map(|p| {
            let env = p.env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            let overridden = p.env.iter().any(|(k, _)| k == CACHE_ENV);
            (cfg.with_env(env), Some(p.pid), overridden)
        })
        .collect()
}

/// Checks the registry's cache now; `None` when no registry configuration is set.
pub fn assess(settings: &RegistrySettings) -> Option<CacheStatus> {
    let path = settings.config.as_ref()?;
    let checked_at = Utc::now();
    let cfg = match RegistryConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            return Some(CacheStatus {
                config: path.display().to_string(),
                cache: "unknown".into(),
                safe: false,
                detail: format!("{e}: regfs cannot tell which cache the registry uses"),
                registry_pids: vec![],
                checked_at,
            });
        }
    };
    let runs = effective(&cfg);
    let verdicts: Vec<(bool, String)> = runs
        .iter()
        .map(|(c, pid, overridden)| judge(c, *pid, *overridden))
        .collect();
    let caches: BTreeSet<&str> = runs.iter().map(|(c, ..)| c.cache.name()).collect();
    Some(CacheStatus {
        config: path.display().to_string(),
        cache: caches.into_iter().collect::<Vec<_>>().join(", "),
        safe: verdicts.iter().all(|(safe, _)| *safe),
        detail: verdicts
            .into_iter()
            .map(|(_, d)| d)
            .collect::<Vec<_>>()
            .join("; "),
        registry_pids: runs.iter().filter_map(|(_, pid, _)| *pid).collect(),
        checked_at,
    })
}

/// The redis caches in force (deduplicated).
fn redis_targets(settings: &RegistrySettings) -> Vec<RedisTarget> {
    let Some(path) = &settings.config else {
        return vec![];
    };
    let Ok(cfg) = RegistryConfig::load(path) else {
        return vec![];
    };
    let mut out: Vec<RedisTarget> = Vec::new();
    for (c, ..) in effective(&cfg) {
        if let (CacheKind::Redis, Some(t)) = (&c.cache, c.redis)
            && !out.contains(&t)
        {
            out.push(t);
        }
    }
    out
}

/// Keys per DEL/SREM command.
const BATCH: usize = 500;

/// Removes from one redis every key the registry 2.8 keeps for `digests`: the global
/// descriptor `blobs::<digest>`, and in every repository the member of the set
/// `repository::<name>::blobs` and the descriptor `repository::<name>::blobs::<digest>`.
pub fn forget_in(target: &RedisTarget, digests: &[Digest]) -> Result<u64, RedisError> {
    let mut r = Redis::connect(target)?;
    let names: Vec<String> = digests.iter().map(|d| d.to_string()).collect();
    let mut removed = 0;
    let mut run = |r: &mut Redis, cmd: &[u8], head: Option<&str>, keys: &[String]| {
        for chunk in keys.chunks(BATCH) {
            let mut args: Vec<&[u8]> = vec![cmd];
            args.extend(head.map(str::as_bytes));
            args.extend(chunk.iter().map(|k| k.as_bytes()));
            if let super::redis::Reply::Int(n) = r.call(&args)? {
                removed += n.max(0) as u64;
            }
        }
        Ok::<_, RedisError>(())
    };
    let global: Vec<String> = names.iter().map(|d| format!("blobs::{d}")).collect();
    run(&mut r, b"DEL", None, &global)?;
    for set in r.scan("repository::*::blobs")? {
        run(&mut r, b"SREM", Some(&set), &names)?;
        let scoped: Vec<String> = names.iter().map(|d| format!("{set}::{d}")).collect();
        run(&mut r, b"DEL", None, &scoped)?;
    }
    Ok(removed)
}

/// After a sweep: makes every redis cache of the registry forget `digests`. Returns a
/// line for the job record, or the error naming the redis.
pub fn forget(settings: &RegistrySettings, digests: &[Digest]) -> Option<Result<String, String>> {
    let targets = redis_targets(settings);
    if targets.is_empty() || digests.is_empty() {
        return None;
    }
    let mut said = Vec::new();
    for t in &targets {
        match forget_in(t, digests) {
            Ok(n) => said.push(format!(
                "redis {}: {n} keys of {} deleted blobs removed",
                t.addr,
                digests.len()
            )),
            Err(e) => return Some(Err(e.to_string())),
        }
    }
    Some(Ok(said.join("; ")))
}

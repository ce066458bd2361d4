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

use super::config::{
    CACHE_ENV, CacheKind, DRIVER_ENV, ROOTDIRECTORY_ENV, RedisTarget, RegistryConfig,
    RegistryConfigError,
};
use super::procs::{self, Found};
use super::redis::{Redis, RedisError};
use crate::layout::Digest;

/// What regfs knows of the registry it serves (`[registry]` in regfs.toml).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrySettings {
    /// The registry's config.yml; `None`: not given. Judged when no registry runs.
    pub config: Option<PathBuf>,
    /// Let GC delete even when the cache is unsafe (the filesystem refusal stays).
    pub allow_unsafe_cache: bool,
    /// The paths holding the store: the mount point and the backing directory. A registry
    /// whose storage root lies in one of them, or holds one, serves the mount.
    pub store: Vec<PathBuf>,
}

/// The verdict, for the log and `regfs status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStatus {
    /// The registry configuration(s) read.
    pub config: String,
    /// The cache in use: none, inmemory, redis, or the unknown type's name.
    pub cache: String,
    /// Whether regfs makes that cache safe (GC refuses to delete otherwise, unless
    /// `allow_unsafe_cache`).
    pub safe: bool,
    /// Why, naming the setting (and the registry process).
    pub detail: String,
    /// Registry processes found serving the store.
    pub registry_pids: Vec<u32>,
    pub checked_at: DateTime<Utc>,
}

fn ping(target: &RedisTarget) -> Result<(), RedisError> {
    Redis::connect(target)?.ping()
}

/// One configuration in force: of a running registry (`who`), or the configured file
/// when none runs.
struct Run {
    /// Its configuration with its environment applied, or why it cannot be known.
    config: Result<RegistryConfig, String>,
    who: Option<Found>,
    /// The cache comes from its environment, not its file.
    overridden: bool,
}

impl Run {
    fn cache_name(&self) -> &str {
        match &self.config {
            Ok(c) => c.cache.name(),
            Err(_) => "unknown",
        }
    }
}

/// The verdict on one configuration in force.
fn judge(run: &Run) -> (bool, String) {
    let c = match &run.config {
        Ok(c) => c,
        Err(why) => return (false, why.clone()),
    };
    let file = c.path.display();
    let setting = match (&run.who, run.overridden) {
        (Some(who), true) => format!(
            "{}: {CACHE_ENV}={} in its environment",
            who.shown(),
            c.cache.name()
        ),
        (Some(who), false) => format!(
            "{}: storage.cache.blobdescriptor: {} in {file}",
            who.shown(),
            c.cache.name()
        ),
        (None, _) => format!("storage.cache.blobdescriptor: {} in {file}", c.cache.name()),
    };
    match &c.cache {
        CacheKind::None => (true, format!("{setting}: no blob-descriptor cache")),
        CacheKind::InMemory => match &run.who {
            Some(_) => (
                false,
                format!(
                    "{setting}: it serves the store with the in-memory cache, which keeps listing \
                     blobs GC deleted (pushes of them then fail: regfs refuses their links); set \
                     {CACHE_ENV}=none in its environment (the shipped systemd drop-in)"
                ),
            ),
            None => (
                true,
                format!(
                    "{setting}: no registry using the store runs now; checked again before each \
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

/// `p` made absolute and free of links, without looking into `p` itself (a mount point
/// regfs serves must not be asked from inside the daemon).
fn settled(p: &Path) -> PathBuf {
    let abs = procs::lexical(&std::env::current_dir().unwrap_or_default().join(p));
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|c| c.join(name))
            .unwrap_or(abs),
        _ => abs,
    }
}

/// Whether registry `who`, with `config` (with its environment applied) or with a
/// configuration regfs cannot read, serves the store `settings` names.
fn serves_store(settings: &RegistrySettings, who: &Found, config: Option<&RegistryConfig>) -> bool {
    let store: Vec<PathBuf> = settings.store.iter().map(|p| settled(p)).collect();
    // The configuration regfs was told of: the registry it names serves the store.
    let configured = settings.config.as_ref().map(|c| settled(c));
    if let (Some(want), Ok(l)) = (&configured, &who.config)
        && std::fs::canonicalize(&l.read_at).is_ok_and(|p| p == *want)
    {
        return true;
    }
    let dir = match config {
        Some(c) => c.store_directory(),
        // Unreadable: only its environment can tell where it keeps its store.
        None => match (who.var(DRIVER_ENV), who.var(ROOTDIRECTORY_ENV)) {
            (Some(d), _) if d != "filesystem" => None,
            (_, Some(root)) => Some(PathBuf::from(root)),
            // Cannot be told: it may serve the store.
            _ => return true,
        },
    };
    dir.is_some_and(|d| !store.is_empty() && procs::serves(who, &d, &store))
}

/// What registry `who` runs with, or why that cannot be known; whether the cache comes
/// from its environment; whether its file was read (else only its environment is known).
fn configuration_of(who: &Found) -> (Result<RegistryConfig, String>, bool, bool) {
    let env = match &who.env {
        Ok(env) => env,
        Err(e) => {
            let why = format!(
                "{}: {e}: its environment may set {CACHE_ENV}, so regfs cannot tell which cache \
                 it uses",
                who.shown()
            );
            return (Err(why), false, false);
        }
    };
    let overridden = who.var(CACHE_ENV).is_some();
    let pairs = || env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let file = match &who.config {
        Ok(l) => RegistryConfig::load(&l.read_at)
            .map(|mut c| {
                c.path.clone_from(&l.named);
                c
            })
            .map_err(|e| match e {
                // Name the file as the process names it, not through /proc.
                RegistryConfigError::Read { source, .. } => {
                    format!("registry configuration {}: {source}", l.named.display())
                }
                RegistryConfigError::Invalid { message, .. } => {
                    format!("registry configuration {}: {message}", l.named.display())
                }
            }),
        Err(_) => Err("its configuration cannot be found".to_string()),
    };
    match file {
        Ok(c) => (Ok(c.with_env(pairs())), overridden, true),
        // The environment alone says which cache.
        Err(_) if overridden => {
            let named = who
                .config
                .as_ref()
                .map_or_else(|_| PathBuf::from("(none)"), |l| l.named.clone());
            (
                Ok(RegistryConfig::empty(&named).with_env(pairs())),
                true,
                false,
            )
        }
        Err(e) => (
            Err(format!(
                "{}: {e}: regfs cannot tell which cache it uses",
                who.shown()
            )),
            false,
            false,
        ),
    }
}

/// The configurations in force: one per registry process serving the store (with its
/// environment), or the configured file alone when none runs (`None` then when no file
/// is configured).
fn effective(settings: &RegistrySettings) -> Vec<Run> {
    let mut runs = Vec::new();
    for who in procs::registries() {
        let (config, overridden, read) = configuration_of(&who);
        // A registry whose configuration cannot be read may serve the store: judged.
        let known = config.as_ref().ok().filter(|_| read);
        if !serves_store(settings, &who, known) {
            continue;
        }
        runs.push(Run {
            config,
            who: Some(who),
            overridden,
        });
    }
    if runs.is_empty()
        && let Some(path) = &settings.config
    {
        runs.push(Run {
            config: RegistryConfig::load(path)
                .map_err(|e| format!("{e}: regfs cannot tell which cache the registry uses")),
            who: None,
            overridden: false,
        });
    }
    runs
}

/// Checks the registry's cache now; `None` when no registry serving the store runs and
/// no registry configuration is set.
pub fn assess(settings: &RegistrySettings) -> Option<CacheStatus> {
    let checked_at = Utc::now();
    let runs = effective(settings);
    if runs.is_empty() {
        return None;
    }
    let verdicts: Vec<(bool, String)> = runs.iter().map(judge).collect();
    let caches: BTreeSet<&str> = runs.iter().map(Run::cache_name).collect();
    let configs: BTreeSet<String> = runs
        .iter()
        .map(|r| match (&r.who, &r.config) {
            (Some(w), _) => w
                .config
                .as_ref()
                .map_or_else(|_| "(not found)".into(), |l| l.named.display().to_string()),
            (None, _) => settings
                .config
                .as_ref()
                .map_or_else(String::new, |p| p.display().to_string()),
        })
        .collect();
    Some(CacheStatus {
        config: configs.into_iter().collect::<Vec<_>>().join(", "),
        cache: caches.into_iter().collect::<Vec<_>>().join(", "),
        safe: verdicts.iter().all(|(safe, _)| *safe),
        detail: verdicts
            .into_iter()
            .map(|(_, d)| d)
            .collect::<Vec<_>>()
            .join("; "),
        registry_pids: runs
            .iter()
            .filter_map(|r| Some(r.who.as_ref()?.pid))
            .collect(),
        checked_at,
    })
}

/// The redis caches in force (deduplicated).
fn redis_targets(settings: &RegistrySettings) -> Vec<RedisTarget> {
    let mut out: Vec<RedisTarget> = Vec::new();
    for run in effective(settings) {
        if let Ok(c) = run.config
            && let (CacheKind::Redis, Some(t)) = (&c.cache, c.redis)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry (this process stands in for it) whose configuration regfs cannot read.
    fn unreadable(env: &[(&str, &str)]) -> Found {
        Found {
            pid: std::process::id(),
            exe: "/usr/bin/docker-registry".into(),
            config: Err("gone".into()),
            env: Ok(env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()),
            cwd: Some(PathBuf::from("/")),
        }
    }

    #[test]
    fn a_registry_whose_store_cannot_be_known_is_presumed_to_serve_it() {
        let settings = RegistrySettings {
            store: vec![PathBuf::from("/srv/regfs-test-store")],
            ..RegistrySettings::default()
        };
        assert!(serves_store(&settings, &unreadable(&[]), None));
        let elsewhere = [(ROOTDIRECTORY_ENV, "/srv/elsewhere")];
        assert!(!serves_store(&settings, &unreadable(&elsewhere), None));
        let here = [(ROOTDIRECTORY_ENV, "/srv/regfs-test-store/docker")];
        assert!(serves_store(&settings, &unreadable(&here), None));
        let s3 = [(DRIVER_ENV, "s3")];
        assert!(!serves_store(&settings, &unreadable(&s3), None));
        // An unreadable environment: nothing is known.
        let mut who = unreadable(&[]);
        who.env = Err("EACCES".into());
        assert!(serves_store(&settings, &who, None));
        let (config, ..) = configuration_of(&who);
        assert!(config.is_err_and(|e| e.contains("EACCES") && e.contains("pid")));
    }
}

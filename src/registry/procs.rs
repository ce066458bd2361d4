//! Every registry process running on this machine, however it was started: with its
//! configuration as an argument (`docker-registry serve CONFIG`), or without one, reading
//! `REGISTRY_CONFIGURATION_PATH` from its environment (as a systemd unit's
//! `Environment=`/`EnvironmentFile=` sets it: the process found here carries what its unit
//! gave it in its command line and environment). A relative configuration path is the
//! process's: resolved against `/proc/PID/cwd`, and an absolute one against
//! `/proc/PID/root`, so a registry in a chroot or container is read as it sees its files.
//!
//! Reading `/proc` is racy by nature: a process may exit between two reads, and some of
//! its files may be closed to us. A process that is gone is left out; one whose
//! command line says it is a registry but whose other files cannot be read is reported
//! with the reason, so that the verdict can say it cannot know its cache.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The names a registry binary goes by: Debian's package and the upstream build.
const REGISTRY_NAMES: [&str; 2] = ["docker-registry", "registry"];

/// The variable the registry reads its configuration path from when given none.
pub const CONFIG_ENV: &str = "REGISTRY_CONFIGURATION_PATH";

/// Symbolic links followed while resolving one path, as the kernel's own limit.
const MAX_HOPS: usize = 40;

/// A registry process as found in `/proc`.
#[derive(Debug, Clone)]
pub struct Found {
    pub pid: u32,
    /// What `/proc/PID/exe` names, or its `argv[0]` when that cannot be read.
    pub exe: String,
    /// Its configuration file, or why it cannot be located.
    pub config: Result<Located, String>,
    /// Its environment, or why it cannot be read.
    pub env: Result<Vec<(String, String)>, String>,
    /// Its working directory as `/proc/PID/cwd` names it.
    pub cwd: Option<PathBuf>,
}

/// Where a registry's configuration is, and how that was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The path as the process names it.
    pub named: PathBuf,
    /// How it was found, for a verdict: "configuration X (its argument)",
    /// "REGISTRY_CONFIGURATION_PATH=X (its environment)", with the working directory a
    /// relative path is resolved against.
    pub how: String,
    /// The path through `/proc/PID/{cwd,root}` that reads that file as the process does.
    pub read_at: PathBuf,
}

impl Found {
    /// The value of `key` in its environment (`None` also when the environment is unreadable).
    pub fn var(&self, key: &str) -> Option<&str> {
        self.env
            .as_ref()
            .ok()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// "registry pid N (/usr/bin/docker-registry, configuration from ...)".
    pub fn shown(&self) -> String {
        let how = match &self.config {
            Ok(l) => l.how.clone(),
            Err(e) => format!("configuration not found: {e}"),
        };
        format!("registry pid {} ({}, {how})", self.pid, self.exe)
    }
}

fn nul_split(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|b| *b == 0).filter(|s| !s.is_empty())
}

fn proc_dir(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}"))
}

/// The process is gone (it exited between two reads).
fn gone(pid: u32) -> bool {
    !proc_dir(pid).exists()
}

fn read_env(dir: &Path) -> io::Result<Vec<(String, String)>> {
    let bytes = std::fs::read(dir.join("environ"))?;
    Ok(nul_split(&bytes)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

fn base_name(p: &[u8]) -> &[u8] {
    p.rsplit(|b| *b == b'/').next().unwrap_or(p)
}

/// `args` (its command line) is a registry's `serve`: its binary is named as a registry,
/// or it names `also` (the configuration regfs was told of) as its argument.
fn serve_argument<'a>(args: &'a [&'a [u8]], exe: Option<&Path>) -> Option<Option<&'a [u8]>> {
    let serve = args.iter().position(|a| *a == b"serve")?;
    let named = |n: &[u8]| REGISTRY_NAMES.iter().any(|r| r.as_bytes() == base_name(n));
    let is_registry = args.first().is_some_and(|a0| named(a0))
        || exe.is_some_and(|e| named(e.as_os_str().as_bytes()));
    if !is_registry {
        return None;
    }
    Some(
        args[serve + 1..]
            .iter()
            .find(|a| !a.starts_with(b"-"))
            .copied(),
    )
}

/// `named` (a path the process names) as read through its `/proc` entry.
fn through_proc(dir: &Path, named: &Path) -> PathBuf {
    if named.is_absolute() {
        dir.join("root")
            .join(named.strip_prefix("/").unwrap_or(named))
    } else {
        dir.join("cwd").join(named)
    }
}

fn locate(dir: &Path, arg: Option<&[u8]>, found: &Found) -> Result<Located, String> {
    let (named, how) = match arg {
        Some(a) => {
            let named = PathBuf::from(OsStr::from_bytes(a));
            let how = format!("configuration {} (its argument)", named.display());
            (named, how)
        }
        None => match &found.env {
            Err(e) => return Err(format!("no argument, and {e}")),
            Ok(_) => match found.var(CONFIG_ENV) {
                Some(v) if !v.is_empty() => (
                    PathBuf::from(v),
                    format!("{CONFIG_ENV}={v} (its environment)"),
                ),
                _ => {
                    return Err(format!(
                        "no argument and no {CONFIG_ENV} in its environment"
                    ));
                }
            },
        },
    };
    let how = match (&found.cwd, named.is_absolute()) {
        (_, true) => how,
        (Some(cwd), false) => format!("{how}, relative to its working directory {}", cwd.display()),
        (None, false) => {
            return Err(format!(
                "{how} is relative and its working directory cannot be read"
            ));
        }
    };
    Ok(Located {
        read_at: through_proc(dir, &named),
        named,
        how,
    })
}

/// One process, if it is a registry's `serve` (and still there).
fn inspect(pid: u32) -> Option<Found> {
    let dir = proc_dir(pid);
    let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
    let args: Vec<&[u8]> = nul_split(&cmdline).collect();
    if !args.contains(&&b"serve"[..]) {
        return None;
    }
    let exe = std::fs::read_link(dir.join("exe")).ok();
    let arg = serve_argument(&args, exe.as_deref())?;
    let exe = exe
        .map(|e| e.display().to_string())
        .or_else(|| {
            args.first()
                .map(|a| String::from_utf8_lossy(a).into_owned())
        })
        .unwrap_or_default();
    let env = read_env(&dir).map_err(|e| format!("cannot read {}/environ: {e}", dir.display()));
    let cwd = std::fs::read_link(dir.join("cwd")).ok();
    let mut found = Found {
        pid,
        exe,
        config: Err(String::new()),
        env,
        cwd,
    };
    found.config = locate(&dir, arg, &found);
    if (found.env.is_err() || found.config.is_err()) && gone(pid) {
        return None;
    }
    Some(found)
}

/// Every registry process running now, by pid. Never fails: what cannot be read is left
/// out (a process that is gone) or reported in the process found.
pub fn registries() -> Vec<Found> {
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<Found> = procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(inspect)
        .collect();
    found.sort_by_key(|p| p.pid);
    found
}

/// Undoes the octal escapes (`\040` for a space) of a `mountinfo` path.
fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .and_then(|o| std::str::from_utf8(o).ok())
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        if b[i] == b'\\'
            && let Some(v) = octal
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// (device, mount point) of each mount in a `mountinfo` file.
fn mounts(path: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let dev = f.nth(2)?;
            let point = f.nth(1)?;
            Some((dev.to_string(), unescape(point)))
        })
        .collect())
}

/// `path` with `.` and `..` taken out, without reading anything.
pub fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The paths that hold the store as process `pid` sees them: each of `ours` (our mount
/// point and backing directory, as this process sees them), and every mount point in its
/// mount namespace of the same device as our mount (a registry in a container given the
/// mount as a volume).
fn store_paths_seen_by(pid: u32, ours: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = ours.to_vec();
    let Ok(mine) = mounts(Path::new("/proc/self/mountinfo")) else {
        return out;
    };
    let devs: Vec<&String> = mine
        .iter()
        .filter(|(_, p)| ours.iter().any(|o| o == p))
        .map(|(d, _)| d)
        .collect();
    if let Ok(theirs) = mounts(&proc_dir(pid).join("mountinfo")) {
        out.extend(
            theirs
                .into_iter()
                .filter(|(d, _)| devs.contains(&d))
                .map(|(_, p)| p),
        );
    }
    out
}

/// `path` (absolute, or relative to `cwd`) as process `pid` resolves it, following its
/// symbolic links by reading them (never by opening through them), and never looking
/// into any of `stop` (the store: a daemon must not ask its own mount).
fn resolve_seen_by(pid: u32, path: &Path, cwd: &Path, stop: &[PathBuf]) -> PathBuf {
    let root = proc_dir(pid).join("root");
    let mut todo: Vec<PathBuf> = vec![if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    }];
    let mut at = PathBuf::from("/");
    let mut hops = 0;
    while let Some(next) = todo.pop() {
        let mut comps: Vec<Component> = next.components().collect();
        comps.reverse();
        while let Some(c) = comps.pop() {
            match c {
                Component::RootDir => at = PathBuf::from("/"),
                Component::ParentDir => {
                    at.pop();
                }
                Component::CurDir | Component::Prefix(_) => {}
                Component::Normal(n) => {
                    let candidate = at.join(n);
                    if stop.iter().any(|s| candidate.starts_with(s)) || hops >= MAX_HOPS {
                        // Within the store (or a loop): the rest is read as written.
                        let rest: PathBuf = comps.iter().rev().collect();
                        return lexical(&candidate.join(rest));
                    }
                    let via = root.join(candidate.strip_prefix("/").unwrap_or(&candidate));
                    match std::fs::read_link(&via) {
                        Ok(target) => {
                            hops += 1;
                            let rest: PathBuf = comps.iter().rev().collect();
                            todo.push(rest);
                            todo.push(target);
                            break;
                        }
                        Err(_) => at = candidate,
                    }
                }
            }
        }
    }
    lexical(&at)
}

/// Whether a registry whose filesystem root directory is `rootdir` uses the store whose
/// paths (mount point, backing directory) are `ours`.
pub fn serves(found: &Found, rootdir: &Path, ours: &[PathBuf]) -> bool {
    let seen = store_paths_seen_by(found.pid, ours);
    let cwd = found.cwd.clone().unwrap_or_else(|| PathBuf::from("/"));
    let root = resolve_seen_by(found.pid, rootdir, &cwd, &seen);
    seen.iter().any(|s| overlaps(&root, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serve_command_line_is_told_apart() {
        let args =
            |s: &'static str| -> Vec<&'static [u8]> { s.split(' ').map(str::as_bytes).collect() };
        let c = args("/usr/bin/docker-registry serve /etc/docker/registry/config.yml");
        assert_eq!(
            serve_argument(&c, None),
            Some(Some(&b"/etc/docker/registry/config.yml"[..]))
        );
        assert_eq!(serve_argument(&args("registry serve"), None), Some(None));
        assert_eq!(
            serve_argument(&args("python3 -m http.server serve"), None),
            None
        );
        assert_eq!(
            serve_argument(&args("registry garbage-collect c.yml"), None),
            None
        );
        assert_eq!(
            serve_argument(
                &args("reg serve"),
                Some(Path::new("/usr/bin/docker-registry"))
            ),
            Some(None)
        );
    }

    #[test]
    fn mountinfo_paths_are_unescaped_and_paths_normalised() {
        assert_eq!(unescape("/srv/a\\040b"), PathBuf::from("/srv/a b"));
        assert_eq!(unescape("/x\\"), PathBuf::from("/x\\"));
        assert_eq!(lexical(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert!(overlaps(
            Path::new("/srv/reg"),
            Path::new("/srv/reg/docker")
        ));
        assert!(!overlaps(Path::new("/srv/reg"), Path::new("/srv/registry")));
    }

    #[test]
    fn a_path_is_resolved_through_its_links_but_never_into_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(d.join("real/store")).unwrap();
        std::os::unix::fs::symlink(d.join("real"), d.join("alias")).unwrap();
        std::os::unix::fs::symlink("real/store", d.join("rel")).unwrap();
        let me = std::process::id();
        let stop = [d.join("real/store")];
        assert_eq!(
            resolve_seen_by(me, &d.join("alias/store/docker"), Path::new("/"), &stop),
            d.join("real/store/docker")
        );
        assert_eq!(
            resolve_seen_by(me, Path::new("rel/../store"), &d, &stop),
            d.join("real/store")
        );
        // A loop ends.
        std::os::unix::fs::symlink("loop", d.join("loop")).unwrap();
        let _ = resolve_seen_by(me, &d.join("loop/x"), Path::new("/"), &stop);
    }
}

//! `regfs tags` and `regfs retention ...`: asked of the daemon serving a mount, or read on
//! disk from a storage directory no daemon serves. Part of the binary.

use std::path::{Path, PathBuf};

use crate::cli::{RetentionAction, TagsArgs, state_dir_for};
use crate::output;
use regfs::daemon::control::{self, Request};
use regfs::layout::Store;
use regfs::retention::{AccessTimes, TagInfo, Verdict, judge, list_tags};

/// Who answers for PATH.
enum Target {
    /// The daemon whose state directory this is.
    Daemon(PathBuf),
    /// A storage directory no daemon serves.
    Disk(PathBuf),
}

fn target(path: &Path, state_dir: &Option<PathBuf>) -> Result<Target, String> {
    let canonical = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mounts = regfs::mount::mounts().unwrap_or_default();
    let fuse = |m: &&regfs::mount::MountEntry| m.fstype.starts_with("fuse");
    if mounts
        .iter()
        .filter(fuse)
        .any(|m| m.mountpoint == canonical)
    {
        return Ok(Target::Daemon(state_dir_for(state_dir, &canonical)));
    }
    // A regfs daemon names its mount after the store it serves.
    if let Some(m) = mounts
        .iter()
        .filter(fuse)
        .find(|m| Path::new(&m.source) == canonical)
    {
        return Ok(Target::Daemon(state_dir_for(state_dir, &m.mountpoint)));
    }
    Ok(Target::Disk(canonical))
}

fn ask(state_dir: &Path, req: &Request) -> Result<serde_json::Value, String> {
    let resp = control::request(state_dir, req)?;
    match (resp.ok, resp.data) {
        (true, Some(v)) => Ok(v),
        _ => Err(resp.error.unwrap_or_else(|| "the daemon refused".into())),
    }
}

fn times_on_disk(state_dir: &Option<PathBuf>) -> Result<AccessTimes, String> {
    match state_dir {
        None => Ok(AccessTimes::default()),
        Some(dir) => {
            let dir = regfs::state_dir::StateDir::for_reading(dir).map_err(|e| e.to_string())?;
            regfs::daemon::access_journal::read_times(&dir).map_err(|e| e.to_string())
        }
    }
}

fn tags_on_disk(
    storage: &Path,
    state_dir: &Option<PathBuf>,
    repo: Option<&str>,
) -> Result<Vec<TagInfo>, String> {
    let store = Store::open(storage).map_err(|e| format!("{}: {e}", storage.display()))?;
    list_tags(&store, &times_on_disk(state_dir)?, repo).map_err(|e| e.to_string())
}

fn print_json(v: &impl serde::Serialize) -> Result<(), String> {
    output::print(&(serde_json::to_string_pretty(v).map_err(|e| e.to_string())? + "\n"))
}

fn field<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v.get(k).and_then(|x| x.as_str()).unwrap_or("never")
}

fn short(digest: &str) -> &str {
    digest
        .strip_prefix("sha256:")
        .map_or(digest, |h| &h[..h.len().min(12)])
}

/// `regfs tags`.
pub fn tags(args: &TagsArgs) -> Result<(), String> {
    let value = match target(&args.path, &args.state_dir)? {
        Target::Daemon(dir) => ask(
            &dir,
            &Request::Tags {
                repo: args.repo.clone(),
            },
        )?,
        Target::Disk(storage) => serde_json::to_value(tags_on_disk(
            &storage,
            &args.state_dir,
            args.repo.as_deref(),
        )?)
        .map_err(|e| e.to_string())?,
    };
    if args.json {
        return print_json(&value);
    }
    let mut text = format!(
        "{:<30} {:<20} {:<12} {:<24} {}\n",
        "REPOSITORY", "TAG", "DIGEST", "PUSHED", "PULLED"
    );
    for t in value.as_array().into_iter().flatten() {
        text.push_str(&format!(
            "{:<30} {:<20} {:<12} {:<24} {}\n",
            field(t, "repository"),
            field(t, "tag"),
            short(t.get("digest").and_then(|d| d.as_str()).unwrap_or("-")),
            field(t, "pushed"),
            field(t, "pulled"),
        ));
    }
    output::print(&text)
}

fn preview_on_disk(
    storage: &Path,
    state_dir: &Option<PathBuf>,
    config: &Option<PathBuf>,
) -> Result<Vec<Verdict>, String> {
    let Some(file) = config else {
        return Err(format!(
            "{} is served by no regfs daemon: give the configuration file whose [retention] applies (--config FILE)",
            storage.display()
        ));
    };
    let parsed = regfs::config::FileConfig::load(file).map_err(|e| e.to_string())?;
    let rules = regfs::config::retention::resolve(&parsed.retention, &file.display().to_string())
        .map_err(|e| e.to_string())?;
    let tags = tags_on_disk(storage, state_dir, None)?;
    Ok(judge(&rules, tags, regfs::policy::access::now_millis()))
}

/// `regfs retention ...`.
pub fn retention(action: &RetentionAction) -> Result<(), String> {
    match action {
        RetentionAction::Preview {
            path,
            json,
            state_dir,
            config,
        } => {
            let value = match target(path, state_dir)? {
                Target::Daemon(dir) => ask(&dir, &Request::RetentionPreview)?,
                Target::Disk(storage) => {
                    serde_json::to_value(preview_on_disk(&storage, state_dir, config)?)
                        .map_err(|e| e.to_string())?
                }
            };
            if *json {
                return print_json(&value);
            }
            let all = value.as_array().cloned().unwrap_or_default();
            let (keep, go): (Vec<_>, Vec<_>) = all
                .iter()
                .partition(|v| v.get("keep").and_then(|k| k.as_bool()).unwrap_or(true));
            let mut text = format!("{} tags would be pruned, {} kept\n", go.len(), keep.len());
            for (title, list) in [("PRUNED", &go), ("KEPT", &keep)] {
                for v in list {
                    text.push_str(&format!(
                        "{title:<6} {}:{} pushed {} pulled {}: {}\n",
                        field(v, "repository"),
                        field(v, "tag"),
                        field(v, "pushed"),
                        field(v, "pulled"),
                        field(v, "reason"),
                    ));
                }
            }
            output::print(&text)
        }
        RetentionAction::Restore {
            mountpoint,
            reference,
            state_dir,
        } => {
            let Some((repo, tag)) = reference.rsplit_once(':') else {
                return Err(format!("{reference:?}: expected REPOSITORY:TAG"));
            };
            let Target::Daemon(dir) = target(mountpoint, state_dir)? else {
                return Err(format!(
                    "{}: not a regfs mount point; a tag is restored through the daemon that pruned it",
                    mountpoint.display()
                ));
            };
            let v = ask(
                &dir,
                &Request::RetentionRestore {
                    repo: repo.into(),
                    tag: tag.into(),
                },
            )?;
            output::println(&format!("{repo}:{tag} restored on {}", field(&v, "digest")))
        }
    }
}

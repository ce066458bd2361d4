//! Reading a store's repositories: revisions, tags, `_layers` links, uploads and
//! leftover temp files. Anything in the reference-bearing part of the tree that cannot
//! be understood stops the run (it could hold references); elsewhere it is a warning.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use super::error::GcError;
use super::inventory::{
    BlobInventory, FanOut, Inventory, LinkState, RepoInventory, Revision, Tag, TempFile,
    TempParent, Upload,
};
use super::report::Warning;
use crate::layout::paths::{self, LINK};
use crate::layout::{Digest, EntryKind, RepoName, Role, Store, TagName, parse_link};

fn mtime_of(st: &rustix::fs::Stat) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(st.st_mtime.max(0) as u64)
}

fn list(store: &Store, rel: &Path) -> Result<Option<Vec<crate::layout::Entry>>, GcError> {
    store
        .list(rel)
        .map_err(|e| GcError::store(&store.shown(rel), e))
}

/// Finds every repository: any directory holding `_manifests` (or only `_layers` or
/// `_uploads`). Directories whose names start with `_` are never searched for
/// repositories.
pub fn find_repositories(store: &Store) -> Result<Vec<RepoName>, GcError> {
    let root = paths::repositories_root();
    let mut found = Vec::new();
    let mut stack: Vec<(PathBuf, Option<RepoName>)> = vec![(root, None)];
    while let Some((dir, name)) = stack.pop() {
        let Some(entries) = list(store, &dir)? else {
            continue;
        };
        // `_manifests` makes a repository; `_layers` or `_uploads` alone (blobs pushed,
        // no manifest yet) make one with no roots, whose links and uploads still need care.
        if let Some(name) = &name
            && entries.iter().any(|e| paths::marks_repository(&e.name))
        {
            found.push(name.clone());
        }
        for e in entries {
            let Some(s) = e.name_str() else {
                return Err(GcError::NotUnderstood {
                    path: dir.join(&e.name).display().to_string(),
                    what: "a name that is not UTF-8 in the repository tree".into(),
                });
            };
            if s.starts_with('_') {
                continue;
            }
            match e.kind {
                EntryKind::Dir => {
                    let child = match &name {
                        None => RepoName::new(s),
                        Some(n) => n.child(s),
                    }
                    .map_err(|err| GcError::NotUnderstood {
                        path: dir.join(s).display().to_string(),
                        what: err.to_string(),
                    })?;
                    stack.push((dir.join(s), Some(child)));
                }
                EntryKind::File => {}
                EntryKind::Other => {
                    return Err(GcError::NotUnderstood {
                        path: dir.join(s).display().to_string(),
                        what: "a symbolic link or special file in the repository tree".into(),
                    });
                }
            }
        }
    }
    found.sort();
    Ok(found)
}

fn link_state(read: Option<Result<Vec<u8>, crate::layout::store::ReadError>>) -> LinkState {
    match read {
        None => LinkState::Missing,
        Some(Ok(bytes)) => match parse_link(&bytes) {
            Ok(d) => LinkState::Ok(d),
            Err(e) => LinkState::Damaged(e.to_string()),
        },
        Some(Err(e)) => LinkState::Damaged(e.to_string()),
    }
}

/// Opens the directory `rel` as a store of its own, so that the many small reads below
/// it resolve two or three components instead of ten.
fn sub(store: &Store, rel: &Path) -> Result<Option<Store>, GcError> {
    store.sub(rel).map_err(|e| GcError::store(rel, e))
}

/// The directory `rel` as a store of its own, with its entries; `None` if it is missing.
fn sub_listed(
    store: &Store,
    rel: &Path,
) -> Result<Option<(Store, Vec<crate::layout::Entry>)>, GcError> {
    let Some(dir) = sub(store, rel)? else {
        return Ok(None);
    };
    Ok(list(&dir, Path::new(""))?.map(|entries| (dir, entries)))
}

/// Lists `dir` (relative to `store`) and reads its link file; notes leftover temp files.
/// `None` if the directory does not exist. A read error is a damaged link, never a skip.
fn link_dir(
    store: &Store,
    dir: &Path,
    parent: TempParent,
    temp: &mut Vec<TempFile>,
) -> Result<Option<(Vec<crate::layout::Entry>, LinkState)>, GcError> {
    let listed = store
        .list_reading(dir, LINK, 4096)
        .map_err(|e| GcError::store(&store.shown(dir), e))?;
    let Some(listed) = listed else {
        return Ok(None);
    };
    collect_temp(store, dir, &listed.entries, parent, temp);
    Ok(Some((listed.entries, link_state(listed.file))))
}

fn collect_temp(
    store: &Store,
    dir: &Path,
    entries: &[crate::layout::Entry],
    parent: TempParent,
    out: &mut Vec<TempFile>,
) {
    for e in entries {
        if e.kind == EntryKind::File && e.name_str().is_some_and(paths::is_temp_file) {
            let path = dir.join(&e.name);
            if let Ok(Some(st)) = store.stat(&path) {
                out.push(TempFile {
                    path: store.shown(&path),
                    mtime: mtime_of(&st),
                    parent: parent.clone(),
                });
            }
        }
    }
}

fn scan_revisions(store: &Store, repo: &RepoName, scan: &mut RepoInventory) -> Result<(), GcError> {
    let Some((revs, entries)) = sub_listed(store, &paths::revisions_dir(repo))? else {
        return Ok(());
    };
    for e in entries {
        let rel = Path::new(&e.name);
        let digest = e.name_str().and_then(|s| Digest::from_hex(s).ok());
        let (EntryKind::Dir, Some(dir_digest)) = (e.kind, digest) else {
            return Err(GcError::NotUnderstood {
                path: revs.shown(rel).display().to_string(),
                what: "not a revision directory named by a digest".into(),
            });
        };
        let (inner, link) = link_dir(
            &revs,
            rel,
            TempParent::Revision(dir_digest),
            &mut scan.temp_files,
        )?
        .unwrap_or((Vec::new(), LinkState::Missing));
        let link_path = || revs.shown(&rel.join(LINK));
        if let LinkState::Damaged(why) = &link {
            scan.warnings.push(Warning::new(
                link_path(),
                format!("damaged revision link ({why}); keeping the manifest its directory names"),
            ));
        }
        if let LinkState::Ok(d) = &link
            && *d != dir_digest
        {
            scan.warnings.push(Warning::new(
                link_path(),
                format!("revision link names {d}, not its directory; keeping both"),
            ));
        }
        scan.revisions.push(Revision {
            dir_digest,
            link,
            empty: inner.is_empty(),
        });
    }
    Ok(())
}

fn scan_tags(store: &Store, repo: &RepoName, scan: &mut RepoInventory) -> Result<(), GcError> {
    // A repository without a tags directory is normal (every tag deleted, or pushed by digest).
    let Some((tags, entries)) = sub_listed(store, &paths::tags_dir(repo))? else {
        return Ok(());
    };
    for e in entries {
        let name = e.name_str().and_then(|s| TagName::new(s).ok());
        let (EntryKind::Dir, Some(name)) = (e.kind, name) else {
            return Err(GcError::NotUnderstood {
                path: tags.shown(Path::new(&e.name)).display().to_string(),
                what: "not a tag directory".into(),
            });
        };
        let tag = Path::new(name.as_str());
        let current = link_dir(
            &tags,
            &tag.join(paths::TAG_CURRENT),
            TempParent::TagCurrent,
            &mut scan.temp_files,
        )?
        .map_or(LinkState::Missing, |(_, l)| l);
        let mut index = Vec::new();
        if let Some((idx, index_entries)) = sub_listed(&tags, &tag.join(paths::TAG_INDEX))? {
            for ie in index_entries {
                match ie.name_str().and_then(|s| Digest::from_hex(s).ok()) {
                    Some(d) if ie.kind == EntryKind::Dir => {
                        index.push(d);
                        if let Some(inner) = list(&idx, Path::new(&ie.name))? {
                            collect_temp(
                                &idx,
                                Path::new(&ie.name),
                                &inner,
                                TempParent::TagIndex(d),
                                &mut scan.temp_files,
                            );
                        }
                    }
                    _ => {
                        return Err(GcError::NotUnderstood {
                            path: idx.shown(Path::new(&ie.name)).display().to_string(),
                            what: "not a tag index entry named by a digest".into(),
                        });
                    }
                }
            }
        }
        let damage = match &current {
            LinkState::Ok(_) => None,
            LinkState::Damaged(why) => Some(why.as_str()),
            LinkState::Missing => Some("missing"),
        };
        if let Some(why) = damage {
            scan.warnings.push(Warning::new(
                paths::tag_current_link(repo, &name),
                format!(
                    "tag link {why}; keeping all {} manifests of the tag's history",
                    index.len()
                ),
            ));
        }
        scan.tags.push(Tag {
            name,
            current,
            index,
        });
    }
    Ok(())
}

fn scan_layers(store: &Store, repo: &RepoName, scan: &mut RepoInventory) -> Result<(), GcError> {
    let Some((layers, entries)) = sub_listed(store, &paths::layers_dir(repo))? else {
        return Ok(());
    };
    for e in entries {
        let rel = Path::new(&e.name);
        match e.name_str().and_then(|s| Digest::from_hex(s).ok()) {
            Some(d) if e.kind == EntryKind::Dir => {
                if let Some(inner) = list(&layers, rel)? {
                    collect_temp(
                        &layers,
                        rel,
                        &inner,
                        TempParent::LayerLink(d),
                        &mut scan.temp_files,
                    );
                }
                scan.layers.push(d);
            }
            _ => scan.warnings.push(Warning::new(
                layers.shown(rel),
                "not a layer link directory named by a digest; left alone".into(),
            )),
        }
    }
    Ok(())
}

/// Bytes of every file below `rel` (what removing it frees), without following links.
fn tree_bytes(store: &Store, rel: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![rel.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in store.list(&dir).ok().flatten().unwrap_or_default() {
            let p = dir.join(&e.name);
            match e.kind {
                EntryKind::Dir => stack.push(p),
                _ => {
                    total += store
                        .stat(&p)
                        .ok()
                        .flatten()
                        .map_or(0, |st| st.st_size.max(0) as u64)
                }
            }
        }
    }
    total
}

fn scan_uploads(store: &Store, repo: &RepoName, scan: &mut RepoInventory) -> Result<(), GcError> {
    let dir = paths::uploads_dir(repo);
    let Some(entries) = list(store, &dir)? else {
        return Ok(());
    };
    for e in entries {
        let path = dir.join(&e.name);
        if e.kind != EntryKind::Dir {
            scan.warnings.push(Warning::new(
                path,
                "not an upload directory; left alone".into(),
            ));
            continue;
        }
        let started_file = store
            .read(&paths::upload_started_at(&path), 256)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s.trim()).ok())
            .map(SystemTime::from);
        let st = store.stat(&path).map_err(|e| GcError::store(&path, e))?;
        let Some(st) = st else { continue };
        let bytes = tree_bytes(store, &path);
        scan.uploads.push(Upload {
            started: started_file.unwrap_or_else(|| mtime_of(&st)),
            dir: path,
            bytes,
        });
    }
    Ok(())
}

/// Scans one repository.
pub fn scan_repository(store: &Store, repo: &RepoName) -> Result<RepoInventory, GcError> {
    let mut scan = RepoInventory::new(repo.clone());
    scan_revisions(store, repo, &mut scan)?;
    scan_tags(store, repo, &mut scan)?;
    scan_layers(store, repo, &mut scan)?;
    scan_uploads(store, repo, &mut scan)?;
    scan.layers.shrink_to_fit();
    Ok(scan)
}

/// One fan-out directory's blobs.
struct FanOutScan {
    blobs: Vec<Digest>,
    fan_out: Option<FanOut>,
    warnings: Vec<Warning>,
}

fn scan_fan_out(
    store: &Store,
    root: &Path,
    p: &crate::layout::Entry,
) -> Result<FanOutScan, GcError> {
    let name = p.name_str().unwrap_or_default().to_string();
    let fan_out = match Role::BlobsSha256.child_named(&name) {
        Role::BlobFanOut(b) if p.kind == EntryKind::Dir => Some(b),
        _ => None,
    };
    let Some(fan_out) = fan_out else {
        return Ok(FanOutScan {
            blobs: vec![],
            fan_out: None,
            warnings: vec![Warning::new(
                root.join(&p.name),
                "not a blob fan-out directory; left alone".into(),
            )],
        });
    };
    let dir = paths::blob_prefix_dir(&name);
    let entries = list(store, &dir)?.unwrap_or_default();
    let mut blobs = Vec::with_capacity(entries.len());
    let mut warnings = Vec::new();
    for e in &entries {
        let role = e
            .name_str()
            .map(|s| Role::BlobFanOut(fan_out).child_named(s));
        match role {
            Some(Role::BlobDir(d)) if e.kind == EntryKind::Dir => blobs.push(d),
            _ => warnings.push(Warning::new(
                dir.join(&e.name),
                "not a blob directory named by its digest; left alone".into(),
            )),
        }
    }
    Ok(FanOutScan {
        blobs,
        fan_out: Some(FanOut {
            prefix: name,
            entries: entries.len(),
        }),
        warnings,
    })
}

/// Lists every blob directory, one fan-out directory per task.
pub fn scan_blobs(store: &Store) -> Result<BlobInventory, GcError> {
    let root = paths::blobs_root();
    let Some(prefixes) = list(store, &root)? else {
        return Ok(BlobInventory::default());
    };
    let scans: Result<Vec<FanOutScan>, GcError> = prefixes
        .par_iter()
        .map(|p| scan_fan_out(store, &root, p))
        .collect();
    let scans = scans?;
    let mut blobs = Vec::with_capacity(scans.iter().map(|s| s.blobs.len()).sum());
    let mut fan_outs = Vec::new();
    let mut warnings = Vec::new();
    for s in scans {
        blobs.extend(s.blobs);
        fan_outs.extend(s.fan_out);
        warnings.extend(s.warnings);
    }
    Ok(BlobInventory::new(blobs, fan_outs, warnings))
}

/// Reads the size of blobs' data, for a report of what deleting them frees; below the
/// blobs root, so three components per path instead of eight.
pub struct BlobSizes(Option<Store>);

impl BlobSizes {
    pub fn new(store: &Store) -> Self {
        BlobSizes(store.sub(&paths::blobs_root()).ok().flatten())
    }

    /// 0 when the data cannot be read.
    pub fn of(&self, d: &Digest) -> u64 {
        self.0
            .as_ref()
            .and_then(|b| b.stat(&paths::blob_data_in_blobs_root(d)).ok().flatten())
            .map_or(0, |st| st.st_size.max(0) as u64)
    }
}

/// The blobs found too young to delete, and why any was kept without knowing its age.
#[derive(Debug, Default)]
pub struct YoungBlobs {
    pub digests: Vec<Digest>,
    pub warnings: Vec<Warning>,
}

/// Which of `candidates` were written less than `min_age` before `now`: the mtime of the
/// blob's `data` (the registry renames a finished upload's data into place, which keeps
/// the time it was written), or of its directory when `data` is missing. A blob whose
/// age cannot be read is kept, with a warning. One stat per candidate, none when
/// `min_age` is zero.
pub fn young_blobs(
    store: &Store,
    candidates: impl Iterator<Item = Digest>,
    min_age: Duration,
    now: SystemTime,
) -> YoungBlobs {
    if min_age.is_zero() {
        return YoungBlobs::default();
    }
    let Ok(Some(blobs)) = store.sub(&paths::blobs_root()) else {
        return YoungBlobs::default();
    };
    let candidates: Vec<Digest> = candidates.collect();
    let ages: Vec<(Digest, Result<Option<SystemTime>, std::io::Error>)> = candidates
        .into_par_iter()
        .map(|d| (d, written_at(&blobs, &d)))
        .collect();
    let mut young = YoungBlobs::default();
    for (d, written) in ages {
        match written {
            // Gone since the scan: nothing to keep.
            Ok(None) => {}
            Ok(Some(t)) if now.duration_since(t).map_or(true, |age| age < min_age) => {
                young.digests.push(d)
            }
            Ok(Some(_)) => {}
            Err(e) => {
                young.digests.push(d);
                young.warnings.push(Warning::new(
                    store.shown(&paths::blobs_root().join(paths::blob_dir_in_blobs_root(&d))),
                    format!("kept: cannot read its age: {e}"),
                ));
            }
        }
    }
    young
}

fn written_at(blobs: &Store, d: &Digest) -> Result<Option<SystemTime>, std::io::Error> {
    let st = match blobs.stat(&paths::blob_data_in_blobs_root(d))? {
        Some(st) => Some(st),
        None => blobs.stat(&paths::blob_dir_in_blobs_root(d))?,
    };
    Ok(st.as_ref().map(mtime_of))
}

/// The inventory stage: every repository (in parallel), then every blob. `None` when
/// `stop` said so before the scan was complete.
pub fn inventory(
    store: &Store,
    repos: Vec<RepoName>,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<Option<Inventory>, GcError> {
    let scans: Result<Vec<Option<RepoInventory>>, GcError> = repos
        .par_iter()
        .map(|r| {
            if stop() {
                Ok(None)
            } else {
                scan_repository(store, r).map(Some)
            }
        })
        .collect();
    let Some(repositories) = scans?.into_iter().collect::<Option<Vec<_>>>() else {
        return Ok(None);
    };
    Ok(Some(Inventory {
        repositories,
        blobs: scan_blobs(store)?,
    }))
}

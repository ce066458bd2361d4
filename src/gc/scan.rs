//! Reading a store's repositories: revisions, tags, `_layers` links, uploads and
//! leftover temp files. What the scan does not understand never stops the run and is
//! never deleted nor followed: an entry inside a repository keeps that repository whole;
//! a link in the repository tree keeps the repositories it stands for whole (every blob,
//! when it leads out of the tree); a part of a repository that names blobs and cannot
//! be listed keeps every blob. Each says so in a warning naming the file.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use super::TempFileSearch;
use super::error::GcError;
use super::inventory::{
    BlobInventory, FanOut, Inventory, LinkState, RepoInventory, Revision, Tag, TempFile,
    TempParent, Upload,
};
use super::report::Warning;
use crate::layout::paths::{self, LINK};
use crate::layout::{BlobDirs, Digest, EntryKind, RepoName, Role, Store, TagName, parse_link};

fn mtime_of(st: &rustix::fs::Stat) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(st.st_mtime.max(0) as u64)
}

fn list(store: &Store, rel: &Path) -> Result<Option<Vec<crate::layout::Entry>>, GcError> {
    store
        .list(rel)
        .map_err(|e| GcError::store(&store.shown(rel), e))
}

/// What the walk of the repository tree found: the repositories, and what it met there
/// that it does not understand.
#[derive(Debug, Default)]
pub struct Repositories {
    pub names: Vec<RepoName>,
    /// Repositories (a name, and every repository below it) kept whole, with why: a link
    /// in the tree stands for them, or an entry that is no repository lies in them.
    pub kept_whole: Vec<(String, Warning)>,
    /// Entries that could name any blob: while one is there, no blob is deleted.
    pub keep_all_blobs: Vec<Warning>,
    /// Entries that can hold no reference (a FIFO, a socket...), reported only.
    pub warnings: Vec<Warning>,
}

impl Repositories {
    /// Why `repo` is kept whole, if it is.
    pub fn kept_whole(&self, repo: &RepoName) -> impl Iterator<Item = &Warning> {
        self.kept_whole
            .iter()
            .filter(move |(under, _)| {
                under.is_empty()
                    || repo.as_str() == under
                    || repo
                        .as_str()
                        .strip_prefix(under.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .map(|(_, w)| w)
    }
}

/// Where link `target`, lying in repository directory `dir` (a name below the
/// repositories root, `""` for the root), leads within the repository tree: the
/// repository (or namespace) name it stands for, cut before any `_` component (the
/// repository whose internals it names). `None` when it leads out of the tree.
fn link_target_in_tree(dir: &str, target: &Path) -> Option<String> {
    use std::path::Component;
    if target.is_absolute() {
        return None;
    }
    let mut at: Vec<String> = dir
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    for c in target.components() {
        match c {
            Component::Normal(n) => at.push(n.to_str()?.to_string()),
            Component::ParentDir => {
                at.pop()?;
            }
            Component::CurDir => {}
            _ => return None,
        }
    }
    let cut = at
        .iter()
        .position(|c| c.starts_with('_'))
        .unwrap_or(at.len());
    Some(at[..cut].join("/"))
}

/// A symbolic link or special file at `rel` in the repository tree, in directory `dir`
/// (`None`: the root; else a namespace or repository name): what it keeps.
fn stray_in_tree(store: &Store, rel: &Path, dir: Option<&RepoName>, found: &mut Repositories) {
    let shown = rel.display().to_string();
    let here = dir.map_or(String::new(), |d| d.as_str().to_string());
    match store.read_link(rel) {
        Ok(target) => match link_target_in_tree(&here, &target) {
            Some(under) => {
                let w = Warning::new(
                    &shown,
                    format!(
                        "a symbolic link (to {}) in the repository tree, never followed: the \
                         registry serves through it what it points to, {}, kept whole with {}",
                        target.display(),
                        if under.is_empty() {
                            "every repository".to_string()
                        } else {
                            format!("repositories {under}")
                        },
                        if here.is_empty() {
                            "nothing else".to_string()
                        } else {
                            format!("repositories {here}")
                        },
                    ),
                );
                found.kept_whole.push((under, w.clone()));
                if !here.is_empty() {
                    found.kept_whole.push((here, w));
                }
            }
            None => found.keep_all_blobs.push(Warning::new(
                shown,
                format!(
                    "a symbolic link (to {}) out of the repository tree, never followed: the \
                     registry may serve through it a repository naming any blob, so no blob is \
                     deleted while it is there",
                    target.display()
                ),
            )),
        },
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // No link: a FIFO, socket or device, which can name nothing.
            let w = Warning::new(
                &shown,
                "a special file in the repository tree; left alone".into(),
            );
            match dir {
                Some(d) => found.kept_whole.push((d.as_str().to_string(), w)),
                None => found.warnings.push(w),
            }
        }
        Err(e) => found.keep_all_blobs.push(Warning::new(
            shown,
            format!(
                "an entry of the repository tree that cannot be read ({e}): it may stand for a \
                 repository naming any blob, so no blob is deleted while it is there"
            ),
        )),
    }
}

/// Finds every repository: any directory holding `_manifests` (or only `_layers` or
/// `_uploads`). Directories whose names start with `_` are never searched for
/// repositories. What it does not understand it keeps (see [`Repositories`]); only a
/// repository tree that cannot be listed at all stops the run.
pub fn find_repositories(store: &Store) -> Result<Repositories, GcError> {
    let root = paths::repositories_root();
    let mut found = Repositories::default();
    let mut stack: Vec<(PathBuf, Option<RepoName>)> = vec![(root.clone(), None)];
    while let Some((dir, name)) = stack.pop() {
        let entries = match list(store, &dir) {
            Ok(Some(entries)) => entries,
            Ok(None) => continue,
            Err(e) if dir == root => return Err(e),
            Err(e) => {
                found.keep_all_blobs.push(Warning::new(
                    &dir,
                    format!(
                        "a directory of the repository tree that cannot be listed ({e}): its \
                         repositories cannot be known, so no blob is deleted while it is so"
                    ),
                ));
                continue;
            }
        };
        // `_manifests` makes a repository; `_layers` or `_uploads` alone (blobs pushed,
        // no manifest yet) make one with no roots, whose links and uploads still need care.
        if let Some(name) = &name
            && entries.iter().any(|e| paths::marks_repository(&e.name))
        {
            found.names.push(name.clone());
        }
        for e in entries {
            let path = dir.join(&e.name);
            let Some(s) = e.name_str() else {
                found.keep_all_blobs.push(Warning::new(
                    &path,
                    "a name that is not UTF-8 in the repository tree: what lies below it cannot \
                     be named, so no blob is deleted while it is there"
                        .into(),
                ));
                continue;
            };
            if s.starts_with('_') {
                continue;
            }
            match e.kind {
                EntryKind::Dir => {
                    let child = match &name {
                        None => RepoName::new(s),
                        Some(n) => n.child(s),
                    };
                    match child {
                        Ok(child) => stack.push((path, Some(child))),
                        Err(err) => found.keep_all_blobs.push(Warning::new(
                            &path,
                            format!(
                                "{err}: the repositories below it cannot be named, so no blob is \
                                 deleted while it is there"
                            ),
                        )),
                    }
                }
                EntryKind::File => {}
                EntryKind::Other => stray_in_tree(store, &path, name.as_ref(), &mut found),
            }
        }
    }
    found.names.sort();
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

/// The directory `rel` as a store of its own, with its entries (so that the many small
/// reads below it resolve two or three components instead of ten); `None` if it is
/// missing.
fn sub_listed(
    store: &Store,
    rel: &Path,
) -> Result<Option<(Store, Vec<crate::layout::Entry>)>, GcError> {
    store
        .sub_listed(rel)
        .map_err(|e| GcError::store(&store.shown(rel), e))
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

/// As [`link_dir`], for a link directory `dir` whose temp files are searched only when
/// its link is missing or damaged ([`TempFileSearch::BrokenLinksOnly`]): the link is read
/// directly (one open of `dir/link` beneath `store`), and the directory is listed only
/// when that read does not give a link naming `expected` (when given). The entries are
/// only listed when needed: for a link that read well they are that link alone.
fn read_link_dir(
    store: &Store,
    dir: &Path,
    expected: Option<&Digest>,
    parent: TempParent,
    temp: &mut Vec<TempFile>,
) -> Result<Option<(Vec<crate::layout::Entry>, LinkState)>, GcError> {
    let read = match store.read(&dir.join(LINK), 4096) {
        Ok(None) => None,
        Ok(Some(bytes)) => Some(Ok(bytes)),
        Err(e) => Some(Err(e)),
    };
    let state = link_state(read);
    let good = match (&state, expected) {
        (LinkState::Ok(d), Some(want)) => d == want,
        (LinkState::Ok(_), None) => true,
        _ => false,
    };
    if good {
        let link = crate::layout::Entry {
            name: LINK.into(),
            kind: EntryKind::File,
        };
        return Ok(Some((vec![link], state)));
    }
    // Missing, damaged or naming another digest: listed as every link directory is under
    // EveryLinkDir, so what the scan records is the same.
    link_dir(store, dir, parent, temp)
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

/// The directory `rel` of a repository with its entries, or `None` if it is missing;
/// when it cannot be listed, says so through `unlisted` (with the error) and gives `None`.
fn repo_listed(
    store: &Store,
    rel: &Path,
    scan: &mut RepoInventory,
    unlisted: fn(&mut RepoInventory, PathBuf, &str),
) -> Option<(Store, Vec<crate::layout::Entry>)> {
    match sub_listed(store, rel) {
        Ok(listed) => listed,
        Err(e) => {
            unlisted(scan, rel.to_path_buf(), &format!("cannot be listed ({e})"));
            None
        }
    }
}

fn keep_whole(scan: &mut RepoInventory, path: PathBuf, what: &str) {
    scan.not_understood(path, what);
}

fn references_unknown(scan: &mut RepoInventory, path: PathBuf, what: &str) {
    scan.references_unknown(path, what);
}

fn scan_revisions(
    store: &Store,
    repo: &RepoName,
    search: TempFileSearch,
    scan: &mut RepoInventory,
) {
    let rel = paths::revisions_dir(repo);
    let Some((revs, entries)) = repo_listed(store, &rel, scan, references_unknown) else {
        return;
    };
    for e in entries {
        let rel = Path::new(&e.name);
        let digest = e.name_str().and_then(|s| Digest::from_hex(s).ok());
        let Some(dir_digest) = digest else {
            scan.not_understood(
                revs.shown(rel),
                "not a revision directory named by a digest",
            );
            continue;
        };
        if e.kind != EntryKind::Dir {
            // The registry would follow a link: the manifest its name says is kept, if
            // the store holds it.
            scan.not_understood(revs.shown(rel), "a revision that is no directory");
            scan.stray_revisions.push(dir_digest);
            continue;
        }
        let parent = TempParent::Revision(dir_digest);
        let listed = match search {
            TempFileSearch::EveryLinkDir => link_dir(&revs, rel, parent, &mut scan.temp_files),
            TempFileSearch::BrokenLinksOnly => {
                read_link_dir(&revs, rel, Some(&dir_digest), parent, &mut scan.temp_files)
            }
        };
        let (inner, link) = match listed {
            Ok(l) => l.unwrap_or((Vec::new(), LinkState::Missing)),
            Err(e) => (Vec::new(), LinkState::Damaged(e.to_string())),
        };
        let link_path = || revs.shown(&rel.join(LINK));
        if let LinkState::Damaged(why) = &link {
            scan.not_understood(link_path(), &format!("damaged revision link ({why})"));
        }
        if let LinkState::Ok(d) = &link
            && *d != dir_digest
        {
            scan.not_understood(
                link_path(),
                &format!("revision link names {d}, not its directory"),
            );
        }
        scan.revisions.push(Revision {
            dir_digest,
            link,
            empty: inner.is_empty(),
        });
    }
}

fn scan_tags(store: &Store, repo: &RepoName, search: TempFileSearch, scan: &mut RepoInventory) {
    // A repository without a tags directory is normal (every tag deleted, or pushed by digest).
    let rel = paths::tags_dir(repo);
    let Some((tags, entries)) = repo_listed(store, &rel, scan, keep_whole) else {
        return;
    };
    for e in entries {
        let name = e.name_str().and_then(|s| TagName::new(s).ok());
        let (EntryKind::Dir, Some(name)) = (e.kind, name) else {
            scan.not_understood(tags.shown(Path::new(&e.name)), "not a tag directory");
            continue;
        };
        let tag = Path::new(name.as_str());
        let current_dir = tag.join(paths::TAG_CURRENT);
        let current = match search {
            TempFileSearch::EveryLinkDir => link_dir(
                &tags,
                &current_dir,
                TempParent::TagCurrent,
                &mut scan.temp_files,
            ),
            TempFileSearch::BrokenLinksOnly => read_link_dir(
                &tags,
                &current_dir,
                None,
                TempParent::TagCurrent,
                &mut scan.temp_files,
            ),
        };
        let current = match current {
            Ok(l) => l.map_or(LinkState::Missing, |(_, l)| l),
            Err(e) => LinkState::Damaged(e.to_string()),
        };
        let mut index = Vec::new();
        let index_rel = tag.join(paths::TAG_INDEX);
        let listed = match sub_listed(&tags, &index_rel) {
            Ok(l) => l,
            Err(e) => {
                scan.not_understood(tags.shown(&index_rel), &format!("cannot be listed ({e})"));
                None
            }
        };
        if let Some((idx, index_entries)) = listed {
            for ie in index_entries {
                let at = Path::new(&ie.name);
                match ie.name_str().and_then(|s| Digest::from_hex(s).ok()) {
                    Some(d) if ie.kind == EntryKind::Dir => {
                        index.push(d);
                        // Listed for temp files only: the name is the history entry.
                        if search == TempFileSearch::BrokenLinksOnly {
                            continue;
                        }
                        match list(&idx, at) {
                            Ok(Some(inner)) => collect_temp(
                                &idx,
                                at,
                                &inner,
                                TempParent::TagIndex(d),
                                &mut scan.temp_files,
                            ),
                            Ok(None) => {}
                            Err(e) => scan
                                .not_understood(idx.shown(at), &format!("cannot be listed ({e})")),
                        }
                    }
                    _ => scan
                        .not_understood(idx.shown(at), "not a tag index entry named by a digest"),
                }
            }
        }
        match &current {
            LinkState::Ok(_) => {}
            LinkState::Damaged(why) => scan.not_understood(
                paths::tag_current_link(repo, &name),
                &format!("damaged tag link ({why})"),
            ),
            LinkState::Missing => scan.warnings.push(Warning::new(
                paths::tag_current_link(repo, &name),
                format!(
                    "tag link missing; keeping all {} manifests of the tag's history",
                    index.len()
                ),
            )),
        }
        scan.tags.push(Tag {
            name,
            current,
            index,
        });
    }
}

fn scan_layers(store: &Store, repo: &RepoName, search: TempFileSearch, scan: &mut RepoInventory) {
    let rel = paths::layers_dir(repo);
    let Some((layers, entries)) = repo_listed(store, &rel, scan, references_unknown) else {
        return;
    };
    for e in entries {
        let rel = Path::new(&e.name);
        let Some(d) = e.name_str().and_then(|s| Digest::from_hex(s).ok()) else {
            scan.not_understood(
                layers.shown(rel),
                "not a layer link directory named by a digest",
            );
            continue;
        };
        // Whatever it is, the registry may take it for a link to `d`: `d` is kept.
        scan.layers.push(d);
        if e.kind != EntryKind::Dir {
            scan.not_understood(layers.shown(rel), "a layer link that is no directory");
            continue;
        }
        // Listed for temp files only: the name is what the link stands for (its content
        // is not read in either search).
        if search == TempFileSearch::BrokenLinksOnly {
            continue;
        }
        match list(&layers, rel) {
            Ok(Some(inner)) => collect_temp(
                &layers,
                rel,
                &inner,
                TempParent::LayerLink(d),
                &mut scan.temp_files,
            ),
            Ok(None) => {}
            Err(e) => scan.not_understood(layers.shown(rel), &format!("cannot be listed ({e})")),
        }
    }
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

fn scan_uploads(store: &Store, repo: &RepoName, scan: &mut RepoInventory) {
    let dir = paths::uploads_dir(repo);
    let entries = match list(store, &dir) {
        Ok(Some(entries)) => entries,
        Ok(None) => return,
        Err(e) => return scan.not_understood(&dir, &format!("cannot be listed ({e})")),
    };
    for e in entries {
        let path = dir.join(&e.name);
        if e.kind != EntryKind::Dir {
            scan.not_understood(&path, "not an upload directory");
            continue;
        }
        let started_file = store
            .read(&paths::upload_started_at(&path), 256)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s.trim()).ok())
            .map(SystemTime::from);
        let st = match store.stat(&path) {
            Ok(Some(st)) => st,
            Ok(None) => continue,
            Err(e) => {
                scan.not_understood(&path, &format!("cannot be read ({e})"));
                continue;
            }
        };
        let bytes = tree_bytes(store, &path);
        scan.uploads.push(Upload {
            started: started_file.unwrap_or_else(|| mtime_of(&st)),
            dir: path,
            bytes,
        });
    }
}

/// Scans one repository. What it does not understand keeps the repository whole (see
/// [`RepoInventory::not_understood`]); nothing in it stops the run.
pub fn scan_repository(store: &Store, repo: &RepoName, search: TempFileSearch) -> RepoInventory {
    let mut scan = RepoInventory::new(repo.clone());
    scan_revisions(store, repo, search, &mut scan);
    scan_tags(store, repo, search, &mut scan);
    scan_layers(store, repo, search, &mut scan);
    scan_uploads(store, repo, &mut scan);
    scan.layers.shrink_to_fit();
    scan
}

/// One fan-out directory's blobs.
struct FanOutScan {
    blobs: Vec<Digest>,
    strays: Vec<Digest>,
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
            strays: vec![],
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
    let mut strays = Vec::new();
    let mut warnings = Vec::new();
    for e in &entries {
        let role = e
            .name_str()
            .map(|s| Role::BlobFanOut(fan_out).child_named(s));
        match role {
            Some(Role::BlobDir(d)) if e.kind == EntryKind::Dir => blobs.push(d),
            Some(Role::BlobDir(d)) => {
                // Never deleted nor followed; the registry may take it for blob `d`.
                strays.push(d);
                warnings.push(Warning::new(
                    dir.join(&e.name),
                    "a blob that is no directory; left alone, and the links naming it kept".into(),
                ));
            }
            _ => warnings.push(Warning::new(
                dir.join(&e.name),
                "not a blob directory named by its digest; left alone".into(),
            )),
        }
    }
    Ok(FanOutScan {
        blobs,
        strays,
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
    let mut strays = Vec::new();
    for s in scans {
        blobs.extend(s.blobs);
        strays.extend(s.strays);
        fan_outs.extend(s.fan_out);
        warnings.extend(s.warnings);
    }
    let mut inventory = BlobInventory::new(blobs, fan_outs, warnings);
    strays.sort_unstable();
    inventory.strays = strays;
    Ok(inventory)
}

/// Reads the size of blobs' data, for a report of what deleting them frees; through a
/// handle on each fan-out directory, so two components per path instead of eight.
pub struct BlobSizes(Option<BlobDirs>);

impl BlobSizes {
    pub fn new(store: &Store) -> Self {
        BlobSizes(BlobDirs::new(store).ok())
    }

    /// 0 when the data cannot be read.
    pub fn of(&self, d: &Digest) -> u64 {
        self.0
            .as_ref()
            .and_then(|b| b.stat_data(d).ok().flatten())
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

/// Which of `candidates`, revisions of `repo` no tag reaches, had their link written less
/// than `min_age` before `now`: a manifest PUT writes the revision link, then tags it,
/// and a run between the two must not take a revision that is about to be tagged (the
/// tag write would be refused and the push fail). A revision whose age cannot be read is
/// kept, with a warning. One stat per candidate, none when `min_age` is zero.
pub fn young_revisions(
    store: &Store,
    repo: &RepoName,
    candidates: &[Digest],
    min_age: Duration,
    now: SystemTime,
) -> YoungBlobs {
    let mut young = YoungBlobs::default();
    if min_age.is_zero() {
        return young;
    }
    for d in candidates {
        let link = paths::revision_dir(repo, d).join(paths::LINK);
        match store.stat(&link) {
            Ok(None) => {}
            Ok(Some(st))
                if now
                    .duration_since(mtime_of(&st))
                    .map_or(true, |a| a < min_age) =>
            {
                young.digests.push(*d)
            }
            Ok(Some(_)) => {}
            Err(e) => {
                young.digests.push(*d);
                young.warnings.push(Warning::new(
                    store.shown(&link),
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
    repos: Repositories,
    search: TempFileSearch,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<Option<Inventory>, GcError> {
    let scans: Vec<Option<RepoInventory>> = repos
        .names
        .par_iter()
        .map(|r| {
            if stop() {
                return None;
            }
            let mut scan = scan_repository(store, r, search);
            // The warning is the tree's, once, however many repositories it keeps.
            scan.kept_whole |= repos.kept_whole(r).next().is_some();
            Some(scan)
        })
        .collect();
    let Some(repositories) = scans.into_iter().collect::<Option<Vec<_>>>() else {
        return Ok(None);
    };
    let mut tree_warnings: Vec<Warning> = Vec::new();
    for w in repos
        .kept_whole
        .into_iter()
        .map(|(_, w)| w)
        .chain(repos.warnings)
    {
        if !tree_warnings.contains(&w) {
            tree_warnings.push(w);
        }
    }
    Ok(Some(Inventory {
        repositories,
        blobs: scan_blobs(store)?,
        keep_all_blobs: repos.keep_all_blobs,
        tree_warnings,
    }))
}

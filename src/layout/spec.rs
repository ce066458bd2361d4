//! The layout as a map both ways (as upstream's `paths.go`, plus its inverse): every
//! kind of path the registry writes as one typed value, [`path_for`] to build its path
//! and [`classify`] to tell a path back into its kind, names and digest.

use std::path::{Path, PathBuf};

use super::digest::{Digest, fan_out_name, parse_fan_out};
use super::names::{Component, RepoName, TagName, plain_component};
use super::paths::{self, *};
use super::role::Role;

/// One node of the registry's layout, with the names and digest its path holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathKind {
    StoreRoot,
    Docker,
    Registry,
    V2,
    Blobs,
    BlobsSha256,
    BlobFanOut(u8),
    BlobDir(Digest),
    BlobData(Digest),
    Repositories,
    RepoDir(RepoName),
    Manifests(RepoName),
    Revisions(RepoName),
    RevisionsSha256(RepoName),
    Revision {
        repo: RepoName,
        digest: Digest,
    },
    RevisionLink {
        repo: RepoName,
        digest: Digest,
    },
    Tags(RepoName),
    Tag {
        repo: RepoName,
        tag: TagName,
    },
    TagCurrent {
        repo: RepoName,
        tag: TagName,
    },
    TagCurrentLink {
        repo: RepoName,
        tag: TagName,
    },
    TagIndex {
        repo: RepoName,
        tag: TagName,
    },
    TagIndexSha256 {
        repo: RepoName,
        tag: TagName,
    },
    TagIndexEntry {
        repo: RepoName,
        tag: TagName,
        digest: Digest,
    },
    TagIndexLink {
        repo: RepoName,
        tag: TagName,
        digest: Digest,
    },
    Layers(RepoName),
    LayersSha256(RepoName),
    LayerDir {
        repo: RepoName,
        digest: Digest,
    },
    LayerLink {
        repo: RepoName,
        digest: Digest,
    },
    Uploads(RepoName),
    Upload {
        repo: RepoName,
        id: Component,
    },
    /// A file or directory inside an upload: `rest` is its path there (never empty).
    UploadEntry {
        repo: RepoName,
        id: Component,
        rest: Vec<Component>,
    },
    /// `name` (ending in `.tmp`) inside `dir`, one of the directories whose
    /// role [holds temp files](Role::holds_temp_files).
    TempFile {
        dir: Box<PathKind>,
        name: Component,
    },
}

/// The path of `kind`, relative to the store root.
pub fn path_for(kind: &PathKind) -> PathBuf {
    use PathKind::*;
    match kind {
        StoreRoot => PathBuf::new(),
        Docker => PathBuf::from(DOCKER),
        Registry => Path::new(DOCKER).join(REGISTRY),
        V2 => v2(),
        Blobs => v2().join(BLOBS),
        BlobsSha256 => blobs_root(),
        BlobFanOut(p) => blob_prefix_dir(&fan_out_name(*p)),
        BlobDir(d) => blob_dir(d),
        BlobData(d) => blob_data(d),
        Repositories => repositories_root(),
        RepoDir(r) => repo_dir(r),
        Manifests(r) => manifests_dir(r),
        Revisions(r) => manifests_dir(r).join(REVISIONS),
        RevisionsSha256(r) => revisions_dir(r),
        Revision { repo, digest } => revision_dir(repo, digest),
        RevisionLink { repo, digest } => revision_dir(repo, digest).join(LINK),
        Tags(r) => tags_dir(r),
        Tag { repo, tag } => tag_dir(repo, tag),
        TagCurrent { repo, tag } => tag_dir(repo, tag).join(TAG_CURRENT),
        TagCurrentLink { repo, tag } => tag_current_link(repo, tag),
        TagIndex { repo, tag } => tag_dir(repo, tag).join(INDEX),
        TagIndexSha256 { repo, tag } => tag_index_dir(repo, tag),
        TagIndexEntry { repo, tag, digest } => tag_index_entry(repo, tag, digest),
        TagIndexLink { repo, tag, digest } => tag_index_entry(repo, tag, digest).join(LINK),
        Layers(r) => repo_dir(r).join(LAYERS),
        LayersSha256(r) => layers_dir(r),
        LayerDir { repo, digest } => layer_link_dir_named(repo, &digest.hex()),
        LayerLink { repo, digest } => layer_link_dir_named(repo, &digest.hex()).join(LINK),
        Uploads(r) => uploads_dir(r),
        Upload { repo, id } => upload_dir(repo, id.as_str()),
        UploadEntry { repo, id, rest } => rest
            .iter()
            .fold(upload_dir(repo, id.as_str()), |p, c| p.join(c.as_str())),
        TempFile { dir, name } => path_for(dir).join(name.as_str()),
    }
}

impl PathKind {
    /// The role of this node, without its names.
    pub fn role(&self) -> Role {
        use PathKind as K;
        match self {
            K::StoreRoot => Role::StoreRoot,
            K::Docker => Role::Docker,
            K::Registry => Role::Registry,
            K::V2 => Role::V2,
            K::Blobs => Role::Blobs,
            K::BlobsSha256 => Role::BlobsSha256,
            K::BlobFanOut(p) => Role::BlobFanOut(*p),
            K::BlobDir(d) => Role::BlobDir(*d),
            K::BlobData(d) => Role::BlobData(*d),
            K::Repositories => Role::Repositories,
            K::RepoDir(_) => Role::RepoDir,
            K::Manifests(_) => Role::Manifests,
            K::Revisions(_) => Role::Revisions,
            K::RevisionsSha256(_) => Role::RevisionsSha256,
            K::Revision { digest, .. } => Role::Revision(*digest),
            K::RevisionLink { digest, .. } => Role::RevisionLink(*digest),
            K::Tags(_) => Role::Tags,
            K::Tag { .. } => Role::Tag,
            K::TagCurrent { .. } => Role::TagCurrent,
            K::TagCurrentLink { .. } => Role::TagCurrentLink,
            K::TagIndex { .. } => Role::TagIndex,
            K::TagIndexSha256 { .. } => Role::TagIndexSha256,
            K::TagIndexEntry { digest, .. } => Role::TagIndexEntry(*digest),
            K::TagIndexLink { digest, .. } => Role::TagIndexLink(*digest),
            K::Layers(_) => Role::Layers,
            K::LayersSha256(_) => Role::LayersSha256,
            K::LayerDir { digest, .. } => Role::LayerDir(*digest),
            K::LayerLink { digest, .. } => Role::LayerLink(*digest),
            K::Uploads(_) => Role::Uploads,
            K::Upload { .. } => Role::Upload,
            K::UploadEntry { rest, .. } if rest.len() == 1 && rest[0].as_str() == DATA => {
                Role::UploadData
            }
            K::UploadEntry { .. } => Role::UploadEntry,
            K::TempFile { .. } => Role::TempFile,
        }
    }

    /// The repository the path lies in, if any.
    pub fn repo(&self) -> Option<&RepoName> {
        use PathKind as K;
        match self {
            K::RepoDir(r)
            | K::Manifests(r)
            | K::Revisions(r)
            | K::RevisionsSha256(r)
            | K::Tags(r)
            | K::Layers(r)
            | K::LayersSha256(r)
            | K::Uploads(r) => Some(r),
            K::Revision { repo, .. }
            | K::RevisionLink { repo, .. }
            | K::Tag { repo, .. }
            | K::TagCurrent { repo, .. }
            | K::TagCurrentLink { repo, .. }
            | K::TagIndex { repo, .. }
            | K::TagIndexSha256 { repo, .. }
            | K::TagIndexEntry { repo, .. }
            | K::TagIndexLink { repo, .. }
            | K::LayerDir { repo, .. }
            | K::LayerLink { repo, .. }
            | K::Upload { repo, .. }
            | K::UploadEntry { repo, .. } => Some(repo),
            K::TempFile { dir, .. } => dir.repo(),
            _ => None,
        }
    }
}

/// Tells a path relative to the store root (`/`-separated, no leading `/`) back into
/// its kind; `None` for anything the registry does not write there: `.`, `..` or empty
/// components, digests that are not 64 lowercase hex, a blob outside its fan-out
/// directory, repository components starting with `_`, unknown names.
pub fn classify(rel: &str) -> Option<PathKind> {
    if rel.is_empty() {
        return Some(PathKind::StoreRoot);
    }
    let parts: Vec<&str> = rel.split('/').collect();
    if !parts.iter().all(|c| plain_component(c)) {
        return None;
    }
    match parts.as_slice() {
        [DOCKER] => Some(PathKind::Docker),
        [DOCKER, REGISTRY] => Some(PathKind::Registry),
        [DOCKER, REGISTRY, V2_DIR] => Some(PathKind::V2),
        [DOCKER, REGISTRY, V2_DIR, BLOBS, rest @ ..] => classify_blobs(rest),
        [DOCKER, REGISTRY, V2_DIR, REPOSITORIES, rest @ ..] => classify_repositories(rest),
        _ => None,
    }
}

/// As [`classify`], for a [`Path`] (`None` unless it is UTF-8).
pub fn classify_path(rel: &Path) -> Option<PathKind> {
    classify(rel.to_str()?)
}

fn hex(name: &str) -> Option<Digest> {
    Digest::from_hex(name).ok()
}

/// A directory holding one file of the layout (`file`, whose kind is `made`) and, from
/// registry 3.1+, temp files.
fn holding(dir: PathKind, file: &str, made: PathKind, rest: &[&str]) -> Option<PathKind> {
    match rest {
        [] => Some(dir),
        [f] if *f == file => Some(made),
        [t] if paths::is_temp_file(t) => Some(PathKind::TempFile {
            dir: Box::new(dir),
            name: Component::new(t).ok()?,
        }),
        _ => None,
    }
}

fn classify_blobs(rest: &[&str]) -> Option<PathKind> {
    match rest {
        [] => Some(PathKind::Blobs),
        [SHA256] => Some(PathKind::BlobsSha256),
        [SHA256, p] => parse_fan_out(p).map(PathKind::BlobFanOut),
        [SHA256, p, h, rest @ ..] => {
            let d = hex(h).filter(|d| Some(d.fan_out()) == parse_fan_out(p))?;
            holding(PathKind::BlobDir(d), DATA, PathKind::BlobData(d), rest)
        }
        _ => None,
    }
}

fn classify_repositories(parts: &[&str]) -> Option<PathKind> {
    if parts.is_empty() {
        return Some(PathKind::Repositories);
    }
    // Repository components never start with `_`: the first one that does ends the name.
    let at = parts
        .iter()
        .position(|c| c.starts_with('_'))
        .unwrap_or(parts.len());
    let repo = RepoName::new(&parts[..at].join("/")).ok()?;
    match &parts[at..] {
        [] => Some(PathKind::RepoDir(repo)),
        [MANIFESTS, rest @ ..] => classify_manifests(repo, rest),
        [LAYERS] => Some(PathKind::Layers(repo)),
        [LAYERS, SHA256] => Some(PathKind::LayersSha256(repo)),
        [LAYERS, SHA256, h, rest @ ..] => {
            let digest = hex(h)?;
            let link = PathKind::LayerLink {
                repo: repo.clone(),
                digest,
            };
            holding(PathKind::LayerDir { repo, digest }, LINK, link, rest)
        }
        [UPLOADS] => Some(PathKind::Uploads(repo)),
        [UPLOADS, id, rest @ ..] => {
            let id = Component::new(id).ok()?;
            if rest.is_empty() {
                return Some(PathKind::Upload { repo, id });
            }
            let rest: Option<Vec<Component>> =
                rest.iter().map(|c| Component::new(c).ok()).collect();
            Some(PathKind::UploadEntry {
                repo,
                id,
                rest: rest?,
            })
        }
        _ => None,
    }
}

fn classify_manifests(repo: RepoName, rest: &[&str]) -> Option<PathKind> {
    use PathKind as K;
    match rest {
        [] => Some(K::Manifests(repo)),
        [REVISIONS] => Some(K::Revisions(repo)),
        [REVISIONS, SHA256] => Some(K::RevisionsSha256(repo)),
        [REVISIONS, SHA256, h, rest @ ..] => {
            let digest = hex(h)?;
            let link = K::RevisionLink {
                repo: repo.clone(),
                digest,
            };
            holding(K::Revision { repo, digest }, LINK, link, rest)
        }
        [TAGS] => Some(K::Tags(repo)),
        [TAGS, t, rest @ ..] => classify_tag(repo, TagName::new(t).ok()?, rest),
        _ => None,
    }
}

fn classify_tag(repo: RepoName, tag: TagName, rest: &[&str]) -> Option<PathKind> {
    use PathKind as K;
    let (r, t) = (repo.clone(), tag.clone());
    match rest {
        [] => Some(K::Tag { repo, tag }),
        [TAG_CURRENT, rest @ ..] => {
            let link = K::TagCurrentLink { repo: r, tag: t };
            holding(K::TagCurrent { repo, tag }, LINK, link, rest)
        }
        [INDEX] => Some(K::TagIndex { repo, tag }),
        [INDEX, SHA256] => Some(K::TagIndexSha256 { repo, tag }),
        [INDEX, SHA256, h, rest @ ..] => {
            let digest = hex(h)?;
            let link = K::TagIndexLink {
                repo: r,
                tag: t,
                digest,
            };
            holding(K::TagIndexEntry { repo, tag, digest }, LINK, link, rest)
        }
        _ => None,
    }
}

/// Classifies a path relative to the store root as one of the registry's link files, or
/// `None` for anything else (blob data, uploads, names the registry never writes).
pub fn link_role(rel: &str) -> Option<LinkRole> {
    classify(rel)?.role().link()
}

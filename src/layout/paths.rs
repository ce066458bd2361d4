//! Every path of the distribution layout, built in one place (as upstream's paths.go).
//! Paths are relative to the storage root (the registry's `rootdirectory`).

use std::path::{Path, PathBuf};

use super::digest::Digest;
use super::names::{RepoName, TagName};

/// Names of the directories and files the registry writes, one constant each. Only the
/// layout spells them; everything else asks for a path or a role.
pub const DOCKER: &str = "docker";
pub const REGISTRY: &str = "registry";
pub const V2_DIR: &str = "v2";
pub const BLOBS: &str = "blobs";
pub const REPOSITORIES: &str = "repositories";
/// The digest algorithm's directory (`blobs/sha256`, `revisions/sha256`, ...).
pub const SHA256: &str = "sha256";
pub const MANIFESTS: &str = "_manifests";
pub const REVISIONS: &str = "revisions";
pub const TAGS: &str = "tags";
/// Inside a tag's directory: the directory holding the link to what it names now.
pub const TAG_CURRENT: &str = "current";
/// Inside a tag's directory: the directory of every manifest it ever named.
pub const INDEX: &str = "index";
/// Inside a tag's directory: one directory per manifest it ever named.
pub const TAG_INDEX: &str = "index/sha256";
pub const LAYERS: &str = "_layers";
pub const UPLOADS: &str = "_uploads";
/// The file name every blob's content has.
pub const DATA: &str = "data";
/// The file name every link file has.
pub const LINK: &str = "link";
/// Inside an upload's directory: when it started (RFC 3339).
pub const STARTED_AT: &str = "startedat";
/// What registry 3.1+ appends to a file it writes before renaming it into place.
pub const TEMP_SUFFIX: &str = ".tmp";
/// The one file a blob directory or a link directory holds, whichever it is.
pub const SINGLE_FILES: [&str; 2] = [DATA, LINK];

/// Everything the registry stores lives below this; nothing else is ever touched.
pub const V2: &str = "docker/registry/v2";

pub fn v2() -> PathBuf {
    PathBuf::from(V2)
}

pub fn blobs_root() -> PathBuf {
    v2().join(BLOBS).join(SHA256)
}

pub fn blob_prefix_dir(prefix: &str) -> PathBuf {
    blobs_root().join(prefix)
}

pub fn blob_dir(d: &Digest) -> PathBuf {
    blobs_root().join(blob_dir_in_blobs_root(d))
}

pub fn blob_data(d: &Digest) -> PathBuf {
    blobs_root().join(blob_data_in_blobs_root(d))
}

pub fn blob_dir_in_blobs_root(d: &Digest) -> PathBuf {
    PathBuf::from(d.prefix()).join(d.hex())
}

/// A blob's data file relative to [`blobs_root`], for reads through a handle on it.
pub fn blob_data_in_blobs_root(d: &Digest) -> PathBuf {
    blob_dir_in_blobs_root(d).join(DATA)
}

/// A blob's data file relative to its fan-out directory ([`blob_prefix_dir`]), for reads
/// through a handle on it.
pub fn blob_data_in_fan_out(d: &Digest) -> PathBuf {
    PathBuf::from(d.hex()).join(DATA)
}

pub fn repositories_root() -> PathBuf {
    v2().join(REPOSITORIES)
}

pub fn repo_dir(repo: &RepoName) -> PathBuf {
    repositories_root().join(repo.as_path())
}

pub fn manifests_dir(repo: &RepoName) -> PathBuf {
    repo_dir(repo).join(MANIFESTS)
}

pub fn revisions_dir(repo: &RepoName) -> PathBuf {
    manifests_dir(repo).join(REVISIONS).join(SHA256)
}

pub fn revision_dir(repo: &RepoName, d: &Digest) -> PathBuf {
    revisions_dir(repo).join(d.hex())
}

pub fn tags_dir(repo: &RepoName) -> PathBuf {
    manifests_dir(repo).join(TAGS)
}

pub fn tag_dir(repo: &RepoName, tag: &TagName) -> PathBuf {
    tags_dir(repo).join(tag.as_str())
}

pub fn tag_current_link(repo: &RepoName, tag: &TagName) -> PathBuf {
    tag_dir(repo, tag).join(TAG_CURRENT).join(LINK)
}

pub fn tag_index_dir(repo: &RepoName, tag: &TagName) -> PathBuf {
    tag_dir(repo, tag).join(INDEX).join(SHA256)
}

pub fn tag_index_entry(repo: &RepoName, tag: &TagName, d: &Digest) -> PathBuf {
    tag_index_dir(repo, tag).join(d.hex())
}

pub fn layers_dir(repo: &RepoName) -> PathBuf {
    repo_dir(repo).join(LAYERS).join(SHA256)
}

pub fn layer_link_dir_named(repo: &RepoName, name: &str) -> PathBuf {
    layers_dir(repo).join(name)
}

pub fn uploads_dir(repo: &RepoName) -> PathBuf {
    repo_dir(repo).join(UPLOADS)
}

pub fn upload_dir(repo: &RepoName, id: &str) -> PathBuf {
    uploads_dir(repo).join(id)
}

/// An upload's `startedat` file, given the upload's directory.
pub fn upload_started_at(upload_dir: &Path) -> PathBuf {
    upload_dir.join(STARTED_AT)
}

/// Whether an entry of a repository directory makes it a repository: `_manifests`, or
/// `_layers` / `_uploads` alone (blobs pushed, no manifest yet).
pub fn marks_repository(name: &std::ffi::OsStr) -> bool {
    name == MANIFESTS || name == LAYERS || name == UPLOADS
}

/// Whether a file name is a leftover of registry 3.1+'s write-to-temp-and-rename.
pub fn is_temp_file(name: &str) -> bool {
    name.ends_with(TEMP_SUFFIX)
}

/// What a link file is, told by its path: the registry writes each kind at a fixed place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRole {
    /// `_manifests/revisions/sha256/<hex>/link`: the repository holds manifest `<hex>`.
    Revision(Digest),
    /// `_layers/sha256/<hex>/link`: the repository may serve blob `<hex>`.
    Layer(Digest),
    /// `_manifests/tags/<tag>/index/sha256/<hex>/link`: the tag once named `<hex>`.
    TagIndex(Digest),
    /// `_manifests/tags/<tag>/current/link`: the digest is only in the file's content.
    TagCurrent,
}

impl LinkRole {
    /// The digest the path names (none for a tag's current link).
    pub fn digest(&self) -> Option<Digest> {
        match self {
            LinkRole::Revision(d) | LinkRole::Layer(d) | LinkRole::TagIndex(d) => Some(*d),
            LinkRole::TagCurrent => None,
        }
    }
}

/// Whether `rel` lies inside `docker/registry/v2/` (a guard for every deletion).
pub fn is_inside_v2(rel: &Path) -> bool {
    rel.starts_with(V2) && rel != Path::new(V2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_paths_from_the_root_and_from_the_blobs_root_agree() {
        let d = Digest::from_hex(&"ab".repeat(32)).unwrap();
        let want = format!(
            "docker/registry/v2/blobs/sha256/ab/{}/data",
            "ab".repeat(32)
        );
        assert_eq!(blob_data(&d), PathBuf::from(&want));
        assert_eq!(
            blobs_root().join(blob_data_in_blobs_root(&d)),
            PathBuf::from(want)
        );
        assert_eq!(blob_data(&d).parent(), Some(blob_dir(&d).as_path()));
    }
}

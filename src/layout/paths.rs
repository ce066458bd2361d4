//! Every path of the distribution layout, built in one place (as upstream's paths.go).
//! Paths are relative to the storage root (the registry's `rootdirectory`).

use std::path::{Path, PathBuf};

use super::digest::Digest;
use super::names::{RepoName, TagName};

/// Everything the registry stores lives below this; nothing else is ever touched.
pub const V2: &str = "docker/registry/v2";

pub fn v2() -> PathBuf {
    PathBuf::from(V2)
}

pub fn blobs_root() -> PathBuf {
    v2().join("blobs/sha256")
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

fn blob_dir_in_blobs_root(d: &Digest) -> PathBuf {
    PathBuf::from(d.prefix()).join(d.hex())
}

/// A blob's data file relative to [`blobs_root`], for reads through a handle on it.
pub fn blob_data_in_blobs_root(d: &Digest) -> PathBuf {
    blob_dir_in_blobs_root(d).join("data")
}

pub fn repositories_root() -> PathBuf {
    v2().join("repositories")
}

pub fn repo_dir(repo: &RepoName) -> PathBuf {
    repositories_root().join(repo.as_path())
}

pub fn manifests_dir(repo: &RepoName) -> PathBuf {
    repo_dir(repo).join("_manifests")
}

pub fn revisions_dir(repo: &RepoName) -> PathBuf {
    manifests_dir(repo).join("revisions/sha256")
}

pub fn revision_dir(repo: &RepoName, d: &Digest) -> PathBuf {
    revisions_dir(repo).join(d.hex())
}

pub fn tags_dir(repo: &RepoName) -> PathBuf {
    manifests_dir(repo).join("tags")
}

pub fn tag_dir(repo: &RepoName, tag: &TagName) -> PathBuf {
    tags_dir(repo).join(tag.as_str())
}

/// Inside a tag's directory: the directory holding the link to what it names now.
pub const TAG_CURRENT: &str = "current";
/// Inside a tag's directory: one directory per manifest it ever named.
pub const TAG_INDEX: &str = "index/sha256";

pub fn tag_current_link(repo: &RepoName, tag: &TagName) -> PathBuf {
    tag_dir(repo, tag).join(TAG_CURRENT).join(LINK)
}

pub fn tag_index_dir(repo: &RepoName, tag: &TagName) -> PathBuf {
    tag_dir(repo, tag).join(TAG_INDEX)
}

pub fn tag_index_entry(repo: &RepoName, tag: &TagName, d: &Digest) -> PathBuf {
    tag_index_dir(repo, tag).join(d.hex())
}

pub fn layers_dir(repo: &RepoName) -> PathBuf {
    repo_dir(repo).join("_layers/sha256")
}

pub fn layer_link_dir_named(repo: &RepoName, name: &str) -> PathBuf {
    layers_dir(repo).join(name)
}

pub fn uploads_dir(repo: &RepoName) -> PathBuf {
    repo_dir(repo).join("_uploads")
}

pub fn upload_dir(repo: &RepoName, id: &str) -> PathBuf {
    uploads_dir(repo).join(id)
}

/// The file name every link file has.
pub const LINK: &str = "link";

/// Whether a store-relative path (`/`-separated) names a link file: a file called `link`
/// inside a repository (revisions, tags' current and index entries, `_layers`), never
/// under `_uploads`. Its content is `sha256:` and 64 hex (see `digest::parse_link`).
pub fn is_link_file(rel: &str) -> bool {
    let Some(inside) = rel
        .strip_prefix(V2)
        .and_then(|r| r.strip_prefix("/repositories/"))
    else {
        return false;
    };
    let mut parts: Vec<&str> = inside.split('/').collect();
    parts.pop() == Some(LINK)
        && parts.len() >= 2
        && !parts.contains(&"_uploads")
        && parts.iter().any(|p| *p == "_manifests" || *p == "_layers")
}

/// Whether a file name is a leftover of registry 3.1+'s write-to-temp-and-rename.
pub fn is_temp_file(name: &str) -> bool {
    name.ends_with(".tmp")
}

/// Whether `rel` lies inside `docker/registry/v2/` (a guard for every deletion).
pub fn is_inside_v2(rel: &Path) -> bool {
    rel.starts_with(V2) && rel != Path::new(V2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_files_are_told_from_other_files() {
        let r = RepoName::new("team/app").unwrap();
        let t = TagName::new("v1").unwrap();
        let d = Digest::from_hex(&"ab".repeat(32)).unwrap();
        let s = |p: PathBuf| p.display().to_string();
        for link in [
            s(revision_dir(&r, &d).join(LINK)),
            s(tag_current_link(&r, &t)),
            s(tag_index_entry(&r, &t, &d).join(LINK)),
            s(layer_link_dir_named(&r, &d.hex()).join(LINK)),
        ] {
            assert!(is_link_file(&link), "{link}");
        }
        for other in [
            s(blob_data(&d)),
            s(upload_dir(&r, "u1").join(LINK)),
            s(upload_dir(&r, "u1").join("startedat")),
            format!("{V2}/repositories/link"),
            "repo/_manifests/tags/t/current/link".to_string(),
            s(tag_current_link(&r, &t)) + ".tmp",
        ] {
            assert!(!is_link_file(&other), "{other}");
        }
    }

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

//! Looking at stores: blob and repository directories, listings with sizes and modes,
//! link files, and the images the fixture describes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

use crate::fixture::Fixture;

pub const V2: &str = "docker/registry/v2";

pub fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("sha256 digest")
}

pub fn blob_dir(store: &Path, digest: &str) -> PathBuf {
    let h = hex(digest);
    store.join(format!("{V2}/blobs/sha256/{}/{h}", &h[..2]))
}

pub fn repo_dir(store: &Path, repo: &str) -> PathBuf {
    store.join(format!("{V2}/repositories/{repo}"))
}

/// The digests of the blob directories (blobs/sha256/*/*) present in a store.
pub fn blob_dirs(store: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let root = store.join(format!("{V2}/blobs/sha256"));
    for prefix in fs::read_dir(&root).expect("blobs/sha256") {
        let prefix = prefix.unwrap().path();
        for blob in fs::read_dir(&prefix).expect("blob prefix directory") {
            let name = blob.unwrap().file_name().to_string_lossy().into_owned();
            out.insert(format!("sha256:{name}"));
        }
    }
    out
}

/// One entry of a full listing: type, size, and modification time of a store path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub dir: bool,
    pub size: u64,
    pub mtime: (i64, i64),
}

/// Every path under `root` (relative), with its type, size and mtime.
pub fn listing(root: &Path) -> BTreeMap<String, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
        for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = e.unwrap().path();
            let m = fs::symlink_metadata(&path).unwrap();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.insert(
                rel,
                Entry {
                    dir: m.is_dir(),
                    size: if m.is_dir() { 0 } else { m.len() },
                    mtime: (m.mtime(), m.mtime_nsec()),
                },
            );
            if m.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The listing without modification times (for comparing stores whose directories
/// legitimately changed).
pub fn shapes(l: &BTreeMap<String, Entry>) -> BTreeMap<String, (bool, u64)> {
    l.iter()
        .map(|(p, e)| (p.clone(), (e.dir, e.size)))
        .collect()
}

/// Every file named `link` in a store, with its content.
pub fn links(store: &Path) -> BTreeMap<String, Vec<u8>> {
    listing(store)
        .into_iter()
        .filter(|(p, e)| !e.dir && (p == "link" || p.ends_with("/link")))
        .map(|(p, _)| {
            let content = fs::read(store.join(&p)).unwrap();
            (p, content)
        })
        .collect()
}

/// Existing `_layers` links (store-relative) of these blobs, in any repository.
pub fn layer_links_of(fx: &Fixture, store: &Path, digests: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for repo in fx.json["repositories"].as_array().unwrap() {
        let repo = repo.as_str().unwrap();
        for d in digests {
            let rel = format!("{V2}/repositories/{repo}/_layers/sha256/{}/link", hex(d));
            if store.join(&rel).is_file() {
                out.insert(rel);
            }
        }
    }
    out
}

pub fn str_set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Digests of an image entry: its manifest and every blob it references directly.
pub fn image_blobs(e: &Value) -> BTreeSet<String> {
    let mut out = str_set(&e["blobs"]);
    out.insert(e["digest"].as_str().unwrap().to_string());
    out
}

pub fn short(set: &BTreeSet<String>) -> Vec<&str> {
    set.iter().map(|d| &d[..19.min(d.len())]).collect()
}

/// How long a test took after the shared fixture was built (which the first test waits
/// for), to see where the time goes.
pub fn report_time(test: &str, t0: Instant) {
    eprintln!(
        "{test}: {:.2} s (after the fixture)",
        t0.elapsed().as_secs_f64()
    );
}

//! One test's places (store, mount point, state directory), the stores tests start
//! from, and the checks of a store on disk after a run.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common;
use crate::common::store::StoreBuilder;

// ---- places ------------------------------------------------------------------------

/// One test's directories: the backing store, the mount point and the state directory.
pub struct Env {
    pub storage: PathBuf,
    pub mnt: PathBuf,
    pub state: PathBuf,
    // Last, so the directories go after everything using them.
    pub _dir: tempfile::TempDir,
}

/// Fresh directories; `None` when FUSE is unavailable outside CI.
pub fn env() -> Option<Env> {
    let (dir, storage, mnt) = common::daemon::fuse_dirs()?;
    Some(Env {
        storage,
        mnt,
        state: dir.path().join("state"),
        _dir: dir,
    })
}

pub fn v2(storage: &Path) -> PathBuf {
    storage.join("docker/registry/v2")
}

pub fn blob_data(root: &Path, hex: &str) -> PathBuf {
    v2(root)
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// Writes a synthetic store of `blobs` blobs with scripts/gen-store.py; returns its
/// gen-store.json.
pub fn gen_store(storage: &Path, blobs: u32, garbage_fraction: f64, seed: u32) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gen-store.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(storage)
        .args(["--blobs", &blobs.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--garbage-fraction", &garbage_fraction.to_string()])
        .arg("--quiet")
        .output()
        .expect("python3 scripts/gen-store.py");
    assert!(
        out.status.success(),
        "gen-store.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&fs::read(storage.join("gen-store.json")).unwrap()).unwrap()
}

/// A store holding one tagged image (`app:v1`) and nothing to collect.
pub fn one_tagged_image(storage: &Path, salt: &str) {
    let b = StoreBuilder::new(storage);
    let (mf, _) = b.image("app", &[b.blob(b"l")], salt);
    b.tag("app", "v1", &mf);
}

// ---- the store, checked on disk --------------------------------------------------------

/// Hex names of every blob directory.
pub fn blob_set(storage: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(fans) = fs::read_dir(v2(storage).join("blobs/sha256")) else {
        return out;
    };
    for fan in fans {
        let fan = fan.unwrap().path();
        for b in fs::read_dir(&fan).unwrap() {
            out.insert(b.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    out
}

pub fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Every path under docker/, with file sizes.
pub fn listing(storage: &Path) -> Vec<(String, u64)> {
    StoreBuilder {
        root: storage.join("docker"),
    }
    .listing()
}

pub fn digests_named_by(manifest: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |d: &Value| {
        if let Some(s) = d.as_str() {
            out.push(s.to_string());
        }
    };
    push(&manifest["config"]["digest"]);
    for key in ["layers", "manifests", "blobs"] {
        for d in manifest[key].as_array().into_iter().flatten() {
            if d.get("urls").is_none() {
                push(&d["digest"]);
            }
        }
    }
    for d in manifest["fsLayers"].as_array().into_iter().flatten() {
        push(&d["blobSum"]);
    }
    out
}

/// What a stop must never leave behind: every blob directory has its data, every link
/// (layers, revisions, tags) names a blob that exists, and every blob a revision's
/// manifest names exists. Returns how many links were checked.
pub fn assert_consistent(storage: &Path) -> usize {
    for hex in blob_set(storage) {
        assert!(
            blob_data(storage, &hex).is_file(),
            "blob directory {hex} without its data file"
        );
    }
    let mut files = Vec::new();
    walk(&v2(storage).join("repositories"), &mut files);
    let mut links = 0;
    for f in files.iter().filter(|f| f.file_name().unwrap() == "link") {
        let body = fs::read(f).unwrap();
        let d = regfs::layout::parse_link(&body)
            .unwrap_or_else(|e| panic!("{}: damaged link: {e:?}", f.display()));
        let hex = d.hex();
        assert!(
            blob_data(storage, &hex).is_file(),
            "{} names blob {hex}, which is gone",
            f.display()
        );
        links += 1;
        if f.to_string_lossy().contains("/_manifests/revisions/") {
            let m: Value = serde_json::from_slice(&fs::read(blob_data(storage, &hex)).unwrap())
                .unwrap_or_else(|e| panic!("manifest {hex}: {e}"));
            for named in digests_named_by(&m) {
                let h = named.strip_prefix("sha256:").unwrap_or(&named);
                assert!(
                    blob_data(storage, h).is_file(),
                    "manifest {hex} (revision {}) names blob {h}, which is gone",
                    f.display()
                );
            }
        }
    }
    links
}

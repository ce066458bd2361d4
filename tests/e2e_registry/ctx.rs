//! The images a scenario pushes (`scripts/oci-images.py --sample --json`) and [`Ctx`],
//! what a scenario's processes share: skopeo pushes and pulls with their verification,
//! `regfs status`/`jobs`, and looks at the store and the registry's log.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::common::describe_output;
use crate::support::{
    ACCEPT, REGISTRY_PASSWORD, REGISTRY_USER, file_digest, hex, hex_of, http, run, script, short,
    text, walk,
};
use crate::{BIN, EROFS_TEXT, V2};

// ---------------------------------------------------------------------------------------
// The images (scripts/oci-images.py --sample --json)

#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub digest: String,
    pub kind: String,
    /// Every blob a full pull needs (children manifests included, itself excluded).
    pub blobs: Vec<String>,
}

impl Image {
    pub fn all_blobs(&self) -> BTreeSet<String> {
        let mut s: BTreeSet<String> = self.blobs.iter().cloned().collect();
        s.insert(self.digest.clone());
        s
    }
}

pub fn generate_images(oci: &Path) -> BTreeMap<String, Image> {
    let mut cmd = Command::new("python3");
    cmd.arg(script()).arg(oci).args(["--sample", "--json"]);
    let out = run(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "oci-images.py: {}",
        describe_output(&out)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("oci-images.py --json");
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| s.as_str().expect("string").to_string())
            .collect()
    };
    v["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|e| {
            let img = Image {
                name: e["name"].as_str().unwrap().to_string(),
                digest: e["digest"].as_str().unwrap().to_string(),
                kind: e["kind"].as_str().unwrap().to_string(),
                blobs: strs(&e["blobs"]),
            };
            (img.name.clone(), img)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// One test's world: a mount, a registry on it, skopeo

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Default,
    DeleteUntagged,
}

/// What a scenario's processes share (also with the pull loop's thread).
pub struct Ctx {
    pub store: PathBuf,
    pub mnt: PathBuf,
    pub state: PathBuf,
    pub oci: PathBuf,
    pub pulls: PathBuf,
    pub skopeo_tmp: PathBuf,
    pub skopeo_env: Vec<(String, String)>,
    pub skopeo_ids: (u32, u32),
    pub port: u16,
    pub images: BTreeMap<String, Image>,
    pub registry_log: PathBuf,
    pub daemon_log: PathBuf,
    pub counter: AtomicU64,
}

impl Ctx {
    pub fn image(&self, name: &str) -> &Image {
        self.images
            .get(name)
            .unwrap_or_else(|| panic!("oci-images.py made no image {name}"))
    }

    pub fn skopeo(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("skopeo");
        cmd.env_clear()
            .envs(self.skopeo_env.iter().map(|(k, v)| (k, v)))
            .uid(self.skopeo_ids.0)
            .gid(self.skopeo_ids.1)
            .current_dir(&self.skopeo_tmp)
            .args(["--insecure-policy", "--command-timeout", "60s", "--tmpdir"])
            .arg(&self.skopeo_tmp)
            .args(args);
        run(cmd, Duration::from_secs(90))
    }

    /// skopeo copy oci:LAYOUT:IMAGE docker://127.0.0.1:PORT/DEST (a tag or `@digest`).
    pub fn push(&self, image: &str, dest: &str) -> Output {
        let creds = format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}");
        let src = format!("oci:{}:{image}", self.oci.display());
        let dst = format!("docker://127.0.0.1:{}/{dest}", self.port);
        let mut args = vec![
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-creds",
            &creds,
        ];
        if self.image(image).kind == "index" {
            args.push("--all");
        }
        args.extend([src.as_str(), dst.as_str()]);
        self.skopeo(&args)
    }

    pub fn push_ok(&self, image: &str, dest: &str) {
        let out = self.push(image, dest);
        assert!(
            out.status.success(),
            "push {image} to {dest}: {}",
            describe_output(&out)
        );
        let (repo, reference) = dest
            .split_once('@')
            .or_else(|| dest.rsplit_once(':'))
            .unwrap();
        let got = self.manifest_digest(repo, reference);
        assert_eq!(
            got.as_deref(),
            Ok(self.image(image).digest.as_str()),
            "{dest} after pushing {image}"
        );
    }

    /// The digest of the manifest the registry serves for REPO:REF, or its HTTP status.
    pub fn manifest_digest(&self, repo: &str, reference: &str) -> Result<String, String> {
        let (st, body) = http(
            self.port,
            "GET",
            &format!("/v2/{repo}/manifests/{reference}"),
            Some(ACCEPT),
        )?;
        if st != 200 {
            return Err(format!("HTTP {st}"));
        }
        Ok(format!("sha256:{}", hex_of(&Sha256::digest(&body))))
    }

    /// Pulls REFERENCE (REPO:TAG or REPO@DIGEST) with skopeo into a `dir:` layout and checks
    /// that it is `image`, whole: its manifest, every blob and child manifest, each file
    /// matching its digest.
    pub fn pull(&self, reference: &str, image: &str) -> Result<(), String> {
        let img = self.image(image);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let dest = self.pulls.join(format!("{n}-{image}"));
        let creds = format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}");
        let src = format!("docker://127.0.0.1:{}/{reference}", self.port);
        let dst = format!("dir:{}", dest.display());
        let mut args = vec![
            "copy",
            "--quiet",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--src-creds",
            &creds,
        ];
        if img.kind == "index" {
            args.push("--all");
        }
        args.extend([src.as_str(), dst.as_str()]);
        let out = self.skopeo(&args);
        let r = if out.status.success() {
            verify_dir(&dest, img).map_err(|e| format!("pull {reference}: {e}"))
        } else {
            Err(format!(
                "skopeo copy {reference} failed ({}): {}{}",
                out.status,
                text(&out.stderr),
                if self.mounted() {
                    ""
                } else {
                    " [the regfs mount is gone: detached from outside?]"
                }
            ))
        };
        let _ = fs::remove_dir_all(&dest);
        r
    }

    /// Whether the regfs mount is still in place (something may detach it from outside).
    pub fn mounted(&self) -> bool {
        regfs::mount::mount_at(&self.mnt).is_some_and(|m| m.fstype.starts_with("fuse"))
    }

    pub fn assert_mounted(&self, when: &str) {
        assert!(
            self.mounted(),
            "{when}: the regfs mount at {} is gone although the daemon was not stopped \
             (detached from outside?); daemon log:\n{}",
            self.mnt.display(),
            fs::read_to_string(&self.daemon_log).unwrap_or_default()
        );
    }

    pub fn regfs(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg(&self.mnt)
            .arg("--state-dir")
            .arg(&self.state);
        run(cmd, Duration::from_secs(30))
    }

    pub fn status(&self) -> Result<Value, String> {
        let out = self.regfs(&["status", "--json"]);
        if !out.status.success() {
            return Err(format!("regfs status: {}", describe_output(&out)));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("regfs status --json: {e}"))
    }

    /// The id of the job that holds the store read-only now, if any.
    pub fn read_only_job(&self) -> Option<u64> {
        let s = self.status().ok()?;
        (s["read_only"] == true)
            .then(|| s["current_job"]["id"].as_u64())
            .flatten()
    }

    /// Runs `f`, asserting that job `job` held the store read-only just before and just
    /// after it (so that `what` certainly ran during the epoch).
    pub fn while_read_only<T>(&self, job: u64, what: &str, f: impl FnOnce() -> T) -> T {
        let before = self.read_only_job();
        let r = f();
        let after = self.read_only_job();
        assert_eq!(
            (before, after),
            (Some(job), Some(job)),
            "{what} happened while job {job} held the store read-only"
        );
        r
    }

    pub fn jobs(&self) -> Vec<Value> {
        let out = self.regfs(&["jobs", "--json"]);
        assert!(
            out.status.success(),
            "regfs jobs: {}",
            describe_output(&out)
        );
        serde_json::from_slice::<Value>(&out.stdout)
            .expect("regfs jobs --json")
            .as_array()
            .expect("an array of jobs")
            .clone()
    }

    pub fn blob_exists(&self, digest: &str) -> bool {
        let h = hex(digest);
        self.store
            .join(V2)
            .join("blobs/sha256")
            .join(&h[..2])
            .join(h)
            .join("data")
            .exists()
    }

    /// `_layers` links naming `digest`, in every repository.
    pub fn layer_links(&self, digest: &str) -> Vec<PathBuf> {
        let mut files = Vec::new();
        walk(&self.store.join(V2).join("repositories"), &mut files);
        let tail = format!("_layers/sha256/{}/link", hex(digest));
        files
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(&tail))
            .collect()
    }

    /// Size of a blob, from the OCI layout it was pushed from.
    pub fn blob_size(&self, digest: &str) -> u64 {
        fs::metadata(self.oci.join("blobs/sha256").join(hex(digest)))
            .expect("blob in the OCI layout")
            .len()
    }

    pub fn registry_log(&self) -> String {
        fs::read_to_string(&self.registry_log).unwrap_or_default()
    }

    pub fn erofs_lines(&self) -> usize {
        self.registry_log()
            .lines()
            .filter(|l| l.contains(EROFS_TEXT))
            .count()
    }
}

/// A skopeo `dir:` copy holds manifest.json (the top manifest), child manifests as
/// `<hex>.manifest.json`, and blobs named by their hex digest.
pub fn verify_dir(dest: &Path, img: &Image) -> Result<(), String> {
    let top =
        file_digest(&dest.join("manifest.json")).map_err(|e| format!("manifest.json: {e}"))?;
    if top != img.digest {
        return Err(format!("manifest.json is {top}, expected {}", img.digest));
    }
    let mut have = BTreeSet::new();
    for e in fs::read_dir(dest).map_err(|e| e.to_string())?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name == "version" || name == "manifest.json" {
            continue;
        }
        let d = file_digest(&e.path()).map_err(|e| format!("{name}: {e}"))?;
        let stem = name.split('.').next().unwrap_or("");
        if stem.len() == 64 && d != format!("sha256:{stem}") {
            return Err(format!("{name} holds {d}: corrupt"));
        }
        have.insert(d);
    }
    let missing: Vec<&str> = img
        .blobs
        .iter()
        .filter(|b| !have.contains(*b))
        .map(|b| short(b))
        .collect();
    if !missing.is_empty() {
        return Err(format!("blobs missing from the pull: {missing:?}"));
    }
    Ok(())
}

//! The filesystem requests registry 2.8 makes for each API call, driven straight into the
//! filesystem core (no mount, no kernel), so concurrency with a GC run can be tested
//! step by step. Each call does what distribution's storage code does through its
//! filesystem driver: a blob upload is written under `_uploads`, moved into `blobs/`
//! unless the blob is there already (MkdirAll, then rename), then linked in the
//! repository; a manifest put checks each blob it references through the repository's
//! `_layers` link, stores the manifest blob, writes its revision link, then the tag's
//! index link and current link; a delete removes the revision link and untags.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use regfs::fs::{Caller, SetAttr, StorageFs};
use regfs::layout::Digest;
use serde_json::json;

const ROOT: u64 = 1;
const ROOT_CALLER: Caller = Caller { uid: 0, gid: 0 };
pub const V2: &str = "docker/registry/v2";

/// Why a registry call failed, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushError {
    /// The registry answered 500 (an errno from the filesystem).
    Server { step: String, errno: i32 },
    /// 400 MANIFEST_BLOB_UNKNOWN: a referenced blob is not in the repository.
    BlobUnknown(Digest),
}

pub type Result<T> = std::result::Result<T, PushError>;

fn server(step: impl Into<String>) -> impl FnOnce(regfs::error::FsError) -> PushError {
    let step = step.into();
    move |e| PushError::Server {
        errno: e.errno(),
        step,
    }
}

pub fn blob_data(d: &Digest) -> String {
    format!("{V2}/blobs/sha256/{}/{}/data", &d.hex()[..2], d.hex())
}

pub fn layer_link(repo: &str, d: &Digest) -> String {
    format!("{V2}/repositories/{repo}/_layers/sha256/{}/link", d.hex())
}

pub fn revision_link(repo: &str, d: &Digest) -> String {
    format!(
        "{V2}/repositories/{repo}/_manifests/revisions/sha256/{}/link",
        d.hex()
    )
}

pub fn tag_dir(repo: &str, tag: &str) -> String {
    format!("{V2}/repositories/{repo}/_manifests/tags/{tag}")
}

/// An OCI image manifest naming `config` and `layers`.
pub fn image_manifest(config: &Digest, layers: &[Digest]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 1},
        "layers": layers.iter().map(|l| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l.to_string(), "size": 1})).collect::<Vec<_>>()
    }))
    .unwrap()
}

/// An OCI index of `children`.
pub fn index_manifest(children: &[Digest]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": children.iter().map(|c| json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": c.to_string(), "size": 1})).collect::<Vec<_>>()
    }))
    .unwrap()
}

/// Called between two filesystem requests of one registry call (a scheduler's switch).
pub type Step<'a> = &'a (dyn Fn() + Sync);

/// A registry over the filesystem core `fs`.
pub struct RegistrySim<'a> {
    pub fs: &'a StorageFs,
    uploads: AtomicU64,
    between: Option<Step<'a>>,
}

impl<'a> RegistrySim<'a> {
    pub fn new(fs: &'a StorageFs) -> Self {
        RegistrySim {
            fs,
            uploads: AtomicU64::new(0),
            between: None,
        }
    }

    /// A registry that calls `between` before each filesystem request it makes, so a
    /// scheduler may run anything (a whole GC run) between any two of them. `first` is
    /// where its upload ids start (several registries over one store).
    pub fn stepped(fs: &'a StorageFs, between: Step<'a>, first: u64) -> Self {
        RegistrySim {
            fs,
            uploads: AtomicU64::new(first),
            between: Some(between),
        }
    }

    fn step(&self) {
        if let Some(f) = self.between {
            f();
        }
    }

    /// The inode at `rel`, looked up one component at a time.
    fn find(&self, rel: &str) -> Option<u64> {
        let mut id = ROOT;
        for c in Path::new(rel).iter() {
            id = self.fs.lookup(id, c).ok()?.attr.ino.0;
        }
        Some(id)
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.step();
        self.find(rel).is_some()
    }

    /// os.MkdirAll: a component that exists (or appears) is fine.
    fn mkdir_all(&self, rel: &Path) -> Result<u64> {
        let mut id = ROOT;
        for c in rel.iter() {
            self.step();
            id = match self.fs.lookup(id, c) {
                Ok(e) => e.attr.ino.0,
                Err(_) => match self.fs.mkdir(id, c, 0o755, ROOT_CALLER) {
                    Ok(e) => e.attr.ino.0,
                    Err(e) if e.errno() == libc::EEXIST => {
                        self.fs
                            .lookup(id, c)
                            .map_err(server(format!("mkdir {}", rel.display())))?
                            .attr
                            .ino
                            .0
                    }
                    Err(e) => return Err(server(format!("mkdir {}", rel.display()))(e)),
                },
            };
        }
        Ok(id)
    }

    /// The filesystem driver's PutContent: MkdirAll, open O_WRONLY|O_CREAT, truncate,
    /// write, close.
    pub fn put_content(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        let path = Path::new(rel);
        let parent = self.mkdir_all(path.parent().unwrap())?;
        let name = path.file_name().unwrap();
        let flags = libc::O_WRONLY | libc::O_CREAT;
        let step = server(format!("write {rel}"));
        self.step();
        let (ino, fh) = match self.fs.lookup(parent, name) {
            Ok(e) => self
                .fs
                .open(e.attr.ino.0, flags, None)
                .map(|o| (e.attr.ino.0, o.fh)),
            Err(_) => self
                .fs
                .create(parent, name, 0o644, flags, ROOT_CALLER, None)
                .map(|(e, o)| (e.attr.ino.0, o.fh)),
        }
        .map_err(step)?;
        let truncate = SetAttr {
            size: Some(0),
            fh: Some(fh),
            ..Default::default()
        };
        // os.File: ftruncate, write, fsync (Commit), close; the first error ends it.
        let r = (|| {
            self.step();
            self.fs.setattr(ino, truncate)?;
            self.step();
            self.fs.write(fh, 0, bytes)?;
            self.step();
            self.fs.fsync(fh, false)
        })()
        .map_err(server(format!("write {rel}")));
        self.step();
        let _ = self.fs.release(fh);
        r
    }

    /// Reads a link file through the core (open, read, release), as a blob stat does.
    pub fn read_link(&self, rel: &str) -> Option<Digest> {
        self.step();
        let ino = self.find(rel)?;
        self.step();
        let fh = self.fs.open(ino, libc::O_RDONLY, None).ok()?.fh;
        self.step();
        let bytes = self.fs.read(fh, 0, 128).ok();
        self.step();
        let _ = self.fs.release(fh);
        let text = String::from_utf8(bytes?).ok()?;
        Digest::from_hex(text.strip_prefix("sha256:")?).ok()
    }

    /// HEAD /v2/<repo>/blobs/<d>: the repository's `_layers` link, then the blob.
    pub fn blob_exists(&self, repo: &str, d: &Digest) -> bool {
        self.read_link(&layer_link(repo, d)) == Some(*d) && self.exists(&blob_data(d))
    }

    /// A monolithic upload of `bytes` to `repo`, committed: the blob's digest.
    pub fn upload(&self, repo: &str, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::of(bytes);
        let id = self.uploads.fetch_add(1, Ordering::Relaxed);
        let dir = format!("{V2}/repositories/{repo}/_uploads/u{id}");
        self.put_content(&format!("{dir}/startedat"), b"2026-12-01T00:00:00Z")?;
        self.put_content(&format!("{dir}/data"), bytes)?;
        // blobWriter.moveBlob: a blob already there is not moved again.
        if !self.exists(&blob_data(&d)) {
            let target = blob_data(&d);
            let target = Path::new(&target);
            let to_dir = self.mkdir_all(target.parent().unwrap())?;
            let from_dir = self.find(&dir).ok_or_else(|| PushError::Server {
                step: format!("find {dir}"),
                errno: libc::ENOENT,
            })?;
            self.step();
            self.fs
                .rename(from_dir, OsStr::new("data"), to_dir, OsStr::new("data"), 0)
                .map_err(server(format!("move into {}", target.display())))?;
        }
        self.put_content(&layer_link(repo, &d), format!("{d}").as_bytes())?;
        self.remove_all(&dir);
        Ok(d)
    }

    /// Pushes a blob unless HEAD says the repository has it (as a client does).
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::of(bytes);
        if self.blob_exists(repo, &d) {
            return Ok(d);
        }
        self.upload(repo, bytes)
    }

    /// PUT /v2/<repo>/manifests/<tag>: verify, store, link, tag.
    pub fn put_manifest(
        &self,
        repo: &str,
        bytes: &[u8],
        refs: &[Digest],
        tag: Option<&str>,
    ) -> Result<Digest> {
        for r in refs {
            if !self.blob_exists(repo, r) {
                return Err(PushError::BlobUnknown(*r));
            }
        }
        let d = Digest::of(bytes);
        if !self.exists(&blob_data(&d)) {
            self.put_content(&blob_data(&d), bytes)?;
        }
        self.put_content(&revision_link(repo, &d), format!("{d}").as_bytes())?;
        if let Some(tag) = tag {
            self.tag(repo, tag, &d)?;
        }
        Ok(d)
    }

    /// tagStore.Tag: the index link, then the current link.
    pub fn tag(&self, repo: &str, tag: &str, d: &Digest) -> Result<()> {
        let dir = tag_dir(repo, tag);
        self.put_content(
            &format!("{dir}/index/sha256/{}/link", d.hex()),
            format!("{d}").as_bytes(),
        )?;
        self.put_content(&format!("{dir}/current/link"), format!("{d}").as_bytes())
    }

    /// DELETE /v2/<repo>/manifests/<d>: the revision link goes, and every tag naming it.
    pub fn delete_manifest(&self, repo: &str, d: &Digest, tags: &[&str]) {
        self.remove_all(&revision_link(repo, d));
        for t in tags {
            self.remove_all(&tag_dir(repo, t));
        }
    }

    /// os.RemoveAll through the core; what cannot be removed stays.
    pub fn remove_all(&self, rel: &str) {
        let path = Path::new(rel);
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return;
        };
        let Some(parent_id) = self.find(&parent.to_string_lossy()) else {
            return;
        };
        let Ok(e) = self.fs.lookup(parent_id, name) else {
            return;
        };
        if e.attr.kind == fuser::FileType::Directory {
            for child in self.list(e.attr.ino.0) {
                self.remove_all(&format!("{rel}/{child}"));
            }
            self.step();
            let _ = self.fs.rmdir(parent_id, name);
        } else {
            self.step();
            let _ = self.fs.unlink(parent_id, name);
        }
    }

    fn list(&self, dir: u64) -> Vec<String> {
        let mut names = Vec::new();
        let Ok(fh) = self.fs.opendir(dir) else {
            return names;
        };
        let _ = self.fs.readdir(fh, 0, false, &mut |item| {
            let n = item.name.to_string_lossy().into_owned();
            if n != "." && n != ".." {
                names.push(n);
            }
            false
        });
        let _ = self.fs.releasedir(fh);
        names
    }
}

//! Builds registry stores directly on disk for collector tests, in the exact layout
//! docker-registry writes (link files of 71 bytes, no newline).

use std::fs;
use std::path::{Path, PathBuf};

use regfs::layout::Digest;
use serde_json::json;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub struct StoreBuilder {
    pub root: PathBuf,
}

fn link(path: &Path, d: &Digest) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, d.to_string()).unwrap();
}

impl StoreBuilder {
    pub fn new(root: &Path) -> Self {
        fs::create_dir_all(root.join("docker/registry/v2/blobs/sha256")).unwrap();
        fs::create_dir_all(root.join("docker/registry/v2/repositories")).unwrap();
        StoreBuilder {
            root: root.to_path_buf(),
        }
    }

    pub fn v2(&self) -> PathBuf {
        self.root.join("docker/registry/v2")
    }

    pub fn blob_dir(&self, d: &Digest) -> PathBuf {
        self.v2()
            .join("blobs/sha256")
            .join(d.prefix())
            .join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_dir(d).join("data").exists()
    }

    pub fn repo(&self, repo: &str) -> PathBuf {
        self.v2().join("repositories").join(repo)
    }

    pub fn blob(&self, bytes: &[u8]) -> Digest {
        let d = Digest::of(bytes);
        let dir = self.blob_dir(&d);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("data"), bytes).unwrap();
        d
    }

    pub fn layer_link(&self, repo: &str, d: &Digest) {
        link(
            &self
                .repo(repo)
                .join("_layers/sha256")
                .join(d.hex())
                .join("link"),
            d,
        );
    }

    pub fn revision(&self, repo: &str, d: &Digest) {
        link(
            &self
                .repo(repo)
                .join("_manifests/revisions/sha256")
                .join(d.hex())
                .join("link"),
            d,
        );
    }

    pub fn revision_link_path(&self, repo: &str, d: &Digest) -> PathBuf {
        self.repo(repo)
            .join("_manifests/revisions/sha256")
            .join(d.hex())
            .join("link")
    }

    /// Points `tag` at `d` and records it in the tag's history.
    pub fn tag(&self, repo: &str, tag: &str, d: &Digest) {
        let t = self.repo(repo).join("_manifests/tags").join(tag);
        link(&t.join("current/link"), d);
        link(&t.join("index/sha256").join(d.hex()).join("link"), d);
    }

    /// Stores a manifest blob and its revision link.
    pub fn manifest(&self, repo: &str, body: serde_json::Value) -> Digest {
        let bytes = serde_json::to_vec(&body).unwrap();
        let d = self.blob(&bytes);
        self.revision(repo, &d);
        d
    }

    /// An OCI image: a config blob, the given layers, linked in `repo`.
    pub fn image(&self, repo: &str, layers: &[Digest], salt: &str) -> (Digest, Digest) {
        let config = self.blob(
            json!({"architecture": "amd64", "os": "linux", "salt": salt})
                .to_string()
                .as_bytes(),
        );
        self.layer_link(repo, &config);
        for l in layers {
            self.layer_link(repo, l);
        }
        let m = self.manifest(
            repo,
            json!({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 1},
                "layers": layers.iter().map(|l| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l.to_string(), "size": 1})).collect::<Vec<_>>()
            }),
        );
        (m, config)
    }

    pub fn index(&self, repo: &str, children: &[Digest]) -> Digest {
        self.manifest(
            repo,
            json!({
                "schemaVersion": 2, "mediaType": OCI_INDEX,
                "manifests": children.iter().map(|c| json!({"mediaType": OCI_MANIFEST, "digest": c.to_string(), "size": 1})).collect::<Vec<_>>()
            }),
        )
    }

    /// A signature-like referrer of `subject`: its own config and one blob.
    pub fn referrer(&self, repo: &str, subject: &Digest, salt: &str) -> (Digest, Vec<Digest>) {
        let config = self.blob(format!("{{\"sig\":\"{salt}\"}}").as_bytes());
        let payload = self.blob(format!("signature payload {salt}").as_bytes());
        self.layer_link(repo, &config);
        self.layer_link(repo, &payload);
        let m = self.manifest(
            repo,
            json!({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "artifactType": "application/vnd.example.signature",
                "config": {"mediaType": "application/vnd.example.signature", "digest": config.to_string(), "size": 1},
                "layers": [{"mediaType": "application/octet-stream", "digest": payload.to_string(), "size": 1}],
                "subject": {"mediaType": OCI_MANIFEST, "digest": subject.to_string(), "size": 1}
            }),
        );
        (m, vec![config, payload])
    }

    /// An upload directory with a `startedat` of `age_hours` ago (or none).
    pub fn upload(&self, repo: &str, id: &str, started_hours_ago: Option<i64>) -> PathBuf {
        let dir = self.repo(repo).join("_uploads").join(id);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("data"), b"partial").unwrap();
        if let Some(h) = started_hours_ago {
            let t = chrono::Utc::now() - chrono::Duration::hours(h);
            fs::write(
                dir.join("startedat"),
                t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            )
            .unwrap();
        }
        dir
    }

    /// Every path in the store, relative, with file sizes (directories as 0).
    pub fn listing(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let p = e.path();
                let md = fs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(&self.root).unwrap().display().to_string();
                if md.is_dir() {
                    stack.push(p);
                    out.push((rel, 0));
                } else {
                    out.push((rel, md.len()));
                }
            }
        }
        out.sort();
        out
    }
}

/// Runs the collector in-process on a store no daemon serves.
pub fn collect(
    root: &Path,
    opts: &regfs::gc::Options,
) -> Result<regfs::gc::Report, regfs::gc::GcError> {
    let store = regfs::layout::Store::open(root).unwrap();
    let deleter = regfs::runtime::compose::OpenedStore::open(root)
        .unwrap()
        .deleter();
    regfs::gc::collect(
        &store,
        &deleter,
        opts,
        &regfs::gc::Unattended,
        &regfs::gc::Unattended,
    )
}

/// The plan a dry run makes.
pub fn plan(root: &Path, opts: &regfs::gc::Options) -> regfs::gc::Plan {
    let store = regfs::layout::Store::open(root).unwrap();
    match regfs::gc::mark(&store, opts, &regfs::gc::Unattended, &regfs::gc::Unattended).unwrap() {
        regfs::gc::Marked::Planned(planned) => planned.plan,
        regfs::gc::Marked::Interrupted(_) => panic!("mark interrupted"),
    }
}

/// A link file as the registry writes it: `sha256:` and exactly 64 lowercase hex
/// characters, nothing else (no newline).
pub fn well_formed_link(content: &[u8]) -> bool {
    content.len() == 71
        && content.starts_with(b"sha256:")
        && content[7..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

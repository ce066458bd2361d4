//! What the wider soak's clients push and pull, and how, as the registry sees real clients:
//! a [`Library`] of seeded content (images of families sharing a base layer, multi-arch
//! indexes, signatures whose `subject` is an image) and a [`Client`] speaking the
//! registry's HTTP API (HEAD before upload, monolithic uploads, cross-repository mounts,
//! manifest PUT by tag or digest, DELETE by digest, pulls that check every byte).

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::api::{Answer, digest_of, request};
use crate::support::{ACCEPT, hex, short};

pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const SIG_TYPE: &str = "application/vnd.example.signature";
const SIG_PAYLOAD: &str = "application/vnd.example.signature.payload.v1+json";

pub use crate::common::rng::Rng;

/// A manifest a client may push: its bytes and what a whole pull of it fetches.
#[derive(Debug)]
pub struct Manifest {
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
    /// Config and layers (an image) or nothing (an index).
    pub blobs: Vec<String>,
    /// Child manifests (an index).
    pub children: Vec<String>,
    /// The manifest a referrer (a signature) refers to.
    pub subject: Option<String>,
}

impl Manifest {
    fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len()})
    }
}

/// Every blob and manifest of a soak, by digest: what it generated (seeded) and, for the
/// images skopeo pushes, what the OCI layout holds.
pub struct Library {
    oci: PathBuf,
    blobs: RwLock<HashMap<String, Arc<Vec<u8>>>>,
    manifests: RwLock<HashMap<String, Arc<Manifest>>>,
    /// Per family its base layer; per (family, variant) its own layer.
    bases: Vec<Value>,
    own: Vec<Vec<Value>>,
}

impl Library {
    /// `families` families of `variants` variants each, their layers drawn from `seed`.
    pub fn new(oci: PathBuf, seed: u64, families: usize, variants: usize) -> Library {
        let mut lib = Library {
            oci,
            blobs: RwLock::default(),
            manifests: RwLock::default(),
            bases: Vec::new(),
            own: Vec::new(),
        };
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        for _ in 0..families {
            let base = lib.add_blob(rng.bytes(16 * 1024), MT_LAYER);
            let own = (0..variants)
                .map(|_| lib.add_blob(rng.bytes(2048), MT_LAYER))
                .collect();
            lib.bases.push(base);
            lib.own.push(own);
        }
        lib
    }

    fn add_blob(&self, bytes: Vec<u8>, media_type: &str) -> Value {
        let digest = digest_of(&bytes);
        let d = json!({"mediaType": media_type, "digest": digest, "size": bytes.len()});
        self.blobs.write().unwrap().insert(digest, Arc::new(bytes));
        d
    }

    fn add_manifest(&self, v: Value, media_type: &str) -> Arc<Manifest> {
        let bytes = serde_json::to_vec(&v).unwrap();
        let m = Arc::new(parse(digest_of(&bytes), media_type, bytes).unwrap());
        self.manifests
            .write()
            .unwrap()
            .insert(m.digest.clone(), m.clone());
        m
    }

    /// Variant `variant` of family `family`; `nonce` makes its config (so its manifest)
    /// new while its layers stay those of its family.
    pub fn image(&self, family: usize, variant: usize, nonce: u64, arch: &str) -> Arc<Manifest> {
        let base = &self.bases[family];
        let own = &self.own[family][variant];
        let config = json!({
            "architecture": arch, "os": "linux",
            "config": {"Labels": {"soak.image": format!("f{family}-v{variant}"),
                                  "soak.nonce": nonce.to_string()}},
            "rootfs": {"type": "layers", "diff_ids": [base["digest"], own["digest"]]},
        });
        let config = self.add_blob(serde_json::to_vec(&config).unwrap(), MT_CONFIG);
        self.add_manifest(
            json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config,
                   "layers": [base, own]}),
            MT_MANIFEST,
        )
    }

    /// A multi-arch index of `children` (amd64, arm64, ...).
    pub fn index(&self, children: &[Arc<Manifest>], nonce: u64) -> Arc<Manifest> {
        let archs = ["amd64", "arm64", "s390x", "ppc64le"];
        let manifests: Vec<Value> = children
            .iter()
            .zip(archs.iter().cycle())
            .map(|(c, arch)| {
                let mut d = c.descriptor();
                d["platform"] = json!({"architecture": arch, "os": "linux"});
                d
            })
            .collect();
        self.add_manifest(
            json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests,
                   "annotations": {"soak.nonce": nonce.to_string()}}),
            MT_INDEX,
        )
    }

    /// A signature of `subject` (an OCI 1.1 referrer: artifactType, `subject`).
    pub fn signature(&self, subject: &Manifest, nonce: u64) -> Arc<Manifest> {
        let config = self.add_blob(
            serde_json::to_vec(&json!({"signer": "soak", "nonce": nonce})).unwrap(),
            SIG_TYPE,
        );
        let payload = self.add_blob(
            serde_json::to_vec(&json!({"signed": subject.digest, "nonce": nonce})).unwrap(),
            SIG_PAYLOAD,
        );
        self.add_manifest(
            json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "artifactType": SIG_TYPE,
                   "config": config, "layers": [payload], "subject": subject.descriptor()}),
            MT_MANIFEST,
        )
    }

    pub fn manifest(&self, digest: &str) -> Option<Arc<Manifest>> {
        if let Some(m) = self.manifests.read().unwrap().get(digest) {
            return Some(m.clone());
        }
        // An image of the OCI layout (pushed by skopeo): read and remembered.
        let bytes = self.layout_blob(digest)?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        let mt = v["mediaType"].as_str().unwrap_or(MT_MANIFEST).to_string();
        let m = Arc::new(parse(digest.to_string(), &mt, bytes.to_vec()).ok()?);
        self.manifests
            .write()
            .unwrap()
            .insert(digest.to_string(), m.clone());
        Some(m)
    }

    pub fn blob(&self, digest: &str) -> Option<Arc<Vec<u8>>> {
        if let Some(b) = self.blobs.read().unwrap().get(digest) {
            return Some(b.clone());
        }
        let b = self.layout_blob(digest)?;
        self.blobs
            .write()
            .unwrap()
            .insert(digest.to_string(), b.clone());
        Some(b)
    }

    fn layout_blob(&self, digest: &str) -> Option<Arc<Vec<u8>>> {
        let h = digest.strip_prefix("sha256:")?;
        if h.len() != 64 || !h.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        fs::read(self.oci.join("blobs/sha256").join(h))
            .ok()
            .map(Arc::new)
    }
}

/// What a manifest's JSON names.
fn parse(digest: String, media_type: &str, bytes: Vec<u8>) -> Result<Manifest, String> {
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("{digest}: {e}"))?;
    let digests = |key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["digest"].as_str().map(String::from))
            .collect()
    };
    let mut blobs = Vec::new();
    if let Some(c) = v["config"]["digest"].as_str() {
        blobs.push(c.to_string());
    }
    blobs.extend(digests("layers"));
    Ok(Manifest {
        media_type: media_type.to_string(),
        blobs,
        children: digests("manifests"),
        subject: v["subject"]["digest"].as_str().map(String::from),
        digest,
        bytes,
    })
}

/// Why a request of a client did not get the answer it wanted.
#[derive(Debug, Clone)]
pub enum Fail {
    /// The registry answered with another status: which request, and the body.
    Http {
        what: String,
        status: u16,
        body: String,
    },
    /// No answer (connection refused, reset, timed out).
    Transport { what: String, error: String },
    /// An answer with the wrong bytes: which object, what came.
    Corrupt { what: String, detail: String },
}

impl Fail {
    pub fn status(&self) -> Option<u16> {
        match self {
            Fail::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// A 500 from reading a link file while the registry rewrote it (open, truncate,
    /// write: a reader in between reads it empty), as on a plain directory: the registry
    /// answers an error without detail (it logs "invalid checksum digest format"; a
    /// filesystem error comes with its path and errno instead).
    pub fn link_read_mid_write(&self) -> bool {
        matches!(self, Fail::Http { status: 500, body, .. } if body.contains(r#""detail":{}"#))
    }

    /// The digest a "blob unknown" / "manifest blob unknown" answer names.
    pub fn unknown_digest(&self) -> Option<String> {
        let Fail::Http { status, body, .. } = self else {
            return None;
        };
        if !matches!(status, 400 | 404) || !body.contains("UNKNOWN") {
            return None;
        }
        let v: Value = serde_json::from_str(body).ok()?;
        v["errors"]
            .as_array()?
            .iter()
            .find_map(|e| e["detail"].as_str().map(String::from))
            .filter(|d| d.starts_with("sha256:"))
    }

    /// A short class for the counts ("PUT manifest 500", "HEAD blob transport").
    pub fn class(&self) -> String {
        let verb = |w: &str| w.split(' ').take(2).collect::<Vec<_>>().join(" ");
        match self {
            Fail::Http { what, status, .. } => format!("{} {status}", verb(what)),
            Fail::Transport { what, .. } => format!("{} transport", verb(what)),
            Fail::Corrupt { what, .. } => format!("{} corrupt", verb(what)),
        }
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Http { what, status, body } => write!(f, "{what}: HTTP {status} {body}"),
            Fail::Transport { what, error } => write!(f, "{what}: {error}"),
            Fail::Corrupt { what, detail } => write!(f, "{what}: {detail}"),
        }
    }
}

/// How the registry confirmed that a repository has a blob or manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// HEAD answered 200 (a read: nothing written).
    Exists,
    /// A cross-repository mount answered 201.
    Mounted,
    /// An upload answered 201.
    Uploaded,
    /// A manifest PUT answered 201.
    Put,
}

impl Via {
    /// Whether the confirmation was a write the registry answered with success.
    pub fn written(self) -> bool {
        self != Via::Exists
    }
}

/// A blob or manifest a push had confirmed, and when the confirming request began: the
/// registry wrote it during the request, so a run started after that moment may have
/// found it unreferenced (min age 0s) and collected it legitimately.
#[derive(Debug, Clone)]
pub struct Seen {
    pub digest: String,
    pub via: Via,
    pub at: DateTime<Utc>,
}

/// A client of the registry at 127.0.0.1:`port`, with the soak's content.
pub struct Client {
    pub port: u16,
    pub lib: Arc<Library>,
}

/// What a pull fetched.
pub struct Pulled {
    pub digest: String,
    pub objects: usize,
}

impl Client {
    fn call(
        &self,
        what: String,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        ok: &[u16],
    ) -> Result<Answer, Fail> {
        match request(self.port, method, path, headers, body) {
            Ok(a) if ok.contains(&a.status) => Ok(a),
            Ok(a) => Err(Fail::Http {
                what,
                status: a.status,
                body: a.text(),
            }),
            Err(error) => Err(Fail::Transport { what, error }),
        }
    }

    /// Makes `digest` a blob of `repo` as a client does: HEAD first; else a cross-repository
    /// mount from `from` when given; else a monolithic upload (also after a mount the
    /// registry turned into an upload). Which of them did it.
    pub fn put_blob(&self, repo: &str, digest: &str, from: Option<&str>) -> Result<Via, Fail> {
        let head = self.call(
            format!("HEAD blob {repo}@{}", short(digest)),
            "HEAD",
            &format!("/v2/{repo}/blobs/{digest}"),
            &[],
            &[],
            &[200, 404],
        )?;
        if head.status == 200 {
            return Ok(Via::Exists);
        }
        let start = match from {
            Some(src) => format!("/v2/{repo}/blobs/uploads/?mount={digest}&from={src}"),
            None => format!("/v2/{repo}/blobs/uploads/"),
        };
        let a = self.call(
            format!("POST upload {repo}@{} from {from:?}", short(digest)),
            "POST",
            &start,
            &[],
            &[],
            &[201, 202],
        )?;
        if a.status == 201 {
            return Ok(Via::Mounted);
        }
        let bytes = self.lib.blob(digest).ok_or_else(|| Fail::Corrupt {
            what: format!("upload {}", short(digest)),
            detail: "not in the soak's library".into(),
        })?;
        let loc = a.header("Location").unwrap_or_default();
        let path = loc.find("/v2/").map(|i| &loc[i..]).unwrap_or(loc);
        let sep = if path.contains('?') { '&' } else { '?' };
        self.call(
            format!("PUT upload {repo}@{}", short(digest)),
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            &bytes,
            &[201],
        )?;
        Ok(Via::Uploaded)
    }

    /// PUT of `m`'s bytes at `repo`:`reference` (a tag or its digest).
    pub fn put_manifest(&self, repo: &str, reference: &str, m: &Manifest) -> Result<(), Fail> {
        self.call(
            format!(
                "PUT manifest {repo}{} ({})",
                shown(reference),
                short(&m.digest)
            ),
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", &m.media_type)],
            &m.bytes,
            &[201],
        )
        .map(|_| ())
    }

    /// A whole push of `m` as `reference`: its blobs, its children by digest (an index),
    /// then itself. The blobs it mounted from `from`. `seen` gets each blob and child
    /// manifest with the moment the registry confirmed it (HEAD 200, mount or upload
    /// 201, PUT 201): a later "unknown" about it must come from a run started since.
    pub fn push(
        &self,
        repo: &str,
        reference: &str,
        m: &Manifest,
        from: Option<&str>,
        seen: &mut Vec<Seen>,
    ) -> Result<usize, Fail> {
        let mut mounted = 0;
        for c in &m.children {
            let child = self.lib.manifest(c).expect("a child the library made");
            let asked = Utc::now();
            mounted += self.push(repo, c, &child, from, seen)?;
            seen.push(Seen {
                digest: c.clone(),
                via: Via::Put,
                at: asked,
            });
        }
        for b in &m.blobs {
            let asked = Utc::now();
            let via = self.put_blob(repo, b, from)?;
            mounted += usize::from(via == Via::Mounted);
            seen.push(Seen {
                digest: b.clone(),
                via,
                at: asked,
            });
        }
        self.put_manifest(repo, reference, m)?;
        Ok(mounted)
    }

    pub fn delete(&self, repo: &str, digest: &str) -> Result<(), Fail> {
        self.call(
            format!("DELETE manifest {repo}@{}", short(digest)),
            "DELETE",
            &format!("/v2/{repo}/manifests/{digest}"),
            &[],
            &[],
            &[202],
        )
        .map(|_| ())
    }

    /// The tags the registry lists for `repo`, sorted.
    pub fn tags(&self, repo: &str) -> Result<Vec<String>, Fail> {
        let a = self.call(
            format!("GET tags {repo}"),
            "GET",
            &format!("/v2/{repo}/tags/list"),
            &[],
            &[],
            &[200, 404],
        )?;
        let v: Value = serde_json::from_slice(&a.body).unwrap_or_default();
        let mut t: Vec<String> = v["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect();
        t.sort();
        Ok(t)
    }

    /// GET of `repo`:`reference`'s manifest alone, as a client polling a tag for updates:
    /// the digest of what the registry served.
    pub fn poll_manifest(&self, repo: &str, reference: &str) -> Result<String, Fail> {
        let a = self.call(
            format!("GET manifest {repo}{}", shown(reference)),
            "GET",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Accept", ACCEPT)],
            &[],
            &[200],
        )?;
        Ok(digest_of(&a.body))
    }

    /// Pulls `repo`:`reference` whole, as a client: the manifest, its children, every
    /// blob, each compared byte for byte with what the soak pushed under that digest. The
    /// manifest's digest must be `expect` when given, and known to the soak in any case.
    pub fn pull(&self, repo: &str, reference: &str, expect: Option<&str>) -> Result<Pulled, Fail> {
        let what = format!("GET manifest {repo}{}", shown(reference));
        let a = self.call(
            what.clone(),
            "GET",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Accept", ACCEPT)],
            &[],
            &[200],
        )?;
        let digest = digest_of(&a.body);
        let corrupt = |detail: String| Fail::Corrupt {
            what: what.clone(),
            detail,
        };
        if let Some(e) = expect
            && e != digest
        {
            return Err(corrupt(format!("served {digest}, pushed {e}")));
        }
        let m = self
            .lib
            .manifest(&digest)
            .ok_or_else(|| corrupt(format!("served {digest}, which no client pushed")))?;
        if m.bytes != a.body {
            return Err(corrupt(format!(
                "{digest}: bytes differ from the pushed ones"
            )));
        }
        let mut objects = 1;
        for c in &m.children {
            objects += self.pull(repo, c, Some(c))?.objects;
        }
        for b in &m.blobs {
            let what = format!("GET blob {repo}@{}", short(b));
            let a = self.call(
                what.clone(),
                "GET",
                &format!("/v2/{repo}/blobs/{b}"),
                &[],
                &[],
                &[200],
            )?;
            let want = self.lib.blob(b).ok_or_else(|| Fail::Corrupt {
                what: what.clone(),
                detail: "not in the soak's library".into(),
            })?;
            if *want != a.body {
                return Err(Fail::Corrupt {
                    what,
                    detail: format!(
                        "{} bytes (digest {}), pushed {} bytes",
                        a.body.len(),
                        digest_of(&a.body),
                        want.len()
                    ),
                });
            }
            objects += 1;
        }
        Ok(Pulled { digest, objects })
    }
}

/// `:tag` or `@short-digest`, for messages.
pub fn shown(reference: &str) -> String {
    if reference.starts_with("sha256:") {
        format!("@{}", &hex(reference)[..12])
    } else {
        format!(":{reference}")
    }
}

//! A link write naming a blob whose data does not exist is refused (EIO), through the
//! filesystem core without a mount: what makes a push on a stale registry cache fail
//! loudly instead of reporting success for an image that cannot be pulled.
mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use common::registry_sim::{PushError, RegistrySim};
use common::store::{OCI_INDEX, OCI_MANIFEST, StoreBuilder};
use regfs::fs::{Caller, StorageFs};
use regfs::layout::Digest;
use regfs::runtime::compose::open_fs;
use serde_json::json;

const ROOT: u64 = 1;
const ROOT_CALLER: Caller = Caller { uid: 0, gid: 0 };

struct Core {
    fs: StorageFs,
    _dir: tempfile::TempDir,
    store: StoreBuilder,
}

fn core() -> Core {
    let dir = common::tempdir();
    let store = StoreBuilder::new(dir.path());
    let fs = open_fs(dir.path()).unwrap().0;
    Core {
        fs,
        _dir: dir,
        store,
    }
}

impl Core {
    /// The inode of directory `rel`, made (mkdir -p) through the core.
    fn dir(&self, rel: &Path) -> u64 {
        let mut id = ROOT;
        for c in rel.iter() {
            id = match self.fs.lookup(id, c) {
                Ok(e) => e.attr.ino.0,
                Err(_) => self.fs.mkdir(id, c, 0o755, ROOT_CALLER).unwrap().attr.ino.0,
            };
        }
        id
    }

    /// Writes `bytes` to `rel` as registry 2.8 does (the registry simulator's PutContent);
    /// the errno of the first step that fails.
    fn put(&self, rel: &str, bytes: &[u8]) -> Result<(), i32> {
        RegistrySim::new(&self.fs)
            .put_content(rel, bytes)
            .map_err(|e| match e {
                PushError::Server { errno, .. } => errno,
                other => panic!("a plain write answered {other:?}"),
            })
    }

    /// Writes `bytes` to `<rel>.<uuid>.tmp` and renames it onto `rel`, as registry 3.x does.
    fn put_by_rename(&self, rel: &str, bytes: &[u8]) -> Result<(), i32> {
        let tmp = format!("{rel}.0f3a.tmp");
        self.put(&tmp, bytes).unwrap();
        let dir = self.dir(Path::new(rel).parent().unwrap());
        let tmp_name = Path::new(&tmp).file_name().unwrap();
        self.fs
            .rename(dir, tmp_name, dir, OsStr::new("link"), 0)
            .map_err(|e| e.errno())
    }

    fn read(&self, rel: &str) -> Option<Vec<u8>> {
        fs::read(self.store.root.join(rel)).ok()
    }
}

const V2: &str = "docker/registry/v2/repositories";

fn revision(repo: &str, d: &Digest) -> String {
    format!("{V2}/{repo}/_manifests/revisions/sha256/{}/link", d.hex())
}

fn layer(repo: &str, d: &Digest) -> String {
    format!("{V2}/{repo}/_layers/sha256/{}/link", d.hex())
}

fn tag_index(repo: &str, tag: &str, d: &Digest) -> String {
    format!(
        "{V2}/{repo}/_manifests/tags/{tag}/index/sha256/{}/link",
        d.hex()
    )
}

fn current(repo: &str, tag: &str) -> String {
    format!("{V2}/{repo}/_manifests/tags/{tag}/current/link")
}

/// Manifest bytes naming `config` and `layers` (the last `foreign` of them with `urls`).
fn manifest_bytes(config: &Digest, layers: &[Digest], foreign: usize) -> Vec<u8> {
    let n = layers.len();
    let layers: Vec<_> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut d = json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": l.to_string(), "size": 1});
            if i >= n - foreign {
                d["urls"] = json!(["https://example.invalid/layer"]);
            }
            d
        })
        .collect();
    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.to_string(), "size": 1},
        "layers": layers}))
    .unwrap()
}

#[test]
fn links_named_by_their_path_need_the_blob_data() {
    let c = core();
    let present = c.store.blob(b"a layer");
    let gone = Digest::of(b"a layer GC deleted");
    for link in [
        layer("app", &gone),
        revision("app", &gone),
        tag_index("app", "v1", &gone),
    ] {
        assert_eq!(
            c.put(&link, gone.to_string().as_bytes()),
            Err(libc::EIO),
            "{link}"
        );
        assert_eq!(
            c.read(&link),
            None,
            "{link}: refused before anything was created"
        );
        assert_eq!(
            c.put_by_rename(&link, gone.to_string().as_bytes()),
            Err(libc::EIO)
        );
        assert_eq!(c.read(&link), None, "{link}: rename refused");
    }
    let link = layer("app", &present);
    assert_eq!(c.put(&link, present.to_string().as_bytes()), Ok(()));
    assert_eq!(c.read(&link).unwrap(), present.to_string().as_bytes());
    // Rewriting an existing link whose blob has gone since is refused too.
    fs::remove_dir_all(c.store.blob_dir(&present)).unwrap();
    assert_eq!(c.put(&link, present.to_string().as_bytes()), Err(libc::EIO));
    // Files that are not links are never checked: uploads, blob data, temp files.
    let upload = format!("{V2}/app/_uploads/u1/data");
    assert_eq!(c.put(&upload, b"chunk"), Ok(()));
    let data = format!(
        "docker/registry/v2/blobs/sha256/ab/{}/data",
        "ab".repeat(32)
    );
    assert_eq!(c.put(&data, b"x"), Ok(()));
}

#[test]
fn a_revision_link_needs_the_data_of_what_its_manifest_references() {
    let c = core();
    let config = c.store.blob(b"{\"config\":1}");
    let kept = c.store.blob(b"kept layer");
    let collected = Digest::of(b"collected layer");
    let foreign = Digest::of(b"foreign layer, never stored");

    // The manifest's own bytes are written, the shared layer's upload was skipped.
    let broken = c
        .store
        .blob(&manifest_bytes(&config, &[kept, collected], 0));
    let link = revision("second", &broken);
    assert_eq!(c.put(&link, broken.to_string().as_bytes()), Err(libc::EIO));
    assert_eq!(c.read(&link), None);
    assert_eq!(
        c.put_by_rename(&link, broken.to_string().as_bytes()),
        Err(libc::EIO)
    );

    // A missing config is refused as well.
    let no_config = c
        .store
        .blob(&manifest_bytes(&Digest::of(b"gone config"), &[kept], 0));
    assert_eq!(
        c.put(
            &revision("second", &no_config),
            no_config.to_string().as_bytes()
        ),
        Err(libc::EIO)
    );

    // Foreign layers (with `urls`) need not be stored.
    let with_foreign = c.store.blob(&manifest_bytes(&config, &[kept, foreign], 1));
    let link = revision("second", &with_foreign);
    assert_eq!(c.put(&link, with_foreign.to_string().as_bytes()), Ok(()));

    // Once the layer is uploaded again, the same revision link is accepted.
    assert_eq!(c.store.blob(b"collected layer"), collected);
    let link = revision("second", &broken);
    assert_eq!(c.put(&link, broken.to_string().as_bytes()), Ok(()));
    assert_eq!(c.read(&link).unwrap(), broken.to_string().as_bytes());
}

#[test]
fn an_index_revision_needs_its_children() {
    let c = core();
    let config = c.store.blob(b"{}");
    let child = c.store.blob(&manifest_bytes(&config, &[], 0));
    let gone_child = Digest::of(b"a child manifest GC deleted");
    let index = |children: &[Digest]| {
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": children.iter().map(|d| json!({"mediaType": OCI_MANIFEST,
                "digest": d.to_string(), "size": 1})).collect::<Vec<_>>()}))
        .unwrap()
    };
    let bad = c.store.blob(&index(&[child, gone_child]));
    assert_eq!(
        c.put(&revision("multi", &bad), bad.to_string().as_bytes()),
        Err(libc::EIO)
    );
    // Every child's data is there, but the repository holds no revision of the child
    // (a run removed it, untagged, between the child's push and the index's).
    let good = c.store.blob(&index(&[child]));
    assert_eq!(
        c.put(&revision("multi", &good), good.to_string().as_bytes()),
        Err(libc::EIO)
    );
    assert_eq!(
        c.put(&revision("multi", &child), child.to_string().as_bytes()),
        Ok(())
    );
    assert_eq!(
        c.put(&revision("multi", &good), good.to_string().as_bytes()),
        Ok(())
    );
    // A manifest regfs cannot parse proves nothing missing: let through.
    let odd = c.store.blob(b"{\"mediaType\": \"application/x-unknown\"}");
    assert_eq!(
        c.put(&revision("multi", &odd), odd.to_string().as_bytes()),
        Ok(())
    );
}

#[test]
fn a_tag_current_link_is_checked_by_its_content_and_kept_whole_when_refused() {
    let c = core();
    let old = c.store.blob(b"manifest the tag names now");
    let new = c.store.blob(b"manifest pushed now");
    let gone = Digest::of(b"manifest whose bytes a stale cache skipped");
    for d in [old, new] {
        assert_eq!(
            c.put(&revision("app", &d), d.to_string().as_bytes()),
            Ok(())
        );
    }
    let link = current("app", "latest");
    assert_eq!(c.put(&link, old.to_string().as_bytes()), Ok(()));

    // Truncated first, then the write is refused: the earlier bytes are put back.
    assert_eq!(c.put(&link, gone.to_string().as_bytes()), Err(libc::EIO));
    assert_eq!(c.read(&link).unwrap(), old.to_string().as_bytes());
    assert_eq!(
        c.put_by_rename(&link, gone.to_string().as_bytes()),
        Err(libc::EIO)
    );
    assert_eq!(c.read(&link).unwrap(), old.to_string().as_bytes());

    assert_eq!(c.put(&link, new.to_string().as_bytes()), Ok(()));
    assert_eq!(c.read(&link).unwrap(), new.to_string().as_bytes());
    assert_eq!(c.put_by_rename(&link, old.to_string().as_bytes()), Ok(()));
    assert_eq!(c.read(&link).unwrap(), old.to_string().as_bytes());
    // Content that is no link at all is not this check's business.
    assert_eq!(c.put(&link, b"not a digest"), Ok(()));
}

/// Issue 18, finding 1, made deterministic: a manifest PUT writes the revision link, then
/// the tag's index link, then its current link; a run (either mode, any min age: the
/// manifest's blob may stay) between the first write and the others removes the
/// untagged revision. The tag writes must then fail (the registry answers 500, the client
/// pushes again), not name a manifest nobody can pull; the tag keeps what it named.
#[test]
fn a_tag_naming_a_manifest_whose_revision_a_run_removed_is_refused() {
    let c = core();
    let before = c.store.blob(b"manifest the tag names now");
    let pushed = c.store.blob(b"manifest pushed now");
    for d in [before, pushed] {
        assert_eq!(
            c.put(&revision("app", &d), d.to_string().as_bytes()),
            Ok(())
        );
    }
    assert_eq!(
        c.put(&current("app", "v1"), before.to_string().as_bytes()),
        Ok(())
    );
    // The run, between the PUT's revision link and its tag writes.
    RegistrySim::new(&c.fs).remove_all(revision("app", &pushed).trim_end_matches("/link"));
    let bytes = pushed.to_string();
    assert_eq!(
        c.put(&tag_index("app", "v1", &pushed), bytes.as_bytes()),
        Err(libc::EIO)
    );
    assert_eq!(c.read(&tag_index("app", "v1", &pushed)), None);
    assert_eq!(
        c.put(&current("app", "v1"), bytes.as_bytes()),
        Err(libc::EIO)
    );
    assert_eq!(
        c.put_by_rename(&current("app", "v1"), bytes.as_bytes()),
        Err(libc::EIO)
    );
    assert_eq!(
        c.read(&current("app", "v1")).unwrap(),
        before.to_string().as_bytes()
    );
    // The client's retry writes the revision again: the tag goes through.
    assert_eq!(c.put(&revision("app", &pushed), bytes.as_bytes()), Ok(()));
    assert_eq!(
        c.put(&tag_index("app", "v1", &pushed), bytes.as_bytes()),
        Ok(())
    );
    assert_eq!(c.put(&current("app", "v1"), bytes.as_bytes()), Ok(()));
}

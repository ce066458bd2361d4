//! What each node's kernel keeps over a shared store (`fs::caching`): two nodes over one
//! store with Debian's registry on each. A tag moved through one node is read at once
//! through the other, however the registry moves it, and new tags and repositories are
//! listed there at once; a blob the collector deleted
//! through one node is not reported present through the other, and pushing it again
//! through the other stores it again (a registry that believes a blob exists skips it).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::harness::{Etcd, Node, blob_set, cluster_test};
use crate::registry::{Registry, http, image_digest, pull, push, sample_images};

/// The sample images (`scripts/oci-images.py --sample`), as their listing names them.
struct SampleImages(serde_json::Value);

impl SampleImages {
    /// The manifest digest of image `name`.
    fn digest(&self, name: &str) -> String {
        image_digest(&self.0, name)
    }

    /// Every blob digest image `name` references (config and layers).
    fn blobs(&self, name: &str) -> Vec<String> {
        self.0["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap_or_else(|| panic!("no image {name} in the sample"))["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap().to_string())
            .collect()
    }
}

/// The prerequisites of these tests (etcd, FUSE, the registry and skopeo); their turn.
fn registry_test() -> Option<std::sync::MutexGuard<'static, ()>> {
    let turn = cluster_test()?;
    crate::common::prereq::Needs::new()
        .on_path(&["docker-registry", "skopeo"])
        .met("the cluster's caching tests need docker-registry and skopeo")
        .then_some(turn)
}

/// Two nodes over one store, a registry on each.
struct TwoReplicas {
    dir: tempfile::TempDir,
    storage: PathBuf,
    images: SampleImages,
    oci: PathBuf,
    // Dropped in this order: registries, nodes, etcd.
    r1: Registry,
    r2: Registry,
    n1: Node,
    n2: Node,
    _etcd: Etcd,
}

impl TwoReplicas {
    fn start() -> TwoReplicas {
        let dir = crate::common::tempdir();
        let storage = dir.path().join("store");
        fs::create_dir(&storage).unwrap();
        let (oci, images) = sample_images(dir.path());
        let images = SampleImages(images);
        let etcd = Etcd::start(dir.path());
        let n1 = Node::start(dir.path(), &storage, &etcd, "n1", &[]);
        let n2 = Node::start(dir.path(), &storage, &etcd, "n2", &[]);
        for n in [&n1, &n2] {
            n.wait_writable(true, Duration::from_secs(5));
        }
        let r1 = Registry::start(dir.path(), "r1", n1.mnt());
        let r2 = Registry::start(dir.path(), "r2", n2.mnt());
        TwoReplicas {
            dir,
            storage,
            images,
            oci,
            r1,
            r2,
            n1,
            n2,
            _etcd: etcd,
        }
    }

    /// What `repo:tag` names through registry `port`: the manifest's digest, or its
    /// HTTP status if it is not found.
    fn manifest(port: u16, repo: &str, tag: &str) -> Result<String, u16> {
        let (status, body) = http(port, "GET", &format!("/v2/{repo}/manifests/{tag}")).unwrap();
        if status != 200 {
            return Err(status);
        }
        let hex: String = Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(format!("sha256:{hex}"))
    }

    /// The tag's current link as node `n`'s mount shows it (its bytes, or the error kind).
    fn tag_link(n: &Node, repo: &str, tag: &str) -> Result<String, ErrorKind> {
        let link = n.mnt().join(format!(
            "docker/registry/v2/repositories/{repo}/_manifests/tags/{tag}/current/link"
        ));
        fs::read_to_string(link).map_err(|e| e.kind())
    }
}

/// A blob's data file below a store root (or a mount of it).
fn blob_data(root: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    root.join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

#[test]
fn a_tag_moved_through_one_node_is_read_at_once_through_the_other() {
    let Some(_turn) = registry_test() else {
        return;
    };
    let w = TwoReplicas::start();
    let (v1, v2) = (w.images.digest("app-v1"), w.images.digest("app-v2"));
    let through_2 = || TwoReplicas::manifest(w.r2.port, "app", "latest");

    push(&w.oci, "app-v1", w.r1.port, "app:latest");
    assert_eq!(through_2(), Ok(v1.clone()));
    assert_eq!(
        TwoReplicas::tag_link(&w.n2, "app", "latest"),
        Ok(v1.clone())
    );

    // Moved by the registry through node 1 (Debian's registry rewrites the link in place).
    push(&w.oci, "app-v2", w.r1.port, "app:latest");
    assert_eq!(through_2(), Ok(v2.clone()), "moved in place through node 1");
    assert_eq!(
        TwoReplicas::tag_link(&w.n2, "app", "latest"),
        Ok(v2.clone())
    );

    // Gone through node 1: deleting the manifest removes the tag's directory.
    let (st, _) = http(w.r1.port, "DELETE", &format!("/v2/app/manifests/{v2}")).unwrap();
    assert_eq!(st, 202, "manifest delete");
    assert_eq!(through_2(), Err(404), "the tag deleted through node 1");
    assert_eq!(
        TwoReplicas::tag_link(&w.n2, "app", "latest"),
        Err(ErrorKind::NotFound)
    );

    // Made again through node 1: a new directory under the same name.
    push(&w.oci, "app-v1", w.r1.port, "app:latest");
    assert_eq!(
        through_2(),
        Ok(v1.clone()),
        "the tag made again through node 1"
    );

    // A new tag and a new repository through node 1 are listed through node 2 at once
    // (the listings were read through node 2 before).
    let list = |path: &str| -> String {
        let (st, body) = http(w.r2.port, "GET", path).unwrap();
        assert_eq!(st, 200, "{path}");
        String::from_utf8(body).unwrap()
    };
    assert!(!list("/v2/app/tags/list").contains("\"v2\""));
    assert!(!list("/v2/_catalog").contains("\"tools\""));
    push(&w.oci, "app-v2", w.r1.port, "app:v2");
    push(&w.oci, "tools", w.r1.port, "tools:1");
    assert!(list("/v2/app/tags/list").contains("\"v2\""), "tags list");
    assert!(list("/v2/_catalog").contains("\"tools\""), "catalog");

    // Renamed over (as registry 3.1+ writes a link: a temporary file, then a rename).
    let current =
        w.n1.mnt()
            .join("docker/registry/v2/repositories/app/_manifests/tags/latest/current");
    let temp = current.join("link.6f1c9a.tmp");
    fs::write(&temp, &v2).unwrap();
    fs::rename(&temp, current.join("link")).unwrap();
    assert_eq!(through_2(), Ok(v2.clone()), "renamed over through node 1");
    assert_eq!(
        TwoReplicas::tag_link(&w.n2, "app", "latest"),
        Ok(v2.clone())
    );

    // And the other way, through the registry on node 2, read through node 1's mount.
    push(&w.oci, "app-v1", w.r2.port, "app:latest");
    assert_eq!(
        TwoReplicas::tag_link(&w.n1, "app", "latest"),
        Ok(v1.clone())
    );
    assert_eq!(pull(w.dir.path(), w.r1.port, "app:latest"), v1);
}

#[test]
fn a_blob_collected_through_one_node_is_not_present_through_the_other() {
    let Some(_turn) = registry_test() else {
        return;
    };
    let w = TwoReplicas::start();
    push(&w.oci, "app-v1", w.r1.port, "app:v1");
    push(&w.oci, "tools", w.r1.port, "junk:t");
    let tools = w.images.digest("tools");
    let mut blobs = w.images.blobs("tools");
    blobs.push(tools.clone());
    // Node 2 reads all of it: its kernel now knows every one of those names.
    assert_eq!(pull(w.dir.path(), w.r2.port, "junk:t"), tools);
    for b in &blobs {
        assert!(blob_data(w.n2.mnt(), b).is_file(), "{b} through node 2");
    }

    let (st, _) = http(w.r1.port, "DELETE", &format!("/v2/junk/manifests/{tools}")).unwrap();
    assert_eq!(st, 202, "manifest delete");
    let before = blob_set(&w.storage);
    assert_eq!(w.n1.gc().0, 0);
    let jobs = w.n1.wait_jobs(1, Duration::from_secs(30));
    assert_eq!(jobs[0]["outcome"], "done", "{:#}", jobs[0]);
    let after = blob_set(&w.storage);
    let gone: Vec<&String> = blobs
        .iter()
        .filter(|b| !after.contains(b.strip_prefix("sha256:").unwrap()))
        .collect();
    assert!(
        !gone.is_empty() && before.len() > after.len(),
        "the run through node 1 deleted the image's own blobs: {:#}",
        jobs[0]
    );
    for n in [&w.n1, &w.n2] {
        n.wait_writable(true, Duration::from_secs(3));
    }

    // Not present through node 2, with no wait.
    for b in &gone {
        let data = blob_data(w.n2.mnt(), b);
        assert_eq!(
            fs::metadata(&data).map_err(|e| e.kind()).err(),
            Some(ErrorKind::NotFound),
            "{b} deleted through node 1, still present through node 2"
        );
        assert!(!data.parent().unwrap().exists(), "{b}'s directory");
    }
    // So a push of the same image through node 2 stores every blob again (a registry
    // that believed one present would skip its data, and its link would be refused),
    // and it pulls whole through both nodes.
    push(&w.oci, "tools", w.r2.port, "junk:again");
    for b in &gone {
        assert!(blob_data(&w.storage, b).is_file(), "{b} stored again");
    }
    assert_eq!(pull(w.dir.path(), w.r1.port, "junk:again"), tools);
    assert_eq!(pull(w.dir.path(), w.r2.port, "junk:again"), tools);
}

#[test]
fn a_repository_removed_by_hand_and_pushed_again_through_one_node_is_read_through_the_other() {
    let Some(_turn) = registry_test() else {
        return;
    };
    let w = TwoReplicas::start();
    push(&w.oci, "tools", w.r1.port, "junk:t");
    // Node 2 reads and lists it: its kernel keeps the repository's own directories.
    assert_eq!(
        TwoReplicas::manifest(w.r2.port, "junk", "t"),
        Ok(w.images.digest("tools"))
    );
    assert_eq!(http(w.r2.port, "GET", "/v2/junk/tags/list").unwrap().0, 200);
    // An operator removes the repository through node 1 (the registry has no API for
    // it), and it is pushed again at once, another image under the same tag.
    fs::remove_dir_all(w.n1.mnt().join("docker/registry/v2/repositories/junk")).unwrap();
    push(&w.oci, "app-v1", w.r1.port, "junk:t");
    // Listed through node 2 first: its tags directory, listed there before, is the new one.
    let (st, body) = http(w.r2.port, "GET", "/v2/junk/tags/list").unwrap();
    assert_eq!(
        (st, String::from_utf8_lossy(&body).contains("\"t\"")),
        (200, true),
        "tags of the repository made again, listed through node 2: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        TwoReplicas::manifest(w.r2.port, "junk", "t"),
        Ok(w.images.digest("app-v1")),
        "the repository made again through node 1, read through node 2"
    );
    assert_eq!(
        pull(w.dir.path(), w.r2.port, "junk:t"),
        w.images.digest("app-v1")
    );
}

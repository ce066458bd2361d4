//! Debian's docker-registry on two nodes of the cluster (one backing store, two mounts):
//! what is pushed through one replica pulls whole through the other after a GC the other
//! collected, and a push after it through the other pulls through the first.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::harness::{Etcd, Node, blob_set, cluster_test};

/// `docker-registry serve`, killed by pid on drop.
pub(crate) struct Registry {
    child: Child,
    pub(crate) port: u16,
    pub(crate) log: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped drop-in's `Environment=` settings (they turn the registry's cache off).
fn drop_in_environment() -> Vec<(String, String)> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/docker-registry.service.d/regfs.conf");
    let text = fs::read_to_string(&path).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Registry {
    /// Debian's config.yml with the storage at `mnt`, a loopback port and no auth.
    pub(crate) fn start(dir: &Path, name: &str, mnt: &Path) -> Registry {
        let text = fs::read_to_string("/etc/docker/registry/config.yml").unwrap();
        let mut v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        v["storage"]["filesystem"]["rootdirectory"] = mnt.display().to_string().into();
        v["http"]["addr"] = format!("127.0.0.1:{port}").into();
        v.as_mapping_mut().unwrap().remove("auth");
        let config = dir.join(format!("{name}.yml"));
        fs::write(&config, serde_yaml::to_string(&v).unwrap()).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .envs(drop_in_environment())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("docker-registry");
        let r = Registry { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(15);
        while http(r.port, "GET", "/v2/").map(|(s, _)| s) != Ok(200) {
            assert!(
                Instant::now() < deadline,
                "registry {name}: {}",
                fs::read_to_string(&r.log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
        r
    }
}

/// One request: (status, body).
pub(crate) fn http(port: u16, method: &str, path: &str) -> Result<(u16, Vec<u8>), String> {
    let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json";
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("Accept", accept)
        .body(())
        .map_err(|e| e.to_string())?;
    let mut resp = agent.run(req).map_err(|e| e.to_string())?;
    let body = resp
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .map_err(|e| e.to_string())?;
    Ok((resp.status().as_u16(), body))
}

pub fn skopeo(args: &[&str]) -> Output {
    Command::new("skopeo")
        .args(["--insecure-policy", "--command-timeout", "60s"])
        .args(args)
        .output()
        .expect("skopeo")
}

pub(crate) fn push(oci: &Path, image: &str, port: u16, dest: &str) {
    let src = format!("oci:{}:{image}", oci.display());
    let dst = format!("docker://127.0.0.1:{port}/{dest}");
    let out = skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &src,
        &dst,
    ]);
    assert!(
        out.status.success(),
        "push {image} to {dest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pulls whole (skopeo checks every blob's digest) and returns the manifest's digest.
pub(crate) fn pull(dir: &Path, port: u16, reference: &str) -> String {
    let dest = dir.join(format!("pull-{}", reference.replace([':', '/'], "-")));
    let _ = fs::remove_dir_all(&dest);
    let src = format!("docker://127.0.0.1:{port}/{reference}");
    let dst = format!("dir:{}", dest.display());
    let out = skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        "--src-tls-verify=false",
        &src,
        &dst,
    ]);
    assert!(
        out.status.success(),
        "pull {reference} from :{port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = fs::read(dest.join("manifest.json")).unwrap();
    let hex: String = Sha256::digest(&manifest)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// The sample OCI images (scripts/oci-images.py) in `dir/oci`: the layout and its listing.
pub(crate) fn sample_images(dir: &Path) -> (PathBuf, serde_json::Value) {
    let oci = dir.join("oci");
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/oci-images.py"))
        .arg(&oci)
        .args(["--sample", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (oci, serde_json::from_slice(&out.stdout).unwrap())
}

/// The manifest digest of the sample image `name`.
pub(crate) fn image_digest(images: &serde_json::Value, name: &str) -> String {
    images["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_push_through_one_replica_pulls_through_the_other_after_gc() {
    let Some(_one_at_a_time) = cluster_test() else {
        return;
    };
    if !crate::common::prereq::Needs::new()
        .on_path(&["docker-registry", "skopeo"])
        .met("the cluster's registry test needs docker-registry and skopeo")
    {
        return;
    }
    let dir = crate::common::tempdir();
    let storage = dir.path().join("store");
    fs::create_dir(&storage).unwrap();
    let (oci, images) = sample_images(dir.path());
    let digest = |name: &str| image_digest(&images, name);
    let etcd = Etcd::start(dir.path());
    let n1 = Node::start(dir.path(), &storage, &etcd, "n1", &[]);
    let n2 = Node::start(dir.path(), &storage, &etcd, "n2", &[]);
    for n in [&n1, &n2] {
        n.wait_writable(true, Duration::from_secs(5));
    }
    let r1 = Registry::start(dir.path(), "r1", n1.mnt());
    let r2 = Registry::start(dir.path(), "r2", n2.mnt());

    // Replica 2 looks first and finds nothing: its kernel must not remember that.
    let (st, _) = http(r2.port, "GET", "/v2/app/manifests/v1").unwrap();
    assert_eq!(st, 404);
    // Through replica 1: two tags, and an image whose manifest is then deleted (garbage).
    push(&oci, "app-v1", r1.port, "app:v1");
    push(&oci, "app-v2", r1.port, "app:v2");
    push(&oci, "tools", r1.port, "junk:t");
    let (st, _) = http(
        r1.port,
        "DELETE",
        &format!("/v2/junk/manifests/{}", digest("tools")),
    )
    .unwrap();
    assert_eq!(st, 202, "manifest delete");
    // Through replica 2 at once: another node's new tag and blobs are visible.
    assert_eq!(pull(dir.path(), r2.port, "app:v1"), digest("app-v1"));
    let before = blob_set(&storage);

    assert_eq!(n2.gc().0, 0);
    let jobs = n2.wait_jobs(1, Duration::from_secs(30));
    assert_eq!(jobs[0]["outcome"], "done", "{:#}", jobs[0]);
    assert_eq!(jobs[0]["cluster"]["members"].as_array().unwrap().len(), 2);
    let deleted = jobs[0]["report"]["blobs_deleted"].as_u64().unwrap();
    assert!(deleted > 0, "the deleted image's blobs go: {:#}", jobs[0]);
    assert_eq!(
        blob_set(&storage).len() as u64,
        before.len() as u64 - deleted
    );
    for n in [&n1, &n2] {
        n.wait_writable(true, Duration::from_secs(3));
    }

    for (tag, image) in [("app:v1", "app-v1"), ("app:v2", "app-v2")] {
        assert_eq!(
            pull(dir.path(), r2.port, tag),
            digest(image),
            "{tag} through replica 2 after GC"
        );
    }
    // And the other way: pushed through replica 2 after the run, pulled through 1.
    push(&oci, "tools", r2.port, "tools:1");
    assert_eq!(pull(dir.path(), r1.port, "tools:1"), digest("tools"));
}

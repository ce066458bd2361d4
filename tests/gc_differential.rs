//! Differential tests of `regfs gc --offline` against the real CNCF distribution registry
//! (Debian's docker-registry 2.8.2) on a store that the real registry and the real skopeo
//! built (`scripts/registry-fixture.py build`).
//!
//! - default mode: regfs deletes exactly the blobs the registry's own collector deletes,
//!   and also cleans what that collector leaves behind (dangling `_layers` links, empty
//!   revision directories, abandoned uploads when they are old enough);
//! - a dry run deletes nothing and predicts the real run path for path;
//! - `--delete-untagged` keeps every tagged image whole (index children, referrers), which
//!   the registry's collector (2.8) does not: its multi-arch image loses its children;
//! - a store whose lock is held (a regfs daemon, another collector) is refused.
//!
//! Prerequisites: python3, docker-registry, skopeo, root. Under CI=true a missing one fails
//! the test; elsewhere the test says why and returns.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::describe_output;
use common::prereq::Needs;
use common::store::well_formed_link;
use serde_json::Value;
use tempfile::TempDir;

const V2: &str = "docker/registry/v2";

// ---------------------------------------------------------------------------------------
// Prerequisites and the shared fixture

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/registry-fixture.py")
}

/// A store built by the real registry and skopeo, and what fixture.json says of it.
struct Fixture {
    dir: PathBuf,
    json: Value,
}

impl Fixture {
    fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    fn blobs(&self) -> &serde_json::Map<String, Value> {
        self.json["blobs"].as_object().expect("fixture.json: blobs")
    }

    fn images(&self) -> &Vec<Value> {
        self.json["images"]
            .as_array()
            .expect("fixture.json: images")
    }

    fn image(&self, name: &str) -> &Value {
        self.images()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("fixture.json has no image {name}"))
    }

    /// Blob digests whose flag `key` (survives_gc, survives_delete_untagged, ...) is set.
    fn blobs_where(&self, key: &str) -> BTreeSet<String> {
        self.blobs()
            .iter()
            .filter(|(_, b)| b[key].as_bool().expect("boolean flag"))
            .map(|(d, _)| d.clone())
            .collect()
    }
}

static FIXTURE_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_fixture() {
    if let Some(dir) = FIXTURE_DIR.get() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Builds the fixture once per test binary (removed at exit). `None`: skip the test.
fn fixture() -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Result<Fixture, String>> = OnceLock::new();
    let needs = Needs::registry_tests(&script());
    if !needs.met("the registry differential tests need python3, docker-registry, skopeo and root")
    {
        return None;
    }
    let fx = FIXTURE.get_or_init(|| {
        let dir = common::tempdir().keep();
        FIXTURE_DIR.set(dir.clone()).expect("fixture built once");
        // SAFETY: registers a plain function that only removes the directory at exit.
        unsafe { libc::atexit(remove_fixture) };
        let out_dir = dir.join("fx");
        let t0 = Instant::now();
        let out = Command::new("python3")
            .arg(script())
            .arg("build")
            .arg(&out_dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running python3: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "registry-fixture.py build failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        eprintln!("fixture built in {:.2} s", t0.elapsed().as_secs_f64());
        let text = fs::read_to_string(out_dir.join("fixture.json"))
            .map_err(|e| format!("reading fixture.json: {e}"))?;
        let json = serde_json::from_str(&text).map_err(|e| format!("fixture.json: {e}"))?;
        Ok(Fixture { dir: out_dir, json })
    });
    match fx {
        Ok(fx) => Some(fx),
        Err(e) => panic!("{e}"),
    }
}

/// A private working directory for one test, with a copy of fixture.json (pull-all reads
/// it from there and keeps its skopeo state there).
fn workdir(fx: &Fixture) -> TempDir {
    let dir = common::tempdir();
    fs::copy(fx.dir.join("fixture.json"), dir.path().join("fixture.json"))
        .expect("copy fixture.json");
    dir
}

// ---------------------------------------------------------------------------------------
// Processes

fn run(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// `cp -a` the fixture's store to `dest` (which must not exist).
fn copy_store(fx: &Fixture, dest: &Path) {
    let out = run(Command::new("cp").arg("-a").arg(fx.store()).arg(dest));
    assert!(out.status.success(), "cp -a: {}", describe_output(&out));
}

/// `regfs gc --offline STORE ARGS`: its output, and its JSON report when it printed one.
fn regfs_gc(store: &Path, args: &[&str]) -> (Output, Option<Value>) {
    let t0 = Instant::now();
    let out = run(Command::new(env!("CARGO_BIN_EXE_regfs"))
        .args(["gc", "--offline"])
        .arg(store)
        .args(args));
    eprintln!(
        "regfs gc --offline {} {} took {:.3} s",
        store.display(),
        args.join(" "),
        t0.elapsed().as_secs_f64()
    );
    let report = serde_json::from_slice(&out.stdout).ok();
    (out, report)
}

/// A successful `regfs gc --offline STORE --json ARGS`: its report.
fn regfs_gc_ok(store: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (out, report) = regfs_gc(store, &all);
    assert!(
        out.status.success(),
        "regfs gc failed: {}",
        describe_output(&out)
    );
    let report = report.unwrap_or_else(|| panic!("no JSON report: {}", describe_output(&out)));
    assert_eq!(report["outcome"], "done", "report: {report:#}");
    assert_eq!(
        report["warnings"].as_array().map(Vec::len),
        Some(0),
        "warnings: {report:#}"
    );
    report
}

fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("report field {field} is not a count: {report:#}"))
}

/// `docker-registry garbage-collect [ARGS] CONFIG` on `store`, with a copy of the fixture's
/// registry.yml whose rootdirectory is `store`.
fn peer_gc(fx: &Fixture, store: &Path, work: &Path, args: &[&str]) {
    let text = fs::read_to_string(fx.dir.join("registry.yml")).expect("registry.yml");
    let mut replaced = 0;
    let config: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("rootdirectory:") {
                replaced += 1;
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}rootdirectory: {}\n", store.display())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_eq!(replaced, 1, "registry.yml has one rootdirectory:\n{text}");
    let path = work.join(format!(
        "gc-{}.yml",
        store.file_name().unwrap().to_string_lossy()
    ));
    fs::write(&path, config).expect("write registry config");
    let t0 = Instant::now();
    let out = run(Command::new("docker-registry")
        .arg("garbage-collect")
        .args(args)
        .arg(&path));
    eprintln!(
        "docker-registry garbage-collect {} took {:.3} s",
        args.join(" "),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "docker-registry garbage-collect failed: {}",
        describe_output(&out)
    );
}

/// A docker-registry serving a store, started by `registry-fixture.py serve --foreground`
/// (which stays its parent). Dropping it kills the registry by its pid, waits until its
/// port is closed, then reaps the script.
struct Registry {
    script: Child,
    pid: i32,
    port: u16,
}

impl Registry {
    fn serve(work: &Path, store: &Path) -> Registry {
        let log = File::create(work.join("serve-script.log")).expect("serve log");
        let mut script = Command::new("python3")
            .arg(script())
            .arg("serve")
            .arg(work.join("serve"))
            .arg(store)
            .arg("--foreground")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start registry-fixture.py serve");
        let mut line = String::new();
        let read = BufReader::new(script.stdout.take().expect("stdout")).read_line(&mut line);
        let parsed = line
            .split_whitespace()
            .map(str::parse::<i64>)
            .collect::<Result<Vec<_>, _>>();
        match (read, parsed.as_deref()) {
            (Ok(_), Ok([port, pid])) => Registry {
                script,
                pid: *pid as i32,
                port: *port as u16,
            },
            _ => {
                let _ = script.kill();
                let _ = script.wait();
                let log = fs::read_to_string(work.join("serve-script.log")).unwrap_or_default();
                panic!("registry-fixture.py serve printed {line:?}, not PORT PID:\n{log}");
            }
        }
    }

    fn port_open(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        use rustix::process::{Pid, Signal, kill_process};
        let pid = Pid::from_raw(self.pid).expect("registry pid");
        let _ = kill_process(pid, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.port_open() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.port_open() {
            let _ = kill_process(pid, Signal::KILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.port_open() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // The script exits once its child has; reap it (or kill it if it hangs).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.script.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = self.script.kill();
                    let _ = self.script.wait();
                    break;
                }
            }
        }
        if !std::thread::panicking() {
            assert!(!self.port_open(), "registry port {} still open", self.port);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Looking at stores

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("sha256 digest")
}

fn blob_dir(store: &Path, digest: &str) -> PathBuf {
    let h = hex(digest);
    store.join(format!("{V2}/blobs/sha256/{}/{h}", &h[..2]))
}

fn repo_dir(store: &Path, repo: &str) -> PathBuf {
    store.join(format!("{V2}/repositories/{repo}"))
}

/// The digests of the blob directories (blobs/sha256/*/*) present in a store.
fn blob_dirs(store: &Path) -> BTreeSet<String> {
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
struct Entry {
    dir: bool,
    size: u64,
    mtime: (i64, i64),
}

/// Every path under `root` (relative), with its type, size and mtime.
fn listing(root: &Path) -> BTreeMap<String, Entry> {
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
fn shapes(l: &BTreeMap<String, Entry>) -> BTreeMap<String, (bool, u64)> {
    l.iter()
        .map(|(p, e)| (p.clone(), (e.dir, e.size)))
        .collect()
}

/// Every file named `link` in a store, with its content.
fn links(store: &Path) -> BTreeMap<String, Vec<u8>> {
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
fn layer_links_of(fx: &Fixture, store: &Path, digests: &BTreeSet<String>) -> BTreeSet<String> {
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

fn str_set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Digests of an image entry: its manifest and every blob it references directly.
fn image_blobs(e: &Value) -> BTreeSet<String> {
    let mut out = str_set(&e["blobs"]);
    out.insert(e["digest"].as_str().unwrap().to_string());
    out
}

fn short(set: &BTreeSet<String>) -> Vec<&str> {
    set.iter().map(|d| &d[..19.min(d.len())]).collect()
}

/// How long a test took after the shared fixture was built (which the first test waits
/// for), to see where the time goes.
fn report_time(test: &str, t0: Instant) {
    eprintln!(
        "{test}: {:.2} s (after the fixture)",
        t0.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn default_mode_deletes_exactly_what_the_registry_deletes() {
    let Some(fx) = fixture() else { return };
    let t0 = Instant::now();
    let work = workdir(fx);
    let (a, b, c) = (
        work.path().join("A"),
        work.path().join("B"),
        work.path().join("C"),
    );
    for dir in [&a, &b, &c] {
        copy_store(fx, dir);
    }
    let before = blob_dirs(&fx.store());

    peer_gc(fx, &a, work.path(), &[]);
    let report = regfs_gc_ok(&b, &[]);
    assert_eq!(report["mode"], "default");
    assert_eq!(report["dry_run"], false);

    let after_a = blob_dirs(&a);
    let after_b = blob_dirs(&b);
    let peer_deleted: BTreeSet<String> = before.difference(&after_a).cloned().collect();
    let regfs_deleted: BTreeSet<String> = before.difference(&after_b).cloned().collect();
    assert_eq!(
        after_a,
        after_b,
        "blobs left by docker-registry garbage-collect (A) and regfs gc (B) differ:\n\
         only in A: {:?}\nonly in B: {:?}",
        after_a.difference(&after_b).collect::<Vec<_>>(),
        after_b.difference(&after_a).collect::<Vec<_>>()
    );
    assert_eq!(
        after_b,
        fx.blobs_where("survives_gc"),
        "regfs kept other blobs than fixture.json's survives_gc"
    );
    // Non-trivial: the image deleted by digest lost its manifest and its layers.
    let deleted = fx.image("deleted");
    assert!(!after_a.is_empty(), "the peer deleted every blob");
    assert!(
        image_blobs(deleted).is_subset(&peer_deleted),
        "the peer did not delete the blobs of the image deleted by digest {}: deleted {:?}",
        deleted["digest"],
        short(&peer_deleted)
    );
    assert_eq!(
        count(&report, "blobs_deleted"),
        peer_deleted.len() as u64,
        "regfs blobs_deleted vs the number of blobs the registry deleted {:?}",
        short(&peer_deleted)
    );
    assert_eq!(regfs_deleted, peer_deleted);
    let freed: u64 = peer_deleted
        .iter()
        .map(|d| {
            fs::metadata(blob_dir(&fx.store(), d).join("data"))
                .unwrap()
                .len()
        })
        .sum();
    assert!(count(&report, "bytes_freed") > 0);
    assert_eq!(
        count(&report, "bytes_freed"),
        freed,
        "bytes_freed vs the sizes of the deleted blobs' data"
    );
    assert_eq!(count(&report, "blobs_scanned"), before.len() as u64);
    assert_eq!(count(&report, "blobs_marked"), after_b.len() as u64);

    // What the registry's collector leaves behind and regfs cleans: the _layers links of
    // the deleted blobs,
    let links_before = layer_links_of(fx, &fx.store(), &peer_deleted);
    assert!(
        !links_before.is_empty(),
        "the deleted blobs had no _layers links to begin with"
    );
    assert_eq!(
        layer_links_of(fx, &a, &peer_deleted),
        links_before,
        "the registry's collector is expected to leave the _layers links of deleted blobs"
    );
    let left_in_b = layer_links_of(fx, &b, &peer_deleted);
    assert!(
        left_in_b.is_empty(),
        "regfs left _layers links of deleted blobs: {left_in_b:?}"
    );
    assert_eq!(
        count(&report, "layer_links_removed"),
        links_before.len() as u64
    );

    // the empty revision directory of the manifest deleted by digest,
    let revision = repo_dir(&a, deleted["repository"].as_str().unwrap()).join(format!(
        "_manifests/revisions/sha256/{}",
        hex(deleted["digest"].as_str().unwrap())
    ));
    assert!(
        revision.is_dir() && fs::read_dir(&revision).unwrap().next().is_none(),
        "expected the registry to leave an empty revision directory {}",
        revision.display()
    );
    let revision_b = b.join(revision.strip_prefix(&a).unwrap());
    assert!(
        !revision_b.exists(),
        "regfs left the empty revision directory {}",
        revision_b.display()
    );

    // and no link file in B is empty or malformed, or points at a blob that is gone.
    let links_b = links(&b);
    assert!(!links_b.is_empty());
    for (path, content) in &links_b {
        assert!(
            well_formed_link(content),
            "{path} in B holds {:?}",
            String::from_utf8_lossy(content)
        );
        let target = String::from_utf8_lossy(content);
        assert!(
            blob_dir(&b, &target).join("data").is_file(),
            "{path} in B points at {target}, which is gone"
        );
    }

    // The abandoned upload is fresh: kept with the default --upload-max-age (168h),
    let upload = &fx.json["abandoned_upload"];
    let upload_rel = Path::new(upload["path"].as_str().unwrap())
        .strip_prefix(fx.store())
        .expect("the abandoned upload is in the store")
        .to_path_buf();
    assert!(
        b.join(&upload_rel).join("data").is_file(),
        "regfs removed the fresh upload {} with the default --upload-max-age",
        upload_rel.display()
    );
    assert_eq!(count(&report, "uploads_removed"), 0);

    // and removed with --upload-max-age 0s (on a fresh copy), which collects the same blobs.
    let report_c = regfs_gc_ok(&c, &["--upload-max-age", "0s"]);
    assert!(
        !c.join(&upload_rel).exists(),
        "regfs kept the upload {} with --upload-max-age 0s",
        upload_rel.display()
    );
    assert!(
        c.join(&upload_rel).parent().unwrap().is_dir(),
        "the _uploads directory itself must stay"
    );
    assert_eq!(count(&report_c, "uploads_removed"), 1);
    let upload_size: u64 = listing(&fx.store().join(&upload_rel))
        .values()
        .map(|e| e.size)
        .sum();
    assert!(upload_size > upload["bytes"].as_u64().unwrap());
    assert_eq!(
        count(&report_c, "upload_bytes_freed"),
        upload_size,
        "upload_bytes_freed vs the size of every file of the upload directory"
    );
    assert_eq!(blob_dirs(&c), after_b);
    report_time("default_mode_deletes_exactly_what_the_registry_deletes", t0);
}

#[test]
fn dry_run_predicts_the_real_run() {
    let Some(fx) = fixture() else { return };
    let t0 = Instant::now();
    let work = workdir(fx);
    let variants: [&[&str]; 2] = [&[], &["--delete-untagged", "--upload-max-age", "0s"]];
    for (i, extra) in variants.iter().enumerate() {
        let dry = work.path().join(format!("dry{i}"));
        let real = work.path().join(format!("real{i}"));
        copy_store(fx, &dry);
        copy_store(fx, &real);

        let before = listing(&dry);
        let mut args = vec!["--dry-run", "--list"];
        args.extend_from_slice(extra);
        let planned = regfs_gc_ok(&dry, &args);
        assert_eq!(planned["dry_run"], true);
        let after = listing(&dry);
        if before != after {
            let changed: Vec<_> = before
                .iter()
                .filter(|(p, e)| after.get(*p) != Some(e))
                .map(|(p, _)| p)
                .chain(after.keys().filter(|p| !before.contains_key(*p)))
                .collect();
            panic!("regfs gc --dry-run {extra:?} changed the store: {changed:?}");
        }

        let mut args = vec!["--list"];
        args.extend_from_slice(extra);
        let done = regfs_gc_ok(&real, &args);
        assert_eq!(done["dry_run"], false);

        // Every difference between the prediction and the real run, reported at the end
        // (after the path checks) so that one failure does not hide the others.
        let mut mismatches = Vec::new();
        for field in [
            "mode",
            "outcome",
            "repositories",
            "manifests_scanned",
            "blobs_scanned",
            "blobs_marked",
            "manifests_removed",
            "tag_index_entries_removed",
            "blobs_deleted",
            "bytes_freed",
            "layer_links_removed",
            "uploads_removed",
            "upload_bytes_freed",
            "temp_files_removed",
            "dirs_removed",
            "warnings",
        ] {
            if planned[field] != done[field] {
                mismatches.push(format!(
                    "{field}: dry run {} vs real run {}",
                    planned[field], done[field]
                ));
            }
        }
        let planned_paths: Vec<String> = str_set(&planned["deleted"]).into_iter().collect();
        let done_paths: Vec<String> = str_set(&done["deleted"]).into_iter().collect();
        assert_eq!(
            planned["deleted"].as_array().map(Vec::len),
            Some(planned_paths.len()),
            "the dry run lists a path twice"
        );
        assert_eq!(
            done["deleted"].as_array().map(Vec::len),
            Some(done_paths.len()),
            "the real run lists a path twice"
        );
        assert_eq!(
            planned_paths, done_paths,
            "{extra:?}: deleted paths of the dry run vs the real run"
        );
        assert!(!done_paths.is_empty(), "{extra:?}: nothing deleted");

        // Every path listed existed and is gone; nothing else changed.
        for p in &done_paths {
            assert!(before.contains_key(p), "listed {p}, which never existed");
            assert!(
                !real.join(p).exists(),
                "listed {p} as deleted, but it is still there"
            );
        }
        let gone = |p: &str| {
            done_paths.iter().any(|d| {
                p == d
                    || p.strip_prefix(d.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            })
        };
        let expected: BTreeMap<_, _> = shapes(&before)
            .into_iter()
            .filter(|(p, _)| !gone(p))
            .collect();
        let got = shapes(&listing(&real));
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{extra:?}: the real run removed other paths than it listed"
        );
        assert_eq!(got, expected, "{extra:?}: sizes changed");
        assert!(
            mismatches.is_empty(),
            "regfs gc --dry-run {extra:?} reported other counts than the real run:\n  {}",
            mismatches.join("\n  ")
        );
    }
    report_time("dry_run_predicts_the_real_run", t0);
}

#[test]
fn delete_untagged_keeps_tagged_images_whole() {
    let Some(fx) = fixture() else { return };
    let t0 = Instant::now();
    let work = workdir(fx);
    let d = work.path().join("D");
    let e = work.path().join("E");
    copy_store(fx, &d);
    copy_store(fx, &e);
    let before = blob_dirs(&fx.store());

    let report = regfs_gc_ok(&d, &["--delete-untagged"]);
    assert_eq!(report["mode"], "delete-untagged");

    // What must stay: every blob of every image that survives --delete-untagged.
    let surviving: Vec<&Value> = fx
        .images()
        .iter()
        .filter(|i| i["survives_delete_untagged"] == true)
        .collect();
    let needed: BTreeSet<String> = surviving.iter().flat_map(|i| image_blobs(i)).collect();
    let after_d = blob_dirs(&d);
    for i in &surviving {
        let missing: BTreeSet<_> = image_blobs(i).difference(&after_d).cloned().collect();
        assert!(
            missing.is_empty(),
            "regfs --delete-untagged deleted blobs of the kept image {} ({} {}): {missing:?}",
            i["name"],
            i["repository"],
            i["digest"]
        );
    }
    for i in fx
        .images()
        .iter()
        .filter(|i| i["survives_delete_untagged"] == false)
    {
        let kept: BTreeSet<_> = image_blobs(i)
            .difference(&needed)
            .filter(|b| after_d.contains(*b))
            .cloned()
            .collect();
        assert!(
            kept.is_empty(),
            "regfs --delete-untagged kept blobs only the collected image {} ({} {}) needs: \
             {kept:?}",
            i["name"],
            i["repository"],
            i["digest"]
        );
    }
    assert_eq!(after_d, needed);
    assert_eq!(after_d, fx.blobs_where("survives_delete_untagged"));
    assert_eq!(
        count(&report, "blobs_deleted"),
        (before.len() - after_d.len()) as u64
    );
    let collected_manifests = fx
        .images()
        .iter()
        .filter(|i| i["present"] == true && i["survives_delete_untagged"] == false)
        .count();
    assert_eq!(
        count(&report, "manifests_removed"),
        collected_manifests as u64
    );

    // Every tagged image pulls completely (the index with its children, the referrers),
    // the collected ones are gone.
    {
        let registry = Registry::serve(work.path(), &d);
        let t = Instant::now();
        let out = run(Command::new("python3")
            .arg(script())
            .arg("pull-all")
            .arg(work.path())
            .arg(registry.port.to_string())
            .args(["--expect", "delete-untagged"]));
        eprintln!("pull-all took {:.2} s", t.elapsed().as_secs_f64());
        assert!(
            out.status.success(),
            "pull-all --expect delete-untagged after regfs gc --delete-untagged: {}",
            describe_output(&out)
        );
    }

    // The registry's own --delete-untagged: whatever it rightly deleted, regfs deleted too;
    // but it also deleted the children of the tagged multi-arch index, which regfs keeps.
    peer_gc(fx, &e, work.path(), &["--delete-untagged"]);
    let after_e = blob_dirs(&e);
    let peer_deleted: BTreeSet<String> = before.difference(&after_e).cloned().collect();
    let rightly: BTreeSet<String> = peer_deleted.difference(&needed).cloned().collect();
    let kept_by_regfs: Vec<_> = rightly.intersection(&after_d).collect();
    assert!(
        kept_by_regfs.is_empty(),
        "blobs the registry rightly deleted but regfs kept: {kept_by_regfs:?}"
    );
    let multi = fx.image("multi");
    assert_eq!(multi["tag"], "multi");
    let children = str_set(&multi["children"]);
    assert!(!children.is_empty());
    let mut broken = BTreeSet::new();
    for child in &children {
        let entry = fx
            .images()
            .iter()
            .find(|i| i["digest"] == child.as_str())
            .expect("child in fixture.json");
        let blobs = image_blobs(entry);
        broken.extend(blobs.difference(&after_e).cloned());
        assert!(
            blobs.is_subset(&after_d),
            "regfs broke the multi-arch image: child {child} lost {:?}",
            blobs.difference(&after_d).collect::<Vec<_>>()
        );
    }
    assert!(
        !broken.is_empty(),
        "the registry's 2.8 --delete-untagged was expected to delete blobs of the children \
         of the tagged index {} (upstream #3178), and did not",
        multi["digest"]
    );
    eprintln!(
        "docker-registry --delete-untagged deleted {} blobs needed by tagged images \
         (children of the multi-arch index, referrers); regfs kept them",
        peer_deleted.intersection(&needed).count()
    );
    report_time("delete_untagged_keeps_tagged_images_whole", t0);
}

#[test]
fn a_regfs_daemon_or_another_collector_holding_the_store_is_refused() {
    let Some(fx) = fixture() else { return };
    let work = workdir(fx);
    let s = work.path().join("S");
    copy_store(fx, &s);
    let before = listing(&s);

    let dir = File::open(&s).expect("open the storage directory");
    rustix::fs::flock(&dir, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .expect("flock the storage directory");
    for args in [
        &["--upload-max-age", "0s"][..],
        &["--delete-untagged", "--json"][..],
    ] {
        let (out, _) = regfs_gc(&s, args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "regfs gc {args:?} on a locked store: {}",
            describe_output(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("in use"),
            "stderr does not say the store is in use: {stderr}"
        );
        assert_eq!(
            listing(&s),
            before,
            "regfs gc {args:?} changed a locked store"
        );
    }

    // Once the lock is released, the same store is collected.
    drop(dir);
    let report = regfs_gc_ok(&s, &[]);
    assert!(count(&report, "blobs_deleted") > 0);
}

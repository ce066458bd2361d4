//! Prerequisites and the shared fixture: the store the real registry and skopeo built
//! once per test binary (`scripts/registry-fixture.py build`), and a work directory per
//! test.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::Value;
use tempfile::TempDir;

use crate::common;
use crate::common::prereq::Needs;

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/registry-fixture.py")
}

/// A store built by the real registry and skopeo, and what fixture.json says of it.
pub struct Fixture {
    pub dir: PathBuf,
    pub json: Value,
}

impl Fixture {
    pub fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    pub fn blobs(&self) -> &serde_json::Map<String, Value> {
        self.json["blobs"].as_object().expect("fixture.json: blobs")
    }

    pub fn images(&self) -> &Vec<Value> {
        self.json["images"]
            .as_array()
            .expect("fixture.json: images")
    }

    pub fn image(&self, name: &str) -> &Value {
        self.images()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("fixture.json has no image {name}"))
    }

    /// Blob digests whose flag `key` (survives_gc, survives_delete_untagged, ...) is set.
    pub fn blobs_where(&self, key: &str) -> BTreeSet<String> {
        self.blobs()
            .iter()
            .filter(|(_, b)| b[key].as_bool().expect("boolean flag"))
            .map(|(d, _)| d.clone())
            .collect()
    }
}

pub static FIXTURE_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_fixture() {
    if let Some(dir) = FIXTURE_DIR.get() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Builds the fixture once per test binary (removed at exit). `None`: skip the test.
pub fn fixture() -> Option<&'static Fixture> {
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
pub fn workdir(fx: &Fixture) -> TempDir {
    let dir = common::tempdir();
    fs::copy(fx.dir.join("fixture.json"), dir.path().join("fixture.json"))
        .expect("copy fixture.json");
    dir
}

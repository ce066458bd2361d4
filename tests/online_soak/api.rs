//! The registry's HTTP API as a client uses it (uploads, manifest puts, deletes, tag
//! lists), skopeo pushes with retries, the soak's images and the GC mode under test.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::common::describe_output;
use crate::ctx::{Ctx, Image};
pub use crate::support::{Answer, request};
use crate::support::{REGISTRY_PASSWORD, REGISTRY_USER, run};

/// The GC mode under test: `SOAK_GC_MODE` (`online`, the default, or `read-only`).
pub fn gc_mode() -> String {
    let mode = std::env::var("SOAK_GC_MODE").unwrap_or_else(|_| "online".into());
    assert!(
        mode == "online" || mode == "read-only",
        "SOAK_GC_MODE must be online or read-only, not {mode:?}"
    );
    mode
}

/// The daemon's arguments for that mode.
pub fn daemon_args() -> Vec<&'static str> {
    if gc_mode() == "online" {
        vec!["--gc-mode", "online"]
    } else {
        vec![]
    }
}

/// Uploads `bytes` as a blob of `repo` in one request (POST, then PUT with the digest).
pub fn upload_blob(port: u16, repo: &str, bytes: &[u8]) -> Result<String, String> {
    let digest = digest_of(bytes);
    let start = request(
        port,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        &[],
    )?;
    if start.status != 202 {
        return Err(format!(
            "POST upload: HTTP {} {}",
            start.status,
            start.text()
        ));
    }
    let loc = start.header("Location").ok_or("no Location")?;
    let path = loc
        .find("/v2/")
        .map(|i| &loc[i..])
        .ok_or_else(|| format!("odd Location {loc}"))?;
    let sep = if path.contains('?') { '&' } else { '?' };
    let put = request(
        port,
        "PUT",
        &format!("{path}{sep}digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        bytes,
    )?;
    if put.status != 201 {
        return Err(format!("PUT upload: HTTP {} {}", put.status, put.text()));
    }
    Ok(digest)
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!(
        "sha256:{}",
        crate::support::hex_of(&sha2::Sha256::digest(bytes))
    )
}

/// PUT of a manifest's bytes at REPO:REFERENCE: the HTTP answer.
pub fn put_manifest(
    port: u16,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> Answer {
    request(
        port,
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", media_type)],
        bytes,
    )
    .unwrap_or_else(|e| panic!("PUT manifest {repo}:{reference}: {e}"))
}

/// DELETE of a manifest by digest: the HTTP status.
pub fn delete_manifest(port: u16, repo: &str, digest: &str) -> Result<u16, String> {
    request(
        port,
        "DELETE",
        &format!("/v2/{repo}/manifests/{digest}"),
        &[],
        &[],
    )
    .map(|a| a.status)
}

/// HEAD of a blob in a repository: the HTTP status ("does the registry say it exists").
pub fn head_blob(port: u16, repo: &str, digest: &str) -> u16 {
    request(
        port,
        "HEAD",
        &format!("/v2/{repo}/blobs/{digest}"),
        &[],
        &[],
    )
    .unwrap_or_else(|e| panic!("HEAD blob {repo}@{digest}: {e}"))
    .status
}

/// The tags the registry lists for a repository (none for an unknown one).
pub fn tags(port: u16, repo: &str) -> Vec<String> {
    let a = request(port, "GET", &format!("/v2/{repo}/tags/list"), &[], &[])
        .unwrap_or_else(|e| panic!("tags of {repo}: {e}"));
    if a.status == 404 {
        return vec![];
    }
    assert_eq!(a.status, 200, "tags of {repo}: {}", a.text());
    let v: Value = serde_json::from_slice(&a.body).expect("tags/list JSON");
    v["tags"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `skopeo copy --retry-times RETRIES` of an image of the layout to DEST.
pub fn push_with_retries(ctx: &Ctx, image: &str, dest: &str, retries: u32) -> Output {
    let creds = format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}");
    let src = format!("oci:{}:{image}", ctx.oci.display());
    let dst = format!("docker://127.0.0.1:{}/{dest}", ctx.port);
    let retries = retries.to_string();
    ctx.skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        "--retry-times",
        &retries,
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &src,
        &dst,
    ])
}

/// A push as a client that retries does it: `skopeo copy --retry-times RETRIES`, run again
/// up to RETRIES more times when it fails (skopeo retries "blob unknown" answers itself,
/// not a plain HTTP 500, which is how the registry reports a link write the sweep
/// refused). The last output, and the retries (skopeo's and the runs again).
pub fn push_retrying(ctx: &Ctx, image: &str, dest: &str, retries: u32) -> (Output, usize) {
    let mut total = 0;
    let mut attempt = 0;
    loop {
        let out = push_with_retries(ctx, image, dest, retries);
        total += retries_in(&out);
        // Why skopeo retried: the soak's figures count them, the log says what they were.
        for line in String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.to_lowercase().contains("retrying in"))
        {
            eprintln!("[soak] push {dest} retried: {line}");
        }
        if out.status.success() || attempt == retries {
            return (out, total);
        }
        attempt += 1;
        total += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// How many times skopeo said it retried (its warnings: "Failed, retrying in ...").
pub fn retries_in(out: &Output) -> usize {
    String::from_utf8_lossy(&out.stderr)
        .to_lowercase()
        .matches("retrying in")
        .count()
}

/// Writes the soak's images (`scripts/soak-images.py`) into the scenario's OCI layout and
/// returns them.
pub fn soak_images(oci: &Path, families: u32, variants: u32) -> Vec<Image> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/soak-images.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(oci)
        .args(["--families", &families.to_string()])
        .args(["--variants", &variants.to_string(), "--json"]);
    let out = run(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "soak-images.py: {}",
        describe_output(&out)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("soak-images.py --json");
    v["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|e| Image {
            name: e["name"].as_str().unwrap().to_string(),
            digest: e["digest"].as_str().unwrap().to_string(),
            kind: e["kind"].as_str().unwrap().to_string(),
            blobs: e["blobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_str().unwrap().to_string())
                .collect(),
        })
        .collect()
}

/// Runs `regfs ARGS... MOUNTPOINT --state-dir STATE` with a time limit.
pub fn regfs(ctx: &Ctx, args: &[&str], timeout: Duration) -> Output {
    let mut cmd = Command::new(crate::BIN);
    cmd.args(args)
        .arg(&ctx.mnt)
        .arg("--state-dir")
        .arg(&ctx.state);
    run(cmd, timeout)
}

/// One GC run through the daemon, followed to its end: the job record.
pub fn gc_wait(ctx: &Ctx) -> Result<Value, String> {
    let out = regfs(ctx, &["gc", "--wait", "--json"], Duration::from_secs(300));
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("regfs gc --wait --json ({e}): {}", describe_output(&out)))
        .and_then(|job: Value| {
            if out.status.success() {
                Ok(job)
            } else {
                Err(format!("GC run failed: {job}"))
            }
        })
}

/// The blobs a run deleted, from its job record.
pub fn blobs_deleted(job: &Value) -> u64 {
    job["report"]["blobs_deleted"].as_u64().unwrap_or(0)
}

/// The mode a job ran in (recorded with its settings).
pub fn job_mode(job: &Value) -> &str {
    job["settings"]["mode"]
        .as_str()
        .or(job["mode"].as_str())
        .unwrap_or("read-only")
}

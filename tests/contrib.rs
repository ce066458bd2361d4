//! The Grafana dashboard (contrib/grafana/regfs.json) and the Prometheus alerting rules
//! (contrib/prometheus/regfs-rules.yml) as an operator loads them: promtool accepts the
//! rules and their unit tests (each alert fires when it should), every query of the
//! dashboard is valid PromQL, and every metric either names is one a real daemon's
//! /metrics exposes.
mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::store::StoreBuilder;

fn contrib(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(rel)
}

/// promtool, from Debian's `prometheus` package (scripts/install-deps.sh installs it).
fn promtool_available() -> bool {
    let found = Command::new("promtool").arg("--version").output().is_ok();
    if !found {
        let why = "promtool is not on PATH (apt-get install --no-install-recommends prometheus)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why}");
        }
        eprintln!("skipping: {why}");
    }
    found
}

fn promtool(args: &[&str], dir: &Path) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}: {}",
        common::describe_output(&out)
    );
}

/// Every `expr` of the dashboard's panels, with Grafana's variables as Prometheus sees
/// them once Grafana has filled them in.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(contrib("grafana/regfs.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap().to_string();
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {title:?}");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let filled = expr
                .replace("$__rate_interval", "5m")
                .replace("$__interval", "1h")
                .replace("$instance", ".*");
            assert!(!filled.contains('$'), "{title}: {expr}");
            out.push((title.clone(), filled));
        }
    }
    out
}

fn rule_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(contrib("prometheus/regfs-rules.yml")).unwrap();
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut out = Vec::new();
    for g in rules["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            let name = r["alert"].as_str().unwrap().to_string();
            out.push((name, r["expr"].as_str().unwrap().to_string()));
        }
    }
    out
}

/// The metric names a query uses: every `regfs_...` identifier.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("regfs_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_alerting_rules_pass_promtool_and_fire_when_they_should() {
    if !promtool_available() {
        return;
    }
    let dir = contrib("prometheus");
    promtool(&["check", "rules", "regfs-rules.yml"], &dir);
    promtool(&["test", "rules", "regfs-rules.test.yml"], &dir);
    let names: Vec<String> = rule_queries().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "RegfsGcRunFailed",
            "RegfsGcNotRun",
            "RegfsReadOnlyTooLong",
            "RegfsRegistryCacheUnsafe"
        ]
    );
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    if !promtool_available() {
        return;
    }
    // promtool checks PromQL inside rules: one recording rule per query.
    let dir = common::tempdir();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in dashboard_queries().iter().enumerate() {
        let quoted = serde_json::to_string(expr).unwrap();
        rules += &format!(
            "      # {title}\n      - record: regfs_dashboard_{i}\n        expr: {quoted}\n"
        );
    }
    std::fs::write(dir.path().join("dashboard.yml"), rules).unwrap();
    promtool(&["check", "rules", "dashboard.yml"], dir.path());
}

/// GET /metrics once the listener answers; the names of the samples.
fn scrape_names(port: u16) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "no listener on {port}: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

#[test]
fn every_metric_the_dashboard_and_the_rules_use_is_exposed() {
    let Some((dir, storage, mnt)) = common::daemon::fuse_dirs() else {
        return;
    };
    let b = StoreBuilder::new(&storage);
    let garbage = b.blob(b"garbage");
    b.layer_link("r", &garbage);
    // A registry configuration, so the cache's verdict is exported.
    let registry = dir.path().join("config.yml");
    std::fs::write(
        &registry,
        format!(
            "version: 0.1\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: {}\n",
            mnt.display()
        ),
    )
    .unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (s, m, r, listen) = (
        storage.display().to_string(),
        mnt.display().to_string(),
        registry.display().to_string(),
        format!("127.0.0.1:{port}"),
    );
    let d = Daemon::start(
        &mnt,
        &dir.path().join("state"),
        &[&s, &m, "--http-listen", &listen, "--registry-config", &r],
    );
    // An error answered (ENOENT), so the error counter has a sample.
    assert!(std::fs::metadata(mnt.join("no-such-file")).is_err());
    // One run, so the figures only a run gives (the store's size) are there.
    let (code, out, err) = d.regfs(&["gc", &m, "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    let exposed = scrape_names(port);
    let mut used = BTreeSet::new();
    for (who, expr) in dashboard_queries().into_iter().chain(rule_queries()) {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{who}: {expr} uses no regfs metric");
        for n in names {
            assert!(
                exposed.contains(&n),
                "{who} uses {n}, which /metrics does not expose; it exposes {exposed:?}"
            );
            used.insert(n);
        }
    }
    // What the issue asks the dashboard to show.
    for n in [
        "regfs_gc_runs_total",
        "regfs_gc_bytes_freed_total",
        "regfs_gc_read_only_seconds_total",
        "regfs_gc_pause_seconds_sum",
        "regfs_gc_refused_writes_total",
        "regfs_store_blob_bytes",
        "regfs_open_fds",
        "regfs_registry_cache_safe",
        "regfs_store_read_only",
        "regfs_gc_last_success_timestamp_seconds",
    ] {
        assert!(used.contains(n), "nothing shows {n}");
    }
}

//! TLS on the listener (rustls), and credentials refused in clear beyond loopback.

use std::process::Command;

use crate::common::daemon::BIN;
use crate::fixture::{TOKEN, curl, env};

#[test]
fn https_serves_the_api_and_credentials_in_clear_beyond_loopback_are_refused() {
    let Some(e) = env(&["openssl"]) else { return };
    let (cert, key) = (e.dir.path().join("cert.pem"), e.dir.path().join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        // A leaf, not a CA: webpki (rustls clients) refuses a CA used as the server.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        crate::common::describe_output(&out)
    );

    // Beyond loopback, in clear, with credentials: refused at start, saying what to do.
    let port = crate::fixture::free_port().to_string();
    let out = Command::new(BIN)
        .arg("mount")
        .arg(&e.storage)
        .arg(&e.mnt)
        .args([
            "--http-listen",
            &format!("0.0.0.0:{port}"),
            "--http-allow-remote",
        ])
        .arg("--api-token-file")
        .arg(&e.token)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in clear") && err.contains("tls_cert"),
        "{err}"
    );

    // A credentials file regfs cannot use stops the start before anything is mounted.
    let md5 = e.dir.path().join("htpasswd-md5");
    std::fs::write(&md5, "admin:$apr1$x$y\n").unwrap();
    let out = Command::new(BIN)
        .arg("mount")
        .arg(&e.storage)
        .arg(&e.mnt)
        .args(["--http-listen", &format!("127.0.0.1:{port}")])
        .arg("--api-htpasswd")
        .arg(&md5)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("htpasswd-md5 line 1") && err.contains("bcrypt"),
        "{err}"
    );
    assert!(
        crate::common::mount_at_fuse(&e.mnt).is_none(),
        "nothing mounted"
    );

    let _d = e.start(&[
        "--api-tls-cert",
        cert.to_str().unwrap(),
        "--api-tls-key",
        key.to_str().unwrap(),
    ]);
    let url = |p: &str| format!("https://127.0.0.1:{}{p}", e.port);
    let cacert = ["--cacert", cert.to_str().unwrap()];
    let st = curl("GET", &url("/api/v1/status"), &cacert);
    assert_eq!(st.status, 200, "{st:?}");
    assert_eq!(st.json()["state"], "idle");
    let page = curl("GET", &url("/"), &cacert);
    assert!(page.body.contains("<title>regfs"), "{page:?}");
    let auth = format!("Authorization: Bearer {TOKEN}");
    let go = curl(
        "POST",
        &url("/api/v1/gc"),
        &[&cacert[..], &["-H", &auth]].concat(),
    );
    assert_eq!(go.status, 202, "{go:?}");
    let metrics = curl("GET", &url("/metrics"), &cacert);
    assert!(metrics.body.contains("regfs_gc_state"), "{metrics:?}");
    // And to a rustls client (ureq) trusting only that certificate.
    let pem = std::fs::read(&cert).unwrap();
    let roots = vec![ureq::tls::Certificate::from_pem(&pem).unwrap()];
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(roots)))
                .build(),
        )
        .proxy(None)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    let mut r = agent.get(url("/metrics")).call().unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.body_mut()
            .read_to_string()
            .unwrap()
            .contains("regfs_gc_state")
    );
    // Clear text on the TLS port gets no answer.
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--noproxy", "*"])
        .arg(format!("http://127.0.0.1:{}/api/v1/status", e.port))
        .output()
        .unwrap();
    assert!(!plain.status.success() || !String::from_utf8_lossy(&plain.stdout).contains("idle"));
}

//! etcd as production runs it: TLS with client certificates (`--client-cert-auth`), and
//! user/password authentication. The certificates are made here by openssl: a CA, a
//! server certificate for 127.0.0.1 (subjectAltName IP), a client certificate, and a
//! second CA that signed none of them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use regfs::cluster::etcd::{Access, Etcd as Client};

use crate::common;
use crate::harness::{ClusterWorld, Etcd, Node, TTL, cluster_world};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The certificates of one test: `ca.pem`, `server.pem`/`server.key`,
/// `client.pem`/`client.key`, and `other-ca.pem` (signed nothing here).
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn make(dir: &Path) -> Pki {
        let dir = dir.join("pki");
        fs::create_dir(&dir).unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let key = format!("{ca}.key");
            let pem = format!("{ca}.pem");
            let subj = format!("/CN=regfs test {ca}");
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend([
                "-keyout",
                &key,
                "-out",
                &pem,
                "-days",
                "1",
                "-subj",
                &subj,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            openssl(&dir, &args);
        }
        for (who, cn, ext) in [
            (
                "server",
                "127.0.0.1",
                // etcd's gateway dials its own gRPC server with the server certificate.
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
            ),
            ("client", "root", "extendedKeyUsage=clientAuth\n"),
        ] {
            let (key, csr, pem, extfile) = (
                format!("{who}.key"),
                format!("{who}.csr"),
                format!("{who}.pem"),
                format!("{who}.ext"),
            );
            fs::write(dir.join(&extfile), ext).unwrap();
            let subj = format!("/CN={cn}");
            let mut args = vec!["req"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(&dir, &args);
            openssl(
                &dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "1",
                    "-extfile",
                    &extfile,
                ],
            );
            fs::set_permissions(dir.join(&key), fs::Permissions::from_mode(0o600)).unwrap();
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The flags of an etcd that serves TLS and wants a client certificate.
    fn etcd_flags(&self) -> Vec<String> {
        vec![
            "--client-cert-auth".into(),
            format!("--trusted-ca-file={}", self.path("ca.pem")),
            format!("--cert-file={}", self.path("server.pem")),
            format!("--key-file={}", self.path("server.key")),
        ]
    }

    fn access(&self) -> Access {
        Access {
            ca_file: Some(self.path("ca.pem").into()),
            client_cert: Some((
                self.path("client.pem").into(),
                self.path("client.key").into(),
            )),
            auth: None,
        }
    }
}

fn tls_etcd(dir: &Path) -> (Pki, Etcd) {
    let pki = Pki::make(dir);
    let etcd = Etcd::start_with(dir, "https", &pki.etcd_flags(), pki.access());
    (pki, etcd)
}

fn prereqs() -> bool {
    common::prereq::Needs::new()
        .on_path(&["openssl"])
        .met("etcd TLS tests need openssl")
}

#[test]
fn a_node_joins_and_collects_through_an_etcd_that_wants_tls_and_a_client_certificate() {
    let Some(ClusterWorld {
        _one_at_a_time,
        dir,
        storage,
    }) = cluster_world(20, 31)
    else {
        return;
    };
    if !prereqs() {
        return;
    }
    let (pki, etcd) = tls_etcd(dir.path());
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let tls = [
        "--cluster-ca-file",
        &ca,
        "--cluster-cert-file",
        &cert,
        "--cluster-key-file",
        &key,
    ];
    let a = Node::start(dir.path(), &storage, &etcd, "tlsA", &tls);
    let b = Node::start(dir.path(), &storage, &etcd, "tlsB", &tls);
    a.wait_writable(true, Duration::from_secs(10));
    b.wait_writable(true, Duration::from_secs(10));
    let members: Vec<String> =
        b.wait_members_open(2, Duration::from_secs(10))["cluster"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["node"].as_str().unwrap().to_string())
            .collect();
    assert_eq!(members, ["tlsA", "tlsB"], "{:#}", b.status());
    assert_eq!(a.gc().0, 0);
    let jobs = a.wait_jobs(1, Duration::from_secs(30));
    assert_eq!(jobs[0]["outcome"], "done", "{:#}", jobs[0]);
    // `regfs jobs` on the other node reads the run from etcd, over TLS too.
    let jobs = b.wait_jobs(1, Duration::from_secs(10));
    assert_eq!(jobs[0]["cluster"]["collector"], "tlsA", "{jobs:#?}");
}

#[test]
fn a_wrong_ca_is_refused_at_start_and_a_missing_client_certificate_is_named_in_the_log() {
    let Some(ClusterWorld {
        _one_at_a_time,
        dir,
        storage,
    }) = cluster_world(10, 32)
    else {
        return;
    };
    if !prereqs() {
        return;
    }
    let (pki, etcd) = tls_etcd(dir.path());
    let (ca, other, cert, key) = (
        pki.path("ca.pem"),
        pki.path("other-ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let (code, log) = Node::try_start(
        dir.path(),
        &storage,
        &etcd,
        "wrongca",
        Some("wrongca"),
        &[
            "--cluster-ca-file",
            &other,
            "--cluster-cert-file",
            &cert,
            "--cluster-key-file",
            &key,
        ],
    )
    .map(|n| n.log())
    .expect_err("a server certificate the CA did not sign");
    assert_ne!(code, 0);
    assert!(
        log.contains("etcd refuses this node") && log.contains(&etcd.url) && log.contains("TLS"),
        "{log}"
    );
    assert!(log.contains("UnknownIssuer"), "{log}");
    // Without a client certificate etcd refuses the handshake: the client hears it as
    // TLS's alert (the node exits) or, when etcd hangs up first, as a network failure
    // (the node serves fenced: it refuses writes). Either way the log names the settings.
    let nocert = Node::spawn(
        dir.path(),
        &storage,
        &etcd,
        "nocert",
        Some("nocert"),
        &["--cluster-ca-file", &ca],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !nocert.log().contains("cluster.cert_file") {
        assert!(std::time::Instant::now() < deadline, "{}", nocert.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = nocert.log();
    assert!(log.contains(&etcd.url), "{log}");
    if log.contains("etcd refuses this node") {
        assert!(
            log.contains("BadCertificate") || log.contains("CertificateRequired"),
            "{log}"
        );
    } else {
        nocert.wait_log("serving", Duration::from_secs(15));
        assert!(
            !nocert.writable(),
            "a node that is no member refuses writes"
        );
    }
    drop(nocert);
    assert!(
        common::mount_at_fuse(&dir.path().join("wrongca")).is_none(),
        "a refused node mounts nothing"
    );
}

/// POSTs `body` to `path` of a plain etcd (setting it up, before auth is on).
fn admin(etcd: &Etcd, path: &str, body: serde_json::Value) {
    let mut resp = ureq::post(format!("{}{path}", etcd.url))
        .config()
        .http_status_as_error(false)
        .build()
        .send(body.to_string())
        .unwrap();
    let status = resp.status();
    let text = resp.body_mut().read_to_string().unwrap();
    assert!(
        status == 200 || text.contains("already exists"),
        "{path}: {status} {text}"
    );
}

fn password_file(dir: &Path, name: &str, password: &str) -> String {
    let p = dir.join(name);
    fs::write(&p, format!("{password}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    p.display().to_string()
}

/// An etcd with authentication on: user root (role root) whose password is `pw`.
fn auth_etcd(dir: &Path, extra: &[String]) -> Etcd {
    let etcd = Etcd::start_with(dir, "http", extra, Access::default());
    admin(
        &etcd,
        "/v3/auth/user/add",
        serde_json::json!({"name": "root", "password": "pw"}),
    );
    admin(
        &etcd,
        "/v3/auth/role/add",
        serde_json::json!({"name": "root"}),
    );
    admin(
        &etcd,
        "/v3/auth/user/grant",
        serde_json::json!({"user": "root", "role": "root"}),
    );
    admin(&etcd, "/v3/auth/enable", serde_json::json!({}));
    etcd
}

#[test]
fn a_node_joins_an_etcd_with_authentication_and_a_wrong_password_is_refused() {
    let Some(ClusterWorld {
        _one_at_a_time,
        dir,
        storage,
    }) = cluster_world(20, 33)
    else {
        return;
    };
    let etcd = auth_etcd(dir.path(), &[]);
    let good = password_file(dir.path(), "root.pw", "pw");
    let bad = password_file(dir.path(), "wrong.pw", "not-pw");
    let a = Node::start(
        dir.path(),
        &storage,
        &etcd,
        "authA",
        &[
            "--cluster-username",
            "root",
            "--cluster-password-file",
            &good,
        ],
    );
    a.wait_writable(true, Duration::from_secs(10));
    assert_eq!(
        a.wait_members_open(1, Duration::from_secs(10))["cluster"]["members"][0]["node"],
        "authA"
    );
    assert_eq!(a.gc().0, 0);
    let jobs = a.wait_jobs(1, Duration::from_secs(30));
    assert_eq!(jobs[0]["outcome"], "done", "{:#}", jobs[0]);
    // Without a password, and with a wrong one: refused, saying why.
    let (code, log) = Node::try_start(dir.path(), &storage, &etcd, "anon", Some("anon"), &[])
        .map(|n| n.log())
        .expect_err("no credentials");
    assert_ne!(code, 0);
    assert!(log.contains(&etcd.url), "{log}");
    let (code, log) = Node::try_start(
        dir.path(),
        &storage,
        &etcd,
        "wrongpw",
        Some("wrongpw"),
        &[
            "--cluster-username",
            "root",
            "--cluster-password-file",
            &bad,
        ],
    )
    .map(|n| n.log())
    .expect_err("a wrong password");
    assert_ne!(code, 0);
    assert!(
        log.contains("etcd refuses this node")
            && log.contains("authenticating as \"root\"")
            && log.contains("authentication failed"),
        "{log}"
    );
    assert!(
        !log.contains("not-pw"),
        "the password is never shown: {log}"
    );
}

#[test]
fn an_expired_token_is_replaced_without_the_caller_seeing_it() {
    let Some(_one_at_a_time) = crate::harness::cluster_test() else {
        return;
    };
    let dir = common::tempdir();
    // Simple tokens last 2 s here (300 s by default).
    let etcd = auth_etcd(dir.path(), &["--auth-token-ttl=2".into()]);
    let access = Access {
        auth: Some(("root".into(), password_file(dir.path(), "pw", "pw").into())),
        ..Access::default()
    };
    let client = Client::with_access(
        std::slice::from_ref(&etcd.url),
        &access,
        Duration::from_secs(2),
    )
    .unwrap();
    client.put("/t/k", b"v", 0).unwrap();
    std::thread::sleep(TTL + Duration::from_secs(2));
    let kv = client
        .get("/t/k")
        .expect("a new token, taken when the old one expired");
    assert_eq!(kv.unwrap().value, b"v");
}

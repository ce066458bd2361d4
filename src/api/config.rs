//! The `[api]` section of the configuration file and its flags: credentials and TLS for
//! the HTTP listener (`[metrics] listen`, `--http-listen`).
//!
//! ```toml
//! [api]
//! htpasswd = "/etc/docker/registry/htpasswd"   # bcrypt users who may change settings
//! token_file = "/etc/regfs/api-token"           # or a bearer token (mode 0600)
//! tls_cert = "/etc/regfs/tls/cert.pem"          # serve HTTPS (PEM chain and key)
//! tls_key = "/etc/regfs/tls/key.pem"
//! allow_insecure = false                        # changes over plain HTTP beyond loopback
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    pub htpasswd: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub allow_insecure: Option<bool>,
}

/// The `[api]` options as given on the command line (`None`/false when not given).
#[derive(Debug, Clone, Default)]
pub struct ApiFlags {
    pub htpasswd: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub allow_insecure: bool,
}

/// What the listener runs with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiConfig {
    pub htpasswd: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    /// Certificate chain and key: the listener speaks TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A refused value: the origin (file or "command line"), the key and why.
pub type Refused = (String, String, String);

/// Lays the flags over the file. Credentials over plain HTTP on an address other
/// machines reach would cross the network in clear: refused unless TLS is configured or
/// `allow_insecure` says the operator knows (a TLS proxy in front, say).
pub fn resolve(
    flags: &ApiFlags,
    file: &ApiSection,
    origin: &str,
    listen: Option<SocketAddr>,
) -> Result<ApiConfig, Refused> {
    let pick =
        |flag: &Option<PathBuf>, key: &Option<PathBuf>, flag_name: &str, key_name: &str| match (
            flag, key,
        ) {
            (Some(v), _) => Some((v.clone(), "command line".to_string(), flag_name.to_string())),
            (None, Some(v)) => Some((v.clone(), origin.to_string(), format!("api.{key_name}"))),
            _ => None,
        };
    let htpasswd = pick(
        &flags.htpasswd,
        &file.htpasswd,
        "--api-htpasswd",
        "htpasswd",
    );
    let token = pick(
        &flags.token_file,
        &file.token_file,
        "--api-token-file",
        "token_file",
    );
    let cert = pick(
        &flags.tls_cert,
        &file.tls_cert,
        "--api-tls-cert",
        "tls_cert",
    );
    let key = pick(&flags.tls_key, &file.tls_key, "--api-tls-key", "tls_key");
    let tls = match (cert, key) {
        (Some((c, ..)), Some((k, ..))) => Some((c, k)),
        (Some((_, o, n)), None) | (None, Some((_, o, n))) => {
            return Err((o, n, "TLS needs both a certificate (tls_cert, --api-tls-cert) and its key (tls_key, --api-tls-key)".into()));
        }
        (None, None) => None,
    };
    let first = htpasswd.as_ref().or(token.as_ref()).cloned();
    let Some(addr) = listen else {
        if let Some((_, o, n)) = first.or_else(|| {
            tls.as_ref()
                .map(|_| (PathBuf::new(), origin.to_string(), "api.tls_cert".into()))
        }) {
            return Err((
                o,
                n,
                "the API needs the HTTP listener: set metrics.listen (or --http-listen)".into(),
            ));
        }
        return Ok(ApiConfig::default());
    };
    let allow_insecure = flags.allow_insecure || file.allow_insecure.unwrap_or(false);
    if let Some((_, o, n)) = &first
        && !addr.ip().is_loopback()
        && tls.is_none()
        && !allow_insecure
    {
        return Err((
            o.clone(),
            n.clone(),
            format!(
                "credentials would cross the network in clear on {addr}: configure TLS (api.tls_cert and api.tls_key, --api-tls-cert/--api-tls-key), listen on loopback behind a TLS proxy, or set api.allow_insecure (--api-allow-insecure)"
            ),
        ));
    }
    Ok(ApiConfig {
        htpasswd: htpasswd.map(|(p, ..)| p),
        token_file: token.map(|(p, ..)| p),
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn credentials_beyond_loopback_need_tls_or_an_explicit_override() {
        let file = ApiSection {
            htpasswd: Some("/etc/docker/registry/htpasswd".into()),
            ..ApiSection::default()
        };
        let flags = ApiFlags::default();
        assert!(resolve(&flags, &file, "r.toml", addr("127.0.0.1:9469")).is_ok());
        let (o, k, m) = resolve(&flags, &file, "r.toml", addr("0.0.0.0:9469")).unwrap_err();
        assert_eq!((o.as_str(), k.as_str()), ("r.toml", "api.htpasswd"));
        assert!(m.contains("in clear") && m.contains("tls_cert"), "{m}");
        let tls = ApiFlags {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            ..ApiFlags::default()
        };
        let c = resolve(&tls, &file, "r.toml", addr("0.0.0.0:9469")).unwrap();
        assert_eq!(c.tls, Some(("c.pem".into(), "k.pem".into())));
        let insecure = ApiFlags {
            allow_insecure: true,
            ..ApiFlags::default()
        };
        assert!(resolve(&insecure, &file, "r.toml", addr("0.0.0.0:9469")).is_ok());
        // Without credentials the page is read-only: nothing to protect in transit.
        assert!(
            resolve(
                &flags,
                &ApiSection::default(),
                "r.toml",
                addr("0.0.0.0:9469")
            )
            .is_ok()
        );
    }

    #[test]
    fn half_a_tls_setup_and_an_api_without_a_listener_are_refused() {
        let cert_only = ApiFlags {
            tls_cert: Some("c.pem".into()),
            ..ApiFlags::default()
        };
        let (_, k, m) =
            resolve(&cert_only, &ApiSection::default(), "f", addr("127.0.0.1:1")).unwrap_err();
        assert_eq!(k, "--api-tls-cert");
        assert!(m.contains("key"), "{m}");
        let token = ApiFlags {
            token_file: Some("t".into()),
            ..ApiFlags::default()
        };
        let (_, k, m) = resolve(&token, &ApiSection::default(), "f", None).unwrap_err();
        assert_eq!(k, "--api-token-file");
        assert!(m.contains("--http-listen"), "{m}");
    }
}

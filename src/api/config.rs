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

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    pub htpasswd: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub allow_insecure: Option<bool>,
}

/// What the listener runs with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiConfig {
    pub htpasswd: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    /// Certificate chain and key: the listener speaks TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A refused value: the key of `[api]` at fault and why (the caller names the source
/// that gave it: the file or the flag).
pub type Refused = (&'static str, String);

/// Checks the section (the file's keys with the flags laid over them). Credentials over
/// plain HTTP on an address other machines reach would cross the network in clear:
/// refused unless TLS is configured or `allow_insecure` says the operator knows (a TLS
/// proxy in front, say).
pub fn resolve(api: &ApiSection, listen: Option<SocketAddr>) -> Result<ApiConfig, Refused> {
    let tls = match (&api.tls_cert, &api.tls_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (Some(_), None) | (None, Some(_)) => {
            let key = if api.tls_cert.is_some() {
                "tls_cert"
            } else {
                "tls_key"
            };
            return Err((key, "TLS needs both a certificate (tls_cert, --api-tls-cert) and its key (tls_key, --api-tls-key)".into()));
        }
        (None, None) => None,
    };
    let credential = match (&api.htpasswd, &api.token_file) {
        (Some(_), _) => Some("htpasswd"),
        (None, Some(_)) => Some("token_file"),
        (None, None) => None,
    };
    let Some(addr) = listen else {
        if let Some(key) = credential.or(tls.as_ref().map(|_| "tls_cert")) {
            return Err((
                key,
                "the API needs the HTTP listener: set metrics.listen (or --http-listen)".into(),
            ));
        }
        return Ok(ApiConfig::default());
    };
    if let Some(key) = credential
        && !addr.ip().is_loopback()
        && tls.is_none()
        && !api.allow_insecure.unwrap_or(false)
    {
        return Err((
            key,
            format!(
                "credentials would cross the network in clear on {addr}: configure TLS (api.tls_cert and api.tls_key, --api-tls-cert/--api-tls-key), listen on loopback behind a TLS proxy, or set api.allow_insecure (--api-allow-insecure)"
            ),
        ));
    }
    Ok(ApiConfig {
        htpasswd: api.htpasswd.clone(),
        token_file: api.token_file.clone(),
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
        let users = ApiSection {
            htpasswd: Some("/etc/docker/registry/htpasswd".into()),
            ..ApiSection::default()
        };
        assert!(resolve(&users, addr("127.0.0.1:9469")).is_ok());
        let (k, m) = resolve(&users, addr("0.0.0.0:9469")).unwrap_err();
        assert_eq!(k, "htpasswd");
        assert!(m.contains("in clear") && m.contains("tls_cert"), "{m}");
        let tls = ApiSection {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            ..users.clone()
        };
        let c = resolve(&tls, addr("0.0.0.0:9469")).unwrap();
        assert_eq!(c.tls, Some(("c.pem".into(), "k.pem".into())));
        let insecure = ApiSection {
            allow_insecure: Some(true),
            ..users
        };
        assert!(resolve(&insecure, addr("0.0.0.0:9469")).is_ok());
        // Without credentials the page is read-only: nothing to protect in transit.
        assert!(resolve(&ApiSection::default(), addr("0.0.0.0:9469")).is_ok());
    }

    #[test]
    fn half_a_tls_setup_and_an_api_without_a_listener_are_refused() {
        let cert_only = ApiSection {
            tls_cert: Some("c.pem".into()),
            ..ApiSection::default()
        };
        let (k, m) = resolve(&cert_only, addr("127.0.0.1:1")).unwrap_err();
        assert_eq!(k, "tls_cert");
        assert!(m.contains("key"), "{m}");
        let token = ApiSection {
            token_file: Some("t".into()),
            ..ApiSection::default()
        };
        let (k, m) = resolve(&token, None).unwrap_err();
        assert_eq!(k, "token_file");
        assert!(m.contains("--http-listen"), "{m}");
    }
}

//! `[cluster]` and the `--cluster-*` flags (cluster mode, see `crate::cluster`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Layered};
use crate::cluster::ClusterConfig;
use crate::cluster::etcd::{self, Access, EtcdError};

/// Several nodes serving one shared store, coordinated through etcd.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub endpoints: Option<Vec<String>>,
    pub node: Option<String>,
    pub lease_ttl: Option<String>,
    pub prefix: Option<String>,
    /// PEM: the CA etcd's server certificate chains to (`https://` endpoints need it).
    pub ca_file: Option<PathBuf>,
    /// PEM: this node's client certificate and key (etcd's `--client-cert-auth`).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// etcd's user/password authentication: the user, and a file (mode 0600, owned by
    /// root) whose first line is the password. Never the password itself.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// The TLS and authentication settings, checked together and their files read (so a
/// file that will not do fails the configuration, naming its key or flag).
fn access(l: &Layered<'_>, endpoints: &[String]) -> Result<Access, ConfigError> {
    let mut access = Access::default();
    tls(&mut access, l, endpoints)?;
    auth(&mut access, l)?;
    Ok(access)
}

/// TLS to etcd: a CA for `https://` endpoints (and only for them), a client certificate
/// with its key.
fn tls(access: &mut Access, l: &Layered<'_>, urls: &[String]) -> Result<(), ConfigError> {
    let c = &l.merged.cluster;
    let https = urls.iter().filter(|u| u.starts_with("https://")).count();
    if https != 0 && https != urls.len() {
        return Err(l.bad(
            "cluster.endpoints",
            "mixes http:// and https:// endpoints: one cluster speaks one of them",
        ));
    }
    let file_err = |key: &str, e: EtcdError| l.bad(key, e.to_string());
    match (&c.ca_file, https != 0) {
        (None, true) => {
            return Err(l.bad(
                "cluster.ca_file",
                "missing: https:// endpoints are verified against this CA (PEM)",
            ));
        }
        (Some(_), false) => {
            return Err(l.bad(
                "cluster.ca_file",
                format!(
                    "set, but the endpoints are plain http:// (TLS needs https://, e.g. {:?})",
                    urls[0].replacen("http://", "https://", 1)
                ),
            ));
        }
        (Some(ca), true) => {
            etcd::load_ca(ca).map_err(|e| file_err("cluster.ca_file", e))?;
            access.ca_file = Some(ca.clone());
        }
        (None, false) => {}
    }
    match (&c.cert_file, &c.key_file) {
        (Some(cert), Some(key)) => {
            if c.ca_file.is_none() {
                return Err(l.bad(
                    "cluster.cert_file",
                    "a client certificate needs https:// endpoints and cluster.ca_file",
                ));
            }
            etcd::load_client_cert(cert, key).map_err(|e| match &e {
                EtcdError::File { path, .. } if path == key => file_err("cluster.key_file", e),
                _ => file_err("cluster.cert_file", e),
            })?;
            access.client_cert = Some((cert.clone(), key.clone()));
        }
        (Some(_), None) => {
            return Err(l.bad(
                "cluster.cert_file",
                "given without its private key (cluster.key_file, --cluster-key-file)",
            ));
        }
        (None, Some(_)) => {
            return Err(l.bad(
                "cluster.key_file",
                "given without its certificate (cluster.cert_file, --cluster-cert-file)",
            ));
        }
        (None, None) => {}
    }
    Ok(())
}

/// etcd's user/password authentication: a user and the file holding the password.
fn auth(access: &mut Access, l: &Layered<'_>) -> Result<(), ConfigError> {
    let c = &l.merged.cluster;
    match (&c.username, &c.password_file) {
        (Some(u), _) if u.is_empty() || u.chars().any(char::is_control) => {
            return Err(l.bad(
                "cluster.username",
                format!("{u:?}: a user name is non-empty text without control characters"),
            ));
        }
        (Some(u), Some(p)) => {
            etcd::read_password(p).map_err(|e| l.bad("cluster.password_file", e.to_string()))?;
            access.auth = Some((u.clone(), p.clone()));
        }
        (Some(_), None) => {
            return Err(l.bad("cluster.username", "given without a password: name the file holding it (cluster.password_file, --cluster-password-file)"));
        }
        (None, Some(_)) => {
            return Err(l.bad(
                "cluster.password_file",
                "given without a user (cluster.username, --cluster-username)",
            ));
        }
        (None, None) => {}
    }
    Ok(())
}

/// `[cluster]` with the `--cluster-*` flags laid over it; None without endpoints.
pub(super) fn resolve(
    l: &Layered<'_>,
    mountpoint: &Path,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let c = &l.merged.cluster;
    let Some(endpoints) = c.endpoints.clone() else {
        return Ok(None);
    };
    if endpoints.is_empty() {
        return Err(l.bad("cluster.endpoints", "no endpoint given"));
    }
    for e in &endpoints {
        etcd::check_endpoint(e).map_err(|e| l.bad("cluster.endpoints", e.to_string()))?;
    }
    let access = access(l, &endpoints)?;
    let lease_ttl = match &c.lease_ttl {
        None => Duration::from_secs(10),
        Some(s) => {
            let d = humantime::parse_duration(s)
                .map_err(|e| l.bad("cluster.lease_ttl", format!("{s:?}: {e}")))?;
            if d < Duration::from_secs(2) || d.subsec_nanos() != 0 {
                return Err(l.bad(
                    "cluster.lease_ttl",
                    format!("{d:?}: a lease lasts whole seconds, at least 2s (etcd's shortest)"),
                ));
            }
            d
        }
    };
    let node = match &c.node {
        Some(node) if node.is_empty() || node.chars().any(char::is_control) => {
            return Err(l.bad(
                "cluster.node",
                format!("{node:?}: a node name is non-empty text without control characters"),
            ));
        }
        Some(node) => node.clone(),
        None => ClusterConfig::default_node(mountpoint).map_err(|e| l.bad("cluster.node", e))?,
    };
    let prefix = match &c.prefix {
        Some(p) if !p.ends_with('/') || p.len() < 2 => {
            return Err(l.bad(
                "cluster.prefix",
                format!(
                    "{p:?}: a prefix ends with '/' (e.g. /regfs/), so no cluster's keys are another's"
                ),
            ));
        }
        Some(p) => p.clone(),
        None => "/regfs/".into(),
    };
    Ok(Some(ClusterConfig {
        endpoints,
        node,
        lease_ttl,
        prefix,
        access,
    }))
}

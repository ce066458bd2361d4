//! `[cluster]` and the `--cluster-*` flags (cluster mode, see `crate::cluster`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, FileConfig, MountFlags, Named, bad};
use crate::cluster::ClusterConfig;
use crate::cluster::etcd::{self, Access, EtcdError};

/// Several nodes serving one shared store, coordinated through etcd.
#[derive(Debug, Default, Deserialize)]
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

/// The flags of etcd's TLS and authentication, as `[cluster]`'s keys.
#[derive(Debug, Clone, Default)]
pub struct ClusterAccessFlags {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// A value picked from a flag or a key, with the origin and the name to blame.
type Picked<T> = Option<(T, String, String)>;

/// The TLS and authentication settings, checked together and their files read (so a
/// file that will not do fails the configuration, naming its key).
fn access(
    args: &ClusterAccessFlags,
    c: &ClusterSection,
    n: &Named<'_>,
    origin: &str,
    endpoints: (&[String], &str, &str),
) -> Result<Access, ConfigError> {
    let ca = n.pick(
        args.ca_file.clone(),
        "--cluster-ca-file",
        c.ca_file.clone(),
        "cluster.ca_file",
    );
    let cert = n.pick(
        args.cert_file.clone(),
        "--cluster-cert-file",
        c.cert_file.clone(),
        "cluster.cert_file",
    );
    let key = n.pick(
        args.key_file.clone(),
        "--cluster-key-file",
        c.key_file.clone(),
        "cluster.key_file",
    );
    let user = n.pick(
        args.username.clone(),
        "--cluster-username",
        c.username.clone(),
        "cluster.username",
    );
    let password = n.pick(
        args.password_file.clone(),
        "--cluster-password-file",
        c.password_file.clone(),
        "cluster.password_file",
    );
    let mut access = Access::default();
    tls(&mut access, origin, endpoints, ca, (cert, key))?;
    auth(&mut access, user, password)?;
    Ok(access)
}

fn file_err((_, o, k): &(PathBuf, String, String), e: EtcdError) -> ConfigError {
    bad(o.clone(), k.clone(), e.to_string())
}

/// TLS to etcd: a CA for `https://` endpoints (and only for them), a client certificate
/// with its key.
fn tls(
    access: &mut Access,
    origin: &str,
    endpoints: (&[String], &str, &str),
    ca: Picked<PathBuf>,
    (cert, key): (Picked<PathBuf>, Picked<PathBuf>),
) -> Result<(), ConfigError> {
    let (urls, eo, ek) = endpoints;
    let https = urls.iter().filter(|u| u.starts_with("https://")).count();
    if https != 0 && https != urls.len() {
        return Err(bad(
            eo.into(),
            ek.into(),
            "mixes http:// and https:// endpoints: one cluster speaks one of them".into(),
        ));
    }
    match (&ca, https != 0) {
        (None, true) => {
            return Err(bad(
                origin.into(),
                "cluster.ca_file".into(),
                "missing: https:// endpoints are verified against this CA (PEM)".into(),
            ));
        }
        (Some((_, o, k)), false) => {
            return Err(bad(
                o.clone(),
                k.clone(),
                format!(
                    "set, but the endpoints are plain http:// (TLS needs https://, e.g. {:?})",
                    urls[0].replacen("http://", "https://", 1)
                ),
            ));
        }
        (Some(ca), true) => {
            etcd::load_ca(&ca.0).map_err(|e| file_err(ca, e))?;
            access.ca_file = Some(ca.0.clone());
        }
        (None, false) => {}
    }
    match (&cert, &key) {
        (Some(c), Some(k)) => {
            if ca.is_none() {
                return Err(bad(
                    c.1.clone(),
                    c.2.clone(),
                    "a client certificate needs https:// endpoints and cluster.ca_file".into(),
                ));
            }
            etcd::load_client_cert(&c.0, &k.0).map_err(|e| match &e {
                EtcdError::File { path, .. } if *path == k.0 => file_err(k, e),
                _ => file_err(c, e),
            })?;
            access.client_cert = Some((c.0.clone(), k.0.clone()));
        }
        (Some((_, o, k)), None) => {
            return Err(bad(
                o.clone(),
                k.clone(),
                "given without its private key (cluster.key_file, --cluster-key-file)".into(),
            ));
        }
        (None, Some((_, o, k))) => {
            return Err(bad(
                o.clone(),
                k.clone(),
                "given without its certificate (cluster.cert_file, --cluster-cert-file)".into(),
            ));
        }
        (None, None) => {}
    }
    Ok(())
}

/// etcd's user/password authentication: a user and the file holding the password.
fn auth(
    access: &mut Access,
    user: Picked<String>,
    password: Picked<PathBuf>,
) -> Result<(), ConfigError> {
    match (user, &password) {
        (Some((u, o, k)), _) if u.is_empty() || u.chars().any(char::is_control) => {
            return Err(bad(
                o,
                k,
                format!("{u:?}: a user name is non-empty text without control characters"),
            ));
        }
        (Some((u, ..)), Some(p)) => {
            etcd::read_password(&p.0).map_err(|e| file_err(p, e))?;
            access.auth = Some((u, p.0.clone()));
        }
        (Some((_, o, k)), None) => {
            return Err(bad(o, k, "given without a password: name the file holding it (cluster.password_file, --cluster-password-file)".into()));
        }
        (None, Some((_, o, k))) => {
            return Err(bad(
                o.clone(),
                k.clone(),
                "given without a user (cluster.username, --cluster-username)".into(),
            ));
        }
        (None, None) => {}
    }
    Ok(())
}

/// `[cluster]` and the `--cluster-*` flags; None without endpoints.
pub(super) fn resolve(
    args: &MountFlags,
    file: &FileConfig,
    origin: &str,
    mountpoint: &Path,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let c = &file.cluster;
    let n = Named { origin };
    let flag_endpoints = args
        .cluster_endpoints
        .as_ref()
        .map(|e| e.split(',').map(|s| s.trim().to_string()).collect());
    let Some((endpoints, o, k)) = n.pick(
        flag_endpoints,
        "--cluster-endpoints",
        c.endpoints.clone(),
        "cluster.endpoints",
    ) else {
        return Ok(None);
    };
    let endpoints: Vec<String> = endpoints;
    if endpoints.is_empty() {
        return Err(bad(o, k, "no endpoint given".into()));
    }
    for e in &endpoints {
        etcd::check_endpoint(e).map_err(|e| bad(o.clone(), k.clone(), e.to_string()))?;
    }
    let access = access(&args.cluster_access, c, &n, origin, (&endpoints, &o, &k))?;
    let lease_ttl = match (args.cluster_lease_ttl, &c.lease_ttl) {
        (Some(d), _) => Some((
            d,
            "command line".to_string(),
            "--cluster-lease-ttl".to_string(),
        )),
        (None, Some(s)) => Some((
            humantime::parse_duration(s).map_err(|e| {
                bad(
                    origin.into(),
                    "cluster.lease_ttl".into(),
                    format!("{s:?}: {e}"),
                )
            })?,
            origin.to_string(),
            "cluster.lease_ttl".to_string(),
        )),
        (None, None) => None,
    };
    let lease_ttl = match lease_ttl {
        None => Duration::from_secs(10),
        Some((d, o, k)) if d < Duration::from_secs(2) || d.subsec_nanos() != 0 => {
            return Err(bad(
                o,
                k,
                format!("{d:?}: a lease lasts whole seconds, at least 2s (etcd's shortest)"),
            ));
        }
        Some((d, ..)) => d,
    };
    let node = match n.pick(
        args.cluster_node.clone(),
        "--cluster-node",
        c.node.clone(),
        "cluster.node",
    ) {
        Some((node, o, k)) if node.is_empty() || node.chars().any(char::is_control) => {
            return Err(bad(
                o,
                k,
                format!("{node:?}: a node name is non-empty text without control characters"),
            ));
        }
        Some((node, ..)) => node,
        None => ClusterConfig::default_node(mountpoint)
            .map_err(|e| bad(origin.into(), "cluster.node".into(), e))?,
    };
    let prefix = match n.pick(
        args.cluster_prefix.clone(),
        "--cluster-prefix",
        c.prefix.clone(),
        "cluster.prefix",
    ) {
        Some((p, o, k)) if !p.ends_with('/') || p.len() < 2 => {
            return Err(bad(
                o,
                k,
                format!(
                    "{p:?}: a prefix ends with '/' (e.g. /regfs/), so no cluster's keys are another's"
                ),
            ));
        }
        Some((p, ..)) => p,
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

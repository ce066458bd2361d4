//! `[cluster]` and the `--cluster-*` flags (cluster mode, see `crate::cluster`).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, FileConfig, MountFlags, Named, bad};
use crate::cluster::ClusterConfig;

/// Several nodes serving one shared store, coordinated through etcd.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub endpoints: Option<Vec<String>>,
    pub node: Option<String>,
    pub lease_ttl: Option<String>,
    pub prefix: Option<String>,
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
        crate::cluster::etcd::check_endpoint(e)
            .map_err(|e| bad(o.clone(), k.clone(), e.to_string()))?;
    }
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
    }))
}

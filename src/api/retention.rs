//! Retention through the API: every tag with its times (`GET tags`), what the policies
//! would prune now (`GET retention/preview`), and restoring a pruned tag within its grace
//! (`POST retention/restore`, a change: credentials as for the settings).

use serde::Deserialize;

use super::{Api, error, json};
use crate::http::{Request, Response};

/// The body of `POST retention/restore`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    repository: String,
    tag: String,
}

impl Api {
    pub(super) fn tags(&self) -> Response {
        match self.daemon.tags(None) {
            Ok(t) => json(200, &t),
            Err(e) => error(500, e),
        }
    }

    pub(super) fn retention_preview(&self) -> Response {
        match self.daemon.retention_preview() {
            Ok(v) => json(200, &v),
            Err(e) => error(500, e),
        }
    }

    pub(super) fn retention_restore(&self, req: &Request, who: &str) -> Response {
        let body: RestoreBody = match serde_json::from_slice(&req.body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    400,
                    format!("retention/restore: {e}; send {{\"repository\": ..., \"tag\": ...}}"),
                );
            }
        };
        match self.daemon.retention_restore(&body.repository, &body.tag) {
            Ok(p) => {
                tracing::info!(repo = %body.repository, tag = %body.tag, by = who, "tag restored through the HTTP API");
                json(200, &p)
            }
            Err(e) => error(409, e),
        }
    }
}

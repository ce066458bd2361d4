//! Retention through the API: every tag with its times (`GET tags`), what the policies
//! would prune now (`GET retention/preview`) or would if a draft of them were saved
//! (`POST retention/preview` with the draft, `[retention]`'s keys as the settings'
//! `retention` takes them: the page's preview as the policies are typed), and restoring a pruned tag within its grace
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

    /// The preview of a draft (the body: `{"dry_run":..,"grace":..,"policy":[..]}`,
    /// laid over the saved settings as saving it would). A bad draft: 400 naming the key.
    pub(super) fn retention_preview_draft(&self, req: &Request) -> Response {
        let draft = match serde_json::from_slice(&req.body) {
            Ok(v) => match super::handlers::retention_of(v) {
                Ok(d) => d,
                Err(resp) => return resp,
            },
            Err(e) => return error(400, format!("retention/preview: {e}")),
        };
        let rules = match self.daemon.settings_owner().retention_with(&draft) {
            Ok(r) => r,
            Err(e) => return error(400, e),
        };
        match self.daemon.retention_preview_of(&rules) {
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

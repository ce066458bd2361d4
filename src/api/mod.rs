//! What the daemon's HTTP listener answers: `/metrics`, the garbage-collection page at
//! `/` (its assets embedded, see [`crate::web`]) and the JSON API under `/api/v1/`.
//! Reads are open to whoever reaches the listener; every change needs credentials
//! ([`auth`]) and is refused from another site's page (the `Origin` check).

pub mod auth;
pub mod config;
mod handlers;
pub mod jobs;
mod retention;
pub mod throttle;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::daemon::Daemon;
use crate::http::{Request, Response, Server, Serving};
use crate::metrics::GcStats;

pub use config::ApiConfig;

/// Everything the listener serves from.
pub struct Api {
    pub daemon: Arc<Daemon>,
    pub auth: auth::Auth,
    pub metrics: Arc<Mutex<GcStats>>,
}

/// Header the page sends with its requests, so a refusal does not make the browser
/// pop up its own password dialog (`WWW-Authenticate: Basic`).
pub const PAGE_HEADER: &str = "x-regfs-page";

const JSON: &str = "application/json";

/// A JSON answer.
pub fn json(status: u16, value: &impl Serialize) -> Response {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_else(|e| {
        format!("{{\"error\": \"cannot encode the answer: {e}\"}}").into_bytes()
    });
    body.push(b'\n');
    Response::new(status, JSON, body).with_header("Cache-Control", "no-store")
}

/// A JSON error a person can act on: `{"error": "...", "status": N}`.
pub fn error(status: u16, message: impl Into<String>) -> Response {
    json(
        status,
        &serde_json::json!({ "error": message.into(), "status": status }),
    )
}

impl Api {
    /// Answers one request.
    pub fn answer(&self, req: &Request) -> Response {
        let path = req.path.as_str();
        if path == "/metrics" {
            return match req.method.as_str() {
                "GET" => Response::new(
                    200,
                    crate::metrics::CONTENT_TYPE,
                    crate::metrics::render(&self.daemon, &self.metrics).into_bytes(),
                ),
                _ => not_allowed("GET"),
            };
        }
        if let Some(api) = path.strip_prefix("/api/v1/") {
            return self.api(req, api);
        }
        match crate::web::asset(path) {
            Some(asset) if req.method == "GET" => crate::web::response(asset),
            Some(_) => not_allowed("GET"),
            None => Response::text(
                404,
                "not found; the page is at /, the API under /api/v1/, metrics at /metrics\n",
            ),
        }
    }

    fn api(&self, req: &Request, route: &str) -> Response {
        let m = req.method.as_str();
        let route = route.trim_end_matches('/');
        match (route, m) {
            ("status", "GET") => self.status(),
            ("jobs", "GET") => self.jobs(req),
            ("settings", "GET") => self.get_settings(),
            ("schedule", "GET") => handlers::schedule_preview(req),
            ("settings", "PUT") => self.admin(req, |who| self.put_settings(req, who)),
            ("settings", "DELETE") => self.admin(req, |who| self.reset_settings(who)),
            ("gc", "POST") => self.admin(req, |who| self.start_gc(req, who)),
            ("gc/stop", "POST") => self.admin(req, |who| self.stop_gc(who)),
            ("tags", "GET") => self.tags(),
            ("retention/preview", "GET") => self.retention_preview(),
            ("retention/preview", "POST") => match cross_site(req) {
                Some(refusal) => error(403, refusal),
                None => self.retention_preview_draft(req),
            },
            ("retention/restore", "POST") => {
                self.admin(req, |who| self.retention_restore(req, who))
            }
            ("tags", _) => not_allowed("GET"),
            ("retention/preview", _) => not_allowed("GET, POST"),
            ("retention/restore", _) => not_allowed("POST"),
            ("status" | "jobs" | "schedule", _) => not_allowed("GET"),
            ("settings", _) => not_allowed("GET, PUT, DELETE"),
            ("gc" | "gc/stop", _) => not_allowed("POST"),
            (r, "GET") if r.starts_with("jobs/") => self.job(&r["jobs/".len()..]),
            _ => error(
                404,
                format!(
                    "no API at /api/v1/{route}; there are status, jobs, jobs/ID, settings, schedule, gc and gc/stop"
                ),
            ),
        }
    }

    /// Runs `change` for an admin; refuses everyone else, and requests made by another
    /// site's page in the admin's browser.
    fn admin(&self, req: &Request, change: impl FnOnce(&str) -> Response) -> Response {
        if let Some(refusal) = cross_site(req) {
            return error(403, refusal);
        }
        match self.auth.admin(req) {
            Ok(who) => change(&who),
            Err(denied) => {
                let challenge = if req.header(PAGE_HEADER).is_some() || !self.auth.has_htpasswd() {
                    "Bearer realm=\"regfs\""
                } else {
                    "Basic realm=\"regfs\", charset=\"UTF-8\""
                };
                let resp = error(denied.status(), denied.message());
                match (denied.status(), denied.retry_after()) {
                    (_, Some(secs)) => resp.with_header("Retry-After", secs.to_string()),
                    (401, None) => resp.with_header("WWW-Authenticate", challenge),
                    _ => resp,
                }
            }
        }
    }
}

/// A browser names the page a request comes from (`Origin`); a change asked by a page
/// of another site (the admin's browser on a hostile page) is refused.
fn cross_site(req: &Request) -> Option<String> {
    let origin = req.header("origin")?;
    let host = req.header("host").unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or("");
    (origin_host != host).then(|| {
        format!("a change from another site's page (Origin {origin}) is refused; use the page served here")
    })
}

fn not_allowed(allow: &'static str) -> Response {
    error(405, format!("method not allowed here; allowed: {allow}")).with_header("Allow", allow)
}

/// The listener's credentials and TLS configuration, read and checked before anything
/// is mounted: a bad file stops the start.
pub struct Prepared {
    pub auth: auth::Auth,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

pub fn prepare(config: &ApiConfig) -> Result<Prepared, String> {
    Ok(Prepared {
        auth: auth::Auth::new(config.htpasswd.clone(), config.token_file.clone())?,
        tls: match &config.tls {
            Some((cert, key)) => Some(crate::http::transport::server_config(cert, key)?),
            None => None,
        },
    })
}

/// Starts the listener on `addr`: metrics, the page and the API, TLS if configured.
pub fn serve(
    api: Api,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Server, String> {
    let api = Arc::new(api);
    crate::http::serve(
        addr,
        Serving {
            handler: Arc::new(move |req: &Request| api.answer(req)),
            tls,
        },
    )
    .map_err(|e| format!("HTTP listener on {addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request {
        Request {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Request::default()
        }
    }

    #[test]
    fn changes_from_another_sites_page_are_refused() {
        assert!(cross_site(&req(&[("host", "127.0.0.1:9469")])).is_none());
        assert!(
            cross_site(&req(&[
                ("host", "127.0.0.1:9469"),
                ("origin", "http://127.0.0.1:9469")
            ]))
            .is_none()
        );
        let e = cross_site(&req(&[
            ("host", "127.0.0.1:9469"),
            ("origin", "https://evil.example"),
        ]))
        .unwrap();
        assert!(e.contains("evil.example"), "{e}");
    }
}

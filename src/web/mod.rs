//! The garbage-collection page: one HTML page, its script and its style sheet, embedded
//! in the binary (no network, no framework). The script polls the API every second and
//! draws the chart as inline SVG.

use crate::http::Response;

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static str,
}

const PAGE: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("page.html"),
};
const SCRIPT: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("page.js"),
};
const STYLE: Asset = Asset {
    content_type: "text/css; charset=utf-8",
    body: include_str!("page.css"),
};

/// The asset served at `path`, if any.
pub fn asset(path: &str) -> Option<Asset> {
    match path {
        "/" | "/index.html" => Some(PAGE),
        "/page.js" => Some(SCRIPT),
        "/page.css" => Some(STYLE),
        _ => None,
    }
}

/// The page and its assets may load only from here and talk only to here; nothing may
/// frame them.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn response(asset: Asset) -> Response {
    Response::new(200, asset.content_type, asset.body.as_bytes().to_vec())
        .with_header("Content-Security-Policy", CSP)
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("X-Frame-Options", "DENY")
        .with_header("Referrer-Policy", "no-referrer")
        .with_header("Cache-Control", "no-cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for a in [PAGE, SCRIPT, STYLE] {
            for far in ["http://", "https://", "//cdn", "@import"] {
                let found = a
                    .body
                    .lines()
                    // The SVG namespace is a name, not something loaded.
                    .filter(|l| !l.contains("http://www.w3.org/2000/svg"))
                    .any(|l| l.contains(far));
                assert!(!found, "{} mentions {far}", a.content_type);
            }
        }
        assert!(PAGE.body.contains("src=\"page.js\""));
    }
}

//! HTTP/1.1 requests and answers as the daemon's listener speaks them: one request per
//! connection, a head of at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] headers (parsed
//! by `httparse`), a body only by `Content-Length` and of at most [`MAX_BODY`] bytes
//! (settings are a few hundred), no chunked uploads.

use std::net::SocketAddr;

/// A request head larger than this is refused (a scrape's is a few hundred bytes).
pub const MAX_HEAD: usize = 8 * 1024;
/// A request body larger than this is refused.
pub const MAX_BODY: usize = 64 * 1024;
/// A request with more headers than this is refused (a browser sends about fifteen).
pub const MAX_HEADERS: usize = 64;

/// What the server hands the handler.
#[derive(Debug, Default, Clone)]
pub struct Request {
    pub method: String,
    /// The path, without a query string.
    pub path: String,
    /// The query string, without its `?` (still percent-encoded).
    pub query: String,
    /// Header names in lower case, values trimmed, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Who sent it (the server fills this in).
    pub peer: Option<SocketAddr>,
}

impl Request {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The query's parameters, decoded.
    pub fn params(&self) -> Vec<(String, String)> {
        self.query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect()
    }
}

/// `a%20b+c` → `a b c`; a bad escape is kept as typed.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The handler's answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// More headers (`WWW-Authenticate`, `Cache-Control`, ...).
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type,
            headers: vec![],
            body,
        }
    }

    pub fn text(status: u16, body: &str) -> Response {
        Response::new(
            status,
            "text/plain; charset=utf-8",
            body.as_bytes().to_vec(),
        )
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            // A value never carries a line break into the head.
            let value: String = value.chars().filter(|c| !c.is_control()).collect();
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// Why a request cannot be answered by the handler.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Malformed(String),
    HeadTooLarge,
    BodyTooLarge,
    LengthRequired,
}

impl Refusal {
    /// The answer, as JSON like every API error: `{"error": "...", "status": N}`.
    pub fn response(&self) -> Response {
        let (status, message) = match self {
            Refusal::Malformed(why) => (400, format!("bad request: {why}")),
            Refusal::HeadTooLarge => (431, format!("request head larger than {MAX_HEAD} bytes")),
            Refusal::BodyTooLarge => (413, format!("request body larger than {MAX_BODY} bytes")),
            Refusal::LengthRequired => (
                411,
                "a request body needs Content-Length (chunked bodies are not accepted)".into(),
            ),
        };
        let body = serde_json::json!({ "error": message, "status": status });
        Response::new(status, "application/json", format!("{body}\n").into_bytes())
    }
}

/// The request in `buf` once it is complete; `None` while more is needed.
pub fn parse(buf: &[u8]) -> Option<Result<Request, Refusal>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let end = match head.parse(buf) {
        Ok(httparse::Status::Complete(end)) if end > MAX_HEAD => {
            return Some(Err(Refusal::HeadTooLarge));
        }
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) => {
            return (buf.len() > MAX_HEAD).then_some(Err(Refusal::HeadTooLarge));
        }
        Err(httparse::Error::TooManyHeaders) => return Some(Err(Refusal::HeadTooLarge)),
        Err(e) => return Some(Err(Refusal::Malformed(e.to_string()))),
    };
    let mut req = match request_of(&head) {
        Ok(r) => r,
        Err(e) => return Some(Err(e)),
    };
    if req.header("transfer-encoding").is_some() {
        return Some(Err(Refusal::LengthRequired));
    }
    let length = match req.header("content-length").map(|v| v.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) if n > MAX_BODY => return Some(Err(Refusal::BodyTooLarge)),
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return Some(Err(Refusal::Malformed(
                "Content-Length is not a number".into(),
            )));
        }
    };
    let body = &buf[end..];
    if body.len() < length {
        return None;
    }
    req.body = body[..length].to_vec();
    Some(Ok(req))
}

fn request_of(head: &httparse::Request) -> Result<Request, Refusal> {
    let (method, target) = match (head.method, head.path) {
        (Some(m), Some(t)) if t.starts_with('/') => (m, t),
        _ => return Err(Refusal::Malformed("no request line".into())),
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::with_capacity(head.headers.len());
    for h in head.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| Refusal::Malformed(format!("header {} is not UTF-8", h.name)))?;
        headers.push((h.name.to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body: vec![],
        peer: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed_once_head_and_body_are_complete() {
        assert!(parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").is_none());
        let r = parse(b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/metrics"));
        assert_eq!(r.query, "x=1");
        assert_eq!(r.header("host"), Some("x"));
        let put = b"PUT /api HTTP/1.1\r\nContent-Length: 4\r\n\r\n{\"a";
        assert!(parse(put).is_none(), "body incomplete");
        let full = b"PUT /api HTTP/1.1\r\nContent-Length: 4\r\n\r\n{\"a\"}";
        assert_eq!(parse(full).unwrap().unwrap().body, b"{\"a\"");
        assert!(matches!(
            parse(b"\xff\xfe\r\n\r\n").unwrap(),
            Err(Refusal::Malformed(_))
        ));
        assert!(parse(b"GET\r\n\r\n").unwrap().is_err());
        assert!(parse(b"GET http://x/ HTTP/1.1\r\n\r\n").unwrap().is_err());
        assert!(
            parse(b"GET / HTTP/1.1\r\nNo colon\r\n\r\n")
                .unwrap()
                .is_err()
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            parse(many.as_bytes()).unwrap().unwrap_err(),
            Refusal::HeadTooLarge
        );
        let big = format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert_eq!(
            parse(big.as_bytes()).unwrap().unwrap_err(),
            Refusal::BodyTooLarge
        );
        let refused = Refusal::BodyTooLarge.response();
        let body: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
        assert_eq!((refused.status, body["status"].as_u64()), (413, Some(413)));
        assert!(body["error"].as_str().unwrap().contains("larger than"));
        let chunked = b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            parse(chunked).unwrap().unwrap_err(),
            Refusal::LengthRequired
        );
        assert_eq!(
            parse(&vec![b'a'; MAX_HEAD + 1]).unwrap().unwrap_err(),
            Refusal::HeadTooLarge
        );
    }

    #[test]
    fn query_parameters_are_decoded() {
        let r = Request {
            query: "expr=0+3+*+*+SAT&x=%2F&bad=%zz&flag".into(),
            ..Request::default()
        };
        assert_eq!(
            r.params(),
            vec![
                ("expr".into(), "0 3 * * SAT".into()),
                ("x".into(), "/".into()),
                ("bad".into(), "%zz".into()),
                ("flag".into(), "".into()),
            ]
        );
    }

    #[test]
    fn header_values_cannot_break_the_head() {
        let r = Response::text(401, "no").with_header("WWW-Authenticate", "a\r\nSet-Cookie: x");
        let out = String::from_utf8(r.encode()).unwrap();
        assert!(
            out.contains("WWW-Authenticate: aSet-Cookie: x\r\n"),
            "{out}"
        );
    }
}

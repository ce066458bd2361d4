//! A small blocking client of etcd's v3 API, through the JSON gateway every etcd server
//! (3.4 on) serves beside gRPC: the same KV, transactions and leases, without an async
//! runtime or a protobuf compiler in the build. Each call has a deadline, so a node that
//! lost etcd learns it in bounded time. Plain `http://` endpoints only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EtcdError {
    #[error("etcd endpoint {0:?}: not an http://HOST:PORT URL")]
    BadEndpoint(String),
    #[error("etcd unreachable ({0})")]
    Unreachable(String),
    #[error("etcd {path}: {message}")]
    Refused { path: String, message: String },
}

/// A key and its value as etcd holds them.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub lease: i64,
}

/// A client over one or more endpoints: the first that answers is used until it fails.
pub struct Etcd {
    endpoints: Vec<(String, String)>,
    current: Mutex<usize>,
    timeout: Duration,
}

/// The host:port of an `http://host:port[/]` URL.
fn host_port(url: &str) -> Result<String, EtcdError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| EtcdError::BadEndpoint(url.into()))?;
    let hp = rest.trim_end_matches('/');
    if hp.is_empty() || hp.contains('/') || !hp.contains(':') {
        return Err(EtcdError::BadEndpoint(url.into()));
    }
    Ok(hp.to_string())
}

/// Checks endpoint URLs (for the configuration).
pub fn check_endpoint(url: &str) -> Result<(), EtcdError> {
    host_port(url).map(|_| ())
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

/// An int64 from the gateway's JSON (a string) or a number.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The key just past every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Etcd {
    /// `timeout` bounds each call (connect, send, answer).
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Etcd, EtcdError> {
        let endpoints = endpoints
            .iter()
            .map(|e| host_port(e).map(|hp| (e.clone(), hp)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Etcd {
            endpoints,
            current: Mutex::new(0),
            timeout,
        })
    }

    fn post_to(&self, hp: &str, path: &str, body: &str) -> Result<Value, String> {
        let addr: SocketAddr = hp
            .to_socket_addrs()
            .map_err(|e| format!("{hp}: {e}"))?
            .next()
            .ok_or_else(|| format!("{hp}: no address"))?;
        let mut s = TcpStream::connect_timeout(&addr, self.timeout).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(self.timeout))
            .and_then(|()| s.set_write_timeout(Some(self.timeout)))
            .map_err(|e| e.to_string())?;
        // HTTP/1.0: the answer ends at the connection's end, never chunked.
        let req = format!(
            "POST {path} HTTP/1.0\r\nHost: {hp}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        s.take(16 << 20)
            .read_to_end(&mut raw)
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or("a truncated answer".to_string())?;
        let status = head.split(' ').nth(1).unwrap_or("");
        let v: Value = serde_json::from_str(body).map_err(|e| format!("bad JSON: {e}"))?;
        if status != "200" {
            let message = v["message"]
                .as_str()
                .or(v["error"].as_str())
                .unwrap_or(body);
            return Ok(json!({"__refused": format!("HTTP {status}: {message}")}));
        }
        Ok(v)
    }

    /// Calls `path` on the current endpoint, then on each other once.
    fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let body = body.to_string();
        let n = self.endpoints.len();
        let first = *self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut errors = Vec::new();
        for k in 0..n {
            let i = (first + k) % n;
            let (url, hp) = &self.endpoints[i];
            match self.post_to(hp, path, &body) {
                Ok(v) => {
                    *self.current.lock().unwrap_or_else(|e| e.into_inner()) = i;
                    if let Some(m) = v.get("__refused") {
                        return Err(EtcdError::Refused {
                            path: path.into(),
                            message: m.as_str().unwrap_or("").into(),
                        });
                    }
                    return Ok(v);
                }
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
        Err(EtcdError::Unreachable(errors.join("; ")))
    }

    /// A new lease of `ttl` seconds; its id.
    pub fn grant(&self, ttl: u64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/grant", json!({"TTL": ttl}))?;
        Ok(int(&v["ID"]))
    }

    /// Renews a lease; false if it has expired (or never was).
    pub fn keep_alive(&self, lease: i64) -> Result<bool, EtcdError> {
        let v = self.call("/v3/lease/keepalive", json!({"ID": lease.to_string()}))?;
        let r = v.get("result").unwrap_or(&v);
        Ok(int(&r["TTL"]) > 0)
    }

    /// How long a lease has left; `None` once it has expired (or never was).
    pub fn time_to_live(&self, lease: i64) -> Result<Option<Duration>, EtcdError> {
        let v = self.call("/v3/lease/timetolive", json!({"ID": lease.to_string()}))?;
        let ttl = int(&v["TTL"]);
        Ok((ttl >= 0).then(|| Duration::from_secs(ttl as u64)))
    }

    pub fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", json!({"ID": lease.to_string()}))
            .map(|_| ())
    }

    /// Puts `key` under `lease` (0: none).
    pub fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<(), EtcdError> {
        self.call("/v3/kv/put", put_body(key, value, lease))
            .map(|_| ())
    }

    /// Every key starting with `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        let v = self.call(
            "/v3/kv/range",
            json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix))}),
        )?;
        Ok(kvs(&v))
    }

    pub fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        let v = self.call("/v3/kv/range", json!({"key": b64(key.as_bytes())}))?;
        Ok(kvs(&v).into_iter().next())
    }

    /// Creates `key` only if it does not exist (one transaction). `Ok(Some(revision))`:
    /// created at that revision; `Ok(None)`: it existed.
    pub fn create(&self, key: &str, value: &[u8], lease: i64) -> Result<Option<u64>, EtcdError> {
        Ok(self.create_or_get(key, value, lease)?.ok())
    }

    /// Creates `key` only if it does not exist, and otherwise reads it, in one
    /// transaction: `Ok(Ok(revision))`: created at that revision; `Ok(Err(kv))`: the key
    /// as it was when the creation was refused.
    pub fn create_or_get(
        &self,
        key: &str,
        value: &[u8],
        lease: i64,
    ) -> Result<Result<u64, Kv>, EtcdError> {
        let path = "/v3/kv/txn";
        let v = self.call(
            path,
            json!({
                "compare": [{"target": "CREATE", "key": b64(key.as_bytes()), "create_revision": "0"}],
                "success": [{"request_put": put_body(key, value, lease)}],
                "failure": [{"request_range": {"key": b64(key.as_bytes())}}],
            }),
        )?;
        if v["succeeded"].as_bool().unwrap_or(false) {
            return Ok(Ok(int(&v["header"]["revision"]) as u64));
        }
        kvs(&v["responses"][0]["response_range"])
            .into_iter()
            .next()
            .map(Err)
            .ok_or_else(|| EtcdError::Refused {
                path: path.into(),
                message: format!("{key}: neither created nor found"),
            })
    }

    /// Replaces `key` only if it is still the one created at `revision`.
    pub fn put_if(
        &self,
        key: &str,
        revision: u64,
        value: &[u8],
        lease: i64,
    ) -> Result<bool, EtcdError> {
        self.put_guarded((key, revision), key, value, lease)
    }

    /// Puts `key` only while `guard.0` is the key created at revision `guard.1`.
    pub fn put_guarded(
        &self,
        guard: (&str, u64),
        key: &str,
        value: &[u8],
        lease: i64,
    ) -> Result<bool, EtcdError> {
        let v = self.call(
            "/v3/kv/txn",
            json!({
                "compare": [{"target": "CREATE", "key": b64(guard.0.as_bytes()), "create_revision": guard.1.to_string()}],
                "success": [{"request_put": put_body(key, value, lease)}],
            }),
        )?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    /// Deletes `key` only if it is still the one created at `revision`.
    pub fn delete_if(&self, key: &str, revision: u64) -> Result<bool, EtcdError> {
        let v = self.call(
            "/v3/kv/txn",
            json!({
                "compare": [{"target": "CREATE", "key": b64(key.as_bytes()), "create_revision": revision.to_string()}],
                "success": [{"request_delete_range": {"key": b64(key.as_bytes())}}],
            }),
        )?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    /// Deletes every key starting with `prefix`.
    pub fn delete_prefix(&self, prefix: &str) -> Result<(), EtcdError> {
        self.call(
            "/v3/kv/deleterange",
            json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix))}),
        )
        .map(|_| ())
    }
}

fn put_body(key: &str, value: &[u8], lease: i64) -> Value {
    let mut body = json!({"key": b64(key.as_bytes()), "value": b64(value)});
    if lease != 0 {
        body["lease"] = json!(lease.to_string());
    }
    body
}

fn kvs(v: &Value) -> Vec<Kv> {
    let decode = |x: &Value| B64.decode(x.as_str().unwrap_or("")).unwrap_or_default();
    v["kvs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|kv| Kv {
                    key: String::from_utf8_lossy(&decode(&kv["key"])).into_owned(),
                    value: decode(&kv["value"]),
                    create_revision: int(&kv["create_revision"]) as u64,
                    lease: int(&kv["lease"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_plain_http_host_port() {
        assert!(check_endpoint("http://127.0.0.1:2379").is_ok());
        assert!(check_endpoint("http://etcd-1:2379/").is_ok());
        for bad in [
            "https://a:2379",
            "127.0.0.1:2379",
            "http://a",
            "http://a:1/v3",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_prefix_range_ends_just_past_the_prefix() {
        assert_eq!(prefix_end("/regfs/"), b"/regfs0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }
}

//! A small blocking client of etcd's v3 API, through the JSON gateway every etcd server
//! (3.4 on) serves beside gRPC: the same KV, transactions and leases, without an async
//! runtime or a protobuf compiler in the build. HTTP is `ureq`'s (keep-alive, and TLS by
//! the rustls the HTTP listener uses). Each call has a deadline, so a node that lost
//! etcd learns it in bounded time; the endpoints are tried in turn.
//!
//! Production etcd: `https://` endpoints verified against a CA file, a client
//! certificate for `--client-cert-auth`, and user/password authentication (a token from
//! `/v3/auth/authenticate`, sent as `Authorization`, taken anew when etcd says it has
//! expired; a token is per endpoint, as etcd's simple tokens are per member).

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use thiserror::Error;
use ureq::tls::{Certificate, ClientCert, PemItem, RootCerts, TlsConfig, TlsProvider};

#[derive(Debug, Error)]
pub enum EtcdError {
    #[error("etcd endpoint {0:?}: not an http(s)://HOST:PORT URL")]
    BadEndpoint(String),
    #[error("etcd unreachable ({0})")]
    Unreachable(String),
    #[error("etcd {endpoint}{path}: {message}")]
    Refused {
        endpoint: String,
        path: String,
        message: String,
    },
    /// etcd answers but does not accept this client: its certificate, the server's
    /// certificate against the CA, or the user and password. Waiting will not help.
    #[error("etcd {endpoint}: {message}")]
    Credentials { endpoint: String, message: String },
    /// A file of the TLS or auth settings cannot be used.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

impl EtcdError {
    /// etcd refuses this client's certificate or password (not an outage).
    pub fn is_credentials(&self) -> bool {
        matches!(self, EtcdError::Credentials { .. })
    }
}

/// How this client proves itself to etcd and checks etcd's certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Access {
    /// PEM: the CA(s) etcd's server certificate must chain to (`https://` endpoints).
    pub ca_file: Option<PathBuf>,
    /// PEM: this client's certificate (chain) and private key, for `--client-cert-auth`.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// etcd's user/password authentication: the user and the file holding its password.
    pub auth: Option<(String, PathBuf)>,
}

/// The TLS settings read and parsed, ready for the client.
struct Tls(TlsConfig);

fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>, EtcdError> {
    let fail = |message: String| EtcdError::File {
        path: path.to_path_buf(),
        message,
    };
    let f = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut bytes = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > limit {
        return Err(fail(format!("larger than {limit} bytes")));
    }
    Ok(bytes)
}

fn pem_items(path: &Path) -> Result<Vec<PemItem<'static>>, EtcdError> {
    let bytes = read_file(path, 1 << 20)?;
    ureq::tls::parse_pem(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EtcdError::File {
            path: path.to_path_buf(),
            message: format!("not PEM: {e}"),
        })
}

/// The CA certificates of `path` (PEM, at least one).
pub fn load_ca(path: &Path) -> Result<Vec<Certificate<'static>>, EtcdError> {
    let certs: Vec<_> = pem_items(path)?
        .into_iter()
        .filter_map(|i| match i {
            PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(EtcdError::File {
            path: path.into(),
            message: "no PEM certificate in it".into(),
        });
    }
    Ok(certs)
}

/// A client certificate chain (`cert`) and its private key (`key`, which no one but its
/// owner may read: mode 0600 or stricter).
pub fn load_client_cert(cert: &Path, key: &Path) -> Result<ClientCert, EtcdError> {
    let chain = load_ca(cert)?;
    secret_file_mode(key)?;
    let key_item = pem_items(key)?.into_iter().find_map(|i| match i {
        PemItem::PrivateKey(k) => Some(k),
        _ => None,
    });
    let key_item = key_item.ok_or_else(|| EtcdError::File {
        path: key.into(),
        message: "no PEM private key in it".into(),
    })?;
    Ok(ClientCert::new_with_certs(&chain, key_item))
}

/// A file holding a secret must be a regular file that only its owner (root or this
/// process's user) can read or write.
fn secret_file_mode(path: &Path) -> Result<(), EtcdError> {
    let fail = |message: String| EtcdError::File {
        path: path.into(),
        message,
    };
    let m = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if !m.is_file() {
        return Err(fail("not a regular file".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if m.uid() != 0 && m.uid() != me {
        return Err(fail(format!(
            "owned by uid {}: a secret's file belongs to root or to this process's user",
            m.uid()
        )));
    }
    if m.mode() & 0o077 != 0 {
        return Err(fail(format!(
            "mode {:04o}: others may read it; chmod 600 it",
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

/// The password in `path`: its first line (mode 0600 or stricter, not empty).
pub fn read_password(path: &Path) -> Result<String, EtcdError> {
    secret_file_mode(path)?;
    let bytes = read_file(path, 4096)?;
    let text = String::from_utf8(bytes).map_err(|_| EtcdError::File {
        path: path.into(),
        message: "not UTF-8 text".into(),
    })?;
    let pw = text.lines().next().unwrap_or("").to_string();
    if pw.is_empty() {
        return Err(EtcdError::File {
            path: path.into(),
            message: "empty: the password is the file's first line".into(),
        });
    }
    Ok(pw)
}

impl Access {
    fn tls(&self) -> Result<Option<Tls>, EtcdError> {
        let Some(ca) = &self.ca_file else {
            return Ok(None);
        };
        let roots = RootCerts::new_with_certs(&load_ca(ca)?);
        let client = match &self.client_cert {
            Some((cert, key)) => Some(load_client_cert(cert, key)?),
            None => None,
        };
        Ok(Some(Tls(TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .root_certs(roots)
            .client_cert(client)
            .build())))
    }
}

/// A key and its value as etcd holds them.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: u64,
    /// The revision of its last change.
    pub mod_revision: u64,
    pub lease: i64,
}

/// One condition of a [`Etcd::txn`].
#[derive(Debug, Clone, Copy)]
pub enum Compare<'a> {
    /// `key` is the one created at `revision` (0: absent).
    Created(&'a str, u64),
    /// `key` was last changed at `revision`.
    ModifiedAt(&'a str, u64),
    /// No key starting with `prefix` was changed (or created) after `revision`.
    UnchangedSince(&'a str, u64),
}

impl Compare<'_> {
    fn body(&self) -> Value {
        match *self {
            Compare::Created(key, rev) => json!({"target": "CREATE", "key": b64(key.as_bytes()),
                "result": "EQUAL", "create_revision": rev.to_string()}),
            Compare::ModifiedAt(key, rev) => json!({"target": "MOD", "key": b64(key.as_bytes()),
                "result": "EQUAL", "mod_revision": rev.to_string()}),
            Compare::UnchangedSince(prefix, rev) => json!({"target": "MOD",
                "key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix)),
                "result": "LESS", "mod_revision": (rev + 1).to_string()}),
        }
    }
}

/// A user and password, and the token etcd gave for them at each endpoint.
struct Login {
    user: String,
    password: String,
    /// Per endpoint (etcd's simple tokens are known only to the member that made them).
    /// Held only to read or replace a token, never across a call.
    tokens: Mutex<Vec<Option<String>>>,
}

/// A client over one or more endpoints: the first that answers is used until it fails.
pub struct Etcd {
    endpoints: Vec<String>,
    /// The endpoint that answered last; held only to read or set it.
    current: Mutex<usize>,
    agent: ureq::Agent,
    login: Option<Login>,
    /// Whether this client presents a certificate.
    client_cert: bool,
}

/// The base URL of an `http(s)://host:port[/]` endpoint (no trailing slash).
fn base_url(url: &str) -> Result<String, EtcdError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| EtcdError::BadEndpoint(url.into()))?;
    let hp = rest.trim_end_matches('/');
    if hp.is_empty() || hp.contains('/') || !hp.contains(':') {
        return Err(EtcdError::BadEndpoint(url.into()));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// Checks endpoint URLs (for the configuration).
pub fn check_endpoint(url: &str) -> Result<(), EtcdError> {
    base_url(url).map(|_| ())
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

/// One endpoint's answer to one call.
enum Answer {
    Ok(Value),
    /// An HTTP status other than 200, and etcd's message.
    Refused(u16, String),
}

/// Whether etcd's refusal says the token is no longer good (expired, or made by another
/// member): authenticate again.
fn token_expired(status: u16, message: &str) -> bool {
    status == 401
        || message.contains("invalid auth token")
        || message.contains("user name is empty")
}

/// Whether the connection was cut under a request (reset, broken pipe).
fn cut_off(e: &ureq::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    matches!(e, ureq::Error::Io(io) if matches!(io.kind(), BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof))
}

/// Whether a transport error is TLS refusing this peer or this client.
fn tls_failure(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Rustls(_) | ureq::Error::Tls(_) | ureq::Error::Pem(_) => true,
        ureq::Error::Io(io) => io
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()),
        _ => false,
    }
}

impl Etcd {
    /// A client of plain `http://` endpoints; `timeout` bounds each call (connect, send,
    /// answer).
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Etcd, EtcdError> {
        Etcd::with_access(endpoints, &Access::default(), timeout)
    }

    /// A client proving itself as `access` says (its files are read now).
    pub fn with_access(
        endpoints: &[String],
        access: &Access,
        timeout: Duration,
    ) -> Result<Etcd, EtcdError> {
        let endpoints = endpoints
            .iter()
            .map(|e| base_url(e))
            .collect::<Result<Vec<_>, _>>()?;
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent("regfs");
        if let Some(Tls(tls)) = access.tls()? {
            config = config.tls_config(tls);
        }
        let login = match &access.auth {
            Some((user, file)) => Some(Login {
                user: user.clone(),
                password: read_password(file)?,
                tokens: Mutex::new(vec![None; endpoints.len()]),
            }),
            None => None,
        };
        Ok(Etcd {
            endpoints,
            current: Mutex::new(0),
            agent: config.build().new_agent(),
            login,
            client_cert: access.client_cert.is_some(),
        })
    }

    /// POSTs `body` to `url`: etcd's answer, or a transport error.
    fn post(&self, url: &str, token: Option<&str>, body: &str) -> Result<Answer, ureq::Error> {
        let mut req = self
            .agent
            .post(url)
            .header("Content-Type", "application/json");
        if let Some(t) = token {
            req = req.header("Authorization", t);
        }
        let mut resp = req.send(body)?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status != 200 {
            let message = v["message"]
                .as_str()
                .or(v["error"].as_str())
                .unwrap_or(text.trim())
                .to_string();
            return Ok(Answer::Refused(status, format!("HTTP {status}: {message}")));
        }
        if v.is_null() {
            return Ok(Answer::Refused(status, format!("not JSON: {text:.200}")));
        }
        Ok(Answer::Ok(v))
    }

    /// A token for endpoint `i`: the one held, or a new one (`fresh`).
    fn token(&self, i: usize, fresh: bool) -> Result<Option<String>, EtcdError> {
        let Some(login) = &self.login else {
            return Ok(None);
        };
        let held = login.tokens.lock().unwrap_or_else(|e| e.into_inner())[i].clone();
        if let Some(t) = held.filter(|_| !fresh) {
            return Ok(Some(t));
        }
        let endpoint = &self.endpoints[i];
        let body = json!({"name": login.user, "password": login.password}).to_string();
        let url = format!("{endpoint}/v3/auth/authenticate");
        let answer = self
            .post(&url, None, &body)
            .map_err(|e| self.transport(i, e))?;
        let token = match answer {
            Answer::Ok(v) => v["token"].as_str().unwrap_or("").to_string(),
            Answer::Refused(_, message) => {
                return Err(EtcdError::Credentials {
                    endpoint: endpoint.clone(),
                    message: format!("authenticating as {:?}: {message}", login.user),
                });
            }
        };
        if token.is_empty() {
            return Err(EtcdError::Credentials {
                endpoint: endpoint.clone(),
                message: format!(
                    "authenticating as {:?}: no token given (is authentication enabled?)",
                    login.user
                ),
            });
        }
        login.tokens.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(token.clone());
        Ok(Some(token))
    }

    /// A transport error at endpoint `i`: TLS refusing is a credentials error.
    fn transport(&self, i: usize, e: ureq::Error) -> EtcdError {
        let endpoint = self.endpoints[i].clone();
        if tls_failure(&e) {
            let hint = if self.client_cert {
                ""
            } else {
                " (if etcd runs with --client-cert-auth it wants this node's certificate: \
                 cluster.cert_file, cluster.key_file)"
            };
            EtcdError::Credentials {
                endpoint,
                message: format!("TLS: {e}{hint}"),
            }
        } else if endpoint.starts_with("https://") && !self.client_cert && cut_off(&e) {
            // A server wanting a client certificate hangs up on TLS 1.3 clients without
            // one after the handshake, as a network failure would.
            EtcdError::Unreachable(format!(
                "{endpoint}: {e} (if etcd runs with --client-cert-auth it wants this node's \
                 certificate: cluster.cert_file, cluster.key_file)"
            ))
        } else {
            EtcdError::Unreachable(format!("{endpoint}: {e}"))
        }
    }

    /// Calls `path` at endpoint `i`, authenticating (again) when needed.
    fn call_at(&self, i: usize, path: &str, body: &str) -> Result<Value, EtcdError> {
        let url = format!("{}{path}", self.endpoints[i]);
        let mut fresh = false;
        loop {
            let token = self.token(i, fresh)?;
            match self
                .post(&url, token.as_deref(), body)
                .map_err(|e| self.transport(i, e))?
            {
                Answer::Ok(v) => return Ok(v),
                Answer::Refused(status, message)
                    if !fresh && token.is_some() && token_expired(status, &message) =>
                {
                    tracing::debug!(endpoint = %self.endpoints[i], %message, "etcd: token refused; authenticating again");
                    fresh = true;
                }
                Answer::Refused(status, message)
                    if status == 401
                        || message.contains("user name is empty")
                        || message.contains("permission denied") =>
                {
                    let hint = match &self.login {
                        None => " (etcd wants a user: cluster.username, cluster.password_file)",
                        Some(_) => "",
                    };
                    return Err(EtcdError::Credentials {
                        endpoint: self.endpoints[i].clone(),
                        message: format!("{path}: {message}{hint}"),
                    });
                }
                Answer::Refused(_, message) => {
                    return Err(EtcdError::Refused {
                        endpoint: self.endpoints[i].clone(),
                        path: path.into(),
                        message,
                    });
                }
            }
        }
    }

    /// Calls `path` on the current endpoint, then on each other once.
    fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let body = body.to_string();
        let n = self.endpoints.len();
        let first = *self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut errors = Vec::new();
        let mut refused = None;
        for k in 0..n {
            let i = (first + k) % n;
            match self.call_at(i, path, &body) {
                Ok(v) => {
                    *self.current.lock().unwrap_or_else(|e| e.into_inner()) = i;
                    return Ok(v);
                }
                Err(EtcdError::Unreachable(e)) => errors.push(e),
                // Another endpoint may take this client (or be the one misconfigured).
                Err(e @ EtcdError::Credentials { .. }) => {
                    errors.push(e.to_string());
                    refused.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match refused {
            Some(e) if n == 1 => Err(e),
            Some(EtcdError::Credentials { endpoint, .. }) => Err(EtcdError::Credentials {
                endpoint,
                message: errors.join("; "),
            }),
            _ => Err(EtcdError::Unreachable(errors.join("; "))),
        }
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

    /// Puts every `(key, value)` (no lease) in one transaction.
    pub fn put_all(&self, kvs: &[(String, Vec<u8>)]) -> Result<(), EtcdError> {
        let puts: Vec<Value> = kvs
            .iter()
            .map(|(k, v)| json!({"request_put": put_body(k, v, 0)}))
            .collect();
        self.call("/v3/kv/txn", json!({"success": puts}))
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
                endpoint: self.endpoints[*self.current.lock().unwrap_or_else(|e| e.into_inner())]
                    .clone(),
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

    /// Every key starting with `prefix`, and the store's revision they were read at.
    pub fn list_at(&self, prefix: &str) -> Result<(Vec<Kv>, u64), EtcdError> {
        let v = self.call(
            "/v3/kv/range",
            json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix))}),
        )?;
        Ok((kvs(&v), int(&v["header"]["revision"]) as u64))
    }

    /// Puts every `(key, value, lease)` of `puts` in one transaction, only if every
    /// condition holds: `Some(revision)` of the change, `None` if a condition failed.
    pub fn txn(
        &self,
        compares: &[Compare<'_>],
        puts: &[(&str, &[u8], i64)],
    ) -> Result<Option<u64>, EtcdError> {
        let v = self.call(
            "/v3/kv/txn",
            json!({
                "compare": compares.iter().map(Compare::body).collect::<Vec<_>>(),
                "success": puts.iter().map(|(k, v, l)| json!({"request_put": put_body(k, v, *l)})).collect::<Vec<_>>(),
            }),
        )?;
        Ok(v["succeeded"]
            .as_bool()
            .unwrap_or(false)
            .then(|| int(&v["header"]["revision"]) as u64))
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
                    mod_revision: int(&kv["mod_revision"]) as u64,
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
    fn endpoints_are_http_or_https_host_port() {
        assert!(check_endpoint("http://127.0.0.1:2379").is_ok());
        assert!(check_endpoint("http://etcd-1:2379/").is_ok());
        assert!(check_endpoint("https://etcd-1:2379").is_ok());
        for bad in [
            "ftp://a:2379",
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

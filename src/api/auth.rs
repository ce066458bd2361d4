//! Who may change anything through the API: a user of the registry's own htpasswd file
//! (bcrypt, as the registry accepts; `Authorization: Basic`) or the holder of a bearer
//! token kept in a file (`Authorization: Bearer`). Reads need no credentials. Both files
//! are read at start (so a bad one is refused then) and again at each change, so a new
//! password or token takes effect without a restart.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::http::Request;

/// Why a change was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization` header (401).
    NoCredentials,
    /// Credentials that match nothing (401).
    Wrong,
    /// The daemon has no credentials configured, so nobody may change anything (403).
    NotConfigured,
}

impl Denied {
    pub fn status(&self) -> u16 {
        match self {
            Denied::NotConfigured => 403,
            _ => 401,
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            Denied::NoCredentials => {
                "changes need credentials: a user of the htpasswd file (Basic) or the API token (Bearer)"
            }
            Denied::Wrong => {
                "the credentials given match no user of the htpasswd file and not the API token"
            }
            Denied::NotConfigured => {
                "changes through the API are off: the daemon has no credentials configured (--api-htpasswd FILE or --api-token-file FILE, or [api] in the configuration file)"
            }
        }
    }
}

/// The configured credentials.
#[derive(Debug, Default)]
pub struct Auth {
    htpasswd: Option<PathBuf>,
    token_file: Option<PathBuf>,
    /// Passwords already checked against a hash (by a SHA-256 of user and password):
    /// bcrypt is slow on purpose, and the listener has one thread.
    verified: Mutex<HashMap<[u8; 32], String>>,
}

/// One `user:hash` entry of an htpasswd file.
fn entries(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(format!(
                "{} line {}: not a `user:hash` entry",
                path.display(),
                i + 1
            ));
        };
        if !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
            return Err(format!(
                "{} line {}: user {user:?} has no bcrypt hash; the registry and regfs take bcrypt only (htpasswd -B)",
                path.display(),
                i + 1
            ));
        }
        out.push((user.to_string(), hash.to_string()));
    }
    Ok(out)
}

fn token(path: &Path) -> Result<String, String> {
    let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: mode {mode:04o} lets other users read the API token; `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < 16 {
        return Err(format!(
            "{}: the API token must be at least 16 characters (e.g. `openssl rand -hex 32`)",
            path.display()
        ));
    }
    Ok(token)
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// Checks both files now; an unreadable file, a non-bcrypt entry or a token others
    /// may read is an error naming the file.
    pub fn new(htpasswd: Option<PathBuf>, token_file: Option<PathBuf>) -> Result<Auth, String> {
        if let Some(p) = &htpasswd {
            entries(p).map_err(|e| format!("API htpasswd file {e}"))?;
        }
        if let Some(p) = &token_file {
            token(p).map_err(|e| format!("API token file {e}"))?;
        }
        Ok(Auth {
            htpasswd,
            token_file,
            verified: Mutex::default(),
        })
    }

    pub fn configured(&self) -> bool {
        self.htpasswd.is_some() || self.token_file.is_some()
    }

    pub fn has_htpasswd(&self) -> bool {
        self.htpasswd.is_some()
    }

    pub fn has_token(&self) -> bool {
        self.token_file.is_some()
    }

    /// Who is asking for a change: the htpasswd user, or `token`.
    pub fn admin(&self, req: &Request) -> Result<String, Denied> {
        if !self.configured() {
            return Err(Denied::NotConfigured);
        }
        let header = req.header("authorization").ok_or(Denied::NoCredentials)?;
        let (scheme, value) = header.split_once(' ').ok_or(Denied::Wrong)?;
        match scheme.to_ascii_lowercase().as_str() {
            "bearer" => self.bearer(value.trim()),
            "basic" => self.basic(value.trim()),
            _ => Err(Denied::Wrong),
        }
    }

    fn bearer(&self, given: &str) -> Result<String, Denied> {
        let path = self.token_file.as_ref().ok_or(Denied::Wrong)?;
        match token(path) {
            Ok(t) if same(t.as_bytes(), given.as_bytes()) => Ok("token".into()),
            Ok(_) => Err(Denied::Wrong),
            Err(e) => {
                tracing::error!(error = %e, "API token file unusable; refusing the change");
                Err(Denied::Wrong)
            }
        }
    }

    fn basic(&self, encoded: &str) -> Result<String, Denied> {
        let path = self.htpasswd.as_ref().ok_or(Denied::Wrong)?;
        let decoded = base64_decode(encoded).ok_or(Denied::Wrong)?;
        let text = String::from_utf8(decoded).map_err(|_| Denied::Wrong)?;
        let (user, password) = text.split_once(':').ok_or(Denied::Wrong)?;
        let entries = entries(path).map_err(|e| {
            tracing::error!(error = %e, "API htpasswd file unusable; refusing the change");
            Denied::Wrong
        })?;
        let hash = entries
            .into_iter()
            .find(|(u, _)| u == user)
            .map(|(_, h)| h)
            .ok_or(Denied::Wrong)?;
        let key: [u8; 32] = Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.get(&key) == Some(&hash) {
            return Ok(user.to_string());
        }
        if bcrypt::verify(password, &hash).unwrap_or(false) {
            if verified.len() > 64 {
                verified.clear();
            }
            verified.insert(key, hash);
            Ok(user.to_string())
        } else {
            Err(Denied::Wrong)
        }
    }
}

/// Standard base64 (with or without padding); `None` when it is not.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(header: &str) -> Request {
        Request {
            headers: vec![("authorization".into(), header.into())],
            ..Request::default()
        }
    }

    #[test]
    fn base64_decodes_as_basic_auth_sends_it() {
        assert_eq!(base64_decode("YWRtaW46czNjcmV0").unwrap(), b"admin:s3cret");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert!(base64_decode("Y").is_none());
        assert!(base64_decode("!!!!").is_none());
    }

    #[test]
    fn bcrypt_users_and_the_token_are_admins_and_nobody_else() {
        let t = tempfile::tempdir().unwrap();
        let ht = t.path().join("htpasswd");
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        fs::write(&ht, format!("# users\nadmin:{hash}\n")).unwrap();
        let tok = t.path().join("token");
        fs::write(&tok, "0123456789abcdef0123\n").unwrap();
        fs::set_permissions(&tok, fs::Permissions::from_mode(0o600)).unwrap();
        let auth = Auth::new(Some(ht.clone()), Some(tok.clone())).unwrap();
        assert_eq!(
            auth.admin(&with_auth("Basic YWRtaW46czNjcmV0")),
            Ok("admin".into())
        );
        // Again, from the cache of verified passwords.
        assert_eq!(
            auth.admin(&with_auth("Basic YWRtaW46czNjcmV0")),
            Ok("admin".into())
        );
        assert_eq!(
            auth.admin(&with_auth("Basic YWRtaW46d3Jvbmc=")),
            Err(Denied::Wrong)
        );
        assert_eq!(
            auth.admin(&with_auth("Bearer 0123456789abcdef0123")),
            Ok("token".into())
        );
        assert_eq!(
            auth.admin(&with_auth("Bearer 0123456789abcdef0124")),
            Err(Denied::Wrong)
        );
        assert_eq!(auth.admin(&Request::default()), Err(Denied::NoCredentials));
        // A changed password takes effect at once; the old one no longer works.
        fs::write(&ht, format!("admin:{}\n", bcrypt::hash("new", 4).unwrap())).unwrap();
        assert_eq!(
            auth.admin(&with_auth("Basic YWRtaW46czNjcmV0")),
            Err(Denied::Wrong)
        );
        let none = Auth::new(None, None).unwrap();
        assert_eq!(
            none.admin(&with_auth("Bearer x")),
            Err(Denied::NotConfigured)
        );
    }

    #[test]
    fn unusable_files_are_refused_at_start_naming_them() {
        let t = tempfile::tempdir().unwrap();
        let ht = t.path().join("htpasswd");
        fs::write(&ht, "bob:$apr1$abc$def\n").unwrap();
        let e = Auth::new(Some(ht), None).unwrap_err();
        assert!(e.contains("line 1") && e.contains("bcrypt"), "{e}");
        let tok = t.path().join("token");
        fs::write(&tok, "0123456789abcdef0123\n").unwrap();
        fs::set_permissions(&tok, fs::Permissions::from_mode(0o644)).unwrap();
        let e = Auth::new(None, Some(tok.clone())).unwrap_err();
        assert!(e.contains("0644") && e.contains("chmod 600"), "{e}");
        fs::write(&tok, "short\n").unwrap();
        fs::set_permissions(&tok, fs::Permissions::from_mode(0o600)).unwrap();
        let e = Auth::new(None, Some(tok)).unwrap_err();
        assert!(e.contains("16 characters"), "{e}");
    }
}

//! Who may change anything through the API: a user of the registry's own htpasswd file
//! (bcrypt, as the registry accepts; `Authorization: Basic`) or the holder of a bearer
//! token kept in a file (`Authorization: Bearer`). Reads need no credentials. Both files
//! are read at start (so a bad one is refused then) and again at each change, so a new
//! password or token takes effect without a restart. Failed logins are slowed down per
//! client address and per user ([`throttle`](super::throttle)), at most
//! [`MAX_PASSWORD_CHECKS`] bcrypt checks run at once (the others are answered 429 at
//! once, leaving the listener's other handlers free), and an unknown user costs a
//! bcrypt check of the same cost as a known one.

use std::collections::HashMap;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use sha2::{Digest, Sha256};

use super::throttle::Throttle;
use crate::http::Request;

/// bcrypt checks running at once, at most: fewer than the listener's handler threads,
/// so guessed passwords never hold them all.
pub const MAX_PASSWORD_CHECKS: usize = 2;
/// Failed logins from one client address in a row, then one per [`ADDRESS_REFILL`].
pub const ADDRESS_BURST: u32 = 10;
pub const ADDRESS_REFILL: Duration = Duration::from_secs(3);
/// Failed logins for one user in a row, then one per [`USER_REFILL`].
pub const USER_BURST: u32 = 10;
pub const USER_REFILL: Duration = Duration::from_secs(6);

/// Standard base64, padded or not, as clients send `Authorization: Basic`.
const BASIC: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A well-formed bcrypt hash of nothing anyone types, at `cost`: checking a password
/// against it costs what checking against a user's hash of that cost does.
fn dummy_hash(cost: u32) -> String {
    format!("$2b${cost:02}$lieB9YRCmBmB3mV7HmTexu6UnKY8jGv5vW7VnIjVtnjmcTaLYyhXK")
}

/// Whom a request's failures count against: its IPv4 address, or its IPv6 /64 (one
/// host usually has a whole /64); without a peer (a request made in-process), one key.
fn client_key(req: &Request) -> IpAddr {
    match req.peer.map(|p| p.ip().to_canonical()) {
        Some(IpAddr::V6(v6)) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        Some(v4) => v4,
        None => IpAddr::from([0u8; 4]),
    }
}

/// The cost of a `$2b$NN$...` hash.
fn cost_of(hash: &str) -> Option<u32> {
    hash.get(4..6)?.parse().ok()
}

/// Why a change was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization` header (401).
    NoCredentials,
    /// Credentials that match nothing (401).
    Wrong,
    /// Too many failed logins from this address or for this user, or too many
    /// password checks at once: try again after this long (429).
    Throttled(Duration),
    /// The daemon has no credentials configured, so nobody may change anything (403).
    NotConfigured,
}

impl Denied {
    pub fn status(&self) -> u16 {
        match self {
            Denied::NotConfigured => 403,
            Denied::Throttled(_) => 429,
            _ => 401,
        }
    }

    /// Whole seconds to wait before trying again, for `Retry-After`.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Denied::Throttled(wait) => Some(wait.as_secs_f64().ceil().max(1.0) as u64),
            _ => None,
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
            Denied::Throttled(_) => {
                "too many failed logins from this address or for this user, or too many at once; try again after Retry-After seconds"
            }
            Denied::NotConfigured => {
                "changes through the API are off: the daemon has no credentials configured (--api-htpasswd FILE or --api-token-file FILE, or [api] in the configuration file)"
            }
        }
    }
}

/// The configured credentials.
#[derive(Debug)]
pub struct Auth {
    htpasswd: Option<PathBuf>,
    token_file: Option<PathBuf>,
    /// Passwords already checked against a hash (by a SHA-256 of user and password):
    /// bcrypt is slow on purpose.
    verified: Mutex<HashMap<[u8; 32], String>>,
    /// Failed logins by client address.
    by_address: Throttle<IpAddr>,
    /// Failed logins by user name (known or not), by its SHA-256 so that a long name
    /// costs no more memory than a short one.
    by_user: Throttle<[u8; 32]>,
    /// bcrypt checks running now.
    checking: AtomicUsize,
}

/// A bcrypt check's place among the [`MAX_PASSWORD_CHECKS`].
struct CheckSlot<'a>(&'a AtomicUsize);

impl<'a> CheckSlot<'a> {
    fn take(count: &'a AtomicUsize) -> Option<CheckSlot<'a>> {
        let slot = CheckSlot(count);
        (count.fetch_add(1, Ordering::SeqCst) < MAX_PASSWORD_CHECKS).then_some(slot)
    }
}

impl Drop for CheckSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
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
            by_address: Throttle::new(ADDRESS_BURST, ADDRESS_REFILL),
            by_user: Throttle::new(USER_BURST, USER_REFILL),
            checking: AtomicUsize::new(0),
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
        let address = client_key(req);
        self.by_address.check(&address).map_err(Denied::Throttled)?;
        let (scheme, value) = header.split_once(' ').ok_or(Denied::Wrong)?;
        let answer = match scheme.to_ascii_lowercase().as_str() {
            "bearer" => self.bearer(value.trim()),
            "basic" => self.basic(value.trim()),
            _ => Err(Denied::Wrong),
        };
        if answer == Err(Denied::Wrong) {
            self.by_address.failed(&address);
        }
        answer
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
        let decoded = BASIC.decode(encoded).map_err(|_| Denied::Wrong)?;
        let text = String::from_utf8(decoded).map_err(|_| Denied::Wrong)?;
        let (user, password) = text.split_once(':').ok_or(Denied::Wrong)?;
        let user_key: [u8; 32] = Sha256::digest(user.as_bytes()).into();
        self.by_user.check(&user_key).map_err(Denied::Throttled)?;
        let entries = entries(path).map_err(|e| {
            tracing::error!(error = %e, "API htpasswd file unusable; refusing the change");
            Denied::Wrong
        })?;
        let known = entries.iter().find(|(u, _)| u == user).map(|(_, h)| h);
        let key: [u8; 32] = Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        if known.is_some()
            && self
                .verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                == known
        {
            return Ok(user.to_string());
        }
        // An unknown user is checked against a hash of the file's highest cost, so
        // the answer takes as long as for a known user's wrong password.
        let hash = match known {
            Some(h) => h.clone(),
            None => dummy_hash(
                entries
                    .iter()
                    .filter_map(|(_, h)| cost_of(h))
                    .max()
                    .unwrap_or(bcrypt::DEFAULT_COST),
            ),
        };
        let Some(_slot) = CheckSlot::take(&self.checking) else {
            return Err(Denied::Throttled(Duration::from_secs(1)));
        };
        if bcrypt::verify(password, &hash).unwrap_or(false) && known.is_some() {
            let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if verified.len() > 64 {
                verified.clear();
            }
            verified.insert(key, hash);
            Ok(user.to_string())
        } else {
            self.by_user.failed(&user_key);
            Err(Denied::Wrong)
        }
    }
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
    fn basic_credentials_decode_padded_or_not() {
        assert_eq!(BASIC.decode("YWRtaW46czNjcmV0").unwrap(), b"admin:s3cret");
        assert_eq!(BASIC.decode("YQ==").unwrap(), b"a");
        assert_eq!(BASIC.decode("YQ").unwrap(), b"a");
        assert!(BASIC.decode("Y").is_err());
        assert!(BASIC.decode("!!!!").is_err());
    }

    /// The least time of `n` tries of `f`.
    fn least_time(n: usize, f: impl Fn()) -> Duration {
        (0..n)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed()
            })
            .min()
            .unwrap()
    }

    #[test]
    fn an_unknown_user_costs_what_a_wrong_password_does() {
        let t = tempfile::tempdir().unwrap();
        let ht = t.path().join("htpasswd");
        fs::write(
            &ht,
            format!("admin:{}\n", bcrypt::hash("s3cret", 8).unwrap()),
        )
        .unwrap();
        assert!(bcrypt::verify("x", &dummy_hash(4)).is_ok(), "a usable hash");
        let auth = Auth::new(Some(ht), None).unwrap();
        let wrong = least_time(3, || {
            assert_eq!(auth.basic("YWRtaW46bm9wZQ=="), Err(Denied::Wrong)); // admin:nope
        });
        let unknown = least_time(3, || {
            assert_eq!(auth.basic("Ym9iOm5vcGU="), Err(Denied::Wrong)); // bob:nope
        });
        assert!(
            unknown.as_secs_f64() > wrong.as_secs_f64() * 0.5,
            "unknown user {unknown:?}, wrong password {wrong:?}"
        );
    }

    #[test]
    fn failed_logins_are_slowed_down_per_address_and_per_user() {
        let t = tempfile::tempdir().unwrap();
        let ht = t.path().join("htpasswd");
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        fs::write(&ht, format!("admin:{hash}\nbob:{hash}\n")).unwrap();
        let tok = t.path().join("token");
        fs::write(&tok, "0123456789abcdef0123\n").unwrap();
        fs::set_permissions(&tok, fs::Permissions::from_mode(0o600)).unwrap();
        let auth = Auth::new(Some(ht), Some(tok)).unwrap();
        let from = |ip: [u8; 4], header: &str| Request {
            peer: Some((ip, 40000).into()),
            ..with_auth(header)
        };
        let wrong = "Basic YWRtaW46d3Jvbmc="; // admin:wrong
        let right = "Basic YWRtaW46czNjcmV0"; // admin:s3cret
        for _ in 0..ADDRESS_BURST {
            assert_eq!(auth.admin(&from([10, 0, 0, 1], wrong)), Err(Denied::Wrong));
        }
        // That address is refused whatever it sends, the token too.
        let refused = auth.admin(&from([10, 0, 0, 1], right)).unwrap_err();
        assert!(matches!(refused, Denied::Throttled(_)), "{refused:?}");
        assert_eq!(refused.status(), 429);
        assert!(
            (1..=3).contains(&refused.retry_after().unwrap()),
            "{refused:?}"
        );
        assert!(matches!(
            auth.admin(&from([10, 0, 0, 1], "Bearer 0123456789abcdef0123")),
            Err(Denied::Throttled(_))
        ));
        // An IPv6 host counts as its /64.
        let v6 = |last: u16| Request {
            peer: Some(
                (
                    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last),
                    40000,
                )
                    .into(),
            ),
            ..Request::default()
        };
        assert_eq!(client_key(&v6(1)), client_key(&v6(2)));
        // The user was guessed for too: refused from another address, while another
        // user and the token still work there.
        assert!(matches!(
            auth.admin(&from([10, 0, 0, 2], right)),
            Err(Denied::Throttled(_))
        ));
        assert_eq!(
            auth.admin(&from([10, 0, 0, 2], "Basic Ym9iOnMzY3JldA==")), // bob:s3cret
            Ok("bob".into())
        );
        assert_eq!(
            auth.admin(&from([10, 0, 0, 2], "Bearer 0123456789abcdef0123")),
            Ok("token".into())
        );
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

//! Content digests and link files. A digest is validated here before it ever becomes a
//! path: `sha256:` and exactly 64 lowercase hex characters.

use std::fmt;

use sha2::{Digest as _, Sha256};
use thiserror::Error;

/// A sha256 digest, held as its 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The bytes as four big-endian words: ordered as the bytes are.
    fn words(&self) -> [u64; 4] {
        let w =
            |i: usize| u64::from_be_bytes(self.0[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        [w(0), w(1), w(2), w(3)]
    }
}

/// Byte order (that of the hex names), compared a word at a time: the inventory sorts and
/// binary-searches every blob of the store by it.
impl Ord for Digest {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.words().cmp(&other.words())
    }
}

impl PartialOrd for Digest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("unsupported digest algorithm {0:?} (only sha256 is stored)")]
    Algorithm(String),
    #[error("digest is {0} hex characters, not 64")]
    Length(usize),
    #[error("digest is not lowercase hex")]
    NotLowercaseHex,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("link file is empty")]
    Empty,
    #[error("link file is {0} bytes, not 71 (`sha256:` and 64 hex, no newline)")]
    Length(usize),
    #[error("link file is not UTF-8")]
    NotText,
    #[error(transparent)]
    Digest(#[from] DigestError),
}

/// The value of each lowercase hex digit; 0xff for every other byte.
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

fn hex_val(c: u8) -> Option<u8> {
    match HEX_VALUE[c as usize] {
        0xff => None,
        v => Some(v),
    }
}

impl Digest {
    /// Parses exactly 64 lowercase hex characters.
    pub fn from_hex(hex: &str) -> Result<Self, DigestError> {
        let b = hex.as_bytes();
        if b.len() != 64 {
            return Err(DigestError::Length(b.len()));
        }
        // Without a branch per digit: a byte that is no lowercase hex digit has value
        // 0xff, which leaves high bits in `bad`.
        let mut out = [0u8; 32];
        let mut bad = 0u8;
        for (i, pair) in b.chunks_exact(2).enumerate() {
            let hi = HEX_VALUE[pair[0] as usize];
            let lo = HEX_VALUE[pair[1] as usize];
            bad |= hi | lo;
            out[i] = hi << 4 | lo;
        }
        if bad & 0xf0 != 0 {
            return Err(DigestError::NotLowercaseHex);
        }
        Ok(Digest(out))
    }

    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        match s.split_once(':') {
            Some(("sha256", hex)) => Self::from_hex(hex),
            Some((alg, _)) => Err(DigestError::Algorithm(alg.to_string())),
            None => Err(DigestError::Algorithm(String::new())),
        }
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    pub fn hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        s
    }

    /// The two-character fan-out directory of this digest under `blobs/sha256/`.
    pub fn prefix(&self) -> String {
        fan_out_name(self.fan_out())
    }

    /// The fan-out directory as the byte it names: the digest's first byte.
    pub fn fan_out(&self) -> u8 {
        self.0[0]
    }
}

/// The name of the fan-out directory for first byte `b`: two lowercase hex characters.
pub fn fan_out_name(b: u8) -> String {
    format!("{b:02x}")
}

/// The byte a fan-out directory's name stands for; `None` unless it is exactly two
/// lowercase hex characters.
pub fn parse_fan_out(name: &str) -> Option<u8> {
    match name.as_bytes() {
        [hi, lo] => Some(hex_val(*hi)? << 4 | hex_val(*lo)?),
        _ => None,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", &self.hex()[..12])
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parses a link file strictly, as the registry does: exactly `sha256:<64 hex>`.
pub fn parse_link(bytes: &[u8]) -> Result<Digest, LinkError> {
    if bytes.is_empty() {
        return Err(LinkError::Empty);
    }
    if bytes.len() != 71 {
        return Err(LinkError::Length(bytes.len()));
    }
    let s = std::str::from_utf8(bytes).map_err(|_| LinkError::NotText)?;
    Ok(Digest::parse(s)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";

    #[test]
    fn order_is_byte_order() {
        // Pairs differing in one byte, at every position, each way round.
        let base = Digest::from_hex(HEX).unwrap();
        for i in 0..32 {
            for v in [0u8, 1, 0x7f, 0x80, 0xfe, 0xff] {
                let mut other = base;
                other.0[i] = v;
                assert_eq!(base.cmp(&other), base.0.cmp(&other.0), "byte {i} = {v}");
                assert_eq!(other.cmp(&base), other.0.cmp(&base.0), "byte {i} = {v}");
            }
        }
        let mut sorted = vec![base, Digest([0xff; 32]), Digest([0; 32]), Digest::of(b"x")];
        sorted.sort();
        let mut by_bytes = sorted.clone();
        by_bytes.sort_by_key(|d| d.0);
        assert_eq!(sorted, by_bytes);
    }

    #[test]
    fn a_well_formed_link_parses() {
        let link = format!("sha256:{HEX}");
        let d = parse_link(link.as_bytes()).unwrap();
        assert_eq!(d.hex(), HEX);
        assert_eq!(d.to_string(), link);
        assert_eq!(d.prefix(), "a3");
    }

    #[test]
    fn damaged_links_are_rejected() {
        assert_eq!(parse_link(b""), Err(LinkError::Empty));
        let nl = format!("sha256:{HEX}\n");
        assert_eq!(parse_link(nl.as_bytes()), Err(LinkError::Length(72)));
        let upper = format!("sha256:{}", HEX.to_uppercase());
        assert_eq!(
            parse_link(upper.as_bytes()),
            Err(LinkError::Digest(DigestError::NotLowercaseHex))
        );
        let alg = format!("sha512:{HEX}");
        assert_eq!(
            parse_link(alg.as_bytes()),
            Err(LinkError::Digest(DigestError::Algorithm("sha512".into())))
        );
        let dots = format!("sha256:../../{}", &HEX[..58]);
        assert_eq!(dots.len(), 71);
        assert_eq!(
            parse_link(dots.as_bytes()),
            Err(LinkError::Digest(DigestError::NotLowercaseHex))
        );
        assert!(parse_link(&[0xff; 71]).is_err());
        assert!(Digest::parse(&format!("sha256:{}", &HEX[..63])).is_err());
        assert!(Digest::parse(HEX).is_err());
    }

    #[test]
    fn digest_of_bytes_matches_sha256() {
        assert_eq!(
            Digest::of(b"").hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}

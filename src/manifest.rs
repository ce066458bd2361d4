//! Manifests: every kind a distribution store holds, with or without a `mediaType`
//! field, reduced to what a collector needs (the blobs and manifests it references, and
//! its `subject`). Bytes are checked against their digest before they are trusted.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use thiserror::Error;

use crate::layout::{Digest, DigestError};

/// The registry refuses manifests over 4 MiB; so does the collector.
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;

pub const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const OCI_ARTIFACT: &str = "application/vnd.oci.artifact.manifest.v1+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Kind {
    DockerV2,
    DockerList,
    OciManifest,
    OciIndex,
    Schema1,
    Schema1Signed,
    OciArtifact,
}

impl Kind {
    pub fn is_index(self) -> bool {
        matches!(self, Kind::DockerList | Kind::OciIndex)
    }
}

/// What a manifest references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub kind: Kind,
    /// Blobs it needs (config, layers, artifact blobs).
    pub blobs: Vec<Digest>,
    /// Child manifests (an index's or list's entries).
    pub children: Vec<Digest>,
    /// The manifest this one refers to (signatures, SBOMs, attestations).
    pub subject: Option<Digest>,
    /// Those of `blobs` that are foreign layers (descriptors with `urls`): clients may
    /// fetch them elsewhere, so the store need not hold them.
    pub foreign: Vec<Digest>,
}

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("{size} bytes, over the 4 MiB manifest limit")]
    TooLarge { size: usize },
    #[error("content does not match its digest (content hashes to {actual})")]
    DigestMismatch { actual: Digest },
    #[error("not valid manifest JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown media type {0:?}")]
    UnknownMediaType(String),
    #[error("cannot tell the manifest kind: {0}")]
    UnknownShape(&'static str),
    #[error("{field} holds a bad digest {value:?}: {source}")]
    BadDigest {
        field: &'static str,
        value: String,
        #[source]
        source: DigestError,
    },
}

/// A descriptor as the collector reads it: its digest borrowed from the manifest's bytes
/// (owned only when the JSON string holds escapes), and whether it has `urls`. Every
/// other field is skipped without being built.
#[derive(Debug, Deserialize)]
struct Descriptor<'a> {
    #[serde(borrow)]
    digest: Cow<'a, str>,
    /// Any JSON: a malformed `urls` must not make a manifest unreadable to the collector.
    #[serde(default)]
    urls: NonEmptyList,
}

/// Whether a JSON value is an array with at least one element; any other value (a
/// string, an object, an empty array) is `false`. Skipped, never built.
#[derive(Debug, Default)]
struct NonEmptyList(bool);

impl<'de> Deserialize<'de> for NonEmptyList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = NonEmptyList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<NonEmptyList, A::Error> {
                let non_empty = seq.next_element::<IgnoredAny>()?.is_some();
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(NonEmptyList(non_empty))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<NonEmptyList, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(NonEmptyList(false))
            }
            fn visit_bool<E>(self, _: bool) -> Result<NonEmptyList, E> {
                Ok(NonEmptyList(false))
            }
            fn visit_i64<E>(self, _: i64) -> Result<NonEmptyList, E> {
                Ok(NonEmptyList(false))
            }
            fn visit_u64<E>(self, _: u64) -> Result<NonEmptyList, E> {
                Ok(NonEmptyList(false))
            }
            fn visit_f64<E>(self, _: f64) -> Result<NonEmptyList, E> {
                Ok(NonEmptyList(false))
            }
            fn visit_str<E>(self, _: &str) -> Result<NonEmptyList, E> {
                Ok(NonEmptyList(false))
            }
            fn visit_unit<E>(self) -> Result<NonEmptyList, E> {
                Ok(NonEmptyList(false))
            }
            fn visit_none<E>(self) -> Result<NonEmptyList, E> {
                Ok(NonEmptyList(false))
            }
        }
        d.deserialize_any(Visit)
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FsLayer<'a> {
    #[serde(borrow)]
    blob_sum: Cow<'a, str>,
}

/// The fields of a manifest the collector needs, borrowed from its bytes; every other
/// field (annotations, platforms, history...) is skipped without building a tree.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw<'a> {
    schema_version: Option<i64>,
    #[serde(borrow)]
    media_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    config: Option<Descriptor<'a>>,
    #[serde(borrow)]
    layers: Option<Vec<Descriptor<'a>>>,
    #[serde(borrow)]
    manifests: Option<Vec<Descriptor<'a>>>,
    #[serde(borrow)]
    blobs: Option<Vec<Descriptor<'a>>>,
    #[serde(borrow)]
    fs_layers: Option<Vec<FsLayer<'a>>>,
    signatures: Option<IgnoredAny>,
    #[serde(borrow)]
    subject: Option<Descriptor<'a>>,
}

fn digest(field: &'static str, value: &str) -> Result<Digest, ManifestError> {
    Digest::parse(value).map_err(|source| ManifestError::BadDigest {
        field,
        value: value.to_string(),
        source,
    })
}

fn digests(
    field: &'static str,
    list: &Option<Vec<Descriptor>>,
) -> Result<Vec<Digest>, ManifestError> {
    list.iter()
        .flatten()
        .map(|d| digest(field, &d.digest))
        .collect()
}

/// A descriptor with a non-empty `urls` list names a layer clients may fetch elsewhere.
fn is_foreign(d: &Descriptor) -> bool {
    d.urls.0
}

fn kind_of(raw: &Raw) -> Result<Kind, ManifestError> {
    if let Some(mt) = raw.media_type.as_deref() {
        return match mt {
            DOCKER_V2 => Ok(Kind::DockerV2),
            DOCKER_LIST => Ok(Kind::DockerList),
            OCI_MANIFEST => Ok(Kind::OciManifest),
            OCI_INDEX => Ok(Kind::OciIndex),
            SCHEMA1 => Ok(Kind::Schema1),
            SCHEMA1_SIGNED => Ok(Kind::Schema1Signed),
            OCI_ARTIFACT => Ok(Kind::OciArtifact),
            other => Err(ManifestError::UnknownMediaType(other.to_string())),
        };
    }
    // No mediaType field: tell the kind by schemaVersion and the fields present.
    match raw.schema_version {
        Some(1) if raw.fs_layers.is_some() => Ok(if raw.signatures.is_some() {
            Kind::Schema1Signed
        } else {
            Kind::Schema1
        }),
        Some(2) if raw.manifests.is_some() && raw.config.is_none() => Ok(Kind::OciIndex),
        Some(2) if raw.config.is_some() => Ok(Kind::OciManifest),
        Some(1) => Err(ManifestError::UnknownShape(
            "schemaVersion 1 without fsLayers",
        )),
        Some(_) => Err(ManifestError::UnknownShape(
            "no mediaType, and neither config nor manifests",
        )),
        None => Err(ManifestError::UnknownShape(
            "no mediaType and no schemaVersion",
        )),
    }
}

/// Parses manifest bytes stored under `expected`, after checking size and digest.
pub fn parse(bytes: &[u8], expected: &Digest) -> Result<Manifest, ManifestError> {
    if bytes.len() > MAX_MANIFEST_SIZE {
        return Err(ManifestError::TooLarge { size: bytes.len() });
    }
    let actual = Digest::of(bytes);
    if actual != *expected {
        return Err(ManifestError::DigestMismatch { actual });
    }
    parse_unverified(bytes)
}

/// Parses manifest bytes whose digest the caller has already checked.
pub fn parse_unverified(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let raw: Raw = serde_json::from_slice(bytes)?;
    let kind = kind_of(&raw)?;
    let subject = raw
        .subject
        .as_ref()
        .map(|s| digest("subject", &s.digest))
        .transpose()?;
    let mut blobs = Vec::new();
    let mut children = Vec::new();
    let mut foreign = Vec::new();
    match kind {
        Kind::DockerV2 | Kind::OciManifest => {
            let config = raw
                .config
                .as_ref()
                .ok_or(ManifestError::UnknownShape("image manifest without config"))?;
            blobs.push(digest("config", &config.digest)?);
            blobs.extend(digests("layers", &raw.layers)?);
            for l in raw.layers.iter().flatten().filter(|l| is_foreign(l)) {
                foreign.push(digest("layers", &l.digest)?);
            }
        }
        Kind::DockerList | Kind::OciIndex => {
            children = digests("manifests", &raw.manifests)?;
        }
        Kind::Schema1 | Kind::Schema1Signed => {
            for l in raw.fs_layers.iter().flatten() {
                blobs.push(digest("fsLayers", &l.blob_sum)?);
            }
        }
        Kind::OciArtifact => {
            blobs = digests("blobs", &raw.blobs)?;
        }
    }
    Ok(Manifest {
        kind,
        blobs,
        children,
        subject,
        foreign,
    })
}

/// Every `sha256:<hex>` string anywhere in `bytes`: what a manifest the collector does
/// not understand could name (used to keep all of it under `--keep-unknown`).
pub fn digests_mentioned(bytes: &[u8]) -> Vec<Digest> {
    const TAG: &[u8] = b"sha256:";
    let mut out = Vec::new();
    let mut i = 0;
    while i + TAG.len() + 64 <= bytes.len() {
        if &bytes[i..i + TAG.len()] == TAG {
            let hex = &bytes[i + TAG.len()..i + TAG.len() + 64];
            if let Ok(d) = std::str::from_utf8(hex)
                .map_err(|_| ())
                .and_then(|h| Digest::from_hex(h).map_err(|_| ()))
            {
                out.push(d);
                i += TAG.len() + 64;
                continue;
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn dg(n: u8) -> Digest {
        Digest::parse(&d(n)).unwrap()
    }

    fn parse_json(v: serde_json::Value) -> Result<Manifest, ManifestError> {
        let bytes = serde_json::to_vec(&v).unwrap();
        parse(&bytes, &Digest::of(&bytes))
    }

    #[test]
    fn docker_schema2_manifest() {
        let m = parse_json(serde_json::json!({
            "schemaVersion": 2, "mediaType": DOCKER_V2,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": d(1), "size": 1},
            "layers": [{"digest": d(2), "size": 1}, {"digest": d(3), "size": 1, "urls": ["https://x"]}]
        }))
        .unwrap();
        assert_eq!(m.kind, Kind::DockerV2);
        assert_eq!(m.blobs, vec![dg(1), dg(2), dg(3)]);
        assert_eq!(m.foreign, vec![dg(3)]);
        assert!(m.children.is_empty() && m.subject.is_none());
    }

    #[test]
    fn docker_manifest_list() {
        let m = parse_json(serde_json::json!({
            "schemaVersion": 2, "mediaType": DOCKER_LIST,
            "manifests": [{"digest": d(4), "size": 1, "platform": {"architecture": "amd64", "os": "linux"}}]
        }))
        .unwrap();
        assert_eq!(
            (m.kind, m.children.clone()),
            (Kind::DockerList, vec![dg(4)])
        );
    }

    #[test]
    fn oci_manifest_with_and_without_media_type_and_with_subject() {
        let body = |mt: Option<&str>| {
            let mut v = serde_json::json!({
                "schemaVersion": 2,
                "config": {"digest": d(1), "size": 1},
                "layers": [{"digest": d(2), "size": 1}],
                "subject": {"digest": d(9), "size": 1}
            });
            if let Some(mt) = mt {
                v["mediaType"] = mt.into();
            }
            v
        };
        for v in [body(Some(OCI_MANIFEST)), body(None)] {
            let m = parse_json(v).unwrap();
            assert_eq!(m.kind, Kind::OciManifest);
            assert_eq!(m.blobs, vec![dg(1), dg(2)]);
            assert_eq!(m.subject, Some(dg(9)));
        }
    }

    #[test]
    fn oci_index_with_and_without_media_type() {
        for mt in [Some(OCI_INDEX), None] {
            let mut v = serde_json::json!({"schemaVersion": 2, "manifests": [{"digest": d(5), "size": 1}, {"digest": d(6), "size": 1}], "subject": {"digest": d(7)}});
            if let Some(mt) = mt {
                v["mediaType"] = mt.into();
            }
            let m = parse_json(v).unwrap();
            assert_eq!(m.kind, Kind::OciIndex);
            assert_eq!(m.children, vec![dg(5), dg(6)]);
            assert_eq!(m.subject, Some(dg(7)));
        }
    }

    #[test]
    fn schema1_unsigned_and_signed() {
        let unsigned = serde_json::json!({"schemaVersion": 1, "name": "a", "tag": "t",
            "fsLayers": [{"blobSum": d(1)}, {"blobSum": d(2)}], "history": []});
        let m = parse_json(unsigned).unwrap();
        assert_eq!(
            (m.kind, m.blobs.clone()),
            (Kind::Schema1, vec![dg(1), dg(2)])
        );
        let mut signed = serde_json::json!({"schemaVersion": 1, "fsLayers": [{"blobSum": d(3)}], "signatures": [{"header": {}}]});
        assert_eq!(
            parse_json(signed.clone()).unwrap().kind,
            Kind::Schema1Signed
        );
        signed["mediaType"] = SCHEMA1_SIGNED.into();
        assert_eq!(parse_json(signed).unwrap().blobs, vec![dg(3)]);
    }

    #[test]
    fn oci_artifact_manifest() {
        let m = parse_json(
            serde_json::json!({"mediaType": OCI_ARTIFACT, "artifactType": "application/x",
            "blobs": [{"digest": d(1)}], "subject": {"digest": d(2)}}),
        )
        .unwrap();
        assert_eq!(
            (m.kind, m.blobs.clone(), m.subject),
            (Kind::OciArtifact, vec![dg(1)], Some(dg(2)))
        );
    }

    #[test]
    fn refusals() {
        let unknown =
            parse_json(serde_json::json!({"schemaVersion": 2, "mediaType": "application/x-new"}));
        assert!(matches!(unknown, Err(ManifestError::UnknownMediaType(_))));
        let shapeless = parse_json(serde_json::json!({"schemaVersion": 2}));
        assert!(matches!(shapeless, Err(ManifestError::UnknownShape(_))));
        let bad = parse_json(
            serde_json::json!({"schemaVersion": 2, "config": {"digest": "sha256:../../etc"}}),
        );
        assert!(matches!(bad, Err(ManifestError::BadDigest { .. })));
        let sha512 = parse_json(
            serde_json::json!({"schemaVersion": 2, "config": {"digest": format!("sha512:{}", "a".repeat(128))}}),
        );
        assert!(matches!(sha512, Err(ManifestError::BadDigest { .. })));
        let bytes = br#"{"schemaVersion":2,"config":{"digest":"x"}}"#;
        assert!(matches!(
            parse(bytes, &dg(1)),
            Err(ManifestError::DigestMismatch { .. })
        ));
        let big = vec![b' '; MAX_MANIFEST_SIZE + 1];
        assert!(matches!(
            parse(&big, &Digest::of(&big)),
            Err(ManifestError::TooLarge { .. })
        ));
        assert!(matches!(
            parse(b"not json", &Digest::of(b"not json")),
            Err(ManifestError::Json(_))
        ));
    }

    #[test]
    fn skipped_fields_of_any_shape_and_escaped_strings() {
        // `urls` of any shape: only a non-empty array makes a layer foreign.
        for (urls, foreign) in [
            (serde_json::json!(["https://x"]), true),
            (serde_json::json!([]), false),
            (serde_json::json!("https://x"), false),
            (serde_json::json!({"a": [1]}), false),
            (serde_json::json!(null), false),
            (serde_json::json!(7), false),
        ] {
            let m = parse_json(serde_json::json!({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"digest": d(1), "size": 1, "annotations": {"k": ["v", {"x": null}]}},
                "layers": [{"digest": d(2), "size": 1, "urls": urls}],
                "annotations": {"org.example": "\u{e9}t\u{e9}"}
            }))
            .unwrap();
            assert_eq!(m.blobs, vec![dg(1), dg(2)]);
            assert_eq!(m.foreign, if foreign { vec![dg(2)] } else { vec![] });
        }
        // A JSON string with escapes cannot be borrowed from the bytes: still read.
        let escaped = format!(
            r#"{{"schemaVersion":2,"mediaType":"application\/vnd.oci.image.index.v1+json","manifests":[{{"digest":"\u0073ha256:{}"}}]}}"#,
            "04".repeat(32)
        );
        let m = parse(escaped.as_bytes(), &Digest::of(escaped.as_bytes())).unwrap();
        assert_eq!((m.kind, m.children), (Kind::OciIndex, vec![dg(4)]));
    }

    #[test]
    fn every_digest_an_unknown_manifest_mentions_is_found() {
        let text = format!(
            r#"{{"weird": ["{}", {{"deep": "{}"}}], "bad": "sha256:zz"}}"#,
            d(1),
            d(2)
        );
        assert_eq!(digests_mentioned(text.as_bytes()), vec![dg(1), dg(2)]);
    }
}

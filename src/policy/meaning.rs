//! What a write means to the registry, worked out once per request and handed to every
//! layer of the policy chain: the path's place in the layout ([`PathKind`], from
//! `layout::classify`), for a link the digest it makes the store name (by its path, or by
//! the bytes a tag's current link is about to hold), and the manifest that digest is,
//! read from the store and parsed once. The link check and the online barrier both ask
//! it; neither classifies the path or parses the manifest again.
//!
//! [`Role`], [`LinkRole`] and [`WriteRole`] are views of it.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use super::WriteRole;
use crate::layout::paths::{self, LinkRole};
use crate::layout::{Digest, PathKind, RepoName, Role, Store, classify, parse_link};
use crate::manifest::{self, Manifest};

/// A link is at most 71 bytes; one more tells a longer file apart.
const LINK_READ_LIMIT: usize = 72;

/// Where the digest a tag's current link will hold comes from.
#[derive(Debug, Clone)]
enum Content {
    /// Named by the path (every other link), or nothing to name.
    ByPath,
    /// A rename's source: its bytes, once read.
    RenamedFrom(String),
    /// The bytes of a write at offset 0.
    Written(Option<Digest>),
}

/// The manifest a write names, as read from the store.
#[derive(Debug)]
pub struct NamedManifest {
    pub manifest: Manifest,
    /// Its bytes hash to its digest (a manifest that does not is still followed for what
    /// it references, but nothing is refused on its account).
    pub verified: bool,
}

/// One write (an open for writing, a create, a rename onto a path, a write's bytes), as
/// the registry means it. A clone shares what was worked out so far.
#[derive(Debug, Clone)]
pub struct WriteMeaning {
    path: String,
    role: Role,
    content: Content,
    kind: OnceLock<Option<PathKind>>,
    named: OnceLock<Option<Digest>>,
    manifest: OnceLock<Option<Arc<NamedManifest>>>,
}

impl WriteMeaning {
    /// A write at `path` (relative to the store root) of a node whose layout role is
    /// `role` (the filesystem knows it from the lookup).
    pub fn new(path: &str, role: Role) -> WriteMeaning {
        WriteMeaning {
            path: path.to_owned(),
            role,
            content: Content::ByPath,
            kind: OnceLock::new(),
            named: OnceLock::new(),
            manifest: OnceLock::new(),
        }
    }

    /// A write at `path`, its role told from the path.
    pub fn of_path(path: &str) -> WriteMeaning {
        Self::new(path, Role::of_path(path))
    }

    /// `from` renamed onto `to`: for a tag's current link, what it names is what `from`
    /// holds.
    pub fn renamed(from: &str, to: &str) -> WriteMeaning {
        WriteMeaning {
            content: Content::RenamedFrom(from.to_owned()),
            ..Self::of_path(to)
        }
    }

    /// This write's bytes `data` at offset 0: for a tag's current link they say what it
    /// will name. Other writes mean what their path means.
    pub fn written(&self, data: &[u8]) -> WriteMeaning {
        let content = match self.link() {
            Some(LinkRole::TagCurrent) => Content::Written(parse_link(data).ok()),
            _ => Content::ByPath,
        };
        WriteMeaning {
            path: self.path.clone(),
            role: self.role,
            content,
            kind: self.kind.clone(),
            named: OnceLock::new(),
            manifest: OnceLock::new(),
        }
    }

    /// The path, relative to the store root.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The node's place in the layout, without the names leading to it.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Which link file this is, if it is one.
    pub fn link(&self) -> Option<LinkRole> {
        self.role.link()
    }

    /// What the file is to a writer.
    pub fn write_role(&self) -> WriteRole {
        WriteRole::of_role(self.role)
    }

    /// The path's place in the layout, with its names (repository, tag).
    pub fn kind(&self) -> Option<&PathKind> {
        self.kind.get_or_init(|| classify(&self.path)).as_ref()
    }

    /// The repository the path is in, if it is in one.
    pub fn repo(&self) -> Option<&RepoName> {
        self.kind().and_then(PathKind::repo)
    }

    /// The digest this write makes the store name: a link's (a tag's current link's from
    /// the bytes it is about to hold; `None` when they are not a link), or the digest the
    /// path itself carries (a blob's directory or data, a revision's directory).
    pub fn named(&self, store: &Store) -> Option<Digest> {
        *self
            .named
            .get_or_init(|| match (&self.content, self.link()) {
                (Content::Written(d), Some(LinkRole::TagCurrent)) => *d,
                (Content::RenamedFrom(from), Some(LinkRole::TagCurrent)) => {
                    match store.read(Path::new(from), LINK_READ_LIMIT) {
                        Ok(Some(bytes)) => parse_link(&bytes).ok(),
                        _ => None,
                    }
                }
                (_, Some(LinkRole::TagCurrent)) => None,
                _ => self.role.digest(),
            })
    }

    /// The manifest [`named`](Self::named) is, when this write names a manifest (a
    /// revision, a tag's link, an index entry): read from `store` and parsed once for
    /// every layer. `None` when it cannot be read or parsed.
    pub fn manifest(&self, store: &Store) -> Option<Arc<NamedManifest>> {
        self.manifest
            .get_or_init(|| {
                if !self.names_manifest() {
                    return None;
                }
                let d = self.named(store)?;
                read_manifest(store, &d).map(Arc::new)
            })
            .clone()
    }

    /// Whether what this write names is a manifest of its repository.
    pub fn names_manifest(&self) -> bool {
        matches!(
            self.role,
            Role::Revision(_)
                | Role::RevisionLink(_)
                | Role::TagIndexEntry(_)
                | Role::TagIndexLink(_)
                | Role::TagCurrentLink
        )
    }
}

/// Manifest `d` as the store holds it, parsed.
pub fn read_manifest(store: &Store, d: &Digest) -> Option<NamedManifest> {
    let bytes = store
        .read(&paths::blob_data(d), manifest::MAX_MANIFEST_SIZE)
        .ok()??;
    match manifest::parse(&bytes, d) {
        Ok(manifest) => Some(NamedManifest {
            manifest,
            verified: true,
        }),
        Err(_) => manifest::parse_unverified(&bytes)
            .ok()
            .map(|manifest| NamedManifest {
                manifest,
                verified: false,
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const REPO: &str = "docker/registry/v2/repositories/team/app";

    #[test]
    fn a_write_is_told_once_and_its_roles_are_views_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::from_hex(HEX).unwrap();
        let revision = format!("{REPO}/_manifests/revisions/sha256/{HEX}/link");
        let m = WriteMeaning::of_path(&revision);
        assert_eq!(m.link(), Some(LinkRole::Revision(d)));
        assert_eq!(m.write_role(), WriteRole::Link(LinkRole::Revision(d)));
        assert_eq!(m.repo().unwrap().as_str(), "team/app");
        assert_eq!(m.named(&store), Some(d));
        assert!(m.names_manifest() && m.manifest(&store).is_none());
        // A tag's current link names what its bytes say.
        let current = format!("{REPO}/_manifests/tags/t/current/link");
        let tag = WriteMeaning::of_path(&current);
        assert_eq!(tag.named(&store), None);
        let written = tag.written(format!("sha256:{HEX}").as_bytes());
        assert_eq!(written.named(&store), Some(d));
        assert_eq!(tag.written(b"junk").named(&store), None);
        // ... or what a rename's source holds.
        let tmp = format!("{current}.1.tmp");
        std::fs::create_dir_all(dir.path().join(&current).parent().unwrap()).unwrap();
        std::fs::write(dir.path().join(&tmp), format!("sha256:{HEX}")).unwrap();
        assert_eq!(WriteMeaning::renamed(&tmp, &current).named(&store), Some(d));
        let upload = WriteMeaning::of_path(&format!("{REPO}/_uploads/u/data"));
        assert_eq!(upload.write_role(), WriteRole::UploadData);
        assert!(upload.named(&store).is_none() && upload.manifest(&store).is_none());
    }

    #[test]
    fn the_manifest_is_read_once_for_every_layer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":2},"layers":[]}"#;
        let d = Digest::of(body);
        let data = dir.path().join(paths::blob_data(&d));
        std::fs::create_dir_all(data.parent().unwrap()).unwrap();
        std::fs::write(&data, body).unwrap();
        let m = WriteMeaning::of_path(&format!(
            "{REPO}/_manifests/revisions/sha256/{}/link",
            d.hex()
        ));
        let first = m.manifest(&store).unwrap();
        assert!(first.verified && first.manifest.blobs.len() == 1);
        // Gone from the store now: the second layer still gets the same parse.
        std::fs::remove_file(&data).unwrap();
        assert!(Arc::ptr_eq(&first, &m.manifest(&store).unwrap()));
    }
}

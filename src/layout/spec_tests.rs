//! The layout's two directions held to each other: every kind's path classifies back to
//! it, a role reached one name at a time is the role of the whole path, and near misses
//! of the registry's names are refused.

use proptest::prelude::*;

use super::digest::Digest;
use super::names::{Component, RepoName, TagName};
use super::role::Role;
use super::spec::{PathKind, classify, link_role, path_for};

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest)
}

/// Nested names (`a`, `team/app/web`), components never starting with `_`.
fn repo() -> impl Strategy<Value = RepoName> {
    prop::collection::vec("[a-z0-9][a-z0-9._-]{0,7}", 1..4)
        .prop_map(|c| RepoName::new(&c.join("/")).unwrap())
}

fn tag() -> impl Strategy<Value = TagName> {
    "[A-Za-z0-9_][A-Za-z0-9._-]{0,9}".prop_map(|t| TagName::new(&t).unwrap())
}

fn component() -> impl Strategy<Value = Component> {
    "[a-z0-9_][a-z0-9._-]{0,11}".prop_map(|c| Component::new(&c).unwrap())
}

/// Every kind that lies in a repository.
fn repo_kind() -> BoxedStrategy<PathKind> {
    use PathKind as K;
    prop_oneof![
        repo().prop_map(K::RepoDir),
        repo().prop_map(K::Manifests),
        repo().prop_map(K::Revisions),
        repo().prop_map(K::RevisionsSha256),
        (repo(), digest()).prop_map(|(repo, digest)| K::Revision { repo, digest }),
        (repo(), digest()).prop_map(|(repo, digest)| K::RevisionLink { repo, digest }),
        repo().prop_map(K::Tags),
        (repo(), tag()).prop_map(|(repo, tag)| K::Tag { repo, tag }),
        (repo(), tag()).prop_map(|(repo, tag)| K::TagCurrent { repo, tag }),
        (repo(), tag()).prop_map(|(repo, tag)| K::TagCurrentLink { repo, tag }),
        (repo(), tag()).prop_map(|(repo, tag)| K::TagIndex { repo, tag }),
        (repo(), tag()).prop_map(|(repo, tag)| K::TagIndexSha256 { repo, tag }),
        (repo(), tag(), digest()).prop_map(|(repo, tag, digest)| K::TagIndexEntry {
            repo,
            tag,
            digest
        }),
        (repo(), tag(), digest()).prop_map(|(repo, tag, digest)| K::TagIndexLink {
            repo,
            tag,
            digest
        }),
        repo().prop_map(K::Layers),
        repo().prop_map(K::LayersSha256),
        (repo(), digest()).prop_map(|(repo, digest)| K::LayerDir { repo, digest }),
        (repo(), digest()).prop_map(|(repo, digest)| K::LayerLink { repo, digest }),
        repo().prop_map(K::Uploads),
        (repo(), component()).prop_map(|(repo, id)| K::Upload { repo, id }),
        (
            repo(),
            component(),
            prop::collection::vec(component(), 1..4)
        )
            .prop_map(|(repo, id, rest)| K::UploadEntry { repo, id, rest }),
    ]
    .boxed()
}

/// Every kind of the layout.
fn kind() -> impl Strategy<Value = PathKind> {
    use PathKind as K;
    let fixed = prop_oneof![
        Just(K::StoreRoot),
        Just(K::Docker),
        Just(K::Registry),
        Just(K::V2),
        Just(K::Blobs),
        Just(K::BlobsSha256),
        Just(K::Repositories),
        any::<u8>().prop_map(K::BlobFanOut),
        digest().prop_map(K::BlobDir),
        digest().prop_map(K::BlobData),
    ];
    let plain = prop_oneof![fixed, repo_kind()].boxed();
    let temp = (plain.clone(), "[a-z0-9.]{0,12}").prop_filter_map(
        "temp files only where the registry writes them",
        |(dir, stem)| {
            dir.role().holds_temp_files().then(|| K::TempFile {
                dir: Box::new(dir),
                name: Component::new(&format!("{stem}.tmp")).unwrap(),
            })
        },
    );
    prop_oneof![8 => plain, 1 => temp]
}

/// The role reached from the store root one name at a time (outside the layout: only
/// that it is outside).
fn walked(rel: &str) -> Role {
    let role = Role::of_path(rel);
    if role.is_known() { role } else { Role::Unknown }
}

/// Names near the registry's, and junk: paths made of them mostly fall outside the layout.
fn near_path() -> impl Strategy<Value = String> {
    let hex = "ab".repeat(32);
    let names = vec![
        "docker".to_string(),
        "registry".into(),
        "v2".into(),
        "blobs".into(),
        "repositories".into(),
        "sha256".into(),
        "_manifests".into(),
        "_layers".into(),
        "_uploads".into(),
        "revisions".into(),
        "tags".into(),
        "current".into(),
        "index".into(),
        "link".into(),
        "data".into(),
        "x".into(),
        "_x".into(),
        "..".into(),
        ".".into(),
        String::new(),
        "ab".into(),
        "AB".into(),
        "cd".into(),
        hex.clone(),
        hex.to_uppercase(),
        hex[..63].to_string(),
        "link.1.tmp".into(),
    ];
    let head = prop_oneof![
        Just(vec![]),
        Just(vec!["docker".to_string(), "registry".into(), "v2".into()]),
    ];
    (
        head,
        prop::collection::vec(prop::sample::select(names), 0..9),
    )
        .prop_map(|(mut head, tail)| {
            head.extend(tail);
            head.join("/")
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_kind_classifies_back_from_its_path(k in kind()) {
        let path = path_for(&k);
        let rel = path.to_str().unwrap();
        prop_assert_eq!(classify(rel), Some(k.clone()), "{}", rel);
    }

    #[test]
    fn the_role_walked_name_by_name_is_the_role_of_the_whole_path(k in kind()) {
        let path = path_for(&k);
        prop_assert_eq!(walked(path.to_str().unwrap()), k.role());
    }

    #[test]
    fn walking_and_classifying_agree_on_any_path(rel in near_path()) {
        let want = classify(&rel).map_or(Role::Unknown, |k| k.role());
        prop_assert_eq!(walked(&rel), want, "{}", rel);
        if let Some(k) = classify(&rel) {
            let back = path_for(&k);
            prop_assert_eq!(back.to_str().unwrap(), rel.as_str());
        }
    }

    #[test]
    fn any_text_is_classified_without_panic_and_as_walked(rel in "\\PC{0,80}") {
        let want = classify(&rel).map_or(Role::Unknown, |k| k.role());
        prop_assert_eq!(walked(&rel), want, "{:?}", rel);
    }

    #[test]
    fn near_misses_of_a_digest_are_refused(k in kind(), at in any::<prop::sample::Index>()) {
        let path = path_for(&k);
        let rel = path.to_str().unwrap();
        let parts: Vec<&str> = rel.split('/').collect();
        let hexes: Vec<usize> = (0..parts.len())
            .filter(|&i| Digest::from_hex(parts[i]).is_ok())
            .collect();
        if hexes.is_empty() {
            return Ok(());
        }
        let i = hexes[at.index(hexes.len())];
        for bad in [
            parts[i].to_uppercase(),
            parts[i][..63].to_string(),
            format!("{}0", parts[i]),
        ] {
            if bad == parts[i] {
                continue;
            }
            let mut changed = parts.clone();
            changed[i] = &bad;
            let rel = changed.join("/");
            prop_assert_eq!(classify(&rel), None, "{}", rel);
            prop_assert_eq!(walked(&rel), Role::Unknown, "{}", rel);
        }
    }

    #[test]
    fn a_dot_or_empty_component_is_refused(k in kind(), at in any::<prop::sample::Index>()) {
        let path = path_for(&k);
        let rel = path.to_str().unwrap();
        prop_assume!(!rel.is_empty());
        let mut parts: Vec<&str> = rel.split('/').collect();
        let i = at.index(parts.len() + 1);
        for bad in ["..", ".", ""] {
            parts.insert(i, bad);
            let rel = parts.join("/");
            prop_assert_eq!(classify(&rel), None, "{}", rel);
            prop_assert_eq!(walked(&rel), Role::Unknown, "{}", rel);
            parts.remove(i);
        }
    }

    #[test]
    fn an_underscore_repository_component_is_no_repository(r in repo(), at in any::<prop::sample::Index>()) {
        let mut parts: Vec<String> = r.as_str().split('/').map(String::from).collect();
        let i = at.index(parts.len());
        parts[i] = format!("_{}", parts[i]);
        let rel = format!("docker/registry/v2/repositories/{}/_manifests", parts.join("/"));
        prop_assert_eq!(classify(&rel), None, "{}", rel);
        prop_assert_eq!(walked(&rel), Role::Unknown, "{}", rel);
    }
}

#[test]
fn a_blob_outside_its_fan_out_directory_is_refused() {
    let hex = "ab".repeat(32);
    let good = format!("docker/registry/v2/blobs/sha256/ab/{hex}/data");
    let d = Digest::from_hex(&hex).unwrap();
    assert_eq!(classify(&good), Some(PathKind::BlobData(d)));
    for bad in [
        format!("docker/registry/v2/blobs/sha256/cd/{hex}/data"),
        format!("docker/registry/v2/blobs/sha256/AB/{hex}/data"),
        format!("docker/registry/v2/blobs/sha256/a/{hex}/data"),
        format!("docker/registry/v2/blobs/sha256/ab/{hex}/link"),
        format!("docker/registry/v2/blobs/sha512/ab/{hex}/data"),
        format!("/docker/registry/v2/blobs/sha256/ab/{hex}/data"),
        format!("docker/registry/v2/blobs/sha256/ab/{hex}/data/"),
    ] {
        assert_eq!(classify(&bad), None, "{bad}");
        assert_eq!(walked(&bad), Role::Unknown, "{bad}");
    }
}

#[test]
fn roles_name_the_digest_and_the_link_they_stand_for() {
    use super::paths::LinkRole;
    let d = Digest::from_hex(&"0f".repeat(32)).unwrap();
    let repo = "docker/registry/v2/repositories/team/app";
    let hex = d.hex();
    let cases = [
        (
            format!("{repo}/_manifests/revisions/sha256/{hex}/link"),
            Some(LinkRole::Revision(d)),
        ),
        (
            format!("{repo}/_layers/sha256/{hex}/link"),
            Some(LinkRole::Layer(d)),
        ),
        (
            format!("{repo}/_manifests/tags/v1/index/sha256/{hex}/link"),
            Some(LinkRole::TagIndex(d)),
        ),
        (
            format!("{repo}/_manifests/tags/v1/current/link"),
            Some(LinkRole::TagCurrent),
        ),
        (
            format!("{repo}/_manifests/tags/v1/current/link.3f.tmp"),
            None,
        ),
        (format!("{repo}/_uploads/u1/data"), None),
    ];
    for (rel, link) in cases {
        assert_eq!(walked(&rel).link(), link, "{rel}");
    }
    assert!(walked(&format!("{repo}/_uploads/u1/hashstates/sha256/0")).is_upload());
    assert!(!walked(&format!("{repo}/_layers")).is_upload());
    // Outside the layout, below `_uploads`, as the gate has always classed writers.
    for stray in ["repo/_uploads/u1/data", "docker/_uploads", "x/_uploads/a/b"] {
        assert_eq!(Role::of_path(stray), Role::UnknownUpload, "{stray}");
    }
    assert_eq!(Role::of_path("x/not_uploads/data"), Role::Unknown);
    assert_eq!(
        walked(&format!("{repo}/_layers/sha256/{hex}")).digest(),
        Some(d)
    );
}

mod link_files {
    use std::path::PathBuf;

    use super::super::digest::Digest;
    use super::super::names::{RepoName, TagName};
    use super::super::paths::*;
    use super::link_role;

    #[test]
    fn link_roles_are_told_by_the_paths_the_registry_writes() {
        let d = Digest::from_hex(&"ab".repeat(32)).unwrap();
        let repo = RepoName::new("team/app").unwrap();
        let tag = TagName::new("v1.0").unwrap();
        let role = |p: PathBuf| link_role(p.to_str().unwrap());
        assert_eq!(
            role(revision_dir(&repo, &d).join(LINK)),
            Some(LinkRole::Revision(d))
        );
        assert_eq!(
            role(layer_link_dir_named(&repo, &d.hex()).join(LINK)),
            Some(LinkRole::Layer(d))
        );
        assert_eq!(
            role(tag_index_entry(&repo, &tag, &d).join(LINK)),
            Some(LinkRole::TagIndex(d))
        );
        assert_eq!(
            role(tag_current_link(&repo, &tag)),
            Some(LinkRole::TagCurrent)
        );
        assert_eq!(LinkRole::TagCurrent.digest(), None);
        assert_eq!(LinkRole::Layer(d).digest(), Some(d));
        // Not links: blob data, uploads, temp files, bad digests, names no repository has.
        for p in [
            blob_data(&d).display().to_string(),
            upload_dir(&repo, "u1").join("data").display().to_string(),
            format!("{}.1234.tmp", revision_dir(&repo, &d).join(LINK).display()),
            format!(
                "{V2}/repositories/a/_layers/sha256/{}/link",
                "AB".repeat(32)
            ),
            format!("{V2}/repositories/_layers/sha256/{}/link", d.hex()),
            format!("{V2}/repositories/a/_manifests/tags/t/index/sha256/x/link"),
            format!("{V2}/repositories/a/_manifests/tags/t/other/link"),
            format!("{V2}/repositories/a/_uploads/u/link"),
            format!("{V2}/blobs/sha256/ab/{}/link", d.hex()),
        ] {
            assert_eq!(link_role(&p), None, "{p}");
        }
    }

    #[test]
    fn link_files_are_told_from_other_files() {
        let r = RepoName::new("team/app").unwrap();
        let t = TagName::new("v1").unwrap();
        let d = Digest::from_hex(&"ab".repeat(32)).unwrap();
        let s = |p: PathBuf| p.display().to_string();
        for link in [
            s(revision_dir(&r, &d).join(LINK)),
            s(tag_current_link(&r, &t)),
            s(tag_index_entry(&r, &t, &d).join(LINK)),
            s(layer_link_dir_named(&r, &d.hex()).join(LINK)),
        ] {
            assert!(link_role(&link).is_some(), "{link}");
        }
        for other in [
            s(blob_data(&d)),
            s(upload_dir(&r, "u1").join(LINK)),
            s(upload_dir(&r, "u1").join("startedat")),
            format!("{V2}/repositories/link"),
            "repo/_manifests/tags/t/current/link".to_string(),
            s(tag_current_link(&r, &t)) + ".tmp",
        ] {
            assert!(link_role(&other).is_none(), "{other}");
        }
    }
}

//! Default mode and dry runs: regfs deletes exactly what the registry's collector
//! deletes and cleans what it leaves behind; a dry run deletes nothing and predicts the
//! real run path for path.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::Instant;

use crate::common::store::well_formed_link;
use crate::fixture::{fixture, workdir};
use crate::inspect::{
    blob_dir, blob_dirs, hex, image_blobs, layer_links_of, links, listing, repo_dir, report_time,
    shapes, short, str_set,
};
use crate::processes::{copy_store, count, peer_gc, regfs_gc_ok};

#[test]
fn default_mode_deletes_exactly_what_the_registry_deletes() {
    let Some(fx) = fixture() else { return };
    let t0 = Instant::now();
    let work = workdir(fx);
    let (a, b, c) = (
        work.path().join("A"),
        work.path().join("B"),
        work.path().join("C"),
    );
    for dir in [&a, &b, &c] {
        copy_store(fx, dir);
    }
    let before = blob_dirs(&fx.store());

    peer_gc(fx, &a, work.path(), &[]);
    let report = regfs_gc_ok(&b, &[]);
    assert_eq!(report["mode"], "default");
    assert_eq!(report["dry_run"], false);

    let after_a = blob_dirs(&a);
    let after_b = blob_dirs(&b);
    let peer_deleted: BTreeSet<String> = before.difference(&after_a).cloned().collect();
    let regfs_deleted: BTreeSet<String> = before.difference(&after_b).cloned().collect();
    assert_eq!(
        after_a,
        after_b,
        "blobs left by docker-registry garbage-collect (A) and regfs gc (B) differ:\n\
         only in A: {:?}\nonly in B: {:?}",
        after_a.difference(&after_b).collect::<Vec<_>>(),
        after_b.difference(&after_a).collect::<Vec<_>>()
    );
    assert_eq!(
        after_b,
        fx.blobs_where("survives_gc"),
        "regfs kept other blobs than fixture.json's survives_gc"
    );
    // Non-trivial: the image deleted by digest lost its manifest and its layers.
    let deleted = fx.image("deleted");
    assert!(!after_a.is_empty(), "the peer deleted every blob");
    assert!(
        image_blobs(deleted).is_subset(&peer_deleted),
        "the peer did not delete the blobs of the image deleted by digest {}: deleted {:?}",
        deleted["digest"],
        short(&peer_deleted)
    );
    assert_eq!(
        count(&report, "blobs_deleted"),
        peer_deleted.len() as u64,
        "regfs blobs_deleted vs the number of blobs the registry deleted {:?}",
        short(&peer_deleted)
    );
    assert_eq!(regfs_deleted, peer_deleted);
    let freed: u64 = peer_deleted
        .iter()
        .map(|d| {
            fs::metadata(blob_dir(&fx.store(), d).join("data"))
                .unwrap()
                .len()
        })
        .sum();
    assert!(count(&report, "bytes_freed") > 0);
    assert_eq!(
        count(&report, "bytes_freed"),
        freed,
        "bytes_freed vs the sizes of the deleted blobs' data"
    );
    assert_eq!(count(&report, "blobs_scanned"), before.len() as u64);
    assert_eq!(count(&report, "blobs_marked"), after_b.len() as u64);

    // What the registry's collector leaves behind and regfs cleans: the _layers links of
    // the deleted blobs,
    let links_before = layer_links_of(fx, &fx.store(), &peer_deleted);
    assert!(
        !links_before.is_empty(),
        "the deleted blobs had no _layers links to begin with"
    );
    assert_eq!(
        layer_links_of(fx, &a, &peer_deleted),
        links_before,
        "the registry's collector is expected to leave the _layers links of deleted blobs"
    );
    let left_in_b = layer_links_of(fx, &b, &peer_deleted);
    assert!(
        left_in_b.is_empty(),
        "regfs left _layers links of deleted blobs: {left_in_b:?}"
    );
    assert_eq!(
        count(&report, "layer_links_removed"),
        links_before.len() as u64
    );

    // the empty revision directory of the manifest deleted by digest,
    let revision = repo_dir(&a, deleted["repository"].as_str().unwrap()).join(format!(
        "_manifests/revisions/sha256/{}",
        hex(deleted["digest"].as_str().unwrap())
    ));
    assert!(
        revision.is_dir() && fs::read_dir(&revision).unwrap().next().is_none(),
        "expected the registry to leave an empty revision directory {}",
        revision.display()
    );
    let revision_b = b.join(revision.strip_prefix(&a).unwrap());
    assert!(
        !revision_b.exists(),
        "regfs left the empty revision directory {}",
        revision_b.display()
    );

    // and no link file in B is empty or malformed, or points at a blob that is gone.
    let links_b = links(&b);
    assert!(!links_b.is_empty());
    for (path, content) in &links_b {
        assert!(
            well_formed_link(content),
            "{path} in B holds {:?}",
            String::from_utf8_lossy(content)
        );
        let target = String::from_utf8_lossy(content);
        assert!(
            blob_dir(&b, &target).join("data").is_file(),
            "{path} in B points at {target}, which is gone"
        );
    }

    // The abandoned upload is fresh: kept with the default --upload-max-age (168h),
    let upload = &fx.json["abandoned_upload"];
    let upload_rel = Path::new(upload["path"].as_str().unwrap())
        .strip_prefix(fx.store())
        .expect("the abandoned upload is in the store")
        .to_path_buf();
    assert!(
        b.join(&upload_rel).join("data").is_file(),
        "regfs removed the fresh upload {} with the default --upload-max-age",
        upload_rel.display()
    );
    assert_eq!(count(&report, "uploads_removed"), 0);

    // and removed with --upload-max-age 0s (on a fresh copy), which collects the same blobs.
    let report_c = regfs_gc_ok(&c, &["--upload-max-age", "0s"]);
    assert!(
        !c.join(&upload_rel).exists(),
        "regfs kept the upload {} with --upload-max-age 0s",
        upload_rel.display()
    );
    assert!(
        c.join(&upload_rel).parent().unwrap().is_dir(),
        "the _uploads directory itself must stay"
    );
    assert_eq!(count(&report_c, "uploads_removed"), 1);
    let upload_size: u64 = listing(&fx.store().join(&upload_rel))
        .values()
        .map(|e| e.size)
        .sum();
    assert!(upload_size > upload["bytes"].as_u64().unwrap());
    assert_eq!(
        count(&report_c, "upload_bytes_freed"),
        upload_size,
        "upload_bytes_freed vs the size of every file of the upload directory"
    );
    assert_eq!(blob_dirs(&c), after_b);
    report_time("default_mode_deletes_exactly_what_the_registry_deletes", t0);
}

#[test]
fn dry_run_predicts_the_real_run() {
    let Some(fx) = fixture() else { return };
    let t0 = Instant::now();
    let work = workdir(fx);
    let variants: [&[&str]; 2] = [&[], &["--delete-untagged", "--upload-max-age", "0s"]];
    for (i, extra) in variants.iter().enumerate() {
        let dry = work.path().join(format!("dry{i}"));
        let real = work.path().join(format!("real{i}"));
        copy_store(fx, &dry);
        copy_store(fx, &real);

        let before = listing(&dry);
        let mut args = vec!["--dry-run", "--list"];
        args.extend_from_slice(extra);
        let planned = regfs_gc_ok(&dry, &args);
        assert_eq!(planned["dry_run"], true);
        let after = listing(&dry);
        if before != after {
            let changed: Vec<_> = before
                .iter()
                .filter(|(p, e)| after.get(*p) != Some(e))
                .map(|(p, _)| p)
                .chain(after.keys().filter(|p| !before.contains_key(*p)))
                .collect();
            panic!("regfs gc --dry-run {extra:?} changed the store: {changed:?}");
        }

        let mut args = vec!["--list"];
        args.extend_from_slice(extra);
        let done = regfs_gc_ok(&real, &args);
        assert_eq!(done["dry_run"], false);

        // Every difference between the prediction and the real run, reported at the end
        // (after the path checks) so that one failure does not hide the others.
        let mut mismatches = Vec::new();
        for field in [
            "mode",
            "outcome",
            "repositories",
            "manifests_scanned",
            "blobs_scanned",
            "blobs_marked",
            "manifests_removed",
            "tag_index_entries_removed",
            "blobs_deleted",
            "bytes_freed",
            "layer_links_removed",
            "uploads_removed",
            "upload_bytes_freed",
            "temp_files_removed",
            "dirs_removed",
            "warnings",
        ] {
            if planned[field] != done[field] {
                mismatches.push(format!(
                    "{field}: dry run {} vs real run {}",
                    planned[field], done[field]
                ));
            }
        }
        let planned_paths: Vec<String> = str_set(&planned["deleted"]).into_iter().collect();
        let done_paths: Vec<String> = str_set(&done["deleted"]).into_iter().collect();
        assert_eq!(
            planned["deleted"].as_array().map(Vec::len),
            Some(planned_paths.len()),
            "the dry run lists a path twice"
        );
        assert_eq!(
            done["deleted"].as_array().map(Vec::len),
            Some(done_paths.len()),
            "the real run lists a path twice"
        );
        assert_eq!(
            planned_paths, done_paths,
            "{extra:?}: deleted paths of the dry run vs the real run"
        );
        assert!(!done_paths.is_empty(), "{extra:?}: nothing deleted");

        // Every path listed existed and is gone; nothing else changed.
        for p in &done_paths {
            assert!(before.contains_key(p), "listed {p}, which never existed");
            assert!(
                !real.join(p).exists(),
                "listed {p} as deleted, but it is still there"
            );
        }
        let gone = |p: &str| {
            done_paths.iter().any(|d| {
                p == d
                    || p.strip_prefix(d.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            })
        };
        let expected: BTreeMap<_, _> = shapes(&before)
            .into_iter()
            .filter(|(p, _)| !gone(p))
            .collect();
        let got = shapes(&listing(&real));
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{extra:?}: the real run removed other paths than it listed"
        );
        assert_eq!(got, expected, "{extra:?}: sizes changed");
        assert!(
            mismatches.is_empty(),
            "regfs gc --dry-run {extra:?} reported other counts than the real run:\n  {}",
            mismatches.join("\n  ")
        );
    }
    report_time("dry_run_predicts_the_real_run", t0);
}

//! `--delete-untagged`: every tagged image stays whole (index children, referrers),
//! which the registry's collector (2.8) does not manage for its multi-arch image.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

use crate::common::describe_output;
use crate::fixture::{fixture, script, workdir};
use crate::inspect::{blob_dirs, image_blobs, report_time, str_set};
use crate::processes::{Registry, copy_store, count, peer_gc, regfs_gc_ok, run};

#[test]
fn delete_untagged_keeps_tagged_images_whole() {
    let Some(fx) = fixture() else { return };
    let t0 = Instant::now();
    let work = workdir(fx);
    let d = work.path().join("D");
    let e = work.path().join("E");
    copy_store(fx, &d);
    copy_store(fx, &e);
    let before = blob_dirs(&fx.store());

    let report = regfs_gc_ok(&d, &["--delete-untagged"]);
    assert_eq!(report["mode"], "delete-untagged");

    // What must stay: every blob of every image that survives --delete-untagged.
    let surviving: Vec<&Value> = fx
        .images()
        .iter()
        .filter(|i| i["survives_delete_untagged"] == true)
        .collect();
    let needed: BTreeSet<String> = surviving.iter().flat_map(|i| image_blobs(i)).collect();
    let after_d = blob_dirs(&d);
    for i in &surviving {
        let missing: BTreeSet<_> = image_blobs(i).difference(&after_d).cloned().collect();
        assert!(
            missing.is_empty(),
            "regfs --delete-untagged deleted blobs of the kept image {} ({} {}): {missing:?}",
            i["name"],
            i["repository"],
            i["digest"]
        );
    }
    for i in fx
        .images()
        .iter()
        .filter(|i| i["survives_delete_untagged"] == false)
    {
        let kept: BTreeSet<_> = image_blobs(i)
            .difference(&needed)
            .filter(|b| after_d.contains(*b))
            .cloned()
            .collect();
        assert!(
            kept.is_empty(),
            "regfs --delete-untagged kept blobs only the collected image {} ({} {}) needs: \
             {kept:?}",
            i["name"],
            i["repository"],
            i["digest"]
        );
    }
    assert_eq!(after_d, needed);
    assert_eq!(after_d, fx.blobs_where("survives_delete_untagged"));
    assert_eq!(
        count(&report, "blobs_deleted"),
        (before.len() - after_d.len()) as u64
    );
    let collected_manifests = fx
        .images()
        .iter()
        .filter(|i| i["present"] == true && i["survives_delete_untagged"] == false)
        .count();
    assert_eq!(
        count(&report, "manifests_removed"),
        collected_manifests as u64
    );

    // Every tagged image pulls completely (the index with its children, the referrers),
    // the collected ones are gone.
    {
        let registry = Registry::serve(work.path(), &d);
        let t = Instant::now();
        let out = run(Command::new("python3")
            .arg(script())
            .arg("pull-all")
            .arg(work.path())
            .arg(registry.port.to_string())
            .args(["--expect", "delete-untagged"]));
        eprintln!("pull-all took {:.2} s", t.elapsed().as_secs_f64());
        assert!(
            out.status.success(),
            "pull-all --expect delete-untagged after regfs gc --delete-untagged: {}",
            describe_output(&out)
        );
    }

    // The registry's own --delete-untagged: whatever it rightly deleted, regfs deleted too;
    // but it also deleted the children of the tagged multi-arch index, which regfs keeps.
    peer_gc(fx, &e, work.path(), &["--delete-untagged"]);
    let after_e = blob_dirs(&e);
    let peer_deleted: BTreeSet<String> = before.difference(&after_e).cloned().collect();
    let rightly: BTreeSet<String> = peer_deleted.difference(&needed).cloned().collect();
    let kept_by_regfs: Vec<_> = rightly.intersection(&after_d).collect();
    assert!(
        kept_by_regfs.is_empty(),
        "blobs the registry rightly deleted but regfs kept: {kept_by_regfs:?}"
    );
    let multi = fx.image("multi");
    assert_eq!(multi["tag"], "multi");
    let children = str_set(&multi["children"]);
    assert!(!children.is_empty());
    let mut broken = BTreeSet::new();
    for child in &children {
        let entry = fx
            .images()
            .iter()
            .find(|i| i["digest"] == child.as_str())
            .expect("child in fixture.json");
        let blobs = image_blobs(entry);
        broken.extend(blobs.difference(&after_e).cloned());
        assert!(
            blobs.is_subset(&after_d),
            "regfs broke the multi-arch image: child {child} lost {:?}",
            blobs.difference(&after_d).collect::<Vec<_>>()
        );
    }
    assert!(
        !broken.is_empty(),
        "the registry's 2.8 --delete-untagged was expected to delete blobs of the children \
         of the tagged index {} (upstream #3178), and did not",
        multi["digest"]
    );
    eprintln!(
        "docker-registry --delete-untagged deleted {} blobs needed by tagged images \
         (children of the multi-arch index, referrers); regfs kept them",
        peer_deleted.intersection(&needed).count()
    );
    report_time("delete_untagged_keeps_tagged_images_whole", t0);
}

//! What recording access times costs a pull, as the daemon sees it: opens (and releases)
//! of a tag's current link and a manifest's revision link through the filesystem core
//! under the policy chain with and without the recording layer. Not a pass/fail test:
//! run it under callgrind, once per chain, and compare instruction counts (repeatable on
//! a loaded machine):
//!
//! ```sh
//! T=$(ls target/debug/deps/access_cost-* | grep -v '\.d$' | head -1)
//! for c in plain recording; do ACCESS_COST_CHAIN=$c valgrind --tool=callgrind \
//!   --callgrind-out-file=/tmp/cg.$c $T --ignored --exact access_recording_cost; done
//! ```

mod common;

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Instant;

use common::store::StoreBuilder;
use regfs::fs::StorageFs;
use regfs::layout::Store;
use regfs::policy::StorePolicy;
use regfs::policy::access::{AccessRecorder, AccessRecording};
use regfs::policy::gate::WriteGate;
use regfs::policy::links::LinkRefusal;
use regfs::policy::online::OnlineBarrier;

/// FUSE's root inode number (FUSE_ROOT_ID).
const ROOT_ID: u64 = 1;

fn lookup_path(fs: &StorageFs, rel: &str) -> u64 {
    rel.split('/').fold(ROOT_ID, |parent, name| {
        fs.lookup(parent, OsStr::new(name)).unwrap().attr.ino.0
    })
}

#[test]
#[ignore = "a measurement: run under callgrind (see the file's documentation)"]
fn access_recording_cost() {
    let opens: usize = std::env::var("ACCESS_COST_OPENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let recording = std::env::var("ACCESS_COST_CHAIN").as_deref() != Ok("plain");
    let dir = common::tempdir();
    let root = dir.path();
    let b = StoreBuilder::new(root);
    let (m, _) = b.image("team/app", &[b.blob(b"layer")], "cost");
    b.tag("team/app", "v1", &m);
    let open = || Store::open(root).unwrap();
    let inner = LinkRefusal::new(open(), OnlineBarrier::new(open(), WriteGate::new()));
    let recorder = AccessRecorder::new();
    let chain: Arc<dyn StorePolicy> = if recording {
        Arc::new(AccessRecording::new(recorder.clone(), inner))
    } else {
        Arc::new(inner)
    };
    let fs = StorageFs::new(root, chain).unwrap();
    let v2 = "docker/registry/v2/repositories/team/app/_manifests";
    let links = [
        lookup_path(&fs, &format!("{v2}/tags/v1/current/link")),
        lookup_path(&fs, &format!("{v2}/revisions/sha256/{}/link", m.hex())),
    ];
    let start = Instant::now();
    for _ in 0..opens {
        for id in links {
            let o = fs.open(id, libc::O_RDONLY, None).unwrap();
            fs.release(o.fh).unwrap();
        }
    }
    let each = start.elapsed().as_secs_f64() * 1e9 / (2 * opens) as f64;
    println!(
        "chain {}: {} opens, {each:.0} ns per open and release; {} accesses pending",
        if recording { "recording" } else { "plain" },
        2 * opens,
        recorder.pending()
    );
    if recording {
        assert_eq!(recorder.pending(), 2, "a tag pull and a manifest pull");
    }
}

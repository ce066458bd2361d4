//! Directory listings compared with a plain directory: a large directory, and readdir
//! while entries are being deleted.

use crate::ops::{M, Op};
use crate::plan::s;
use crate::runner::differential;

#[test]
fn large_directory_listing_matches_a_plain_directory() {
    use Op::*;
    let ops = vec![
        Mkdir(s("big"), M(0o755)),
        CreateMany(s("big"), 5000),
        ListSummary(s("big")),
        Stat(s("big/f04999")),
        Unlink(s("big/f02500")),
        ListSummary(s("big")),
        RemoveAll(s("big")),
        Stat(s("big")),
        List(s("")),
    ];
    let Some((_, mounted)) = differential(&ops) else {
        return;
    };
    assert!(
        mounted[2].contains("count=5000 unique=5000"),
        "{}",
        mounted[2]
    );
}

#[test]
fn readdir_while_deleting_keeps_the_same_invariants_as_a_plain_directory() {
    let ops = vec![Op::ReaddirWhileDeleting(s("rd")), Op::ListSummary(s("rd"))];
    let Some((_, mounted)) = differential(&ops) else {
        return;
    };
    assert!(
        mounted[0].contains("dups=0 foreign=0 missing_survivors=0"),
        "{}",
        mounted[0]
    );
}

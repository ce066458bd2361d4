//! Runs a sequence of operations on a plain directory and on the mount, and asserts
//! that every outcome is the same.

use std::path::Path;
use std::time::Instant;

use crate::common;
use crate::ops::{Op, clip};
use crate::outcome::{Fail, walk_string};

pub fn run_all(ops: &[Op], root: &Path) -> Vec<String> {
    ops.iter()
        .map(|op| match op.run(root) {
            Ok(v) => format!("ok:{v}"),
            Err(Fail(e)) => format!("err:{e}"),
        })
        .collect()
}

/// Where two long outcomes made of `; `-separated items first differ.
pub fn first_item_difference(a: &str, b: &str) -> Option<String> {
    let (ia, ib): (Vec<&str>, Vec<&str>) = (a.split("; ").collect(), b.split("; ").collect());
    if ia.len() < 2 && ib.len() < 2 {
        return None;
    }
    for k in 0..ia.len().max(ib.len()) {
        let (x, y) = (ia.get(k), ib.get(k));
        if x != y {
            return Some(format!(
                "first differing item #{k}:\n      plain: {x:?}\n      mount: {y:?}"
            ));
        }
    }
    None
}

/// Asserts that both outcome vectors are equal; on failure names the first differing
/// step and lists every other difference.
pub fn assert_same(ops: &[Op], plain: &[String], mounted: &[String]) {
    assert_eq!(plain.len(), mounted.len());
    if std::env::var_os("REGFS_DIFF_TRACE").is_some() {
        for (i, op) in ops.iter().enumerate() {
            let same = if plain[i] == mounted[i] {
                "same"
            } else {
                "DIFF"
            };
            eprintln!("#{i} {same} {} -> {}", op.name(), clip(&mounted[i], 300));
        }
    }
    let diffs: Vec<usize> = (0..ops.len()).filter(|&i| plain[i] != mounted[i]).collect();
    if diffs.is_empty() {
        return;
    }
    let mut msg = String::new();
    let first = diffs[0];
    msg.push_str(&format!(
        "mount and plain directory differ at step {first}: {}\n  plain: {}\n  mount: {}\n",
        ops[first].name(),
        clip(&plain[first], 2000),
        clip(&mounted[first], 2000)
    ));
    if let Some(d) = first_item_difference(&plain[first], &mounted[first]) {
        msg.push_str(&format!("  {d}\n"));
    }
    msg.push_str(&format!("{} differing step(s) in all:\n", diffs.len()));
    for &i in diffs.iter().take(30) {
        msg.push_str(&format!("  #{i} {}\n", ops[i].name()));
        match first_item_difference(&plain[i], &mounted[i]) {
            Some(d) => msg.push_str(&format!("    {d}\n")),
            None => msg.push_str(&format!(
                "    plain: {}\n    mount: {}\n",
                clip(&plain[i], 600),
                clip(&mounted[i], 600)
            )),
        }
    }
    panic!("{msg}");
}

/// Runs `ops` on a fresh mount and on a plain directory and compares every outcome,
/// then compares the two resulting trees (the mount's backing directory this time).
pub fn differential(ops: &[Op]) -> Option<(Vec<String>, Vec<String>)> {
    // Mount first: mounting sets the process umask, which both runs must share.
    let m = common::mount_fresh()?;
    let plain_dir = common::tempdir();
    let t = Instant::now();
    let plain = run_all(ops, plain_dir.path());
    let plain_time = t.elapsed();
    let t = Instant::now();
    let mounted = run_all(ops, &m.mnt);
    let mount_time = t.elapsed();
    eprintln!(
        "{} steps: plain directory {plain_time:?}, mount {mount_time:?}",
        ops.len()
    );
    assert_same(ops, &plain, &mounted);
    let a = walk_string(plain_dir.path(), "").map_err(|e| e.0);
    let b = walk_string(&m.storage, "").map_err(|e| e.0);
    if a != b {
        let detail = match (&a, &b) {
            (Ok(a), Ok(b)) => first_item_difference(a, b).unwrap_or_default(),
            _ => String::new(),
        };
        panic!(
            "the plain tree and the mount's backing tree differ after the run\n  {detail}\n  plain: {a:?}\n  backing: {b:?}"
        );
    }
    Some((plain, mounted))
}

//! The library's module graph has no cycles: layers depend one way, so a new policy,
//! layout or trigger is a module added on top, not a thread pulled through old ones.
//!
//! It reads `crate::x` and `super::x` references in the sources (comments left out) and
//! fails on any cycle between the library's top-level modules, or between the submodules
//! of one module (daemon, fs, gc, layout, policy, policy/online). The binary's own
//! modules (declared by `src/main.rs`) are left out: nothing in the library can name
//! them. The library never names clap either.
//!
//! It also checks direction where a cycle-free graph could still point the wrong way:
//! the filesystem and the mount know the policy only as a trait (no concrete policy is
//! named there: the composition root, `runtime::compose`, builds the chain), and the
//! collector deletes through a trait, never naming the filesystem.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments (doc links name modules too, but a comment
/// is no dependency).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| l.split_once("//").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The modules `prefix` (`crate::` or `super::`) names in `code`: `prefix x::...`,
/// `prefix x` and each first name inside `prefix {a::.., b}`.
fn named_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `super::super::`, `foo_crate::`
        }
        let rest = &code[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident_at(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.insert(ident_at(item.trim()));
        } else {
            out.insert(ident_at(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

/// `src/x.rs` and `src/x/...` belong to top-level module `x`.
fn top_module(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The binary's modules: `mod x;` lines of `src/main.rs`.
fn binary_modules(src: &Path) -> BTreeSet<String> {
    let main = fs::read_to_string(src.join("main.rs")).expect("src/main.rs");
    code_of(&main)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mod ")?.strip_suffix(';'))
        .map(str::to_string)
        .collect()
}

struct Crate {
    /// Top-level module -> the top-level modules it names.
    top: Graph,
    /// For each module with submodules (`policy`, `policy/online`): submodule -> the
    /// sibling submodules it names.
    inner: BTreeMap<String, Graph>,
    /// Each library file (relative to `src`) -> the policy submodules it names
    /// (`crate::policy::gate`, `crate::{policy::online::..}`, `crate::policy::{links, ..}`).
    policies_named: BTreeMap<String, BTreeSet<String>>,
    /// Library files whose code names clap.
    clap: Vec<String>,
}

fn read_crate() -> Crate {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let binary = binary_modules(&src);
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut c = Crate {
        top: Graph::new(),
        inner: BTreeMap::new(),
        clap: vec![],
        policies_named: BTreeMap::new(),
    };
    for path in files {
        let rel = path.strip_prefix(&src).unwrap().to_path_buf();
        let module = top_module(&rel);
        if module == "main" || module == "bin" || module == "lib" || binary.contains(&module) {
            continue;
        }
        let code = code_of(&fs::read_to_string(&path).expect("source"));
        if code.contains("clap::") || code.contains("clap_") {
            c.clap.push(rel.display().to_string());
        }
        let named = named_after(&code, "crate::");
        let deps = c.top.entry(module.clone()).or_default();
        deps.extend(named.into_iter().filter(|m| *m != module));
        let mut policies = named_after(&code, "crate::policy::");
        policies.extend(named_after(&code, "policy::"));
        c.policies_named.insert(rel.display().to_string(), policies);
        let depth = rel.components().count();
        if depth >= 2 && !rel.ends_with("mod.rs") {
            let parent = rel.parent().unwrap().display().to_string();
            let me = rel.file_stem().unwrap().to_string_lossy().to_string();
            let graph = c.inner.entry(parent).or_default();
            let deps = graph.entry(me.clone()).or_default();
            deps.extend(
                named_after(&code, "super::")
                    .into_iter()
                    .filter(|m| *m != me),
            );
        }
    }
    c
}

/// A cycle in `g` as the path that closes it, if there is one.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        n: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut cycle = path[at..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if g.contains_key(d)
                && let Some(c) = visit(g, d, path, done)
            {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(g, n, &mut Vec::new(), &mut done))
}

#[test]
fn references_are_read_from_paths_and_groups() {
    let code = code_of(
        "use crate::{daemon::Daemon, fs::{A, B}, layout};\nlet x = crate::gc::run(); // crate::cli\nuse super::super::up;",
    );
    let named = named_after(&code, "crate::");
    assert_eq!(
        named.into_iter().collect::<Vec<_>>(),
        ["daemon", "fs", "gc", "layout"]
    );
    let g: Graph = [("a", "b"), ("b", "c"), ("c", "a")]
        .iter()
        .map(|(k, v)| (k.to_string(), BTreeSet::from([v.to_string()])))
        .collect();
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
}

#[test]
fn top_level_modules_form_no_cycle() {
    let c = read_crate();
    assert!(c.top.contains_key("fs") && c.top.contains_key("daemon"));
    if let Some(cycle) = find_cycle(&c.top) {
        panic!(
            "module cycle: {}\nthe graph: {:#?}",
            cycle.join(" -> "),
            c.top
        );
    }
}

#[test]
fn submodules_form_no_cycle() {
    let c = read_crate();
    for parent in ["daemon", "fs", "gc", "layout", "policy", "policy/online"] {
        assert!(
            c.inner.contains_key(parent),
            "no submodules read for {parent}"
        );
    }
    let daemon = &c.inner["daemon"];
    assert!(daemon.contains_key("runner") && daemon.contains_key("service"));
    for (parent, graph) in &c.inner {
        if let Some(cycle) = find_cycle(graph) {
            panic!(
                "{parent} module cycle: {}\nthe graph: {graph:#?}",
                cycle.join(" -> ")
            );
        }
    }
}

#[test]
fn the_library_never_sees_clap() {
    let c = read_crate();
    assert!(c.clap.is_empty(), "library files naming clap: {:?}", c.clap);
}

/// The policy layers the composition root stacks; only it (and the daemon, which drives
/// the gate and the online run) may name them.
const CONCRETE_POLICIES: [&str; 3] = ["gate", "links", "online"];

#[test]
fn the_filesystem_and_the_mount_know_the_policy_only_as_a_trait() {
    let c = read_crate();
    let mut offending = vec![];
    for (file, named) in &c.policies_named {
        if !(file.starts_with("fs/") || file.starts_with("mount/")) {
            continue;
        }
        for p in CONCRETE_POLICIES {
            if named.contains(p) {
                offending.push(format!("{file} names policy::{p}"));
            }
        }
    }
    assert!(
        c.policies_named.contains_key("fs/core.rs")
            && c.policies_named.contains_key("mount/mod.rs")
    );
    assert!(
        offending.is_empty(),
        "the composition root (runtime::compose) builds the policy chain; fs and mount take `Arc<dyn StorePolicy>`:\n{}",
        offending.join("\n")
    );
}

#[test]
fn the_collector_never_names_the_filesystem() {
    let c = read_crate();
    let gc = &c.top["gc"];
    assert!(gc.contains("layout"), "gc's references were read");
    assert!(
        !gc.contains("fs") && !gc.contains("mount") && !gc.contains("daemon"),
        "gc deletes through `gc::Deleter`, which the composition root implements; it names {gc:?}"
    );
}

#[test]
fn nested_policy_modules_are_checked_for_cycles() {
    let c = read_crate();
    let online = c
        .inner
        .get("policy/online")
        .expect("policy/online's submodules were read");
    assert!(online.contains_key("doomed"), "{online:?}");
}

#[test]
fn direction_checks_see_group_imports() {
    let code = code_of(
        "use crate::{error::X, policy::gate::WriteGate};\nuse crate::policy::{Change, links::L};",
    );
    let mut named = named_after(&code, "crate::policy::");
    named.extend(named_after(&code, "policy::"));
    assert!(named.contains("gate") && named.contains("links") && named.contains("Change"));
}

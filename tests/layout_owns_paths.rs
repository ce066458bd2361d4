//! Only the layout (`src/layout/`) spells the registry's path components or its fan-out
//! rule: every other module asks it. Comments and unit-test modules may name paths; code
//! may not. A new `.join("_uploads")` elsewhere fails here, naming file and line.

use std::fs;
use std::path::{Path, PathBuf};

/// Components of the registry's layout that only the layout may spell.
const OWNED: &[&str] = &[
    "_uploads",
    "_layers",
    "_manifests",
    "data",
    "link",
    "sha256",
    "startedat",
    "hashstates",
];

/// Literals that are not paths though they read like one: (file, literal, why).
const NOT_PATHS: &[(&str, &str, &str)] = &[
    ("src/fs/adapter.rs", "link", "the FUSE operation link(2)"),
    ("src/fs/stats.rs", "link", "the FUSE operation link(2)"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The string literals of one line of code (plain `"..."`, escapes honoured).
fn literals(line: &str) -> Vec<String> {
    let line = line.replace("'\"'", "");
    let mut out = Vec::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut lit = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => break,
                c => lit.push(c),
            }
        }
        out.push(lit);
    }
    out
}

fn spells_layout(lit: &str) -> bool {
    lit.contains("docker/registry") || lit.split('/').any(|c| OWNED.contains(&c))
}

/// Every line of code under `src` outside `src/layout/` that spells the layout.
fn offenders(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // Unit tests kept beside their module (`*_tests.rs`) spell paths as inputs.
        if rel.starts_with("src/layout/") || rel.ends_with("_tests.rs") {
            continue;
        }
        let text = fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("#[cfg(test)]") {
                break;
            }
            if code.starts_with("//") {
                continue;
            }
            if code.contains("[..2]") {
                out.push(format!("{rel}:{}: the fan-out rule: {code}", n + 1));
            }
            for lit in literals(code) {
                let allowed = NOT_PATHS.iter().any(|(f, l, _)| *f == rel && *l == lit);
                if spells_layout(&lit) && !allowed {
                    out.push(format!("{rel}:{}: {lit:?}: {code}", n + 1));
                }
            }
        }
    }
    out
}

#[test]
fn no_module_but_the_layout_spells_its_paths() {
    let found = offenders(Path::new(env!("CARGO_MANIFEST_DIR")));
    assert!(
        found.is_empty(),
        "ask crate::layout instead of spelling its paths:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_spelled_components_and_the_fan_out_rule() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src/gc");
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(dir.path().join("src/layout")).unwrap();
    fs::write(
        src.join("scan.rs"),
        concat!(
            "/// `_uploads` in a doc comment is fine.\n",
            "let a = dir.join(\"_uploads\");\n",
            "let b = format!(\"{r}/_manifests/tags\");\n",
            "let c = &hex[..2];\n",
            "let d = \"uploads\";\n",
            "#[cfg(test)]\n",
            "mod tests { const P: &str = \"a/_layers/sha256\"; }\n",
        ),
    )
    .unwrap();
    fs::write(
        dir.path().join("src/layout/paths.rs"),
        "pub const UPLOADS: &str = \"_uploads\";\n",
    )
    .unwrap();
    let found = offenders(dir.path());
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(found[0].starts_with("src/gc/scan.rs:2: \"_uploads\""));
    assert!(found[1].starts_with("src/gc/scan.rs:3: \"{r}/_manifests/tags\""));
    assert!(found[2].starts_with("src/gc/scan.rs:4: the fan-out rule"));
}

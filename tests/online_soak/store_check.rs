//! The backing store after a race: every link file whole and naming a blob with data,
//! every revision link naming its own directory's digest, no blob directory left without
//! its data (half deleted).

use std::fs;
use std::path::Path;

use crate::V2;
use crate::common::store::well_formed_link;
use crate::support::walk;

/// What a walk found wrong (empty when the store is consistent) and how many links it read.
pub fn problems(store: &Path) -> (Vec<String>, usize) {
    let v2 = store.join(V2);
    let blobs = v2.join("blobs/sha256");
    let has_data =
        |hex: &str| hex.len() == 64 && blobs.join(&hex[..2]).join(hex).join("data").is_file();
    let mut found = Vec::new();
    let mut files = Vec::new();
    walk(&v2.join("repositories"), &mut files);
    let mut links = 0;
    for f in files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "link"))
    {
        links += 1;
        let rel = f.strip_prefix(store).unwrap_or(f).display().to_string();
        let content = match fs::read(f) {
            Ok(c) => c,
            Err(e) => {
                found.push(format!("{rel}: unreadable: {e}"));
                continue;
            }
        };
        if !well_formed_link(&content) {
            found.push(format!(
                "{rel}: {} bytes {:?} (empty or truncated)",
                content.len(),
                String::from_utf8_lossy(&content)
            ));
            continue;
        }
        let hex = String::from_utf8_lossy(&content[7..]).to_string();
        if !has_data(&hex) {
            found.push(format!("{rel}: names sha256:{hex}, which has no data"));
        }
        // In a path .../sha256/<hex>/link the directory names the digest.
        let dir = f
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy());
        let in_path = f
            .parent()
            .and_then(|p| p.parent())
            .and_then(|p| p.file_name());
        if in_path.is_some_and(|n| n == "sha256") && dir.as_deref() != Some(hex.as_str()) {
            found.push(format!(
                "{rel}: holds sha256:{hex}, not its directory's digest"
            ));
        }
    }
    for fan in fs::read_dir(&blobs).into_iter().flatten().flatten() {
        for b in fs::read_dir(fan.path()).into_iter().flatten().flatten() {
            if !b.path().join("data").is_file() {
                found.push(format!(
                    "blob directory {} without data (half deleted?)",
                    b.path().strip_prefix(store).unwrap_or(&b.path()).display()
                ));
            }
        }
    }
    (found, links)
}

/// Panics naming every problem of the store, `when` saying at which point.
pub fn assert_consistent(store: &Path, when: &str) -> usize {
    let (found, links) = problems(store);
    assert!(
        found.is_empty(),
        "{when}: the store is damaged ({} problems):\n{}",
        found.len(),
        found.join("\n")
    );
    links
}

/// Every path under the repositories whose name is a digest that `text` mentions, with
/// what a file there holds (for a failure's message: what the store holds of it).
pub fn naming(store: &Path, text: &str) -> Vec<String> {
    let hexes: Vec<&str> = text
        .split("sha256:")
        .skip(1)
        .filter_map(|t| t.get(..64))
        .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
        .collect();
    let mut out = Vec::new();
    let mut stack = vec![store.join(V2).join("repositories")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(store).unwrap_or(&p).display().to_string();
            if p.is_dir() {
                if hexes.iter().any(|h| rel.ends_with(h)) {
                    let inner: Vec<String> = fs::read_dir(&p)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|f| {
                            let c = fs::read(f.path()).unwrap_or_default();
                            format!("{} ({} bytes)", f.file_name().to_string_lossy(), c.len())
                        })
                        .collect();
                    out.push(format!("{rel}/ {inner:?}"));
                }
                stack.push(p);
            }
        }
    }
    out
}

/// What the store holds for `repo` (its tags' and revisions' links with what they name),
/// and whether `digest`'s blob has data: for a failure's message. Long listings keep the
/// lines naming `digest`.
pub fn repo_state(store: &Path, repo: &str, digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let v2 = store.join(V2);
    let base = v2.join("repositories").join(repo).join("_manifests");
    let mut files = Vec::new();
    walk(&base, &mut files);
    files.sort();
    let mut lines: Vec<String> = files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(&base).unwrap_or(f).display().to_string();
            let c = fs::read(f).unwrap_or_default();
            format!("{rel} -> {:?}", String::from_utf8_lossy(&c))
        })
        .collect();
    const MAX: usize = 60;
    if lines.len() > MAX {
        let n = lines.len();
        let mut kept: Vec<String> = lines.iter().take(MAX).cloned().collect();
        kept.extend(lines.iter().skip(MAX).filter(|l| l.contains(hex)).cloned());
        kept.push(format!("({} of {n} files shown)", kept.len()));
        lines = kept;
    }
    let data = hex.len() == 64
        && v2
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
            .is_file();
    let mut out = format!(
        "    blob {digest}: data {}\n",
        if data { "present" } else { "ABSENT" }
    );
    for l in lines {
        out += &format!("    _manifests/{l}\n");
    }
    out
}

//! The registry's own operations and their edge cases, as one plan, and the test that
//! runs it on both roots.

use crate::ops::{M, Op};
use crate::runner::differential;

pub const V2: &str = "docker/registry/v2";

pub fn link(n: u32) -> String {
    format!("sha256:{:064x}", 0xabcdef_u128 * 1_000_003 + n as u128)
}

pub fn s(x: &str) -> String {
    x.to_string()
}

pub fn registry_plan() -> Vec<Op> {
    use Op::*;
    let repo = format!("{V2}/repositories/team/app/web");
    let tag_link = format!("{repo}/_manifests/tags/latest/current/link");
    let rev_dir = format!("{repo}/_manifests/revisions/sha256/{}", &link(1)[7..]);
    let upload = format!("{repo}/_uploads/0b1d2c3e-aaaa-bbbb-cccc-000000000001");
    let blob_dir = format!("{V2}/blobs/sha256/{}/{}", &link(2)[7..9], &link(2)[7..]);
    let layer_link = format!("{repo}/_layers/sha256/{}/link", &link(2)[7..]);
    let n255 = "n".repeat(255);
    let n256 = "n".repeat(256);
    let u255 = format!("{}x", "é".repeat(127)); // 255 bytes of UTF-8
    let u256 = "é".repeat(128); // 256 bytes
    let deep: String = (0..30)
        .map(|i| format!("level-{i:02}"))
        .collect::<Vec<_>>()
        .join("/");
    let deep = format!("deep/{deep}");

    // Blobs the links below name, except link(2)'s, which an upload brings: the mount
    // refuses a link naming a blob without data. Their revisions in the repository, as a
    // manifest PUT writes before it tags: the mount refuses a tag naming a manifest the
    // repository holds no revision of.
    let blob_of = |n: u32| format!("{V2}/blobs/sha256/{}/{}", &link(n)[7..9], &link(n)[7..]);
    let revision_of = |n: u32| format!("{repo}/_manifests/revisions/sha256/{}", &link(n)[7..]);
    let seeded = [1, 3, 4].into_iter().flat_map(|n| {
        [
            MkdirAll(blob_of(n)),
            RewriteInPlace(format!("{}/data", blob_of(n)), format!("blob {n}")),
            MkdirAll(revision_of(n)),
            RewriteInPlace(format!("{}/link", revision_of(n)), link(n)),
        ]
    });
    seeded
        .chain([
            // --- the registry's writer: mkdir -p, create without O_TRUNC, ftruncate(0), write
            MkdirAll(format!("{repo}/_manifests/tags/latest/current")),
            Stat(s(V2)),
            RewriteInPlace(tag_link.clone(), link(1)),
            Read(tag_link.clone()),
            Stat(tag_link.clone()),
            // A longer content, then a link again: ftruncate(0) must leave no tail.
            RewriteInPlace(tag_link.clone(), "x".repeat(200)),
            RewriteInPlace(tag_link.clone(), link(3)),
            Read(tag_link.clone()),
            // O_CREAT without O_TRUNC on an existing file keeps the tail.
            WriteNoTrunc(tag_link.clone(), s("sha256:short")),
            Stat(tag_link.clone()),
            RewriteInPlace(tag_link.clone(), link(1)),
            // Revision link, index link.
            MkdirAll(rev_dir.clone()),
            RewriteInPlace(format!("{rev_dir}/link"), link(1)),
            MkdirAll(format!(
                "{repo}/_manifests/tags/latest/index/sha256/{}",
                &link(1)[7..]
            )),
            RewriteInPlace(
                format!(
                    "{repo}/_manifests/tags/latest/index/sha256/{}/link",
                    &link(1)[7..]
                ),
                link(1),
            ),
            // --- an upload: startedat, data appended in chunks, fsync, move into blobs
            MkdirAll(upload.clone()),
            RewriteInPlace(format!("{upload}/startedat"), s("2024-05-01T12:00:00Z")),
            AppendBySeekEnd(format!("{upload}/data"), "chunk-one;".repeat(100)),
            AppendBySeekEnd(format!("{upload}/data"), "chunk-two;".repeat(300)),
            Append(format!("{upload}/data"), s("tail-by-O_APPEND")),
            Fsync(format!("{upload}/data")),
            Fdatasync(format!("{upload}/data")),
            Stat(format!("{upload}/data")),
            Read(format!("{upload}/data")),
            ReadAt(format!("{upload}/data"), 995, 30),
            ReadAt(format!("{upload}/data"), 4016, 100),
            ReadAt(format!("{upload}/data"), 100_000, 10),
            MkdirAll(format!("{upload}/hashstates/sha256")),
            RewriteInPlace(format!("{upload}/hashstates/sha256/4016"), s("state")),
            Stat(format!("{blob_dir}/data")),
            MkdirAll(blob_dir.clone()),
            Rename(format!("{upload}/data"), format!("{blob_dir}/data")),
            Read(format!("{blob_dir}/data")),
            Stat(format!("{upload}/data")),
            MkdirAll(format!("{repo}/_layers/sha256/{}", &link(2)[7..])),
            RewriteInPlace(layer_link.clone(), link(2)),
            RemoveAll(upload.clone()),
            List(format!("{repo}/_uploads")),
            // --- 3.1 PutContent: temp file, fsync, rename over the target, fsync directory
            PutContentAtomic(tag_link.clone(), link(3)),
            PutContentAtomic(tag_link.clone(), link(4)),
            List(format!("{repo}/_manifests/tags/latest/current")),
            PutContentAtomic(format!("{blob_dir}/data"), "{\"schemaVersion\":2}".into()),
            FsyncDir(format!("{repo}/_manifests/tags/latest/current")),
            FsyncDir(s("")),
            FsyncDir(s(V2)),
            // Delete by digest (2.8): remove the revision link, leave the directory.
            Unlink(format!("{rev_dir}/link")),
            List(rev_dir.clone()),
            Walk(s(V2)),
            // --- sparse writes and holes
            CreateExcl(s("sparse"), M(0o644)),
            Pwrite(s("sparse"), (1 << 20) + 3, s("end")),
            Stat(s("sparse")),
            ReadHole(s("sparse"), 0, 1 << 20),
            ReadHole(s("sparse"), 4096 * 7 + 5, 65536),
            ReadAt(s("sparse"), (1 << 20) - 2, 100),
            Read(s("sparse")),
            Pwrite(s("sparse"), 10, s("early")),
            ReadAt(s("sparse"), 0, 32),
            WritePattern(s("small"), 10),
            Pwrite(s("small"), 100, s("past-eof")),
            Read(s("small")),
            Pwrite(s("fresh-sparse"), 5000, s("x")),
            Read(s("fresh-sparse")),
            // --- truncation
            Ftruncate(s("small"), 5),
            Read(s("small")),
            Ftruncate(s("small"), 10_000),
            ReadHole(s("small"), 5, 9995),
            Truncate(s("small"), 3),
            Read(s("small")),
            FtruncateReadOnly(s("small"), 0),
            Truncate(s("no-such-file"), 0),
            OpenTrunc(s("small")),
            Stat(s("small")),
            OpenTrunc(s("no-such-file")),
            // --- empty files
            CreateExcl(s("empty"), M(0o644)),
            Stat(s("empty")),
            Fstat(s("empty")),
            Read(s("empty")),
            ReadAt(s("empty"), 0, 10),
            ReadAt(s("empty"), 1000, 10),
            Fsync(s("empty")),
            Append(s("empty-then-append"), s("")),
            Append(s("empty-then-append"), s("a1")),
            Append(s("empty-then-append"), s("a2")),
            Read(s("empty-then-append")),
            // --- large-ish file written and read back
            WritePattern(s("big"), 3 * 1024 * 1024 + 17),
            Read(s("big")),
            ReadAt(s("big"), 1024 * 1024 - 3, 200_000),
            // --- rename: over an existing file, across directories, directories
            MkdirAll(s("r/a")),
            MkdirAll(s("r/b")),
            RewriteInPlace(s("r/a/one"), s("one")),
            RewriteInPlace(s("r/a/two"), s("two")),
            Rename(s("r/a/one"), s("r/a/two")),
            Read(s("r/a/two")),
            Stat(s("r/a/one")),
            Rename(s("r/a/two"), s("r/b/moved")),
            List(s("r/a")),
            List(s("r/b")),
            Rename(s("r/b/moved"), s("r/b/moved")),
            RewriteInPlace(s("r/a/inside"), s("inside")),
            Rename(s("r/a"), s("r/b/a-moved")),
            Read(s("r/b/a-moved/inside")),
            Stat(s("r/a")),
            Stat(s("r/b")),
            Stat(s("r/b/a-moved")),
            RewriteInPlace(s("r/x"), s("x-content")),
            RewriteInPlace(s("r/y"), s("y-content")),
            RenameNoReplace(s("r/x"), s("r/y")),
            Read(s("r/x")),
            Read(s("r/y")),
            RenameNoReplace(s("r/x"), s("r/z")),
            RenameNoReplace(s("r/b"), s("r/y")),
            RenameExchange(s("r/z"), s("r/y")),
            Read(s("r/z")),
            Read(s("r/y")),
            RenameExchange(s("r/z"), s("r/b")),
            Stat(s("r/z")),
            RenameExchange(s("r/z"), s("r/b")),
            RenameExchange(s("r/z"), s("r/missing")),
            ReplaceWhileOpen(s("r/y"), s("r/z")),
            // Errors of rename.
            Rename(s("r/missing"), s("r/other")),
            Rename(s("r/y"), s("r/b")),
            Mkdir(s("r/empty-dir"), M(0o755)),
            Rename(s("r/b"), s("r/y")),
            Rename(s("r/b"), s("r/b/a-moved/into-itself")),
            Mkdir(s("r/full-dir"), M(0o755)),
            RewriteInPlace(s("r/full-dir/f"), s("f")),
            Rename(s("r/b"), s("r/full-dir")),
            Rename(s("r/b"), s("r/empty-dir")),
            Stat(s("r/empty-dir")),
            Rename(s("r/y"), s("r/no-such-dir/y")),
            Rename(s("r/y"), s("r/y/child")),
            Walk(s("r")),
            // --- unlink and rmdir
            UnlinkWhileOpen(s("r/y")),
            Unlink(s("r/y")),
            Unlink(s("r/empty-dir")),
            Rmdir(s("r/full-dir")),
            Rmdir(s("r/full-dir/f")),
            Rmdir(s("r/no-such-dir")),
            Unlink(s("r/full-dir/f")),
            Rmdir(s("r/full-dir")),
            Rmdir(s("r/.")),
            Rmdir(s("r")),
            // --- create and mkdir errors
            CreateExcl(s("small"), M(0o644)),
            CreateExcl(s("r"), M(0o644)),
            Mkdir(s("r"), M(0o755)),
            Mkdir(s("small"), M(0o755)),
            Mkdir(s("no-such-dir/child"), M(0o755)),
            CreateExcl(s("no-such-dir/child"), M(0o644)),
            CreateExcl(s("small/child"), M(0o644)),
            Mkdir(s("small/child"), M(0o755)),
            MkdirAll(s("small/child")),
            Stat(s("small/child")),
            Read(s("no-such-file")),
            // --- opening directories and files the wrong way
            OpenWrite(s("r"), false),
            OpenWrite(s("r"), true),
            OpenWrite(s(""), true),
            OpenDirectoryFlag(s("small")),
            OpenDirectoryFlag(s("r")),
            ReadDirAsFile(s("r")),
            WriteReadOnlyFd(s("big")),
            ReadWriteOnlyFd(s("big")),
            Read(s("r")),
            // --- names
            MkdirAll(s("names/with space/and more  spaces ")),
            RewriteInPlace(s("names/with space/file name.txt"), s("spaced")),
            RewriteInPlace(s("names/ünïcödé ✓ 名前"), s("unicode")),
            Read(s("names/ünïcödé ✓ 名前")),
            CreateExcl(format!("names/{n255}"), M(0o644)),
            Stat(format!("names/{n255}")),
            Mkdir(format!("names/{u255}"), M(0o755)),
            RewriteInPlace(format!("names/{u255}/{n255}"), s("long names")),
            Read(format!("names/{u255}/{n255}")),
            CreateExcl(format!("names/{n256}"), M(0o644)),
            WriteNoTrunc(format!("names/{n256}"), s("x")),
            Mkdir(format!("names/{n256}"), M(0o755)),
            Mkdir(format!("names/{u256}"), M(0o755)),
            Stat(format!("names/{n256}")),
            Unlink(format!("names/{n256}")),
            Rename(format!("names/{n255}"), format!("names/{n256}")),
            Rename(format!("names/{n255}"), format!("names/{u255}/{u255}")),
            Rename(s("names/with space"), s("names/renamed dir ✓")),
            List(s("names")),
            Walk(s("names")),
            // --- modes and owners
            CreateExcl(s("modes/f"), M(0o640)),
            Mkdir(s("modes"), M(0o750)),
            CreateExcl(s("modes/f"), M(0o640)),
            CreateExcl(s("modes/g"), M(0o777)),
            CreateExcl(s("modes/suid"), M(0o4755)),
            CreateExcl(s("modes/sgid"), M(0o2755)),
            CreateExcl(s("modes/sticky"), M(0o1644)),
            Mkdir(s("modes/d"), M(0o711)),
            Chmod(s("modes/f"), M(0o600)),
            Chmod(s("modes/f"), M(0o444)),
            Chmod(s("modes/f"), M(0o4755)),
            Chmod(s("modes/f"), M(0o2755)),
            Chmod(s("modes/f"), M(0o7777)),
            Chmod(s("modes/f"), M(0o000)),
            Fstat(s("modes/f")),
            Chmod(s("modes/d"), M(0o1777)),
            Chown(s("modes/g"), 1234, 5678),
            Chown(s("modes/d"), 0, 4321),
            Chmod(s("modes/d"), M(0o2775)),
            CreateExcl(s("modes/d/inherits-gid"), M(0o664)),
            Mkdir(s("modes/d/sub"), M(0o755)),
            MkdirAll(s("modes/d/sub/deeper")),
            Chmod(s("modes/missing"), M(0o644)),
            Chown(s("modes/missing"), 1, 1),
            Walk(s("modes")),
            // --- statfs
            Statfs(s("")),
            Statfs(s(V2)),
            Statfs(s("no-such-dir")),
            // --- a deep tree (mkdir -p of 30 levels)
            MkdirAll(deep.clone()),
            RewriteInPlace(format!("{deep}/data"), s("at the bottom")),
            Read(format!("{deep}/data")),
            Stat(format!("{deep}/data")),
            MkdirAll(deep.clone()),
            Walk(s("deep")),
            Rmdir(s("deep")),
            RemoveAll(s("deep")),
            Stat(s("deep")),
            // --- the whole tree, as the registry's Walk sees it
            Walk(s("")),
            List(s("")),
            Stat(format!("{repo}/_manifests")),
        ])
        .collect()
}

#[test]
fn registry_operations_and_edge_cases_match_a_plain_directory() {
    let ops = registry_plan();
    let Some((plain, _)) = differential(&ops) else {
        return;
    };
    // Sanity: the plan exercised both successes and failures.
    assert!(plain.iter().filter(|o| o.starts_with("ok:")).count() > 100);
    assert!(plain.iter().filter(|o| o.starts_with("err:")).count() > 30);
}

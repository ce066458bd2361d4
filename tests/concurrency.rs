//! Concurrency through the mount: many threads writing, renaming over, reading back and
//! listing at once, as a busy registry does; then a check through the backing directory
//! that every final file holds exactly what its last writer wrote and nothing temporary
//! is left. And many readers of one large file at once.
mod common;

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::Instant;

const THREADS: usize = 8;
const ITERATIONS: usize = 300;
/// Final names each thread keeps rewriting: `final-<t>-<k>`.
const OWN_FINALS: usize = 5;
/// Content-addressed blobs every thread uploads, so uploads of one blob race.
const BLOBS: usize = 24;

fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// `n` bytes derived from `seed`.
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut st = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        out.extend_from_slice(&xorshift(&mut st).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// What thread `t` writes in iteration `i`: a header naming both, then bytes derived from
/// them, so any complete copy can be recognised and any torn or mixed one is rejected.
fn content(t: usize, i: usize) -> Vec<u8> {
    let len = 71 + (i * 37 + t * 101) % 9000;
    let mut out = format!("t={t:02} i={i:04} len={len:06};").into_bytes();
    let body = len - out.len();
    out.extend(bytes((t * 100_000 + i) as u64, body));
    out
}

/// The (thread, iteration) whose complete content `data` is, or None.
fn identify(data: &[u8]) -> Option<(usize, usize)> {
    let head = std::str::from_utf8(data.get(..23)?).ok()?;
    let t: usize = head.get(2..4)?.parse().ok()?;
    let i: usize = head.get(7..11)?.parse().ok()?;
    (content(t, i) == data).then_some((t, i))
}

fn blob_hex(b: usize) -> String {
    format!("{:064x}", (b as u128 + 1) * 0x1234_5678_9abc_def1)
}

/// The digest (hex) thread `t`'s tag link names at iteration `i`. Its blob data is seeded
/// in the store before the mount: a link naming a blob without data is refused.
fn tag_hex(t: usize, i: usize) -> String {
    format!("{:064x}", t * 100_000 + i)
}

fn tag_blob_data(hex: &str) -> String {
    format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2])
}

/// The manifests the tags name: a blob each, and its revision in the repository (a tag
/// naming a manifest the repository holds no revision of is refused).
fn seed_tag_blobs(store: &Path) {
    for t in 0..THREADS {
        for i in 0..ITERATIONS {
            let hex = tag_hex(t, i);
            let data = store.join(tag_blob_data(&hex));
            fs::create_dir_all(data.parent().unwrap()).unwrap();
            fs::write(data, b"").unwrap();
            let revision = store.join(format!(
                "docker/registry/v2/repositories/conc/app/_manifests/revisions/sha256/{hex}/link"
            ));
            fs::create_dir_all(revision.parent().unwrap()).unwrap();
            fs::write(revision, format!("sha256:{hex}")).unwrap();
        }
    }
}

fn blob_content(b: usize) -> Vec<u8> {
    bytes(0xB10B_0000 + b as u64, 1000 + b * 777)
}

/// Writes `data` into a new file with pwrite of distinct chunks, last chunk first.
fn write_chunks_backwards(path: &Path, data: &[u8], sync: bool) {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let chunks: Vec<(usize, &[u8])> = data
        .chunks(1000)
        .enumerate()
        .map(|(k, c)| (k * 1000, c))
        .collect();
    for (off, c) in chunks.iter().rev() {
        f.write_all_at(c, *off as u64)
            .unwrap_or_else(|e| panic!("pwrite {} at {off}: {e}", path.display()));
    }
    if sync {
        f.sync_all()
            .unwrap_or_else(|e| panic!("fsync {}: {e}", path.display()));
    }
}

/// 3.1 PutContent: `<path>.<id>.tmp`, then rename over the target; fsync on `sync`.
fn put_content(path: &Path, id: &str, data: &[u8], sync: bool) {
    let tmp = PathBuf::from(format!("{}.{id}.tmp", path.display()));
    write_chunks_backwards(&tmp, data, sync);
    fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), path.display()));
    if sync {
        File::open(path.parent().unwrap())
            .and_then(|d| d.sync_all())
            .unwrap_or_else(|e| panic!("fsync dir of {}: {e}", path.display()));
    }
}

/// 2.8 PutContent: open without O_TRUNC, ftruncate(0), write, close.
fn rewrite_in_place(path: &Path, data: &[u8]) {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o666)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.set_len(0).unwrap();
    f.write_all(data).unwrap();
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Names in `dir`; panics on a name listed twice.
fn list_unique(dir: &Path) -> HashSet<String> {
    let mut names = HashSet::new();
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display())) {
        let e = e.unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
        let n = e.file_name().to_string_lossy().into_owned();
        assert!(
            names.insert(n.clone()),
            "{n} listed twice in {}",
            dir.display()
        );
    }
    names
}

fn is_known_shared_name(n: &str) -> bool {
    n == "contested" || n.starts_with("final-") || n.ends_with(".tmp")
}

/// One thread's share of the registry-like workload.
fn worker(mnt: &Path, t: usize, start: &Barrier) -> Vec<(usize, usize)> {
    let shared = mnt.join("shared");
    let repo = mnt.join("docker/registry/v2/repositories/conc/app");
    let link_dir = repo.join(format!("_manifests/tags/t{t}/current"));
    fs::create_dir_all(&link_dir).unwrap();
    let mut contested_writes = Vec::new();
    start.wait();
    for i in 0..ITERATIONS {
        let data = content(t, i);
        let sync = i % 10 == 0;
        // Write a temp name, rename over this thread's final name, read it back.
        let k = i % OWN_FINALS;
        let fin = shared.join(format!("final-{t}-{k}"));
        put_content(&fin, &format!("{t}-{i}"), &data, sync);
        let back = read(&fin);
        assert!(
            back == data,
            "{}: read back {:?} (len {}), wrote t={t} i={i} (len {})",
            fin.display(),
            identify(&back),
            back.len(),
            data.len()
        );

        // A name every thread renames over: every read must be one complete content.
        if i % 4 == t % 4 {
            put_content(
                &shared.join("contested"),
                &format!("c-{t}-{i}"),
                &data,
                false,
            );
            contested_writes.push((t, i));
        }
        match fs::read(shared.join("contested")) {
            Ok(got) => assert!(
                identify(&got).is_some(),
                "contested: torn or mixed content of {} bytes: {:?}",
                got.len(),
                String::from_utf8_lossy(&got[..got.len().min(40)])
            ),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "contested: {e}"),
        }

        // A link file rewritten in place (2.8 style).
        let link = link_dir.join("link");
        let digest = format!("sha256:{}", tag_hex(t, i));
        rewrite_in_place(&link, digest.as_bytes());
        assert_eq!(read(&link), digest.as_bytes(), "{}", link.display());

        // An upload: mkdir -p, append chunks, fsync, move into blobs unless there, clean up.
        if i % 3 == 0 {
            let b = (i * 7 + t) % BLOBS;
            let hex = blob_hex(b);
            let blob = blob_content(b);
            let upload = repo.join(format!("_uploads/{t:02}-{i:04}"));
            fs::create_dir_all(upload.join("hashstates/sha256")).unwrap();
            fs::write(upload.join("startedat"), b"2024-05-01T12:00:00Z").unwrap();
            let mut f = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o666)
                .open(upload.join("data"))
                .unwrap();
            for c in blob.chunks(700) {
                f.write_all(c).unwrap();
            }
            f.sync_all().unwrap();
            drop(f);
            let dest_dir = mnt.join(format!(
                "docker/registry/v2/blobs/sha256/{}/{hex}",
                &hex[..2]
            ));
            fs::create_dir_all(&dest_dir).unwrap();
            let dest = dest_dir.join("data");
            if !dest.exists() {
                fs::rename(upload.join("data"), &dest).unwrap();
            }
            let layer = repo.join(format!("_layers/sha256/{hex}"));
            fs::create_dir_all(&layer).unwrap();
            put_content(
                &layer.join("link"),
                &format!("l-{t}-{i}"),
                hex.as_bytes(),
                false,
            );
            fs::remove_dir_all(&upload)
                .unwrap_or_else(|e| panic!("rm -r {}: {e}", upload.display()));
            assert!(read(&dest) == blob, "blob {hex} read back wrong");
        }

        // List the shared directory while everyone writes into it.
        if i % 10 == 5 {
            let names = list_unique(&shared);
            for n in &names {
                assert!(is_known_shared_name(n), "unexpected name {n:?} in shared/");
            }
            for k in 0..OWN_FINALS.min(i + 1) {
                let own = format!("final-{t}-{k}");
                assert!(
                    names.contains(&own),
                    "readdir of shared/ lost {own} (iteration {i})"
                );
            }
        }
    }
    contested_writes
}

/// Every file below `dir` (relative paths), recursively.
fn files_below(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir.join(rel)).unwrap() {
        let e = e.unwrap();
        let child = rel.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            out.push(child.join(""));
            files_below(dir, &child, out);
        } else {
            out.push(child);
        }
    }
}

#[test]
fn concurrent_writers_renamers_readers_and_listers_leave_exact_content() {
    let Some(m) = common::mount_with(seed_tag_blobs) else {
        return;
    };
    let started = Instant::now();
    fs::create_dir(m.mnt.join("shared")).unwrap();
    let start = Barrier::new(THREADS);
    let contested: Vec<(usize, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (mnt, start) = (&m.mnt, &start);
                s.spawn(move || worker(mnt, t, start))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker thread panicked"))
            .collect()
    });
    eprintln!(
        "{THREADS} threads x {ITERATIONS} iterations through the mount: {:?}",
        started.elapsed()
    );

    // Checked through the backing directory, not through the mount.
    let st = &m.storage;
    for t in 0..THREADS {
        for k in 0..OWN_FINALS {
            let last = (0..ITERATIONS).rev().find(|i| i % OWN_FINALS == k).unwrap();
            let got = fs::read(st.join(format!("shared/final-{t}-{k}"))).unwrap();
            assert!(
                got == content(t, last),
                "shared/final-{t}-{k} in the store holds {:?} (len {}), expected t={t} i={last}",
                identify(&got),
                got.len()
            );
        }
        let link = st.join(format!(
            "docker/registry/v2/repositories/conc/app/_manifests/tags/t{t}/current/link"
        ));
        let want = format!("sha256:{}", tag_hex(t, ITERATIONS - 1));
        assert_eq!(fs::read_to_string(link).unwrap(), want);
    }
    let got = fs::read(st.join("shared/contested")).unwrap();
    let who = identify(&got).expect("contested holds one complete content");
    assert!(
        contested.contains(&who),
        "contested holds {who:?}, never written there"
    );

    let mut shared: Vec<String> = list_unique(&st.join("shared")).into_iter().collect();
    shared.sort();
    let mut expected: Vec<String> = (0..THREADS)
        .flat_map(|t| (0..OWN_FINALS).map(move |k| format!("final-{t}-{k}")))
        .chain(["contested".to_string()])
        .collect();
    expected.sort();
    assert_eq!(shared, expected, "shared/ in the store");

    let mut all = Vec::new();
    files_below(st, Path::new(""), &mut all);
    let tmp: Vec<_> = all
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(tmp.is_empty(), "temporary files left in the store: {tmp:?}");
    let uploads = st.join("docker/registry/v2/repositories/conc/app/_uploads");
    assert_eq!(list_unique(&uploads).len(), 0, "upload directories left");

    let uploaded: HashSet<usize> = (0..THREADS)
        .flat_map(|t| {
            (0..ITERATIONS)
                .filter(|i| i % 3 == 0)
                .map(move |i| (i * 7 + t) % BLOBS)
        })
        .collect();
    let seeded: HashSet<String> = (0..THREADS)
        .flat_map(|t| (0..ITERATIONS).map(move |i| tag_blob_data(&tag_hex(t, i))))
        .collect();
    let mut blob_files = BTreeMap::new();
    for p in &all {
        let s = p.to_string_lossy();
        if s.starts_with("docker/registry/v2/blobs/")
            && s.ends_with("/data")
            && !seeded.contains(&*s)
        {
            blob_files.insert(s.into_owned(), fs::read(st.join(p)).unwrap());
        }
    }
    assert_eq!(
        blob_files.len(),
        uploaded.len(),
        "blob data files in the store"
    );
    for b in uploaded {
        let hex = blob_hex(b);
        let key = format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]);
        let got = blob_files
            .get(&key)
            .unwrap_or_else(|| panic!("{key} missing"));
        assert!(*got == blob_content(b), "{key}: wrong content");
        let layer = st.join(format!(
            "docker/registry/v2/repositories/conc/app/_layers/sha256/{hex}/link"
        ));
        assert_eq!(fs::read_to_string(layer).unwrap(), hex);
    }

    // The mount lists exactly what the store holds.
    let mut through_mount = Vec::new();
    files_below(&m.mnt, Path::new(""), &mut through_mount);
    through_mount.sort();
    all.sort();
    assert_eq!(
        through_mount, all,
        "the mount and the store list different trees"
    );
    eprintln!("whole test: {:?}", started.elapsed());
}

#[test]
fn concurrent_readers_of_one_large_file_read_correct_bytes() {
    const SIZE: usize = 32 << 20;
    const READERS: usize = 4;
    let Some(m) = common::mount_fresh() else {
        return;
    };
    let started = Instant::now();
    let data = bytes(42, SIZE);
    let path = m.mnt.join("large");
    {
        let mut f = File::create(&path).unwrap();
        for c in data.chunks(1 << 20) {
            f.write_all(c).unwrap();
        }
        f.sync_all().unwrap();
    }
    assert_eq!(fs::metadata(&path).unwrap().len(), SIZE as u64);
    assert!(
        fs::read(m.storage.join("large")).unwrap() == data,
        "store copy differs"
    );
    let write_time = started.elapsed();

    let shared_fd = File::open(&path).unwrap();
    let start = Barrier::new(READERS);
    std::thread::scope(|s| {
        for r in 0..READERS {
            let (data, path, shared_fd, start) = (&data, &path, &shared_fd, &start);
            s.spawn(move || {
                start.wait();
                // A whole sequential read through a handle of its own, chunk size by reader.
                let mut f = File::open(path).unwrap();
                let mut got = Vec::with_capacity(SIZE);
                let mut buf = vec![0u8; [4096, 65536, 131072 + 7, 1 << 20][r]];
                loop {
                    let n = f.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                assert_eq!(got.len(), SIZE, "reader {r}: length");
                if let Some(at) = got.iter().zip(data.iter()).position(|(a, b)| a != b) {
                    panic!("reader {r}: sequential read differs at byte {at}");
                }
                drop(got);
                // Random preads on one descriptor shared by all readers.
                let mut st = 0x5EED_0000 + r as u64;
                for _ in 0..300 {
                    let off = (xorshift(&mut st) % SIZE as u64) as usize;
                    let len = (xorshift(&mut st) % (256 * 1024)) as usize + 1;
                    let mut buf = vec![0u8; len];
                    let n = shared_fd.read_at(&mut buf, off as u64).unwrap();
                    let want = len.min(SIZE - off);
                    assert_eq!(n, want, "reader {r}: pread of {len} at {off}");
                    assert!(buf[..n] == data[off..off + n], "reader {r}: pread at {off}");
                }
                // Many short-lived handles (each open of a read-only file may share a
                // passthrough backing with the others).
                for _ in 0..100 {
                    let f = File::open(path).unwrap();
                    let off = (xorshift(&mut st) % (SIZE as u64 - 4096)) as usize;
                    let mut buf = [0u8; 4096];
                    f.read_exact_at(&mut buf, off as u64).unwrap();
                    assert!(
                        buf[..] == data[off..off + 4096],
                        "reader {r}: short read at {off}"
                    );
                }
            });
        }
    });
    eprintln!(
        "large file: written in {write_time:?}, whole test {:?} (kernel read passthrough: {})",
        started.elapsed(),
        m.fs().passthrough_enabled()
    );
}

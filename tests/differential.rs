//! Differential tests: the same sequence of file operations runs on the mount and on a
//! plain temporary directory, and every outcome (values read, sizes, modes, owners,
//! sorted listings, errno of failures) must be the same. Timestamps are never compared.
//!
//! The operations are those the registry performs (see the storage facts: mkdir -p,
//! create without O_TRUNC, ftruncate(0) + rewrite, append, fsync of files and directories,
//! rename over an existing target, readdir, unlink, rmdir, statfs) plus edge cases.
//! Symbolic links, hard links, device nodes and xattrs are refused by regfs on purpose;
//! they are checked separately on the mount only.
mod common;

use std::collections::{BTreeSet, HashSet};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustix::fs::{CWD, RenameFlags};

// ---------------------------------------------------------------------------------------
// Outcomes

/// Why a step failed: the errno by name, or the kind of a non-OS error.
#[derive(Debug)]
struct Fail(String);

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(n) => Fail(errno_name(n)),
            None => Fail(format!("non-os({:?}: {e})", e.kind())),
        }
    }
}

impl From<rustix::io::Errno> for Fail {
    fn from(e: rustix::io::Errno) -> Self {
        Fail(errno_name(e.raw_os_error()))
    }
}

type R = Result<String, Fail>;

fn errno_name(n: i32) -> String {
    let name = match n {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESTALE => "ESTALE",
        _ => "errno",
    };
    format!("{name}({n})")
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in test paths")
}

/// Result of a raw libc call returning -1 on error.
fn check(rc: libc::c_int) -> Result<(), Fail> {
    if rc == -1 {
        Err(io::Error::last_os_error().into())
    } else {
        Ok(())
    }
}

fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Short data in full; long data as length, checksum, zero count and both ends.
fn summarize(data: &[u8]) -> String {
    if data.len() <= 160 {
        format!("len={} {:?}", data.len(), String::from_utf8_lossy(data))
    } else {
        let zeros = data.iter().filter(|b| **b == 0).count();
        let head = String::from_utf8_lossy(&data[..24]).into_owned();
        let tail = String::from_utf8_lossy(&data[data.len() - 24..]).into_owned();
        format!(
            "len={} fnv={:016x} zeros={zeros} head={head:?} tail={tail:?}",
            data.len(),
            fnv(data)
        )
    }
}

/// Type, permission bits (& 0o7777), owner, link count and (files) size. No times.
fn describe(md: &fs::Metadata) -> String {
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "symlink"
    } else {
        "other"
    };
    let mut s = format!(
        "{kind} mode={:o} uid={} gid={} nlink={}",
        md.mode() & 0o7777,
        md.uid(),
        md.gid(),
        md.nlink()
    );
    if ft.is_file() {
        s.push_str(&format!(" size={}", md.len()));
    }
    s
}

fn sorted_names(dir: &Path) -> Result<Vec<String>, Fail> {
    let mut names = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let mut n = e.file_name().to_string_lossy().into_owned();
        if e.file_type()?.is_dir() {
            n.push('/');
        }
        names.push(n);
    }
    names.sort();
    Ok(names)
}

/// The registry's Walk: list, sort, stat each child, recurse into directories.
fn walk(root: &Path, rel: &Path, out: &mut Vec<String>) -> Result<(), Fail> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let child = rel.join(&name);
        let md = fs::symlink_metadata(root.join(&child))?;
        out.push(format!("{}: {}", child.display(), describe(&md)));
        if md.is_dir() {
            walk(root, &child, out)?;
        } else if md.is_file() {
            let data = fs::read(root.join(&child))?;
            out.push(format!("{}: {}", child.display(), summarize(&data)));
        }
    }
    Ok(())
}

fn walk_string(root: &Path, rel: &str) -> R {
    let mut out = Vec::new();
    walk(root, Path::new(rel), &mut out)?;
    Ok(out.join("; "))
}

// ---------------------------------------------------------------------------------------
// Operations

/// One file operation on paths relative to a root. Every operation is run the same way
/// on both roots; its outcome is `ok:<value>` or `err:<errno>`.
#[derive(Debug, Clone)]
enum Op {
    /// `mkdir -p` (std::fs::create_dir_all).
    MkdirAll(String),
    /// mkdir(2) with a mode.
    Mkdir(String, M),
    /// The registry's writer: open(O_WRONLY|O_CREAT, 0666) without O_TRUNC,
    /// ftruncate(0), write, fsync, close (2.8 PutContent of a link file).
    RewriteInPlace(String, String),
    /// open(O_WRONLY|O_CREAT, 0666) without O_TRUNC and write at offset 0: a shorter
    /// content leaves the old tail in place.
    WriteNoTrunc(String, String),
    /// 3.1 PutContent: write `<path>.<uuid>.tmp`, fsync, rename over the target, fsync
    /// the directory.
    PutContentAtomic(String, String),
    /// open(O_CREAT|O_EXCL|O_WRONLY) with a mode.
    CreateExcl(String, M),
    /// open(O_WRONLY|O_TRUNC) of an existing file.
    OpenTrunc(String),
    /// open(O_WRONLY|O_APPEND|O_CREAT) and write.
    Append(String, String),
    /// The registry's resumed upload: open(O_WRONLY|O_CREAT), seek to the end, write.
    AppendBySeekEnd(String, String),
    /// open(O_WRONLY|O_CREAT) and pwrite at an offset (may be past EOF: sparse).
    Pwrite(String, u64, String),
    /// Write `n` bytes of a pattern at offset 0 (open O_WRONLY|O_CREAT|O_TRUNC).
    WritePattern(String, usize),
    /// open(O_WRONLY) and ftruncate.
    Ftruncate(String, u64),
    /// truncate(2) by path.
    Truncate(String, u64),
    /// ftruncate on a read-only descriptor.
    FtruncateReadOnly(String, u64),
    /// Read the whole file.
    Read(String),
    /// The registry's reader: open read-only, seek, read up to `n` bytes.
    ReadAt(String, u64, usize),
    /// pread of `n` bytes at an offset, reporting whether they are all zero.
    ReadHole(String, u64, usize),
    /// stat(2).
    Stat(String),
    /// fstat(2) of a file opened read-only.
    Fstat(String),
    Chmod(String, M),
    Chown(String, u32, u32),
    Fsync(String),
    Fdatasync(String),
    /// open(dir, O_RDONLY) + fsync.
    FsyncDir(String),
    Rename(String, String),
    RenameNoReplace(String, String),
    RenameExchange(String, String),
    Unlink(String),
    Rmdir(String),
    /// rm -r (the registry's Delete).
    RemoveAll(String),
    /// open a path with O_WRONLY / O_RDWR (EISDIR on a directory).
    OpenWrite(String, bool),
    /// open with O_DIRECTORY (ENOTDIR on a file).
    OpenDirectoryFlag(String),
    /// read(2) on a descriptor of a directory (EISDIR).
    ReadDirAsFile(String),
    /// write(2) on a read-only descriptor (EBADF).
    WriteReadOnlyFd(String),
    /// read(2) on a write-only descriptor (EBADF).
    ReadWriteOnlyFd(String),
    /// Sorted names (directories with a trailing `/`).
    List(String),
    /// Count and checksum of the sorted names (for large directories).
    ListSummary(String),
    /// The registry's Walk: every entry below, sorted, with attributes and contents.
    Walk(String),
    /// statfs: the values that do not change from one call to the next.
    Statfs(String),
    /// Create `n` empty files `f00000`.. in a directory.
    CreateMany(String, usize),
    /// Open read-only, unlink, then read and fstat through the open descriptor.
    UnlinkWhileOpen(String),
    /// Open `target` read-only, rename `src` over it, read the old descriptor and the path.
    ReplaceWhileOpen(String, String),
    /// Open a directory with 2,000 files, read part of the listing, delete a third of
    /// the files, finish the listing; report the invariants.
    ReaddirWhileDeleting(String),
}

/// A mode, shown in octal in step names.
#[derive(Clone, Copy)]
struct M(u32);

impl std::fmt::Debug for M {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0o{:o}", self.0)
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8 + 1).collect()
}

/// At most `max` bytes of `s` (cut at a character boundary), marked when cut.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... ({} bytes in all)", &s[..cut], s.len())
}

/// open(O_WRONLY|O_CREAT, 0666) without O_TRUNC: how the registry opens what it writes.
fn open_no_trunc(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o666)
        .open(path)
}

impl Op {
    fn name(&self) -> String {
        clip(&format!("{self:?}"), 200)
    }

    fn run(&self, root: &Path) -> R {
        let p = |rel: &str| -> PathBuf { root.join(rel) };
        match self {
            Op::MkdirAll(d) => {
                fs::create_dir_all(p(d))?;
                Ok(describe(&fs::metadata(p(d))?))
            }
            Op::Mkdir(d, M(mode)) => {
                check(unsafe { libc::mkdir(cstr(&p(d)).as_ptr(), *mode as libc::mode_t) })?;
                Ok(describe(&fs::metadata(p(d))?))
            }
            Op::RewriteInPlace(f, data) => {
                let mut file = open_no_trunc(&p(f))?;
                file.set_len(0)?;
                file.write_all(data.as_bytes())?;
                file.sync_all()?;
                let md = file.metadata()?;
                drop(file);
                Ok(describe(&md))
            }
            Op::WriteNoTrunc(f, data) => {
                let mut file = open_no_trunc(&p(f))?;
                file.write_all(data.as_bytes())?;
                drop(file);
                Ok(summarize(&fs::read(p(f))?))
            }
            Op::PutContentAtomic(f, data) => {
                let target = p(f);
                let tmp = PathBuf::from(format!(
                    "{}.6f1c8a3e-3d7b-4a55-9d0e-1b2c3d4e5f60.tmp",
                    target.display()
                ));
                let mut file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o666)
                    .open(&tmp)?;
                file.write_all(data.as_bytes())?;
                file.sync_all()?;
                drop(file);
                fs::rename(&tmp, &target)?;
                File::open(target.parent().unwrap())?.sync_all()?;
                Ok(summarize(&fs::read(&target)?))
            }
            Op::CreateExcl(f, M(mode)) => {
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(*mode)
                    .open(p(f))?;
                Ok(describe(&file.metadata()?))
            }
            Op::OpenTrunc(f) => {
                let file = OpenOptions::new().write(true).truncate(true).open(p(f))?;
                Ok(describe(&file.metadata()?))
            }
            Op::Append(f, data) => {
                let mut file = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o666)
                    .open(p(f))?;
                file.write_all(data.as_bytes())?;
                let md = file.metadata()?;
                Ok(describe(&md))
            }
            Op::AppendBySeekEnd(f, data) => {
                let mut file = open_no_trunc(&p(f))?;
                let end = file.seek(SeekFrom::End(0))?;
                file.write_all(data.as_bytes())?;
                let pos = file.stream_position()?;
                Ok(format!("end={end} pos={pos}"))
            }
            Op::Pwrite(f, off, data) => {
                let file = open_no_trunc(&p(f))?;
                let n = file.write_at(data.as_bytes(), *off)?;
                Ok(format!("wrote={n} {}", describe(&file.metadata()?)))
            }
            Op::WritePattern(f, n) => {
                let data = pattern(*n);
                let mut file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o644)
                    .open(p(f))?;
                file.write_all(&data)?;
                Ok(describe(&file.metadata()?))
            }
            Op::Ftruncate(f, size) => {
                let file = OpenOptions::new().write(true).open(p(f))?;
                file.set_len(*size)?;
                Ok(describe(&file.metadata()?))
            }
            Op::Truncate(f, size) => {
                check(unsafe { libc::truncate(cstr(&p(f)).as_ptr(), *size as libc::off_t) })?;
                Ok(describe(&fs::metadata(p(f))?))
            }
            Op::FtruncateReadOnly(f, size) => {
                let file = File::open(p(f))?;
                file.set_len(*size)?;
                Ok(describe(&file.metadata()?))
            }
            Op::Read(f) => Ok(summarize(&fs::read(p(f))?)),
            Op::ReadAt(f, off, n) => {
                let mut file = File::open(p(f))?;
                let pos = file.seek(SeekFrom::Start(*off))?;
                let mut buf = Vec::new();
                file.take(*n as u64).read_to_end(&mut buf)?;
                Ok(format!("pos={pos} {}", summarize(&buf)))
            }
            Op::ReadHole(f, off, n) => {
                let file = File::open(p(f))?;
                let mut buf = vec![0xAAu8; *n];
                let mut done = 0;
                while done < buf.len() {
                    let k = file.read_at(&mut buf[done..], *off + done as u64)?;
                    if k == 0 {
                        break;
                    }
                    done += k;
                }
                buf.truncate(done);
                let zero = buf.iter().all(|b| *b == 0);
                Ok(format!("read={done} all_zero={zero}"))
            }
            Op::Stat(f) => Ok(describe(&fs::metadata(p(f))?)),
            Op::Fstat(f) => Ok(describe(&File::open(p(f))?.metadata()?)),
            Op::Chmod(f, M(mode)) => {
                check(unsafe { libc::chmod(cstr(&p(f)).as_ptr(), *mode as libc::mode_t) })?;
                Ok(describe(&fs::metadata(p(f))?))
            }
            Op::Chown(f, uid, gid) => {
                std::os::unix::fs::chown(p(f), Some(*uid), Some(*gid))?;
                Ok(describe(&fs::metadata(p(f))?))
            }
            Op::Fsync(f) => {
                let file = OpenOptions::new().write(true).open(p(f))?;
                file.sync_all()?;
                Ok(String::new())
            }
            Op::Fdatasync(f) => {
                let file = OpenOptions::new().write(true).open(p(f))?;
                file.sync_data()?;
                Ok(String::new())
            }
            Op::FsyncDir(d) => {
                let dir = File::open(p(d))?;
                dir.sync_all()?;
                Ok(String::new())
            }
            Op::Rename(a, b) => {
                fs::rename(p(a), p(b))?;
                Ok(describe(&fs::metadata(p(b))?))
            }
            Op::RenameNoReplace(a, b) => {
                rustix::fs::renameat_with(CWD, p(a), CWD, p(b), RenameFlags::NOREPLACE)?;
                Ok(describe(&fs::metadata(p(b))?))
            }
            Op::RenameExchange(a, b) => {
                rustix::fs::renameat_with(CWD, p(a), CWD, p(b), RenameFlags::EXCHANGE)?;
                Ok(format!(
                    "{} | {}",
                    describe(&fs::metadata(p(a))?),
                    describe(&fs::metadata(p(b))?)
                ))
            }
            Op::Unlink(f) => {
                fs::remove_file(p(f))?;
                Ok(format!("exists_after={}", p(f).exists()))
            }
            Op::Rmdir(d) => {
                fs::remove_dir(p(d))?;
                Ok(format!("exists_after={}", p(d).exists()))
            }
            Op::RemoveAll(d) => {
                fs::remove_dir_all(p(d))?;
                Ok(format!("exists_after={}", p(d).exists()))
            }
            Op::OpenWrite(f, rdwr) => {
                let file = OpenOptions::new().read(*rdwr).write(true).open(p(f))?;
                Ok(describe(&file.metadata()?))
            }
            Op::OpenDirectoryFlag(f) => {
                let file = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY)
                    .open(p(f))?;
                Ok(describe(&file.metadata()?))
            }
            Op::ReadDirAsFile(d) => {
                let mut dir = File::open(p(d))?;
                let mut buf = [0u8; 16];
                let n = dir.read(&mut buf)?;
                Ok(format!("read={n}"))
            }
            Op::WriteReadOnlyFd(f) => {
                let mut file = File::open(p(f))?;
                let n = file.write(b"x")?;
                Ok(format!("wrote={n}"))
            }
            Op::ReadWriteOnlyFd(f) => {
                let mut file = OpenOptions::new().write(true).open(p(f))?;
                let mut buf = [0u8; 16];
                let n = file.read(&mut buf)?;
                Ok(format!("read={n}"))
            }
            Op::List(d) => Ok(sorted_names(&p(d))?.join(",")),
            Op::ListSummary(d) => {
                let names = sorted_names(&p(d))?;
                let unique: BTreeSet<&String> = names.iter().collect();
                Ok(format!(
                    "count={} unique={} fnv={:016x} first={:?} last={:?}",
                    names.len(),
                    unique.len(),
                    fnv(names.join("\n").as_bytes()),
                    names.first(),
                    names.last()
                ))
            }
            Op::Walk(d) => walk_string(root, d),
            Op::Statfs(d) => {
                let st = rustix::fs::statfs(p(d))?;
                Ok(format!("namelen={} bsize={}", st.f_namelen, st.f_bsize))
            }
            Op::CreateMany(d, n) => {
                for i in 0..*n {
                    File::create(p(d).join(format!("f{i:05}")))?;
                }
                Ok(format!("created={n}"))
            }
            Op::UnlinkWhileOpen(f) => {
                let mut file = File::open(p(f))?;
                fs::remove_file(p(f))?;
                let mut data = Vec::new();
                file.read_to_end(&mut data)?;
                let md = file.metadata()?;
                Ok(format!(
                    "{} | {} | path_exists={}",
                    summarize(&data),
                    describe(&md),
                    p(f).exists()
                ))
            }
            Op::ReplaceWhileOpen(target, src) => {
                let mut old = File::open(p(target))?;
                fs::rename(p(src), p(target))?;
                let mut old_data = Vec::new();
                old.read_to_end(&mut old_data)?;
                let new_data = fs::read(p(target))?;
                Ok(format!(
                    "old_fd: {} | path: {} | src_exists={}",
                    summarize(&old_data),
                    summarize(&new_data),
                    p(src).exists()
                ))
            }
            Op::ReaddirWhileDeleting(d) => readdir_while_deleting(&p(d)),
        }
    }
}

/// Lists a directory of 2,000 files while a third of them are deleted. Reports the
/// invariants every POSIX directory keeps (the order, and whether a name deleted
/// before it was reached is returned, are unspecified and not reported).
fn readdir_while_deleting(dir: &Path) -> R {
    const N: usize = 2000;
    const FIRST: usize = 600;
    fs::create_dir(dir)?;
    let all: Vec<String> = (0..N).map(|i| format!("f{i:05}")).collect();
    for n in &all {
        File::create(dir.join(n))?;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut it = fs::read_dir(dir)?;
    for e in it.by_ref().take(FIRST) {
        seen.push(e?.file_name().to_string_lossy().into_owned());
    }
    let seen_before: HashSet<String> = seen.iter().cloned().collect();
    // Delete every third name: some already returned, some not yet reached.
    let deleted: HashSet<String> = all.iter().step_by(3).cloned().collect();
    for n in &deleted {
        fs::remove_file(dir.join(n))?;
    }
    for e in it {
        seen.push(e?.file_name().to_string_lossy().into_owned());
    }
    let unique: HashSet<&String> = seen.iter().collect();
    let dups = seen.len() - unique.len();
    let known: HashSet<&String> = all.iter().collect();
    let foreign = seen.iter().filter(|n| !known.contains(n)).count();
    // A name never deleted must be returned.
    let missing = all
        .iter()
        .filter(|n| !deleted.contains(*n) && !unique.contains(n))
        .count();
    // Returned after its deletion (allowed, unspecified): informational only.
    let ghosts = seen
        .iter()
        .skip(FIRST)
        .filter(|n| deleted.contains(*n) && !seen_before.contains(*n))
        .count();
    eprintln!(
        "readdir while deleting in {}: returned {} names, {ghosts} already deleted ones",
        dir.display(),
        seen.len()
    );
    Ok(format!(
        "first_part={} dups={dups} foreign={foreign} missing_survivors={missing} left_now={}",
        seen_before.len(),
        fs::read_dir(dir)?.count()
    ))
}

// ---------------------------------------------------------------------------------------
// Runner

fn run_all(ops: &[Op], root: &Path) -> Vec<String> {
    ops.iter()
        .map(|op| match op.run(root) {
            Ok(v) => format!("ok:{v}"),
            Err(Fail(e)) => format!("err:{e}"),
        })
        .collect()
}

/// Where two long outcomes made of `; `-separated items first differ.
fn first_item_difference(a: &str, b: &str) -> Option<String> {
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
fn assert_same(ops: &[Op], plain: &[String], mounted: &[String]) {
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
fn differential(ops: &[Op]) -> Option<(Vec<String>, Vec<String>)> {
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

// ---------------------------------------------------------------------------------------
// Plans

const V2: &str = "docker/registry/v2";

fn link(n: u32) -> String {
    format!("sha256:{:064x}", 0xabcdef_u128 * 1_000_003 + n as u128)
}

fn s(x: &str) -> String {
    x.to_string()
}

fn registry_plan() -> Vec<Op> {
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

    vec![
        // --- the registry's writer: mkdir -p, create without O_TRUNC, ftruncate(0), write
        MkdirAll(format!("{repo}/_manifests/tags/latest/current")),
        Stat(s(V2)),
        RewriteInPlace(tag_link.clone(), link(1)),
        Read(tag_link.clone()),
        Stat(tag_link.clone()),
        // A longer content, then a link again: ftruncate(0) must leave no tail.
        RewriteInPlace(tag_link.clone(), "x".repeat(200)),
        RewriteInPlace(tag_link.clone(), link(2)),
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
    ]
}

// ---------------------------------------------------------------------------------------
// Tests

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

/// Symbolic links, hard links, device nodes, FIFOs, sockets and xattrs are refused on
/// purpose: a registry store never holds them. Not part of the differential comparison.
#[test]
fn links_special_files_and_xattrs_are_refused_on_the_mount() {
    let Some(m) = common::mount_with(|s| {
        fs::write(s.join("file"), b"content").unwrap();
        std::os::unix::fs::symlink("file", s.join("planted-symlink")).unwrap();
        check(unsafe {
            libc::mkfifo(
                cstr(&s.join("planted-fifo")).as_ptr(),
                0o644 as libc::mode_t,
            )
        })
        .unwrap();
    }) else {
        return;
    };
    let mnt = &m.mnt;
    let file = mnt.join("file");
    let errno = |r: Result<(), Fail>| -> String {
        match r {
            Ok(()) => "ok".into(),
            Err(e) => e.0,
        }
    };
    let eperm = errno_name(libc::EPERM);
    let eopnotsupp = errno_name(libc::EOPNOTSUPP);

    // Creation of links and special files.
    let r = std::os::unix::fs::symlink("file", mnt.join("sym")).map_err(Fail::from);
    assert_eq!(errno(r), eperm, "symlink");
    let r = fs::hard_link(&file, mnt.join("hard")).map_err(Fail::from);
    assert_eq!(errno(r), eperm, "link");
    for (what, mode, dev) in [
        ("fifo", libc::S_IFIFO | 0o644, 0),
        ("socket", libc::S_IFSOCK | 0o644, 0),
        ("char device", libc::S_IFCHR | 0o644, libc::makedev(1, 3)),
        ("block device", libc::S_IFBLK | 0o644, libc::makedev(7, 0)),
    ] {
        let path = mnt.join(format!("node-{}", what.replace(' ', "-")));
        let r = check(unsafe { libc::mknod(cstr(&path).as_ptr(), mode, dev) });
        assert_eq!(errno(r), eperm, "mknod {what}");
    }
    let r = check(unsafe { libc::mkfifo(cstr(&mnt.join("fifo2")).as_ptr(), 0o644) });
    assert_eq!(errno(r), eperm, "mkfifo");

    // Extended attributes, on a file and on the root directory.
    for target in [file.clone(), mnt.clone()] {
        let p = cstr(&target);
        let name = CString::new("user.regfs-test").unwrap();
        let val = b"v";
        let r = check(unsafe {
            libc::setxattr(p.as_ptr(), name.as_ptr(), val.as_ptr().cast(), val.len(), 0)
        });
        assert_eq!(errno(r), eopnotsupp, "setxattr {}", target.display());
        let mut buf = [0u8; 64];
        let rc = unsafe {
            libc::getxattr(
                p.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let r = check(if rc < 0 { -1 } else { 0 });
        assert_eq!(errno(r), eopnotsupp, "getxattr {}", target.display());
        let rc = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        let r = check(if rc < 0 { -1 } else { 0 });
        assert_eq!(errno(r), eopnotsupp, "listxattr {}", target.display());
        let r = check(unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) });
        assert_eq!(errno(r), eopnotsupp, "removexattr {}", target.display());
    }

    // Links and special files planted in the backing store are not served.
    let r = fs::symlink_metadata(mnt.join("planted-symlink"))
        .map(|_| ())
        .map_err(Fail::from);
    assert_eq!(
        errno(r),
        errno_name(libc::ELOOP),
        "lstat of a planted symlink"
    );
    let r = fs::metadata(mnt.join("planted-fifo"))
        .map(|_| ())
        .map_err(Fail::from);
    assert_eq!(errno(r), eperm, "stat of a planted fifo");

    // Nothing was created in the store, and the file is untouched.
    let mut names: Vec<String> = fs::read_dir(&m.storage)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["file", "planted-fifo", "planted-symlink"]);
    assert_eq!(fs::read(&file).unwrap(), b"content");
    assert!(
        fs::symlink_metadata(m.storage.join("file"))
            .unwrap()
            .file_type()
            .is_file()
    );
}

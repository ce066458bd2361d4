//! The operations a differential test is made of, each run the same way on both roots,
//! and the readdir-while-deleting check.

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, RenameFlags};

use crate::outcome::{R, check, cstr, describe, fnv, sorted_names, summarize, walk_string};

/// One file operation on paths relative to a root. Every operation is run the same way
/// on both roots; its outcome is `ok:<value>` or `err:<errno>`.
#[derive(Debug, Clone)]
pub enum Op {
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
pub struct M(pub u32);

impl std::fmt::Debug for M {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0o{:o}", self.0)
    }
}

pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8 + 1).collect()
}

/// At most `max` bytes of `s` (cut at a character boundary), marked when cut.
pub fn clip(s: &str, max: usize) -> String {
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
pub fn open_no_trunc(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o666)
        .open(path)
}

impl Op {
    pub fn name(&self) -> String {
        clip(&format!("{self:?}"), 200)
    }

    pub fn run(&self, root: &Path) -> R {
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
pub fn readdir_while_deleting(dir: &Path) -> R {
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

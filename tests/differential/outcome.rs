//! Outcomes: how a step's result is written down so that the mount and a plain
//! directory can be compared (errno names, file contents by hash, metadata without
//! timestamps, sorted listings).

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Why a step failed: the errno by name, or the kind of a non-OS error.
#[derive(Debug)]
pub struct Fail(pub String);

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

pub type R = Result<String, Fail>;

pub fn errno_name(n: i32) -> String {
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

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in test paths")
}

/// Result of a raw libc call returning -1 on error.
pub fn check(rc: libc::c_int) -> Result<(), Fail> {
    if rc == -1 {
        Err(io::Error::last_os_error().into())
    } else {
        Ok(())
    }
}

pub fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Short data in full; long data as length, checksum, zero count and both ends.
pub fn summarize(data: &[u8]) -> String {
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
pub fn describe(md: &fs::Metadata) -> String {
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

pub fn sorted_names(dir: &Path) -> Result<Vec<String>, Fail> {
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
pub fn walk(root: &Path, rel: &Path, out: &mut Vec<String>) -> Result<(), Fail> {
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

pub fn walk_string(root: &Path, rel: &str) -> R {
    let mut out = Vec::new();
    walk(root, Path::new(rel), &mut out)?;
    Ok(out.join("; "))
}

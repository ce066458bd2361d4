//! The one error type of the filesystem core and its single mapping to errno.

use std::io;

use thiserror::Error;

/// Why a filesystem request failed. Every variant maps to exactly one errno in
/// [`FsError::errno`]; nothing else in the crate picks errno values.
#[derive(Debug, Error)]
pub enum FsError {
    /// The backing filesystem answered with an error; its errno is passed on as is.
    #[error("{op} {path}: {source}")]
    Backing {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    /// A GC epoch holds the store closed for writes.
    #[error("{path}: store is read-only during a GC epoch")]
    ReadOnlyEpoch { path: String },
    /// A name that could walk out of its directory (`.`, `..`, a `/`), or an empty one.
    #[error("invalid name {name:?}")]
    InvalidName { name: String },
    /// A name the store's policy does not show (it answers as a missing one).
    #[error("{path}: not shown by the store's policy")]
    Hidden { path: String },
    /// A symbolic link found in the store: never followed, never served.
    #[error("{path}: symbolic links are not served")]
    Symlink { path: String },
    /// A device node, FIFO or socket found in the store.
    #[error("{path}: special files are not served")]
    SpecialFile { path: String },
    /// An entry on another filesystem (a mount inside the store).
    #[error("{path}: entry is on another filesystem")]
    OtherDevice { path: String },
    /// Something a registry store never holds (links, device nodes, ...).
    #[error("{what} is not supported on a registry store")]
    NotSupported { what: &'static str },
    /// Extended attributes are refused.
    #[error("extended attributes are not supported")]
    NoXattr,
    /// The kernel named an inode or handle we do not know.
    #[error("unknown {what} {id}")]
    Stale { what: &'static str, id: u64 },
    /// A handle used for what it was not opened for.
    #[error("handle {fh} is not open for {what}")]
    BadHandle { fh: u64, what: &'static str },
    /// A link file write naming a blob whose data does not exist (or a revision link to a
    /// manifest whose references lack data): a registry cache still listing a blob GC
    /// deleted. Refused so that the push fails instead of succeeding broken.
    #[error("{link}: link to {digest} refused: blob {missing} has no data")]
    DanglingLink {
        link: String,
        digest: crate::layout::Digest,
        missing: crate::layout::Digest,
    },
    /// A tag link (its index entry or its current link), or the revision link of an index,
    /// naming a manifest the repository has no revision of. The registry writes a
    /// revision before it tags it or pushes an index of it, so the revision was removed
    /// in between (a GC run that fell between the two writes, or a delete through the
    /// API): refused so that the push fails instead of naming what nobody can pull.
    #[error(
        "{link}: refused: it names manifest {digest}, of which the repository holds no revision"
    )]
    ManifestWithoutRevision {
        link: String,
        digest: crate::layout::Digest,
    },
    /// A write naming what an online GC run is deleting at this moment: refused until
    /// the deletion ends, and the client retries (its blob is then uploaded anew).
    #[error("{path}: refused while GC deletes {unit}")]
    BeingCollected { path: String, unit: String },
    /// A file or directory the kernel still names (it caches names for the attribute
    /// timeout) that was removed from the store behind it: a collector's delete racing a
    /// lookup, an undo whose notice reached the kernel late. ESTALE makes the kernel look
    /// the name up again, so a write lands in the store instead of in a removed file.
    #[error("{path}: removed from the store while the kernel still named it")]
    RemovedBehindKernel { path: String },
    /// A link file opened for writing while the kernel reads it by passthrough (it was
    /// opened for reading under a name of another role, then renamed to a link's): its
    /// bytes must reach the policy, and the kernel cannot mix the two kinds of open.
    #[error(
        "{path}: held open for reading since before it was a link; cannot write it until those readers close"
    )]
    LinkHeldByPassthrough { path: String },
    /// A user the mount does not serve (see `fs::access`).
    #[error("uid {uid} may not use this mount")]
    NotAllowed { uid: u32 },
    /// A bug or an unexpected state: answered with EIO and logged with the path.
    #[error("internal error at {path}: {detail}")]
    Internal { path: String, detail: String },
}

impl FsError {
    pub fn backing(
        op: &'static str,
        path: impl Into<String>,
        source: impl Into<io::Error>,
    ) -> Self {
        FsError::Backing {
            op,
            path: path.into(),
            source: source.into(),
        }
    }

    /// The errno the kernel gets for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Backing { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            FsError::ReadOnlyEpoch { .. } => libc::EROFS,
            FsError::InvalidName { .. } => libc::EINVAL,
            FsError::Hidden { .. } => libc::ENOENT,
            FsError::Symlink { .. } => libc::ELOOP,
            FsError::SpecialFile { .. } => libc::EPERM,
            FsError::OtherDevice { .. } => libc::EXDEV,
            FsError::NotSupported { .. } => libc::EPERM,
            // ENOSYS: the kernel stops asking for extended attributes and tells callers
            // EOPNOTSUPP.
            FsError::NoXattr => libc::ENOSYS,
            FsError::Stale { .. } | FsError::RemovedBehindKernel { .. } => libc::ESTALE,
            FsError::BadHandle { .. } => libc::EBADF,
            // ETXTBSY: what the kernel itself answers for a write to a file another open
            // keeps from being written (an executable being run).
            FsError::LinkHeldByPassthrough { .. } => libc::ETXTBSY,
            // EACCES, as a kernel permission check would answer: the request is
            // well-formed, the caller is not allowed.
            FsError::NotAllowed { .. } => libc::EACCES,
            FsError::Internal { .. } => libc::EIO,
            // EIO: the registry's driver passes it on and answers 500, so the client's
            // push fails. ENOENT would be read as "this path is missing" (a 404-style
            // answer for what is a refused write); the daemon's log names link and blob.
            FsError::DanglingLink { .. } | FsError::ManifestWithoutRevision { .. } => libc::EIO,
            // EIO for the same reason: a server error the client retries.
            FsError::BeingCollected { .. } => libc::EIO,
        }
    }

    /// Errors worth a warning in the log: the ones that mean something is wrong with the
    /// daemon or the store, not with the request.
    pub fn is_unexpected(&self) -> bool {
        match self {
            FsError::Internal { .. } | FsError::Stale { .. } => true,
            FsError::Backing { source, .. } => source.raw_os_error() == Some(libc::EIO),
            _ => false,
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;

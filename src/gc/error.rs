//! Why a collection run stopped before deleting anything.

use std::io;

use thiserror::Error;

use crate::error::FsError;
use crate::layout::{Digest, ReadError, RepoName};
use crate::manifest::ManifestError;

#[derive(Debug, Error)]
pub enum GcError {
    #[error("{path}: {source}")]
    Store {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "repository {repo}: manifest {digest}: {source}; nothing was deleted (use --keep-unknown to keep every blob it names and go on)"
    )]
    Manifest {
        repo: RepoName,
        digest: Digest,
        #[source]
        source: ManifestError,
    },
    #[error("repository {repo}: manifest {digest} cannot be read: {source}; nothing was deleted")]
    ManifestRead {
        repo: RepoName,
        digest: Digest,
        #[source]
        source: ReadError,
    },
    #[error(
        "repository {repo}: manifest {digest} is missing from the store ({path} does not exist); cannot know which blobs it names, so nothing was deleted (use --allow-missing-manifests to keep every blob the repository links and go on)"
    )]
    ManifestMissing {
        repo: RepoName,
        digest: Digest,
        path: String,
    },
    #[error("{path}: {what}; cannot prove what it references, so nothing was deleted")]
    NotUnderstood { path: String, what: String },
    /// Stopped or out of time while marking (never reported as a failure).
    #[error("interrupted")]
    Interrupted,
    #[error("deleting {path}: {source}")]
    Delete {
        path: String,
        #[source]
        source: FsError,
    },
}

impl GcError {
    pub fn store(path: &std::path::Path, source: io::Error) -> Self {
        GcError::Store {
            path: path.display().to_string(),
            source,
        }
    }
}
